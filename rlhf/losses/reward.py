"""Reward-model losses on preference pairs (the unit is the pair)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf.losses.types import LossOutput


def bradley_terry_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    *,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> LossOutput:
    """Bradley-Terry pairwise loss for a scalar reward model, summed over the B pairs.

        L_i = -log sigmoid(r_c - r_r - m_i) + center_coef * (r_c + r_r)^2

    - -log sigmoid(r_c - r_r): Ouyang et al. 2022 (InstructGPT, arXiv 2203.02155), eq. 1.
    - margin m_i: Touvron et al. 2023 (Llama 2, arXiv 2307.09288), eq. 2; the pair must be
      won by at least m_i before the loss flattens (m_i = 0 recovers eq. 1).
    - centring (r_c + r_r)^2: Eisenstein et al. 2023, "Helping or Herding? Reward Model
      Ensembles Mitigate but do not Eliminate Reward Hacking" (arXiv 2312.09244); BT is
      shift-invariant, so this pins the mean score of a pair near zero.

    chosen_scores: (B,) r_c; rejected_scores: (B,) r_r; margin: (B,) m, or None for 0.

    Returns the SUM over pairs (house convention, see LossOutput) and metrics that are also
    sums over pairs: "accuracy" (count of r_c > r_r; ties count as wrong), "margin"
    (r_c - r_r, without m), "chosen_score", "rejected_score".
    """
    diff = chosen_scores - rejected_scores  # (B,)
    logits = diff if margin is None else diff - margin  # (B,)
    # logsigmoid, not log(sigmoid(.)): finite for large negative logits
    losses = -F.logsigmoid(logits)  # (B,)
    if center_coef:
        losses = losses + center_coef * (chosen_scores + rejected_scores).pow(2)
    diff_d = diff.detach()
    metrics = {
        "accuracy": (diff_d > 0).to(diff_d.dtype).sum(),
        "margin": diff_d.sum(),
        "chosen_score": chosen_scores.detach().sum(),
        "rejected_score": rejected_scores.detach().sum(),
    }
    return LossOutput(loss=losses.sum(), metrics=metrics)
