"""Attention for padding-free (packed) batches that costs what each document costs.

A packed row holds several documents one after another, with position ids restarting at 0 at
each. transformers' SDPA path runs attention over the whole row with a block-diagonal mask, so
its cost grows with the square of the row length. `packed_sdpa` finds the documents from the
position ids and runs causal SDPA on each one alone: the same result (to float rounding) at the
cost of sum_i L_i^2 instead of (sum_i L_i)^2. Anything else (padded batches, decoding with a KV
cache) goes to transformers' own SDPA function unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "rlhf_packed_sdpa"


def _document_bounds(position_ids: torch.Tensor) -> list[int] | None:
    """Start offsets of the documents in a (1, L) packed row, plus L; None if not a packed row."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1:
        return None
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if len(starts) < 2 or starts[0] != 0:
        return None
    return starts + [position_ids.shape[1]]


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                **kwargs):
    """query: (1, heads, L, D); key, value: (1, kv_heads, L, D) -> ((1, L, heads, D), None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = _document_bounds(kwargs.get("position_ids"))
    if bounds is None or query.shape[2] != key.shape[2]:  # not packed, or decoding against a cache
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    pieces = [
        F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=dropout,
                                       is_causal=True, scale=scaling, enable_gqa=gqa)
        for s, e in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `attn_implementation="rlhf_packed_sdpa"` available to transformers models (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, packed_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def use_packed_attention(model: torch.nn.Module) -> None:
    """Switch a model that uses SDPA to `packed_sdpa` (a no-op for other attention kernels)."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(hf.config, "_attn_implementation", None) == "sdpa":
        register()
        hf.set_attn_implementation(NAME)
