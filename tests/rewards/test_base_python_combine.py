import math

import numpy as np
import pytest
import torch

from rlhf.rewards import CheckedReward, RewardError, WeightedSum, checked_call, load_function

PROMPTS = ["p0", "p1", "p2", "p3"]
COMPLETIONS = ["a", "bb", "ccc", "dddd"]

RULES = '''
def length(prompts, completions, **columns):
    return [float(len(c)) for c in completions]

def exact(prompts, completions, answer, **columns):
    return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]

class Rules:
    @staticmethod
    def first_char(prompts, completions, **columns):
        return [float(ord(c[0])) for c in completions]

NOT_CALLABLE = 3
'''


@pytest.fixture
def rules_module(tmp_path, monkeypatch):
    (tmp_path / "rlhf_test_rules_mod.py").write_text(RULES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "rlhf_test_rules_mod"


def test_module_function_and_file_function_load_and_score(tmp_path, rules_module):
    by_module = load_function(f"{rules_module}:length")
    assert by_module(PROMPTS, COMPLETIONS) == [1.0, 2.0, 3.0, 4.0]
    path = tmp_path / "sub" / "my_rules.py"
    path.parent.mkdir()
    path.write_text(RULES)
    by_file = load_function(f"{path}:exact")
    assert by_file(PROMPTS, COMPLETIONS, answer=["a", "x", "ccc", "y"]) == [1.0, 0.0, 1.0, 0.0]
    dotted = load_function(f"{path}:Rules.first_char")
    assert dotted(["p"], ["a"]) == [97.0]


def test_function_spec_errors_name_the_spec(tmp_path, rules_module):
    cases = {
        "rlhf_no_such_module_xyz:fn": "module 'rlhf_no_such_module_xyz' not found",
        f"{tmp_path}/missing.py:fn": "not found",
        f"{rules_module}:nope": "has no attribute 'nope'",
        f"{rules_module}:NOT_CALLABLE": "not a callable",
    }
    for spec, message in cases.items():
        with pytest.raises(RewardError) as info:
            load_function(spec)
        assert spec in str(info.value) and message in str(info.value), str(info.value)
    # A module that exists but fails to import says so, rather than "not found".
    (tmp_path / "rlhf_test_broken_mod.py").write_text("import rlhf_definitely_missing_dep\n")
    with pytest.raises(RewardError, match="importing module 'rlhf_test_broken_mod' failed") as info:
        load_function("rlhf_test_broken_mod:fn")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    # The "defined there" hint lists the module's own functions.
    with pytest.raises(RewardError, match="functions defined there: Rules, exact, length"):
        load_function(f"{rules_module}:nope")


def _bad_at_2(prompts, completions, **columns):
    out = []
    for c in completions:
        if c == "ccc":
            raise KeyError("boom")
        out.append(1.0)
    return out


@pytest.mark.parametrize("returned, message", [
    ([1.0, 2.0, 3.0], "reward function 'mod:fn' returned 3 values for 4 samples"),
    ({"rewards": [1, 2, 3, 4]}, "reward function 'mod:fn' returned dict"),
    (1.0, "reward function 'mod:fn' returned float"),
    ([1.0, 2.0, float("nan"), 0.0], "reward function 'mod:fn', sample 2: got nan"),
    ([1.0, 2.0, 0.0, float("-inf")], "reward function 'mod:fn', sample 3: got -inf"),
    ([1.0, "2.0", 0.0, 0.0], "reward function 'mod:fn', sample 1: got '2.0'"),
    ([1.0, 2.0, True, 0.0], "reward function 'mod:fn', sample 2: got True"),
    ([np.bool_(False), 2.0, 1.0, 0.0], "reward function 'mod:fn', sample 0: got"),
    ([1.0, 2.0, 0.0, torch.tensor(1.0)], "reward function 'mod:fn', sample 3: got tensor"),
])
def test_checked_call_rejects_bad_returns_naming_function_and_sample(returned, message):
    with pytest.raises(RewardError) as info:
        checked_call(lambda p, c, **k: returned, "mod:fn", PROMPTS, COMPLETIONS)
    assert message in str(info.value), str(info.value)


def test_checked_call_names_the_sample_that_raises_and_chains_the_exception():
    with pytest.raises(RewardError, match=r"reward function 'mod:fn', sample 2 raised KeyError: 'boom'") as info:
        checked_call(_bad_at_2, "mod:fn", PROMPTS, COMPLETIONS)
    assert isinstance(info.value.__cause__, KeyError)
    # A source that opts out of the per-sample re-run is called once and named without a sample.
    calls = []

    class Server:
        isolate_failures = False

        def __call__(self, prompts, completions, **columns):
            calls.append(len(prompts))
            raise ConnectionError("down")

    with pytest.raises(RewardError, match=r"^reward function 'srv' raised ConnectionError: down$"):
        checked_call(Server(), "srv", PROMPTS, COMPLETIONS)
    assert calls == [4]


def test_checked_call_accepts_none_ints_numpy_and_tensors_and_passes_columns():
    seen = {}

    def fn(prompts, completions, answer, **columns):
        seen.update(answer=answer, **columns)
        return [1, None, np.float32(0.5), 2.5]

    out = checked_call(fn, "fn", PROMPTS, COMPLETIONS, answer=["w", "x", "y", "z"], level=[1, 2, 3, 4])
    assert out == [1.0, None, 0.5, 2.5] and all(v is None or type(v) is float for v in out)
    assert seen == {"answer": ["w", "x", "y", "z"], "level": [1, 2, 3, 4]}
    assert checked_call(lambda p, c: torch.tensor([0.5, 1.5, 2.0, 3.0]), "t", PROMPTS, COMPLETIONS) == [0.5, 1.5, 2.0, 3.0]
    assert checked_call(lambda p, c: np.arange(4.0), "n", PROMPTS, COMPLETIONS) == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(RewardError, match="column 'answer' has 3 values for 4 samples"):
        checked_call(fn, "fn", PROMPTS, COMPLETIONS, answer=["w", "x", "y"])


def test_weighted_sum_adds_weighted_rewards_and_none_skips_the_sample():
    a = lambda p, c, **k: [1.0, 2.0, None, 4.0]  # noqa: E731
    b = lambda p, c, **k: [10.0, None, 30.0, 40.0]  # noqa: E731
    total = WeightedSum([(CheckedReward(a, "a"), 0.5), (CheckedReward(b, "b"), 2.0)])
    assert total(PROMPTS, COMPLETIONS) == [20.5, None, None, 82.0]
    totals, parts = total.evaluate(PROMPTS, COMPLETIONS)
    assert totals == [20.5, None, None, 82.0]
    assert parts == {"a": [1.0, 2.0, None, 4.0], "b": [10.0, None, 30.0, 40.0]}
    assert total.name == "0.5*a + 2*b"
    # A misbehaving component is named in the error.
    bad = WeightedSum([(CheckedReward(a, "a"), 1.0), (CheckedReward(lambda p, c: [1.0] * 3, "short"), 1.0)])
    with pytest.raises(RewardError, match="'short' returned 3 values for 4 samples"):
        bad(PROMPTS, COMPLETIONS)
    with pytest.raises(RewardError, match="weight must be a finite number"):
        WeightedSum([(a, math.nan)])
