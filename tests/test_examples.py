"""The example configs and datasets the README uses stay loadable and valid."""

from pathlib import Path

import pytest

from rlhf.cli import COMMANDS
from rlhf.config import load_config
from rlhf.recipes._shared import read_rows

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TASKS = {"sft": "sft", "reward": "preference", "dpo": "preference", "kto": "unpaired", "grpo": "prompt",
         "ppo": "prompt"}


@pytest.mark.parametrize("command", sorted(TASKS))
def test_example_config_and_data_validate(command, monkeypatch):
    import importlib

    monkeypatch.chdir(EXAMPLES.parent)
    module, cls_name, _, _ = COMMANDS[command]
    config = load_config(getattr(importlib.import_module(module), cls_name), EXAMPLES / f"{command}.yaml")
    assert config.model == "smollm2-135m-instruct"
    assert len(read_rows(config.data, TASKS[command])) > 0
    if config.eval_data:
        read_rows(config.eval_data, TASKS[command])


def test_example_reward_functions_score_the_example_prompts(monkeypatch):
    from rlhf.recipes.grpo import GRPOConfig
    from rlhf.rewards import resolve_reward

    monkeypatch.chdir(EXAMPLES.parent)
    config = load_config(GRPOConfig, EXAMPLES / "grpo.yaml")
    rows = [r.data for r in read_rows(config.data, "prompt")][:2]
    reward = resolve_reward(config.reward, columns=["answer"])
    right = [f"The answer is {r['answer']}." for r in rows]
    wrong = ["I do not know " + "really " * 40 for _ in rows]
    scores = reward([r["prompt"] for r in rows] * 2, right + wrong, answer=[r["answer"] for r in rows] * 2)
    assert scores == [1.2, 1.2, 0.0, 0.0]
