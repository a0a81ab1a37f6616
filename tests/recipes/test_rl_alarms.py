"""Alarms in the online recipes (RELIABILITY.md case 17): the KL alarm warns or stops a run that
drifts from its reference; eval_data with eval_reward logs eval/* and warns when the training
reward rises while the held-out scorer falls."""

import json
import logging
from pathlib import Path

import pytest

import rlhf.recipes._online as online
from rlhf.cli import main
from rlhf.config import ConfigError
from rlhf.recipes.grpo import GRPOConfig, grpo
from rlhf.recipes.online_dpo import OnlineDPOConfig, online_dpo
from rlhf.recipes.ppo import PPOConfig, ppo
from rlhf.testing import tiny_causal_lm, tiny_tokenizer
from tests.recipes.rl_rewards import near_a

PROMPTS = [{"prompt": f"say something {i}:"} for i in range(16)]
HELD_OUT = [{"prompt": f"tell me about {i}:"} for i in range(6)]
REWARDS_FILE = str(Path(__file__).with_name("rl_rewards.py"))
MAX_KL = 1e-3


def against_a(prompts, completions, **columns):
    """A held-out scorer that contradicts the training reward `near_a`."""
    return [-r for r in near_a(prompts, completions)]


def _metrics(path):
    return [json.loads(line) for line in (Path(path) / "metrics.jsonl").read_text().splitlines()]


def _alarm_warnings(caplog, what):
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "rlhf.train.alarms" and what in r.getMessage()]


def _first_alarm(metrics, patience):
    """(step, kl) where `patience` steps in a row first logged a KL above MAX_KL, else None."""
    over = 0
    for m in metrics:
        over = over + 1 if m["kl"] > MAX_KL else 0
        if over == patience:
            return m["step"], m["kl"]
    return None


def _grpo(out, *, reward=near_a, eval_reward=None, eval_data=None, **overrides):
    tok = tiny_tokenizer()
    fields = dict(output_dir=str(out), batch_size=4, lr=1e-2, max_steps=6, num_generations=4, max_new_tokens=8,
                  beta=0.04, progress=False)
    fields.update(overrides)
    return grpo(GRPOConfig(**fields), train_data=PROMPTS, eval_data=eval_data, model=tiny_causal_lm(tok, seed=0),
                ref_model=tiny_causal_lm(tok, seed=0), tokenizer=tok, reward=reward, eval_reward=eval_reward)


def test_grpo_kl_alarm_warns_once_naming_the_step_and_the_kl(tmp_path, caplog):
    result = _grpo(tmp_path, max_kl=MAX_KL, kl_patience=2)
    metrics = _metrics(tmp_path)
    alarm = _first_alarm(metrics, 2)
    assert alarm is not None, [m["kl"] for m in metrics]  # lr 1e-2 moves the tiny policy well past 1e-3 nats
    step, kl = alarm
    warnings = _alarm_warnings(caplog, "KL to the reference")
    assert len(warnings) == 1
    assert warnings[0].startswith(f"step {step}: KL to the reference {kl:.4g} nats per completion is above "
                                  "max_kl=0.001 for 2 consecutive steps; training goes on")
    assert result.stopped is None and result.final_dir is not None and len(metrics) == 6


def test_grpo_stop_on_kl_checkpoints_the_step_and_stops_without_final(tmp_path, caplog):
    result = _grpo(tmp_path, max_kl=MAX_KL, kl_patience=2, stop_on_kl=True)
    metrics = _metrics(tmp_path)
    step, kl = _first_alarm(metrics, 2)
    assert step < 6 and metrics[-1]["step"] == step  # stopped at the alarm, its metrics line written
    assert result.final_dir is None and not (tmp_path / "final").exists()
    assert result.stopped.startswith(f"step {step}: KL to the reference {kl:.4g} nats per completion")
    assert "stop_on_kl=true" in result.stopped
    assert (tmp_path / "checkpoints" / f"step-{step}").is_dir()
    assert f"stopped early at step {step}" in caplog.text
    state = json.loads((tmp_path / "checkpoints" / f"step-{step}" / "state.json").read_text())
    assert state["recipe"]["kl_alarm"] == {"over": 2, "warned": True}
    # the alarm keys only watch: the stopped run resumes with the alarm raised out of reach
    resumed = _grpo(tmp_path, max_kl=1e9, kl_patience=2, stop_on_kl=True, resume=True)
    assert resumed.stopped is None and resumed.final_dir is not None and _metrics(tmp_path)[-1]["step"] == 6


@pytest.mark.parametrize("contradicts", [True, False])
def test_grpo_warns_of_over_optimisation_when_the_held_out_scorer_disagrees(tmp_path, caplog, contradicts):
    _grpo(tmp_path, eval_data=HELD_OUT, eval_reward=against_a if contradicts else near_a, eval_every=1,
          eval_window=2, save_every=3)
    metrics = _metrics(tmp_path)
    rewards = [m["eval/reward"] for m in metrics]
    heldout = [m["eval/heldout"] for m in metrics]
    assert heldout == pytest.approx([-r if contradicts else r for r in rewards])
    assert all(m["eval/completion_length"] > 0 for m in metrics)
    warnings = _alarm_warnings(caplog, "over-optimisation")
    if not contradicts:  # a scorer that agrees with the reward can never fall while it rises
        assert warnings == []
        return
    # the first evaluation whose reward beat the one before it (the held-out score then fell with it)
    step = next(m["step"] for prev, m in zip(metrics, metrics[1:]) if m["eval/reward"] > prev["eval/reward"])
    assert warnings and warnings[0].startswith(f"step {step}: possible reward over-optimisation: over the last 2 "
                                               f"evaluations (steps {step - 1} to {step})")
    i = step - 1
    assert (f"rose from {rewards[i - 1]:.4g} to {rewards[i]:.4g} while the held-out score (eval/heldout) fell "
            f"from {heldout[i - 1]:.4g} to {heldout[i]:.4g}") in warnings[0]
    state = json.loads((tmp_path / "checkpoints" / "step-3" / "state.json").read_text())
    assert [h[0] for h in state["recipe"]["overoptimisation"]["history"]] == [2, 3]  # survives a resume


def test_eval_data_alone_logs_the_training_reward_on_held_out_prompts(tmp_path):
    _grpo(tmp_path, eval_data=HELD_OUT, max_steps=2)  # eval_every=0: at the end only
    first, last = _metrics(tmp_path)
    assert "eval/reward" not in first
    assert "eval/reward" in last and "eval/heldout" not in last


def test_evaluations_sample_the_same_prompts_with_the_same_seeds(tmp_path):
    # lr 0: the policy never changes, so every evaluation must read the same numbers
    _grpo(tmp_path, eval_data=HELD_OUT, eval_reward=against_a, eval_every=1, max_steps=3, lr=0.0)
    assert len({m["eval/reward"] for m in _metrics(tmp_path)}) == 1


def test_alarm_keys_are_checked_before_any_model_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(online, "load_causal_lm", lambda *a, **k: pytest.fail("model loaded"))
    base = dict(output_dir=str(tmp_path), reward="x.py:f", data="x.jsonl")
    with pytest.raises(ConfigError, match="'eval_reward' needs 'eval_data'"):
        grpo(GRPOConfig(**base, eval_reward="rules.py:gold"))
    with pytest.raises(ConfigError, match="'max_kl': this run measures no KL to a reference .beta=0"):
        grpo(GRPOConfig(**base, beta=0.0, max_kl=5.0))
    with pytest.raises(ConfigError, match="'stop_on_kl' needs 'max_kl'"):
        ppo(PPOConfig(**base, stop_on_kl=True))
    with pytest.raises(ConfigError, match="'eval_window' must be >= 2"):
        online_dpo(OnlineDPOConfig(**base, eval_window=1))
    with pytest.raises(ConfigError, match="loss_type=simpo loads no reference model"):
        online_dpo(OnlineDPOConfig(**base, loss_type="simpo", max_kl=5.0))


def test_ppo_logs_held_out_scores_and_its_kl_alarm_warns(tmp_path, tiny_model_dir, caplog):
    config = PPOConfig(model=tiny_model_dir, output_dir=str(tmp_path), batch_size=4, lr=3e-3, max_steps=3,
                       num_generations=2, max_new_tokens=8, ppo_epochs=2, progress=False, eval_every=1,
                       max_kl=MAX_KL, kl_patience=1)
    ppo(config, train_data=PROMPTS, eval_data=HELD_OUT, tokenizer=tiny_tokenizer(), reward=near_a,
        eval_reward=against_a)
    metrics = _metrics(tmp_path)
    assert all(m["eval/heldout"] == pytest.approx(-m["eval/reward"]) for m in metrics)
    step, kl = _first_alarm(metrics, 1)
    assert _alarm_warnings(caplog, "KL to the reference")[0].startswith(f"step {step}: KL to the reference {kl:.4g}")


def test_online_dpo_logs_held_out_scores_and_its_kl_alarm_warns(tmp_path, caplog):
    tok = tiny_tokenizer()
    config = OnlineDPOConfig(output_dir=str(tmp_path), batch_size=4, lr=1e-2, max_steps=3, max_new_tokens=8,
                             progress=False, seed=5, eval_every=1, max_kl=MAX_KL, kl_patience=1)
    online_dpo(config, train_data=PROMPTS, eval_data=HELD_OUT, model=tiny_causal_lm(tok, seed=0), tokenizer=tok,
               reward=near_a, eval_reward=against_a)
    metrics = _metrics(tmp_path)
    assert all(m["eval/heldout"] == pytest.approx(-m["eval/reward"]) for m in metrics)
    step, kl = _first_alarm(metrics, 1)
    assert _alarm_warnings(caplog, "KL to the reference")[0].startswith(f"step {step}: KL to the reference {kl:.4g}")


def test_cli_takes_the_alarm_keys_and_an_eval_reward_file(tmp_path, tiny_model_dir, capsys):
    with pytest.raises(SystemExit):
        main(["grpo", "--help"])
    text = capsys.readouterr().out
    for key in ["max_kl", "kl_patience", "stop_on_kl", "eval_reward", "eval_window"]:
        assert f"  {key} (" in text, key
    data, held = tmp_path / "prompts.jsonl", tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS[:4]))
    held.write_text("".join(json.dumps(r) + "\n" for r in HELD_OUT[:2]))
    out = tmp_path / "out"
    assert main(["grpo", f"model={tiny_model_dir}", f"data={data}", f"eval_data={held}",
                 f"reward={REWARDS_FILE}:near_a", f"eval_reward={REWARDS_FILE}:count_a", f"output_dir={out}",
                 "max_steps=1", "batch_size=4", "num_generations=2", "max_new_tokens=4", "max_kl=100",
                 "progress=false"]) == 0
    assert {"eval/reward", "eval/heldout"} <= set(_metrics(out)[-1])
