"""Reward sources: one protocol, `(prompts, completions, **columns) -> list[float | None]`.

    reward = resolve_reward("runs/reward/final")            # a reward model directory
    reward = resolve_reward("rewards/rules.py:exact_match")  # a Python function
    reward = resolve_reward("judge:smollm2-135m-instruct")  # an LLM judge (RLAIF)
    reward = resolve_reward("http://127.0.0.1:8000/score")  # a reward server
    reward = resolve_reward("1.0*rules.py:exact_match, 0.1*rules.py:brevity")  # a weighted sum
    reward(prompts, completions, answer=answers)  -> [1.0, None, 0.0, ...]

None skips a sample. Every resolved source is checked on each call (`checked_call`): a wrong
count, NaN, a non-number, or an exception becomes a RewardError naming the spec and the sample.
JudgeReward, RewardModelSource and HttpReward load on first access, so `import rlhf.rewards`
does not import torch for a pure-Python reward function.
"""

from .base import CheckedReward, RewardError, RewardSource, check_rewards, checked_call
from .combine import WeightedSum
from .python import load_function
from .spec import FORMS, resolve_reward

__all__ = [
    "CheckedReward",
    "FORMS",
    "HttpReward",
    "JudgeReward",
    "RewardError",
    "RewardModelSource",
    "RewardSource",
    "WeightedSum",
    "check_rewards",
    "checked_call",
    "load_function",
    "resolve_reward",
]


def __getattr__(name: str):
    # Lazy, so `import rlhf.rewards` stays cheap for pure-Python reward functions.
    if name == "HttpReward":
        from .remote import HttpReward

        return HttpReward
    if name == "JudgeReward":
        from .judge import JudgeReward

        return JudgeReward
    if name == "RewardModelSource":
        from .model import RewardModelSource

        return RewardModelSource
    raise AttributeError(f"module 'rlhf.rewards' has no attribute {name!r}")
