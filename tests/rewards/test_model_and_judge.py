import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlhf.models.reward import RewardModelScorer
from rlhf.rewards import JudgeReward, RewardError, RewardModelSource
from rlhf.rewards.judge import DEFAULT_RUBRIC
from rlhf.testing import tiny_causal_lm, tiny_config, tiny_tokenizer


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """A random one-label sequence classifier saved with the tiny tokenizer: a reward-model directory."""
    tok = tiny_tokenizer()
    config = tiny_config(len(tok), num_labels=1, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id)
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_config(config)
    with torch.no_grad():
        model.score.weight.mul_(50)  # random heads score near 0; spread them so differences show
    path = tmp_path_factory.mktemp("rm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_reward_model_source_matches_the_scorer(reward_model_dir):
    prompts = ["What is 2+2?", "Name a colour.", [{"role": "user", "content": "Hi"}]]
    completions = ["4.", "Blue, obviously, and also green", [{"role": "assistant", "content": "Hello!"}]]
    source = RewardModelSource(reward_model_dir, batch_size=2)
    got = source(prompts, completions, answer=["4", "blue", "x"])  # extra columns are ignored
    want = RewardModelScorer(reward_model_dir)(prompts, completions)
    assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-5)
    assert torch.tensor(got).std() > 1e-3


def test_an_empty_completion_is_scored_not_rejected(reward_model_dir):
    # a policy may emit nothing at all; that answer gets a score like any other
    scores = RewardModelScorer(reward_model_dir)(["What is 2+2?", "What is 2+2?", [{"role": "user", "content": "Hi"}]],
                                                 ["", "abc", ""])
    assert len(scores) == 3 and all(isinstance(x, float) and math.isfinite(x) for x in scores)
    assert scores[0] != scores[1]


@pytest.fixture(scope="module")
def judge_parts():
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=3).eval()
    with torch.no_grad():
        model.model.norm.weight.mul_(40)  # sharpen the random next-token distribution so scores differ
    return model, tok


def _hand_score(model, tok, prompt_text, completion_text):
    """The RLAIF soft score from first principles: full softmax at the last position, renormalised over "1".."9"."""
    rubric = DEFAULT_RUBRIC.format(prompt=prompt_text, completion=completion_text, low=1, high=9)
    ids = tok.apply_chat_template([{"role": "user", "content": rubric}], add_generation_prompt=True, tokenize=True,
                                  return_dict=False)
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([list(ids)])).logits[0, -1].double(), -1)
    digits = [tok.convert_tokens_to_ids(str(k)) for k in range(1, 10)]
    p = probs[digits] / probs[digits].sum()
    return float((p * torch.arange(1, 10, dtype=torch.float64)).sum())


def test_judge_expected_score_equals_hand_computation(judge_parts):
    model, tok = judge_parts
    judge = JudgeReward(model, tokenizer=tok, batch_size=3)  # batches of 3 over 4 samples: padding and a remainder
    prompts = ["What is 2+2?", "Write a haiku about the sea, please, with a seagull in it.", "Hi", "x"]
    completions = ["4", "Waves fold on grey sand / a gull cries / salt wind", "Hello there!", "y" * 40]
    scores = judge(prompts, completions)
    expected = [_hand_score(model, tok, p, c) for p, c in zip(prompts, completions)]
    assert all(1.0 <= s <= 9.0 for s in scores)
    assert scores == pytest.approx(expected, abs=1e-4)
    assert max(scores) - min(scores) > 0.05  # the samples are scored, not a constant


def test_judge_accepts_chat_messages(judge_parts):
    model, tok = judge_parts
    judge = JudgeReward(model, tokenizer=tok)
    single = judge([[{"role": "user", "content": "What is 2+2?"}]], [[{"role": "assistant", "content": "4"}]])
    assert single == pytest.approx([_hand_score(model, tok, "What is 2+2?", "4")], abs=1e-4)
    multi_turn = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    score = judge([multi_turn], ["Hello"])
    assert score == pytest.approx([_hand_score(model, tok, "System: Be brief.\n\nUser: Hi", "Hello")], abs=1e-4)


def test_judge_custom_template_scale_and_errors(judge_parts):
    model, tok = judge_parts
    template = "Q: {prompt}\nA: {completion}\nScore {low}-{high} (JSON {\"k\": 1} stays as written)."
    judge = JudgeReward(model, tokenizer=tok, template=template, scale=(1, 5))
    text = judge.tokenizer.decode(judge.encode("q{completion}", "a"))
    assert 'Q: q{completion}\nA: a\nScore 1-5 (JSON {"k": 1} stays as written).' in text
    assert all(1.0 <= s <= 5.0 for s in judge(["q", "r"], ["a", "b"]))
    with pytest.raises(RewardError, match="rating 10 encodes to 2 tokens"):
        JudgeReward(model, tokenizer=tok, scale=(1, 10))
    with pytest.raises(RewardError, match=r"must contain \{completion\}"):
        JudgeReward(model, tokenizer=tok, template="Rate {prompt}")


def test_judge_from_a_model_directory(judge_parts, tmp_path):
    model, tok = judge_parts
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    judge = JudgeReward(str(tmp_path))
    assert judge(["What is 2+2?"], ["4"]) == pytest.approx([_hand_score(model, tok, "What is 2+2?", "4")], abs=1e-4)
