"""Steps that the online recipes (PPO, GRPO) take the same way: prompts, models, sampling, scoring."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Callable, Literal

import torch

from rlhf.config import ConfigError, option

from rlhf.data.prompts import tokenize_prompts
from rlhf.models import is_peft_model, load_causal_lm, load_tokenizer
from rlhf.models.forward import CausalLMLogprobs
from rlhf.models.reference import ReferenceLogprobs
from rlhf.recipes._shared import prepare_trainable, read_rows
from rlhf.rewards import resolve_reward
from rlhf.rewards.base import take_retries
from rlhf.rollout import GenerationConfig, sampling_temperature
from rlhf.train.alarms import KLAlarm, OverOptimisationWatch
from rlhf.train.config import TrainConfig
from rlhf.train.distributed import all_reduce_sum, shard_rows

logger = logging.getLogger(__name__)


@dataclass
class SamplingOptions:
    """How a policy samples completions (`generation_config`): the keys of the online recipes and
    of `rlhf label policy=...`."""

    max_new_tokens: int = option(64, "longest completion in tokens")
    temperature: float = option(1.0, "sampling temperature (0 is greedy)")
    top_p: float = option(1.0, "nucleus sampling threshold (1 disables)")
    top_k: int = option(0, "sample from the k most likely tokens (0 disables)")
    stop_strings: list[str] = option([], "a completion also ends at any of these strings")
    max_prompt_length: int = option(512, "longest prompt in tokens (a longer one is an error, unless "
                                         "prompt_truncation=drop where a command has it)")


@dataclass
class OnlineConfig(SamplingOptions, TrainConfig):
    """What every online recipe takes beyond training: the reward, sampling, prompts, reference."""

    reward: str | None = option(None, "reward source spec: reward-model dir, module:function, file.py:function, judge:<model>, http(s)://...")
    prompt_truncation: Literal["error", "drop"] = option("error", "a longer prompt is an error, or dropped (counted)")
    ref_model: str | None = option(None, "reference model spec; default: the starting policy")
    max_kl: float | None = option(None, "KL alarm: warn once when the mean KL to the reference per completion (nats) "
                                        "exceeds this for kl_patience steps in a row (null or 0: off)")
    kl_patience: int = option(3, "consecutive steps above max_kl that set the KL alarm off")
    stop_on_kl: bool = option(False, "when the KL alarm goes off, checkpoint that step and stop (no final/)")
    eval_reward: str | None = option(None, "held-out scorer (a reward spec) of eval_data's prompts, logged as "
                                           "eval/heldout beside eval/reward (the training reward); needs eval_data")
    eval_window: int = option(3, "warn of over-optimisation when, from the first to the last of this many "
                                 "evaluations, eval/reward rose and eval/heldout fell")


def load_prompts_and_reward(config, *, train_data, reward, tokenizer, ctx):
    """Validated, tokenised prompts and the resolved reward source, before any policy loads.

    Returns (examples, reward_fn, reward_spec, tokenizer).
    """
    rows = read_rows(train_data if train_data is not None else config.data, "prompt")
    spec = reward if reward is not None else config.reward
    if spec is None:
        raise ConfigError("no reward: set reward=SPEC (a reward-model dir, module:function, judge:<model> or a URL)")
    columns = sorted({k for row in rows for k in row.data if k != "prompt"})
    reward_fn = resolve_reward(spec, columns=columns, device=str(ctx.device))
    examples, tokenizer = load_prompts(config, rows, tokenizer=tokenizer, ctx=ctx)
    return examples, reward_fn, spec, tokenizer


def load_prompts(config, rows, *, tokenizer, ctx):
    """Prompt rows tokenised (max_prompt_length, prompt_truncation) by `tokenizer`, else config.model's.

    Returns (examples, tokenizer).
    """
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    examples, stats = tokenize_prompts(rows, tokenizer, max_length=config.max_prompt_length, truncation=config.prompt_truncation)
    if ctx.is_main:
        logger.info("prompts: %s", stats)
    return examples, tokenizer


def load_policy_and_reference(config, *, model, ref_model, ctx, with_reference: bool = True):
    """The trainable policy (`config.lora` applied, on the device) and its reference log-probs.

    Log-probs are taken at the sampling temperature (`sampling_temperature`). The reference is
    `ref_model`, else `config.ref_model`, else the starting policy: the base with adapters off
    under LoRA (no second copy), a frozen copy of the caller's `model`, or `config.model` loaded
    again. with_reference=False loads none. Returns (model, CausalLMLogprobs(model), ReferenceLogprobs | None).
    """
    dtype = getattr(torch, config.dtype)
    load = lambda spec: load_causal_lm(spec, dtype=dtype, trust_remote_code=config.trust_remote_code)  # noqa: E731
    given = model is not None
    model = model if given else load(config.model)
    if with_reference and ref_model is None:
        if config.ref_model is not None:
            ref_model = load(config.ref_model)
        elif not config.lora.enabled and not is_peft_model(model):
            ref_model = copy.deepcopy(model) if given else load(config.model)
    model = prepare_trainable(model, config, ctx.device)
    policy = CausalLMLogprobs(model, temperature=sampling_temperature(config.temperature))
    if not with_reference:
        return model, policy, None
    reference = ReferenceLogprobs(policy=policy, ref_model=ref_model.to(ctx.device) if ref_model is not None else None)
    return model, policy, reference


def prompt_seed(seed: int, step: int, position: int) -> int:
    """The sampling seed of the prompt at `position` of step `step`'s global batch: samples depend
    on neither micro-batching nor the number of ranks, and a resumed run draws what the
    uninterrupted one did."""
    return (seed * 1_000_003 + step * 10_007 + position) % (2**63)


def generation_config(config) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                            top_p=config.top_p, top_k=config.top_k, stop_strings=list(config.stop_strings),
                            num_generations=config.num_generations)


def sample(backend, examples: list[dict], positions: list[int], config, *, step: int):
    """G completions of each of this rank's prompts, in one batch, seeded per prompt."""
    seeds = [prompt_seed(config.seed, step, p) for p in positions]
    return backend.generate([e["prompt_ids"] for e in examples], generation_config(config), seeds=seeds)


def score(reward_fn, examples: list[dict], completions: list[str], group_size: int,
          device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) float32 scores and (B,) bool validity on `device` (False where the reward source
    returned None; such a score reads 0 and must be masked out)."""
    names = sorted({k for e in examples for k in e["columns"]})
    repeat = lambda values: [v for v in values for _ in range(group_size)]  # noqa: E731
    rewards = reward_fn(repeat([e["prompt"] for e in examples]), completions,
                        **{k: repeat([e["columns"].get(k) for e in examples]) for k in names})
    valid = torch.tensor([r is not None for r in rewards], device=device)
    return torch.tensor([float(r) if r is not None else 0.0 for r in rewards], device=device), valid


def retry_stats(reward_fn) -> dict:
    """{"reward/retries": (n, 0)}: the reward source's retries since the last read (an HTTP source's
    re-sent requests; `rewards.base.take_retries`), read once per step after `score`. Empty for a
    source that never retries (a function, a model, a judge), so the metric appears only for servers.

    The count is 0 on purpose: the loop logs sum / max(count, 1) over ranks, so the metric is the
    step's total retries across all ranks rather than a per-rank mean."""
    retries = take_retries(reward_fn)
    return {} if retries is None else {"reward/retries": (float(retries), 0.0)}


def token_logprobs(model, batch) -> torch.Tensor:
    """(N,) log-probs of the response tokens of a packed batch (row-major in its response_mask)."""
    return model(input_ids=batch["input_ids"], labels=batch["labels"], position_ids=batch["position_ids"],
                 label_positions=batch.get("label_positions"))


def scatter_rows(flat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) values at the mask's positions (row-major) -> (B, T), 0 elsewhere."""
    return torch.zeros(mask.shape, dtype=flat.dtype, device=flat.device).masked_scatter(mask.bool(), flat)


def forward_rows(fn, rollout, chunks: list[list[int]], pack) -> torch.Tensor:
    """(B, T): `fn(batch)` -> (N,) values over each chunk of prompts (a micro-batch, to bound
    memory), scattered back to the rollout's rows. `pack(part)` builds a chunk's packed row."""
    out = []
    for chunk in chunks:
        part = rollout.select(chunk)
        out.append(scatter_rows(fn({**pack(part), "response_mask": part.response_mask}), part.response_mask))
    return torch.cat(out)


def micro_batch(rollout, prompts: list[int], pack, per_row: dict[str, torch.Tensor]) -> dict:
    """The training tensors of `prompts`' completions: a packed row, their response mask, and
    each (B, ...) tensor of `per_row` cut to their rows."""
    part = rollout.select(prompts)
    rows = rollout.rows_of(prompts)
    return {**pack(part), "response_mask": part.response_mask, **{k: v[rows] for k, v in per_row.items()}}


@contextlib.contextmanager
def timed(timings: dict, phase: str):
    start = time.perf_counter()
    yield
    timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - start


def rollout_stats(rollout, scores: torch.Tensor, valid: torch.Tensor) -> dict:
    """(sum, count) tensors of what every online recipe logs about its samples."""
    mask = rollout.response_mask
    n_valid = valid.sum()
    lengths = mask.sum(1).to(scores.dtype)
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    stats = {
        "reward": (torch.where(valid, scores, zero).sum(), n_valid),
        "completion_length": (torch.where(valid, lengths, zero).sum(), n_valid),
        "truncated": ((rollout.truncated & valid).sum(), n_valid),
        "reward_none": ((~valid).sum(), valid.numel()),
    }
    if rollout.entropy is not None:
        stats["entropy"] = ((rollout.entropy * mask).sum(), mask.sum())
    return stats


# -- alarms and the held-out evaluation (max_kl, eval_data, eval_reward) ---------------------------

HELDOUT = "heldout"  # eval_reward's metric is eval/heldout, beside eval/reward


def check_alarms(config, *, eval_data=None, eval_reward=None, no_kl: str | None = None) -> None:
    """The alarm and held-out keys, before any data or model loads. `no_kl`: why this run measures
    no KL (it has no reference model), None when it logs `kl`."""
    if (eval_reward is not None or config.eval_reward is not None) and eval_data is None and config.eval_data is None:
        raise ConfigError("config key 'eval_reward' needs 'eval_data': the held-out prompts it scores "
                          "(set eval_data=PATH, prompt rows)")
    if config.max_kl is not None and not config.max_kl >= 0:
        raise ConfigError(f"config key 'max_kl' must be >= 0 (null or 0: off), got {config.max_kl}")
    if config.stop_on_kl and not config.max_kl:
        raise ConfigError("config key 'stop_on_kl' needs 'max_kl' (the mean KL per completion that sets the alarm off)")
    if config.max_kl and no_kl is not None:
        raise ConfigError(f"config key 'max_kl': this run measures no KL to a reference ({no_kl})")
    if config.kl_patience < 1:
        raise ConfigError(f"config key 'kl_patience' must be >= 1 step, got {config.kl_patience}")
    if config.eval_window < 2:
        raise ConfigError(f"config key 'eval_window' must be >= 2 evaluations, got {config.eval_window}")


@dataclass
class HeldOut:
    """eval_data's prompts, tokenised, and the held-out scorer (None: only eval/reward is logged)."""

    examples: list[dict]
    scorer: Callable | None


def load_held_out(config, *, eval_data, eval_reward, reward_fn, tokenizer, ctx) -> HeldOut | None:
    """The held-out prompts (`eval_data`, else config.eval_data) and scorer (`eval_reward`, else
    config.eval_reward), checked before any policy loads: both the training reward `reward_fn` (None
    when the annotator is a judge) and the scorer must accept the rows' extra columns. None without
    eval_data."""
    rows = read_rows(eval_data if eval_data is not None else config.eval_data, "prompt", required=False)
    if rows is None:
        return None
    spec = eval_reward if eval_reward is not None else config.eval_reward
    if spec is None and reward_fn is None:
        raise ConfigError("config key 'eval_data' needs 'eval_reward' here: the annotator is a judge, so there is "
                          "no training reward to log as eval/reward")
    columns = sorted({k for row in rows for k in row.data if k != "prompt"})
    if reward_fn is not None:
        resolve_reward(reward_fn, columns=columns)  # the training reward will see these columns too
    scorer = resolve_reward(spec, columns=columns, device=str(ctx.device)) if spec is not None else None
    examples, stats = tokenize_prompts(rows, tokenizer, max_length=config.max_prompt_length,
                                       truncation=config.prompt_truncation)
    if ctx.is_main:
        logger.info("eval prompts: %s", stats)
    if len(examples) < ctx.world_size:
        raise ConfigError(f"config key 'eval_data': {len(examples)} held-out prompts for {ctx.world_size} processes "
                          "(every process samples at least one)")
    return HeldOut(examples, scorer)


def evaluate_held_out(held_out: HeldOut, *, backend, reward_fn, config, ctx) -> dict:
    """One completion of each held-out prompt by the current policy, scored: eval/reward (the
    training reward; absent for a judge annotator), eval/heldout (eval_reward) and
    eval/completion_length, means over the completions each source scored (a None is left out).

    One sample per prompt keeps an evaluation cheap; each prompt's seed is the same at every
    evaluation (`prompt_seed` at step -1), so successive evaluations differ by the policy only.
    Each rank samples a strided share, padded to the longest share with a zero-weight repeat so
    that every rank runs as many generate calls (each a collective under FSDP).
    """
    n = len(held_out.examples)
    share = shard_rows(list(range(n)), ctx)
    width = math.ceil(n / ctx.world_size)
    weights = [1.0] * len(share) + [0.0] * (width - len(share))
    share = share + share[:1] * (width - len(share))
    gen = replace(generation_config(config), num_generations=1)
    sources = {name: fn for name, fn in (("reward", reward_fn), (HELDOUT, held_out.scorer)) if fn is not None}
    names = sorted(sources) + ["completion_length"]
    sums = torch.zeros(2 * len(names), dtype=torch.float64)  # (sum, count) of each name
    for start in range(0, width, config.batch_size):
        chunk = share[start:start + config.batch_size]
        weight = torch.tensor(weights[start:start + config.batch_size], dtype=torch.float64)  # (B,)
        examples = [held_out.examples[p] for p in chunk]
        rollout = backend.generate([e["prompt_ids"] for e in examples], gen,
                                   seeds=[prompt_seed(config.seed, -1, p) for p in chunk])
        for j, name in enumerate(names):
            if name == "completion_length":
                values, valid = rollout.response_mask.sum(1).double().cpu(), torch.ones(len(chunk), dtype=torch.bool)
            else:
                values, valid = score(sources[name], examples, rollout.completions, 1, torch.device("cpu"))
            kept = weight * valid.double()
            sums[2 * j] += (values.double() * kept).sum()
            sums[2 * j + 1] += kept.sum()
    totals = all_reduce_sum(sums, ctx).tolist()
    return {f"eval/{name}": totals[2 * j] / totals[2 * j + 1] for j, name in enumerate(names) if totals[2 * j + 1] > 0}


class OnlineAlarms:
    """What `max_kl`, `eval_data` and `eval_reward` add to an online run, as loop parts:
    `evaluate` (None without eval_data), `after_step` (the over-optimisation watch, then the KL
    alarm) and `stateful` (their state, for an exact resume)."""

    def __init__(self, config, *, backend, reward_fn, held_out: HeldOut | None, ctx):
        self.kl = (KLAlarm(config.max_kl, patience=config.kl_patience, stop=config.stop_on_kl, log=ctx.is_main)
                   if config.max_kl else None)
        watched = held_out is not None and held_out.scorer is not None and reward_fn is not None
        self.watch = OverOptimisationWatch(config.eval_window, name=HELDOUT, log=ctx.is_main) if watched else None
        self.evaluate = (None if held_out is None else
                         lambda model: evaluate_held_out(held_out, backend=backend, reward_fn=reward_fn, config=config,
                                                         ctx=ctx))

    @property
    def stateful(self) -> dict:
        return {name: obj for name, obj in (("kl_alarm", self.kl), ("overoptimisation", self.watch)) if obj is not None}

    def after_step(self, step: int, metrics: dict) -> None:
        if self.watch is not None:
            self.watch(step, metrics)
        if self.kl is not None:
            self.kl(step, metrics)
