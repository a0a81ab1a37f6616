import pytest
from transformers import AutoModelForSequenceClassification

from rlhf.models.reward import RewardModelScorer
from rlhf.rewards import CheckedReward, HttpReward, JudgeReward, RewardError, RewardModelSource, WeightedSum, resolve_reward
from rlhf.testing import tiny_config, tiny_tokenizer

RULES = '''
def length(prompts, completions, **columns):
    return [float(len(c)) for c in completions]

def exact(prompts, completions, answer):
    return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]

def no_columns(prompts, completions):
    return [0.0 for c in completions]

def bad(prompts, completions, **columns):
    return [float("nan") for c in completions]
'''


@pytest.fixture
def rules(tmp_path):
    path = tmp_path / "rules.py"
    path.write_text(RULES)
    return str(path)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    tok = tiny_tokenizer()
    config = tiny_config(len(tok), num_labels=1, pad_token_id=tok.pad_token_id)
    model = AutoModelForSequenceClassification.from_config(config)
    path = tmp_path_factory.mktemp("rm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_file_and_module_function_specs(rules, tmp_path, monkeypatch):
    reward = resolve_reward(f"{rules}:length")
    assert isinstance(reward, CheckedReward) and reward.name == f"{rules}:length"
    assert reward(["p", "q"], ["ab", "c"]) == [2.0, 1.0]
    with pytest.raises(RewardError, match=rf"reward function '{rules}:bad', sample 0: got nan"):
        resolve_reward(f"{rules}:bad")(["p"], ["a"])
    (tmp_path / "rlhf_spec_rules_mod.py").write_text(RULES)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_reward("rlhf_spec_rules_mod:exact")(["p", "q"], ["a", "b"], answer=["a", "x"]) == [1.0, 0.0]


def test_a_callable_passes_through_checked():
    def my_reward(prompts, completions, **columns):
        return [1.0] * (len(completions) + 1)

    reward = resolve_reward(my_reward)
    assert reward.source is my_reward
    with pytest.raises(RewardError, match=r"reward function '.*my_reward' returned 3 values for 2 samples"):
        reward(["p", "q"], ["a", "b"])


def test_reward_model_directory_spec(rm_dir):
    reward = resolve_reward(rm_dir)
    assert isinstance(reward.source, RewardModelSource) and reward.name == rm_dir
    prompts, completions = ["What is 2+2?", "Hi"], ["4", "Hello there"]
    assert reward(prompts, completions) == pytest.approx(RewardModelScorer(rm_dir)(prompts, completions), abs=1e-5)


def test_judge_and_http_specs(tiny_model_dir):
    judge = resolve_reward(f"judge:{tiny_model_dir}")
    assert isinstance(judge.source, JudgeReward)
    (score,) = judge(["What is 2+2?"], ["4"])
    assert 1.0 <= score <= 9.0
    http = resolve_reward("http://127.0.0.1:9/score")  # built, not called: nothing listens there
    assert isinstance(http.source, HttpReward) and http.source.url == "http://127.0.0.1:9/score"


def test_weighted_string_and_list_forms(rules):
    expected = [0.5 * 2 + 2.0 * 1, 0.5 * 1 + 2.0 * 0]
    columns = {"answer": ["ab", "x"]}
    for spec in (f"0.5*{rules}:length, 2*{rules}:exact",
                 [(f"{rules}:length", 0.5), [f"{rules}:exact", "2.0"]],
                 [{"spec": f"{rules}:length", "weight": 0.5}, f"2.0*{rules}:exact"]):
        reward = resolve_reward(spec)
        assert isinstance(reward.source, WeightedSum)
        assert reward(["p", "q"], ["ab", "c"], **columns) == pytest.approx(expected), spec
    plain = resolve_reward([f"{rules}:length", lambda p, c, **k: [None, 1.0]])
    assert plain(["p", "q"], ["ab", "c"]) == [None, 2.0]


@pytest.mark.parametrize("spec, message", [
    ("nonsense", "'nonsense': matches no reward spec form"),
    ("/no/such/reward_model", "no such directory"),
    ("judge:/no/such/model", "judge model '/no/such/model' is neither a local model directory"),
    ("judge:", "'judge:' needs a model"),
    ("0.5*a:b, oops", r"part 2 \('oops'\) is not 'weight\*spec'"),
    ([], "empty list"),
    ([("a:b", "heavy")], "weight must be a finite number"),
    (42, "must be a string, a callable or a list"),
    ("ftp://host/x", "unsupported URL scheme 'ftp'"),
])
def test_bad_specs_list_the_accepted_forms(spec, message):
    with pytest.raises(RewardError, match=message) as info:
        resolve_reward(spec)
    if "empty list" in message or "matches no" in message or "no such directory" in message:
        assert "module:function" in str(info.value) and "judge:<model>" in str(info.value)


def test_directory_without_config_and_a_python_file_without_function(tmp_path, rules):
    with pytest.raises(RewardError, match="has no config.json"):
        resolve_reward(str(tmp_path))
    with pytest.raises(RewardError, match="is a file, not a reward-model directory"):
        resolve_reward(rules)
    with pytest.raises(RewardError, match="has no attribute 'missing'"):
        resolve_reward(f"{rules}:missing")


def test_every_part_is_checked_before_any_model_loads(rm_dir, rules, monkeypatch):
    built = []
    monkeypatch.setattr("rlhf.rewards.model.RewardModelSource.__init__", lambda self, *a, **k: built.append(a))
    with pytest.raises(RewardError, match="no such directory"):
        resolve_reward([(rm_dir, 1.0), (f"judge:{rm_dir}", 1.0), ("./missing_dir", 1.0)])
    assert built == []


def test_columns_are_checked_against_the_function_signature(rules):
    resolve_reward(f"{rules}:length", columns=["answer", "level"])  # **columns takes anything
    resolve_reward(f"{rules}:exact", columns=["answer"])
    with pytest.raises(RewardError, match=r"'.*:no_columns' cannot be called as fn\(prompts, completions, \*\*columns\) "
                                          "with dataset columns answer"):
        resolve_reward(f"{rules}:no_columns", columns=["answer"])
    with pytest.raises(RewardError, match="cannot be called"):
        resolve_reward(lambda prompts: [0.0])
