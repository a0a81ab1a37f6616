"""LM judges on a tiny model (hand-computed verdicts, the preamble cache, rationales) and judge_pairs."""

import math

import pytest
import torch

from rlhf.config import ConfigError
from rlhf.feedback import (JudgeCache, JudgeOptions, JudgePrompt, LMPairwiseJudge, LMPointwiseJudge, PairVerdict,
                           build_judge, judge_pairs, judge_prompt, verdict_token_ids)
from rlhf.testing import tiny_causal_lm, tiny_tokenizer
from tests.feedback.scripted import ScriptedJudge, sigmoid

PROMPTS = ["What is 2+2?", "Write a haiku about the sea, please, with a seagull in it.", "Hi",
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}], "x"]
FIRSTS = ["4", "Waves fold on grey sand / a gull cries / salt wind", "Hello there!", "Blue.", "y" * 40]
SECONDS = ["5", "The sea.", "Go away.", "I refuse to answer that question.", "z"]
SHOTS = {"pointwise": [{"prompt": "Say hi", "completion": "Hello!", "label": True},
                       {"prompt": "Add 1+1", "completion": "3", "label": False}],
         "pairwise": [{"prompt": "Add 1+1", "first": "3", "second": "2", "winner": 2}]}


@pytest.fixture(scope="module")
def parts():
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=3).eval()
    with torch.no_grad():
        model.model.norm.weight.mul_(40)  # sharpen the random next-token distribution so verdicts differ
    return model, tok


def make(parts, kind, *, verdict="yes_no", few_shot=True, **kwargs):
    model, tok = parts
    shots = SHOTS[kind]
    if verdict == "rating":
        shots = [{"prompt": r["prompt"], "completion": r["completion"], "rating": 8 if r["label"] else 2} for r in shots]
    prompt = judge_prompt(kind, few_shot=shots if few_shot else None, system="You are a fair judge.",
                          verdict=verdict, files=False)
    cls = LMPairwiseJudge if kind == "pairwise" else LMPointwiseJudge
    return cls(model, tok, prompt, **kwargs)


def ask(judge, n=len(PROMPTS)):
    if judge.kind == "pairwise":
        return judge.first_wins(PROMPTS[:n], FIRSTS[:n], SECONDS[:n])
    return judge.scores(PROMPTS[:n], FIRSTS[:n])


def hand_logprobs(model, tok, ids):
    """log softmax of the next token after `ids`, one plain forward of the whole sequence."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([list(ids)])).logits[0, -1].double(), -1)


def token(tok, text):
    (i,) = tok.encode(text, add_special_tokens=False)
    return i


@pytest.mark.parametrize("kind", ["pointwise", "pairwise"])
def test_verdicts_equal_a_hand_computation(parts, kind):
    model, tok = parts
    judge = make(parts, kind)
    got = ask(judge)
    expected = []
    for item in zip(PROMPTS, FIRSTS, SECONDS):
        item = item if kind == "pairwise" else item[:2]
        ids = tok.apply_chat_template(judge.prompt.messages(*item), add_generation_prompt=True, tokenize=True,
                                      return_dict=False)
        assert tok.decode(ids).endswith("<|im_start|>assistant\n")
        lp = hand_logprobs(model, tok, ids)
        if kind == "pointwise":  # byte-level: "Yes" is read by its first token "Y" (" Yes" starts with a shared space)
            expected.append(float(lp[token(tok, "Y")] - lp[token(tok, "N")]))
        else:
            expected.append(float(torch.sigmoid(lp[token(tok, "1")] - lp[token(tok, "2")])))
    assert got == pytest.approx(expected, abs=1e-4)
    assert max(got) - min(got) > 1e-3  # the items are judged, not a constant
    masses = judge.last_masses
    assert all(0 < m < 1 for m in masses) and judge.stats()["items"] == len(PROMPTS)


@pytest.mark.parametrize("kind, verdict", [("pointwise", "yes_no"), ("pointwise", "rating"), ("pairwise", "yes_no")])
def test_the_preamble_cache_equals_a_full_forward_and_batching_does_not_matter(parts, kind, verdict, monkeypatch):
    cached = make(parts, kind, verdict=verdict, batch_size=3)  # 5 items: a remainder, right padding
    suffix_rows = []
    original = cached._suffix_logits
    monkeypatch.setattr(cached, "_suffix_logits", lambda rows: suffix_rows.extend(rows) or original(rows))
    plain = make(parts, kind, verdict=verdict, batch_size=3, prefix_cache=False)
    monkeypatch.setattr(plain, "_suffix_logits", lambda rows: pytest.fail("the preamble cache is off"))
    one_by_one = make(parts, kind, verdict=verdict, batch_size=1)
    got = ask(cached)
    assert len(suffix_rows) == len(PROMPTS)  # every item took the cached path...
    assert len(cached.preamble_ids()) > 100  # ...past a preamble of system, few-shot turns and rubric
    assert got == pytest.approx(ask(plain), abs=1e-4)
    assert got == pytest.approx(ask(one_by_one), abs=1e-4)
    assert ask(cached, 2) == pytest.approx(got[:2], abs=1e-4)  # the stored preamble is reused unchanged


def test_an_item_that_does_not_start_with_the_preamble_runs_whole(parts, monkeypatch):
    judge = make(parts, "pointwise", batch_size=8)
    preamble = judge.preamble_ids()
    # a "preamble" that runs 4 tokens into the item: only prompts starting "What" share it
    longer = judge.encode("What is it?", "c")[: len(preamble) + 5]
    monkeypatch.setattr(judge, "preamble_ids", lambda: longer)
    routes = {"suffix": 0, "whole": 0}
    suffix, whole = judge._suffix_logits, judge._full_logits
    monkeypatch.setattr(judge, "_suffix_logits", lambda rows: routes.update(suffix=len(rows)) or suffix(rows))
    monkeypatch.setattr(judge, "_full_logits", lambda rows: routes.update(whole=len(rows)) or whole(rows))
    prompts = ["What is 2+2?", "Hi", "Whatever you say", "x"]
    got = judge.scores(prompts, ["4", "Hello", "ok", "y"])
    assert routes == {"suffix": 2, "whole": 2}
    assert got == pytest.approx(make(parts, "pointwise", prefix_cache=False).scores(prompts, ["4", "Hello", "ok", "y"]),
                                abs=1e-4)


def test_rationale_mode_reads_the_verdict_after_the_cue_and_no_cue_is_unparseable(parts, monkeypatch):
    model, tok = parts
    prompt = judge_prompt("pointwise", rationale=True, files=False)
    judge = LMPointwiseJudge(model, tok, prompt)
    def written(ids):  # what the judge "writes" after an item, by the item's answer
        text = tok.decode(ids)
        return ("I cannot decide." if "Hello" in text else "Verdict:" if "[Response]\ny" in text
                else "It adds up. Verdict: Yes, clearly")

    monkeypatch.setattr(judge, "generate_rationales", lambda encoded: [written(ids) for ids in encoded])
    prompts, completions = ["What is 2+2?", "Hi", "x"], ["4", "Hello", "y"]
    got = judge.scores(prompts, completions)
    assert got[1] is None and judge.last_rationales == ["It adds up. Verdict:", None, "Verdict:"]
    for i in (0, 2):
        ids = judge.encode(prompts[i], completions[i]) + tok.encode(judge.last_rationales[i], add_special_tokens=False)
        lp = hand_logprobs(model, tok, ids)
        assert got[i] == pytest.approx(float(lp[token(tok, "Y")] - lp[token(tok, "N")]), abs=1e-4)
    assert judge.stats()["unparsed"] == 1
    verdicts = judge_pairs(judge, prompts, completions, ["5", "Hey", "z"])
    assert verdicts[1].p_first is None and verdicts[1].confidence is None and verdicts[0].p_first is not None


def test_rationale_generation_runs_greedy_and_leaves_the_global_rng_alone(parts):
    model, tok = parts
    judge = LMPairwiseJudge(model, tok, judge_prompt("pairwise", rationale=True, files=False),
                            max_rationale_tokens=4, batch_size=2)
    state = torch.random.get_rng_state()
    got = judge.first_wins(PROMPTS[:3], FIRSTS[:3], SECONDS[:3])
    assert torch.equal(torch.random.get_rng_state(), state)
    # 4 byte tokens cannot spell "Verdict:": every item is unparseable, and counted
    assert got == [None, None, None] and judge.stats()["unparsed"] == 3 and judge.last_rationales == [None] * 3
    texts = judge.generate_rationales([judge.encode(p, f, s) for p, f, s in zip(PROMPTS[:3], FIRSTS[:3], SECONDS[:3])])
    assert len(texts) == 3 and texts == judge.generate_rationales(
        [judge.encode(p, f, s) for p, f, s in zip(PROMPTS[:3], FIRSTS[:3], SECONDS[:3])])


def test_verdict_tokens():
    tok = tiny_tokenizer()
    assert verdict_token_ids(tok, ["Yes", "No"]) == [[token(tok, "Y")], [token(tok, "N")]]  # the space is shared
    with pytest.raises(ConfigError, match="do not begin with distinct tokens"):
        verdict_token_ids(tok, ["Yes", "Yikes"])
    with pytest.raises(ConfigError, match="rating 10 encodes to 2 tokens"):
        verdict_token_ids(tok, ["9", "10"], strict=True)


def test_build_judge_and_its_fingerprint(parts, tiny_model_dir):
    model, tok = parts
    judge = build_judge(JudgeOptions(judge=tiny_model_dir, judge_kind="pairwise"))
    assert isinstance(judge, LMPairwiseJudge) and judge.name == tiny_model_dir and judge.kind == "pairwise"
    again = build_judge(JudgeOptions(judge=tiny_model_dir, judge_kind="pairwise"))
    assert judge.fingerprint == again.fingerprint and len(judge.fingerprint) == 64
    assert judge.template_sha == JudgePrompt("pairwise").sha
    other_template = build_judge(JudgeOptions(judge=tiny_model_dir, judge_kind="pairwise", system_prompt="Be fair."))
    other_weights = build_judge(JudgeOptions(judge_kind="pairwise"), model=model, tokenizer=tok)
    assert len({judge.fingerprint, other_template.fingerprint, other_weights.fingerprint}) == 3
    pointwise = build_judge(JudgeOptions(judge_batch_size=2, judge_verdict="rating"), model=model, tokenizer=tok)
    assert isinstance(pointwise, LMPointwiseJudge) and pointwise.batch_size == 2
    assert all(1 <= s <= 9 for s in pointwise.scores(PROMPTS, FIRSTS))


def test_an_lm_judge_through_judge_pairs_and_its_cache(parts, tmp_path):
    judge = make(parts, "pairwise")
    cache = JudgeCache(tmp_path / "cache.jsonl")
    verdicts = judge_pairs(judge, PROMPTS, FIRSTS, SECONDS, cache=cache)
    p_ab, p_ba = judge.first_wins(PROMPTS, FIRSTS, SECONDS), judge.first_wins(PROMPTS, SECONDS, FIRSTS)
    for v, ab, ba in zip(verdicts, p_ab, p_ba):
        assert v.p_first == pytest.approx((ab + 1 - ba) / 2, abs=1e-6)
        assert 0 < v.details["mass_ab"] < 1 and 0 < v.details["mass_ba"] < 1
    rerun = make(parts, "pairwise")
    assert judge_pairs(rerun, PROMPTS, FIRSTS, SECONDS, cache=JudgeCache(tmp_path / "cache.jsonl")) == verdicts
    assert rerun.stats()["items"] == 0


# --- judge_pairs with a scripted judge


def test_judging_both_orders_cancels_a_planted_position_bias():
    a = ["good", "good", "plain", "bad", "good good"]
    b = ["good good", "plain", "plain", "plain", "good bad good"]  # merit differences -1, 1, 0, -1, 1
    truth = [sigmoid(x.count("good") - x.count("bad") - y.count("good") + y.count("bad")) for x, y in zip(a, b)]
    prompts = ["p"] * len(a)
    biased = judge_pairs(ScriptedJudge(position_bias=0.25), prompts, a, b, debias=False)
    assert [v.p_first for v in biased] == pytest.approx([t + 0.25 for t in truth])
    assert all(v.consistent is None for v in biased)
    debiased = judge_pairs(ScriptedJudge(position_bias=0.25), prompts, a, b)
    assert [v.p_first for v in debiased] == pytest.approx(truth, abs=1e-12)
    # the biased judge names the first answer in both orders unless the truth outweighs the bias
    assert [v.consistent for v in debiased] == [False, False, False, False, False]
    fair = judge_pairs(ScriptedJudge(), prompts, a, b)
    assert [v.consistent for v in fair] == [True, True, False, True, True]  # a tie has no winner
    assert fair[0].details == {"p_ab": sigmoid(-1), "mass_ab": None, "p_ba": sigmoid(1), "mass_ba": None}
    assert fair[0].confidence == pytest.approx(sigmoid(1)) and fair[1].confidence == pytest.approx(sigmoid(1))


def test_pointwise_pairs_are_bradley_terry_and_each_text_is_scored_once():
    judge = ScriptedJudge("pointwise")
    prompts = ["p", "p", "q", "p"]
    a, b = ["good", "good", "good", "bad"], ["bad", "plain", "bad", "good"]
    verdicts = judge_pairs(judge, prompts, a, b)
    assert [v.p_first for v in verdicts] == pytest.approx([sigmoid(2), sigmoid(1), sigmoid(2), sigmoid(-2)])
    assert judge.items == 5  # (p, good) (p, bad) (p, plain) (q, good) (q, bad)
    assert verdicts[0].details == {"score_a": 1.0, "score_b": -1.0, "mass_a": None, "mass_b": None}
    assert all(v.consistent is None for v in verdicts)


@pytest.mark.parametrize("kind", ["pairwise", "pointwise"])
def test_unparseable_items_give_no_verdict(kind):
    judge = ScriptedJudge(kind, unparseable={"???"})
    verdicts = judge_pairs(judge, ["p", "p"], ["good", "???"], ["bad", "bad"])
    assert verdicts[0].p_first is not None
    assert verdicts[1] == PairVerdict(None, None, verdicts[1].details) and verdicts[1].confidence is None


def test_judge_pairs_checks_lengths_and_shows_progress(capsys):
    with pytest.raises(ValueError, match="3 prompts, 2 a"):
        judge_pairs(ScriptedJudge(), ["p"] * 3, ["a", "b"], ["c", "d", "e"])
    judge_pairs(ScriptedJudge(batch_size=2), ["p"] * 3, ["good", "bad", "x"], ["bad", "good", "y"], progress=True)
    assert "item" in capsys.readouterr().err
    assert judge_pairs(ScriptedJudge(), [], [], []) == []
    assert math.isclose(PairVerdict(0.2, None, {}).confidence, 0.8)


def test_verdict_logprobs_of_half_precision_logits_keep_a_float32_normaliser(parts):
    judge = make(parts, "pointwise", verdict="rating")
    generator = torch.Generator().manual_seed(0)
    # large logits: a normaliser rounded to bfloat16 (steps of 0.125 near 40) would be off by far more than 1e-4
    logits = (torch.randn(3, len(parts[1]), generator=generator) * 4 + 40).bfloat16()
    got = judge._verdict_logprobs(logits)
    logp = torch.log_softmax(logits.double(), -1)
    want = torch.stack([torch.logsumexp(logp[:, ids], -1) for ids in judge.choice_ids], -1)
    assert got.dtype == torch.float32 and got.shape == (3, 9)
    assert torch.allclose(got.double(), want, atol=1e-4)


def test_a_plain_text_judge_reads_its_verdict_words_and_needs_no_chat_template(parts):
    import copy

    model, tok = parts
    plain_tok = copy.deepcopy(tok)
    plain_tok.chat_template = None
    prompt = judge_prompt("pointwise", template="Request: {prompt}\nReview: {completion}\nThe review is",
                          few_shot=SHOTS["pointwise"], chat=False, verdict_words=["good", "bad"], files=False)
    judge = LMPointwiseJudge(model, plain_tok, prompt, batch_size=2)
    whole = LMPointwiseJudge(model, plain_tok, prompt, batch_size=3, prefix_cache=False)
    got = judge.scores(PROMPTS, FIRSTS)
    good, bad = verdict_token_ids(plain_tok, ["good", "bad"])
    expected = []
    for item in zip(PROMPTS, FIRSTS):
        text = prompt.text(*item)
        assert text.startswith("Request: Say hi\nReview: Hello!\nThe review is good\n\n") and text.endswith("is")
        lp = hand_logprobs(model, plain_tok, plain_tok(text)["input_ids"])
        expected.append(float(torch.logsumexp(lp[good], 0) - torch.logsumexp(lp[bad], 0)))
    assert got == pytest.approx(expected, abs=1e-4)
    assert whole.scores(PROMPTS, FIRSTS) == pytest.approx(got, abs=1e-4)
    assert max(got) - min(got) > 1e-3 and len(judge.preamble_ids()) > 20
    from rlhf.models import ModelError

    with pytest.raises(ModelError, match="no chat template.*judge_chat=false"):
        LMPointwiseJudge(model, plain_tok, judge_prompt("pointwise", files=False))
