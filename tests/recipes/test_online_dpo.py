import json
import math
from pathlib import Path

import pytest
import torch

import tests.feedback.scripted as scripted
from rlhf.cli import main
from rlhf.config import ConfigError, load_config
from rlhf.feedback import JudgeCache, check_judge_options
from rlhf.models import LoraConfig
from rlhf.recipes._shared import read_rows
from rlhf.recipes.online_dpo import (OnlineDPOConfig, judge_preferences, online_dpo, pair_rows,
                                     preferences_from_scores)
from rlhf.testing import tiny_causal_lm, tiny_tokenizer
from rlhf.train.loop import StopTraining
from tests.feedback.scripted import ScriptedJudge, refuse_model_loads
from tests.recipes.rl_rewards import near_a, near_a_or_none
from tests.train.helpers import assert_same_weights, final_weights

PROMPTS = [{"prompt": f"say something {i}:"} for i in range(16)]
REWARDS_FILE = str(Path(__file__).with_name("rl_rewards.py"))


def _metrics(path):
    return [json.loads(line) for line in (Path(path) / "metrics.jsonl").read_text().splitlines()]


def _run(out, reward=near_a, callbacks=None, judge=None, **overrides):
    tok = tiny_tokenizer()
    fields = dict(output_dir=str(out), batch_size=4, lr=1e-2, max_steps=4, max_new_tokens=8, beta=0.1,
                  progress=False, seed=5)
    fields.update(overrides)
    return online_dpo(OnlineDPOConfig(**fields), train_data=PROMPTS, model=tiny_causal_lm(tok, seed=0),
                      tokenizer=tok, reward=None if judge is not None else reward, judge=judge, callbacks=callbacks)


def test_the_higher_score_wins_and_ties_or_none_judge_nothing():
    scores = torch.tensor([1.0, 2.0, 3.0, 0.5, 1.0, 1.0, 0.0, 7.0])
    scored = torch.tensor([True, True, True, True, True, True, False, True])
    verdicts = preferences_from_scores(scores, scored)
    assert verdicts.first_wins.tolist()[:2] == [False, True]
    assert verdicts.judged.tolist() == [True, True, False, False]  # a tie, a None
    chosen, rejected = pair_rows(verdicts.first_wins, verdicts.judged)
    assert chosen.tolist() == [False, True, True, False, False, False, False, False]
    assert rejected.tolist() == [True, False, False, True, False, False, False, False]


def test_online_dpo_raises_the_preferred_reward(tmp_path):
    _run(tmp_path, max_steps=16, batch_size=8, lr=3e-2)
    metrics = _metrics(tmp_path)
    rewards = [m["reward"] for m in metrics]
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.05, rewards  # seeds 1, 2, 3, 5: +0.10 to +0.28
    accuracy = [m["rewards/accuracy"] for m in metrics]
    assert accuracy[0] == 0.0  # policy == reference: every implicit reward is 0, a tie counts as wrong
    assert sum(accuracy[-4:]) / 4 > 0.5, accuracy  # fresh pairs: the policy ranks them as the reward does
    last = metrics[-1]
    assert last["kl"] > 0 and last["completion_length"] > 0 and last["pairs_skipped"] < 0.5
    for key in ["time/generate", "time/score", "time/reference", "time/update"]:
        assert 0 < last[key] < last["time_s"], key


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_first_step_is_at_the_reference_at_the_sampling_temperature(tmp_path, loss_type):
    # the policy is its own reference before the first update, so h = 0 on every pair exactly
    # when the reference log-probs describe the tempered distribution the policy is trained on
    _run(tmp_path, max_steps=1, temperature=0.7, loss_type=loss_type)
    first = _metrics(tmp_path)[0]
    expected = math.log(2) if loss_type == "sigmoid" else (1 / (2 * 0.1)) ** 2
    assert first["loss"] == pytest.approx(expected, rel=1e-5)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert first["kl"] == pytest.approx(0.0, abs=1e-4)


def test_with_lora_the_reference_is_the_base_with_adapters_off(tmp_path):
    _run(tmp_path, max_steps=3, lora=LoraConfig(enabled=True, r=4))
    metrics = _metrics(tmp_path)
    assert metrics[0]["loss"] == pytest.approx(math.log(2), rel=1e-5)  # zero-initialised adapters: policy == base
    assert abs(metrics[-1]["kl"]) > 1e-3 and abs(metrics[-1]["rewards/margins"]) > 1e-5  # the adapters moved it
    assert (tmp_path / "final" / "config.json").is_file()


def test_two_micro_batches_equal_one(tmp_path):
    for accum in (1, 2):
        _run(tmp_path / str(accum), reward=near_a_or_none, max_steps=3, grad_accum=accum)
    assert_same_weights(final_weights(tmp_path / "1"), final_weights(tmp_path / "2"), atol=1e-5)
    for a, b in zip(_metrics(tmp_path / "1"), _metrics(tmp_path / "2")):
        for key in ["loss", "reward", "kl", "pairs_skipped", "rewards/accuracy"]:
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert any(m["pairs_skipped"] > 0 for m in _metrics(tmp_path / "1"))  # None scores were exercised


def test_judge_verdicts_pairwise_and_pointwise(tmp_path):
    examples = [{"prompt": "q"}] * 3
    completions = ["good", "bad", "same", "same", "oops", "good"]  # a win, a tie, an unparseable verdict
    cache = JudgeCache(tmp_path / "cache.jsonl")
    judge = ScriptedJudge("pairwise", position_bias=0.1, unparseable={"oops"})
    verdicts = judge_preferences(judge, cache, examples, completions, torch.device("cpu"))
    assert verdicts.judged.tolist() == [True, False, False] and bool(verdicts.first_wins[0])
    total, count = verdicts.stats["judge_confidence"]
    assert float(total) / float(count) == pytest.approx((scripted.sigmoid(2) + 0.5) / 2)  # the bias cancels
    assert verdicts.stats["judge_consistency"] == (1, 2) and verdicts.scores is None
    judge_preferences(judge, cache, examples, completions, torch.device("cpu"))
    assert judge.items == 5  # 3 pairs x 2 orders, ("same", "same") once; the second time all from the cache

    verdicts = judge_preferences(ScriptedJudge("pointwise", unparseable={"oops"}), None, examples, completions,
                                 torch.device("cpu"))
    assert verdicts.judged.tolist() == [True, False, False]
    assert verdicts.scores.tolist() == [1.0, -1.0, 0.0, 0.0, 0.0, 1.0]
    assert verdicts.scored.tolist() == [True, True, True, True, False, True]


@pytest.fixture
def letter_a_merit(monkeypatch):
    """The scripted judge's planted truth becomes closeness to 'a' (random bytes then differ in merit)."""
    monkeypatch.setattr(scripted, "merit", lambda text: 10 * near_a(None, [text])[0])


def test_resume_with_a_judge_trains_exactly_as_an_uninterrupted_run_and_hits_the_cache(tmp_path, letter_a_merit):
    def stop(step, metrics):
        if step == 3:
            raise StopTraining

    full, part, resumed = (ScriptedJudge("pairwise", position_bias=0.1) for _ in range(3))
    _run(tmp_path / "full", judge=full, max_steps=5, save_every=2)
    _run(tmp_path / "part", judge=part, max_steps=5, save_every=2, callbacks=[stop])
    _run(tmp_path / "part", judge=resumed, max_steps=5, save_every=2, resume=True)
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "part"), atol=1e-6)
    keys = ["loss", "judge_confidence", "judge_consistency", "pairs_skipped", "rewards/accuracy"]
    assert [[m[k] for k in keys] for m in _metrics(tmp_path / "full")] == \
        [[m[k] for k in keys] for m in _metrics(tmp_path / "part")]
    per_step = full.items // 5  # 4 pairs, both orders (fewer when two texts repeat)
    assert part.items == 3 * per_step and resumed.items == 2 * per_step  # step 3 came from the cache
    metrics = _metrics(tmp_path / "full")
    assert "reward" not in metrics[0] and all(0.5 <= m["judge_confidence"] <= 1 for m in metrics)
    assert any(m["rewards/accuracy"] > 0 for m in metrics) and any(m["judge_consistency"] < 1 for m in metrics)


def test_a_pointwise_judge_logs_its_scores_as_reward(tmp_path, letter_a_merit):
    _run(tmp_path, judge=ScriptedJudge("pointwise"), max_steps=1)
    first = _metrics(tmp_path)[0]
    assert 0 < first["reward"] < 10 and 0.5 < first["judge_confidence"] <= 1 and "judge_consistency" not in first


def test_a_tiny_language_model_judges_from_its_files(tmp_path, tiny_model_dir):
    tok = tiny_tokenizer()
    config = OnlineDPOConfig(output_dir=str(tmp_path), judge=tiny_model_dir, judge_kind="pairwise", batch_size=4,
                             max_steps=2, max_new_tokens=6, lr=1e-2, progress=False)
    online_dpo(config, train_data=PROMPTS, model=tiny_causal_lm(tok, seed=0), tokenizer=tok)
    metrics = _metrics(tmp_path)
    assert [m["step"] for m in metrics] == [1, 2] and all(0.5 <= m["judge_confidence"] <= 1 for m in metrics)
    assert len((tmp_path / "judge_cache.jsonl").read_text().splitlines()) == 2 * 2 * 4  # steps x orders x pairs


def none_in_first_micro_batch(prompts, completions, **columns):
    """Rows 0-3 of each call (the first two pairs) get None; the second completion of a pair wins."""
    return [None if i < 4 else float(i) for i in range(len(completions))]


def tie_every_pair(prompts, completions, **columns):
    return [float(i // 2) for i in range(len(completions))]


def test_skipped_pairs_are_counted_and_carry_no_weight(tmp_path):
    _run(tmp_path / "half", reward=none_in_first_micro_batch, max_steps=2, grad_accum=2)
    for m in _metrics(tmp_path / "half"):  # a whole micro-batch skipped, the other one trained
        assert m["pairs_skipped"] == 0.5 and m["loss_units"] == 2 and m["reward_none"] == 0.5
        assert m["loss"] > 0 and m["grad_norm"] > 0

    _run(tmp_path / "ties", reward=tie_every_pair, max_steps=2, grad_accum=2, weight_decay=0.1)
    for m in _metrics(tmp_path / "ties"):
        assert m["pairs_skipped"] == 1.0 and m["loss"] == 0.0 and m["grad_norm"] == 0.0
    start = tiny_causal_lm(tiny_tokenizer(), seed=0).state_dict()
    final = final_weights(tmp_path / "ties")
    assert all(torch.equal(final[k], start[k]) for k in final)  # nothing to learn: not even weight decay


def test_exactly_one_annotator_and_valid_files_before_any_model_loads(tmp_path, monkeypatch, tiny_model_dir):
    refuse_model_loads(monkeypatch)
    out = str(tmp_path)
    with pytest.raises(ConfigError, match="exactly one annotator, got neither"):
        online_dpo(OnlineDPOConfig(output_dir=out), train_data=PROMPTS)
    with pytest.raises(ConfigError, match="exactly one annotator, got both"):
        online_dpo(OnlineDPOConfig(output_dir=out, judge=tiny_model_dir), train_data=PROMPTS, reward=near_a)
    with pytest.raises(ConfigError, match="exactly one annotator, got both"):
        online_dpo(OnlineDPOConfig(output_dir=out, reward="x.py:f"), train_data=PROMPTS, judge=ScriptedJudge())
    with pytest.raises(ConfigError, match="template"):
        online_dpo(OnlineDPOConfig(output_dir=out, judge=tiny_model_dir, template=str(tmp_path / "none.txt")),
                   train_data=PROMPTS)
    with pytest.raises(ConfigError, match="label_smoothing"):
        online_dpo(OnlineDPOConfig(output_dir=out, loss_type="ipo", label_smoothing=0.1), train_data=PROMPTS,
                   reward=near_a)
    with pytest.raises(ConfigError, match="num_generations"):
        online_dpo(OnlineDPOConfig(output_dir=out, num_generations=4), train_data=PROMPTS, reward=near_a)


def test_cli_online_dpo_with_a_reward_function_file(tmp_path, tiny_model_dir):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS[:8]))
    out = tmp_path / "out"
    code = main(["online-dpo", f"model={tiny_model_dir}", f"data={data}", f"reward={REWARDS_FILE}:near_a",
                 f"output_dir={out}", "max_steps=2", "batch_size=4", "max_new_tokens=4", "loss_type=hinge",
                 "progress=false"])
    assert code == 0
    assert [m["step"] for m in _metrics(out)] == [1, 2]
    assert (out / "final" / "model.safetensors").is_file()


def test_the_example_config_and_its_judge_files_validate(monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    config = load_config(OnlineDPOConfig, "examples/online_dpo.yaml")
    assert config.judge == "smollm2-135m-instruct" and config.reward is None
    prompt = check_judge_options(config)
    assert prompt.kind == config.judge_kind == "pointwise"
    assert (prompt.chat, prompt.choices) == (False, ["positive", "negative"])  # the demo's measured judge setting
    assert len(read_rows(config.data, "prompt")) > 0
