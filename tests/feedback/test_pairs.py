"""Candidates from rows, pairing rules, and the best-vs-worst pick, by hand."""

import itertools

import pytest

from rlhf.data import DataError, Row
from rlhf.feedback.pairs import (all_pairs, best_worst, mean_win_probabilities, pair_rng, plan_pairs, random_pairs,
                                 read_items, valid_pair)


def rows(*datas):
    return [Row(f"data.jsonl:{i + 1}", d) for i, d in enumerate(datas)]


def test_random_pairs_are_disjoint_seeded_per_prompt_and_cover_n_over_2():
    pairs = random_pairs(5, pair_rng(0, 3))
    assert len(pairs) == 2
    used = [i for pair in pairs for i in pair]
    assert len(set(used)) == 4 and set(used) <= set(range(5))
    assert random_pairs(5, pair_rng(0, 3)) == pairs  # the same stream again
    # another prompt (or seed) draws its own
    assert len({tuple(random_pairs(6, pair_rng(0, i))) for i in range(20)}) > 1
    assert len({tuple(random_pairs(6, pair_rng(s, 0))) for s in range(20)}) > 1


def test_all_pairs_cover_every_unordered_pair_in_a_random_order():
    pairs = all_pairs(4, pair_rng(1, 0))
    assert sorted(tuple(sorted(p)) for p in pairs) == list(itertools.combinations(range(4), 2))
    firsts = [p[0] < p[1] for i in range(30) for p in all_pairs(2, pair_rng(0, i))]
    assert any(firsts) and not all(firsts)  # which one is listed first is a coin flip
    assert plan_pairs(4, "best_worst", pair_rng(1, 0)) == pairs  # best_worst judges every pair
    assert len(plan_pairs(4, "random", pair_rng(1, 0))) == 2
    with pytest.raises(ValueError, match="pairing"):
        plan_pairs(4, "round_robin", pair_rng(1, 0))


def test_valid_pair_skips_identical_and_empty_texts():
    candidates = ["a", "b", "a", ""]
    assert valid_pair(candidates, (0, 1))
    assert not valid_pair(candidates, (0, 2))
    assert not valid_pair(candidates, (1, 3))


def test_mean_win_probabilities_and_best_worst_by_hand():
    pairs = [(0, 1), (2, 0), (1, 2)]
    p = [0.8, 0.4, None]  # 0 beats 1 w.p. 0.8; 2 beats 0 w.p. 0.4; (1, 2) unparsed
    # m0 = (0.8 + 0.6) / 2 = 0.7, m1 = 0.2 / 1, m2 = 0.4 / 1
    assert mean_win_probabilities(3, pairs, p) == pytest.approx([0.7, 0.2, 0.4])
    assert best_worst(3, pairs, p) == 0  # best 0, worst 1: their pair is pairs[0]
    # with (1, 2) judged, 1 beats 2 w.p. 0.9: m1 = 0.55, m2 = 0.25, so 2 is the worst
    assert best_worst(3, pairs, [0.8, 0.4, 0.9]) == 1
    # equal means: the earlier candidate ranks higher, so best 0 and worst 2
    assert best_worst(3, [(0, 1), (0, 2), (1, 2)], [0.5, 0.5, 0.5]) == 1
    # fewer than two candidates with a verdict: no pair
    assert best_worst(3, pairs, [None, None, None]) is None
    assert mean_win_probabilities(3, pairs, [None] * 3) == [None, None, None]


def test_read_items_takes_completions_or_chosen_rejected_and_keeps_the_other_columns():
    items = read_items(rows({"prompt": "p", "completions": ["a", "b", "c"], "topic": "x", "score": [1, 2, 3]},
                            {"prompt": "q", "chosen": "c", "rejected": "r", "topic": "y", "score": [0, 1]}),
                       sampled=False, gold_column="score")
    assert items[0].candidates == ["a", "b", "c"] and items[0].columns == {"topic": "x"}
    assert items[0].gold == [1.0, 2.0, 3.0]
    assert items[1].candidates == ["c", "r"] and items[1].columns == {"topic": "y"}
    assert items[0].location == "data.jsonl:1"


def test_gold_column_chosen_takes_the_datas_own_label():
    (item,) = read_items(rows({"prompt": "q", "chosen": "c", "rejected": "r"}), sampled=False, gold_column="chosen")
    assert item.gold == [1.0, 0.0] and item.candidates == ["c", "r"]


@pytest.mark.parametrize("row, gold, message", [
    ({"prompt": "p"}, None, r"missing field 'completions'"),
    ({"prompt": "p", "completions": ["a"]}, None, r"field 'completions': expected two or more"),
    ({"prompt": "p", "completions": "ab"}, None, r"field 'completions': expected a list"),
    ({"prompt": "p", "completions": ["a", 3]}, None, r"field 'completions\[1\]': expected a non-empty string"),
    ({"prompt": "p", "completions": ["a", ""]}, None, r"field 'completions\[1\]'.*empty string"),
    ({"prompt": "p", "chosen": "a"}, None, r"missing field 'rejected'"),
    ({"prompt": "p", "chosen": "a", "rejected": ["x"]}, None, r"field 'rejected': expected a non-empty string"),
    ({"prompt": "p", "completions": ["a", "b"], "chosen": "a"}, None, r"not both"),
    ({"prompt": "p", "completions": ["a", "b"], "g": [1.0]}, "g", r"field 'g': expected a list of 2 numbers.*got 1"),
    ({"prompt": "p", "completions": ["a", "b"], "g": [1.0, "x"]}, "g", r"field 'g\[1\]': expected a finite number"),
    ({"prompt": "p", "completions": ["a", "b"], "g": [1.0, float("nan")]}, "g", r"field 'g\[1\]'"),
    ({"prompt": "p", "completions": ["a", "b"]}, "g", r"missing field 'g'"),
])
def test_bad_rows_name_the_line_and_the_field(row, gold, message):
    with pytest.raises(DataError, match=message):
        read_items(rows({"prompt": "ok", "completions": ["a", "b"], **({gold: [0, 1]} if gold else {})}, row),
                   sampled=False, gold_column=gold)
    with pytest.raises(DataError, match="data.jsonl:2"):
        read_items(rows({"prompt": "ok", "completions": ["a", "b"], **({gold: [0, 1]} if gold else {})}, row),
                   sampled=False, gold_column=gold)


def test_gold_values_may_be_null_for_unknown():
    (item,) = read_items(rows({"prompt": "p", "completions": ["a", "b"], "g": [None, 2]}), sampled=False,
                         gold_column="g")
    assert item.gold == [None, 2.0]


def test_a_sampling_policy_refuses_rows_that_hold_candidates():
    assert read_items(rows({"prompt": "p", "topic": "t"}), sampled=True)[0].candidates == []
    with pytest.raises(DataError, match="data.jsonl:1: field 'completions': policy= samples"):
        read_items(rows({"prompt": "p", "completions": ["a", "b"]}), sampled=True)
