"""Tiny models and a tokenizer built entirely in code, for tests and examples.

Nothing here touches the network: the tokenizer is byte-level (any text encodes),
with ChatML special tokens and a chat template, and the models are small random
Llama networks that train in milliseconds on a CPU.
"""

from __future__ import annotations

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def tiny_tokenizer(*, pad_token: str | None = "<pad>", eos_token: str = "<|im_end|>"):
    """A byte-level tokenizer (256 byte tokens + ChatML specials) with a chat template.

    `pad_token=None` gives a tokenizer without a pad token; `pad_token=eos_token`
    reproduces the pad == EOS situation of SmolLM2 and many other checkpoints.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_vocab = {ch: i for i, ch in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    byte_vocab = {ch: i for i, ch in enumerate(sorted(byte_vocab))}
    backend = Tokenizer(models.BPE(vocab=byte_vocab, merges=[], fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token=eos_token,
        unk_token=None,
        pad_token=pad_token,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_config(vocab_size: int, **overrides):
    from transformers import LlamaConfig

    fields = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        attention_dropout=0.0,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def tiny_causal_lm(tokenizer=None, *, seed: int = 0, **config_overrides):
    """A randomly initialised 2-layer Llama matched to `tokenizer` (default: `tiny_tokenizer()`)."""
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    config = tiny_config(
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config_overrides,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model


def save_tiny_model(path, *, seed: int = 0, tokenizer=None) -> str:
    """Write a tiny model + tokenizer as a Hugging Face directory and return its path."""
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    model = tiny_causal_lm(tokenizer, seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
