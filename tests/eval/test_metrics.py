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
