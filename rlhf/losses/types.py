from __future__ import annotations

from typing import NamedTuple

import torch


class LossOutput(NamedTuple):
    """A loss and named metrics; both are SUMS over the batch's units (tokens, pairs, samples).

    The training loop divides by the number of units in the whole accumulation window
    (and across ranks), so micro-batching never changes the result.
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]
