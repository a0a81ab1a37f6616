"""Paired preference losses: the DPO family (DPO/cDPO, robust DPO, IPO, hinge, SimPO, ORPO).

Every loss is a pure function ``fn(logprobs: PairLogprobs, *, beta, **hparams) -> LossOutput``
whose loss and metrics are SUMS over the B pairs (see ``LossOutput``); the training loop
divides by the number of pairs in the whole accumulation window.

Notation (per pair i, all shapes (B,)):
    pi_c, pi_r    policy log-prob sums over the chosen / rejected completion tokens
    ref_c, ref_r  reference-model sums over the same tokens
    |y_c|, |y_r|  completion token counts
    h = (pi_c - ref_c) - (pi_r - ref_r)   difference of log-ratios, WITHOUT beta

Hyperparameters: each variant takes the keyword hparams it uses (listed in the registry's
``hparams`` field) and silently ignores the others via ``**_``, so a recipe can pass one
dict (``label_smoothing``, ``simpo_gamma``, ...) whatever ``loss_type`` is. Rejecting
misspelt keys is the config layer's job (unknown config keys are errors, DESIGN.md).

Metrics (sums over pairs, detached): "rewards/chosen", "rewards/rejected",
"rewards/margins", "rewards/accuracy" (count of pairs with chosen reward > rejected reward;
ties count as wrong), "logprobs/chosen", "logprobs/rejected" (the policy sums as given). The
implicit reward is beta * (pi - ref) for reference-based losses (Rafailov et al. 2023,
sec. 5) and beta * pi / |y| for the length-normalised reference-free ones (SimPO, ORPO).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from rlhf.losses.types import LossOutput

Tensor = torch.Tensor


class PairLogprobs(NamedTuple):
    """Policy (and optionally reference) log-prob sums of a batch of B preference pairs."""

    chosen: Tensor  # (B,) sum of policy log-probs over the chosen completion tokens
    rejected: Tensor  # (B,)
    chosen_tokens: Tensor  # (B,) number of completion tokens (for length-normalised losses)
    rejected_tokens: Tensor  # (B,)
    ref_chosen: Tensor | None = None  # (B,) reference sums (None for reference-free losses)
    ref_rejected: Tensor | None = None  # (B,)


# ---------------------------------------------------------------------------------------
# helpers


def _logratio_difference(logprobs: PairLogprobs, name: str) -> Tensor:
    """h = (pi_c - ref_c) - (pi_r - ref_r), (B,); raises if the reference sums are missing."""
    if logprobs.ref_chosen is None or logprobs.ref_rejected is None:
        raise ValueError(
            f"preference loss {name!r} needs reference log-probs: "
            "PairLogprobs.ref_chosen and PairLogprobs.ref_rejected must not be None"
        )
    return (logprobs.chosen - logprobs.ref_chosen) - (logprobs.rejected - logprobs.ref_rejected)


def _average(total: Tensor, tokens: Tensor) -> Tensor:
    """Per-token mean log-prob, (B,). A zero token count is treated as 1 (mean 0) so an empty
    completion cannot turn the batch loss into nan."""
    return total / tokens.to(total.dtype).clamp(min=1)


def _reward_metrics(
    chosen_rewards: Tensor, rejected_rewards: Tensor, logprobs: PairLogprobs
) -> dict[str, Tensor]:
    c = chosen_rewards.detach()  # (B,)
    r = rejected_rewards.detach()  # (B,)
    return {
        "rewards/chosen": c.sum(),
        "rewards/rejected": r.sum(),
        "rewards/margins": (c - r).sum(),
        "rewards/accuracy": (c > r).to(c.dtype).sum(),
        "logprobs/chosen": logprobs.chosen.detach().sum(),
        "logprobs/rejected": logprobs.rejected.detach().sum(),
    }


def _reference_rewards(logprobs: PairLogprobs, beta: float) -> dict[str, Tensor]:
    # only called after _logratio_difference has checked the reference sums exist
    assert logprobs.ref_chosen is not None and logprobs.ref_rejected is not None
    return _reward_metrics(
        beta * (logprobs.chosen - logprobs.ref_chosen),
        beta * (logprobs.rejected - logprobs.ref_rejected),
        logprobs,
    )


_LN2 = math.log(2.0)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012, "Accurately
    computing log(1 - exp(-|a|))"): log(-expm1(x)) near 0, log1p(-exp(x)) far below it.
    The second branch sees x clamped to <= -ln 2 so torch.where never evaluates (and
    differentiates) log1p(-1) = -inf on the unused side."""
    near_zero = torch.log(-torch.expm1(x))
    far = torch.log1p(-torch.exp(x.clamp(max=-_LN2)))
    return torch.where(x > -_LN2, near_zero, far)


# ---------------------------------------------------------------------------------------
# losses


def sigmoid_loss(
    logprobs: PairLogprobs, *, beta: float, label_smoothing: float = 0.0, **_: object
) -> LossOutput:
    """DPO, optionally conservative (cDPO), summed over the B pairs.

        L_i = (1 - eps) * -log sigmoid(beta * h_i) + eps * -log sigmoid(-beta * h_i)

    eps = 0: DPO, Rafailov et al. 2023 (arXiv 2305.18290), eq. 7.
    eps > 0: cDPO, Mitchell 2023, "A note on DPO with noisy preferences & relationship to
    IPO" (ericmitchell.ai/cdpo.pdf), eq. 3: the label is trusted with probability 1 - eps.
    eps must lie in [0, 0.5]; at eps = 0.5 the loss is even in h (labels carry no signal).
    As beta -> 0 the loss of each pair tends to log 2 and its gradient to 0.
    """
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    h = _logratio_difference(logprobs, "sigmoid")  # (B,)
    logits = beta * h  # (B,)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits)  # (B,)
    if label_smoothing:
        losses = losses - label_smoothing * F.logsigmoid(-logits)
    return LossOutput(loss=losses.sum(), metrics=_reference_rewards(logprobs, beta))


def robust_loss(
    logprobs: PairLogprobs, *, beta: float, label_smoothing: float = 0.0, **_: object
) -> LossOutput:
    """Robust DPO (rDPO), summed over the B pairs; ``label_smoothing`` is the flip rate eps.

        L_i = [(1 - eps) * -log sigmoid(beta * h_i) - eps * -log sigmoid(-beta * h_i)] / (1 - 2 eps)

    Chowdhury, Kini & Natarajan 2024, "Provably Robust DPO: Aligning Language Models with
    Noisy Feedback" (arXiv 2403.00409), sec. 3, the de-biased loss: its expectation under
    labels flipped with probability eps equals the clean DPO loss, i.e.
    (1 - eps) * L(h) + eps * L(-h) = -log sigmoid(beta * h). Cross-checked against the same
    form in TRL's ``loss_type="robust"``; the paper's equation number was not verified here.
    Unlike cDPO the loss is unbounded below for eps > 0. eps = 0 is exactly DPO (eq. 7).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust loss needs label_smoothing in [0, 0.5), got {label_smoothing}")
    h = _logratio_difference(logprobs, "robust")  # (B,)
    logits = beta * h  # (B,)
    eps = label_smoothing
    clean = -F.logsigmoid(logits)  # (B,) loss if the label is right
    flipped = -F.logsigmoid(-logits)  # (B,) loss if the label is wrong
    losses = ((1.0 - eps) * clean - eps * flipped) / (1.0 - 2.0 * eps)  # (B,)
    return LossOutput(loss=losses.sum(), metrics=_reference_rewards(logprobs, beta))


def ipo_loss(logprobs: PairLogprobs, *, beta: float, **_: object) -> LossOutput:
    """IPO, summed over the B pairs: L_i = (h_i - 1 / (2 beta))^2, beta playing the paper's tau.

    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences" (arXiv 2310.12036), eq. 17. h uses log-prob SUMS over the completion, as
    in the paper's pi(y|x). (TRL instead averages log-probs over tokens for IPO, so a beta
    tuned there is not transferable: here the target gap 1/(2 beta) is in sequence nats.)
    """
    if beta <= 0:
        raise ValueError(f"ipo needs beta > 0 (target 1 / (2 beta)), got {beta}")
    h = _logratio_difference(logprobs, "ipo")  # (B,)
    losses = (h - 1.0 / (2.0 * beta)).pow(2)  # (B,)
    return LossOutput(loss=losses.sum(), metrics=_reference_rewards(logprobs, beta))


def hinge_loss(logprobs: PairLogprobs, *, beta: float, **_: object) -> LossOutput:
    """Hinge (SLiC-style) loss on reference log-ratios, summed: L_i = max(0, 1 - beta * h_i).

    The rank-calibration hinge of SLiC-HF, Zhao et al. 2023 (arXiv 2305.10425), sec. 2,
    with margin 1/beta, applied to the DPO log-ratio h instead of raw log-likelihoods: the
    "hinge-norm" form of RSO, Liu et al. 2023 (arXiv 2309.06657), sec. 3 (as in TRL's
    ``loss_type="hinge"``). Without SLiC's extra regulariser toward the SFT targets.
    """
    h = _logratio_difference(logprobs, "hinge")  # (B,)
    losses = torch.relu(1.0 - beta * h)  # (B,)
    return LossOutput(loss=losses.sum(), metrics=_reference_rewards(logprobs, beta))


def simpo_loss(
    logprobs: PairLogprobs, *, beta: float, simpo_gamma: float = 0.5, **_: object
) -> LossOutput:
    """SimPO, reference-free and length-normalised, summed over the B pairs.

        L_i = -log sigmoid(beta * pi_c / |y_c| - beta * pi_r / |y_r| - gamma)

    Meng, Xia & Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward" (arXiv 2405.14734), eq. 6. ``simpo_gamma`` is the paper's gamma: an ABSOLUTE
    target reward margin (not TRL/the later SimPO code's gamma/beta ratio), default 0.5.
    Note the paper tunes beta in roughly [2, 10], far above DPO's ~0.1.
    """
    chosen_rewards = beta * _average(logprobs.chosen, logprobs.chosen_tokens)  # (B,)
    rejected_rewards = beta * _average(logprobs.rejected, logprobs.rejected_tokens)  # (B,)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - simpo_gamma)  # (B,)
    return LossOutput(
        loss=losses.sum(), metrics=_reward_metrics(chosen_rewards, rejected_rewards, logprobs)
    )


def orpo_loss(logprobs: PairLogprobs, *, beta: float, **_: object) -> LossOutput:
    """ORPO, reference-free, summed over the B pairs; beta plays the paper's lambda.

        avg(y)  = pi(y) / |y|                          per-token mean log-prob, < 0
        lo(y)   = avg(y) - log(1 - exp(avg(y)))        log odds of the length-normalised
                                                       likelihood P(y|x) = exp(avg(y))
        L_i     = -avg(y_c) + lambda * -log sigmoid(lo(y_c) - lo(y_r))

    Hong, Lee & Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference
    Model" (arXiv 2403.07691), eq. 6 (L = L_SFT + lambda * L_OR) and eq. 7 (L_OR). The
    paper's L_SFT is the average token NLL of the chosen response; here it is averaged per
    pair (-pi_c / |y_c|) and then summed over pairs like everything else. (TRL averages the
    NLL over all chosen tokens of the batch instead; the two agree when lengths are equal.)

    avg is clamped to <= -machine-eps before the log odds: an fp32 log_softmax can round a
    near-certain token to exactly 0, where the odds are infinite (and inf - inf is nan).
    Extra metrics (sums): "nll" (the L_SFT term) and "log_odds_ratio" (lo(y_c) - lo(y_r)).
    """
    avg_c = _average(logprobs.chosen, logprobs.chosen_tokens)  # (B,)
    avg_r = _average(logprobs.rejected, logprobs.rejected_tokens)  # (B,)
    ceiling = -torch.finfo(avg_c.dtype).eps
    lc = avg_c.clamp(max=ceiling)
    lr = avg_r.clamp(max=ceiling)
    log_odds_ratio = (lc - _log1mexp(lc)) - (lr - _log1mexp(lr))  # (B,)
    nll = -avg_c  # (B,)
    losses = nll - beta * F.logsigmoid(log_odds_ratio)  # (B,)
    metrics = _reward_metrics(beta * avg_c, beta * avg_r, logprobs)
    metrics["nll"] = nll.detach().sum()
    metrics["log_odds_ratio"] = log_odds_ratio.detach().sum()
    return LossOutput(loss=losses.sum(), metrics=metrics)


# ---------------------------------------------------------------------------------------
# registry


class PreferenceLoss(NamedTuple):
    """A preference loss variant and the properties a recipe needs to drive it."""

    fn: Callable[..., LossOutput]  # fn(logprobs: PairLogprobs, *, beta, **hparams) -> LossOutput
    needs_reference: bool  # the recipe must fill PairLogprobs.ref_chosen / ref_rejected
    length_normalised: bool  # uses chosen_tokens / rejected_tokens (per-token mean log-probs)
    hparams: tuple[str, ...] = ()  # keyword hparams the fn reads besides beta

    @property
    def uses_label_smoothing(self) -> bool:
        """Whether `label_smoothing` changes this loss (cDPO / robust); any other loss ignores it."""
        return "label_smoothing" in self.hparams


PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {
    "sigmoid": PreferenceLoss(sigmoid_loss, True, False, ("label_smoothing",)),
    "robust": PreferenceLoss(robust_loss, True, False, ("label_smoothing",)),
    "ipo": PreferenceLoss(ipo_loss, True, False),
    "hinge": PreferenceLoss(hinge_loss, True, False),
    "simpo": PreferenceLoss(simpo_loss, False, True, ("simpo_gamma",)),
    "orpo": PreferenceLoss(orpo_loss, False, True),
}


def get_preference_loss(name: str) -> PreferenceLoss:
    """The registered variant called ``name``; ValueError naming the valid ones otherwise."""
    try:
        return PREFERENCE_LOSSES[name]
    except KeyError:
        valid = ", ".join(sorted(PREFERENCE_LOSSES))
        raise ValueError(f"unknown preference loss {name!r}; valid names: {valid}") from None
