"""GRPO against a reward server that misbehaves (issue 17): retries change nothing but `reward/retries`;
a server that stays down stops the run with its checkpoints intact, and `resume=true` continues exactly."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

import rlhf.recipes.grpo as grpo_module
from rlhf.recipes.grpo import GRPOConfig, grpo
from rlhf.rewards import HttpReward, RewardError
from rlhf.testing import tiny_causal_lm, tiny_tokenizer
from rlhf.train.checkpoint import MARKER, list_checkpoints
from tests.recipes.rl_rewards import near_a
from tests.rewards.flaky_server import FlakyRewardServer
from tests.train.helpers import assert_same_weights, final_weights

PROMPTS = [{"prompt": f"say something {i}:"} for i in range(16)]
STEPS, BATCH, GENERATIONS = 4, 4, 4
TIMEOUT = 0.4  # the client's, per attempt: small so that each hang costs little
# half the requests fail, each kind of failure about as often as a slow reply
FAULTS = {"error_500": 0.15, "hang": 0.1, "close": 0.15, "slow": 0.1}


def _metrics(path):
    return [json.loads(line) for line in (Path(path) / "metrics.jsonl").read_text().splitlines()]


def _run(out, server, *, retries=8, callbacks=None, **overrides):
    tok = tiny_tokenizer()
    fields = dict(output_dir=str(out), batch_size=BATCH, lr=1e-2, max_steps=STEPS, num_generations=GENERATIONS,
                  max_new_tokens=8, beta=0.04, progress=False, save_every=1, keep_checkpoints=STEPS)
    fields.update(overrides)
    reward = HttpReward(server.url, timeout=TIMEOUT, retries=retries, backoff=0.0)
    return grpo(GRPOConfig(**fields), train_data=PROMPTS, model=tiny_causal_lm(tok, seed=0),
                ref_model=tiny_causal_lm(tok, seed=0), tokenizer=tok, reward=reward, callbacks=callbacks)


@pytest.fixture(scope="module")
def well_behaved(tmp_path_factory):
    """The reference run: the same scores from a server that never fails."""
    out = tmp_path_factory.mktemp("well_behaved")
    with FlakyRewardServer(near_a, timeout=TIMEOUT) as server:
        _run(out, server)
        assert set(server.actions) == {"ok"} and len(server.answered) == STEPS
    return out


def test_a_flaky_server_changes_nothing_but_the_retry_count(tmp_path, well_behaved, monkeypatch):
    counted = []  # the count behind each step's "reward" metric: every sample once, however many attempts
    real = grpo_module.rollout_stats
    monkeypatch.setattr(grpo_module, "rollout_stats",
                        lambda *a, **k: counted.append(int(real(*a, **k)["reward"][1])) or real(*a, **k))
    with FlakyRewardServer(near_a, seed=7, faults=FAULTS, timeout=TIMEOUT, max_requests=100) as server:
        _run(tmp_path, server)
    assert {"error_500", "hang", "close", "slow"} <= set(server.actions), server.actions  # each kind was met
    assert counted == [BATCH * GENERATIONS] * STEPS

    flaky, good = _metrics(tmp_path), _metrics(well_behaved)
    retries = [m["reward/retries"] for m in flaky]
    # one request per step succeeded; every other request was a retry, and each was counted
    assert sum(retries) == len(server.actions) - STEPS > 0, (retries, server.actions)
    assert all(m["reward/retries"] == 0 for m in good)
    for key in ("reward", "reward_squared", "reward_none", "loss", "loss_units", "completion_length", "kl"):
        assert [m[key] for m in flaky] == [m[key] for m in good], key
    assert_same_weights(final_weights(tmp_path), final_weights(well_behaved))


def test_a_server_that_stays_down_stops_the_run_and_resume_continues_exactly(tmp_path, well_behaved):
    with FlakyRewardServer(near_a, timeout=TIMEOUT) as server:
        def go_down(step, metrics):
            if step == 2:  # steps 1 and 2 are scored and checkpointed; step 3 finds the server down
                server.down = True

        with pytest.raises(RewardError) as info:
            _run(tmp_path, server, retries=2, callbacks=[go_down])
        message = str(info.value)
        assert server.url in message and "HTTP 500" in message and "(3 attempts)" in message, message
        assert server.actions[-3:] == ["error_500"] * 3

        # the newest checkpoint is complete and holds what the uninterrupted run had after step 2
        root = tmp_path / "checkpoints"
        assert [step for step, _ in list_checkpoints(root)] == [1, 2]
        assert sorted(p.name for p in root.iterdir()) == ["step-1", "step-2"]  # no partial directory
        assert (root / "step-2" / MARKER).is_file() and not (tmp_path / "final").exists()
        assert_same_weights(load_file(root / "step-2" / "model.safetensors"),
                            load_file(well_behaved / "checkpoints" / "step-2" / "model.safetensors"))

        server.down = False  # back up
        _run(tmp_path, server, resume=True)
    assert_same_weights(final_weights(tmp_path), final_weights(well_behaved))
    resumed, good = _metrics(tmp_path), _metrics(well_behaved)
    assert [m["step"] for m in resumed] == list(range(1, STEPS + 1))
    assert [m["reward"] for m in resumed] == [m["reward"] for m in good]


def test_ppo_and_online_dpo_log_the_retries_too(tmp_path, tiny_model_dir):
    from rlhf.recipes.online_dpo import OnlineDPOConfig, online_dpo
    from rlhf.recipes.ppo import PPOConfig, ppo

    tok = tiny_tokenizer()
    common = dict(batch_size=4, max_steps=2, max_new_tokens=4, progress=False)
    with FlakyRewardServer(near_a, timeout=TIMEOUT) as server:
        reward = HttpReward(server.url, timeout=TIMEOUT, retries=2, backoff=0.0)
        server.plan.extend(["close", "error_500"])  # step 1: two retries; step 2: none
        ppo(PPOConfig(model=tiny_model_dir, output_dir=str(tmp_path / "ppo"), num_generations=2, **common),
            train_data=PROMPTS, tokenizer=tok, reward=reward)
        server.plan.extend(["error_500"])
        online_dpo(OnlineDPOConfig(output_dir=str(tmp_path / "online_dpo"), **common), train_data=PROMPTS,
                   model=tiny_causal_lm(tok, seed=0), tokenizer=tok, reward=reward)
    assert [m["reward/retries"] for m in _metrics(tmp_path / "ppo")] == [2, 0]
    assert [m["reward/retries"] for m in _metrics(tmp_path / "online_dpo")] == [1, 0]
