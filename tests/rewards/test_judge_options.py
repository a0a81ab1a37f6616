"""`judge:<model>?options` reward specs: the same judge module and options as `rlhf label`."""

import json
import re

import pytest
import torch

from rlhf.feedback import LMPointwiseJudge, judge_prompt
from rlhf.rewards import JudgeReward, RewardError, resolve_reward
from rlhf.rewards.judge import SPEC_OPTIONS
from rlhf.testing import tiny_causal_lm, tiny_tokenizer
from tests.feedback.scripted import refuse_model_loads


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=3)
    with torch.no_grad():
        model.model.norm.weight.mul_(40)
    path = tmp_path_factory.mktemp("judge")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture
def files(tmp_path):
    shots = tmp_path / "shots.jsonl"
    shots.write_text(json.dumps({"prompt": "Say hi", "completion": "Hello!", "label": True}) + "\n"
                     + json.dumps({"prompt": "Add 1+1", "completion": "3", "label": False}) + "\n")
    template = tmp_path / "judge.txt"
    template.write_text("{rubric}\nQ: {prompt}\nA: {completion}\nGood? Yes or No.")
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Short answers are best.\n")
    return {"few_shot": str(shots), "template": str(template), "rubric": str(rubric)}


def test_spec_options_build_the_same_judge_as_the_feedback_module(judge_dir, files):
    spec = (f"judge:{judge_dir}?few_shot={files['few_shot']}&template={files['template']}&rubric={files['rubric']}"
            "&verdict=yes_no&system=Judge fairly.&batch_size=2")
    source = resolve_reward(spec)
    assert isinstance(source.source, JudgeReward) and source.name == spec
    prompts, completions = ["What is 2+2?", "Hi", "x"], ["4", "Hello there", "y" * 20]
    got = source(prompts, completions)
    model, tok = source.source.model, source.source.tokenizer
    prompt = judge_prompt("pointwise", template=files["template"], few_shot=files["few_shot"], rubric=files["rubric"],
                          system="Judge fairly.", verdict="yes_no")
    assert source.source.judge.template_sha == prompt.sha
    expected = LMPointwiseJudge(model, tok, prompt, prefix_cache=False).scores(prompts, completions)
    assert got == pytest.approx(expected, abs=1e-4)
    assert got != pytest.approx(resolve_reward(f"judge:{judge_dir}")(prompts, completions), abs=1e-3)
    text = tok.decode(source.source.encode("What is 2+2?", "4"))
    assert "Short answers are best.\nQ: What is 2+2?" in text and "Judge fairly." in text and "Hello!" in text


def test_rating_scale_and_rationale_options(judge_dir):
    five = resolve_reward(f"judge:{judge_dir}?scale=1-5")
    assert five.source.judge.prompt.scale == (1, 5) and len(five.source.judge.choice_ids) == 5
    assert all(1.0 <= s <= 5.0 for s in five(["q", "r"], ["a", "b"]))
    reasoned = resolve_reward(f"judge:{judge_dir}?rationale=true&max_rationale_tokens=3")
    assert reasoned.source.judge.prompt.rationale and reasoned.source.judge.max_rationale_tokens == 3
    assert reasoned(["q"], ["a"]) == [None]  # three byte tokens cannot write the cue: no score, not a guess


def test_a_plain_text_spec_reads_its_verdict_words(judge_dir, tmp_path):
    template = tmp_path / "plain.txt"
    template.write_text("Review: {completion}\nThe review is")
    source = resolve_reward(f"judge:{judge_dir}?template={template}&verdict=yes_no&chat=false"
                            "&verdict_words=good, bad")
    prompt = source.source.judge.prompt
    assert (prompt.chat, prompt.choices) == (False, ["good", "bad"])
    model, tok = source.source.model, source.source.tokenizer
    expected = LMPointwiseJudge(model, tok, prompt, prefix_cache=False).scores(["q", "r"], ["fine", "awful"])
    assert source(["q", "r"], ["fine", "awful"]) == pytest.approx(expected, abs=1e-4)
    assert tok.decode(source.source.encode("q", "fine")).endswith("Review: fine\nThe review is")


@pytest.fixture
def no_model_loads(monkeypatch):
    refuse_model_loads(monkeypatch)


@pytest.mark.parametrize("query, message", [
    ("shots=x.jsonl", "unknown judge option 'shots'; valid options are template: .*few_shot: "),
    ("few_shot=/no/such.jsonl", "config key 'few_shot': no such file"),
    ("verdict=maybe", "judge verdict must be one of yes_no, rating"),
    ("scale=1-10x", "expected low-high"),
    ("batch_size=0", "'batch_size': expected a positive integer"),
    ("rationale=perhaps", "expected true or false"),
    ("chat=perhaps", "expected true or false"),
    ("verdict=yes_no&verdict_words=good", "two different non-empty words"),
    ("template", "judge option 'template' needs a value"),
])
def test_bad_spec_options_fail_before_any_model_loads(judge_dir, no_model_loads, query, message):
    with pytest.raises(RewardError, match=message):
        resolve_reward(f"judge:{judge_dir}?{query}")


def test_a_template_file_without_completion_is_a_reward_error(judge_dir, tmp_path, no_model_loads):
    bad = tmp_path / "bad.txt"
    bad.write_text("Rate {prompt}")
    with pytest.raises(RewardError, match=rf"reward spec .*{re.escape(str(bad))}: .*must contain \{{completion\}}"):
        resolve_reward(f"judge:{judge_dir}?template={bad}")
    assert set(SPEC_OPTIONS) >= {"template", "few_shot", "rubric", "system", "verdict", "rationale"}
