"""Supervised fine-tuning / causal language modelling."""

from __future__ import annotations

import torch

from rlhf.losses.types import LossOutput


def sft_loss(logprobs: torch.Tensor) -> LossOutput:
    """Negative log-likelihood of the target tokens, summed: L = -sum_t log pi(y_t | y_<t, x).

    logprobs: (N,) log-probs of the N labelled tokens. The sum (not the mean) is returned so
    the training loop can normalise by the token count of the whole accumulation window
    (maximum likelihood; Radford et al. 2018, eq. 1).
    """
    return LossOutput(loss=-logprobs.sum(), metrics={})
