"""Losses: pure functions of tensors returning LossOutput(loss, metrics)."""

from rlhf.losses.types import LossOutput

__all__ = ["LossOutput"]
