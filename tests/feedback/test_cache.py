"""The judge cache: a rerun costs no judge call, a killed run resumes, a torn last line is ignored."""

import json

import pytest

from rlhf.feedback import JudgeCache, judge_pairs
from tests.feedback.scripted import Killed, ScriptedJudge


def pairs(n):
    prompts = [f"prompt {i}" for i in range(n)]
    a = [f"good answer {i}" if i % 2 else f"bad answer {i}" for i in range(n)]
    b = [f"plain answer {i}" for i in range(n)]
    return prompts, a, b


@pytest.mark.parametrize("kind", ["pairwise", "pointwise"])
def test_a_rerun_is_all_hits_and_asks_the_judge_nothing(tmp_path, kind):
    path = tmp_path / "cache.jsonl"
    first = ScriptedJudge(kind, position_bias=0.2)
    cache = JudgeCache(path)
    want = judge_pairs(first, *pairs(10), cache=cache)
    assert cache.misses == 20 and cache.hits == 0 and first.items == 20
    assert len(path.read_text().splitlines()) == 20

    again = ScriptedJudge(kind, position_bias=0.2)
    reopened = JudgeCache(path)
    got = judge_pairs(again, *pairs(10), cache=reopened)
    assert again.calls == 0 and reopened.hits == 20 and reopened.misses == 0
    assert got == want
    # another judge (its fingerprint) shares nothing with the first
    other = ScriptedJudge(kind, position_bias=0.1)
    judge_pairs(other, *pairs(10), cache=JudgeCache(path))
    assert other.items == 20


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    path = tmp_path / "cache.jsonl"
    killed = ScriptedJudge("pairwise", fail_after=9, batch_size=4)  # two batches of 4 are stored, the third dies
    with pytest.raises(Killed):
        judge_pairs(killed, *pairs(10), cache=JudgeCache(path))
    assert len(path.read_text().splitlines()) == 8

    rest = ScriptedJudge("pairwise", batch_size=4)
    cache = JudgeCache(path)
    resumed = judge_pairs(rest, *pairs(10), cache=cache)
    assert (cache.hits, cache.misses, rest.items) == (8, 12, 12)
    assert resumed == judge_pairs(ScriptedJudge("pairwise"), *pairs(10))


def test_a_torn_last_line_is_ignored_and_cut_off(tmp_path):
    path = tmp_path / "cache.jsonl"
    judge_pairs(ScriptedJudge("pointwise"), *pairs(3), cache=JudgeCache(path))
    whole = path.read_text()
    path.write_text(whole + whole.splitlines()[0][:25])  # killed in the middle of writing a line
    cache = JudgeCache(path)
    assert len(cache) == 6 and path.read_text() == whole  # the torn bytes are gone
    judge = ScriptedJudge("pointwise")
    judge_pairs(judge, *pairs(4), cache=cache)  # two new items appended on fresh lines
    assert judge.items == 2 and cache.hits == 6
    lines = path.read_text().splitlines()
    assert len(lines) == 8 and all(json.loads(line)["k"] for line in lines)


def test_values_and_masses_round_trip_including_none(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = JudgeCache(path)
    key = JudgeCache.key("fp", "pointwise", "scores", [{"role": "user", "content": "hi"}], "c")
    assert len(key) == 64 and key != JudgeCache.key("fp", "pointwise", "scores", "hi", "c")
    cache.put(key, None, None)
    cache.put("k2", 0.25, 0.5)
    cache.flush()
    reopened = JudgeCache(path)
    assert reopened.get(key) == (None, None) and reopened.get("k2") == (0.25, 0.5) and reopened.get("k3") is None
    assert (reopened.hits, reopened.misses) == (2, 1)
