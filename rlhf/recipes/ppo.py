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
  with a new head; `critic=shared` puts a value head on the policy's trunk instead
  (rlhf/models/actor_critic.py); policy and critic share one optimiser and learning rate;
- old log-probs are the rollout's own (they match a training forward to 1e-4 in fp32), so no
  extra forward pass is spent on them;
- advantages are whitened per micro-batch; rewards can be normalised with running statistics
  (kept in checkpoints for an exact resume); completions without EOS can be penalised;
- one metrics line per step (= one batch of rollouts), averaging its `ppo_epochs x
  num_minibatches` optimiser updates; the learning-rate schedule counts updates.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch

from rlhf.config import option
from rlhf.losses.ppo import ppo_policy_loss, ppo_value_loss
from rlhf.losses.types import LossOutput
from rlhf.models import save_pretrained_model
from rlhf.models.actor_critic import ActorCritic, SharedTrunkActorCritic
from rlhf.models.reference import ReferenceLogps
from rlhf.models.reward import TokenValues, load_reward_model
from rlhf.ops.advantages import gae, rewards_from_scores
from rlhf.ops.kl import AdaptiveKLController, FixedKLController, get_kl_estimator
from rlhf.ops.masked import masked_var, whiten
from rlhf.recipes._online import (OnlineConfig, collate_prompts, load_policy_and_reference,
                                  load_prompts_and_reward, sample, score)
from rlhf.recipes._shared import pad_token_id
from rlhf.rollout import HFRollout
from rlhf.train import loop
from rlhf.train.distributed import init_distributed

logger = logging.getLogger(__name__)


@dataclass
class PPOConfig(OnlineConfig):
    output_dir: str = option("runs/ppo", "where config.yaml, metrics.jsonl, checkpoints/ and final/ are written")
    lr: float = option(1e-6, "peak learning rate (AdamW), for policy and critic")
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
    num_minibatches: int = option(1, "optimiser updates per pass (must divide grad_accum)")
    critic: Literal["separate", "shared"] = option("separate", "a separate value model, or a value head on the policy's trunk")
    value_model: str | None = option(None, "critic=separate: its initialisation, a reward-model dir or causal LM; default: see module doc")


class RunningMoments:
    """Running mean / std of scores (Chan et al. parallel update), saved for an exact resume."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0.0, 0.0, 0.0

    def update(self, values: torch.Tensor) -> None:
        n = float(values.numel())
        if n == 0:
            return
        mean, var = float(values.mean()), float(values.var(unbiased=False)) if n > 1 else 0.0
        delta, total = mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.m2 += var * n + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]


def _scatter(flat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) values at the mask's positions -> (B, T), 0 elsewhere."""
    return torch.zeros(mask.shape, dtype=flat.dtype, device=flat.device).masked_scatter(mask.bool(), flat)


def _policy_logprobs(model, batch) -> torch.Tensor:
    return _scatter(model(input_ids=batch["input_ids"], labels=batch["labels"], position_ids=batch["position_ids"]),
                    batch["response_mask"])


def _prepare(actor_critic: ActorCritic | SharedTrunkActorCritic, batch: dict, step: int, index: int, *,
             config: PPOConfig, backend: HFRollout, reward_fn, reference: ReferenceLogps, kl_ctl,
             moments: RunningMoments, rank: int) -> dict:
    # step 1. sample completions
    t0 = time.perf_counter()
    rollout = sample(backend, batch, config, step=step, rank=rank, index=index)
    t1 = time.perf_counter()

    # step 2. score them; None drops a sample; no EOS is penalised; optional running normalisation
    raw_scores, valid = score(reward_fn, batch, rollout.completions, config.num_generations)
    scores = raw_scores - config.missing_eos_penalty * rollout.truncated.float()
    if config.normalize_rewards:
        moments.update(scores[valid])
        scores = (scores - moments.mean) / moments.std
    mask = rollout.response_mask * valid[:, None].to(rollout.response_mask.dtype)
    rollout.response_mask = mask
    t2 = time.perf_counter()

    # step 3. reference log-probs and old values (no autograd), KL-shaped rewards, GAE
    prepared = {**rollout.packed_sequences(), "response_mask": mask}  # one padding-free row
    old_logprobs = rollout.logprobs * mask
    ref_logprobs = reference.run(_policy_logprobs, prepared)
    with torch.no_grad():
        old_values = _scatter(actor_critic.values(input_ids=prepared["input_ids"], labels=prepared["labels"],
                                                  position_ids=prepared["position_ids"]), mask)
    kl = get_kl_estimator(config.kl_estimator).fn(old_logprobs, ref_logprobs) * mask  # (B, T)
    token_rewards = rewards_from_scores(scores, mask, kl=kl, kl_coef=kl_ctl.value)
    advantages, returns = gae(token_rewards, old_values, mask, config.gamma, config.lam)
    prepared.update(old_logprobs=old_logprobs, old_values=old_values, returns=returns,
                    advantages=whiten(advantages, mask))
    n = int(valid.sum())
    seq_kl = kl.sum(1)
    returns_var = float(masked_var(returns, mask))
    explained = 1.0 - float(masked_var(returns - old_values, mask)) / returns_var if returns_var > 0 else 0.0
    prepared["stats"] = {
        "time/generate": (t1 - t0, 1),
        "time/score": (t2 - t1, 1),
        "time/reference": (time.perf_counter() - t2, 1),
        "score": (float(raw_scores[valid].sum()), n),
        "kl": (float(seq_kl[valid].sum()), n),
        "non_score_reward": (float(-kl_ctl.value * seq_kl[valid].sum()), n),
        "completion_length": (float(mask.sum()), n),
        "truncated": (float(rollout.truncated[valid].sum()), n),
        "reward_none": (float((~valid).sum()), len(valid)),
        "value/explained_variance": (explained, 1),
    }
    if rollout.entropy is not None:
        prepared["stats"]["entropy"] = (float((rollout.entropy * mask).sum()), int(mask.sum()))
    return prepared


def _step(model, batch, *, config: PPOConfig) -> LossOutput:
    mask = batch["response_mask"]
    logprobs_flat, values_flat = model(input_ids=batch["input_ids"], labels=batch["labels"],
                                       position_ids=batch["position_ids"])
    logprobs, values = _scatter(logprobs_flat, mask), _scatter(values_flat, mask)
    policy = ppo_policy_loss(logprobs, batch["old_logprobs"], batch["advantages"], mask, clip_range=config.clip_range)
    value = ppo_value_loss(values, batch["old_values"], batch["returns"], mask, clip_range_value=config.clip_range_value)
    metrics = {f"policy/{k}": v for k, v in policy.metrics.items()}
    metrics.update({f"value/{k}": v for k, v in value.metrics.items()})
    metrics.update({"policy/loss": policy.loss.detach(), "value/loss": value.loss.detach()})
    return LossOutput(policy.loss + config.vf_coef * value.loss, metrics)


def _plan_updates(batches: list[dict], step: int, *, config: PPOConfig) -> list[list[dict]]:
    """ppo_epochs passes; each pass splits the micro-batches into num_minibatches shuffled groups."""
    per_group = len(batches) // config.num_minibatches
    updates = []
    for epoch in range(config.ppo_epochs):
        order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(config.seed + 7919 * step + epoch))
        shuffled = [batches[i] for i in order.tolist()]
        updates += [shuffled[i * per_group : (i + 1) * per_group] for i in range(config.num_minibatches)]
    return updates


def _update_kl_controller(step: int, metrics: dict, *, kl_ctl, batch_size: int) -> None:
    kl_ctl.update(metrics["kl"], batch_size)
    metrics["kl_coef"] = kl_ctl.value


def _critic_spec(config: PPOConfig, reward_spec) -> tuple[str, str]:
    if config.value_model is not None:
        return config.value_model, "value_model"
    if isinstance(reward_spec, str) and (Path(reward_spec) / "config.json").is_file():
        return reward_spec, "the reward model"
    return config.model, "the policy"


def ppo(config: PPOConfig, *, train_data=None, model=None, tokenizer=None, ref_model=None, value_model=None,
        reward=None, callbacks=None) -> loop.TrainResult:
    """PPO with a KL penalty per `config`. `reward` (callable or spec) replaces `config.reward`."""
    ctx = init_distributed()
    loop.check_resume(config)
    if config.grad_accum % config.num_minibatches:
        raise ValueError(f"num_minibatches={config.num_minibatches} must divide grad_accum={config.grad_accum}")
    if config.critic == "shared" and (config.value_model is not None or value_model is not None):
        raise ValueError("critic=shared puts a value head on the policy; value_model applies to critic=separate only")

    # step 0. prompts and the reward source, validated before any model loads
    examples, reward_fn, spec, tokenizer = load_prompts_and_reward(config, train_data=train_data, reward=reward,
                                                                   tokenizer=tokenizer, ctx=ctx)

    # step 1. policy, reference (adapters off with LoRA, else a frozen copy) and critic (its own
    # model, or a value head on the policy's trunk)
    model, policy, reference = load_policy_and_reference(config, model=model, ref_model=ref_model, ctx=ctx)
    if config.critic == "shared":
        actor_critic = SharedTrunkActorCritic(policy)
    else:
        if value_model is None:
            critic_spec, source = _critic_spec(config, spec)
            logger.info("critic initialised from %s (%s)", source, critic_spec)
            value_model = load_reward_model(critic_spec, pad_token_id=pad_token_id(tokenizer),
                                            dtype=getattr(torch, config.dtype),
                                            trust_remote_code=config.trust_remote_code)
        actor_critic = ActorCritic(policy, TokenValues(value_model.to(ctx.device)))

    # step 2. train: `_prepare` samples and scores, `_plan_updates` runs the PPO epochs
    kl_ctl = (AdaptiveKLController(config.beta, config.kl_target, config.kl_horizon) if config.adaptive_kl
              else FixedKLController(config.beta))
    moments = RunningMoments()
    output_dir = Path(config.output_dir)

    def save_final(wrapped, path: Path) -> None:
        save_pretrained_model(wrapped.policy.model, tokenizer, path)
        wrapped.save_critic(output_dir / "critic", tokenizer)

    parts = loop.LoopParts(
        model=actor_critic, examples=examples, collate=collate_prompts,
        step_fn=partial(_step, config=config),
        count_units=lambda batch: int(batch["response_mask"].sum()),
        prepare=partial(_prepare, config=config, backend=HFRollout(model, tokenizer), reward_fn=reward_fn,
                        reference=reference, kl_ctl=kl_ctl, moments=moments, rank=ctx.rank),
        plan_updates=partial(_plan_updates, config=config),
        updates_per_step=config.ppo_epochs * config.num_minibatches,
        after_step=partial(_update_kl_controller, kl_ctl=kl_ctl, batch_size=config.batch_size * config.num_generations),
        stateful={"kl_controller": kl_ctl, "reward_moments": moments},
        save_final=save_final, callbacks=list(callbacks or []),
    )
    return loop.run(config, parts, ctx)
