"""LoRA adapters (Hu et al. 2021, arXiv 2106.09685) through `peft`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.config import ConfigError, option


@dataclass
class LoraConfig:
    """LoRA hyper-parameters: the `lora` section of every training config."""

    enabled: bool = option(False, "train LoRA adapters instead of all weights")
    r: int = option(16, "LoRA rank")
    alpha: int = option(32, "LoRA scaling alpha: the update is multiplied by alpha / r (arXiv 2106.09685 sec. 4.1)")
    dropout: float = option(0.0, "dropout on the LoRA path")
    target_modules: str = option("all-linear", "modules to adapt: 'all-linear' or a comma-separated list of names")


def apply_lora(model, settings: LoraConfig, *, task_type: str | None = None):
    """Wrap `model` in a peft LoRA model: base weights frozen, only the adapters train.

    `settings` gives `r`, `alpha`, `dropout` and `target_modules` (a comma-separated string or a
    list); `enabled` is the caller's business.
    `task_type` defaults to CAUSAL_LM, or SEQ_CLS for a `*ForSequenceClassification` model so that
    peft also trains (and saves) its fresh score head instead of freezing it.
    """
    from peft import LoraConfig, get_peft_model

    if task_type is None:
        is_classifier = type(model).__name__.endswith("ForSequenceClassification")
        task_type = "SEQ_CLS" if is_classifier else "CAUSAL_LM"
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=lora_target_modules(settings.target_modules),
        task_type=task_type,
    )
    return get_peft_model(model, config)


def lora_target_modules(value: list[str] | str) -> list[str] | str:
    """peft's `target_modules` for a config value: "all-linear" as is, a comma-separated string as a list.

    peft reads a single string as a regular expression matched against whole module names, so
    "q_proj,v_proj" would match no module at all.
    """
    if not isinstance(value, str):
        return [str(name).strip() for name in value]
    if value.strip() == "all-linear":
        return "all-linear"
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"config key 'lora.target_modules': expected 'all-linear' or comma-separated module names, got {value!r}")
    return names


def hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside DDP / torch.compile / peft wrappers (LoRA layers stay injected in it)."""
    model = unwrap_model(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unwrap_model(model):
    """The module inside DistributedDataParallel (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif _is_ddp_like(model):
            model = model.module
        else:
            return model


def _is_ddp_like(model) -> bool:
    # DDP / DataParallel expose the wrapped network as `.module`; a peft model also has no such attribute
    # of its own, but a bare nn.Module could define a submodule called `module`, so require it be the only child.
    inner = getattr(model, "module", None)
    if inner is None:
        return False
    children = getattr(model, "children", None)
    if children is None:  # a plain wrapper object, not an nn.Module
        return True
    kids = list(children())
    return len(kids) == 1 and kids[0] is inner


def is_peft_model(model) -> bool:
    """Whether `model` (or the module inside its DDP wrapper) is a peft model."""
    from peft import PeftModel

    return isinstance(unwrap_model(model), PeftModel)
