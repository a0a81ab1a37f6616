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

Integrity: `manifest.json` records the size and SHA-256 of every other file and is written before
the marker. `verify` checks it before a resume reads anything, so a flipped byte or a truncated
file stops the run with the file's name instead of resuming silently from corrupt state. The
`.pt` files are read with weights_only=True: a file holding anything but tensors and plain Python
values (a planted pickle) is refused, and nothing in it runs.

A full disk while writing removes the partial directory and says how many bytes the checkpoint
needed; the previous checkpoint is untouched (it is only pruned after a new one is committed).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rlhf.config import ConfigError
from rlhf.errors import UserError

logger = logging.getLogger(__name__)

MARKER = "complete.json"
MANIFEST = "manifest.json"


class CheckpointError(UserError):
    """A checkpoint that cannot be written (full disk) or must not be read (corrupt, planted files)."""
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


def _save_pt(obj, path: Path) -> None:
    # through a Python file object, so a full disk surfaces as the OSError (torch's own writer
    # reports only "iostream error")
    with path.open("wb") as f:
        torch.save(obj, f)


def write_rank_files(tmp: Path, rank: int) -> None:
    """Each rank's own generator states (dropout, sampling differ per rank)."""
    _save_pt(rng_state(), tmp / f"rng-rank{rank}.pt")


def write_main_files(tmp: Path, *, model, optimizer, scheduler, state: dict, config: dict) -> None:
    save_file(trainable_state_dict(model), tmp / "model.safetensors")
    _save_pt(optimizer.state_dict(), tmp / "optimizer.pt")
    _save_pt(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))


def estimated_bytes(model, optimizer) -> int:
    """About what a checkpoint occupies: the trainable tensors and the optimiser's state tensors."""
    params = dict(model.named_parameters())
    trainable = [p for p in params.values() if p.requires_grad]
    total = sum(p.numel() * p.element_size() for p in (trainable if len(trainable) < len(params) else params.values()))
    for state in optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return total


def disk_full(error: BaseException) -> bool:
    """Whether `error`, or one it was raised from, is a full disk or quota. torch.save and safetensors
    wrap the OSError (a RuntimeError 'unexpected pos', a SafetensorError 'os error 28')."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "os error 28" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_error(tmp: Path, step: int, needed: int) -> CheckpointError:
    """The error for a checkpoint that did not fit, after its partial directory is removed."""
    shutil.rmtree(tmp, ignore_errors=True)
    free = shutil.disk_usage(tmp.parent).free if tmp.parent.exists() else 0
    previous = newest_checkpoint(tmp.parent)
    kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
    return CheckpointError(
        f"no space left on the device writing checkpoint step-{step} in {tmp.parent}: it needs about "
        f"{needed / 2**20:.1f} MiB and {free / 2**20:.1f} MiB are free; the partial directory was removed and "
        f"{kept}. Free some space (or lower keep_checkpoints) and resume.")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _payload_files(path: Path) -> list[Path]:
    """Every file of a checkpoint directory but the manifest and the marker (recursively: shards)."""
    return sorted(f for f in path.rglob("*") if f.is_file() and f.relative_to(path).as_posix() not in (MANIFEST, MARKER))


def write_manifest(tmp: Path) -> None:
    files = {f.relative_to(tmp).as_posix(): {"bytes": f.stat().st_size, "sha256": _sha256(f)} for f in _payload_files(tmp)}
    (tmp / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def verify(path: Path) -> None:
    """Check every file of checkpoint `path` against its manifest; CheckpointError naming the first bad one."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        logger.warning("checkpoint %s has no %s (written by an older rlhf): its files are not verified", path, MANIFEST)
        return
    try:
        listed = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise _corrupt(path, MANIFEST, f"unreadable ({error})") from None
    present = {f.relative_to(path).as_posix() for f in _payload_files(path)}
    added = sorted(present - set(listed))
    if added:
        raise _corrupt(path, added[0], "is not listed in the manifest (a file added after the checkpoint was written)")
    for name, entry in sorted(listed.items()):
        file = path / name
        if name not in present:
            raise _corrupt(path, name, "is missing")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise _corrupt(path, name, f"has {size} bytes, {entry['bytes']} were written (truncated or overwritten)")
        if _sha256(file) != entry["sha256"]:
            raise _corrupt(path, name, "does not match the SHA-256 recorded when it was written (a flipped byte?)")


def _corrupt(path: Path, name: str, what: str) -> CheckpointError:
    match = _STEP_DIR.match(path.name)
    step = int(match.group(1)) if match else float("inf")
    older = [str(p) for s, p in list_checkpoints(path.parent, warn=False) if s < step]
    hint = (f"resume from an older one with resume_from={older[-1]}" if older
            else "no older checkpoint exists: start over in a new output_dir")
    return CheckpointError(f"checkpoint {path} is corrupt: {name} {what}. Refusing to resume from it; {hint}")


def commit(tmp: Path, step: int, keep: int) -> Path:
    """Manifest, fsync everything, mark complete, rename into place, then prune old checkpoints (rank 0)."""
    write_manifest(tmp)
    for file in tmp.rglob("*"):
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


def _load_pt(file: Path):
    """A `.pt` file of tensors and plain Python values; anything else is refused, and nothing in it runs."""
    try:
        return torch.load(file, weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message advises weights_only=False, the one thing not to do with such a file
        raise CheckpointError(
            f"refusing to load {file}: it holds Python objects other than tensors and plain values, which "
            "weights_only loading does not run (a planted or foreign file). Do not bypass this; "
            "resume from another checkpoint with resume_from=PATH") from None


def load(path: Path, *, model, optimizer, scheduler, rank: int) -> dict:
    """Restore model, optimiser, scheduler and this rank's RNG; return state.json."""
    rng_file = path / f"rng-rank{rank}.pt"
    if not rng_file.is_file():
        raise ConfigError(f"{path} has no RNG state for rank {rank}: it was written with fewer processes")
    try:
        weights = load_file(path / "model.safetensors")
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error type for a bad header
        raise CheckpointError(f"cannot read {path / 'model.safetensors'}: {error}") from error
    load_trainable_state(model, weights)
    optimizer.load_state_dict(_load_pt(path / "optimizer.pt"))
    scheduler.load_state_dict(_load_pt(path / "scheduler.pt"))
    set_rng_state(_load_pt(rng_file))
    return json.loads((path / "state.json").read_text())


def saved_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())
