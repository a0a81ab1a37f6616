"""Did a policy beat the reference, and if not, why: the report's first section.

A policy "beats the reference" when its gold win rate's 95% interval lies above 0.5 (the test
`rlhf eval` already computes: Wilson interval, ties counting half). When it does not, the
reasons are read off numbers the eval and the training run already hold, in the order a reader
would check them:

- it barely moved: KL to the reference under `SMALL_KL` nats per completion;
- the reward it was trained on did not carry over: it beat the reference on the proxy (the
  reward model it optimised) but not on gold, so the reward model ranks completions unlike the
  gold scorer (Gao et al. 2022, arXiv 2210.10760);
- it did not even raise the reward it optimised: the training signal was too weak for the run;
- PPO's critic had not learned: explained variance 1 - Var(R - V) / Var(R) at or below
  `CRITIC_LEARNED` over the last half of training, so its values add as much noise to the
  advantages as they remove (Schulman et al. 2016, arXiv 1506.02438, sec. 6);
- DPO never separated its own training pairs: implicit-reward accuracy near 0.5 at the end.

Whatever the outcome, a policy gets a warning when its samples collapsed (distinct-2 under
`COLLAPSE_DISTINCT` times the reference's: it repeats itself, a mode collapse a gold scorer may
even reward) or drifted in length (mean length off the reference's by more than `LENGTH_DRIFT`:
a reward that pays for length, Singhal et al. 2023, arXiv 2310.03716).

The functions take plain dicts (an eval.json policy, a run's config and metrics rows), so they
are tested without files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhf.eval.metrics import finite_or_none

SMALL_KL = 0.1         # nats per completion: below this a policy is, for the eye, the reference
CRITIC_LEARNED = 0.05  # explained variance at or below this: the critic is no better than a constant
PAIRS_LEARNED = 0.6    # DPO's implicit-reward accuracy on its own batches at or below this: barely learned
COLLAPSE_DISTINCT = 0.8  # distinct-2 below this share of the reference's: the samples collapsed
LENGTH_DRIFT = 0.3       # mean length off the reference's by more than this share: drifted


OUTCOMES = {"better": "beats the reference", "worse": "worse than the reference", "no change": "no significant change"}


@dataclass
class Verdict:
    name: str
    outcome: str                      # a key of OUTCOMES: "no change" when the interval holds 0.5
    summary: str                      # one sentence with the numbers
    reasons: list[str] = field(default_factory=list)  # why it did not beat the reference
    warnings: list[str] = field(default_factory=list)  # collapse / length drift, whatever the outcome

    @property
    def headline(self) -> str:
        return OUTCOMES[self.outcome]


def judge(policy: dict, gold: str, *, proxy: str | None = None, trained_on_proxy: bool = False,
          proxy_agreement: float | None = None, run_rows: list[dict] | None = None,
          reference: dict | None = None) -> Verdict:
    """The verdict on one eval.json policy (not the reference) against the reference on `gold`.

    proxy: the name of the learned scorer in the eval, if any; trained_on_proxy: the policy's
    run optimised that scorer (PPO / GRPO against the reward model); proxy_agreement: eval.json's
    share of sample pairs the proxy orders as gold does; run_rows: its metrics.jsonl; reference:
    the reference's eval.json entry, for the collapse and length-drift warnings (`drift_warnings`).
    """
    win = (policy.get("win_rate") or {}).get(gold) or {}
    rate, low, high = finite_or_none(win.get("rate")), finite_or_none(win.get("low")), finite_or_none(win.get("high"))
    kl = finite_or_none((policy.get("kl") or {}).get("mean"))
    score = finite_or_none(((policy.get("scores") or {}).get(gold) or {}).get("mean"))
    if rate is None or low is None or high is None:
        return Verdict(policy["name"], "no change", f"no {gold} win rate in the eval output",
                       warnings=drift_warnings(policy, reference or {}))
    outcome = "better" if low > 0.5 else "worse" if high < 0.5 else "no change"
    at_kl = f" at KL {kl:.2f} nats" if kl is not None else ""
    summary = (f"{gold} win rate against the reference {rate:.2f} [{low:.2f}, {high:.2f}]"
               + (f", mean {gold} score {score:.3f}" if score is not None else "") + at_kl)
    verdict = Verdict(policy["name"], outcome, summary, warnings=drift_warnings(policy, reference or {}))
    if outcome == "better":
        return verdict
    if kl is not None and kl < SMALL_KL:
        verdict.reasons.append(f"it barely moved from the reference (KL {kl:.2f} nats per completion): too few or "
                               "too small updates")
    proxy_win = ((policy.get("win_rate") or {}).get(proxy) or {}) if proxy and proxy != gold else {}
    p_rate, p_low = finite_or_none(proxy_win.get("rate")), finite_or_none(proxy_win.get("low"))
    if trained_on_proxy and p_rate is not None and p_low is not None:
        if p_low > 0.5:
            agrees = (f" (it orders only {proxy_agreement:.0%} of sample pairs as {gold} does)"
                      if proxy_agreement is not None else "")
            verdict.reasons.append(f"it beat the reference on the reward it optimised ({proxy} win rate {p_rate:.2f}, "
                                   f"interval above 0.5) but not on {gold}: that reward model ranks completions "
                                   f"differently from {gold}{agrees}, so its gains do not carry over")
        else:
            verdict.reasons.append(f"it did not beat the reference even on the reward it optimised ({proxy} win rate "
                                   f"{p_rate:.2f}): the training signal was too weak or too noisy for this run's "
                                   "length")
    explained = _late_mean(run_rows, "value/explained_variance")
    if explained is not None and explained <= CRITIC_LEARNED:
        shown = round(explained, 2) + 0.0  # no "-0.00"
        verdict.reasons.append(f"the critic had not learned: explained variance {shown:.2f} over the last half of "
                               "training (at or below 0 its values add as much noise to the advantages as they "
                               "remove)")
    accuracy = _late_mean(run_rows, "rewards/accuracy")
    if accuracy is not None and accuracy <= PAIRS_LEARNED:
        verdict.reasons.append(f"it barely separated its own training pairs: implicit-reward accuracy {accuracy:.2f} "
                               "over the last half of training (0.5 is chance)")
    if not verdict.reasons:
        verdict.reasons.append("none of the diagnostics here points at a cause: the change may be real but smaller "
                               "than this many prompts can resolve")
    return verdict


def _late_mean(rows: list[dict] | None, key: str) -> float | None:
    """The mean of `key` over the last half of the rows that log it (None if none do)."""
    values = [v for row in rows or [] if (v := finite_or_none(row.get(key))) is not None]
    if not values:
        return None
    late = values[len(values) // 2:]
    return sum(late) / len(late)


def collapse_warning(distinct_2: float | None, reference_distinct_2: float | None) -> str | None:
    """A warning when distinct-2 fell below `COLLAPSE_DISTINCT` of the reference's, else None (None too
    when either number is missing)."""
    mine, ref = finite_or_none(distinct_2), finite_or_none(reference_distinct_2)
    if mine is None or ref is None or ref <= 0 or mine >= COLLAPSE_DISTINCT * ref:
        return None
    return (f"collapsed: distinct-2 {mine:.2f} vs {ref:.2f} for the reference (under {COLLAPSE_DISTINCT:.0%} of it: "
            "it repeats itself)")


def length_drift_warning(length: float | None, reference_length: float | None) -> str | None:
    """A warning when the mean length is off the reference's by more than `LENGTH_DRIFT` of it, else None."""
    mine, ref = finite_or_none(length), finite_or_none(reference_length)
    if mine is None or ref is None or ref <= 0 or abs(mine - ref) <= LENGTH_DRIFT * ref:
        return None
    change = mine / ref - 1
    return f"drifted in length: {mine:.0f} vs {ref:.0f} tokens for the reference ({change:+.0%})"


def drift_warnings(policy: dict, reference: dict) -> list[str]:
    """`collapse_warning` and `length_drift_warning` for two eval.json entries ("length" is
    {"mean", "se"} or a bare number)."""
    def length(entry: dict):
        value = entry.get("length")
        return value.get("mean") if isinstance(value, dict) else value
    found = [collapse_warning(policy.get("distinct_2"), reference.get("distinct_2")),
             length_drift_warning(length(policy), length(reference))]
    return [w for w in found if w]
