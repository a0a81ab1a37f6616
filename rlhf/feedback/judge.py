"""LLM judges (RLAIF, Lee et al. 2023, arXiv 2309.00267), and pairs judged by them.

A judge reads one item through its chat template (`JudgePrompt.messages`, then the generation
prompt) and ONE forward pass gives the next-token distribution p at the end. The verdict is p
restricted to the verdict tokens and renormalised over them (RLAIF sec. 2.1, "soft" labels):

    pairwise    P(first is better) = p("1") / (p("1") + p("2"))
    pointwise   score = log p("Yes") - log p("No")                (verdict=yes_no: the log-odds)
                score = sum_k k p(k) / sum_k p(k),  k = low..high  (verdict=rating: expected rating)

A verdict's p is the mass of its first token, written with or without a leading space ("Yes" and
" Yes"); tokens shared between verdicts are dropped, and the first tokens must differ. Ratings
must each be one token. The mass the judge put on the verdict tokens at all, sum_k p(k), is kept
(`last_masses`, `stats()`): a judge that mostly wants to say something else is not answering.

Cost. The shared preamble (system message, few-shot turns, the template up to the first item
placeholder) is prefilled ONCE and its KV cache copied to every batch; only each item's suffix
is run, right-padded, and the logits are read at each row's last real token. An item whose
tokens do not start with the preamble's (a tokeniser merge across the boundary) is run whole.

Rationale mode: the judge first writes greedily (up to max_rationale_tokens) and must end with
the cue line "Verdict:"; the text up to and including the cue is kept, and the verdict is read
right after it. No cue -> None (unparseable): counted by the callers, never labelled.

Judge weights are assumed frozen: the preamble cache and `fingerprint` are computed once.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch
from tqdm.auto import tqdm

from rlhf.config import ConfigError, option
from rlhf.data.tokenize import encode_text, render_chat

from .cache import JudgeCache
from .templates import ITEM_FIELDS, JudgePrompt, judge_prompt

logger = logging.getLogger(__name__)


@dataclass
class JudgeOptions:
    """The judge's config keys, shared by `rlhf label` and `rlhf online-dpo` (a dataclass mixin)."""

    judge: str = option("smollm2-135m-instruct", "judge model spec: a local Hugging Face directory or "
                                                 "smollm2-135m-instruct (a chat model)")
    judge_kind: Literal["pairwise", "pointwise"] = option(
        "pointwise", "pointwise (each answer alone, P(Yes); robust for small judges) or pairwise (both answers in "
                     "one prompt, P(1) vs P(2))")
    template: str | None = option(None, "file with the judge's user message: {prompt} and {completion} (pointwise) or "
                                        "{first} and {second} (pairwise), optional {rubric}; default built in")
    few_shot: str | None = option(None, "JSONL file of labelled examples shown to the judge: {prompt, completion, "
                                        "label: true|false} or {prompt, first, second, winner: 1|2}")
    rubric: str | None = option(None, "file with the rubric / constitution the judge applies (rendered via {rubric})")
    system_prompt: str | None = option(None, "the judge's system message (text)")
    rationale: bool = option(False, "the judge writes its reasoning first, ending with 'Verdict:', then the verdict "
                                    "token's probability is read")
    max_rationale_tokens: int = option(128, "rationale mode: the most tokens of reasoning (no 'Verdict:' by then: "
                                            "unparseable)")
    judge_batch_size: int = option(8, "items per judge forward pass")
    judge_verdict: Literal["yes_no", "rating"] = option(
        "yes_no", "pointwise judges: yes_no (score = log-odds of Yes) or rating (expected rating 1..9)")
    judge_chat: bool = option(True, "true: the judge reads a chat conversation; false: plain text it continues with "
                                    "the verdict word (base LMs; small chat models often judge better this way)")
    verdict_words: list[str] | None = option(None, "yes_no verdicts: the two words read, good first (default "
                                                   "[Yes, No]; e.g. [positive, negative])")


class Judge(Protocol):
    """What `judge_pairs`, `rlhf label` and `rlhf online-dpo` call; a scripted test judge implements it too."""

    name: str  # e.g. the model spec
    kind: str  # "pairwise" | "pointwise"
    template_sha: str  # sha256 hex of everything in the judge prompt except the item
    fingerprint: str  # weights + template + verdict settings: the judge cache's key prefix

    def first_wins(self, prompts: list, firsts: list[str], seconds: list[str]) -> list[float | None]:
        """Pairwise: P(the answer shown FIRST is better), one order only; None = unparseable."""
        ...

    def scores(self, prompts: list, completions: list[str]) -> list[float | None]:
        """Pointwise: a real number per item (higher = better); None = unparseable."""
        ...


# ---------------------------------------------------------------------------------------------
# Options -> judge


def check_judge_options(options: JudgeOptions) -> JudgePrompt:
    """The judge's prompt from `options`, every file read and checked: a ConfigError (naming the key,
    file, line or placeholder) before any model loads."""
    _check_judge_spec(options.judge)
    return _prompt_from_options(options)


def _prompt_from_options(options: JudgeOptions) -> JudgePrompt:
    for key in ("max_rationale_tokens", "judge_batch_size"):
        value = getattr(options, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"config key '{key}': expected a positive integer, got {value!r}")
    return judge_prompt(options.judge_kind, template=options.template, few_shot=options.few_shot,
                        rubric=options.rubric, system=options.system_prompt, rationale=options.rationale,
                        verdict=options.judge_verdict, chat=options.judge_chat, verdict_words=options.verdict_words)


def _check_judge_spec(spec) -> None:
    from rlhf.models import loading

    if not isinstance(spec, (str, Path)) or not str(spec).strip():
        raise ConfigError(f"config key 'judge': expected a model spec, got {spec!r}")
    path = Path(spec).expanduser()
    if (path.is_dir() and (path / "config.json").is_file()) or str(spec).lower() in loading._EMBEDDED:
        return
    hint = " (the directory has no config.json)" if path.is_dir() else ""
    raise ConfigError(f"config key 'judge': {str(spec)!r} is neither a local model directory with config.json nor a "
                      f"known alias ({', '.join(sorted(loading._EMBEDDED))}){hint}")


def build_judge(options: JudgeOptions, *, device="cpu", dtype: torch.dtype = torch.float32, model=None, tokenizer=None,
                trust_remote_code: bool = False) -> "LMJudge":
    """The LM judge `options` describe. `model` and `tokenizer` given: used as they are (no load)."""
    if model is None:
        prompt = check_judge_options(options)
        from rlhf.models import load_causal_lm, load_tokenizer

        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(options.judge,
                                                                           trust_remote_code=trust_remote_code)
        model = load_causal_lm(options.judge, dtype=dtype, trust_remote_code=trust_remote_code)
        name = str(options.judge)
    else:
        prompt = _prompt_from_options(options)
        if tokenizer is None:
            raise ValueError("build_judge(model=...) needs tokenizer= too")
        name = None
    cls = LMPairwiseJudge if prompt.kind == "pairwise" else LMPointwiseJudge
    return cls(model.to(device), tokenizer, prompt, name=name, batch_size=options.judge_batch_size,
               max_rationale_tokens=options.max_rationale_tokens)


# ---------------------------------------------------------------------------------------------
# LM judges


class LMJudge:
    """The shared machinery of the LM judges: encoding, the preamble cache, rationales, verdict log-probs.

    model, tokenizer: a causal LM (frozen) and its tokenizer, which needs a chat template unless the
    prompt is plain text (chat=False).
    prompt: the JudgePrompt. batch_size: items per forward. max_length: items whose judge prompt is
    longer (tokens) get None rather than a verdict on a truncated prompt. prefix_cache=False runs
    every item whole (the reference the cached path is tested against).
    """

    kind = "pointwise"

    def __init__(self, model: torch.nn.Module, tokenizer, prompt: JudgePrompt, *, name: str | None = None,
                 batch_size: int = 8, max_rationale_tokens: int = 128, max_length: int | None = None,
                 prefix_cache: bool = True):
        from rlhf.models import ModelError
        from rlhf.models.lora import hf_model

        if prompt.kind != self.kind:
            raise ValueError(f"{type(self).__name__} needs a {self.kind} JudgePrompt, got {prompt.kind}")
        for key, value in (("batch_size", batch_size), ("max_rationale_tokens", max_rationale_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be a positive integer or None, got {max_length!r}")
        config = hf_model(model).config
        self.name = name if name is not None else (getattr(config, "_name_or_path", "") or type(model).__name__)
        if prompt.chat and not getattr(tokenizer, "chat_template", None):
            raise ModelError(f"judge {self.name!r}: its tokenizer has no chat template; a judge must be a chat "
                             "(instruct) model, or set judge_chat=false")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.template_sha = prompt.sha
        self.batch_size, self.max_rationale_tokens, self.max_length = batch_size, max_rationale_tokens, max_length
        self.use_prefix_cache = prefix_cache
        self.choice_ids = verdict_token_ids(tokenizer, prompt.choices, strict=prompt.verdict == "rating",
                                            name=self.name)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = pad if pad is not None else 0  # pad positions are masked or never attended to
        self._config = config
        # transformers' own models read a (S, 1) tensor of positions (`slice_logits_to_keep`); remote code may not
        self._keep_logits = ("logits_to_keep" in inspect.signature(hf_model(model).forward).parameters
                             and type(hf_model(model)).__module__.startswith("transformers."))
        self._prefix: tuple[list[int], list | None] | None = None
        self._fingerprint: str | None = None
        self.items = self.unparsed = 0  # items judged, and those without a verdict (no cue / too long)
        self._mass_sum = 0.0
        self.last_masses: list[float | None] = []  # the verdict tokens' probability mass, per item of the last call
        self.last_rationales: list[str | None] = []  # rationale mode: the kept text per item of the last call

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def fingerprint(self) -> str:
        """sha256 of the judge weights, tokenizer, template_sha and verdict settings (the cache key prefix)."""
        if self._fingerprint is None:
            from rlhf.models.reference import weights_fingerprint

            settings = {"weights": weights_fingerprint(self.model), "vocab": len(self.tokenizer),
                        "chat_template": self.tokenizer.chat_template, "template_sha": self.template_sha,
                        "kind": self.kind, "choice_ids": self.choice_ids, "max_length": self.max_length,
                        "max_rationale_tokens": self.max_rationale_tokens if self.prompt.rationale else None}
            self._fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        return self._fingerprint

    def stats(self) -> dict:
        """Totals over this judge's life: items, unparseable ones, the mean verdict-token mass."""
        parsed = self.items - self.unparsed
        return {"items": self.items, "unparsed": self.unparsed,
                "mean_verdict_mass": self._mass_sum / parsed if parsed else None}

    def encode(self, prompt, *texts) -> list[int]:
        """The judge's input ids for one item: the conversation, then the generation prompt (or the plain text)."""
        if not self.prompt.chat:
            return encode_text(self.tokenizer, self.prompt.text(prompt, *texts), add_special_tokens=True)
        return render_chat(self.tokenizer, self.prompt.messages(prompt, *texts), add_generation_prompt=True)

    def preamble_ids(self) -> list[int]:
        """The token ids every item's prompt starts with: the conversation up to the first item
        placeholder, less its last token (which a tokeniser may merge with the item's first characters)."""
        marks = [f"\x1fjudge-item-{name}\x1f" for name in ITEM_FIELDS[self.kind]]
        if self.prompt.chat:
            text = self.tokenizer.apply_chat_template(self.prompt.messages(*marks), add_generation_prompt=True,
                                                      tokenize=False)
        else:
            text = self.prompt.text(*marks)
        cuts = [text.find(mark) for mark in marks if mark in text]
        if not cuts:
            return []
        return encode_text(self.tokenizer, text[: min(cuts)], add_special_tokens=not self.prompt.chat)[:-1]

    def _prefix_state(self) -> tuple[list[int], list | None]:
        """(preamble ids, per-layer (keys, values) of the preamble) -- prefilled once; None: not cached."""
        if self._prefix is None:
            ids = self.preamble_ids() if self.use_prefix_cache else []
            layers = None
            if ids:
                from transformers import DynamicCache

                cache = DynamicCache(config=self._config)
                self.model(input_ids=torch.tensor([ids], device=self.device),
                           position_ids=torch.arange(len(ids), device=self.device).unsqueeze(0),
                           use_cache=True, **{_cache_argument(self.model): cache},
                           **({"logits_to_keep": 1} if self._keep_logits else {}))
                if any(getattr(layer, "is_sliding", False) for layer in cache.layers):
                    ids = []  # a sliding window drops the preamble's start: not reusable as a prefix
                else:
                    layers = [(keys, values) for keys, values, *_ in cache]
            self._prefix = (ids, layers)
        return self._prefix

    def _last_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                     last: torch.Tensor, cache=None) -> torch.Tensor:
        """(S, V) logits at position `last` (S,) of each row, in the model's dtype."""
        kwargs = {_cache_argument(self.model): cache, "use_cache": True} if cache is not None else {"use_cache": False}
        if self._keep_logits:
            kwargs["logits_to_keep"] = last.unsqueeze(1)  # (S, 1) positions: only these reach the LM head
        device = self.device
        logits = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                            position_ids=position_ids.to(device), **kwargs).logits
        if self._keep_logits:
            return logits[:, 0]
        return logits[torch.arange(len(last)), last.to(device)]

    def _full_logits(self, sequences: list[list[int]]) -> torch.Tensor:
        """(S, V) next-token logits of whole sequences, left-padded with explicit position ids."""
        width = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)  # (S, T)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)  # (S, T)
        for row, ids in enumerate(sequences):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
        # positions count real tokens only, so a left-padded item sees the positions it would alone
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        last = torch.full((len(sequences),), width - 1, dtype=torch.long)
        return self._last_logits(input_ids, attention_mask, position_ids, last)

    def _suffix_logits(self, suffixes: list[list[int]]) -> torch.Tensor:
        """(S, V) next-token logits of preamble + suffix, the preamble's KV cache copied to each row."""
        from transformers import DynamicCache

        ids, layers = self._prefix_state()
        start, rows, width = len(ids), len(suffixes), max(len(s) for s in suffixes)
        input_ids = torch.full((rows, width), self.pad_token_id, dtype=torch.long)  # (S, T), right-padded
        attention_mask = torch.zeros((rows, start + width), dtype=torch.long)  # (S, P + T)
        attention_mask[:, :start] = 1
        for row, suffix in enumerate(suffixes):
            input_ids[row, : len(suffix)] = torch.tensor(suffix, dtype=torch.long)
            attention_mask[row, start : start + len(suffix)] = 1
        position_ids = (start + torch.arange(width)).expand(rows, width)
        last = torch.tensor([len(s) - 1 for s in suffixes], dtype=torch.long)
        # update() concatenates, so the stored preamble tensors are never written to
        cache = DynamicCache([(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in layers],
                             config=self._config)
        return self._last_logits(input_ids, attention_mask, position_ids, last, cache)

    def _verdict_logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """(S, K) log p(verdict k) from (S, V) logits: each verdict's tokens' mass, not renormalised.
        Only the verdict columns are upcast; the normaliser over V is reduced in float32."""
        picked = torch.stack([torch.logsumexp(logits[:, ids].float(), dim=-1) for ids in self.choice_ids], dim=-1)
        return picked - torch.logsumexp(logits.float(), dim=-1, keepdim=True)

    @torch.no_grad()
    def generate_rationales(self, encoded: list[list[int]]) -> list[str]:
        """The judge's greedy text after each item's prompt, up to max_rationale_tokens, EOS or the cue."""
        from rlhf.rollout import GenerationConfig, HFRollout

        # its own generator: greedy decoding draws nothing, and the global RNG stays untouched
        engine = HFRollout(self.model, self.tokenizer, generator=torch.Generator(device=self.device))
        config = GenerationConfig(max_new_tokens=self.max_rationale_tokens, temperature=0.0,
                                  stop_strings=[self.prompt.cue])
        texts = []
        for start in range(0, len(encoded), self.batch_size):
            rollout = engine.generate(encoded[start : start + self.batch_size], config)
            for response, mask in zip(rollout.response_ids.tolist(), rollout.response_mask.tolist()):
                # decoded here: Rollout.completions cuts the stop string, and whether it was there is the point
                texts.append(self.tokenizer.decode([t for t, m in zip(response, mask) if m], skip_special_tokens=True))
        return texts

    def _with_rationales(self, encoded: list[list[int]]) -> list[list[int] | None]:
        """Each item's ids extended by its rationale up to and including the cue; None: the cue never came."""
        cue, out, kept_texts = self.prompt.cue, [], []
        texts = self.generate_rationales(encoded)
        if len(texts) != len(encoded):
            raise RuntimeError(f"judge {self.name!r}: {len(texts)} rationales for {len(encoded)} items")
        for ids, text in zip(encoded, texts):
            cut = text.find(cue)
            kept = text[: cut + len(cue)] if cut >= 0 else None
            kept_texts.append(kept)
            out.append(None if kept is None else ids + encode_text(self.tokenizer, kept, add_special_tokens=False))
        self.last_rationales = kept_texts
        return out

    @torch.no_grad()
    def verdict_logprobs(self, items: list[tuple]) -> list[torch.Tensor | None]:
        """(K,) log p(verdict k) per item (prompt, *texts); None: unparseable or over max_length."""
        encoded: list[list[int] | None] = [self.encode(*item) for item in items]
        if self.prompt.rationale:
            encoded = self._with_rationales(encoded)
        else:
            self.last_rationales = [None] * len(items)
        too_long = [i for i, ids in enumerate(encoded)
                    if ids is not None and self.max_length is not None and len(ids) > self.max_length]
        if too_long:
            logger.warning("judge %s: %d of %d items exceed max_length %d tokens and get no verdict (None)",
                           self.name, len(too_long), len(items), self.max_length)
            for i in too_long:
                encoded[i] = None
        out: list[torch.Tensor | None] = [None] * len(items)
        todo = sorted((i for i, ids in enumerate(encoded) if ids is not None), key=lambda i: -len(encoded[i]))
        if todo:
            prefix, layers = self._prefix_state()
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            cached = [i for i in chunk if layers is not None and len(encoded[i]) > len(prefix)
                      and encoded[i][: len(prefix)] == prefix]
            whole = [i for i in chunk if i not in cached]
            runs = []
            if cached:
                runs.append((cached, self._suffix_logits([encoded[i][len(prefix):] for i in cached])))
            if whole:
                runs.append((whole, self._full_logits([encoded[i] for i in whole])))
            for indices, logits in runs:
                for i, row in zip(indices, self._verdict_logprobs(logits).cpu()):
                    out[i] = row
        self.last_masses = [None if row is None else float(row.exp().sum()) for row in out]
        self.items += len(items)
        self.unparsed += sum(row is None for row in out)
        self._mass_sum += sum(m for m in self.last_masses if m is not None)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, verdict={self.prompt.verdict})"


class LMPointwiseJudge(LMJudge):
    """Scores each (prompt, completion) alone: log-odds of "Yes" (verdict=yes_no) or the expected rating."""

    kind = "pointwise"

    def scores(self, prompts: list, completions: list) -> list[float | None]:
        if len(prompts) != len(completions):
            raise ValueError(f"judge {self.name!r}: {len(prompts)} prompts but {len(completions)} completions")
        rows = self.verdict_logprobs(list(zip(prompts, completions)))
        if self.prompt.verdict == "yes_no":
            return [None if row is None else float(row[0] - row[1]) for row in rows]
        low, high = self.prompt.scale
        values = torch.arange(low, high + 1, dtype=torch.float32)  # (K,)
        return [None if row is None else float((torch.softmax(row, -1) * values).sum()) for row in rows]


class LMPairwiseJudge(LMJudge):
    """Both answers in one prompt: P(the first is better) = p("1") / (p("1") + p("2")), one order."""

    kind = "pairwise"

    def first_wins(self, prompts: list, firsts: list, seconds: list) -> list[float | None]:
        if not len(prompts) == len(firsts) == len(seconds):
            raise ValueError(f"judge {self.name!r}: {len(prompts)} prompts, {len(firsts)} firsts, "
                             f"{len(seconds)} seconds")
        rows = self.verdict_logprobs(list(zip(prompts, firsts, seconds)))
        return [None if row is None else float(torch.sigmoid(row[0] - row[1])) for row in rows]


def verdict_token_ids(tokenizer, choices: list[str], *, strict: bool = False, name: str = "judge") -> list[list[int]]:
    """The token ids that count for each verdict string: its first token, with and without a leading
    space, less any token two verdicts share. strict: each verdict must be exactly one token (ratings).
    A ConfigError names the verdict that cannot be read."""
    plain = [list(tokenizer.encode(choice, add_special_tokens=False)) for choice in choices]
    for choice, ids in zip(choices, plain):
        if not ids or (strict and len(ids) != 1):
            raise ConfigError(f"judge {name!r}: {'rating' if strict else 'verdict'} {choice} encodes to {len(ids)} "
                              f"tokens {ids} with its tokenizer; every {'rating' if strict else 'verdict'} must be a "
                              "single token" + (" (use a scale such as (1, 9))" if strict else ""))
    candidates = []
    for choice, ids in zip(choices, plain):
        spaced = list(tokenizer.encode(" " + choice, add_special_tokens=False))
        candidates.append({ids[0]} | ({spaced[0]} if spaced else set()))
    counts: dict[int, int] = {}
    for ids in candidates:
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
    kept = [sorted(i for i in ids if counts[i] == 1) for ids in candidates]
    if any(not ids for ids in kept) or len({p[0] for p in plain}) != len(plain):
        raise ConfigError(f"judge {name!r}: verdicts {choices} do not begin with distinct tokens ({plain})")
    return kept


def _cache_argument(model: torch.nn.Module) -> str:
    from rlhf.rollout.hf import _cache_argument as argument

    return argument(model)


class RewardJudge:
    """A reward source as a pointwise judge: score = the reward (higher is better), so a pair's
    p = sigmoid(r_a - r_b) as for any pointwise judge. It labels pairs when a programmatic "gold"
    labeller stands in for people (the demo's VADER), through the same `rlhf label` path, cache
    and report as an LM judge.

    reward_fn: a resolved reward source (`rlhf.rewards.resolve_reward`), named by its spec.
    The cache fingerprint hashes the spec and, for a Python function, its source code, so an
    edited function is asked again.
    """

    kind = "pointwise"
    batch_size = 64

    def __init__(self, reward_fn, name: str):
        self.reward_fn, self.name = reward_fn, name
        self.template_sha = hashlib.sha256(f"reward:{name}".encode()).hexdigest()
        function = getattr(reward_fn, "source", reward_fn)
        try:
            code = inspect.getsource(function)
        except (OSError, TypeError):
            code = ""
        self.fingerprint = hashlib.sha256(f"reward:{name}\n{code}".encode()).hexdigest()

    def scores(self, prompts: list, completions: list[str]) -> list[float | None]:
        return self.reward_fn(list(prompts), list(completions))

    def __repr__(self) -> str:
        return f"RewardJudge({self.name!r})"


# ---------------------------------------------------------------------------------------------
# Pairs


@dataclass
class PairVerdict:
    """The judge's verdict on (a, b): p_first = P(a is better than b)."""

    p_first: float | None  # after debiasing; None if unparseable
    consistent: bool | None  # pairwise: the same winner in both orders; pointwise (or one order): None
    details: dict  # {"p_ab", "p_ba"} (pairwise) or {"score_a", "score_b"} (pointwise), plus verdict masses

    @property
    def confidence(self) -> float | None:
        """max(p, 1 - p), in [0.5, 1]."""
        return None if self.p_first is None else max(self.p_first, 1.0 - self.p_first)


def judge_pairs(judge: Judge, prompts: list, a: list[str], b: list[str], *, debias: bool = True,
                cache: JudgeCache | None = None, progress: bool = False) -> list[PairVerdict]:
    """P(a_i better than b_i) for each pair.

    pairwise:  p = (P(a first wins) + 1 - P(b first wins)) / 2   both orders averaged, which cancels a
               judge's preference for a position (RLAIF sec. 3.1; Zheng et al. 2023, arXiv 2306.05685,
               sec. 3.4); debias=False: the (a, b) order only
    pointwise: p = sigmoid(score_a - score_b)                    Bradley-Terry on the score difference,
               each distinct (prompt, completion) scored once
    cache: every judge item is looked up first and stored after each batch, so a rerun costs no judge
    forward and a killed run resumes where it stopped.
    """
    if not len(prompts) == len(a) == len(b):
        raise ValueError(f"judge_pairs: {len(prompts)} prompts, {len(a)} a, {len(b)} b")
    if judge.kind == "pairwise":
        items = list(zip(prompts, a, b))
        if debias:
            items += zip(prompts, b, a)
        answers = judge_items(judge, "first_wins", items, cache=cache, progress=progress)
        verdicts = []
        for i in range(len(prompts)):
            p_ab, m_ab = answers[i]
            details = {"p_ab": p_ab, "mass_ab": m_ab}
            if not debias:
                verdicts.append(PairVerdict(p_ab, None, details))
                continue
            p_ba, m_ba = answers[len(prompts) + i]
            details.update(p_ba=p_ba, mass_ba=m_ba)
            if p_ab is None or p_ba is None:
                verdicts.append(PairVerdict(None, None, details))
                continue
            consistent = (p_ab - 0.5) * (0.5 - p_ba) > 0  # a wins shown first and shown second, or b both times
            verdicts.append(PairVerdict((p_ab + 1.0 - p_ba) / 2.0, consistent, details))
        return verdicts
    if judge.kind != "pointwise":
        raise ValueError(f"judge {getattr(judge, 'name', judge)!r}: unknown kind {judge.kind!r}")
    answers = judge_items(judge, "scores", [*zip(prompts, a), *zip(prompts, b)], cache=cache, progress=progress)
    verdicts = []
    for i in range(len(prompts)):
        (s_a, m_a), (s_b, m_b) = answers[i], answers[len(prompts) + i]
        p = None if s_a is None or s_b is None else _sigmoid(s_a - s_b)
        verdicts.append(PairVerdict(p, None, {"score_a": s_a, "score_b": s_b, "mass_a": m_a, "mass_b": m_b}))
    return verdicts


def judge_items(judge: Judge, call: str, items: list[tuple], *, cache: JudgeCache | None = None,
                progress: bool = False) -> list[tuple[float | None, float | None]]:
    """(value, verdict mass or None) per item from `judge.<call>(*columns)`: each distinct item once,
    through `cache` when given (stored and flushed after every judge batch)."""
    fingerprint = judge.fingerprint if cache is not None else ""  # an LM judge hashes its weights for it
    keys = [JudgeCache.key(fingerprint, judge.kind, call, *item) for item in items]
    known: dict[str, tuple[float | None, float | None]] = {}
    todo: dict[str, tuple] = {}
    for key, item in zip(keys, items):
        if key in known or key in todo:
            continue
        entry = cache.get(key) if cache is not None else None
        if entry is not None:
            known[key] = entry
        else:
            todo[key] = item
    batch = max(1, int(getattr(judge, "batch_size", 16)))
    method = getattr(judge, call)
    pending = list(todo.items())
    with tqdm(total=len(known) + len(pending), initial=len(known), desc=f"judging ({judge.kind})", unit="item",
              disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(pending), batch):
            chunk = pending[start : start + batch]
            values = list(method(*(list(column) for column in zip(*(item for _, item in chunk)))))
            if len(values) != len(chunk):
                raise RuntimeError(f"judge {judge.name!r}: {call} returned {len(values)} values for {len(chunk)} items")
            masses = getattr(judge, "last_masses", None)
            masses = masses if isinstance(masses, list) and len(masses) == len(chunk) else [None] * len(chunk)
            for (key, _), value, mass in zip(chunk, values, masses):
                value = None if value is None else float(value)
                known[key] = (value, mass)
                if cache is not None:
                    cache.put(key, value, mass)
            if cache is not None:
                cache.flush()
            bar.update(len(chunk))
    return [known[key] for key in keys]


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
