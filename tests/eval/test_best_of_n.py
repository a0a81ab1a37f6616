"""`rlhf eval` policy spec bon:N: the best of N reference samples by the proxy, with the analytic KL.

The candidates are checked against a direct sampling of them (each prompt alone, with the seeds
`sample_seed` gives), bon:1 against the reference, and the cost in generate calls is counted."""

import json
import math

import pytest

from rlhf.config import ConfigError
from rlhf.eval import evaluate as ev
from rlhf.eval.evaluate import EvalConfig, best_of_n, evaluate
from rlhf.recipes._online import prompt_seed
from rlhf.rollout import HFRollout
from rlhf.testing import save_tiny_model

SCORERS = '''
def length(prompts, completions, **columns):
    return [float(len(c)) for c in completions]

def neg_length(prompts, completions, **columns):
    return [-float(len(c)) for c in completions]

def checksum(prompts, completions, **columns):
    # nearly always distinct between completions: a proxy with few ties
    return [float(sum(ord(ch) * (i + 1) for i, ch in enumerate(c)) % 10007) for c in completions]
'''
PROMPTS, SAMPLES, BATCH = 5, 2, 3


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bon")
    ref = save_tiny_model(root / "ref", seed=0)
    (root / "scorers.py").write_text(SCORERS)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}: hello?"}) + "\n" for i in range(PROMPTS)))
    return {"root": root, "ref": ref, "prompts": str(prompts), "scorers": str(root / "scorers.py")}


def config(world, out, **overrides):
    scorers = world["scorers"]
    values = dict(policies=["bon:4", "bon:1"], ref_model=world["ref"], data=world["prompts"], max_new_tokens=6,
                  temperature=1.0, num_samples=SAMPLES, batch_size=BATCH, output_dir=str(out), progress=False,
                  scorers={"gold": f"{scorers}:length"}, proxy=f"{scorers}:checksum")
    values.update(overrides)
    return EvalConfig(**values)


@pytest.fixture
def generate_calls(monkeypatch):
    """Every HFRollout.generate call's number of prompts (each with num_samples rows)."""
    calls = []
    original = HFRollout.generate

    def counted(self, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return original(self, prompts, *args, **kwargs)

    monkeypatch.setattr(HFRollout, "generate", counted)
    return calls


def direct_candidates(world, settings, n):
    """candidates[k][(i, g)] = the completion of prompt i, sample g, candidate k: each prompt
    sampled alone from the reference with seed sample_seed(seed, i, k)."""
    from transformers import AutoModelForCausalLM

    from rlhf.data.prompts import tokenize_prompts
    from rlhf.models import load_tokenizer
    from rlhf.recipes._shared import read_rows

    tokenizer = load_tokenizer(world["ref"])
    model = AutoModelForCausalLM.from_pretrained(world["ref"])
    examples, _ = tokenize_prompts(read_rows(world["prompts"], "prompt"), tokenizer,
                                   max_length=settings["max_prompt_length"])
    generation = ev._generation_config({k: settings[k] for k in ev.SAMPLING_KEYS}, SAMPLES)
    backend = HFRollout(model, tokenizer)
    out = []
    for k in range(n):
        drawn = {}
        for i, e in enumerate(examples):
            rollout = backend.generate([e["prompt_ids"]], generation, seeds=[ev.sample_seed(settings["seed"], i, k)])
            for g in range(SAMPLES):
                drawn[(i, g)] = rollout.completions[g]
        out.append(drawn)
    return out


def checksum(text):
    return float(sum(ord(ch) * (i + 1) for i, ch in enumerate(text)) % 10007)


def test_bon_1_is_the_reference_and_bon_4_the_proxys_favourite_of_four_direct_candidates(
        world, tmp_path, generate_calls):
    results = evaluate(config(world, tmp_path))
    assert json.loads((tmp_path / "eval.json").read_text()) == json.loads(json.dumps(results))
    assert (tmp_path / "report.html").is_file()
    reference, bon1, bon4 = results["policies"]
    assert [p["name"] for p in results["policies"]] == ["reference", "bon:1", "bon:4"]  # bon: last, by N

    # cost: the reference's ceil(5/3) = 2 calls; bon:1 none (candidate 0 is the reference's sample);
    # bon:4 the 3 further candidates of 5 prompts, 3 prompts a call: ceil(15/3) = 5
    assert generate_calls == [3, 2] + [3] * 5

    # bon:1 is the reference: its samples and scores, the first candidate every time, KL 0
    keys = ("prompt_index", "sample_index", "prompt", "completion", "length", "truncated", "scores")
    assert [{k: s[k] for k in keys} for s in bon1["samples"]] == [{k: s[k] for k in keys} for s in reference["samples"]]
    assert all(s["candidate"] == 0 and s["kl"] is None for s in bon1["samples"])
    assert bon1["kl"] == {"mean": 0.0, "se": 0.0, "analytic": True} and bon1["scores"] == reference["scores"]
    assert bon1["win_rate"]["proxy"]["ties"] == PROMPTS * SAMPLES

    # bon:4: each sample is the proxy's favourite of 4 candidates drawn directly (each prompt alone)
    assert bon4["kl"] == {"mean": pytest.approx(math.log(4) - 3 / 4), "se": 0.0, "analytic": True}
    assert (bon4["model"], bon4["method"], bon4["best_of"]) == ("bon:4", "best-of-n", 4)
    candidates = direct_candidates(world, results["settings"], 4)
    assert [candidates[0][(s["prompt_index"], s["sample_index"])] for s in reference["samples"]] == \
        [s["completion"] for s in reference["samples"]]  # candidate 0 is the reference's own sample
    assert len({candidates[k][(0, 0)] for k in range(4)}) > 1  # the candidates differ
    for sample in bon4["samples"]:
        drawn = [candidates[k][(sample["prompt_index"], sample["sample_index"])] for k in range(4)]
        proxy = [checksum(c) for c in drawn]
        best = proxy.index(max(proxy))  # the first of the highest
        assert (sample["candidate"], sample["completion"]) == (best, drawn[best])
        # scored by every scorer like any policy's sample; the proxy score is the one it won with
        assert sample["scores"] == {"gold": float(len(drawn[best])), "proxy": max(proxy)}
        assert sample["kl"] is None
    assert {s["candidate"] for s in bon4["samples"]} != {0}
    # the proxy's favourite never loses to the reference on the proxy
    assert bon4["scores"]["proxy"]["mean"] > reference["scores"]["proxy"]["mean"]
    assert bon4["win_rate"]["proxy"]["losses"] == 0 and bon4["win_rate"]["proxy"]["wins"] > 0
    # the bon: points are one curve for the over-optimisation flags: reference -> bon:1 -> bon:4
    assert bon4["overoptimisation"]["vs"] == "bon:1" and bon1["overoptimisation"]["vs"] == "reference"


def test_candidates_are_shared_by_seed_and_a_rerun_resumes(world, tmp_path, generate_calls, monkeypatch):
    first = evaluate(config(world, tmp_path, policies=["bon:4"]))
    generate_calls.clear()
    # bon:8 in a later call samples its candidates 1..7 afresh; 1..3 are bon:4's (the same seeds),
    # so it is never below bon:4 on the proxy, and equal to it wherever one of those won
    second = evaluate(config(world, tmp_path, policies=["bon:4", "bon:8"]))
    assert generate_calls == [3] * 11 + [2]  # 7 x 5 (candidate, prompt) pairs, 3 a call; the rest resumed
    assert second["policies"][:2] == first["policies"][:2]
    bon4, bon8 = second["policies"][1:]
    assert bon8["kl"]["mean"] == pytest.approx(math.log(8) - 7 / 8)
    for a, b in zip(bon4["samples"], bon8["samples"]):
        assert b["scores"]["proxy"] >= a["scores"]["proxy"]
        if b["candidate"] < 4:
            assert (b["candidate"], b["completion"]) == (a["candidate"], a["completion"])
    assert any(b["candidate"] >= 4 for b in bon8["samples"])

    # the resume record's fingerprint holds N and the proxy: the same settings load nothing,
    # another proxy recomputes
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ev, "load_causal_lm", no_loading)
    assert evaluate(config(world, tmp_path, policies=["bon:4", "bon:8"])) == second
    with pytest.raises(AssertionError, match="a model was loaded"):
        evaluate(config(world, tmp_path, policies=["bon:4"], proxy=f"{world['scorers']}:neg_length"))


def test_bon_stamp_holds_n_and_the_proxy(world, tmp_path):
    cfg = config(world, tmp_path)
    points = lambda proxy: {p.name: p.stamp for p in ev._resolve_policies(cfg, None, proxy=proxy)[1]}  # noqa: E731
    a, b = points(f"{world['scorers']}:checksum"), points(f"{world['scorers']}:length")
    assert a["bon:4"] != a["bon:1"] and a["bon:4"] != b["bon:4"]
    assert a["bon:4"][:3] == ["best-of-n", 4, f"{world['scorers']}:checksum"]


def test_bon_needs_a_proxy_and_a_whole_n_before_any_model_loads(world, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ev, "load_causal_lm", no_loading)
    with pytest.raises(ConfigError, match=r"policy 'bon:4'.*proxy=SPEC"):
        evaluate(config(world, tmp_path / "o", proxy=None))
    for bad in ("bon:0", "bon:-1", "bon:2.5", "bon:x", "bon:"):
        with pytest.raises(ConfigError, match=rf"policy '{bad}': expected bon:N with N a whole number >= 1"):
            evaluate(config(world, tmp_path / "o", policies=[bad]))
    assert not (tmp_path / "o").exists()


def test_seeds_candidate_zero_is_the_policies_seed_and_the_others_differ():
    assert [ev.sample_seed(7, i) for i in range(4)] == [prompt_seed(7, 0, i) for i in range(4)]
    assert [ev.sample_seed(7, i, 0) for i in range(4)] == [prompt_seed(7, 0, i) for i in range(4)]
    seeds = {ev.sample_seed(7, i, k) for i in range(50) for k in range(17)}
    assert len(seeds) == 50 * 17 and all(0 <= s < 2**63 for s in seeds)
    assert ev.sample_seed(7, 3, 2) == ev.sample_seed(7, 3, 2) != ev.sample_seed(8, 3, 2)


def test_best_of_n_picks_the_highest_proxy_first_on_ties_none_loses():
    def sample(i, proxy, text):
        return {"prompt_index": i, "sample_index": 0, "completion": text, "kl": 0.0,
                "scores": {"proxy": proxy, "gold": 1.0}}

    sets = [[sample(0, 1.0, "a0"), sample(1, None, "b0"), sample(2, None, "c0"), sample(3, float("nan"), "d0")],
            [sample(0, 2.0, "a1"), sample(1, -5.0, "b1"), sample(2, None, "c1"), sample(3, 0.0, "d1")],
            [sample(0, 2.0, "a2"), sample(1, -6.0, "b2"), sample(2, None, "c2"), sample(3, None, "d2")]]
    chosen = best_of_n(sets)
    assert [(s["completion"], s["candidate"]) for s in chosen] == [("a1", 1), ("b1", 1), ("c0", 0), ("d1", 1)]
    assert chosen[0]["scores"] == {"proxy": 2.0} and chosen[0]["kl"] is None
    assert sets[1][0]["scores"] == {"proxy": 2.0, "gold": 1.0} and sets[1][0]["kl"] == 0.0  # inputs untouched
    with pytest.raises(ValueError, match="same .prompt, sample index. order"):
        best_of_n([sets[0], list(reversed(sets[1]))])


def test_bon_through_the_cli(world, tmp_path, capsys):
    from rlhf.cli import main

    code = main(["eval", "policies=[bon:4]", f"ref_model={world['ref']}", f"data={world['prompts']}",
                 "max_new_tokens=4", "num_samples=1", f"output_dir={tmp_path}", "progress=false",
                 f"scorers.gold={world['scorers']}:length", f"proxy={world['scorers']}:checksum"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "bon:4" in printed and f"{math.log(4) - 0.75:.3f} analytic" in printed
    results = json.loads((tmp_path / "eval.json").read_text())
    assert [p["name"] for p in results["policies"]] == ["reference", "bon:4"]
    assert results["policies"][1]["kl"]["analytic"] is True
    assert (tmp_path / "policies" / "bon_4.json").is_file()
