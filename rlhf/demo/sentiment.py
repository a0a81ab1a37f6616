"""The demo's gold labeller and gold reward: VADER's compound sentiment score.

VADER (Hutto and Gilbert 2014, "VADER: A Parsimonious Rule-based Model for Sentiment Analysis
of Social Media Text", ICWSM) scores text with a hand-built lexicon and grammar rules; its
compound score lies in [-1, 1]. Nobody in this project wrote it or tuned it, which is what makes
it a fair stand-in for a human labeller in the controlled-sentiment task of the DPO paper
(sec. 6.1): the policy is asked for movie reviews and rewarded for positive ones.

Use it anywhere a reward spec goes: `reward=rlhf.demo.sentiment:vader_reward`.
"""

from __future__ import annotations

from functools import lru_cache

from rlhf.feedback.templates import as_text


@lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_compound(text: str) -> float:
    """VADER's compound score of `text`, in [-1, 1] (0 for an empty text)."""
    return float(_analyzer().polarity_scores(text)["compound"])


def vader_reward(prompts: list, completions: list, **columns) -> list[float]:
    """The compound sentiment of each completion (the prompt is not scored)."""
    return [vader_compound(as_text(completion)) for completion in completions]
