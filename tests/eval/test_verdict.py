"""The report's verdicts: beaten or not by the gold win-rate interval, and the cause read off the numbers."""

import pytest

from rlhf.eval.verdict import collapse_warning, drift_warnings, judge, length_drift_warning


def _policy(gold_win, proxy_win=None, kl=0.8):
    def win(rate, low, high):
        return {"rate": rate, "low": low, "high": high}
    p = {"name": "p", "kl": {"mean": kl, "se": 0.1}, "scores": {"gold": {"mean": 0.3, "se": 0.04}},
         "win_rate": {"gold": win(*gold_win)}}
    if proxy_win is not None:
        p["win_rate"]["proxy"] = win(*proxy_win)
    return p


@pytest.mark.parametrize("interval, outcome", [((0.61, 0.52, 0.69), "better"), ((0.55, 0.46, 0.64), "no change"),
                                               ((0.4, 0.31, 0.49), "worse"), ((0.6, 0.5, 0.7), "no change")])
def test_the_outcome_is_where_the_interval_lies_against_one_half(interval, outcome):
    v = judge(_policy(interval), "gold")
    assert v.outcome == outcome
    assert "0.61 [0.52, 0.69]" in v.summary if outcome == "better" else v.reasons  # a loser always gets a reason
    assert (v.reasons == []) == (outcome == "better")


def test_a_proxy_gain_that_gold_does_not_share_blames_the_reward_model():
    v = judge(_policy((0.55, 0.46, 0.64), proxy_win=(0.62, 0.53, 0.70)), "gold", proxy="proxy",
              trained_on_proxy=True)
    assert len(v.reasons) == 1 and "ranks completions differently from gold" in v.reasons[0]
    # a policy that never trained on the proxy (DPO) is not said to have optimised it
    other = judge(_policy((0.55, 0.46, 0.64), proxy_win=(0.62, 0.53, 0.70)), "gold", proxy="proxy")
    assert not any("optimised" in r for r in other.reasons)


def test_a_flat_proxy_and_a_critic_that_never_learned_are_both_named():
    rows = [{"step": s, "value/explained_variance": ev} for s, ev in enumerate([0.3, 0.4, -2.0, -1.0], start=1)]
    v = judge(_policy((0.53, 0.44, 0.62), proxy_win=(0.5, 0.41, 0.59)), "gold", proxy="proxy", trained_on_proxy=True,
              run_rows=rows)
    assert "did not beat the reference even on the reward it optimised" in v.reasons[0]
    assert "explained variance -1.50 over the last half" in v.reasons[1]  # steps 3 and 4 only
    learned = judge(_policy((0.53, 0.44, 0.62)), "gold", run_rows=[{"value/explained_variance": 0.5}])
    assert not any("critic" in r for r in learned.reasons)


def test_a_policy_that_barely_moved_or_never_separated_its_pairs():
    v = judge(_policy((0.52, 0.43, 0.61), kl=0.07), "gold", run_rows=[{"rewards/accuracy": a} for a in (0.9, 0.5, 0.55)])
    assert "KL 0.07" in v.reasons[0] and "implicit-reward accuracy 0.53" in v.reasons[1]


def test_no_diagnostic_firing_says_so_instead_of_inventing_a_cause():
    v = judge(_policy((0.55, 0.46, 0.64)), "gold", run_rows=[{"rewards/accuracy": 0.9}])
    assert v.reasons == [v.reasons[0]] and "none of the diagnostics" in v.reasons[0]


def test_the_proxy_agreement_is_quoted_when_the_proxy_does_not_carry_over():
    v = judge(_policy((0.55, 0.46, 0.64), proxy_win=(0.62, 0.53, 0.70)), "gold", proxy="proxy",
              trained_on_proxy=True, proxy_agreement=0.672)
    assert "it orders only 67% of sample pairs as gold does" in v.reasons[0]


def test_a_critic_just_under_zero_is_not_printed_as_minus_zero():
    v = judge(_policy((0.53, 0.44, 0.62)), "gold", run_rows=[{"value/explained_variance": -0.001}])
    assert "explained variance 0.00 over" in v.reasons[0]


@pytest.mark.parametrize("mine, ref, warned", [(0.41, 0.62, True), (0.50, 0.62, False),  # 0.8 * 0.62 = 0.496
                                               (0.49, 0.62, True), (0.9, 0.62, False), (None, 0.62, False),
                                               (0.1, None, False), (0.0, 0.0, False)])
def test_collapse_is_distinct_2_under_80_percent_of_the_references(mine, ref, warned):
    w = collapse_warning(mine, ref)
    assert (w is not None) == warned
    if warned:
        assert w.startswith(f"collapsed: distinct-2 {mine:.2f} vs {ref:.2f} for the reference")


@pytest.mark.parametrize("mine, ref, change", [(48, 31, "+55%"), (40, 31, None), (41, 31, "+32%"),  # 1.3 * 31 = 40.3
                                               (21, 31, "-32%"), (22, 31, None), (31, 0, None), (None, 31, None)])
def test_length_drift_is_a_change_of_more_than_30_percent(mine, ref, change):
    w = length_drift_warning(mine, ref)
    assert (w is None) == (change is None)
    if change:
        assert w == f"drifted in length: {mine} vs {ref} tokens for the reference ({change})"


def test_drift_warnings_read_eval_json_entries_and_reach_the_verdict():
    reference = {"name": "reference", "length": {"mean": 31.0, "se": 0.4}, "distinct_2": 0.62}
    p = {**_policy((0.61, 0.52, 0.69)), "length": {"mean": 48.0, "se": 0.9}, "distinct_2": 0.41}
    assert drift_warnings(p, reference) == [collapse_warning(0.41, 0.62), length_drift_warning(48.0, 31.0)]
    assert drift_warnings({**p, "length": 30, "distinct_2": 0.6}, {**reference, "length": 31}) == []  # bare numbers
    v = judge(p, "gold", reference=reference)
    assert v.outcome == "better" and len(v.warnings) == 2  # warned whatever the outcome
    assert judge(p, "gold").warnings == []  # no reference given, nothing to compare with
