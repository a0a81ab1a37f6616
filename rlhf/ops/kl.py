"""Per-token estimators of KL(pi || pi_ref) and the KL-coefficient controllers.

Estimators (Schulman 2020, "Approximating KL divergence", joschu.net/blog/kl-approx.html).
With a token y sampled from pi and the log-ratio  log r = log pi_ref(y) - log pi(y):

    k1 = -log r                     = logprobs - ref_logprobs        unbiased, can be < 0
    k2 = 0.5 * (log r)^2                                             biased, >= 0, low variance
    k3 = (r - 1) - log r            = exp(ref - logp) - (ref - logp) - 1
                                                                     unbiased, >= 0

"Unbiased" means E_{y ~ pi}[k] = KL(pi || pi_ref) for tokens drawn from the pi whose
logprobs are passed in (in PPO the tokens come from pi_old, so with the current logprobs it
holds at the first update only). All take logprobs, ref_logprobs: (B, T) and return the
per-token estimate (B, T), unmasked: reduce with ``ops.masked``.

As a LOSS term (GRPO, Shao et al. 2024 eq. 3-4) the estimators' gradients differ from their
values: d k1 = d log pi (zero mean under pi: k1 in the loss does nothing on average, it only
acts when folded into the reward); d k2 = (log pi - log ref) d log pi, whose on-policy mean
is the gradient of KL(pi || ref); d k3 = (1 - ref/pi) d log pi, whose on-policy mean is
-sum_y ref(y) d log pi(y) = the gradient of KL(ref || pi), the FORWARD KL. Derivations in
one line each; they are why k1 goes in the reward (PPO, REINFORCE++) and k3/k2 in the loss.

Controllers: the beta of the KL penalty, fixed or adapted to a target KL (Ziegler et al.
2019, "Fine-Tuning Language Models from Human Preferences", arXiv 1909.08593, eq. 2).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

Tensor = torch.Tensor


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log pi(y) - log pi_ref(y), per token. (B, T), (B, T) -> (B, T). Schulman 2020."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = 0.5 * (log pi(y) - log pi_ref(y))^2, per token. (B, T), (B, T) -> (B, T). Schulman 2020."""
    return 0.5 * (logprobs - ref_logprobs).pow(2)


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = exp(ref - logp) - (ref - logp) - 1 = (r - 1) - log r, r = pi_ref / pi. Schulman 2020.

    The estimator of GRPO's KL term (Shao et al. 2024, arXiv 2402.03300, eq. 4).
    (B, T), (B, T) -> (B, T), >= 0 exactly in real arithmetic (e^u >= 1 + u); expm1 keeps
    it accurate near r = 1 where exp(u) - 1 - u would cancel. No clamping of the
    log-ratio: a huge value is a real signal (or a bug upstream) that should not be hidden.
    """
    u = ref_logprobs - logprobs  # (B, T) log r
    return torch.expm1(u) - u


class KLEstimator(NamedTuple):
    """A per-token KL(pi || pi_ref) estimator and its properties (for y ~ pi)."""

    fn: Callable[[Tensor, Tensor], Tensor]  # fn(logprobs, ref_logprobs) -> (B, T)
    unbiased: bool  # E_{y~pi}[fn] == KL(pi || pi_ref)
    nonnegative: bool  # every per-token value >= 0


KL_ESTIMATORS: dict[str, KLEstimator] = {
    "k1": KLEstimator(kl_k1, unbiased=True, nonnegative=False),
    "k2": KLEstimator(kl_k2, unbiased=False, nonnegative=True),
    "k3": KLEstimator(kl_k3, unbiased=True, nonnegative=True),
}


def get_kl_estimator(name: str) -> KLEstimator:
    """The registered estimator called ``name``; ValueError naming the valid ones otherwise."""
    try:
        return KL_ESTIMATORS[name]
    except KeyError:
        valid = ", ".join(sorted(KL_ESTIMATORS))
        raise ValueError(f"unknown KL estimator {name!r}; valid names: {valid}") from None


# ---------------------------------------------------------------------------------------
# controllers


def _as_float(x, name: str) -> float:
    value = float(x)  # accepts a Python number or a 0-d tensor (one host sync per step)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


class FixedKLController:
    """A constant KL coefficient beta; ``update`` is a no-op (kept for one interface)."""

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def update(self, current_kl: float | Tensor, n_steps: int) -> float:
        """No-op; returns the (unchanged) coefficient."""
        return self.value

    def state_dict(self) -> dict:
        """JSON-serialisable state: {"value": beta} (a Python float round-trips exactly)."""
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """beta adapted toward a target KL, Ziegler et al. 2019 (arXiv 1909.08593) eq. 2:

        e_t       = clip((KL_t - KL_target) / KL_target, -0.2, 0.2)
        beta_t+1  = beta_t * (1 + K_beta * e_t),    K_beta = n_steps / horizon

    KL_t is the measured KL(pi || pi_ref) of the latest batch (per sequence, summed over
    tokens, as in the paper and TRL's ``AdaptiveKLController``); n_steps is the number of
    samples (or steps) it covers, so ``horizon`` is in the same unit. A KL above the target
    raises beta, below lowers it, by at most a factor 1 +- 0.2 * n_steps / horizon.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float | Tensor, n_steps: int) -> float:
        """Apply eq. 2 once; returns the new coefficient. Non-finite KL raises ValueError
        (a nan would otherwise make beta nan for the rest of the run)."""
        kl = _as_float(current_kl, "current_kl")
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        """JSON-serialisable state. Only "value" is restored by ``load_state_dict``; target
        and horizon are recorded for inspection and come from the constructor (the config)."""
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
