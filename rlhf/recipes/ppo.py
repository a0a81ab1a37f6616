"""PPO with a KL penalty to the reference: `rlhf ppo` (InstructGPT; Ouyang et al. 2022).

Per step: sample completions, score them (learned reward model, judge, function or server),
shape per-token rewards r_t = -beta * KL_t + [t = last] * score (Ziegler et al. 2019), estimate
advantages with a critic and GAE, then run `ppo_epochs` epochs of clipped-surrogate and clipped
value updates over `num_minibatches` minibatches (Schulman et al. 2017). beta follows an adaptive
controller toward `kl_target` (Ziegler et al. 2019 eq. 2) or stays fixed.

Departures from the paper / TRL PPOTrainer, following "The N implementation details of RLHF
with PPO" (Huang et al. 2024) where they differ:
- the critic (`critic=separate`, the default) is a separate model initialised from `value_model`,
  else the reward model when the reward is a reward-model directory, else the policy's weights
  with a new head; `critic=shared` puts a value head on the policy's trunk instead; a new head
  starts at zero (every value 0, so the first advantages are the whitened returns: a random head
  on SmolLM2's trunk gave a residual variance 5x the returns', explained variance -4)
  (rlhf/models/actor_critic.py); the critic has its own learning rate (`critic_lr`, as
  OpenRLHF's critic_learning_rate; InstructGPT also trains its value function faster), and
  `value_warmup_steps` can train the critic alone first;
- old log-probs are the rollout's own (they match a training forward to 1e-4 in fp32), so no
  extra forward pass is spent on them; all log-probs are those of the tempered distribution sampled;
- a step samples all of its prompts before any update, seeded per prompt, and whitens advantages
  and updates the running reward statistics over the whole global batch (every micro-batch and
  rank), so neither depends on how the batch is split; completions without EOS can be penalised;
- `ppo_epochs` passes, each over `num_minibatches` minibatches of prompts drawn from the global
  batch by a permutation seeded by (seed, step, epoch): the same minibatches whatever the
  micro-batching or the number of ranks;
- one metrics line per step (= one batch of rollouts), averaging its `ppo_epochs x
  num_minibatches` optimiser updates; the learning-rate schedule counts updates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch

from rlhf.config import ConfigError, option
from rlhf.losses.ppo import ppo_policy_loss, ppo_value_loss
from rlhf.losses.types import LossOutput
from rlhf.models import save_pretrained_model, supports_branches
from rlhf.models.actor_critic import ActorCritic, SharedTrunkActorCritic
from rlhf.models.reference import ReferenceLogprobs
from rlhf.models.reward import TokenValues, load_reward_model, reward_model_from_causal_lm
from rlhf.ops.advantages import gae, rewards_from_scores
from rlhf.ops.kl import AdaptiveKLController, FixedKLController, get_kl_estimator
from rlhf.ops.masked import whiten
from rlhf.recipes._online import (OnlineConfig, forward_rows, load_policy_and_reference, load_prompts_and_reward,
                                  micro_batch, retry_stats, rollout_stats, sample, scatter_rows, score, timed,
                                  token_logprobs)
from rlhf.recipes._online import OnlineAlarms, check_alarms, load_held_out
from rlhf.recipes._shared import pad_token_id, start_run
from rlhf.rollout import HFRollout, Rollout
from rlhf.train import loop
from rlhf.train.distributed import DistContext, global_masked_moments, global_masked_sums

logger = logging.getLogger(__name__)


@dataclass
class PPOConfig(OnlineConfig):
    output_dir: str = option("runs/ppo", "where config.yaml, metrics.jsonl, checkpoints/ and final/ are written")
    lr: float = option(1e-6, "peak learning rate (AdamW) of the policy")
    critic_lr: float | None = option(None, "peak learning rate of the critic (value model or value head); default: 10 x lr")
    value_warmup_steps: int = option(0, "first steps that train the critic alone (the policy gets no update)")
    batch_size: int = option(8, "prompts per step (each gets num_generations completions)")
    beta: float = option(0.05, "KL coefficient (the adaptive controller's starting value)")
    adaptive_kl: bool = option(True, "adapt beta toward kl_target (Ziegler et al. 2019); false keeps it fixed")
    kl_target: float = option(6.0, "target KL per completion (nats) for the adaptive controller")
    kl_horizon: int = option(10000, "adaptive controller horizon, in samples")
    kl_estimator: Literal["k1", "k3"] = option("k1", "per-token KL estimator in the reward")
    num_generations: int = option(1, "completions per prompt")
    missing_eos_penalty: float = option(0.0, "subtracted from the score of a completion that never ended (0: none)")
    normalize_rewards: bool = option(False, "normalise scores with running mean / std")
    gamma: float = option(1.0, "discount")
    lam: float = option(0.95, "GAE lambda")
    clip_range: float = option(0.2, "policy ratio clipping")
    clip_range_value: float = option(0.2, "value clipping around the old values")
    vf_coef: float = option(0.1, "weight of the value loss")
    ppo_epochs: int = option(4, "passes over each batch of rollouts")
    num_minibatches: int = option(1, "optimiser updates per pass, each on a share of the step's prompts")
    critic: Literal["separate", "shared"] = option("separate", "a separate value model, or a value head on the policy's trunk")
    value_model: str | None = option(None, "critic=separate: its initialisation, a reward-model dir or causal LM; default: see module doc")


class RunningMoments:
    """Running mean / std of scores (Chan et al. parallel update), saved for an exact resume.

    Updated from the sums of a whole global batch, so every rank holds the same statistics.
    """

    def __init__(self):
        self.count, self.mean, self.m2 = 0.0, 0.0, 0.0

    def update(self, values: torch.Tensor, valid: torch.Tensor, ctx: DistContext) -> None:
        """Add the valid entries of `values` (B,), over every rank."""
        n, total, squares = (float(v) for v in global_masked_sums(values, valid, ctx))
        if n == 0:
            return
        mean = total / n
        var = max(squares / n - mean**2, 0.0)  # the batch's own (biased) variance
        delta, total = mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.m2 += var * n + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return (self.m2 / self.count) ** 0.5 if self.count > 1 else 1.0

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]


def _values(actor_critic, batch) -> torch.Tensor:
    return actor_critic.values(input_ids=batch["input_ids"], labels=batch["labels"], position_ids=batch["position_ids"],
                               label_positions=batch.get("label_positions"))


def advantages_and_returns(config: PPOConfig, scores: torch.Tensor, response_mask: torch.Tensor,
                           old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, old_values: torch.Tensor,
                           kl_coef: float, ctx: DistContext):
    """KL-shaped token rewards -> GAE -> advantages whitened over the whole global batch.

    Pure tensor math on the rollout's device (one cross-rank reduction). Returns (B, T) each:
    advantages, returns, and the per-token KL estimate.
    """
    kl = get_kl_estimator(config.kl_estimator).fn(old_logprobs, ref_logprobs) * response_mask  # (B, T)
    token_rewards = rewards_from_scores(scores, response_mask, kl=kl, kl_coef=kl_coef)
    advantages, returns = gae(token_rewards, old_values, response_mask, config.gamma, config.lam)
    advantages = whiten(advantages, response_mask, moments=global_masked_moments(advantages, response_mask, ctx))
    return advantages, returns, kl


def minibatches(config: PPOConfig, positions: list[int], step: int, epoch: int) -> list[list[int]]:
    """This rank's prompts (local indices) in each of the epoch's `num_minibatches` minibatches.

    A minibatch is a share of the *global* batch, cut from a permutation seeded by (seed, step,
    epoch), so it holds the same prompts however the batch is spread over micro-batches and ranks;
    this rank may hold none of a minibatch's prompts (the loop then runs it at weight 0).
    """
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + 7919 * step + epoch)
    order = torch.randperm(config.batch_size, generator=generator).tolist()
    local = {p: i for i, p in enumerate(positions)}
    return [[local[p] for p in share if p in local] for share in loop.micro_batches(order, config.num_minibatches)]


def _plan_step(step: int, examples: list[dict], positions: list[int], *, config: PPOConfig, actor_critic,
               backend: HFRollout, reward_fn, reference: ReferenceLogprobs, kl_ctl, moments: RunningMoments,
               pack, ctx: DistContext) -> loop.StepPlan:
    timings: dict[str, float] = {}
    chunks = loop.micro_batches(list(range(len(examples))), config.grad_accum)  # prompts per forward pass
    micro_size = len(chunks[0])

    # step 1. sample completions of every prompt of this rank
    with timed(timings, "generate"):
        rollout = sample(backend, examples, positions, config, step=step)

    # step 2. score them; None drops a sample; no EOS is penalised; optional running normalisation
    with timed(timings, "score"):
        raw_scores, valid = score(reward_fn, examples, rollout.completions, config.num_generations,
                                  rollout.response_ids.device)
        scores = raw_scores - config.missing_eos_penalty * rollout.truncated.to(raw_scores.dtype)
        if config.normalize_rewards:
            moments.update(scores, valid, ctx)
            scores = (scores - moments.mean) / moments.std
        rollout.response_mask = rollout.response_mask * valid.unsqueeze(1).to(rollout.response_mask.dtype)
    mask = rollout.response_mask

    # step 3. reference log-probs and old values (no autograd), one micro-batch at a time
    with timed(timings, "reference"):
        ref_logprobs = forward_rows(partial(reference.run, token_logprobs), rollout, chunks, pack)
        with torch.no_grad():
            old_values = forward_rows(partial(_values, actor_critic), rollout, chunks, pack)

    # step 4. KL-shaped rewards, GAE, advantages whitened over the global batch
    old_logprobs = rollout.logprobs * mask
    advantages, returns, kl = advantages_and_returns(config, scores, mask, old_logprobs, ref_logprobs, old_values,
                                                     kl_ctl.value, ctx)
    per_row = {"old_logprobs": old_logprobs, "old_values": old_values, "returns": returns, "advantages": advantages}
    stats = rollout_stats(rollout, raw_scores, valid) | retry_stats(reward_fn)  # "reward": the reward source's mean
    stats["kl"] = (kl.sum(), valid.sum())
    stats["non_score_reward"] = (-kl_ctl.value * kl.sum(), valid.sum())
    stats["value/explained_variance"] = explained_variance(returns, old_values, mask, ctx)

    # step 5. ppo_epochs x num_minibatches updates, each over its prompts' micro-batches
    updates = []
    for epoch in range(config.ppo_epochs):
        for prompts in minibatches(config, positions, step, epoch):
            updates.append([micro_batch(rollout, part, pack, per_row)
                            for part in [prompts[i:i + micro_size] for i in range(0, len(prompts), micro_size)]])
    tokens = sum(b["input_ids"].numel() for update in updates[:config.num_minibatches] for b in update)
    return loop.StepPlan(updates=updates, tokens=tokens, stats=stats, timings=timings)


def explained_variance(returns: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, ctx: DistContext) -> tuple:
    """1 - Var(returns - values) / Var(returns) over the global batch's valid tokens, as (value, 1)."""
    _, returns_var = global_masked_moments(returns, mask, ctx)
    _, residual_var = global_masked_moments(returns - values, mask, ctx)
    value = torch.where(returns_var > 0, 1 - residual_var / returns_var.clamp(min=1e-30), torch.zeros_like(returns_var))
    return value, 1  # every rank holds the global value: the loop then averages W equal values


def _step(model, batch, *, config: PPOConfig) -> LossOutput:
    mask = batch["response_mask"]
    logprobs_flat, values_flat = model(input_ids=batch["input_ids"], labels=batch["labels"],
                                       position_ids=batch["position_ids"], label_positions=batch.get("label_positions"))
    logprobs, values = scatter_rows(logprobs_flat, mask), scatter_rows(values_flat, mask)
    policy = ppo_policy_loss(logprobs, batch["old_logprobs"], batch["advantages"], mask, clip_range=config.clip_range)
    value = ppo_value_loss(values, batch["old_values"], batch["returns"], mask, clip_range_value=config.clip_range_value)
    metrics = {f"policy/{k}": v for k, v in policy.metrics.items()}
    metrics.update({f"value/{k}": v for k, v in value.metrics.items()})
    metrics.update({"policy/loss": policy.loss.detach(), "value/loss": value.loss.detach()})
    return LossOutput(policy.loss + config.vf_coef * value.loss, metrics)


def _update_kl_controller(step: int, metrics: dict, *, kl_ctl, batch_size: int) -> None:
    kl_ctl.update(metrics["kl"], batch_size)
    metrics["kl_coef"] = kl_ctl.value


def _critic_spec(config: PPOConfig, reward_spec) -> tuple[str, str]:
    if config.value_model is not None:
        return config.value_model, "value_model"
    if isinstance(reward_spec, str) and (Path(reward_spec) / "config.json").is_file():
        return reward_spec, "the reward model"
    return config.model, "the policy"


def ppo(config: PPOConfig, *, train_data=None, eval_data=None, model=None, tokenizer=None, ref_model=None,
        value_model=None, reward=None, eval_reward=None, callbacks=None) -> loop.TrainResult:
    """PPO with a KL penalty per `config`. `reward` and `eval_reward` (callables or specs) replace
    `config.reward` and `config.eval_reward`; `train_data` / `eval_data` (prompt rows) replace
    `config.data` / `config.eval_data`."""
    ctx = start_run(config)
    if config.num_minibatches > config.batch_size:
        raise ConfigError(f"num_minibatches={config.num_minibatches} exceeds batch_size={config.batch_size} prompts")
    if config.critic == "shared" and (config.value_model is not None or value_model is not None):
        raise ConfigError("critic=shared puts a value head on the policy; value_model applies to critic=separate only")
    check_alarms(config, eval_data=eval_data, eval_reward=eval_reward)

    # step 0. prompts, the reward source and the held-out prompts and scorer, validated before any model loads
    examples, reward_fn, spec, tokenizer = load_prompts_and_reward(config, train_data=train_data, reward=reward,
                                                                   tokenizer=tokenizer, ctx=ctx)
    held_out = load_held_out(config, eval_data=eval_data, eval_reward=eval_reward, reward_fn=reward_fn,
                             tokenizer=tokenizer, ctx=ctx)

    # step 1. critic (its own model, or later a value head on the policy's trunk), policy and
    # reference (adapters off with LoRA, else a frozen copy)
    if config.critic == "separate" and value_model is None:
        critic_spec, source = _critic_spec(config, spec)
        if source == "the policy" and model is not None:  # the caller's in-memory policy, not config.model
            critic_spec, value_model = "<in-memory policy>", reward_model_from_causal_lm(
                model, pad_token_id=pad_token_id(tokenizer), zero_new_head=True)
        else:
            value_model = load_reward_model(critic_spec, pad_token_id=pad_token_id(tokenizer),
                                            dtype=getattr(torch, config.dtype),
                                            trust_remote_code=config.trust_remote_code, zero_new_head=True)
        logger.info("critic initialised from %s (%s)", source, critic_spec)
    model, policy, reference = load_policy_and_reference(config, model=model, ref_model=ref_model, ctx=ctx)
    if config.critic == "shared":
        actor_critic = SharedTrunkActorCritic(policy)
    else:
        actor_critic = ActorCritic(policy, TokenValues(value_model.to(ctx.device)))
    critic_params = list(actor_critic.critic_parameters())
    critic_ids = {id(p) for p in critic_params}
    policy_params = [p for p in actor_critic.parameters() if id(p) not in critic_ids]
    critic_lr = config.critic_lr if config.critic_lr is not None else 10 * config.lr
    # completions of one prompt share its tokens in one packed row when every model's attention allows it
    branching = supports_branches(model) and (config.critic == "shared" or supports_branches(value_model))
    pack = Rollout.packed_groups if branching else Rollout.packed_sequences

    # step 2. train: `_plan_step` samples, scores and computes advantages for the whole batch and
    # lists the PPO epochs x minibatches of updates; the loop runs them
    kl_ctl = (AdaptiveKLController(config.beta, config.kl_target, config.kl_horizon) if config.adaptive_kl
              else FixedKLController(config.beta))
    moments = RunningMoments()
    output_dir = Path(config.output_dir)
    backend = HFRollout(model, tokenizer)
    alarms = OnlineAlarms(config, backend=backend, reward_fn=reward_fn, held_out=held_out, ctx=ctx)

    def after_step(step: int, metrics: dict) -> None:
        _update_kl_controller(step, metrics, kl_ctl=kl_ctl, batch_size=config.batch_size * config.num_generations)
        alarms.after_step(step, metrics)  # may stop the run (stop_on_kl): the controller has seen the step

    def save_final(wrapped, path: Path) -> None:
        save_pretrained_model(wrapped.policy.model, tokenizer, path)
        wrapped.save_critic(output_dir / "critic", tokenizer)

    parts = loop.LoopParts(
        model=actor_critic, examples=examples, collate=list,
        step_fn=partial(_step, config=config),
        count_units=lambda batch: int(batch["response_mask"].sum()),
        plan_step=partial(_plan_step, config=config, actor_critic=actor_critic, backend=backend,
                          reward_fn=reward_fn, reference=reference, kl_ctl=kl_ctl, moments=moments, pack=pack,
                          ctx=ctx),
        updates_per_step=config.ppo_epochs * config.num_minibatches,
        param_groups=[{"params": policy_params}, {"params": critic_params, "lr": critic_lr}],
        frozen_at=lambda step: policy_params if step < config.value_warmup_steps else [],
        evaluate=alarms.evaluate, after_step=after_step,
        stateful={"kl_controller": kl_ctl, "reward_moments": moments, **alarms.stateful},
        save_final=save_final, callbacks=list(callbacks or []),
    )
    return loop.run(config, parts, ctx)
