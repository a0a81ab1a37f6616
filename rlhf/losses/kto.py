"""KTO: unpaired (binary-feedback) preference loss; the unit is the sample."""

from __future__ import annotations

import torch

from rlhf.losses.types import LossOutput


def kto_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    desirable: torch.Tensor,
    kl_logprobs: torch.Tensor,
    ref_kl_logprobs: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> LossOutput:
    """Kahneman-Tversky Optimisation, summed over the B samples.

        r_i = logprobs_i - ref_logprobs_i                                   implied reward / beta
        z0  = max(0, mean_k(kl_logprobs_k - ref_kl_logprobs_k)), no gradient  reference point
        L_i = w_d * (1 - sigmoid(beta * (r_i - z0)))   if desirable_i
              w_u * (1 - sigmoid(beta * (z0 - r_i)))   otherwise

    Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"
    (arXiv 2402.01306), eq. 8 (L = E[lambda_y - v(x, y)], v = lambda_D sigma(beta (r - z0))
    or lambda_U sigma(beta (z0 - r)), which is lambda_y (1 - sigma(.)) per class); z0 is the
    KL(pi || pi_ref) reference point of sec. 4.1, estimated from MISMATCHED (prompt_i,
    completion_j) pairs, clamped at 0 and not back-propagated through.

    logprobs, ref_logprobs: (B,) policy / reference log-prob sums of each sample's completion.
    desirable: (B,) bool label. kl_logprobs, ref_kl_logprobs: (K,) the same sums on the mismatched
    pairs (usually K = B). z0 is the mean over THIS call's K pairs; a recipe that wants the
    paper's batch-wide estimate across ranks must gather before calling (not done here:
    losses stay pure). desirable_weight / undesirable_weight are lambda_D / lambda_U; the
    paper suggests lambda_D n_D / (lambda_U n_U) in [1, 4/3] for imbalanced data.

    Returns the SUM over samples and metrics that are sums over samples:
    "kl" = z0 * B (z0 is per batch, not per sample, so dividing by the sample count, as the
    loop does, gives back z0, a sample-weighted mean of z0 over micro-batches);
    "rewards/desirable_sum" / "rewards/undesirable_sum" = sum of beta * r_i over each class;
    "count/desirable" / "count/undesirable" = class sizes (to turn those sums into means).
    """
    desirable = desirable.to(torch.bool)
    rewards = logprobs - ref_logprobs  # (B,)
    # sec. 4.1: the reference point is a batch statistic, not a path for gradients
    z0 = (kl_logprobs - ref_kl_logprobs).mean().clamp(min=0).detach()  # ()
    desirable_losses = desirable_weight * (1.0 - torch.sigmoid(beta * (rewards - z0)))  # (B,)
    undesirable_losses = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - rewards)))  # (B,)
    losses = torch.where(desirable, desirable_losses, undesirable_losses)  # (B,)

    scaled = beta * rewards.detach()  # (B,)
    zero = torch.zeros((), dtype=scaled.dtype, device=scaled.device)
    d = desirable.to(scaled.dtype)  # (B,)
    metrics = {
        "kl": z0 * logprobs.shape[0],
        "rewards/desirable_sum": torch.where(desirable, scaled, zero).sum(),
        "rewards/undesirable_sum": torch.where(desirable, zero, scaled).sum(),
        "count/desirable": d.sum(),
        "count/undesirable": (1.0 - d).sum(),
    }
    return LossOutput(loss=losses.sum(), metrics=metrics)
