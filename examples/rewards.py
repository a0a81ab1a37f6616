"""Reward functions for the online RL examples (`reward=examples/rewards.py:correct`).

A reward function takes the prompts, the completions and every extra column of the prompt rows
(here `answer`) as lists, and returns one float per completion (None skips it).
"""

import re


def correct(prompts, completions, answer, **columns):
    """1 when the expected answer appears as a whole word in the completion, else 0 (a verifiable reward)."""
    return [1.0 if re.search(r"\b" + re.escape(a.lower()) + r"\b", c.lower()) else 0.0
            for c, a in zip(completions, answer)]


def concise(prompts, completions, **columns):
    """1 for a completion of up to 12 words, falling linearly to 0 at 40 words."""
    return [min(1.0, max(0.0, (40 - len(c.split())) / 28)) for c in completions]
