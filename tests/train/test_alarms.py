"""The alarms' bookkeeping on synthetic numbers (RELIABILITY.md case 17): the KL alarm's patience,
single warning and stop; the over-optimisation window; both states through a JSON round trip."""

import json
import logging

import pytest

from rlhf.train.alarms import KLAlarm, OverOptimisationWatch
from rlhf.train.loop import StopTraining


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "rlhf.train.alarms"]


def _feed(alarm, kls, start=1):
    for step, kl in enumerate(kls, start):
        alarm(step, {"kl": kl, "loss": 0.0})


def test_kl_alarm_needs_patience_consecutive_steps_and_warns_once(caplog):
    alarm = KLAlarm(0.5, patience=3)
    _feed(alarm, [0.6, 0.7, 0.1, 0.8, 0.9])  # two over, reset, two over: not yet
    assert _warnings(caplog) == []
    _feed(alarm, [1.25], start=6)
    assert _warnings(caplog) == [
        "step 6: KL to the reference 1.25 nats per completion is above max_kl=0.5 for 3 consecutive steps; "
        "training goes on (stop_on_kl=true would stop it): lower lr or raise beta to keep the policy nearer its "
        "reference"]
    _feed(alarm, [2.0, 0.1, 3.0, 3.0, 3.0], start=7)  # still over, down, over again: no second warning
    assert len(_warnings(caplog)) == 1


def test_kl_alarm_at_the_limit_is_quiet_and_a_non_finite_kl_counts_as_over(caplog):
    alarm = KLAlarm(0.5, patience=2)
    _feed(alarm, [0.5, 0.5, 0.5, None])  # at the limit is not over it; a step without a KL is no evidence
    assert _warnings(caplog) == []
    _feed(alarm, [float("nan"), float("inf")], start=5)
    assert _warnings(caplog) and _warnings(caplog)[0].startswith("step 6: KL to the reference inf nats")


def test_kl_alarm_with_stop_raises_stop_training_with_save_naming_step_and_kl(caplog):
    alarm = KLAlarm(0.01, patience=2, stop=True)
    _feed(alarm, [0.02])
    with pytest.raises(StopTraining) as info:
        _feed(alarm, [0.03125], start=2)
    assert info.value.save is True
    assert info.value.message.startswith("step 2: KL to the reference 0.03125 nats per completion is above "
                                         "max_kl=0.01 for 2 consecutive steps; stop_on_kl=true")
    assert _warnings(caplog) == []  # the loop logs the message when it stops


def test_kl_alarm_state_round_trips_through_json(caplog):
    alarm = KLAlarm(1.0, patience=3, stop=True)
    _feed(alarm, [2.0, 2.0])
    resumed = KLAlarm(1.0, patience=3, stop=True)
    resumed.load_state_dict(json.loads(json.dumps(alarm.state_dict())))
    with pytest.raises(StopTraining, match="step 3: .* for 3 consecutive steps"):
        _feed(resumed, [2.0], start=3)  # the two steps before the checkpoint still count

    warned = KLAlarm(1.0, patience=1)
    _feed(warned, [2.0])
    again = KLAlarm(1.0, patience=1)
    again.load_state_dict(json.loads(json.dumps(warned.state_dict())))
    _feed(again, [3.0], start=2)
    assert len(_warnings(caplog)) == 1  # warned before the checkpoint: not again after the resume


def test_kl_alarm_rejects_nonsense():
    with pytest.raises(ValueError):
        KLAlarm(0.0)
    with pytest.raises(ValueError):
        KLAlarm(1.0, patience=0)


def test_over_optimisation_is_reward_up_and_heldout_down_over_the_window(caplog):
    watch = OverOptimisationWatch(window=3)
    assert watch.observe(10, 0.1, 0.5) is False
    assert watch.observe(20, 0.3, 0.4) is False  # a window of 3 needs 3 evaluations
    assert watch.observe(30, 0.2, 0.45) is True  # first to last: reward 0.1 -> 0.2 up, held-out 0.5 -> 0.45 down
    assert _warnings(caplog) == [
        "step 30: possible reward over-optimisation: over the last 3 evaluations (steps 10 to 30) the training "
        "reward on eval_data rose from 0.1 to 0.2 while the held-out score (eval/heldout) fell from 0.5 to 0.45"]
    assert watch.observe(40, 0.4, 0.3) is True  # the pattern goes on: no second warning
    assert len(_warnings(caplog)) == 1
    assert watch.observe(50, 0.15, 0.35) is False  # steps 30 to 50: reward 0.2 -> 0.15, not up
    assert watch.history == [(30, 0.2, 0.45), (40, 0.4, 0.3), (50, 0.15, 0.35)]  # the window only


def test_over_optimisation_needs_both_moves_and_warns_again_after_a_break(caplog):
    watch = OverOptimisationWatch(window=2, name="gold")
    points = [(1, 0.1, 0.1), (2, 0.2, 0.2),  # both up: the held-out scorer agrees
              (3, 0.1, 0.0),  # both down
              (4, 0.1, -0.1),  # reward flat, held-out down: no rise
              (5, 0.3, -0.2),  # up and down: flag
              (6, 0.2, -0.3),  # reward down: the pattern breaks
              (7, 0.5, -0.5)]  # up and down again: a new warning
    flags = [watch.observe(*p) for p in points]
    assert flags == [False, False, False, False, True, False, True]
    messages = _warnings(caplog)
    assert [m.split(":")[0] for m in messages] == ["step 5", "step 7"]
    assert "rose from 0.1 to 0.3 while the held-out score (eval/gold) fell from -0.1 to -0.2" in messages[0]


def test_over_optimisation_reads_the_loops_metrics_and_skips_steps_without_an_evaluation(caplog):
    watch = OverOptimisationWatch(window=2)
    watch(1, {"eval/reward": 0.1, "eval/heldout": 0.5})
    watch(2, {"reward": 9.0})  # no evaluation at this step
    watch(3, {"eval/reward": None, "eval/heldout": 0.1})  # nothing scored: no point of the curve
    assert watch.history == [(1, 0.1, 0.5)]
    watch(4, {"eval/reward": 0.2, "eval/heldout": 0.4})
    assert [m.split(":")[0] for m in _warnings(caplog)] == ["step 4"]


def test_over_optimisation_state_round_trips_through_json(caplog):
    watch = OverOptimisationWatch(window=3)
    watch.observe(1, 0.1, 0.5)
    watch.observe(2, 0.2, 0.6)
    resumed = OverOptimisationWatch(window=3)
    resumed.load_state_dict(json.loads(json.dumps(watch.state_dict())))
    assert resumed.history == watch.history and resumed.flagged is False
    assert resumed.observe(3, 0.3, 0.4) is True  # the window spans the checkpoint
    assert resumed.history == [(1, 0.1, 0.5), (2, 0.2, 0.6), (3, 0.3, 0.4)]
    again = OverOptimisationWatch(window=3)
    again.load_state_dict(json.loads(json.dumps(resumed.state_dict())))
    again.observe(4, 0.4, 0.3)  # still flagged before the checkpoint: no second warning after it
    assert len(_warnings(caplog)) == 1
    with pytest.raises(ValueError):
        OverOptimisationWatch(window=1)
