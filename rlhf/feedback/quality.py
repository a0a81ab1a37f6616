"""How good are the AI labels: the numbers of `label_report.json`, as pure functions.

A judge's verdict on a pair (first, second) is p = P(first is better), its confidence
c = max(p, 1 - p) in [1/2, 1] (RLAIF, Lee et al. 2023, arXiv 2309.00267, sec. 2.1: the
soft label). Against a gold labeller (scores g_first, g_second; ties and unknowns excluded),
a labeller that says p earns

    credit(p, y) = 1[p > 1/2] y + 1[p < 1/2] (1 - y) + 1/2 1[p = 1/2],   y = 1[g_first > g_second]

and agreement is the mean credit over the pairs: a judge's tie is a coin flip. Two baselines a
judge must beat are scored the same way on the same pairs (RLAIF sec. 4.3 reports position bias;
length is the best-known shortcut of AI and human raters, Singhal et al. 2023, arXiv 2310.03716):

    always the longer    p = 1, 0 or 1/2 as the first answer has more, fewer or as many characters
    always the first     p = 1 (the first-listed answer; pairs are listed in a random order)
"""

from __future__ import annotations

import math
from typing import Sequence

# A verdict this close to a coin flip is a tie for the report's tie rate.
TIE_CONFIDENCE = 0.55


def confidence(p: float) -> float:
    """c = max(p, 1 - p): how sure a verdict is, in [1/2, 1]."""
    return max(p, 1.0 - p)


def mean(values: Sequence[float]) -> float | None:
    """The mean, or None for no values (the report then says null rather than a made-up 0)."""
    return sum(values) / len(values) if values else None


def position_consistency(consistent: Sequence[bool | None]) -> float | None:
    """Share of pairs whose winner is the same in both orders (pairwise judges, RLAIF sec. 4.3).

    Entries of None (pointwise judges, one-order judging, unparsed verdicts) do not count; None
    when there are none. 1 is an order-blind judge; a judge that always names one position gets 0.
    """
    flags = [bool(c) for c in consistent if c is not None]
    return mean([1.0 if c else 0.0 for c in flags])


def tie_rate(confidences: Sequence[float], threshold: float = TIE_CONFIDENCE) -> float | None:
    """Share of verdicts with confidence below `threshold` (default 0.55): the judge barely prefers either."""
    return mean([1.0 if c < threshold else 0.0 for c in confidences])


def verdict_mass(details: Sequence[dict]) -> float | None:
    """Mean probability the judge put on its verdict tokens at all, over the judged items
    (`PairVerdict.details` entries "mass_*"; None where no judge reports it, e.g. a scripted one).
    Near 1, the judge answers with a verdict; far below, it mostly wants to say something else and
    p is read from the tail of its distribution."""
    return mean([v for d in details for k, v in d.items() if k.startswith("mass_") and v is not None])


def credit(p: float, y: float) -> float:
    """1 if the verdict p = P(first is better) picks gold's winner (y = 1: the first), 0 if not, 1/2 for p = 1/2."""
    if p == 0.5:
        return 0.5
    return float((p > 0.5) == (y > 0.5))


def gold_winner(score_first: float | None, score_second: float | None) -> float | None:
    """y = 1.0 (first is better), 0.0 (second), 0.5 (a tie), None (a score is unknown)."""
    if score_first is None or score_second is None:
        return None
    if score_first == score_second:
        return 0.5
    return 1.0 if score_first > score_second else 0.0


def longer_first(first: str, second: str) -> float:
    """The "always the longer answer" labeller's p: 1, 0 or 1/2 by character count."""
    if len(first) == len(second):
        return 0.5
    return 1.0 if len(first) > len(second) else 0.0


def gold_agreement(p_first: Sequence[float], gold_first: Sequence[float | None], gold_second: Sequence[float | None],
                   firsts: Sequence[str], seconds: Sequence[str]) -> dict:
    """Agreement of the judge's verdicts with a gold labeller, next to the two baselines (module docstring).

    Every argument has one entry per judged pair. Pairs whose gold scores tie (n_gold_ties) or are
    unknown (n_gold_missing) are left out; agreement_se = sqrt(a (1 - a) / n) is the binomial
    standard error. Rates are None when no pair is left.
    """
    judge, longer, first = [], [], []
    ties = missing = 0
    for p, ga, gb, a, b in zip(p_first, gold_first, gold_second, firsts, seconds, strict=True):
        y = gold_winner(ga, gb)
        if y is None:
            missing += 1
            continue
        if y == 0.5:
            ties += 1
            continue
        judge.append(credit(p, y))
        longer.append(credit(longer_first(a, b), y))
        first.append(credit(1.0, y))
    agreement = mean(judge)
    return {
        "agreement": agreement,
        "agreement_se": math.sqrt(agreement * (1 - agreement) / len(judge)) if judge else None,
        "baseline_longer": mean(longer),
        "baseline_first": mean(first),
        "n_gold_pairs": len(judge),
        "n_gold_ties": ties,
        "n_gold_missing": missing,
    }


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_report(report: dict) -> str:
    """`label_report.json` as an aligned table: counts, judge quality, and agreement next to the baselines."""
    r = report
    rows = [
        ("judge", f"{r['judge']} ({r['judge_kind']}), template {str(r['template_sha'])[:12]}"),
        ("prompts", f"{r['n_prompts']}, pairing {r['pairing']}"),
        ("pairs judged", f"{r['n_judged']}  (unparsed {r['n_unparsed']}; {r['n_skipped']} not judged: identical"
                         f"{' or empty' if r.get('sampled') else ''} texts)"),
        ("labelled", f"{r['n_pairs']}  (dropped {r['n_dropped']}, {r['dropped_share']:.1%}, under min_confidence "
                     f"{r['min_confidence']:g} or an exact tie)"),
        ("mean confidence", _number(r["mean_confidence"])),
        ("tie rate", f"{_number(r['tie_rate'])}  (confidence < {TIE_CONFIDENCE})"),
    ]
    if r.get("verdict_mass") is not None:
        rows.append(("verdict mass", f"{_number(r['verdict_mass'])}  (the judge's probability on its verdict tokens)"))
    if r["judge_kind"] == "pairwise":
        rows.append(("position consistency", _number(r["position_consistency"])))
    rows.append(("speed", f"{_number(r['items_per_s'], 1)} pairs/s  (judge cache: {r['cache_hits']} hits, "
                          f"{r['cache_misses']} misses)"))
    if "agreement" in r:
        se = f" +- {r['agreement_se']:.3f}" if r.get("agreement_se") is not None else ""
        rows += [
            ("agreement with gold", f"n={r['n_gold_pairs']} pairs (gold ties {r['n_gold_ties']}, "
                                     f"unknown {r['n_gold_missing']})"),
            ("  judge", _number(r["agreement"]) + se),
            ("  always the longer", _number(r["baseline_longer"])),
            ("  always the first", _number(r["baseline_first"])),
        ]
        if r.get("agreement_labelled") is not None:
            rows.append(("  judge, labelled pairs", _number(r["agreement_labelled"])))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name.ljust(width)}  {value}" for name, value in rows)
