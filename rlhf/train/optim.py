"""AdamW and the warmup + decay learning-rate schedule."""

from __future__ import annotations

import math

import torch

from rlhf.config import ConfigError


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Multiplier on the peak learning rate at optimiser step `step` (0-based).

    Linear warmup from 0 over `warmup_steps`, then constant, linear decay to 0, or half-cosine
    decay to 0 at `total_steps`.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_scheduler {kind!r}: expected constant, linear or cosine")


def build_optimizer(params, config) -> torch.optim.Optimizer:
    """AdamW over `params`: an iterable of parameters, or of groups {"params": [...], "lr": ...}
    (e.g. a critic with its own learning rate; a group without "lr" takes config.lr)."""
    groups = list(params)
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    split = []
    for group in groups:
        trainable = [p for p in group["params"] if p.requires_grad]
        extra = {k: v for k, v in group.items() if k != "params"}
        # biases and norms: no weight decay, as is customary
        split.append({**extra, "params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay})
        split.append({**extra, "params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0})
    split = [g for g in split if g["params"]]
    if not split:
        raise ConfigError("the model has no trainable parameters")
    # The fused kernel does the whole update in one pass over each tensor: 0.07 s instead of
    # 0.36 s (foreach) per step for a 135M model on 2 CPU cores; it covers CPU and CUDA only.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in split for p in g["params"])
    return torch.optim.AdamW(
        split,
        lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps,
        fused=fused,
        foreach=None if fused else True,
    )


def build_scheduler(optimizer, config, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(round(config.warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps=total_steps, warmup_steps=warmup, kind=config.lr_scheduler)
    )
