"""Advantage estimators: GAE and discounted returns (PPO), group-relative (GRPO, Dr. GRPO),
leave-one-out (RLOO), and REINFORCE++'s globally normalised returns.

Shapes: B sequences (completions), G completions per prompt, T response tokens.

Conventions:
  - Token-level inputs are (B, T) with ``response_mask`` (B, T): 1 on response tokens.
    The trajectory of row b is its sequence of VALID tokens in order; masked positions are
    skipped by the recursions (their rewards and values are ignored and their outputs are 0),
    so trailing padding is "past the end" (the last valid token is terminal, V after it = 0)
    and a hole in the mask (e.g. tool output inside a multi-turn completion) is stepped over.
    For the usual contiguous mask this is exactly the textbook recursion.
  - Sequence-level ``scores`` (B,) are laid out group-major: rows [g*G:(g+1)*G] are the G
    completions of prompt g (what ``repeat_interleave`` of the prompts produces).
  - Every estimator runs under ``torch.no_grad``: advantages and returns are constants of
    the surrogate objective (PPO, arXiv 1707.06347 eq. 7), never a path for gradients.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from rlhf.ops.masked import whiten

Tensor = torch.Tensor


def _bool(mask: Tensor) -> Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def _check_tokens(name: str, x: Tensor, response_mask: Tensor) -> None:
    if x.dim() != 2 or x.shape != response_mask.shape:
        raise ValueError(
            f"{name} must be (B, T) like response_mask {tuple(response_mask.shape)}, "
            f"got {tuple(x.shape)}"
        )


def _groups(scores: Tensor, group_size: int) -> Tensor:
    """scores (B,) -> (B // G, G), ValueError unless B is a multiple of G."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be (B,), got shape {tuple(scores.shape)}")
    if group_size < 1 or scores.shape[0] % group_size:
        raise ValueError(
            f"batch of {scores.shape[0]} scores is not a whole number of groups of {group_size}"
        )
    return scores.reshape(-1, group_size)


# ---------------------------------------------------------------------------------------
# token-level (PPO)


@torch.no_grad()
def rewards_from_scores(
    scores: Tensor, response_mask: Tensor, *, kl: Tensor | None = None, kl_coef: float = 0.0
) -> Tensor:
    """Per-token rewards: the sequence score on the last valid token, minus kl_coef * kl.

        rewards_t = -kl_coef * kl_t + [t == last valid token] * score

    The KL-shaped reward R = r(x, y) - beta log(pi(y|x) / pi_ref(y|x)) of Ziegler et al. 2019
    (arXiv 1909.08593), spread per token as in Stiennon et al. 2020 and "The N
    implementation details of RLHF with PPO" (Huang et al. 2024). ``kl`` is a per-token
    estimate (B, T), usually k1 of the rollout log-probs (``ops.kl``). A row with no valid
    token gets no reward. scores (B,), response_mask (B, T) -> rewards (B, T), 0 off-mask.
    """
    m = _bool(response_mask)
    if scores.shape != m.shape[:1]:
        raise ValueError(f"scores must be (B,) = ({m.shape[0]},), got {tuple(scores.shape)}")
    dtype = scores.dtype if scores.is_floating_point() else torch.get_default_dtype()
    rewards = torch.zeros(m.shape, dtype=dtype, device=scores.device)  # (B, T)
    if kl is not None:
        _check_tokens("kl", kl, m)
        rewards = torch.where(m, -kl_coef * kl.to(dtype), rewards)
    positions = torch.arange(m.shape[1], device=m.device).expand_as(m)  # (B, T)
    last = torch.where(m, positions, -1).amax(dim=1)  # (B,) -1 for an empty row
    has_token = (last >= 0).to(dtype)
    at_end = (scores.to(dtype) * has_token).unsqueeze(1)  # (B, 1)
    rewards.scatter_add_(1, last.clamp(min=0).unsqueeze(1), at_end)
    return rewards


@torch.no_grad()
def gae(
    rewards: Tensor, values: Tensor, response_mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation, computed backwards over each row's valid tokens.

        delta_t = r_t + gamma * V_{t+1} - V_t          (V after the last valid token = 0)
        A_t     = sum_{l >= 0} (gamma lam)^l delta_{t+l} = delta_t + gamma lam A_{t+1}
        R_t     = A_t + V_t                             (the value-function target)

    Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
    Estimation" (arXiv 1506.02438), eq. 16. t+1 is the next VALID token of
    the row (see module docstring); positions with mask 0 get A = R = 0.

    rewards, values, response_mask: (B, T) -> (advantages (B, T), returns (B, T)).
    """
    _check_tokens("rewards", rewards, response_mask)
    _check_tokens("values", values, response_mask)
    m = _bool(response_mask)
    dtype = torch.promote_types(rewards.dtype, values.dtype)
    r, v = rewards.to(dtype), values.to(dtype)
    zero = torch.zeros(m.shape[0], dtype=dtype, device=r.device)  # (B,)
    next_value, next_adv = zero, zero
    advantages = torch.zeros(m.shape, dtype=dtype, device=r.device)  # (B, T)
    for t in reversed(range(m.shape[1])):
        valid = m[:, t]  # (B,)
        delta = r[:, t] + gamma * next_value - v[:, t]
        adv = torch.where(valid, delta + gamma * lam * next_adv, zero)
        advantages[:, t] = adv
        # a masked position passes the carried (V, A) of the next valid token through
        next_value = torch.where(valid, v[:, t], next_value)
        next_adv = torch.where(valid, adv, next_adv)
    returns = torch.where(m, advantages + v, torch.zeros((), dtype=dtype, device=r.device))
    return advantages, returns


@torch.no_grad()
def discounted_returns(rewards: Tensor, response_mask: Tensor, gamma: float) -> Tensor:
    """Reward-to-go G_t = sum_{l >= 0} gamma^l r_{t+l} over each row's valid tokens.

    G_t = r_t + gamma G_{t+1}, 0 after the last valid token (the discounted return of
    Sutton & Barto 2018, sec. 3.3).
    Equals ``gae(rewards, values, mask, gamma, lam=1)`` returns for any values (A + V).
    rewards, response_mask: (B, T) -> returns (B, T), 0 off-mask.
    """
    _check_tokens("rewards", rewards, response_mask)
    m = _bool(response_mask)
    zero = torch.zeros(m.shape[0], dtype=rewards.dtype, device=rewards.device)  # (B,)
    carried = zero
    returns = torch.zeros(m.shape, dtype=rewards.dtype, device=rewards.device)  # (B, T)
    for t in reversed(range(m.shape[1])):
        valid = m[:, t]
        g = torch.where(valid, rewards[:, t] + gamma * carried, zero)
        returns[:, t] = g
        carried = torch.where(valid, g, carried)
    return returns


# ---------------------------------------------------------------------------------------
# sequence-level, critic-free (GRPO / Dr. GRPO / RLOO)


def _valid_groups(scores: Tensor, group_size: int, valid: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """(scores (B/G, G) with invalid entries 0, valid (B/G, G) bool, valid count (B/G, 1))."""
    r = _groups(scores, group_size)
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else _bool(valid).reshape(r.shape)
    r = torch.where(v, r, torch.zeros((), dtype=r.dtype, device=r.device))
    return r, v, v.sum(dim=1, keepdim=True).to(r.dtype)


@torch.no_grad()
def group_normalised_advantages(
    scores: Tensor, group_size: int, *, scale: bool = True, eps: float = 1e-6, valid: Tensor | None = None
) -> Tensor:
    """GRPO outcome advantages: A_i = (r_i - mean(r_group)) / (std(r_group) + eps).

    Shao et al. 2024, "DeepSeekMath" (arXiv 2402.03300), sec. 4.1.2 (outcome supervision):
    every token of completion i gets A_i. std is the unbiased (Bessel) sample std, as TRL
    and verl compute it (the paper does not say); eps is verl's default. A group whose scores
    are all equal gets exactly A = 0 (rounding in the mean would otherwise leave residues of
    ~1e-8 that eps turns into advantages of ~0.05). G = 1 gives A = 0.
    scale=False only centres, A_i = r_i - mean(r_group): Dr. GRPO, Liu et al. 2025,
    "Understanding R1-Zero-Like Training" (arXiv 2503.20783), which drops the std because it
    up-weights groups of (nearly) equal scores.
    ``valid`` (B,) bool: the statistics use the valid members of each group only (a reward
    source that returned None); invalid members get A = 0.
    scores (B,) group-major, B = n_prompts * G -> (B,).
    """
    r, v, n = _valid_groups(scores, group_size, valid)  # (B/G, G), (B/G, G), (B/G, 1)
    zero = torch.zeros((), dtype=r.dtype, device=r.device)
    mean = r.sum(dim=1, keepdim=True) / n.clamp(min=1)
    centred = torch.where(v, r - mean, zero)
    spread = torch.where(v, r, -torch.inf).amax(1, keepdim=True) - torch.where(v, r, torch.inf).amin(1, keepdim=True)
    centred = torch.where(spread > 0, centred, zero)  # equal scores (or < 2 valid): exactly 0
    if scale:
        var = centred.pow(2).sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)
        centred = centred / (var.sqrt() + eps)
    return centred.reshape(-1)


@torch.no_grad()
def leave_one_out_advantages(scores: Tensor, group_size: int, *, valid: Tensor | None = None) -> Tensor:
    """RLOO: A_i = r_i - 1/(G-1) sum_{j != i} r_j  (= G/(G-1) * (r_i - mean(r_group))).

    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
    Learning from Human Feedback in LLMs" (arXiv 2402.14740), eq. 6; the baseline of Kool
    et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free". Needs G >= 2.
    ``valid`` (B,) bool: the baseline averages the other *valid* members (n_valid - 1 of
    them); invalid members, and a valid member with no valid sibling, get A = 0.
    scores (B,) group-major -> (B,).
    """
    if group_size < 2:
        raise ValueError(f"leave-one-out needs group_size >= 2, got {group_size}")
    r, v, n = _valid_groups(scores, group_size, valid)  # (B/G, G), (B/G, G), (B/G, 1)
    others = (r.sum(dim=1, keepdim=True) - r) / (n - 1).clamp(min=1)  # (B/G, G)
    keep = v & (n > 1)
    return torch.where(keep, r - others, torch.zeros((), dtype=r.dtype, device=r.device)).reshape(-1)


# ---------------------------------------------------------------------------------------
# REINFORCE++


@torch.no_grad()
def reinforce_pp_returns(
    scores: Tensor,
    response_mask: Tensor,
    *,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
) -> Tensor:
    """REINFORCE++'s per-token return of the KL-shaped reward, before batch whitening.

        G_t = r(x, y) - kl_coef * sum_{i >= t} kl_i        (gamma = 1)

    Hu et al. 2025, "REINFORCE++" (arXiv 2501.03262): the token-level KL penalty (k1 of the
    rollout policy vs the reference) is folded into the reward. The advantage is G whitened
    over every valid token of the whole batch (`reinforce_pp_advantages`, or `ops.masked.whiten`
    with moments reduced over all micro-batches and ranks).
    scores (B,), response_mask (B, T), kl (B, T) or None -> returns (B, T), 0 off-mask.
    """
    rewards = rewards_from_scores(scores, response_mask, kl=kl, kl_coef=kl_coef)  # (B, T)
    return discounted_returns(rewards, response_mask, gamma)  # (B, T)


@torch.no_grad()
def reinforce_pp_advantages(
    scores: Tensor,
    response_mask: Tensor,
    *,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    group_size: int | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """REINFORCE++: per-token return of the KL-shaped reward, whitened over the whole batch.

        A_t      = r(x, y) - kl_coef * sum_{i >= t} kl_i        (gamma = 1)
        A_norm_t = (A_t - mean(A)) / std(A)                      over every valid token of the batch

    Hu et al. 2025, "REINFORCE++" (arXiv 2501.03262): token-level KL penalty folded into the
    reward (their KL is k1 of the rollout policy vs the reference) and GLOBAL batch
    normalisation instead of per-prompt (equations numbered 8-10 in some arXiv versions;
    the numbering moves between versions). ``group_size``: the "REINFORCE++ w/ baseline"
    variant of the same paper, subtracting each prompt group's mean score first.
    This whitens over the tensors given; a batch split over micro-batches or ranks must whiten
    `reinforce_pp_returns` with the moments of the whole batch instead.
    scores (B,), response_mask (B, T), kl (B, T) or None -> advantages (B, T), 0 off-mask.
    """
    if group_size is not None:
        r = _groups(scores, group_size)
        scores = (r - r.mean(dim=1, keepdim=True)).reshape(-1)
    returns = reinforce_pp_returns(scores, response_mask, kl=kl, kl_coef=kl_coef, gamma=gamma)
    return whiten(returns, response_mask, shift_mean=True, eps=eps)


# ---------------------------------------------------------------------------------------
# the critic-free estimators by name (GRPO recipe's `estimator`)


def _per_token(advantages: Tensor, response_mask: Tensor) -> Tensor:
    """(B,) sequence advantages -> (B, T), 0 off the mask."""
    m = _bool(response_mask)
    return torch.where(m, advantages.unsqueeze(1), torch.zeros((), dtype=advantages.dtype, device=advantages.device))


def _kl_shaped_scores(scores: Tensor, response_mask: Tensor, kl: Tensor | None, kl_coef: float) -> Tensor:
    """r - kl_coef * sum_t kl_t: the sequence-level KL-regularised reward (RLOO's eq. 3 reward)."""
    if kl is None:
        return scores
    return scores - kl_coef * torch.where(_bool(response_mask), kl, torch.zeros((), dtype=kl.dtype, device=kl.device)).sum(1)


def _sequence_level(baseline: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """An estimator from a group baseline `baseline(scores (B,), G, valid=, scale=) -> (B,)`: the
    KL, when it goes in the reward, comes off each completion's score first; every token of a
    completion gets its advantage."""

    @torch.no_grad()
    def estimate(scores, valid, response_mask, *, kl, kl_coef, group_size, scale):
        shaped = _kl_shaped_scores(scores, response_mask, kl, kl_coef)
        return _per_token(baseline(shaped, group_size, valid=valid, scale=scale), response_mask)

    return estimate


def _grpo_baseline(scores, group_size, *, valid, scale):
    return group_normalised_advantages(scores, group_size, scale=scale, valid=valid)


def _rloo_baseline(scores, group_size, *, valid, scale):
    return leave_one_out_advantages(scores, group_size, valid=valid)  # no std scaling in RLOO


@torch.no_grad()
def _reinforce_pp(scores, valid, response_mask, *, kl, kl_coef, group_size, scale):
    m = _bool(response_mask) & _bool(valid).unsqueeze(1)
    return reinforce_pp_returns(scores, m, kl=kl, kl_coef=kl_coef)


class CriticFreeEstimator(NamedTuple):
    """One critic-free advantage estimator and what it needs."""

    # (scores (B,), valid (B,), response_mask (B, T), *, kl (B, T) | None, kl_coef, group_size, scale) -> (B, T)
    fn: Callable[..., Tensor]
    kl_in_reward: bool  # where its paper puts the KL penalty (GRPO: k3 in the loss; the others: in the reward)
    min_group_size: int  # completions per prompt it needs
    whiten: bool  # the result is whitened over the whole batch (every micro-batch and rank) afterwards


CRITIC_FREE_ESTIMATORS: dict[str, CriticFreeEstimator] = {
    "grpo": CriticFreeEstimator(_sequence_level(_grpo_baseline), kl_in_reward=False, min_group_size=2, whiten=False),
    "rloo": CriticFreeEstimator(_sequence_level(_rloo_baseline), kl_in_reward=True, min_group_size=2, whiten=False),
    "reinforce_pp": CriticFreeEstimator(_reinforce_pp, kl_in_reward=True, min_group_size=1, whiten=True),
}
