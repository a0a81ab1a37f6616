import json
from pathlib import Path

import pytest

import rlhf.recipes._online as online
from rlhf.cli import main
from rlhf.data import DataError
from rlhf.recipes.grpo import GRPOConfig, grpo
from rlhf.rewards import RewardError
from rlhf.testing import tiny_causal_lm, tiny_tokenizer
from rlhf.train.loop import StopTraining
from tests.recipes.rl_rewards import near_a, skip_every_third
from tests.train.helpers import assert_same_weights, final_weights

PROMPTS = [{"prompt": f"say something {i}:"} for i in range(32)]
REWARDS_FILE = str(Path(__file__).with_name("rl_rewards.py"))


def _metrics(path):
    return [json.loads(line) for line in (Path(path) / "metrics.jsonl").read_text().splitlines()]


def _run(out, tok, reward=near_a, **overrides):
    fields = dict(output_dir=str(out), batch_size=8, lr=1e-2, epochs=4, num_generations=4, max_new_tokens=12,
                  beta=0.04, progress=False)
    fields.update(overrides)
    return grpo(GRPOConfig(**fields), train_data=PROMPTS, model=tiny_causal_lm(tok, seed=0),
                ref_model=tiny_causal_lm(tok, seed=0), tokenizer=tok, reward=reward)


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp"])
def test_reward_rises(tmp_path, estimator):
    _run(tmp_path, tiny_tokenizer(), estimator=estimator)
    rewards = [m["reward"] for m in _metrics(tmp_path)]
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.03, rewards
    last = _metrics(tmp_path)[-1]
    assert last["kl"] > 0  # the policy moved away from the reference, and we measure it
    assert last["entropy"] > 0
    if estimator == "grpo":  # GRPO's k3 sits in the loss (kl_penalty=auto); the others' KL in the reward
        assert last["kl_k3"] > 0
    else:
        assert "kl_k3" not in last
    for key in ["time/generate", "time/score", "time/reference", "time/update"]:
        assert 0 < last[key] < last["time_s"], key


def test_resume_samples_and_trains_exactly_as_an_uninterrupted_run(tmp_path):
    tok = tiny_tokenizer()

    def stop(step, metrics):
        if step == 3:
            raise StopTraining

    _run(tmp_path / "full", tok, epochs=1, save_every=2)
    grpo(GRPOConfig(output_dir=str(tmp_path / "part"), batch_size=8, lr=1e-2, epochs=1, num_generations=4,
                    max_new_tokens=12, beta=0.04, progress=False, save_every=2),
         train_data=PROMPTS, model=tiny_causal_lm(tok, seed=0), ref_model=tiny_causal_lm(tok, seed=0),
         tokenizer=tok, reward=near_a, callbacks=[stop])
    _run(tmp_path / "part", tok, epochs=1, save_every=2, resume=True)
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "part"))
    assert [m["reward"] for m in _metrics(tmp_path / "full")] == [m["reward"] for m in _metrics(tmp_path / "part")]


def test_beta_zero_loads_no_reference_model(tmp_path, monkeypatch, tiny_model_dir):
    loads = []
    real = online.load_causal_lm
    monkeypatch.setattr(online, "load_causal_lm", lambda *a, **k: loads.append(a) or real(*a, **k))
    for beta in (0.0, 0.1):
        grpo(GRPOConfig(model=tiny_model_dir, output_dir=str(tmp_path / str(beta)), batch_size=4, max_steps=1,
                        num_generations=2, max_new_tokens=4, beta=beta, progress=False),
             train_data=PROMPTS[:8], tokenizer=tiny_tokenizer(), reward=near_a)
    assert len(loads) == 1 + 2


def test_none_rewards_are_skipped(tmp_path):
    _run(tmp_path, tiny_tokenizer(), epochs=1, reward=skip_every_third, estimator="rloo", num_generations=3)
    metrics = _metrics(tmp_path)
    assert all(m["reward_none"] == pytest.approx(1 / 3) for m in metrics)
    assert all(m["loss_units"] == 16 for m in metrics)  # 8 prompts x 3 completions, one in three skipped


def test_bad_reward_spec_and_long_prompts_fail_before_any_model_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(online, "load_causal_lm", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(RewardError, match="no_such_module"):
        grpo(GRPOConfig(output_dir=str(tmp_path), reward="no_such_module:fn"), train_data=PROMPTS)
    tok = tiny_tokenizer()
    rows = PROMPTS[:4] + [{"prompt": "x" * 300}]
    with pytest.raises(DataError, match=r"row 5: field 'prompt': 300 tokens exceed max_prompt_length 64"):
        grpo(GRPOConfig(output_dir=str(tmp_path), max_prompt_length=64), train_data=rows, tokenizer=tok, reward=near_a)
    with pytest.raises(DataError, match="row 2"):
        grpo(GRPOConfig(output_dir=str(tmp_path)), train_data=[{"prompt": "ok"}, {"prompt": ""}], tokenizer=tok,
             reward=near_a)


def test_prompts_over_the_limit_can_be_dropped_and_counted(tmp_path, caplog):
    tok = tiny_tokenizer()
    rows = PROMPTS[:8] + [{"prompt": "x" * 300}]
    grpo(GRPOConfig(output_dir=str(tmp_path), batch_size=4, max_steps=1, num_generations=2, max_new_tokens=4,
                    beta=0.0, max_prompt_length=64, prompt_truncation="drop", progress=False),
         train_data=rows, model=tiny_causal_lm(tok), tokenizer=tok, reward=near_a)
    assert "kept 8/9 rows (0 truncated, 1 dropped)" in caplog.text


def test_cli_grpo_with_a_reward_function_file(tmp_path, tiny_model_dir):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS[:8]))
    out = tmp_path / "out"
    code = main(["grpo", f"model={tiny_model_dir}", f"data={data}", f"reward={REWARDS_FILE}:near_a",
                 f"output_dir={out}", "max_steps=2", "batch_size=4", "num_generations=2", "max_new_tokens=4",
                 "progress=false"])
    assert code == 0
    assert [m["step"] for m in _metrics(out)] == [1, 2]
    assert (out / "final" / "model.safetensors").is_file()


def test_a_model_without_sdpa_trains_on_plain_packed_rows_and_gets_the_same_result(tmp_path):
    # Shared-prompt branches need our packed SDPA kernel; an eager-attention model must fall back
    # to one row per completion rather than let each branch lose sight of its prompt.
    tok = tiny_tokenizer()
    config = dict(batch_size=4, lr=1e-2, max_steps=2, num_generations=2, max_new_tokens=6, beta=0.04, progress=False)
    for name, attention in [("sdpa", "sdpa"), ("eager", "eager")]:
        model = tiny_causal_lm(tok, seed=0)
        model.set_attn_implementation(attention)
        grpo(GRPOConfig(output_dir=str(tmp_path / name), **config), train_data=PROMPTS[:8], model=model,
             ref_model=tiny_causal_lm(tok, seed=0), tokenizer=tok, reward=near_a)
    assert_same_weights(final_weights(tmp_path / "sdpa"), final_weights(tmp_path / "eager"), atol=1e-5)
