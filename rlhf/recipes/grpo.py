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
- a step samples all of its prompts first, each from a generator seeded by (seed, step, the
  prompt's place in the global batch), so neither samples nor advantages depend on micro-batching
  or the number of ranks, and a resumed run samples exactly what the uninterrupted one did;
  REINFORCE++'s whitening runs over the whole global batch;
- log-probs (policy, rollout, reference) are those of the tempered distribution that was sampled;
- a None reward drops that completion; its group's statistics use the valid members only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch

from rlhf.config import ConfigError, option
from rlhf.losses.policy_gradient import get_loss_aggregation, grpo_loss
from rlhf.losses.types import LossOutput
from rlhf.models import save_pretrained_model, supports_branches
from rlhf.models.reference import ReferenceLogprobs
from rlhf.ops.advantages import CRITIC_FREE_ESTIMATORS
from rlhf.ops.kl import kl_k1
from rlhf.ops.masked import whiten
from rlhf.recipes._online import (OnlineConfig, forward_rows, load_policy_and_reference, load_prompts_and_reward,
                                  micro_batch, retry_stats, rollout_stats, sample, scatter_rows, score, timed,
                                  token_logprobs)
from rlhf.recipes._online import OnlineAlarms, check_alarms, load_held_out
from rlhf.recipes._shared import start_run
from rlhf.rollout import HFRollout, Rollout
from rlhf.train import loop
from rlhf.train.distributed import DistContext, global_masked_moments

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


def kl_in_reward(config: GRPOConfig) -> bool:
    if config.kl_penalty == "auto":
        return CRITIC_FREE_ESTIMATORS[config.estimator].kl_in_reward
    return config.kl_penalty == "reward"


def advantages_and_kl(config: GRPOConfig, scores: torch.Tensor, valid: torch.Tensor, response_mask: torch.Tensor,
                      logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None, ctx: DistContext):
    """(B, T) advantages of this rank's share of the global batch, and the (B, T) k1 KL (None
    without a reference). Pure tensor math on the rollout's device; the only cross-rank step is
    REINFORCE++'s whitening, over every valid token of the global batch."""
    estimator = CRITIC_FREE_ESTIMATORS[config.estimator]
    kl = kl_k1(logprobs, ref_logprobs) * response_mask if ref_logprobs is not None else None  # (B, T)
    in_reward = kl if kl_in_reward(config) else None
    advantages = estimator.fn(scores, valid, response_mask, kl=in_reward, kl_coef=config.beta,
                              group_size=config.num_generations, scale=config.scale_rewards)  # (B, T)
    if estimator.whiten:
        advantages = whiten(advantages, response_mask, moments=global_masked_moments(advantages, response_mask, ctx))
    return advantages, kl


def _plan_step(step: int, examples: list[dict], positions: list[int], *, config: GRPOConfig, backend: HFRollout,
               reward_fn, reference: ReferenceLogprobs | None, pack, ctx: DistContext) -> loop.StepPlan:
    timings: dict[str, float] = {}
    chunks = loop.micro_batches(list(range(len(examples))), config.grad_accum)  # prompts per micro-batch

    # step 1. sample G completions of every prompt of this rank (group-major rows)
    with timed(timings, "generate"):
        rollout = sample(backend, examples, positions, config, step=step)

    # step 2. score them; extra dataset columns reach the reward function; None drops a sample
    with timed(timings, "score"):
        scores, valid = score(reward_fn, examples, rollout.completions, config.num_generations,
                              rollout.response_ids.device)
        rollout.response_mask = rollout.response_mask * valid.unsqueeze(1).to(rollout.response_mask.dtype)

    # step 3. reference log-probs, one micro-batch at a time
    with timed(timings, "reference"):
        ref_logprobs = (forward_rows(partial(reference.run, token_logprobs), rollout, chunks, pack)
                        if reference is not None else None)

    # step 4. advantages (and the KL, in the reward or the loss) over the whole global batch
    advantages, kl = advantages_and_kl(config, scores, valid, rollout.response_mask, rollout.logprobs,
                                       ref_logprobs, ctx)
    per_row = {"advantages": advantages}
    if ref_logprobs is not None and not kl_in_reward(config):
        per_row["ref_logprobs"] = ref_logprobs
    stats = rollout_stats(rollout, scores, valid) | retry_stats(reward_fn)
    stats["reward_squared"] = (torch.where(valid, scores**2, 0.0).sum(), valid.sum())
    if kl is not None:  # KL(pi || ref) of whole completions, k1 summed over tokens, as PPO logs it
        stats["kl"] = (kl.sum(), valid.sum())

    # step 5. one update: the clipped policy-gradient loss over the micro-batches
    batches = [micro_batch(rollout, chunk, pack, per_row) for chunk in chunks]
    return loop.StepPlan(updates=[batches], tokens=sum(b["input_ids"].numel() for b in batches), stats=stats,
                         timings=timings)


def _step(model, batch, *, config: GRPOConfig, kl_coef_in_loss: float) -> LossOutput:
    logprobs = scatter_rows(token_logprobs(model, batch), batch["response_mask"])  # (B, T)
    return grpo_loss(logprobs, None, batch["advantages"], batch["response_mask"], clip_range=config.clip_range,
                     clip_range_high=config.clip_range_high, beta=kl_coef_in_loss,
                     ref_logprobs=batch.get("ref_logprobs"), aggregation=config.loss_aggregation,
                     max_response_length=config.max_new_tokens)


def grpo(config: GRPOConfig, *, train_data=None, eval_data=None, model=None, tokenizer=None, ref_model=None,
         reward=None, eval_reward=None, callbacks=None) -> loop.TrainResult:
    """Online RL with group baselines per `config`. `reward` and `eval_reward` (callables or specs)
    replace `config.reward` and `config.eval_reward`; `train_data` / `eval_data` (prompt rows) replace
    `config.data` / `config.eval_data`."""
    ctx = start_run(config)
    estimator = CRITIC_FREE_ESTIMATORS[config.estimator]
    if config.num_generations < estimator.min_group_size:
        raise ConfigError(f"estimator={config.estimator} needs num_generations >= {estimator.min_group_size} "
                         "(a group baseline)")
    check_alarms(config, eval_data=eval_data, eval_reward=eval_reward,
                 no_kl="beta=0 loads no reference model" if config.beta == 0 else None)

    # step 0. prompts, the reward source and the held-out prompts and scorer, validated before any model loads
    examples, reward_fn, _, tokenizer = load_prompts_and_reward(config, train_data=train_data, reward=reward,
                                                                tokenizer=tokenizer, ctx=ctx)
    held_out = load_held_out(config, eval_data=eval_data, eval_reward=eval_reward, reward_fn=reward_fn,
                             tokenizer=tokenizer, ctx=ctx)

    # step 1. the policy and, when beta > 0, the reference
    model, policy, reference = load_policy_and_reference(config, model=model, ref_model=ref_model, ctx=ctx,
                                                         with_reference=config.beta > 0)
    # each prompt once, its completions as branches, where the attention kernel understands them
    pack = Rollout.packed_groups if supports_branches(model) else Rollout.packed_sequences

    # step 2. train: each step samples, scores and computes advantages for its whole batch
    # (`_plan_step`), then the loop runs the clipped policy-gradient update over its micro-batches;
    # the held-out prompts are sampled and scored every eval_every steps, and the alarms watch
    aggregation = get_loss_aggregation(config.loss_aggregation)
    backend = HFRollout(model, tokenizer)
    alarms = OnlineAlarms(config, backend=backend, reward_fn=reward_fn, held_out=held_out, ctx=ctx)
    parts = loop.LoopParts(
        model=policy, examples=examples, collate=list,
        step_fn=partial(_step, config=config, kl_coef_in_loss=0.0 if kl_in_reward(config) else config.beta),
        count_units=lambda batch: aggregation.count_units(batch["response_mask"]),
        plan_step=partial(_plan_step, config=config, backend=backend, reward_fn=reward_fn,
                          reference=reference, pack=pack, ctx=ctx),
        evaluate=alarms.evaluate, after_step=alarms.after_step, stateful=alarms.stateful,
        save_final=lambda wrapped, path: save_pretrained_model(wrapped.model, tokenizer, path),
        callbacks=list(callbacks or []),
    )
    return loop.run(config, parts, ctx)
