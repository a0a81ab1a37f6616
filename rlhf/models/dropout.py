"""Dropout off for training forwards (TRL's `disable_dropout_in_model`, extended to attention).

With dropout on, two forwards of the same weights differ: PPO's first importance ratio is not 1
and DPO's first margin is not 0, although nothing has been trained yet. The online and
preference methods therefore train without it by default (`disable_dropout`).
"""

from __future__ import annotations

import torch


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability in `model` to 0, in place.

    That is each `torch.nn.Dropout` (LoRA's dropout is one) and the float `attention_dropout`
    that transformers' attention modules pass to their functional attention call.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
