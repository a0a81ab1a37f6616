"""The example configs and datasets the README uses stay loadable and valid."""

from pathlib import Path

import pytest

from rlhf.cli import COMMANDS
from rlhf.config import load_config
from rlhf.recipes._shared import read_rows

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TASKS = {"sft": "sft", "reward": "preference", "dpo": "preference", "kto": "unpaired"}


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
