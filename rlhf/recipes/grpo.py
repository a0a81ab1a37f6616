"""Critic-free online RL: `rlhf grpo` (GRPO, RLOO, REINFORCE++).

For each prompt, sample G completions, score them with the reward source, turn the scores into
advantages without a value model, and take a clipped policy-gradient step with a KL penalty to
the reference (Shao et al. 2024, DeepSeekMath sec. 4.1). `estimator` picks the baseline:
grpo (group mean / std), rloo (leave-one-out mean; Ahmadian et al. 2024), reinforce_pp (KL in
the reward, batch-whitened returns; Hu 2025).

Where the KL penalty goes (`kl_penalty`): "loss" adds beta * k3(pi, ref) per token to the loss
(GRPO's eq. 3); "reward" subtracts beta * sum_t log(pi_old / pi_ref) from each completion's score
before the baseline (RLOO's and REINFORCE++'s form); "auto" takes each estimator's own. Only
"reward" makes the fixed point the KL-regularised optimum pi* ~ pi_ref exp(r / beta): the
gradient of the sampled k3 term is that of KL(ref || pi), the reverse direction, so "loss"
converges elsewhere (tests/recipes/test_kl_optimum.py measures both).

Departures from the paper / TRL GRPOTrainer:
- one optimisation pass per batch of rollouts (num_iterations = 1, TRL's default), so the
  importance ratio is exactly 1 and old log-probs need no extra forward pass;
- beta = 0 loads no reference model; with LoRA the reference is the base with adapters off;
- every rollout draws from a generator seeded by (seed, step, rank, micro-batch), so a resumed
  run samples exactly what the uninterrupted one did;
- a None reward drops that completion from the loss (its group statistics use the others).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch

from rlhf.config import option
from rlhf.losses.policy_gradient import get_loss_aggregation, grpo_loss
from rlhf.losses.types import LossOutput
from rlhf.models import save_pretrained_model
from rlhf.models.reference import ReferenceLogps
from rlhf.ops.advantages import group_normalised_advantages, leave_one_out_advantages, reinforce_pp_advantages
from rlhf.ops.kl import kl_k1
from rlhf.recipes._online import (OnlineConfig, collate_prompts, load_policy_and_reference,
                                  load_prompts_and_reward, sample, score)
from rlhf.rollout import HFRollout
from rlhf.train import loop
from rlhf.train.distributed import init_distributed

logger = logging.getLogger(__name__)


@dataclass
class GRPOConfig(OnlineConfig):
    output_dir: str = option("runs/grpo", "where config.yaml, metrics.jsonl, checkpoints/ and final/ are written")
    lr: float = option(1e-6, "peak learning rate (AdamW)")
    batch_size: int = option(8, "prompts per optimiser step (each gets num_generations completions)")
    beta: float = option(0.04, "KL coefficient to the reference; 0 loads no reference model")
    kl_penalty: Literal["auto", "loss", "reward"] = option(
        "auto", "where the KL goes: k3 in the loss, k1 in the reward, or auto (grpo: loss; rloo, reinforce_pp: reward)")
    num_generations: int = option(4, "completions per prompt (the group size G)")
    estimator: Literal["grpo", "rloo", "reinforce_pp"] = option("grpo", "advantage baseline: grpo, rloo or reinforce_pp")
    scale_rewards: bool = option(True, "grpo: divide by the group's reward std (false: Dr. GRPO centring only)")
    loss_aggregation: Literal["grpo", "dr_grpo", "dapo"] = option("grpo", "per-sequence mean (grpo), sum / max_new_tokens (dr_grpo), token mean (dapo)")
    clip_range: float = option(0.2, "PPO-style clipping of the importance ratio")
    clip_range_high: float | None = option(None, "upper clip range (DAPO clip-higher); default: clip_range")


def _token_logprobs(model, batch) -> torch.Tensor:
    """(B, T) log-probs of the response tokens, 0 where response_mask is 0."""
    flat = model(input_ids=batch["input_ids"], labels=batch["labels"], position_ids=batch["position_ids"],
                 label_positions=batch.get("label_positions"))  # (N,)
    mask = batch["response_mask"].bool()
    return torch.zeros(mask.shape, dtype=flat.dtype, device=flat.device).masked_scatter(mask, flat)


def _kl_in_reward(config: GRPOConfig) -> bool:
    if config.kl_penalty == "auto":
        return config.estimator != "grpo"
    return config.kl_penalty == "reward"


def _advantages(config: GRPOConfig, scores: torch.Tensor, valid: torch.Tensor, rollout,
                kl: torch.Tensor | None) -> torch.Tensor:
    """Advantages from the scores; `kl` (B, T) is the per-token k1 when the KL goes in the reward."""
    g = config.num_generations
    if kl is not None and config.estimator != "reinforce_pp":
        scores = scores - config.beta * kl.sum(1)
    # Invalid (None) scores take their group's valid mean, so they shift no one's baseline much; they
    # are masked out of the loss anyway.
    groups = torch.where(valid, scores, torch.nan).view(-1, g)
    fill = torch.nan_to_num(groups.nanmean(dim=1, keepdim=True), nan=0.0).expand_as(groups)
    scores = torch.where(valid, scores, fill.reshape(-1))
    if config.estimator == "grpo":
        return group_normalised_advantages(scores, g, scale=config.scale_rewards)
    if config.estimator == "rloo":
        return leave_one_out_advantages(scores, g)
    return reinforce_pp_advantages(scores, rollout.response_mask, kl=kl, kl_coef=config.beta if kl is not None else 0.0)


def _prepare(policy, batch: dict, step: int, index: int, *, config: GRPOConfig, backend: HFRollout, reward_fn,
             reference: ReferenceLogps | None, rank: int) -> dict:
    # step 1. sample G completions per prompt (group-major rows)
    t0 = time.perf_counter()
    rollout = sample(backend, batch, config, step=step, rank=rank, index=index)
    t1 = time.perf_counter()

    # step 2. score them; extra dataset columns reach the reward function
    scores, valid = score(reward_fn, batch, rollout.completions, config.num_generations)
    mask = rollout.response_mask * valid[:, None].to(rollout.response_mask.dtype)
    rollout.response_mask = mask
    t2 = time.perf_counter()

    # step 3. tensors for the training forward, reference log-probs, the KL (in the reward or the
    # loss), advantages
    prepared = {**rollout.packed_groups(), "response_mask": mask}  # one padding-free row, each prompt once
    ref_logprobs = reference.run(_token_logprobs, prepared) if reference is not None else None
    kl = kl_k1(rollout.logprobs, ref_logprobs) * mask if ref_logprobs is not None else None  # (B, T)
    kl_in_reward = _kl_in_reward(config)
    prepared["advantages"] = _advantages(config, scores, valid, rollout, kl if kl_in_reward else None)
    if ref_logprobs is not None and not kl_in_reward:
        prepared["ref_logprobs"] = ref_logprobs
    lengths = mask.sum(1).float()
    n_valid = int(valid.sum())
    prepared["stats"] = {
        "time/generate": (t1 - t0, 1),
        "time/score": (t2 - t1, 1),
        "time/reference": (time.perf_counter() - t2, 1),
        "reward": (float(scores[valid].sum()), n_valid),
        "reward_squared": (float((scores[valid] ** 2).sum()), n_valid),
        "completion_length": (float(lengths[valid].sum()), n_valid),
        "truncated": (float(rollout.truncated[valid].sum()), n_valid),
        "reward_none": (float((~valid).sum()), len(valid)),
    }
    if rollout.entropy is not None:
        prepared["stats"]["entropy"] = (float((rollout.entropy * mask).sum()), int(mask.sum()))
    if kl is not None:  # KL(pi || ref) of whole completions, k1 summed over tokens, as PPO logs it
        prepared["stats"]["kl"] = (float(kl.sum(1)[valid].sum()), n_valid)
    return prepared


def _step(model, batch, *, config: GRPOConfig) -> LossOutput:
    logprobs = _token_logprobs(model, batch)
    out = grpo_loss(logprobs, None, batch["advantages"], batch["response_mask"], clip_range=config.clip_range,
                    clip_range_high=config.clip_range_high, beta=config.beta if "ref_logprobs" in batch else 0.0,
                    ref_logprobs=batch.get("ref_logprobs"), aggregation=config.loss_aggregation,
                    max_response_length=config.max_new_tokens)
    # the loss's per-token k3 gets its own name; "kl" is the per-completion k1 from `_prepare`
    return LossOutput(out.loss, {("kl_k3" if k == "kl" else k): v for k, v in out.metrics.items()})


def _count_units(batch, *, aggregation: str) -> int:
    mask = batch["response_mask"]
    if get_loss_aggregation(aggregation).unit == "tokens":
        return int((mask != 0).sum())
    return int((mask.sum(1) > 0).sum())  # sequences whose reward was not None


def grpo(config: GRPOConfig, *, train_data=None, model=None, tokenizer=None, ref_model=None, reward=None,
         callbacks=None) -> loop.TrainResult:
    """Online RL with group baselines per `config`. `reward` (a callable or spec) replaces `config.reward`."""
    ctx = init_distributed()
    loop.check_resume(config)
    if config.num_generations < 2 and config.estimator != "reinforce_pp":
        raise ValueError(f"estimator={config.estimator} needs num_generations >= 2 (a group baseline)")
    if config.eval_data is not None:
        raise ValueError("eval_data is not supported by grpo yet; evaluate the final/ model with a separate run")

    # step 0. prompts and the reward source, validated before any model loads
    examples, reward_fn, _, tokenizer = load_prompts_and_reward(config, train_data=train_data, reward=reward,
                                                                tokenizer=tokenizer, ctx=ctx)

    # step 1. the policy and, when beta > 0, the reference
    model, policy, reference = load_policy_and_reference(config, model=model, ref_model=ref_model, ctx=ctx,
                                                         with_reference=config.beta > 0)

    # step 2. train: each micro-batch of prompts is sampled, scored and turned into advantages
    # in `_prepare`, then the loop runs the clipped policy-gradient step on it
    parts = loop.LoopParts(
        model=policy, examples=examples, collate=collate_prompts,
        step_fn=partial(_step, config=config),
        count_units=partial(_count_units, aggregation=config.loss_aggregation),
        prepare=partial(_prepare, config=config, backend=HFRollout(model, tokenizer), reward_fn=reward_fn,
                        reference=reference, rank=ctx.rank),
        save_final=lambda wrapped, path: save_pretrained_model(wrapped.model, tokenizer, path),
        callbacks=list(callbacks or []),
    )
    return loop.run(config, parts, ctx)
