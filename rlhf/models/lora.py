"""LoRA adapters (Hu et al. 2021, arXiv 2106.09685) through `peft`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoraSettings:
    """LoRA hyper-parameters."""

    r: int = 16
    """Rank of the low-rank update B @ A."""
    alpha: int = 32
    """Scale numerator: the update is multiplied by alpha / r (arXiv 2106.09685 section 4.1)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt; "all-linear" means every linear layer except the output head."""


def apply_lora(model, settings: LoraSettings, *, task_type: str | None = None):
    """Wrap `model` in a peft LoRA model: base weights frozen, only the adapters train.

    `task_type` defaults to CAUSAL_LM, or SEQ_CLS for a `*ForSequenceClassification` model so that
    peft also trains (and saves) its fresh score head instead of freezing it.
    """
    from peft import LoraConfig, get_peft_model

    if task_type is None:
        is_classifier = type(model).__name__.endswith("ForSequenceClassification")
        task_type = "SEQ_CLS" if is_classifier else "CAUSAL_LM"
    target_modules = settings.target_modules
    if not isinstance(target_modules, str):
        target_modules = list(target_modules)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target_modules,
        task_type=task_type,
    )
    return get_peft_model(model, config)


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
