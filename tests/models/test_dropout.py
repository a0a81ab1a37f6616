import pytest
import torch

from rlhf.models import LoraConfig, apply_lora, disable_dropout
from rlhf.testing import tiny_causal_lm, tiny_tokenizer


def _with_attention_dropout():
    return tiny_causal_lm(tiny_tokenizer(), attention_dropout=0.5)  # Llama's functional attention dropout


def _with_lora_dropout():
    model = apply_lora(tiny_causal_lm(tiny_tokenizer()), LoraConfig(r=4, dropout=0.5))  # an nn.Dropout
    with torch.no_grad():  # zero-initialised B would hide the adapter's dropped-out input
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    return model


def _two_forwards(model) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids = torch.arange(1, 17).unsqueeze(0)  # (1, T)
    with torch.no_grad():
        return model(input_ids=input_ids).logits, model(input_ids=input_ids).logits


@pytest.mark.parametrize("build", [_with_attention_dropout, _with_lora_dropout])
def test_disable_dropout_makes_training_forwards_deterministic(build):
    model = build().train()
    first, second = _two_forwards(model)
    assert not torch.equal(first, second)
    disable_dropout(model)
    first, second = _two_forwards(model)
    assert torch.equal(first, second)


def test_disable_dropout_zeroes_the_config_value_some_models_read_at_call_time():
    model = _with_attention_dropout()
    disable_dropout(model)
    assert model.config.attention_dropout == 0.0  # Persimmon passes config.attention_dropout itself
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in model.model.layers)
