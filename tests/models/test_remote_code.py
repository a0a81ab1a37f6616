"""A model directory that needs its own code (`auto_map`) is refused unless trust_remote_code is on.

transformers would otherwise load it silently with its built-in class; with trust_remote_code it would
import the directory's Python files. The refusal comes before any weights or tokenizer files load.
"""

import json

import pytest
import transformers

from rlhf.cli import main
from rlhf.models import ModelError, load_causal_lm, load_tokenizer
from rlhf.models.loading import check_remote_code
from rlhf.models.reward import load_reward_model
from rlhf.testing import save_tiny_model

ADVICE = "set trust_remote_code=true to allow its code to run (only for code you trust)"


def _add_auto_map(model_dir, filename, auto_map, marker):
    path = model_dir / filename
    content = json.loads(path.read_text())
    content["auto_map"] = auto_map
    path.write_text(json.dumps(content))
    # Code that would announce itself if transformers ever imported it.
    for module in ("modeling_evil", "tokenization_evil"):
        (model_dir / f"{module}.py").write_text(
            f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        )


@pytest.fixture
def no_loading(monkeypatch):
    """Every transformers / safetensors entry point that reads a model directory fails the test."""
    import safetensors.torch

    def refuse(*args, **kwargs):
        pytest.fail("a model or tokenizer was loaded from a directory that needs remote code")

    for cls in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModelForCausalLM,
                transformers.AutoModelForSequenceClassification):
        monkeypatch.setattr(cls, "from_pretrained", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)


@pytest.fixture
def evil_dir(tmp_path):
    model_dir = tmp_path / "evil"
    save_tiny_model(model_dir)
    marker = tmp_path / "marker"
    _add_auto_map(model_dir, "config.json", {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}, marker)
    return model_dir, marker


def _assert_refused(info, model_dir, filename):
    message = str(info.value)
    assert "\n" not in message
    assert str(model_dir.resolve()) in message
    assert filename in message
    assert "trust_remote_code=true" in message
    assert ADVICE in message


@pytest.mark.parametrize("load", [
    load_causal_lm,
    load_tokenizer,
    lambda spec, **kwargs: load_reward_model(spec, pad_token_id=0, **kwargs),
], ids=["causal_lm", "tokenizer", "reward_model"])
def test_config_auto_map_is_refused_before_anything_loads(evil_dir, no_loading, load):
    model_dir, marker = evil_dir
    with pytest.raises(ModelError) as info:
        load(str(model_dir))
    _assert_refused(info, model_dir, "config.json")
    assert not marker.exists()


def test_tokenizer_config_auto_map_is_refused(tmp_path, no_loading):
    model_dir = tmp_path / "evil_tok"
    save_tiny_model(model_dir)
    marker = tmp_path / "marker"
    _add_auto_map(model_dir, "tokenizer_config.json",
                  {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}, marker)
    for load in (load_tokenizer, load_causal_lm):
        with pytest.raises(ModelError) as info:
            load(model_dir)
        _assert_refused(info, model_dir, "tokenizer_config.json")
    assert not marker.exists()


def test_trust_remote_code_lets_the_check_pass(evil_dir):
    model_dir, marker = evil_dir
    check_remote_code(model_dir, trust_remote_code=True)
    with pytest.raises(ModelError):
        check_remote_code(model_dir, trust_remote_code=False)
    assert not marker.exists()


def test_plain_and_empty_auto_map_directories_pass(tmp_path):
    model_dir = tmp_path / "plain"
    save_tiny_model(model_dir)
    check_remote_code(model_dir, trust_remote_code=False)
    _add_auto_map(model_dir, "config.json", {}, tmp_path / "marker")
    check_remote_code(model_dir, trust_remote_code=False)


def test_unreadable_config_is_a_model_error_naming_the_file(tmp_path):
    model_dir = tmp_path / "broken"
    save_tiny_model(model_dir)
    (model_dir / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="config.json is not readable JSON"):
        check_remote_code(model_dir, trust_remote_code=False)


def test_cli_prints_one_error_line_and_exits_2(evil_dir, no_loading, tmp_path, capsys):
    model_dir, marker = evil_dir
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "Hi", "completion": " there"}) + "\n")
    code = main(["sft", f"model={model_dir}", f"data={data}", f"output_dir={tmp_path / 'run'}", "max_steps=1"])
    assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rlhf sft: error: ")
    assert "trust_remote_code=true" in lines[0] and str(model_dir.resolve()) in lines[0]
    assert not marker.exists()
    assert not (tmp_path / "run" / "final").exists()
