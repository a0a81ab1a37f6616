"""LLM-as-judge rewards (RLAIF): an instruct model rates each response, pointwise.

    judge = JudgeReward("smollm2-135m-instruct")
    judge(["What is 2+2?"], ["4."])  -> [6.83]

For each sample the rubric (`DEFAULT_RUBRIC`, or a custom `template` with `{prompt}` and
`{completion}`) is rendered as one user message through the judge's chat template with
`add_generation_prompt=True`, and ONE forward pass reads the next-token distribution at the
last position. The reward is the expected rating over the rating tokens ("1".."9" by default),
renormalised over just those tokens:

    score = sum_k k * p(k) / sum_k p(k),   p(k) = softmax(logits)[token id of str(k)]

This is the "soft" score of Lee et al. 2023 (RLAIF, arXiv 2309.00267, sec. 2.1): it is smooth in
the judge's confidence, costs no sampling, and never fails to parse. Scores lie in [low, high].

Ratings must each encode to a single token of the judge's tokenizer (digits do in SmolLM2's);
a scale such as (1, 10) is rejected if "10" is two tokens. Batches are left-padded with
explicit position ids, so a sample's score does not depend on what it is batched with.
The judge model loads when the source is built.
"""

from __future__ import annotations

import inspect
import logging
import re
from pathlib import Path

import torch

from .base import RewardError

logger = logging.getLogger(__name__)

DEFAULT_RUBRIC = (
    "Rate the response to the user's request on a scale of {low} to {high}, where {low} means the response "
    "is unhelpful, wrong or harmful, and {high} means it is helpful, correct, clear and harmless.\n\n"
    "[User's request]\n{prompt}\n\n"
    "[Response]\n{completion}\n\n"
    "Answer with a single digit from {low} to {high}."
)

_PLACEHOLDER = re.compile(r"\{(prompt|completion|low|high)\}")


def render_rubric(template: str, prompt, completion, low: int, high: int) -> str:
    """`template` with {prompt}, {completion}, {low}, {high} filled in, in one pass.

    Only those four placeholders are replaced (other braces stay as written), and a completion
    that itself contains "{prompt}" is not substituted again.
    """
    values = {"prompt": as_text(prompt), "completion": as_text(completion), "low": str(low), "high": str(high)}
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def as_text(value) -> str:
    """A prompt or completion as plain text for a rubric.

    A string is itself; one chat message is its content; several are a transcript of
    "Role: content" paragraphs (a multi-turn prompt keeps who said what).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise RewardError(f"expected a string or a list of chat messages, got {type(value).__name__}")
    contents = []
    for message in value:
        if not isinstance(message, dict) or "content" not in message:
            raise RewardError(f"expected chat messages ({{'role', 'content'}} dicts), got {message!r:.80}")
        content = message["content"]
        if not isinstance(content, str):  # multimodal content parts: keep the text ones
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        contents.append((str(message.get("role", "user")), content))
    if len(contents) == 1:
        return contents[0][1]
    return "\n\n".join(f"{role.capitalize()}: {content}" for role, content in contents)


class JudgeReward:
    """Pointwise LLM-as-judge: the expected rating of each (prompt, completion), in [low, high].

    model: a model spec (local HF directory or `smollm2-135m-instruct`), or a loaded causal LM
        (then pass `tokenizer` too).
    template: the rubric, with {prompt} and {completion} (and optionally {low}, {high}).
    scale: (low, high), inclusive; the ratings are str(low) .. str(high).
    system: an optional system message before the rubric.
    max_length: samples whose rendered judge prompt is longer get None (skipped, with a warning)
        rather than a score from a truncated rubric; None: no limit.
    """

    isolate_failures = False  # a failure is the model's or the batch's, not one sample's

    def __init__(self, model: str | Path | torch.nn.Module, *, tokenizer=None, template: str = DEFAULT_RUBRIC,
                 scale: tuple[int, int] = (1, 9), system: str | None = None, batch_size: int = 4,
                 max_length: int | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 trust_remote_code: bool = False):
        if "{completion}" not in template:
            raise RewardError("judge template must contain {completion} (and usually {prompt})")
        low, high = _check_scale(scale)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be a positive integer or None, got {max_length!r}")
        if isinstance(model, (str, Path)):
            from rlhf.models.loading import load_causal_lm, load_tokenizer

            self.name = str(model)
            tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model, trust_remote_code=trust_remote_code)
            model = load_causal_lm(model, dtype=dtype, trust_remote_code=trust_remote_code)
        else:
            if tokenizer is None:
                raise ValueError("JudgeReward(model=<a loaded model>) needs tokenizer=")
            self.name = type(model).__name__
        if not getattr(tokenizer, "chat_template", None):
            raise RewardError(f"judge {self.name!r}: its tokenizer has no chat template; a judge must be a chat "
                              "(instruct) model")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.template, self.system, self.low, self.high = template, system, low, high
        self.batch_size, self.max_length = batch_size, max_length
        self.ratings = list(range(low, high + 1))
        self.rating_ids = rating_token_ids(tokenizer, self.ratings, name=self.name)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = pad if pad is not None else 0  # pad positions are masked: any id will do
        self._keep_last = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def encode(self, prompt, completion) -> list[int]:
        """The judge's input ids for one sample: the rubric as a user turn, then the generation prompt."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": render_rubric(self.template, prompt, completion, self.low, self.high)})
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                       return_dict=False))

    @torch.no_grad()
    def rating_probs(self, sequences: list[list[int]]) -> torch.Tensor:
        """(S, K) probabilities of the K ratings at each sequence's next token, renormalised over them."""
        width = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)  # (S, T), left-padded
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
        # Positions count real tokens only, so a left-padded sample sees the positions it would alone.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {"logits_to_keep": 1} if self._keep_last else {}
        logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                            position_ids=position_ids.to(self.device), use_cache=False, **kwargs).logits
        last = logits[:, -1, :].float()  # (S, V)
        return torch.softmax(last[:, self.rating_ids], dim=-1)  # (S, K)

    def __call__(self, prompts: list, completions: list, **columns) -> list[float | None]:
        if len(prompts) != len(completions):
            raise RewardError(f"judge {self.name!r}: {len(prompts)} prompts but {len(completions)} completions")
        encoded = [self.encode(p, c) for p, c in zip(prompts, completions)]
        keep = [i for i, ids in enumerate(encoded) if self.max_length is None or len(ids) <= self.max_length]
        if len(keep) < len(encoded):
            logger.warning("judge %s: %d of %d samples exceed max_length %d tokens and get no reward (None)",
                           self.name, len(encoded) - len(keep), len(encoded), self.max_length)
        values = torch.tensor(self.ratings, dtype=torch.float32)  # (K,)
        scores: list[float | None] = [None] * len(encoded)
        for start in range(0, len(keep), self.batch_size):
            chunk = keep[start : start + self.batch_size]
            probs = self.rating_probs([encoded[i] for i in chunk]).cpu()  # (S, K)
            for i, score in zip(chunk, (probs * values).sum(-1).tolist()):
                scores[i] = score
        return scores

    def __repr__(self) -> str:
        return f"JudgeReward({self.name!r}, scale=({self.low}, {self.high}))"


def _check_scale(scale) -> tuple[int, int]:
    try:
        low, high = scale
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a (low, high) pair of integers, got {scale!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (low, high)) or not 0 <= low < high:
        raise ValueError(f"scale must be (low, high) integers with 0 <= low < high, got {scale!r}")
    return low, high


def rating_token_ids(tokenizer, ratings: list[int], *, name: str = "judge") -> list[int]:
    """The single token id of each rating's digits, or a RewardError naming the rating that is not one token."""
    ids = []
    for rating in ratings:
        encoded = list(tokenizer.encode(str(rating), add_special_tokens=False))
        if len(encoded) != 1:
            raise RewardError(
                f"judge {name!r}: rating {rating} encodes to {len(encoded)} tokens {encoded} with its tokenizer; "
                "every rating must be a single token (use a scale such as (1, 9))"
            )
        ids.append(encoded[0])
    if len(set(ids)) != len(ids):
        raise RewardError(f"judge {name!r}: ratings {ratings} do not map to distinct tokens ({ids})")
    return ids
