"""Small steps every recipe takes the same way (plain functions; recipes never inherit)."""

from __future__ import annotations

import torch

from rlhf.config import ConfigError
from rlhf.data import load_rows, validate_rows
from rlhf.models import apply_lora
from rlhf.train import loop
from rlhf.train.checkpoint import seed_everything
from rlhf.train.distributed import DistContext, init_distributed


def start_run(config) -> DistContext:
    """Join the process group, refuse a resume whose config changed (before any heavy work), and
    seed, so that whatever a recipe initialises at random (score and value heads, LoRA adapters)
    is a function of `config.seed`."""
    ctx = init_distributed()
    loop.check_train_config(config)
    loop.check_resume(config)
    seed_everything(config.seed)
    return ctx


def read_rows(source, task: str, *, required: bool = True):
    """Load and validate a data source (path or in-memory rows); None gives None unless required."""
    if source is None:
        if required:
            raise ConfigError("no training data: set data=PATH (or pass train_data=)")
        return None
    name = str(source) if isinstance(source, str) or hasattr(source, "__fspath__") else "<memory>"
    return validate_rows(load_rows(source), task, source=name)


def prepare_trainable(model: torch.nn.Module, config, device: torch.device) -> torch.nn.Module:
    """LoRA adapters and gradient checkpointing as configured, on `device`."""
    if config.lora.enabled:
        model = apply_lora(model, config.lora)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.to(device)


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def micro_batch_size(config, ctx) -> int:
    """Rows per micro-batch on one rank (for evaluation and precomputation passes)."""
    return max(config.batch_size // (ctx.world_size * config.grad_accum), 1)
