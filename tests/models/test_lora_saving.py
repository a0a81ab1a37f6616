import json
import types

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf.models import LoraConfig, apply_lora, is_peft_model, save_pretrained_model
from rlhf.testing import tiny_causal_lm, tiny_tokenizer

INPUT_IDS = torch.tensor([[1, 40, 41, 42, 77, 250, 2], [1, 9, 8, 7, 6, 5, 4]])


def _trained_lora_model(seed=0):
    model = apply_lora(tiny_causal_lm(seed=seed), LoraConfig(r=4, alpha=8))
    # Fresh LoRA B matrices are zero, which would make "merged == base" pass trivially: perturb them.
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    return model.eval()


def test_apply_lora_freezes_base_and_trains_only_adapters():
    base = tiny_causal_lm()
    n_base = sum(p.numel() for p in base.parameters())
    model = apply_lora(base, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    assert is_peft_model(model)
    assert not is_peft_model(tiny_causal_lm())
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert any("q_proj.lora_A" in name for name in trainable) and any("v_proj.lora_B" in name for name in trainable)
    assert not any("k_proj.lora" in name for name in trainable)
    assert sum(model.get_parameter(n).numel() for n in frozen) == n_base

    loss = model(INPUT_IDS, labels=INPUT_IDS).loss
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)
    assert all(p.grad is not None for n, p in model.named_parameters() if n in trainable)


def test_all_linear_adapts_every_projection_but_not_the_head():
    model = apply_lora(tiny_causal_lm(), LoraConfig())
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in model.named_parameters() if "lora_A" in name}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert model.peft_config["default"].r == 16 and model.peft_config["default"].lora_alpha == 32


def test_save_merges_lora_and_keeps_training_model_intact(tmp_path):
    model = _trained_lora_model()
    tokenizer = tiny_tokenizer()
    with torch.no_grad():
        expected = model(INPUT_IDS).logits
        base_embeddings = model.get_base_model().model.embed_tokens.weight.clone()
    state_before = {k: v.clone() for k, v in model.state_dict().items()}

    save_pretrained_model(model, tokenizer, tmp_path / "final")

    final = tmp_path / "final"
    assert (final / "config.json").is_file() and (final / "model.safetensors").is_file()
    assert (final / "tokenizer.json").is_file() or (final / "tokenizer_config.json").is_file()
    assert (final / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "final.tmp").exists()
    loaded = AutoModelForCausalLM.from_pretrained(final).eval()
    assert not is_peft_model(loaded)
    assert not any("lora" in name for name in loaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded(INPUT_IDS).logits, expected, rtol=0, atol=1e-5)
        # The adapter really changes the output, so the comparison above has teeth.
        assert not torch.allclose(tiny_causal_lm()(INPUT_IDS).logits, expected, atol=1e-3)
    assert AutoTokenizer.from_pretrained(final).eos_token == tokenizer.eos_token

    # The training model is untouched: still peft, same weights, same outputs.
    assert is_peft_model(model)
    assert any("lora_A" in name for name, _ in model.named_parameters())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state_before[key], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(INPUT_IDS).logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(model.get_base_model().model.embed_tokens.weight, base_embeddings)


def test_save_unwraps_ddp_like_wrapper_and_overwrites(tmp_path):
    model = tiny_causal_lm(seed=5).eval()
    wrapper = types.SimpleNamespace(module=model)
    final = tmp_path / "final"
    final.mkdir()
    (final / "stale.txt").write_text("from an earlier run")

    save_pretrained_model(wrapper, tiny_tokenizer(), final)

    assert not (final / "stale.txt").exists()
    config = json.loads((final / "config.json").read_text())
    assert config["model_type"] == "llama"
    loaded = AutoModelForCausalLM.from_pretrained(final).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(INPUT_IDS).logits, model(INPUT_IDS).logits, rtol=0, atol=1e-6)


def test_save_unwraps_ddp_wrapped_peft_model(tmp_path):
    model = _trained_lora_model()
    wrapper = types.SimpleNamespace(module=model)
    assert is_peft_model(wrapper)
    save_pretrained_model(wrapper, None, tmp_path / "final")
    assert (tmp_path / "final" / "adapter" / "adapter_config.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(INPUT_IDS).logits, model(INPUT_IDS).logits, rtol=0, atol=1e-5)


def test_failed_save_leaves_no_partial_directory(tmp_path):
    class Boom:
        def save_pretrained(self, path):
            (path / "config.json").write_text("{}")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_pretrained_model(tiny_causal_lm(), Boom(), tmp_path / "final")
    assert not (tmp_path / "final").exists()
    assert not (tmp_path / "final.tmp").exists()


def _adapted(model) -> set[str]:
    return {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in model.named_parameters() if "lora_A" in name}


def test_comma_separated_target_modules_adapt_exactly_those_modules():
    from rlhf.train.config import LoraConfig

    # the training config's `lora` section goes in as is (its documented form is a comma-separated string)
    model = apply_lora(tiny_causal_lm(), LoraConfig(enabled=True, r=2, target_modules="q_proj, v_proj"))
    assert _adapted(model) == {"q_proj", "v_proj"}
    assert _adapted(apply_lora(tiny_causal_lm(), LoraConfig(r=2, target_modules="down_proj"))) == {"down_proj"}
    from rlhf.config import ConfigError

    with pytest.raises(ConfigError, match="lora.target_modules"):
        apply_lora(tiny_causal_lm(), LoraConfig(r=2, target_modules=" , "))
