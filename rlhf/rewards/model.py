"""A trained reward model directory as a reward source.

    source = RewardModelSource("runs/reward/final")
    source(["What is 2+2?"], ["4."])  -> [1.73]

The model and tokenizer load when the source is built (so a broken directory fails before
any RL step). Texts are re-tokenised with the reward model's own tokenizer, so it may differ
from the policy's; chat prompts go through its chat template. Extra dataset columns are
accepted and ignored. A completion longer than `max_length` (with its prompt) keeps its head.
"""

from __future__ import annotations

from pathlib import Path

import torch


class RewardModelSource:
    """`(prompts, completions, **columns) -> list[float]` from a sequence-classification reward model."""

    isolate_failures = False  # a failure is the model's or the batch's, not one sample's

    def __init__(self, model_dir: str | Path, *, batch_size: int = 8, max_length: int = 1024,
                 device: str | torch.device = "cpu", trust_remote_code: bool = False):
        from rlhf.models.reward import RewardModelScorer

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model_dir = str(model_dir)
        self.scorer = RewardModelScorer(model_dir, batch_size=batch_size, max_length=max_length, device=device,
                                        trust_remote_code=trust_remote_code)

    def __call__(self, prompts: list, completions: list, **columns) -> list[float]:
        return self.scorer(list(prompts), list(completions))

    def __repr__(self) -> str:
        return f"RewardModelSource({self.model_dir!r})"
