"""PPO: the clipped policy surrogate and the clipped value loss; the unit is the token.

Both losses are pure functions of (B, T) tensors returning LossOutput whose loss and metrics
are SUMS over the valid tokens (response_mask = 1) of the batch; the training loop divides by
the token count of the whole accumulation window (``LossOutput``). Masked-out positions are
selected away, never multiplied by 0 (see ``ops.masked``), so garbage there cannot leak.

Inputs that are targets, not functions of the parameters being optimised (old_logprobs,
advantages, old_values, returns), are detached here, as rlax's policy-gradient losses
``stop_gradient`` their advantages: a gradient through them is always a bug.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rlhf.losses.types import LossOutput
from rlhf.ops.masked import masked_sum

Tensor = torch.Tensor


class Surrogate(NamedTuple):
    """Per-token pieces of the clipped surrogate, all (B, T)."""

    losses: Tensor  # -min(ratio * A, clip(ratio) * A)
    ratio: Tensor  # pi / pi_old
    clipped: Tensor  # bool: the clipped branch is strictly smaller, so the gradient is 0
    approx_kl: Tensor  # (ratio - 1) - log ratio, detached: k3 of KL(pi_old || pi)


def clipped_surrogate(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    *,
    clip_range: float,
    clip_range_high: float | None = None,
) -> Surrogate:
    """Per-token PPO-clip loss l_t = -min(ratio_t A_t, clip(ratio_t, 1 - eps_low, 1 + eps_high) A_t).

    Schulman et al. 2017 (arXiv 1707.06347) eq. 7, negated to a loss; eps_low = clip_range,
    eps_high = clip_range_high (defaults to clip_range). Decoupled bounds are DAPO's
    "Clip-Higher" (Yu et al. 2025, arXiv 2503.14476, sec. 3.1). ratio = exp(logprobs -
    old_logprobs). advantages broadcast against (B, T): pass (B, T) or (B, 1).
    "clipped" marks tokens where the clip is active, i.e. clip(ratio) A < ratio A: ratio
    above 1 + eps_high with A > 0, or below 1 - eps_low with A < 0 (TRL / OpenAI baselines'
    clipfrac: pg_losses2 > pg_losses).
    """
    high = clip_range if clip_range_high is None else clip_range_high
    if clip_range < 0 or high < 0:
        raise ValueError(f"clip ranges must be >= 0, got {clip_range}, {high}")
    advantages = advantages.detach()
    log_ratio = logprobs - old_logprobs.detach()  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = -advantages * ratio  # (B, T)
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + high)  # (B, T)
    losses = torch.maximum(unclipped, clipped)  # (B, T) = -min(ratio A, clip(ratio) A)
    with torch.no_grad():
        approx_kl = torch.expm1(log_ratio) - log_ratio  # (B, T) k3 with samples from pi_old
    return Surrogate(losses, ratio, (clipped > unclipped).detach(), approx_kl)


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    clip_range: float,
    clip_range_high: float | None = None,
) -> LossOutput:
    """PPO-clip policy loss, summed over valid tokens.

        L = sum_{b,t} m_bt * -min(r_bt A_bt, clip(r_bt, 1 - eps, 1 + eps_high) A_bt),
        r_bt = pi(y_bt) / pi_old(y_bt)

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (arXiv 1707.06347),
    eq. 7 (L^CLIP), as a loss (negated) and summed instead of averaged (house convention).

    logprobs (B, T) requires grad; old_logprobs (B, T) from the rollout policy; advantages
    (B, T) (e.g. ``ops.advantages.gae``, whitened); response_mask (B, T).
    Metrics (sums over valid tokens, detached):
      "clipfrac"  number of tokens whose clip is active (gradient zeroed)
      "approx_kl" sum of (r - 1) - log r, the k3 estimator of KL(pi_old || pi) (unbiased,
                  >= 0, since the tokens were sampled from pi_old; Schulman 2020, and the
                  ``approx_kl`` of CleanRL's PPO). TRL logs 0.5 (log r)^2 (k2) instead.
      "ratio"     sum of r (divided by the token count: the mean ratio, 1 on-policy)
    """
    s = clipped_surrogate(
        logprobs, old_logprobs, advantages, clip_range=clip_range, clip_range_high=clip_range_high
    )
    metrics = {
        "clipfrac": masked_sum(s.clipped.to(s.losses.dtype), response_mask),
        "approx_kl": masked_sum(s.approx_kl, response_mask),
        "ratio": masked_sum(s.ratio.detach(), response_mask),
    }
    return LossOutput(loss=masked_sum(s.losses, response_mask), metrics=metrics)


def ppo_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    response_mask: Tensor,
    *,
    clip_range_value: float,
) -> LossOutput:
    """Clipped value loss, summed over valid tokens.

        v_clip = old_v + clip(v - old_v, -eps_v, eps_v)
        L      = sum_{b,t} m_bt * 0.5 * max((v - R)^2, (v_clip - R)^2)

    The value clipping of OpenAI baselines' PPO2 (``ppo2/model.py``, vf_losses1/2), item 9
    ("Value Function Loss Clipping") of Huang et al. 2022 "The 37 implementation details of
    PPO", kept in RLHF by "The N implementation details of RLHF with PPO" (Huang et al.
    2024) and TRL's PPO trainer. It is pessimistic: the larger of the two errors is taken.

    values (B, T) requires grad; old_values (B, T) from the rollout; returns (B, T) (e.g.
    ``gae``'s returns); response_mask (B, T).
    Metrics (sums over valid tokens, detached): "value_clipfrac" (tokens where the clipped
    error is strictly larger, so the gradient is zeroed), "values" (sum of v).
    """
    if clip_range_value < 0:
        raise ValueError(f"clip_range_value must be >= 0, got {clip_range_value}")
    old_values = old_values.detach()
    returns = returns.detach()
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    err = (values - returns).pow(2)  # (B, T)
    err_clipped = (v_clipped - returns).pow(2)  # (B, T)
    losses = 0.5 * torch.maximum(err, err_clipped)  # (B, T)
    metrics = {
        "value_clipfrac": masked_sum((err_clipped > err).to(losses.dtype).detach(), response_mask),
        "values": masked_sum(values.detach(), response_mask),
    }
    return LossOutput(loss=masked_sum(losses, response_mask), metrics=metrics)
