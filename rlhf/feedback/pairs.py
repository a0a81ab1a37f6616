"""What `rlhf label` judges: each prompt's candidate completions, and which pairs of them (`pairing`).

Candidates come from the data, per row (checked up front, errors name file:line and field):

    {"prompt": P, "completions": [C1, C2, ...]}     two or more candidates
    {"prompt": P, "chosen": C1, "rejected": C2}     re-labelling: the pair is the two

or from a policy that samples them (`rlhf label policy=...`). C is a non-empty string.

Pairing rules. Which answer of a pair is listed first (shown first to a one-order judge, and the
"always the first" baseline) is a seeded coin flip per pair, so that "first" carries no
information about quality, whatever order the data or a ranking had:

    random      disjoint random pairs: the candidates shuffled, then taken two at a time (an odd
                one out is left unpaired): n candidates give n // 2 pairs;
    all         every unordered pair: n (n - 1) / 2 pairs;
    best_worst  every unordered pair is judged, each candidate is ranked by its mean win
                probability over its judged pairs, m_i = mean_j P(i beats j), and the best is
                paired with the worst: one pair per prompt (the "best-vs-worst" pairs of
                RLAIF-style pipelines, e.g. UltraFeedback's binarisation). With a pointwise judge,
                P(i beats j) = sigmoid(s_i - s_j) and m_i increases with s_i, so this is the order of
                the scores. Equal means rank the earlier candidate higher.

The randomness of prompt `index` is its own stream, `pair_rng(seed, index)`: a prompt's pairs do
not depend on the rows around it. A pair of identical texts (nothing to prefer) is never judged:
`valid_pair` says so, and the caller counts it as skipped.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from rlhf.data import DataError, Row
from rlhf.data.errors import describe

Pairing = Literal["random", "best_worst", "all"]
PAIRINGS = get_args(Pairing)
Pair = tuple[int, int]  # (first, second): indices into a prompt's candidates, in the order shown
CANDIDATE_FIELDS = ("completions", "chosen", "rejected")
# gold_column=chosen on re-labelling rows: the data's own label is the gold one
INPUT_LABEL = "chosen"


@dataclass
class Item:
    """One prompt, its candidate completions, and what travels with it into the label rows."""

    location: str  # where the row came from ("data.jsonl:7"), for errors
    prompt: Any  # a string or a list of chat messages
    candidates: list[str] = field(default_factory=list)
    columns: dict = field(default_factory=dict)  # the row's other fields, copied into its label rows
    gold: list[float | None] | None = None  # a gold score per candidate (gold_column), None: unknown


def read_items(rows: list[Row], *, sampled: bool, gold_column: str | None = None) -> list[Item]:
    """Rows (already checked as prompt rows) -> items, every row checked before any model loads.

    sampled=True: a policy samples the candidates, so a row must hold none. `gold_column`: a
    column holding one gold score per candidate (a list of numbers, null for unknown) -- or, on
    chosen/rejected rows, the name "chosen", which takes the data's own label as the gold one.
    """
    items = []
    for row in rows:
        data = row.data
        present = [name for name in CANDIDATE_FIELDS if data.get(name) is not None]
        if sampled:
            if present:
                raise DataError(f"{row.location}: field '{present[0]}': policy= samples the candidates, so the data "
                                "must not hold any (drop the column, or unset policy to label the data's own)")
            candidates = []
        else:
            candidates = _candidates(row, present)
        columns = {k: v for k, v in data.items() if k != "prompt" and k not in CANDIDATE_FIELDS and k != gold_column}
        gold = _gold(row, gold_column, candidates) if gold_column is not None else None
        items.append(Item(row.location, data["prompt"], candidates, columns, gold))
    return items


def _candidates(row: Row, present: list[str]) -> list[str]:
    data = row.data
    if "completions" in present:
        if len(present) > 1:
            raise DataError(f"{row.location}: fields 'completions' and '{present[1]}': a row holds either a "
                            "completions list or chosen and rejected, not both")
        values = data["completions"]
        if not isinstance(values, (list, tuple)):
            raise DataError(f"{row.location}: field 'completions': expected a list of two or more strings, "
                            f"got {describe(values)}")
        if len(values) < 2:
            raise DataError(f"{row.location}: field 'completions': expected two or more candidates, got {len(values)}")
        for index, value in enumerate(values):
            _check_text(row, f"completions[{index}]", value)
        return list(values)
    if present:  # chosen and / or rejected: re-labelling
        for name in ("chosen", "rejected"):
            if name not in present:
                raise DataError(f"{row.location}: missing field '{name}' (re-labelling rows need chosen and rejected)")
            _check_text(row, name, data[name])
        return [data["chosen"], data["rejected"]]
    raise DataError(f"{row.location}: missing field 'completions' (label rows need a completions list of two or more "
                    "candidates, or chosen and rejected; or set policy= to sample candidates)")


def _check_text(row: Row, name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise DataError(f"{row.location}: field '{name}': expected a non-empty string, got {describe(value)}")


def _gold(row: Row, column: str, candidates: list[str]) -> list[float | None]:
    data = row.data
    if column == INPUT_LABEL and "completions" not in data:
        return [1.0, 0.0]  # [chosen, rejected]: the data's own label
    if data.get(column) is None:
        raise DataError(f"{row.location}: missing field '{column}' "
                        f"(gold_column={column}: one gold score per candidate)")
    values = data[column]
    expected = f"a list of {len(candidates)} numbers (one gold score per candidate, null for unknown)"
    if not isinstance(values, (list, tuple)):
        raise DataError(f"{row.location}: field '{column}': expected {expected}, got {describe(values)}")
    if len(values) != len(candidates):
        raise DataError(f"{row.location}: field '{column}': expected {expected}, got {len(values)}")
    for index, value in enumerate(values):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise DataError(f"{row.location}: field '{column}[{index}]': expected a finite number or null, "
                            f"got {value!r}")
    return [None if v is None else float(v) for v in values]


def pair_rng(seed: int, index: int) -> random.Random:
    """The random stream of the prompt at `index`: its own, whatever rows surround it."""
    return random.Random(seed * 1_000_003 + index)


def random_pairs(n: int, rng: random.Random) -> list[Pair]:
    """Disjoint pairs of n candidates: a shuffle taken two at a time (n // 2 pairs, each in the shuffled order)."""
    order = list(range(n))
    rng.shuffle(order)
    return [(order[i], order[i + 1]) for i in range(0, n - 1, 2)]


def all_pairs(n: int, rng: random.Random) -> list[Pair]:
    """Every unordered pair of n candidates, each listed in a random order."""
    return [(i, j) if rng.random() < 0.5 else (j, i) for i, j in itertools.combinations(range(n), 2)]


def plan_pairs(n: int, pairing: str, rng: random.Random) -> list[Pair]:
    """The pairs to judge for one prompt: `random` forms disjoint pairs; `all` and `best_worst` judge all."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    return random_pairs(n, rng) if pairing == "random" else all_pairs(n, rng)


def valid_pair(candidates: list[str], pair: Pair) -> bool:
    """A pair worth judging: two different, non-empty texts (a sampled completion can be empty)."""
    a, b = candidates[pair[0]], candidates[pair[1]]
    return bool(a) and bool(b) and a != b


def mean_win_probabilities(n: int, pairs: list[Pair], p_first: list[float | None]) -> list[float | None]:
    """m_i = mean over i's judged pairs of P(i wins): p for the first of a pair, 1 - p for the second.

    Pairs without a verdict (None) do not count; a candidate with no judged pair gets None.
    """
    sums, counts = [0.0] * n, [0] * n
    for (i, j), p in zip(pairs, p_first):
        if p is None:
            continue
        sums[i] += p
        sums[j] += 1.0 - p
        counts[i] += 1
        counts[j] += 1
    return [s / c if c else None for s, c in zip(sums, counts)]


def best_worst(n: int, pairs: list[Pair], p_first: list[float | None]) -> int | None:
    """The index in `pairs` of the pair of the best and the worst candidate by `mean_win_probabilities`.

    Ties rank the earlier candidate higher (best: the first of the highest means, worst: the last
    of the lowest). None when fewer than two candidates have a verdict, or their pair was not judged.
    """
    means = mean_win_probabilities(n, pairs, p_first)
    ranked = [i for i in range(n) if means[i] is not None]
    if len(ranked) < 2:
        return None
    best = min(ranked, key=lambda i: (-means[i], i))
    worst = max(ranked, key=lambda i: (-means[i], i))
    for index, pair in enumerate(pairs):
        if set(pair) == {best, worst}:
            return index
    return None
