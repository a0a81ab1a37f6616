"""HttpReward against a server that misbehaves: what is retried and counted, what is one clear error."""

import pytest

from rlhf.recipes._online import retry_stats
from rlhf.rewards import HttpReward, RewardError, resolve_reward
from rlhf.rewards.base import take_retries
from tests.rewards.flaky_server import FlakyRewardServer


def lengths(prompts, completions, **columns):
    return [float(len(c)) for c in completions]


@pytest.fixture
def server():
    with FlakyRewardServer(lengths, timeout=0.3) as flaky:
        yield flaky


def _client(server, retries=3):
    return HttpReward(server.url, timeout=server.timeout, retries=retries, backoff=0.0)


def test_every_transient_failure_is_retried_counted_and_answered_once(server):
    server.plan.extend(["error_500", "close", "hang", "slow"])
    reward = _client(server, retries=3)
    assert reward(["p", "q"], ["ab", "c"]) == [2.0, 1.0]
    assert server.actions == ["error_500", "close", "hang", "slow"]
    assert server.answered == [["ab", "c"]]  # the one reply that was used; nothing scored twice
    assert reward.retries_used == 3 and reward.take_retries() == 3 and reward.take_retries() == 0
    assert reward(["p"], ["abc"]) == [3.0]
    assert reward.take_retries() == 0 and reward.retries_used == 3


def test_retries_are_found_through_the_wrappers_and_summed():
    assert take_retries(resolve_reward(lengths)) is None  # a function never retries: no metric
    assert retry_stats(resolve_reward(lengths)) == {}
    first, second = HttpReward("http://127.0.0.1:1/a"), HttpReward("http://127.0.0.1:1/b")
    first.retries_used, second.retries_used = 2, 3
    combined = resolve_reward([(first, 1.0), (second, 0.5), (lengths, 1.0)])
    assert take_retries(combined) == 5 and take_retries(combined) == 0
    # count 0: the loop logs sum / max(count, 1) over ranks, the step's total across ranks
    assert retry_stats(resolve_reward(first)) == {"reward/retries": (0.0, 0.0)}


def test_a_server_that_stays_down_names_the_url_and_the_attempts(server):
    server.down = True
    reward = resolve_reward(_client(server, retries=2))
    with pytest.raises(RewardError) as info:
        reward(["p"], ["a"])
    message = str(info.value)
    assert server.url in message and "HTTP 500" in message and "overloaded" in message, message
    assert "(3 attempts)" in message, message
    assert server.actions == ["error_500"] * 3 and take_retries(reward) == 2


@pytest.mark.parametrize("body, expected", [
    (b'{"rewards": [1.0, NaN]}', "sample 1: got nan"),
    (b'{"rewards": [Infinity, 1.0]}', "sample 0: got inf"),
    (b'{"rewards": [1.0, "0.5"]}', "sample 1: got '0.5'"),
    (b'{"rewards": [true, 1.0]}', "sample 0: got True"),
    (b'{"rewards": [1.0, 2.0, 3.0]}', "returned 3 rewards for 2 samples"),
    (b'{"error": "model not loaded"}', "replied with an error instead of rewards: 'model not loaded'"),
    (b'{"error": {"message": "CUDA out of memory", "code": 500}}', "error instead of rewards: 'CUDA out of memory'"),
    (b'{"detail": "Not Found"}', "error instead of rewards: 'Not Found'"),
])
def test_a_bad_reply_is_one_clear_error_naming_the_url_and_the_sample(server, body, expected):
    server.plan.append(body)
    reward = resolve_reward(_client(server))
    with pytest.raises(RewardError) as info:
        reward(["p", "q"], ["ab", "c"])
    message = str(info.value)
    assert server.url in message and expected in message, message
    assert server.actions == ["body"]  # a bad reply is not retried: re-sending cannot fix it
    assert take_retries(reward) == 0


def test_null_skips_the_sample_as_documented(server):
    server.plan.append(b'{"rewards": [null, 2.5]}')
    assert resolve_reward(_client(server))(["p", "q"], ["ab", "c"]) == [None, 2.5]
