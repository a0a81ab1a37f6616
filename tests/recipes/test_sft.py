import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf.cli import main
from rlhf.data import DataError
from rlhf.train.config import LoraConfig
from tests.conftest import sft_rows
from tests.train.helpers import run_tiny_sft


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sft_lowers_the_loss_and_final_loads_with_auto_model(tmp_path, tokenizer):
    result = run_tiny_sft(tmp_path, lr=1e-2, max_steps=-1, epochs=4, eval_data=None)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.8 * losses[0]
    model = AutoModelForCausalLM.from_pretrained(result.final_dir)
    ids = tokenizer("repeat 1: ", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(ids).logits).all()
    assert (result.final_dir / "tokenizer_config.json").is_file()


def test_sft_with_lora_trains_adapters_and_saves_a_merged_model(tmp_path):
    result = run_tiny_sft(tmp_path, lr=1e-2, lora=LoraConfig(enabled=True, r=4))
    merged = AutoModelForCausalLM.from_pretrained(result.final_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert (result.final_dir / "adapter").is_dir()


def test_cli_runs_sft_from_yaml_and_overrides(tmp_path, tiny_model_dir):
    data = _write_jsonl(tmp_path / "train.jsonl", sft_rows(16))
    held = _write_jsonl(tmp_path / "eval.jsonl", sft_rows(8))
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\ndata: {data}\neval_data: {held}\nbatch_size: 4\nlr: 1.0e-3\nprogress: false\n")
    out = tmp_path / "out"
    assert main(["sft", "--config", str(cfg), f"output_dir={out}", "max_steps=3"]) == 0
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and "eval_loss" in metrics[-1]
    assert AutoModelForCausalLM.from_pretrained(out / "final") is not None


def test_cli_reports_bad_input_without_a_traceback(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": 3}\n')
    assert main(["sft", f"model={tiny_model_dir}", f"data={data}", f"output_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert "train.jsonl:2" in err and "completion" in err
    assert main(["sft", "bach_size=3"]) == 2
    assert "did you mean 'batch_size'" in capsys.readouterr().err


def test_cli_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    text = capsys.readouterr().out
    for key in ["model", "data", "eval_data", "output_dir", "max_steps", "epochs", "batch_size", "grad_accum", "lr",
                "seed", "save_every", "resume", "max_length", "truncation", "packing", "lora.r"]:
        assert f"  {key} (" in text, key


def test_bad_rows_fail_before_the_model_loads(tmp_path, monkeypatch):
    import rlhf.recipes.sft as recipe

    monkeypatch.setattr(recipe, "load_causal_lm", lambda *a, **k: pytest.fail("model loaded before validation"))
    monkeypatch.setattr(recipe, "load_tokenizer", lambda *a, **k: pytest.fail("tokenizer loaded before validation"))
    with pytest.raises(DataError, match="row 2"):
        recipe.sft(recipe.SFTConfig(output_dir=str(tmp_path)), train_data=[{"text": "ok"}, {"text": ""}])
