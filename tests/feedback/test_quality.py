"""The label report's numbers, computed by hand."""

import math
import re

import pytest

from rlhf.feedback import quality


def test_confidence_position_consistency_and_tie_rate():
    assert quality.confidence(0.3) == pytest.approx(0.7)
    assert quality.confidence(0.8) == pytest.approx(0.8)
    # None entries (pointwise, unparsed) do not count: 2 of 3
    assert quality.position_consistency([True, False, None, True]) == pytest.approx(2 / 3)
    assert quality.position_consistency([None, None]) is None
    # 0.5 and 0.54 are ties, 0.55 and 0.9 are not
    assert quality.tie_rate([0.5, 0.54, 0.55, 0.9]) == pytest.approx(0.5)
    assert quality.tie_rate([]) is None
    assert quality.mean([]) is None


def test_verdict_mass_is_the_mean_over_items_that_report_one():
    details = [{"p_ab": 0.7, "mass_ab": 0.9, "p_ba": 0.4, "mass_ba": 0.5},
               {"score_a": 1.0, "mass_a": 0.7, "mass_b": None}, {"p_ab": 0.6}]
    assert quality.verdict_mass(details) == pytest.approx((0.9 + 0.5 + 0.7) / 3)
    assert quality.verdict_mass([{"p_ab": 0.6}]) is None


def test_credit_and_gold_winner():
    assert quality.credit(0.9, 1.0) == 1.0
    assert quality.credit(0.9, 0.0) == 0.0
    assert quality.credit(0.1, 0.0) == 1.0
    assert quality.credit(0.5, 1.0) == 0.5  # a judge's tie is a coin flip
    assert quality.gold_winner(2.0, 1.0) == 1.0
    assert quality.gold_winner(1.0, 2.0) == 0.0
    assert quality.gold_winner(1.0, 1.0) == 0.5
    assert quality.gold_winner(None, 1.0) is None
    assert quality.longer_first("abc", "a") == 1.0
    assert quality.longer_first("a", "abc") == 0.0
    assert quality.longer_first("ab", "cd") == 0.5


def test_gold_agreement_by_hand():
    #        p     gold first, second   first, second texts   judge  longer  first
    pairs = [(0.9, 1.0, 0.0, "aaa", "a"),     # y=1    1      1       1
             (0.2, 0.0, 2.0, "a", "bbbb"),    # y=0    1      1       0
             (0.5, 3.0, 1.0, "ab", "cd"),     # y=1    1/2    1/2     1
             (0.7, 1.0, 1.0, "a", "b"),       # gold tie: left out
             (0.6, None, 1.0, "a", "b"),      # gold unknown: left out
             (0.6, 0.0, 5.0, "x", "yy")]      # y=0    0      1       0
    p, ga, gb, a, b = map(list, zip(*pairs))
    result = quality.gold_agreement(p, ga, gb, a, b)
    assert result["agreement"] == pytest.approx(2.5 / 4)
    assert result["baseline_longer"] == pytest.approx(3.5 / 4)
    assert result["baseline_first"] == pytest.approx(2 / 4)
    assert result["agreement_se"] == pytest.approx(math.sqrt(0.625 * 0.375 / 4))
    assert (result["n_gold_pairs"], result["n_gold_ties"], result["n_gold_missing"]) == (4, 1, 1)


def test_gold_agreement_with_no_usable_pair_says_none():
    result = quality.gold_agreement([0.9], [1.0], [1.0], ["a"], ["b"])
    assert result["agreement"] is None and result["baseline_first"] is None and result["n_gold_ties"] == 1


def _report(**extra):
    report = {"judge": "scripted", "judge_kind": "pairwise", "template_sha": "ab" * 32, "n_prompts": 3,
              "pairing": "random", "n_judged": 10, "n_unparsed": 1, "n_skipped": 0, "n_pairs": 8, "n_dropped": 1,
              "dropped_share": 1 / 9,
              "min_confidence": 0.6, "mean_confidence": 0.75, "tie_rate": 0.1, "position_consistency": 0.9,
              "items_per_s": 12.34, "cache_hits": 4, "cache_misses": 16}
    report.update(extra)
    return report


def test_format_report_is_an_aligned_table_with_agreement_next_to_the_baselines():
    text = quality.format_report(_report(agreement=0.8125, agreement_se=0.05, baseline_longer=0.5,
                                         baseline_first=0.4375, n_gold_pairs=16, n_gold_ties=2, n_gold_missing=0))
    lines = text.splitlines()
    judge = next(line for line in lines if "0.812" in line)
    longer = next(line for line in lines if "always the longer" in line)
    first = next(line for line in lines if "always the first" in line)
    confidence = next(line for line in lines if "mean confidence" in line)
    assert "judge" in judge and "0.500" in longer and "0.438" in first
    # the values line up in one column: agreement right beside the baselines it must beat
    assert judge.index("0.812") == longer.index("0.500") == first.index("0.438") == confidence.index("0.750")
    assert "position consistency" in text and "0.900" in text
    assert "verdict mass" not in text  # none reported
    assert re.search(r"verdict mass +0\.620", quality.format_report(_report(verdict_mass=0.62)))
    assert "dropped 1, 11.1%" in text


def test_format_report_of_a_pointwise_judge_without_gold():
    text = quality.format_report(_report(judge_kind="pointwise", position_consistency=None, mean_confidence=None))
    assert "position consistency" not in text and "agreement" not in text
    assert "mean confidence" in text and "n/a" in text
