"""Write a trained model as a plain Hugging Face directory (the `final/` of every training command)."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

from .loading import quiet_progress_bars
from .lora import is_peft_model, unwrap_model


def save_pretrained_model(model, tokenizer, path: str | Path) -> None:
    """Write `model` (+ `tokenizer`) to `path` as a directory `from_pretrained` loads without peft.

    A peft model is saved merged (on a copy: the training model keeps its adapters), and the adapter
    alone goes to `path/adapter/`. DDP and torch.compile wrappers are unwrapped. Everything is written
    to `path.tmp` and renamed into place, so a crash never leaves a half-written `path`.
    Call it on one process only (rank 0); under FSDP gather a full state dict first.
    """
    path = Path(path)
    model = unwrap_model(model)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an earlier crash
    tmp.mkdir(parents=True)
    try:
        _write(model, tokenizer, tmp)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write(model, tokenizer, path: Path) -> None:
    """The model (merged, with its adapter beside it, when it is a peft model) and the tokenizer into `path`."""
    with quiet_progress_bars():
        if is_peft_model(model):
            model.save_pretrained(path / "adapter")
            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(path)
            del merged
        else:
            model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move `src` to `dst`; an existing `dst` is swapped out first (rename cannot overwrite a directory)."""
    if not dst.exists():
        os.rename(src, dst)
        return
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    os.rename(dst, old)
    os.rename(src, dst)
    shutil.rmtree(old, ignore_errors=True)
