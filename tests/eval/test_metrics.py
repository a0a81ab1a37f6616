"""Evaluation statistics against hand-worked values."""

import math

import pytest

from rlhf.eval import metrics


def test_mean_se_plain_and_clustered_by_hand():
    # [1, 2, 4]: mean 7/3, s^2 = (16/9 + 1/9 + 25/9) / 2 = 7/3, se = sqrt(s^2 / 3) = sqrt(7) / 3
    mean, se = metrics.mean_se([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and se == pytest.approx(math.sqrt(7) / 3)
    # two prompts with two samples each: prompt means 2 and 4; the clustered se is that of the two
    # prompt means, |4 - 2| / 2 = 1, not the naive s / sqrt(4) = sqrt(14/3) / 2 = 1.08
    mean, se = metrics.mean_se([1.0, 3.0, 2.0, 6.0], ["a", "a", "b", "b"])
    assert mean == 3.0 and se == pytest.approx(1.0)
    assert metrics.mean_se([1.0, 3.0, 2.0, 6.0])[1] == pytest.approx(math.sqrt(14 / 3) / 2)
    # one value per group is the plain formula
    assert metrics.mean_se([1.0, 2.0, 4.0], [7, 8, 9])[1] == pytest.approx(math.sqrt(7) / 3)
    assert metrics.mean_se([5.0]) == (5.0, None)
    assert metrics.mean_se([1.0, 2.0], ["p", "p"]) == (1.5, None)  # one prompt: no se
    assert metrics.mean_se([]) == (None, None)
    assert metrics.mean_se([0.0, 0.0, 0.0]) == (0.0, 0.0)


def test_wilson_interval_matches_published_values():
    # Wilson 95% intervals as tabulated (e.g. Newcombe 1998, Stat. Med. 17:857, table II: 0/10, ...)
    low, high = metrics.wilson_interval(7, 10)
    assert (round(low, 4), round(high, 4)) == (0.3968, 0.8922)
    low, high = metrics.wilson_interval(0, 10)
    assert low == pytest.approx(0.0) and round(high, 4) == 0.2775
    low, high = metrics.wilson_interval(10, 10)
    assert round(low, 4) == 0.7225 and high == pytest.approx(1.0)
    with pytest.raises(ValueError):
        metrics.wilson_interval(11, 10)


def test_win_rate_on_a_fixed_table_ties_half_nones_left_out():
    #            win   win  win  win  win  win  tie  tie  loss loss  (None pair)
    policy = [3.0, 2.0, 1.0, 0.5, 9.0, 1.1, 4.0, 0.0, 1.0, -1.0, None]
    reference = [1.0, 1.0, 0.0, 0.0, 8.0, 1.0, 4.0, 0.0, 2.0, 0.0, 5.0]
    result = metrics.win_rate(policy, reference)
    assert (result.wins, result.ties, result.losses, result.n) == (6, 2, 2, 10)
    assert result.rate == pytest.approx(0.7)  # (6 + 2/2) / 10
    assert (round(result.low, 4), round(result.high, 4)) == (0.3968, 0.8922)  # Wilson of 7 / 10
    swapped = metrics.win_rate(reference, policy)
    assert swapped.rate == pytest.approx(0.3)
    assert swapped.low == pytest.approx(1 - result.high) and swapped.high == pytest.approx(1 - result.low)
    same = metrics.win_rate([1.0, 2.0], [1.0, 2.0])
    assert same.rate == 0.5 and same.ties == 2
    assert metrics.win_rate([None], [1.0]).rate is None
    with pytest.raises(ValueError):
        metrics.win_rate([1.0], [1.0, 2.0])


def test_sequence_kl_sums_log_ratios():
    assert metrics.sequence_kl([-1.0, -2.0], [-1.5, -1.0]) == pytest.approx(0.5 - 1.0)
    assert metrics.sequence_kl([-0.3, -0.7], [-0.3, -0.7]) == 0.0
    assert metrics.sequence_kl([], []) == 0.0


def test_distinct_n_by_hand():
    completions = ["a b a", "b a"]
    # unigrams a b a b a: 2 unique of 5; bigrams (a b) (b a) | (b a): 2 unique of 3 (none across completions)
    assert metrics.distinct_n(completions, 1) == pytest.approx(2 / 5)
    assert metrics.distinct_n(completions, 2) == pytest.approx(2 / 3)
    assert metrics.distinct_n(["one two", "three"], 2) == 1.0
    assert metrics.distinct_n(["", "x"], 2) is None


def test_overoptimisation_flags_a_planted_divergence_only():
    # reference, step-1, step-2, final: proxy keeps rising; gold rises, stalls, then falls
    proxy = [(0.0, 0.05), (0.5, 0.05), (1.0, 0.05), (1.5, 0.05)]
    gold = [(0.0, 0.05), (0.4, 0.05), (0.45, 0.05), (0.1, 0.05)]
    marks = metrics.overoptimisation(proxy, gold)
    assert marks[0] is None
    assert [m["flagged"] for m in marks[1:]] == [False, False, True]
    assert marks[3]["proxy_delta"] == pytest.approx(0.5) and marks[3]["gold_delta"] == pytest.approx(-0.35)
    # the same fall with a proxy step inside its noise (0.05 < 1 * sqrt(2) * 0.05) is not flagged
    assert not metrics.overoptimisation([(1.0, 0.05), (1.05, 0.05)], [(0.5, 0.05), (0.1, 0.05)])[1]["flagged"]
    # and a gold fall inside its noise is not either
    assert not metrics.overoptimisation([(0.0, 0.01), (1.0, 0.01)], [(0.5, 0.2), (0.4, 0.2)])[1]["flagged"]
    # no standard errors: the signs decide
    assert metrics.overoptimisation([(0.0, None), (1.0, None)], [(0.5, None), (0.4, None)])[1]["flagged"]
    # a missing mean gives no verdict
    assert metrics.overoptimisation([(0.0, 0.1), (1.0, 0.1)], [(None, None), (0.4, 0.1)]) == [None, None]
    assert metrics.overoptimisation([], []) == []


def test_pairwise_agreement_by_hand_and_against_a_brute_force_count():
    # gold 1 < 2 < 3; other orders (1, 2) and (1, 3) alike, (2, 3) the other way: 2 of 3
    assert metrics.pairwise_agreement([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == (pytest.approx(2 / 3), 3)
    # a gold tie is no pair; a tie in the other scorer counts half; None leaves the item out
    assert metrics.pairwise_agreement([1.0, 1.0, 2.0, None], [0.0, 5.0, 5.0, 9.0]) == (0.75, 2)
    assert metrics.pairwise_agreement([1.0, 1.0], [0.0, 1.0]) == (None, 0)
    import random

    rng = random.Random(0)
    gold = [rng.choice([0.0, 0.5, 1.0, None]) for _ in range(60)]
    other = [rng.choice([0.0, 0.3, 0.6, 0.9]) for _ in range(60)]
    agree = pairs = 0
    for i in range(60):
        for j in range(60):
            if gold[i] is None or gold[j] is None or not gold[i] < gold[j]:
                continue
            pairs += 1
            agree += 1.0 if other[i] < other[j] else 0.5 if other[i] == other[j] else 0.0
    assert metrics.pairwise_agreement(gold, other) == (pytest.approx(agree / pairs), pairs)
    with pytest.raises(ValueError, match="3 gold scores but 2"):
        metrics.pairwise_agreement([1, 2, 3], [1, 2])


def test_best_of_n_kl_by_hand():
    assert metrics.best_of_n_kl(1) == 0.0
    assert metrics.best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert metrics.best_of_n_kl(4) == pytest.approx(math.log(4) - 3 / 4)  # 0.636
    assert metrics.best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)  # 1.835
    for bad in (0, -3, 2.5, True, "4"):
        with pytest.raises(ValueError, match="integer n >= 1"):
            metrics.best_of_n_kl(bad)


def _best_of_n_probabilities(p_ref: list[float], proxy: list[float], n: int) -> list[float]:
    """p_bon(y) = F(y)^n - F(y^-)^n, F the reference CDF with outcomes in the proxy's order
    (distinct proxy values): the chance that the best of n draws is y."""
    p_bon, below = [0.0] * len(p_ref), 0.0
    for y in sorted(range(len(p_ref)), key=proxy.__getitem__):
        at = min(below + p_ref[y], 1.0)
        p_bon[y], below = at**n - below**n, at
    return p_bon


def test_best_of_n_kl_against_monte_carlo_and_the_exact_discrete_kl():
    import random
    from itertools import accumulate

    rng = random.Random(0)
    outcomes = 2000
    weights = [rng.random() for _ in range(outcomes)]
    p_ref = [w / sum(weights) for w in weights]  # a categorical reference, no outcome above 0.1%
    proxy = rng.sample(range(outcomes), outcomes)  # distinct proxy values: no ties
    cum = list(accumulate(p_ref))
    draws_per_n = 20_000
    for n in (2, 4, 16):
        p_bon = _best_of_n_probabilities(p_ref, proxy, n)
        assert math.fsum(p_bon) == pytest.approx(1.0)
        exact = math.fsum(q * math.log(q / p) for q, p in zip(p_bon, p_ref) if q > 0)
        # KL(bon || ref) in closed form: the formula is its many-outcome limit and an upper bound
        # (measured gap under 1e-5 here; a formula off by 1/n or using log n is off by > 0.06)
        assert exact <= metrics.best_of_n_kl(n) + 1e-12
        assert exact == pytest.approx(metrics.best_of_n_kl(n), abs=1e-4)
        # Monte Carlo: best-of-n draws from the reference, E_bon[log p_bon(y) - log p_ref(y)]
        draws = rng.choices(range(outcomes), cum_weights=cum, k=n * draws_per_n)
        best = [max(draws[j * n:(j + 1) * n], key=proxy.__getitem__) for j in range(draws_per_n)]
        ratios = [math.log(p_bon[y] / p_ref[y]) for y in best]
        mc = math.fsum(ratios) / draws_per_n
        se = math.sqrt(math.fsum((r - mc) ** 2 for r in ratios) / (draws_per_n - 1) / draws_per_n)
        assert 0 < se < 0.01
        assert abs(mc - metrics.best_of_n_kl(n)) < 4 * se, (n, mc, se)  # within 4 standard errors
        # the same test rejects a wrong formula: log n alone, or log n - 1 (9.8 standard errors off at n = 16)
        assert abs(mc - math.log(n)) > 4 * se and abs(mc - (math.log(n) - 1)) > 4 * se
    # one draw is the reference itself
    assert math.fsum(q * math.log(q / p) for q, p in zip(_best_of_n_probabilities(p_ref, proxy, 1), p_ref)) == \
        pytest.approx(0.0, abs=1e-12)


def test_best_of_n_kl_is_an_upper_bound_when_outcomes_repeat():
    # three equally likely outcomes (Beirami et al. 2024, arXiv 2401.01879): best of 4 is far from
    # continuous, and its exact KL (0.555) falls well below log 4 - 3/4 (0.636)
    p_ref, proxy = [1 / 3] * 3, [0.0, 1.0, 2.0]
    p_bon = _best_of_n_probabilities(p_ref, proxy, 4)
    assert p_bon == pytest.approx([1 / 81, 15 / 81, 65 / 81])
    exact = math.fsum(q * math.log(q / p) for q, p in zip(p_bon, p_ref))
    assert exact == pytest.approx(0.5555, abs=1e-3) and exact < metrics.best_of_n_kl(4) - 0.05
