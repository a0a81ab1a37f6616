"""`rlhf demo`: the shipped prompts, the stage plan, skipping complete stages and rerunning from one.

The stages themselves are the real commands, tested in their own files; here a stand-in runs each
command by writing the outputs that mark its stage complete, and records what was asked."""

import json

import pytest

from rlhf.config import ConfigError
from rlhf.demo import pipeline
from rlhf.demo.pipeline import STAGE_NAMES, STAGES, DemoConfig, demo
from rlhf.demo.prompts import splits
from rlhf.demo.sentiment import vader_reward


def test_the_shipped_prompts_are_what_the_generator_writes_and_test_titles_are_held_out():
    shipped = {name: (pipeline.EXAMPLES / f"{name}.jsonl").read_text() for name in ("train", "test")}
    generated = {name: "".join(json.dumps(row) + "\n" for row in rows) for name, rows in splits().items()}
    assert shipped == generated
    rows = splits()
    assert len(rows["train"]) + len(rows["test"]) >= 300
    title = lambda row: row["prompt"][0]["content"].split('"')[1]  # noqa: E731
    assert not {title(r) for r in rows["train"]} & {title(r) for r in rows["test"]}


def test_vader_is_the_gold_reward():
    good, bad, neutral = vader_reward(["p"] * 3, ["A wonderful, moving film.", "Dull and painfully boring.", ""])
    assert good > 0.5 and bad < -0.3 and neutral == 0.0


@pytest.fixture
def commands(tmp_path, monkeypatch):
    """Each command 'runs' by writing its stage's outputs, as the real one would."""
    ran = []

    def fake_run(command, overrides):
        ran.append((command, overrides))
        if command == "report":
            (tmp_path / "demo" / "report.html").write_text("<html></html>")
            return
        out = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir="))
        stage = next(s for s in STAGES if str(tmp_path / "demo" / s.name) == out)
        for path in stage.outputs(tmp_path / "demo" / stage.name):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
        if stage.name == "gold_labels":
            rows = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(40)]
            (path.parent / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    monkeypatch.setattr(pipeline, "_run_command", fake_run)
    monkeypatch.setattr(pipeline, "_summary", lambda root, times: None)
    return ran


def test_every_stage_runs_once_then_a_rerun_skips_them_and_from_stage_reruns_the_rest(tmp_path, commands):
    config = DemoConfig(output_dir=str(tmp_path / "demo"), quick=True)
    demo(config)
    quick_stages = [s for s in STAGE_NAMES if s != "online_dpo"]  # online DPO only when asked for
    assert [c for c, _ in commands] == [next(s.command for s in STAGES if s.name == n) for n in quick_stages]
    heldout = (tmp_path / "demo" / "data" / "rm_heldout.jsonl").read_text().splitlines()
    assert len(heldout) == pipeline.QUICK.heldout_pairs
    train = (tmp_path / "demo" / "data" / "train.jsonl").read_text().splitlines()
    assert len(train) == pipeline.QUICK.train_prompts
    commands.clear()
    demo(config)
    assert commands == []
    demo(DemoConfig(output_dir=str(tmp_path / "demo"), quick=True, from_stage="dpo_ai"))
    assert [c for c, _ in commands] == ["dpo", "eval", "report"]


def test_online_dpo_runs_only_when_asked_for_with_the_full_settings(tmp_path, commands):
    demo(DemoConfig(output_dir=str(tmp_path / "demo")))
    assert "online-dpo" not in [c for c, _ in commands]
    commands.clear()
    with pytest.raises(ConfigError, match="other settings"):  # a different plan needs its own directory
        demo(DemoConfig(output_dir=str(tmp_path / "demo"), online_dpo=True))
    demo(DemoConfig(output_dir=str(tmp_path / "demo"), online_dpo=True, from_stage="online_dpo"))
    assert [c for c, _ in commands] == ["online-dpo", "eval", "report"]
    policies = next(o for c, overrides in commands if c == "eval" for o in overrides if o.startswith("policies="))
    assert "online_dpo" in policies


def test_a_demo_dir_with_other_settings_or_an_unknown_stage_is_an_error(tmp_path, commands):
    demo(DemoConfig(output_dir=str(tmp_path / "demo"), quick=True))
    with pytest.raises(ConfigError, match="other settings"):
        demo(DemoConfig(output_dir=str(tmp_path / "demo"), quick=False))
    with pytest.raises(ConfigError, match="from_stage"):
        demo(DemoConfig(output_dir=str(tmp_path / "demo"), quick=True, from_stage="nope"))


def test_the_demo_package_is_not_shadowed_by_a_function_of_the_same_name():
    import rlhf
    import rlhf.demo.pipeline as imported  # fails when `rlhf.demo` is bound to something else

    assert rlhf.demo.__name__ == "rlhf.demo" and imported.demo is demo


@pytest.mark.parametrize("quick", [True, False])
def test_every_stage_command_accepts_its_overrides(tmp_path, quick):
    """The demo's key=value lists parse against their commands' configs (an unknown or mistyped key
    would otherwise surface only minutes into a real run)."""
    import importlib

    from rlhf.cli import COMMANDS
    from rlhf.config import load_config

    settings = pipeline.QUICK if quick else pipeline.FULL
    config = DemoConfig(output_dir=str(tmp_path), quick=quick)
    for stage in STAGES:
        if stage.command == "report":
            continue
        module, cls_name, _, _ = COMMANDS[stage.command]
        overrides = stage.overrides(tmp_path, settings, config) + ["seed=0", f"output_dir={tmp_path / stage.name}"]
        load_config(getattr(importlib.import_module(module), cls_name), overrides=overrides)
