"""Critic-free policy-gradient losses: GRPO, Dr. GRPO, DAPO aggregation; RLOO and REINFORCE++.

One loss, ``grpo_loss``: the token-level PPO-clip surrogate (``losses.ppo.clipped_surrogate``)
plus an optional beta * k3 penalty toward the reference model, aggregated over tokens and
sequences by a named rule from ``LOSS_AGGREGATIONS``. The algorithms differ only in their
advantages (``ops.advantages``):

    GRPO         group_normalised_advantages(scores, G)               (B,)
    Dr. GRPO     group_normalised_advantages(scores, G, scale=False)  (B,)  + "dr_grpo" aggregation
    RLOO         leave_one_out_advantages(scores, G)                  (B,)
    REINFORCE++  reinforce_pp_advantages(scores, mask, kl=..., ...)   (B, T), beta = 0 (its KL is
                                                                       in the reward instead)

Sums convention (``LossOutput``): loss and metrics are sums over the aggregation's UNIT,
"sequences" or "tokens" (``LossAggregation.unit``); the recipe's ``count_units`` must count
the same unit (``LossAggregation.count_units``) so the loop's division gives the paper's mean.
Metrics follow the loss's unit so that the loop's division yields means: with unit
"tokens" they are sums over valid tokens; with unit "sequences" each metric is the sum over
sequences of that sequence's token mean (clipfrac then reads as the mean per-sequence
clip fraction).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from rlhf.losses.ppo import clipped_surrogate
from rlhf.losses.types import LossOutput
from rlhf.ops.kl import kl_k3
from rlhf.ops.masked import masked_mean, masked_sum

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------
# aggregations: (B, T) per-token losses -> a scalar SUM over the unit


def aggregate_grpo(losses: Tensor, response_mask: Tensor, **_: object) -> Tensor:
    """sum_i (1 / |o_i|) sum_t l_it: each sequence's token mean, summed over sequences.

    Shao et al. 2024 (arXiv 2402.03300) eq. 3: (1/G) sum_i (1/|o_i|) sum_t; the 1/G (and the
    mean over prompts) is the loop's division by the sequence count. An empty sequence
    contributes 0. Unit: sequences.
    """
    return masked_mean(losses, response_mask, dim=-1).sum()


def aggregate_dr_grpo(
    losses: Tensor, response_mask: Tensor, *, max_response_length: int | None = None, **_: object
) -> Tensor:
    """sum_i (1 / L_max) sum_t l_it: token sums over a CONSTANT length, summed over sequences.

    Dr. GRPO, Liu et al. 2025 (arXiv 2503.20783): dividing by |o_i| biases toward
    long wrong answers and short right ones; their code divides by the generation budget
    L_max (``max_response_length``, usually max_new_tokens) instead. Unit: sequences.
    """
    if max_response_length is None or max_response_length <= 0:
        raise ValueError(
            f"aggregation 'dr_grpo' needs max_response_length > 0, got {max_response_length}"
        )
    return masked_sum(losses, response_mask) / max_response_length


def aggregate_dapo(losses: Tensor, response_mask: Tensor, **_: object) -> Tensor:
    """sum_i sum_t l_it: the token-level sum; the loop divides by sum_i |o_i|.

    DAPO, Yu et al. 2025 (arXiv 2503.14476), sec. 3.3 "Token-Level Policy Gradient Loss":
    the 1 / sum_i |o_i| normalisation of the DAPO objective, so every token
    weighs the same whatever its sequence's length. Unit: tokens.
    """
    return masked_sum(losses, response_mask)


def _per_sequence_mean_sum(x: Tensor, response_mask: Tensor) -> Tensor:
    return masked_mean(x, response_mask, dim=-1).sum()


class LossAggregation(NamedTuple):
    """How per-token losses become the summed loss, and the unit the loop divides by."""

    fn: Callable[..., Tensor]  # fn(losses (B, T), response_mask (B, T), *, max_response_length)
    unit: str  # "sequences" | "tokens"

    def count_units(self, response_mask: Tensor) -> int:
        """The number of units in a batch: sequences with at least one valid token ("sequences"),
        or valid tokens ("tokens"). A skipped sample (all-zero mask) counts for neither."""
        valid = response_mask != 0
        if self.unit == "sequences":
            return int(valid.any(dim=-1).sum())
        return int(valid.sum())

    def reduce_metric(self, x: Tensor, response_mask: Tensor) -> Tensor:
        """A per-token metric (B, T) as a sum over this aggregation's unit (see module doc)."""
        x = x.detach()
        if self.unit == "sequences":
            return _per_sequence_mean_sum(x, response_mask)
        return masked_sum(x, response_mask)


LOSS_AGGREGATIONS: dict[str, LossAggregation] = {
    "grpo": LossAggregation(aggregate_grpo, "sequences"),
    "dr_grpo": LossAggregation(aggregate_dr_grpo, "sequences"),
    "dapo": LossAggregation(aggregate_dapo, "tokens"),
}


def get_loss_aggregation(name: str) -> LossAggregation:
    """The registered aggregation called ``name``; ValueError naming the valid ones otherwise."""
    try:
        return LOSS_AGGREGATIONS[name]
    except KeyError:
        valid = ", ".join(sorted(LOSS_AGGREGATIONS))
        raise ValueError(f"unknown loss aggregation {name!r}; valid names: {valid}") from None


# ---------------------------------------------------------------------------------------
# the loss


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor | None,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    clip_range: float,
    clip_range_high: float | None = None,
    beta: float = 0.0,
    ref_logprobs: Tensor | None = None,
    aggregation: str = "grpo",
    max_response_length: int | None = None,
) -> LossOutput:
    """Clipped group-relative policy loss with an optional k3 penalty to the reference.

        l_it = -min(r_it A_i, clip(r_it, 1 - eps, 1 + eps_high) A_i) + beta * k3_it
        r_it = pi(o_it) / pi_old(o_it),  k3_it = pi_ref/pi - log(pi_ref/pi) - 1
        L    = aggregation(l)             ("grpo" | "dr_grpo" | "dapo", see LOSS_AGGREGATIONS)

    Shao et al. 2024, "DeepSeekMath" (arXiv 2402.03300), eq. 3 (objective) with the KL
    estimator of eq. 4 (k3, Schulman 2020), negated to a loss. The surrogate is PPO's eq. 7
    (arXiv 1707.06347); eps_high is DAPO's Clip-Higher. RLOO and REINFORCE++ use this same
    loss with their own advantages (module docstring); only the advantages differ.

    logprobs (B, T) requires grad. old_logprobs (B, T) from the rollout policy, or None for
    a single on-policy update: then pi_old = logprobs.detach(), r = 1, nothing is clipped,
    and the gradient is exactly REINFORCE's -A grad log pi (+ the KL term's).
    advantages: (B,) per sequence (broadcast over tokens) or (B, T) per token.
    ref_logprobs (B, T): required when beta != 0; when given, "kl" is logged even at beta 0.
    max_response_length: the constant divisor of "dr_grpo" (ignored by the others).

    Metrics (detached, sums over the aggregation's unit, see module docstring): "clipfrac"
    (clip-active tokens), "ratio", and "kl_k3" when ref_logprobs is given.
    """
    agg = get_loss_aggregation(aggregation)
    if beta != 0.0 and ref_logprobs is None:
        raise ValueError(f"grpo_loss with beta={beta} needs ref_logprobs")
    if old_logprobs is None:
        old_logprobs = logprobs.detach()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # (B, 1): A_i for every token of sequence i
    s = clipped_surrogate(
        logprobs, old_logprobs, advantages, clip_range=clip_range, clip_range_high=clip_range_high
    )
    losses = s.losses  # (B, T)
    metrics = {
        "clipfrac": agg.reduce_metric(s.clipped.to(losses.dtype), response_mask),
        "ratio": agg.reduce_metric(s.ratio, response_mask),
    }
    if ref_logprobs is not None:
        kl = kl_k3(logprobs, ref_logprobs.detach())  # (B, T)
        if beta != 0.0:
            losses = losses + beta * kl
        metrics["kl_k3"] = agg.reduce_metric(kl, response_mask)
    loss = agg.fn(losses, response_mask, max_response_length=max_response_length)
    return LossOutput(loss=loss, metrics=metrics)
