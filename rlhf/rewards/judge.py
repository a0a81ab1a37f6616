"""LLM-as-judge rewards (direct RLAIF): a pointwise `rlhf.feedback` judge as a reward source.

    judge = JudgeReward("smollm2-135m-instruct")
    judge(["What is 2+2?"], ["4."])  -> [6.83]

One judge module, two uses: this is the pointwise judge of `rlhf label`
(`rlhf.feedback.LMPointwiseJudge`), with the same template / few-shot / rubric / system /
rationale options. By default it scores by expected rating, the "soft" score of Lee et al. 2023
(RLAIF, arXiv 2309.00267, sec. 2.1): the rating rubric (`DEFAULT_RUBRIC`) as one user message
through the judge's chat template, ONE forward pass, and the next-token distribution renormalised
over the rating tokens ("1".."9" by default):

    score = sum_k k * p(k) / sum_k p(k),   p(k) = softmax(logits)[token of str(k)]

smooth in the judge's confidence, no sampling, never unparseable; scores lie in [low, high].
verdict="yes_no" scores by the log-odds log p(Yes) - log p(No) instead. Ratings must each be a
single token of the judge's tokenizer (digits are in SmolLM2's): a scale such as (1, 10) is
rejected if "10" is two tokens. The shared preamble (system message, few-shot turns, the
template before the item) is prefilled once and its KV cache reused for every sample, so a
sample's score does not depend on what it is batched with. The judge model loads when the
source is built.

As a reward spec: `judge:<model>` or `judge:<model>?key=value&key=value` with the keys of
`SPEC_OPTIONS`, e.g. `judge:smollm2-135m-instruct?few_shot=shots.jsonl&verdict=yes_no`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlhf.config import ConfigError
from rlhf.data.errors import DataError
from rlhf.feedback.judge import LMPointwiseJudge
from rlhf.feedback.templates import JudgePrompt, default_template, judge_prompt

from .base import RewardError

DEFAULT_RUBRIC = default_template("pointwise", "rating")  # the rating rubric: {prompt} {completion} {low} {high}

SPEC_OPTIONS = {
    "template": "file with the judge's user message: {prompt}, {completion}, optional {rubric}, {low}, {high}",
    "few_shot": "JSONL file of labelled examples {prompt, completion, rating} (verdict=rating) or {..., label} (yes_no)",
    "rubric": "file with the rubric the judge applies, rendered via {rubric}",
    "system": "the judge's system message (text)",
    "verdict": "rating (expected rating, the default) or yes_no (log-odds of Yes)",
    "scale": "the rating scale low-high, e.g. 1-5 (default 1-9)",
    "chat": "false: the judge continues plain text with the verdict word instead of answering a chat (default true)",
    "verdict_words": "yes_no verdicts: the two words read, good first, e.g. positive,negative (default Yes,No)",
    "rationale": "true: the judge reasons first and ends with 'Verdict:' (an answer without it scores None)",
    "max_rationale_tokens": "the most tokens of reasoning (default 128)",
    "batch_size": "samples per judge forward (default 4)",
    "max_length": "samples whose judge prompt is longer (tokens) score None",
}

__all__ = ["DEFAULT_RUBRIC", "JudgeReward", "SPEC_OPTIONS", "parse_judge_spec"]


class JudgeReward:
    """Pointwise LLM-as-judge reward: the expected rating (or log-odds of "Yes") of each (prompt, completion).

    model: a model spec (local HF directory or `smollm2-135m-instruct`), or a loaded causal LM
        (then pass `tokenizer` too).
    template: the user message, with {prompt} and {completion} (optionally {rubric}, {low}, {high});
        default `DEFAULT_RUBRIC` (verdict=rating) or the built-in yes/no template.
    scale: (low, high), inclusive; the ratings are str(low) .. str(high).
    system: an optional system message. few_shot: a JSONL file (or list) of labelled examples.
    rubric: rubric text for {rubric}. verdict: "rating" or "yes_no". rationale: reason first.
    prompt: a ready `JudgePrompt` (then template .. rationale are not used).
    max_length: samples whose rendered judge prompt is longer get None (skipped, with a warning)
        rather than a score from a truncated rubric; None: no limit.
    """

    isolate_failures = False  # a failure is the model's or the batch's, not one sample's

    def __init__(self, model: str | Path | torch.nn.Module, *, tokenizer=None, template: str | None = None,
                 scale: tuple[int, int] = (1, 9), system: str | None = None, few_shot: str | Path | list | None = None,
                 rubric: str | None = None, verdict: str = "rating", rationale: bool = False,
                 max_rationale_tokens: int = 128, prompt: JudgePrompt | None = None, batch_size: int = 4,
                 max_length: int | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
        if prompt is None:
            try:
                prompt = judge_prompt("pointwise", template=template, few_shot=few_shot, rubric=rubric, system=system,
                                      rationale=rationale, verdict=verdict, scale=scale, files=False)
            except ConfigError as error:
                raise RewardError(f"judge: {error}") from None
        if isinstance(model, (str, Path)):
            from rlhf.models.loading import load_causal_lm, load_tokenizer

            name = str(model)
            tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model, trust_remote_code=trust_remote_code)
            model = load_causal_lm(model, dtype=dtype, trust_remote_code=trust_remote_code)
        else:
            if tokenizer is None:
                raise ValueError("JudgeReward(model=<a loaded model>) needs tokenizer=")
            name = type(model).__name__
        try:
            self.judge = LMPointwiseJudge(model.to(device), tokenizer, prompt, name=name, batch_size=batch_size,
                                          max_rationale_tokens=max_rationale_tokens, max_length=max_length)
        except ConfigError as error:
            raise RewardError(str(error)) from None
        self.name = name

    @property
    def tokenizer(self):
        return self.judge.tokenizer

    @property
    def model(self) -> torch.nn.Module:
        return self.judge.model

    def encode(self, prompt, completion) -> list[int]:
        """The judge's input ids for one sample (conversation, then the generation prompt)."""
        return self.judge.encode(prompt, completion)

    def __call__(self, prompts: list, completions: list, **columns) -> list[float | None]:
        if len(prompts) != len(completions):
            raise RewardError(f"judge {self.name!r}: {len(prompts)} prompts but {len(completions)} completions")
        try:
            return self.judge.scores(prompts, completions)
        except DataError as error:
            raise RewardError(f"judge {self.name!r}: {error}") from None

    def __repr__(self) -> str:
        prompt = self.judge.prompt
        verdict = f"scale=({prompt.scale[0]}, {prompt.scale[1]})" if prompt.verdict == "rating" else "verdict=yes_no"
        return f"JudgeReward({self.name!r}, {verdict})"


def parse_judge_spec(spec: str) -> tuple[str, dict]:
    """'judge:<model>[?key=value&...]' -> (model, JudgeReward keyword arguments), every file read and
    the judge prompt checked (a RewardError naming the spec) before any model loads."""
    body = spec.strip()[len("judge:"):]
    model, _, query = body.partition("?")
    model = model.strip()
    raw: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, equals, value = part.partition("=")
        key = key.strip()
        if key not in SPEC_OPTIONS:
            valid = "; ".join(f"{name}: {doc}" for name, doc in SPEC_OPTIONS.items())
            raise RewardError(f"reward spec {spec!r}: unknown judge option {key!r}; valid options are {valid}")
        if not equals or not value.strip():
            raise RewardError(f"reward spec {spec!r}: judge option {key!r} needs a value ({key}=...)")
        raw[key] = value.strip()
    try:
        kwargs: dict = {}
        for key in ("batch_size", "max_length", "max_rationale_tokens"):
            if key in raw:
                kwargs[key] = _positive_int(raw[key], key)
        verdict = raw.get("verdict", "rating")
        scale = _scale(raw["scale"]) if "scale" in raw else (1, 9)
        rationale = _boolean(raw.get("rationale", "false"), "rationale")
        words = [w.strip() for w in raw["verdict_words"].split(",")] if "verdict_words" in raw else None
        kwargs["prompt"] = judge_prompt("pointwise", template=raw.get("template"), few_shot=raw.get("few_shot"),
                                        rubric=raw.get("rubric"), system=raw.get("system"), rationale=rationale,
                                        verdict=verdict, scale=scale, chat=_boolean(raw.get("chat", "true"), "chat"),
                                        verdict_words=words)  # files=True: template, rubric are read
    except ConfigError as error:
        raise RewardError(f"reward spec {spec!r}: {error}") from None
    return model, kwargs


def _positive_int(text: str, key: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"judge option {key!r}: expected a positive integer, got {text!r}")
    return value


def _boolean(text: str, key: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ConfigError(f"judge option {key!r}: expected true or false, got {text!r}")


def _scale(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        return int(low), int(high)
    except ValueError:
        raise ConfigError(f"judge option 'scale': expected low-high, e.g. 1-5, got {text!r}") from None
