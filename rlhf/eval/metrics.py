"""Evaluation statistics: pure functions of plain numbers and strings (no torch, no models).

    mean_se([1.0, 2.0, 4.0])                       -> (2.333..., 0.881...)
    win_rate([0.9, 0.2, 0.5], [0.1, 0.4, 0.5])     -> WinRate(rate=0.5, low=..., high=..., n=3)
    distinct_n(["a b a", "b a"], 2)                -> 2 / 3
    overoptimisation([(0.1, .01), (0.5, .01)], [(0.3, .01), (0.1, .01)])  -> [None, {"flagged": True, ...}]
    best_of_n_kl(4)                                -> log 4 - 3/4 = 0.636...

Every function says its formula and where it comes from; tests check them against hand-worked values.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

# Two-sided 95% normal quantile, Phi^-1(0.975).
Z_95 = 1.959963984540054

# A change between two points of a curve counts as a rise (or a fall) when it exceeds this many
# standard errors of the difference (see `overoptimisation`).
OVEROPTIMISATION_Z = 1.0


def finite_or_none(value: Any) -> float | None:
    """`value` as a float when it is a finite real number (not a bool), else None: numbers read
    from JSON files, where a field may be missing, null, a string or NaN."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return None
    return float(value)


def mean_se(values: Sequence[float], groups: Sequence[Hashable] | None = None) -> tuple[float | None, float | None]:
    """(mean, standard error of the mean) of `values`; (None, None) when empty, se None for one value.

    Without groups: se = s / sqrt(n), s the sample standard deviation (n - 1 in the denominator).
    With `groups` (one label per value, e.g. the prompt a sample answers): the cluster-robust
    standard error of a mean, for samples that share a prompt and so are not independent
    (Cameron & Miller 2015, "A Practitioner's Guide to Cluster-Robust Inference", J. Human
    Resources 50(2), eqn. 11 with the G / (G - 1) small-sample factor, for a regression on a constant):

        se^2 = G / (G - 1) * sum_g (sum_{i in g} (x_i - mean))^2 / n^2

    which equals s^2 / n when every group holds one value. se is None with fewer than 2 groups.
    """
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if groups is None:
        groups = range(n)
    if len(groups) != n:
        raise ValueError(f"mean_se: {len(groups)} group labels for {n} values")
    residuals: dict[Hashable, float] = {}
    for value, group in zip(values, groups):
        residuals[group] = residuals.get(group, 0.0) + (value - mean)
    g = len(residuals)
    if g < 2:
        return mean, None
    variance = g / (g - 1) * math.fsum(r * r for r in residuals.values()) / (n * n)
    return mean, math.sqrt(variance)


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a proportion (Wilson 1927, JASA 22(158):209-212, eqn. on p. 210).

        p = successes / n
        centre = (p + z^2 / 2n) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

    Unlike the normal (Wald) interval it stays inside [0, 1] and does not collapse at p = 0 or 1.
    `successes` may be fractional (ties counted half, see `win_rate`).
    """
    if n <= 0:
        raise ValueError("wilson_interval needs n >= 1")
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: successes {successes} outside [0, {n}]")
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class WinRate:
    rate: float | None  # (wins + ties / 2) / n; None when no pair has both scores
    low: float | None  # 95% Wilson interval of the rate
    high: float | None
    n: int  # pairs compared (both scores present)
    wins: int
    ties: int
    losses: int

    def as_dict(self) -> dict:
        return {"rate": self.rate, "low": self.low, "high": self.high, "n": self.n,
                "wins": self.wins, "ties": self.ties, "losses": self.losses}


def win_rate(policy: Sequence[float | None], reference: Sequence[float | None], z: float = Z_95) -> WinRate:
    """Win rate of a policy over the reference, pair by pair, with a 95% interval.

    Pair i compares policy[i] with reference[i] (the same prompt and sample index): a win when the
    policy scores higher, a tie (counted half) when equal, a loss when lower; pairs where either
    score is None are left out. rate = (wins + ties / 2) / n, and the interval is the Wilson score
    interval (`wilson_interval`) of that count. A tie-half outcome takes values in {0, 1/2, 1}, whose
    variance is at most the Bernoulli variance p (1 - p) at the same mean, so with ties the interval
    is conservative (wider than it needs to be), never too narrow.
    """
    if len(policy) != len(reference):
        raise ValueError(f"win_rate: {len(policy)} policy scores but {len(reference)} reference scores")
    wins = ties = losses = 0
    for p, r in zip(policy, reference):
        if p is None or r is None:
            continue
        if p > r:
            wins += 1
        elif p == r:
            ties += 1
        else:
            losses += 1
    n = wins + ties + losses
    if n == 0:
        return WinRate(None, None, None, 0, 0, 0, 0)
    low, high = wilson_interval(wins + ties / 2, n, z)
    return WinRate((wins + ties / 2) / n, low, high, n, wins, ties, losses)


def pairwise_agreement(gold: Sequence[float | None], other: Sequence[float | None]) -> tuple[float | None, int]:
    """(agreement, pairs): over the pairs of items whose gold scores differ, the share that `other`
    orders the same way, a tie in `other` counting half; items with a None score are left out.

    It equals (1 + tau_b-like concordance) / 2 (Kendall 1938): 0.5 is a scorer that knows nothing of
    gold's order, 1.0 one that orders every pair as gold does. For a reward model against the gold
    scorer on an eval's samples, it is the reward model's accuracy on pairs of real policy samples,
    a far larger test than a few held-out preference pairs. None when no pair has a gold order.
    O(n log n): items in gold order, each counted against the earlier (lower-gold) items by rank of
    `other` in a Fenwick tree (Fenwick 1994), a gold tie group entering the tree only after all of it
    was counted.
    """
    if len(gold) != len(other):
        raise ValueError(f"pairwise_agreement: {len(gold)} gold scores but {len(other)} others")
    kept = sorted((g, o) for g, o in zip(gold, other) if g is not None and o is not None)
    ranks = {value: r for r, value in enumerate(sorted({o for _, o in kept}), start=1)}
    tree = [0] * (len(ranks) + 1)

    def below_or_at(rank: int) -> int:  # earlier items whose `other` rank is <= rank
        total = 0
        while rank > 0:
            total, rank = total + tree[rank], rank - (rank & -rank)
        return total

    agree, pairs, entered, start = 0.0, 0, 0, 0
    while start < len(kept):
        end = start
        while end < len(kept) and kept[end][0] == kept[start][0]:
            end += 1
        for _, o in kept[start:end]:  # vs the `entered` items of lower gold
            rank = ranks[o]
            lower, tied = below_or_at(rank - 1), below_or_at(rank) - below_or_at(rank - 1)
            agree += lower + 0.5 * tied
            pairs += entered
        for _, o in kept[start:end]:
            rank = ranks[o]
            while rank < len(tree):
                tree[rank], rank = tree[rank] + 1, rank + (rank & -rank)
        entered += end - start
        start = end
    return (agree / pairs if pairs else None), pairs


def sequence_kl(logprobs: Sequence[float], ref_logprobs: Sequence[float]) -> float:
    """The sampled estimate of KL(pi || ref) for one completion y ~ pi:

        KL_hat(y) = sum_t (log pi(y_t | x, y_<t) - log ref(y_t | x, y_<t))

    Its expectation over y ~ pi is exactly KL(pi(.|x) || ref(.|x)) of the whole completion
    (the "k1" estimator: Schulman 2020, "Approximating KL Divergence"; the per-sequence KL of
    InstructGPT, Ouyang et al. 2022, arXiv 2203.02155 eqn. 2). A single sample may be negative.
    Both log-probs must be of the distribution that was sampled (the same temperature).
    """
    if len(logprobs) != len(ref_logprobs):
        raise ValueError(f"sequence_kl: {len(logprobs)} log-probs but {len(ref_logprobs)} reference log-probs")
    return math.fsum(a - b for a, b in zip(logprobs, ref_logprobs))


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || ref) in nats, for the policy that draws n samples from the reference and
    keeps the one a reward scores highest (the formula of Stiennon et al. 2020, arXiv 2009.01325,
    used for best-of-n by Gao et al. 2022, arXiv 2210.10760, sec. 2):

        KL_bon = log n - (n - 1) / n

    Exact when the n samples are distinct, i.e. the reward is continuous under the reference (no
    ties): best-of-n then has n F(r)^(n-1) times the reference's probability, F the reference's
    reward CDF, and F(r) of a best-of-n sample has density n u^(n-1) on [0, 1], so E[log F] = -1/n.
    With a discrete reference (repeated completions, tied rewards) it is an upper bound on the true
    KL (Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment policy", arXiv
    2401.01879, sec. 3), tight when every outcome is unlikely. n = 1 is the reference itself: 0.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"best_of_n_kl needs an integer n >= 1, got {n!r}")
    return math.log(n) - (n - 1) / n


def distinct_n(completions: Sequence[str], n: int) -> float | None:
    """Distinct-n: unique n-grams / total n-grams over all `completions` (Li et al. 2016,
    "A Diversity-Promoting Objective Function for Neural Conversation Models", arXiv 1510.03055 sec. 4.3).

    Tokens are whitespace-separated words (`str.split()`), so the number does not depend on the
    model's tokenizer and compares across policies; n-grams never span two completions. None when
    no completion has n words.
    """
    if n < 1:
        raise ValueError("distinct_n needs n >= 1")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in completions:
        words = text.split()
        for i in range(len(words) - n + 1):
            seen.add(tuple(words[i:i + n]))
            total += 1
    return len(seen) / total if total else None


def overoptimisation(proxy: Sequence[tuple[float | None, float | None]],
                     gold: Sequence[tuple[float | None, float | None]], *,
                     z: float = OVEROPTIMISATION_Z) -> list[dict | None]:
    """Flag the points of a curve where the proxy score rises while the gold score falls.

    `proxy` and `gold` are (mean, se) per point of one curve, in order: the reference first, then
    a run's checkpoints by step, then its final model (or the reference, then one policy). This is
    the signature of reward over-optimisation, where optimising a learned proxy past a point makes
    the true objective worse (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization",
    arXiv 2210.10760, fig. 1). Point k (k >= 1) is compared with point k - 1:

        d_proxy = proxy_k - proxy_{k-1},   d_gold = gold_k - gold_{k-1}
        s(d)    = sqrt(se_k^2 + se_{k-1}^2)          (se of the difference; a missing se counts as 0)
        flagged = d_proxy > z * s(d_proxy)  and  d_gold < -z * s(d_gold)

    with z = 1 by default: both moves must exceed one standard error of the difference, so noise
    between two equal policies rarely flags. The s(d) above is that of independent samples; the
    eval samples every policy on the same prompts with the same seeds, whose positive correlation
    makes the true se of a difference smaller, so the test errs towards not flagging.
    Returns one entry per point: None for the first point and where a mean is missing, else
    {"flagged", "proxy_delta", "gold_delta"}.
    """
    if len(proxy) != len(gold):
        raise ValueError(f"overoptimisation: {len(proxy)} proxy points but {len(gold)} gold points")
    if not proxy:
        return []
    out: list[dict | None] = [None]
    for k in range(1, len(proxy)):
        (p1, p1_se), (p0, p0_se) = proxy[k], proxy[k - 1]
        (g1, g1_se), (g0, g0_se) = gold[k], gold[k - 1]
        if None in (p1, p0, g1, g0):
            out.append(None)
            continue
        d_proxy, d_gold = p1 - p0, g1 - g0
        s_proxy = math.hypot(p1_se or 0.0, p0_se or 0.0)
        s_gold = math.hypot(g1_se or 0.0, g0_se or 0.0)
        flagged = d_proxy > z * s_proxy and d_gold < -z * s_gold
        out.append({"flagged": bool(flagged), "proxy_delta": d_proxy, "gold_delta": d_gold})
    return out
