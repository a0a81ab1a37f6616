"""Dropout off for training forwards (TRL's `disable_dropout_in_model`, extended to attention).

With dropout on, two forwards of the same weights differ: PPO's first importance ratio is not 1
and DPO's first margin is not 0, although nothing has been trained yet. The online and
preference methods therefore train without it by default (`disable_dropout`).
"""

from __future__ import annotations

import contextlib

import torch

# Float attributes that transformers' attention modules pass as `dropout=` to their functional
# attention call (`dropout=0.0 if not self.training else self.attention_dropout` in Llama;
# `self.dropout` in CLIP-style, `self.attn_dropout` in GPTBigCode, ...): no nn.Dropout to find.
_ATTENTION_DROPOUT_FLOATS = ("attention_dropout", "dropout", "attn_dropout", "dropout_p", "dropout_prob")


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability in `model` to 0, in place.

    That is each `torch.nn.Dropout` (LoRA's dropout is one), the float dropout attributes that
    attention modules pass to their functional attention call, and `config.attention_dropout`,
    which some models (Persimmon) read at call time. The saved config then records the 0 it
    trained with.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name in _ATTENTION_DROPOUT_FLOATS:
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
        config = getattr(module, "config", None)
        if isinstance(getattr(config, "attention_dropout", None), float):
            config.attention_dropout = 0.0


@contextlib.contextmanager
def eval_mode(*models: torch.nn.Module):
    """Every module in eval mode inside the block; afterwards each submodule gets back its own mode
    (`model.train(was_training)` would overwrite a caller's mixed modes with the top-level one)."""
    modes = {module: module.training for model in models for module in model.modules()}
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training
