"""A scripted judge behind the `rlhf.feedback.Judge` interface, for tests (import it from here).

    from tests.feedback.scripted import ScriptedJudge, merit
    judge = ScriptedJudge("pairwise", position_bias=0.3)

The truth is planted: a text's merit is its count of "good" minus its count of "bad", and the
true P(a better than b) = sigmoid(merit(a) - merit(b)).

    pointwise   scores(...)      = merit(completion)
    pairwise    first_wins(...)  = clip(sigmoid(merit(first) - merit(second)) + position_bias, 0, 1)

`position_bias` is added to whichever answer is shown first (a judge that favours a position);
judging both orders cancels it exactly while the clip does not bind. Texts in `unparseable` get
None. `fail_after=n` raises `Killed` once a call would take the judge past n items (a run killed
mid-way). `calls` and `items` count what the judge was actually asked.

`refuse_model_loads(monkeypatch)` makes any model or tokenizer load fail the test: for checks that
must happen before a model loads.
"""

from __future__ import annotations

import hashlib
import math


def refuse_model_loads(monkeypatch) -> None:
    from rlhf.models import loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for name in ("load_causal_lm", "load_tokenizer"):
        monkeypatch.setattr(loading, name, refuse)
        monkeypatch.setattr(f"rlhf.models.{name}", refuse)


class Killed(RuntimeError):
    """Raised by a ScriptedJudge with `fail_after`: the run was "killed"."""


def merit(text: str) -> int:
    return text.count("good") - text.count("bad")


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class ScriptedJudge:
    def __init__(self, kind: str = "pairwise", *, position_bias: float = 0.0, unparseable=(), fail_after=None,
                 batch_size: int = 4, name: str = "scripted"):
        self.name = name
        self.kind = kind
        self.template_sha = hashlib.sha256(f"scripted {kind}".encode()).hexdigest()
        self.fingerprint = hashlib.sha256(f"scripted {kind} {position_bias}".encode()).hexdigest()
        self.position_bias = position_bias
        self.unparseable = set(unparseable)
        self.fail_after = fail_after
        self.batch_size = batch_size
        self.calls = 0
        self.items = 0

    def _spend(self, n: int) -> None:
        if self.fail_after is not None and self.items + n > self.fail_after:
            raise Killed(f"killed after {self.items} items")
        self.calls += 1
        self.items += n

    def scores(self, prompts: list, completions: list) -> list[float | None]:
        assert self.kind == "pointwise" and len(prompts) == len(completions)
        self._spend(len(completions))
        return [None if c in self.unparseable else float(merit(c)) for c in completions]

    def first_wins(self, prompts: list, firsts: list, seconds: list) -> list[float | None]:
        assert self.kind == "pairwise" and len(prompts) == len(firsts) == len(seconds)
        self._spend(len(firsts))
        return [None if f in self.unparseable or s in self.unparseable
                else min(1.0, max(0.0, sigmoid(merit(f) - merit(s)) + self.position_bias))
                for f, s in zip(firsts, seconds)]
