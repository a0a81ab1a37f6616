"""Atomic, resumable checkpoints.

A checkpoint is written into `checkpoints/.tmp-step-N/`, every file fsynced, a
`complete.json` marker written last, then the directory is renamed to `step-N` (an
atomic rename on POSIX). Only after that are older checkpoints deleted, so a kill at
any instant leaves the previous checkpoint intact. A directory without the marker is
partial: it is ignored, with a warning naming it.

Contents: `model.safetensors` (trainable weights, or all of them), `optimizer.pt` and
`scheduler.pt` (tensors and plain Python only: read back with weights_only=True),
`rng-rank{R}.pt` (each rank's torch / Python / NumPy generator states), `state.json`
(step, counters, recipe state) and `config.json` (the resolved config, for the
changed-config check on resume).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rlhf.config import ConfigError

logger = logging.getLogger(__name__)

MARKER = "complete.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that training changes: parameters with requires_grad, plus buffers when all params train.

    Tied weights appear once (safetensors refuses shared storage); `load_trainable_state`
    restores them through the module that owns them.
    """
    params = dict(model.named_parameters())  # named_parameters already drops tied duplicates
    trainable = {k: p for k, p in params.items() if p.requires_grad}
    state = trainable if len(trainable) < len(params) else {**params, **dict(model.named_buffers())}
    return {k: v.detach().contiguous().cpu().clone() for k, v in state.items()}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, value in state.items():
            target = params.get(name, buffers.get(name))
            if target is None:
                raise ValueError(f"checkpoint tensor '{name}' has no counterpart in the model")
            target.copy_(value.to(target.device, target.dtype))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(root: Path, *, warn: bool = True) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root`, oldest first; partial ones are reported and skipped."""
    found = []
    if not root.is_dir():
        return found
    for child in sorted(root.iterdir()):
        match = _STEP_DIR.match(child.name)
        if match and (child / MARKER).is_file():
            found.append((int(match.group(1)), child))
        elif warn and child.is_dir():
            logger.warning("ignoring partial checkpoint directory %s (no %s: the write did not finish)", child, MARKER)
    return sorted(found)


def newest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def begin(root: Path, step: int) -> Path:
    """Create the temporary directory that a checkpoint for `step` is written into (rank 0)."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step-{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def write_rank_files(tmp: Path, rank: int) -> None:
    """Each rank's own generator states (dropout, sampling differ per rank)."""
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")


def write_main_files(tmp: Path, *, model, optimizer, scheduler, state: dict, config: dict) -> None:
    save_file(trainable_state_dict(model), tmp / "model.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))


def commit(tmp: Path, step: int, keep: int) -> Path:
    """fsync everything, mark complete, rename into place, then prune old checkpoints (rank 0)."""
    for file in tmp.iterdir():
        _fsync_path(file)
    (tmp / MARKER).write_text(json.dumps({"step": step}))
    _fsync_path(tmp / MARKER)
    _fsync_path(tmp)
    final = tmp.parent / f"step-{step}"
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_path(tmp.parent)
    complete = list_checkpoints(tmp.parent, warn=False)
    for _, old in complete[: max(len(complete) - max(keep, 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: Path, *, model, optimizer, scheduler, rank: int) -> dict:
    """Restore model, optimiser, scheduler and this rank's RNG; return state.json."""
    load_trainable_state(model, load_file(path / "model.safetensors"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-rank{rank}.pt"
    if not rng_file.is_file():
        raise ConfigError(f"{path} has no RNG state for rank {rank}: it was written with fewer processes")
    set_rng_state(torch.load(rng_file, weights_only=True))
    return json.loads((path / "state.json").read_text())


def saved_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())
