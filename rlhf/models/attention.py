"""Attention for padding-free (packed) batches that costs what each document costs.

A packed row holds several documents one after another, with position ids restarting at 0 at
each. transformers' SDPA path runs attention over the whole row with a block-diagonal mask, so
its cost grows with the square of the row length. `packed_sdpa` finds the documents from the
position ids and runs causal SDPA on each one alone: the same result (to float rounding) at the
cost of sum_i L_i^2 instead of (sum_i L_i)^2. A document may also branch: segments whose position
ids restart at p > 0 continue its first p tokens, so G completions share one copy of their prompt
(see `_segments`). Anything else (padded batches, decoding with a KV cache) goes to transformers'
own SDPA function unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .lora import hf_model

NAME = "rlhf_packed_sdpa"


def _segments(position_ids: torch.Tensor) -> list[tuple[int, int, int, int]] | None:
    """(start, end, root, prefix) for each segment of a (1, L) packed row; None if not packed.

    A segment starts wherever the position ids stop counting up by one. One that starts at
    position 0 is a new document (prefix 0). One that starts at position p > 0 is a *branch*: it
    continues the first p tokens of the latest document, which begins at `root` -- the G
    completions of one prompt share that prompt this way (`Rollout.packed_groups`).
    """
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1 or position_ids.shape[1] < 2:
        return None
    pos = position_ids[0]
    starts = [0] + ((pos[1:] != pos[:-1] + 1).nonzero().flatten() + 1).tolist()
    if len(starts) < 2:
        return None
    firsts = pos[starts].tolist()
    segments, root, root_length = [], None, 0
    for start, end, first in zip(starts, starts[1:] + [pos.shape[0]], firsts):
        if first == 0:
            root, root_length = start, end - start
            segments.append((start, end, start, 0))
        elif root is not None and first <= root_length:
            segments.append((start, end, root, first))
        else:
            return None  # positions that are neither a new document nor a branch of the last one
    return segments


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                **kwargs):
    """query: (1, heads, L, D); key, value: (1, kv_heads, L, D) -> ((1, L, heads, D), None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    segments = _segments(kwargs.get("position_ids"))
    if segments is None or query.shape[2] != key.shape[2]:  # not packed, or decoding against a cache
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    pieces = []
    for start, end, root, prefix in segments:
        q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
        if prefix == 0:
            pieces.append(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling,
                                                         enable_gqa=gqa))
            continue
        # a branch sees all of its shared prefix and itself causally
        k = torch.cat([key[:, :, root:root + prefix], k], dim=2)
        v = torch.cat([value[:, :, root:root + prefix], v], dim=2)
        n = end - start
        mask = torch.ones(n, prefix + n, dtype=torch.bool, device=query.device)
        mask[:, prefix:] = torch.ones(n, n, dtype=torch.bool, device=query.device).tril()
        pieces.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                                     enable_gqa=gqa))
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `attn_implementation="rlhf_packed_sdpa"` available to transformers models (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, packed_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def supports_branches(model: torch.nn.Module) -> bool:
    """Whether the model's attention is `packed_sdpa`, the one kernel that understands branches
    (`Rollout.packed_groups`); any other kernel would let a branch lose sight of its prompt."""
    return getattr(hf_model(model).config, "_attn_implementation", None) == NAME


def use_packed_attention(model: torch.nn.Module) -> None:
    """Switch a model that uses SDPA to `packed_sdpa` (a no-op for other attention kernels)."""
    hf = hf_model(model)
    if getattr(hf.config, "_attn_implementation", None) == "sdpa":
        register()
        hf.set_attn_implementation(NAME)
