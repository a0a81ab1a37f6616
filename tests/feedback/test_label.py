"""`rlhf label`: scripted judges give known labels; counts, cache, sampling, and the labels train."""

import json
import math

import pytest

import rlhf.models.loading as loading
from rlhf.cli import main
from rlhf.config import ConfigError
from rlhf.data import DataError, load_rows, validate_rows
from rlhf.data.preference import tokenize_pairs
from rlhf.feedback.quality import format_report
from rlhf.recipes.label import LabelConfig, label
from rlhf.testing import tiny_causal_lm, tiny_tokenizer
from tests.feedback.scripted import Killed, ScriptedJudge, sigmoid
from tests.recipes.preference_data import marker_pairs


def marker_rows(n, seed=0):
    """Distinct prompt rows with a 'good' and a 'bad' candidate (the bad one listed first) and an extra column."""
    return [{"prompt": f"{i}. {p['prompt']}", "completions": [p["rejected"], p["chosen"]], "topic": i}
            for i, p in enumerate(marker_pairs(n, seed))]


def config(tmp_path, name="run", **kw):
    return LabelConfig(output_dir=str(tmp_path / name), progress=False, **kw)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("kind", ["pointwise", "pairwise"])
def test_a_scripted_judge_gives_the_expected_labels(tmp_path, kind):
    judge = ScriptedJudge(kind, position_bias=0.1 if kind == "pairwise" else 0.0)
    result = label(config(tmp_path, judge_kind=kind), data=marker_rows(12), judge=judge)
    rows = read_jsonl(result.labels_path)
    assert rows == result.rows and len(rows) == 12
    for i, row in enumerate(rows):
        assert "good" in row["chosen"] and "bad" in row["rejected"]
        assert row["judge"] == "scripted" and row["template_sha"] == judge.template_sha and row["topic"] == i
    if kind == "pointwise":  # sigmoid(1 - (-1))
        assert all(row["confidence"] == pytest.approx(sigmoid(2.0)) for row in rows)
    else:  # both orders averaged: the planted position bias cancels
        assert all(row["confidence"] == pytest.approx(sigmoid(2.0)) for row in rows)
    report = json.loads(result.report_path.read_text())
    assert report["n_pairs"] == 12 and report["n_dropped"] == 0 and report["n_unparsed"] == 0
    assert report["judge"] == "scripted" and report["judge_kind"] == kind
    assert report["template_sha"] == judge.template_sha
    assert report["position_consistency"] == (1.0 if kind == "pairwise" else None)
    assert report["mean_confidence"] == pytest.approx(rows[0]["confidence"])
    assert report["items_per_s"] > 0


def test_labels_are_preference_rows_the_readers_take(tmp_path, tokenizer):
    result = label(config(tmp_path), data=marker_rows(8), judge=ScriptedJudge("pointwise"))
    rows = validate_rows(load_rows(str(result.labels_path)), "preference")
    examples, stats = tokenize_pairs(rows, tokenizer, max_length=128)
    assert len(examples) == 8 and stats.dropped == 0


def test_without_debiasing_a_position_bias_shows_and_consistency_is_not_reported(tmp_path):
    # one order only: +0.5 for the answer shown first outweighs the merit difference (sigmoid(-2) = 0.12)
    result = label(config(tmp_path, judge_kind="pairwise", debias=False), data=marker_rows(24),
                   judge=ScriptedJudge("pairwise", position_bias=0.5))
    wrong = [row for row in result.rows if "bad" in row["chosen"]]
    assert 0 < len(wrong) < 24  # the bad answer wins exactly where it was listed first
    assert result.report["position_consistency"] is None


def test_min_confidence_drops_and_counts(tmp_path):
    rows = marker_rows(6)
    rows[0]["completions"] = [" good", " good and fine"]  # merit 1 vs 1: an exact tie
    rows[1]["completions"] = [" fine", " good"]  # merit 0 vs 1: sigmoid(1) = 0.73
    result = label(config(tmp_path, min_confidence=0.8), data=rows, judge=ScriptedJudge("pointwise"))
    report = result.report
    assert report["n_pairs"] == 4 and report["n_dropped"] == 2
    assert report["dropped_share"] == pytest.approx(2 / 6)
    assert all(row["confidence"] >= 0.8 for row in result.rows)
    assert report["tie_rate"] == pytest.approx(1 / 6)  # the exact tie
    # min_confidence 0.5 keeps the 0.73 pair, but an exact tie prefers nothing and is never labelled
    kept = label(config(tmp_path, "all"), data=rows, judge=ScriptedJudge("pointwise"))
    assert kept.report["n_pairs"] == 5 and kept.report["n_dropped"] == 1


@pytest.mark.parametrize("kind", ["pointwise", "pairwise"])
def test_unparseable_verdicts_are_counted_and_never_labelled(tmp_path, kind):
    rows = marker_rows(5)
    rows[2]["completions"][1] = " cannot parse"
    judge = ScriptedJudge(kind, unparseable={" cannot parse"})
    result = label(config(tmp_path, judge_kind=kind), data=rows, judge=judge)
    assert result.report["n_unparsed"] == 1 and result.report["n_pairs"] == 4 and result.report["n_judged"] == 5
    assert all(" cannot parse" not in (row["chosen"], row["rejected"]) for row in result.rows)
    assert "unparsed 1" in format_report(result.report)


def test_identical_candidates_are_not_judged(tmp_path):
    rows = marker_rows(3)
    rows[1]["completions"] = [" same", " same"]
    judge = ScriptedJudge("pointwise")
    result = label(config(tmp_path), data=rows, judge=judge)
    assert result.report["n_skipped"] == 1 and result.report["n_judged"] == 2 and result.report["n_pairs"] == 2


def test_a_rerun_costs_the_judge_nothing(tmp_path):
    first = ScriptedJudge("pairwise")
    one = label(config(tmp_path, judge_kind="pairwise"), data=marker_rows(10), judge=first)
    assert first.items == 20  # both orders of 10 pairs
    again = ScriptedJudge("pairwise")
    two = label(config(tmp_path, judge_kind="pairwise"), data=marker_rows(10), judge=again)
    assert again.items == 0
    assert two.rows == one.rows
    assert two.report["cache_hits"] > 0 and two.report["cache_misses"] == 0
    fresh = ScriptedJudge("pairwise")
    label(config(tmp_path, judge_kind="pairwise", resume=False), data=marker_rows(10), judge=fresh)
    assert fresh.items == 20  # resume=false: the cache is started afresh


def test_a_killed_run_resumes_judging_only_what_is_left(tmp_path):
    rows = marker_rows(40)
    killed = ScriptedJudge("pointwise", fail_after=50)
    with pytest.raises(Killed):
        label(config(tmp_path), data=rows, judge=killed)
    assert not (tmp_path / "run" / "labels.jsonl").exists()  # no half-written labels
    done = killed.items
    assert 0 < done <= 50
    rest = ScriptedJudge("pointwise")
    result = label(config(tmp_path), data=rows, judge=rest)
    assert rest.items == 80 - done  # 40 pairs, 2 scores each: only what the killed run had not stored
    fresh = label(config(tmp_path, "fresh"), data=rows, judge=ScriptedJudge("pointwise"))
    assert result.rows == fresh.rows


def test_pairing_all_and_best_worst(tmp_path):
    rows = [{"prompt": "p", "completions": [" bad bad", " good", " fine", " good good"]},
            {"prompt": "q", "completions": [" fine", " bad", " good"]}]
    every = label(config(tmp_path, "all", pairing="all"), data=rows, judge=ScriptedJudge("pointwise"))
    assert every.report["n_judged"] == 6 + 3 and every.report["n_pairs"] == 9
    best = label(config(tmp_path, "bw", pairing="best_worst"), data=rows, judge=ScriptedJudge("pointwise"))
    assert [(r["chosen"], r["rejected"]) for r in best.rows] == [(" good good", " bad bad"), (" good", " bad")]
    assert best.report["n_judged"] == 9  # every pair judged to rank the candidates
    random = label(config(tmp_path, "random", pairing="random"), data=rows, judge=ScriptedJudge("pointwise"))
    assert random.report["n_judged"] == 2 + 1


def test_gold_agreement_is_reported_next_to_the_baselines(tmp_path):
    # gold prefers the shorter answer; the judge agrees on 'good' vs 'bad'
    rows = [{"prompt": "p", "completions": [" good", " bad and long"], "gold": [1.0, 0.0]},
            {"prompt": "q", "completions": [" good and long", " bad"], "gold": [0.0, 1.0]},
            {"prompt": "r", "completions": [" good", " bad"], "gold": [2.0, 2.0]}]
    result = label(config(tmp_path, gold_column="gold"), data=rows, judge=ScriptedJudge("pointwise"))
    report = json.loads(result.report_path.read_text())
    assert report["agreement"] == pytest.approx(0.5)  # right on p, wrong on q; r is a gold tie
    assert report["baseline_longer"] == pytest.approx(0.0)
    assert report["n_gold_ties"] == 1 and report["n_gold_pairs"] == 2
    assert 0.0 <= report["baseline_first"] <= 1.0
    assert "gold" not in result.rows[0]  # the per-candidate gold column does not travel with a pair


def test_gold_reward_scores_the_candidates(tmp_path):
    spec = tmp_path / "gold.py"
    spec.write_text("def shorter(prompts, completions, **columns):\n    return [-len(c) for c in completions]\n")
    result = label(config(tmp_path, gold_reward=f"{spec}:shorter"), data=marker_rows(10),
                   judge=ScriptedJudge("pointwise"))
    # ' x is good' is one character longer than ' x is bad': gold always prefers 'bad'
    assert result.report["agreement"] == 0.0 and result.report["baseline_longer"] == 0.0
    assert result.report["agreement_labelled"] == 0.0 and result.report["gold"] == f"{spec}:shorter"


def test_relabelling_chosen_rejected_against_the_datas_own_label(tmp_path):
    rows = marker_pairs(16, 0)
    for row in rows[:4]:
        row["chosen"], row["rejected"] = row["rejected"], row["chosen"]  # 4 of 16 mislabelled
    result = label(config(tmp_path, gold_column="chosen"), data=rows, judge=ScriptedJudge("pointwise"))
    assert result.report["agreement"] == pytest.approx(12 / 16)
    assert all("good" in row["chosen"] for row in result.rows)  # the labels are fixed
    # the pair's order is shuffled, so 'always the first' is no oracle of the data's label
    assert result.report["baseline_first"] < 1.0


def test_bad_rows_fail_with_file_line_and_field(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = marker_rows(3)
    rows[1]["completions"] = [" only one"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"prompts.jsonl:2: field 'completions': expected two or more"):
        label(config(tmp_path), data=str(path), judge=ScriptedJudge("pointwise"))
    with pytest.raises(DataError, match=r"row 1: missing field 'prompt'"):
        label(config(tmp_path), data=[{"completions": ["a", "b"]}], judge=ScriptedJudge("pointwise"))


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading, "load_causal_lm", refuse)
    monkeypatch.setattr(loading, "load_tokenizer", refuse)
    monkeypatch.setattr("rlhf.models.load_causal_lm", refuse)
    monkeypatch.setattr("rlhf.models.load_tokenizer", refuse)


def test_a_template_without_its_placeholders_fails_before_any_model_loads(tmp_path, no_model_loads):
    template = tmp_path / "template.txt"
    template.write_text("Is this answer good? Say Yes or No.")
    with pytest.raises(ConfigError, match="template"):
        label(config(tmp_path, template=str(template), policy=str(tmp_path / "policy")),
              data=[{"prompt": "p"}])


@pytest.mark.parametrize("kw, message", [
    (dict(min_confidence=0.4), "min_confidence"), (dict(num_candidates=1), "num_candidates"),
    (dict(gold_reward="x.py:f", gold_column="g"), "at most one"), (dict(temperature=-1.0), "temperature"),
])
def test_bad_config_values_fail_before_any_work(tmp_path, no_model_loads, kw, message):
    with pytest.raises(ConfigError, match=message):
        label(config(tmp_path, **kw), data=marker_rows(2))


def test_a_policy_samples_candidates_for_a_tiny_lm_judge(tmp_path, tiny_model_dir):
    from rlhf.feedback import build_judge

    tok = tiny_tokenizer()
    prompts = [{"prompt": f"Say something about {w}.", "topic": w} for w in ["apples", "rivers", "stones", "clouds",
                                                                             "tigers"]]
    options = config(tmp_path, "a", policy=tiny_model_dir, num_candidates=3, pairing="all", max_new_tokens=6,
                     sample_batch_size=2, judge_kind="pointwise")
    judge = build_judge(options, model=tiny_causal_lm(tok, seed=1), tokenizer=tok)
    one = label(options, data=prompts, judge=judge)
    assert one.report["n_candidates"] == 15 and one.report["sampled"]
    assert one.report["n_judged"] + one.report["n_skipped"] == 15  # 3 pairs per prompt
    assert one.report["n_pairs"] + one.report["n_dropped"] + one.report["n_unparsed"] == one.report["n_judged"]
    assert one.report["n_pairs"] > 0
    validate_rows(load_rows(str(one.labels_path)), "preference")
    # candidates are seeded per prompt: another batch size samples the same, and the judge's cache answers
    options_b = config(tmp_path, "a", policy=tiny_model_dir, num_candidates=3, pairing="all", max_new_tokens=6,
                       sample_batch_size=5, judge_kind="pointwise")
    two = label(options_b, data=prompts, judge=judge)
    assert [(r["chosen"], r["rejected"]) for r in two.rows] == [(r["chosen"], r["rejected"]) for r in one.rows]
    assert two.report["cache_misses"] == 0


def test_the_cli_labels_with_a_judge_from_a_model_directory(tmp_path, tiny_model_dir, capsys):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in marker_rows(4)))
    out = tmp_path / "cli"
    assert main(["label", f"data={path}", f"judge={tiny_model_dir}", "judge_kind=pairwise", f"output_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert "position consistency" in printed and str(out / "labels.jsonl") in printed
    report = json.loads((out / "label_report.json").read_text())
    assert report["n_judged"] == 4 and report["judge_kind"] == "pairwise"
    assert report["n_pairs"] + report["n_dropped"] + report["n_unparsed"] == 4


def test_the_cli_help_lists_the_label_keys(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["label", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for key in ("num_candidates", "pairing", "min_confidence", "gold_reward", "judge_kind", "template",
                "max_new_tokens", "temperature", "top_p", "top_k", "stop_strings", "max_prompt_length"):
        assert key in text


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def test_labels_train_a_reward_model_and_dpo_end_to_end(tmp_path, tiny_model_dir):
    from rlhf.recipes.dpo import DPOConfig, dpo
    from rlhf.recipes.reward import RewardConfig, reward

    result = label(config(tmp_path, "label"), data=marker_rows(96), judge=ScriptedJudge("pointwise"))
    assert len(result.rows) == 96
    reward(RewardConfig(model=tiny_model_dir, output_dir=str(tmp_path / "rm"), batch_size=8, lr=3e-3, epochs=2,
                        progress=False), train_data=str(result.labels_path))
    losses = _losses(tmp_path / "rm")
    # measured: 0.70 -> 0.05 on these labels; with the labels shuffled at random it stays at 0.69
    assert sum(losses[-4:]) / 4 < 0.2, losses
    tok = tiny_tokenizer()
    dpo(DPOConfig(output_dir=str(tmp_path / "dpo"), batch_size=8, lr=1e-3, epochs=1, progress=False),
        train_data=str(result.labels_path), model=tiny_causal_lm(tok, seed=0), tokenizer=tok)
    losses = _losses(tmp_path / "dpo")
    assert losses[0] == pytest.approx(math.log(2), abs=1e-3)
    assert sum(losses[-3:]) / 3 < 0.62, losses  # measured: 0.69 -> 0.56; random labels: 0.70


def test_the_example_config_loads_and_its_data_validates(monkeypatch):
    from pathlib import Path

    from rlhf.config import load_config
    from rlhf.feedback import check_judge_options
    from rlhf.feedback.pairs import read_items

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    cfg = load_config(LabelConfig, root / "examples" / "label.yaml")
    items = read_items(load_rows(cfg.data), sampled=cfg.policy is not None, gold_column=cfg.gold_column)
    assert len(items) > 0
    assert check_judge_options(cfg).kind == cfg.judge_kind  # its template and few-shot file are valid


def test_a_reward_source_labels_instead_of_the_judge_and_no_model_loads(tmp_path, monkeypatch):
    """reward=SPEC: the higher score wins with p = sigmoid(r_a - r_b), through the same cache and report."""
    def no_model(*args, **kwargs):
        raise AssertionError("a reward annotator must not load the judge model")

    monkeypatch.setattr(loading, "load_causal_lm", no_model)
    scorer = tmp_path / "score.py"
    scorer.write_text("def fn(prompts, completions, **_):\n    return [c.count('good') - 0.5 * len(c) / 100 for c in completions]\n")
    rows = marker_rows(6)
    result = label(config(tmp_path, reward=f"{scorer}:fn", judge="no-such-model"), data=rows)
    labelled = read_jsonl(result.labels_path)
    assert len(labelled) == 6
    for row in labelled:
        assert "good" in row["chosen"] and "bad" in row["rejected"]
        r_c = row["chosen"].count("good") - 0.5 * len(row["chosen"]) / 100
        r_r = row["rejected"].count("good") - 0.5 * len(row["rejected"]) / 100
        assert row["confidence"] == pytest.approx(sigmoid(r_c - r_r))
        assert row["judge"] == f"{scorer}:fn"
    again = label(config(tmp_path, reward=f"{scorer}:fn"), data=rows)
    assert again.report["cache_misses"] == 0 and again.report["cache_hits"] == 12
