import torch

from rlhf.models import hf_model
from rlhf.models.forward import CausalLMLogprobs
from rlhf.models.lora import LoraConfig, apply_lora
from rlhf.testing import tiny_causal_lm, tiny_tokenizer


def _tiny_granite(logits_scaling: float):
    from transformers import GraniteConfig, GraniteForCausalLM

    config = GraniteConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, logits_scaling=logits_scaling)
    torch.manual_seed(0)
    return GraniteForCausalLM(config)


def _batch(vocab_size: int):
    torch.manual_seed(1)
    input_ids = torch.randint(0, vocab_size, (2, 12))  # (B, T)
    labels = input_ids.roll(-1, dims=1)
    labels[:, -1] = -100
    labels[0, :4] = -100  # a prompt
    return input_ids, labels


def _own_logprobs(model, input_ids, labels):
    """log_softmax of the model's own logits at the labelled positions, (N,)."""
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=input_ids).logits.float(), dim=-1)  # (B, T, V)
    selected = labels != -100
    return logprobs[selected].gather(-1, labels[selected].unsqueeze(-1)).squeeze(-1)


def test_a_model_that_rescales_its_logits_gets_its_own_forward():
    model = _tiny_granite(logits_scaling=4.0).train()
    policy = CausalLMLogprobs(model)
    assert not policy.uses_hidden_shortcut  # Granite divides its logits by logits_scaling in forward
    assert model.training  # the construction-time check leaves the mode as it found it
    input_ids, labels = _batch(64)
    model.eval()
    with torch.no_grad():
        ours = policy(input_ids=input_ids, labels=labels)
    assert torch.allclose(ours, _own_logprobs(model, input_ids, labels), atol=1e-5)


def test_an_unscaled_granite_and_a_plain_llama_keep_the_shortcut():
    assert CausalLMLogprobs(_tiny_granite(logits_scaling=1.0)).uses_hidden_shortcut
    model = tiny_causal_lm(tiny_tokenizer()).eval()
    policy = CausalLMLogprobs(model)
    assert policy.uses_hidden_shortcut and not model.training
    input_ids, labels = _batch(model.config.vocab_size)
    with torch.no_grad():
        ours = policy(input_ids=input_ids, labels=labels)
    assert torch.allclose(ours, _own_logprobs(model, input_ids, labels), atol=1e-5)


def test_hf_model_finds_the_transformers_model_inside_wrappers():
    base = tiny_causal_lm(tiny_tokenizer())
    assert hf_model(base) is base
    lora = apply_lora(base, LoraConfig(r=2))
    assert hf_model(lora) is lora.get_base_model()
    assert hf_model(_FakeDDP(lora)) is lora.get_base_model()


class _FakeDDP(torch.nn.Module):
    """DDP's shape without a process group: the wrapped network as its only child, `.module`."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def test_the_check_tolerates_bf16_rounding_but_not_a_rescaling():
    assert CausalLMLogprobs(tiny_causal_lm(tiny_tokenizer()).to(torch.bfloat16)).uses_hidden_shortcut
    assert not CausalLMLogprobs(_tiny_granite(logits_scaling=4.0).to(torch.bfloat16)).uses_hidden_shortcut


def test_the_shortcut_check_gives_every_submodule_its_own_mode_back():
    """A caller's model may be in mixed modes (e.g. a frozen head in eval, the rest training)."""
    model = tiny_causal_lm()
    model.train()
    model.lm_head.eval()
    before = {name: m.training for name, m in model.named_modules()}
    CausalLMLogprobs(model)
    assert {name: m.training for name, m in model.named_modules()} == before
