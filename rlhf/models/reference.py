"""Reference-model log-probs for KL-regularised objectives (DPO family, later PPO/GRPO).

Where the reference comes from, cheapest first:
- LoRA: the policy itself with its adapters disabled (one copy of the base weights);
- precomputed before training, when the reference is the starting policy: the policy itself,
  before its first update (no second model is ever loaded);
- otherwise a separate frozen model.
Precomputed values are cached on disk under `<cache root>/ref_logprobs/`, keyed by a hash of the
reference weights and the tokenised examples, so a rerun or a resume skips the pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .forward import CausalLMLogprobs
from .loading import cache_root
from .lora import is_peft_model

logger = logging.getLogger(__name__)


def weights_fingerprint(module: torch.nn.Module, *, skip: Callable[[str], bool] = lambda name: False) -> str:
    """A hash of every parameter's name, dtype, shape and bytes (blake2b, no copies)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, param in module.named_parameters():
        if skip(name):
            continue
        tensor = param.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().data if tensor.numel() else b"")
    return digest.hexdigest()


def examples_fingerprint(examples: list[dict], keys: tuple[str, ...]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for example in examples:
        digest.update(json.dumps([example[k] for k in keys]).encode())
    return digest.hexdigest()


class ReferenceLogprobs:
    """Computes reference log-probs of pairs, precomputed into the examples or on the fly."""

    def __init__(self, *, policy: CausalLMLogprobs, ref_model: torch.nn.Module | None, collate=None, pair_logprobs=None):
        self.policy = policy
        self.ref = (CausalLMLogprobs(ref_model, temperature=policy.temperature).eval().requires_grad_(False)
                    if ref_model is not None else None)
        self.collate = collate
        self._pair_logprobs = pair_logprobs
        self._use_adapters_off = self.ref is None and is_peft_model(policy.model)

    @contextlib.contextmanager
    def _reference_model(self):
        """The module whose log-probs are the reference's, in eval mode (no dropout)."""
        model = self.ref if self.ref is not None else self.policy
        was_training = model.training
        model.eval()
        ctx = self.policy.model.disable_adapter() if self._use_adapters_off else contextlib.nullcontext()
        try:
            with torch.no_grad(), ctx:
                yield model
        finally:
            model.train(was_training)

    def run(self, fn, batch: dict):
        """On the fly: `fn(model, batch)` with the reference in place of the policy, without autograd."""
        if self.ref is None and not self._use_adapters_off:
            raise RuntimeError("on-the-fly reference log-probs need a reference model or LoRA adapters")
        with self._reference_model() as model:
            return fn(model, batch)

    def pair_logprobs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """On the fly: (B,) reference sums for chosen and rejected of one batch."""
        chosen, rejected = self.run(self._pair_logprobs, batch)
        return chosen.double(), rejected.double()

    def _cache_path(self, examples: list[dict]) -> Path:
        source = self.ref if self.ref is not None else self.policy
        weights = weights_fingerprint(source, skip=lambda name: "lora_" in name)
        data = examples_fingerprint(examples, ("prompt_ids", "chosen_ids", "rejected_ids"))
        return cache_root() / "ref_logprobs" / f"{weights}-{data}.safetensors"

    def attach(self, examples: list[dict], *, batch_size: int, device: torch.device | str, label: str,
               rows: Sequence[int] | None = None, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
               write_cache: bool = True, progress: bool = True) -> None:
        """Store `ref_chosen` / `ref_rejected` in every example (from the cache when present).

        Several processes split the work: each computes only `rows` (default: all) into an
        (E, 2) float64 table that is zero elsewhere, and `reduce` (e.g. a sum over processes)
        turns the partial tables into the whole one; one process should `write_cache`.
        """
        path = self._cache_path(examples)
        if path.is_file():
            values = load_file(path)["ref_logprobs"]
            logger.info("%s reference log-probs: loaded from %s", label, path)
        else:
            partial = self._compute(examples, range(len(examples)) if rows is None else rows,
                                    batch_size=batch_size, device=device, label=label, progress=progress)
            values = reduce(partial).cpu() if reduce is not None else partial
            if write_cache:
                _save_atomically(values, path)
        for example, (chosen, rejected) in zip(examples, values.tolist()):
            example["ref_chosen"], example["ref_rejected"] = chosen, rejected

    def _compute(self, examples: list[dict], rows: Sequence[int], *, batch_size: int, device, label: str,
                 progress: bool) -> torch.Tensor:
        """(E, 2) float64 reference sums (chosen, rejected) of the examples in `rows`, zeros elsewhere."""
        values = torch.zeros(len(examples), 2, dtype=torch.float64)
        rows = list(rows)
        starts = range(0, len(rows), batch_size)
        for start in tqdm(starts, desc=f"reference log-probs ({label})", disable=not progress, dynamic_ncols=True):
            index = rows[start : start + batch_size]
            batch = self.collate([examples[i] for i in index])
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            with self._reference_model() as model:
                chosen, rejected = self._pair_logprobs(model, batch)
            values[index, 0] = chosen.double().cpu()
            values[index, 1] = rejected.double().cpu()
        return values

    def release(self) -> "ReferenceLogprobs | None":
        """After precomputation: nothing more is needed, so drop the reference copy."""
        self.ref = None
        return None


def _save_atomically(values: torch.Tensor, path: Path) -> None:
    """Write to a private temp file and rename it into place: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({"ref_logprobs": values.contiguous()}, tmp)
    os.replace(tmp, path)
