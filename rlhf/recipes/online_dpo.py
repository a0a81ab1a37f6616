"""Online DPO with AI feedback: `rlhf online-dpo` (Guo et al. 2024, "Direct Language Model
Alignment from Online AI Feedback", arXiv 2402.04792, Algorithm 1).

Each step, for every prompt: sample two completions from the current policy, let an annotator
pick the better one, and take a DPO-family step on the fresh pair against the starting policy.
The annotator is either a judge (`judge=` and `judge_kind=`, the same keys and judge module as
`rlhf label`) or any reward source (`reward=SPEC`: the higher score wins). Exactly one of the two
must be set. `loss_type` picks any loss of `rlhf.losses.preference` (DPO, IPO, hinge, ...).

Departures from the paper / TRL OnlineDPOTrainer:
- a step samples all of its prompts first, each from a generator seeded by (seed, step, the
  prompt's place in the global batch), like `rlhf grpo`: pairs, verdicts and weights do not depend
  on micro-batching or the number of ranks, and a resumed run samples exactly the pairs the
  uninterrupted one did, so the judge cache (output_dir/judge_cache.jsonl) answers them again;
- a tie (equal scores, a judge probability of exactly 0.5) or a pair the annotator cannot judge
  (a None reward, an unparseable verdict) is skipped and counted, not resolved arbitrarily
  (TRL's argmax keeps the first completion); a step whose pairs are all skipped leaves the
  weights and the optimiser moments as they are;
- log-probs (policy and reference) are those of the tempered distribution that was sampled, as
  in TRL (logits / temperature) and the other online recipes;
- the reference is the starting policy (adapters off with LoRA); reference-free losses (simpo,
  orpo) load none and then log no KL;
- one optimiser update per batch of fresh pairs, over the pairs that were judged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal, NamedTuple

import torch

from rlhf.config import ConfigError, option
from rlhf.feedback import JudgeCache, JudgeOptions, build_judge, check_judge_options, judge_pairs
from rlhf.losses.preference import PairLogprobs, PreferenceLoss, get_preference_loss
from rlhf.losses.types import LossOutput
from rlhf.models import save_pretrained_model, supports_branches
from rlhf.models.reference import ReferenceLogprobs
from rlhf.ops.kl import kl_k1
from rlhf.recipes._online import (OnlineConfig, forward_rows, load_policy_and_reference, load_prompts,
                                  load_prompts_and_reward, micro_batch, retry_stats, rollout_stats, sample,
                                  scatter_rows, score, timed, token_logprobs)
from rlhf.recipes._online import OnlineAlarms, check_alarms, load_held_out
from rlhf.recipes._shared import read_rows, start_run
from rlhf.recipes.dpo import check_config
from rlhf.rollout import HFRollout, Rollout
from rlhf.train import loop
from rlhf.train.distributed import DistContext, all_reduce_sum

logger = logging.getLogger(__name__)


@dataclass
class OnlineDPOConfig(JudgeOptions, OnlineConfig):
    """Online training keys, the judge's keys (as `rlhf label`) and the preference loss's."""

    output_dir: str = option("runs/online_dpo", "where config.yaml, metrics.jsonl, checkpoints/ and final/ are written")
    lr: float = option(5e-7, "peak learning rate (AdamW); DPO wants a small one")
    batch_size: int = option(8, "prompts per optimiser step (each gets a pair of completions)")
    judge: str | None = option(None, "annotator: a judge model spec (a local chat-model directory or "
                                     "smollm2-135m-instruct), asked as judge_kind, template, ... say; "
                                     "exactly one of judge and reward")
    reward: str | None = option(None, "annotator: a reward source spec (the higher score wins); exactly one of "
                                      "judge and reward")
    num_generations: int = option(2, "completions per prompt: one pair (the only value online DPO takes)")
    beta: float = option(0.1, "strength of the KL regularisation to the reference (lambda for ORPO, beta for SimPO)")
    loss_type: Literal["sigmoid", "robust", "ipo", "hinge", "simpo", "orpo"] = option(
        "sigmoid", "sigmoid (DPO), robust, ipo, hinge, simpo or orpo (see rlhf.losses.preference)")
    label_smoothing: float = option(0.0, "assumed label-noise rate for sigmoid (cDPO) and robust")
    simpo_gamma: float = option(0.5, "SimPO target reward margin gamma")


class Preferences(NamedTuple):
    """The annotator's verdicts on P pairs (completions 2i and 2i + 1 of a group-major rollout)."""

    first_wins: torch.Tensor  # (P,) bool: completion 2i is the better one
    judged: torch.Tensor  # (P,) bool: a winner was picked (False: a tie, a None score, an unparseable verdict)
    stats: dict  # name -> (sum, count) about the verdicts, e.g. "judge_confidence"
    scores: torch.Tensor | None = None  # (2P,) float32 score of each completion, when the annotator gives one
    scored: torch.Tensor | None = None  # (2P,) bool: the score exists (0 stands in for None)


def preferences_from_scores(scores: torch.Tensor, scored: torch.Tensor) -> Preferences:
    """(2P,) scores -> the higher one wins each pair; a tie or a missing score judges nothing."""
    pair = scores.view(-1, 2)  # (P, 2)
    judged = scored.view(-1, 2).all(1) & (pair[:, 0] != pair[:, 1])
    return Preferences(first_wins=pair[:, 0] > pair[:, 1], judged=judged, stats={}, scores=scores, scored=scored)


def pair_rows(first_wins: torch.Tensor, judged: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2P,) bool masks of the chosen and the rejected rows; both False on a pair that was not judged."""
    first = torch.stack([first_wins, ~first_wins], 1)  # (P, 2): which row of the pair won
    chosen = first & judged.unsqueeze(1)
    rejected = ~first & judged.unsqueeze(1)
    return chosen.flatten(), rejected.flatten()


class _Untouched:
    """`LoopParts.frozen_at`: the parameters of a step in which no pair was judged on any rank, so
    its update (zero gradients) cannot move them through AdamW's momentum."""

    def __init__(self, parameters: list[torch.nn.Parameter]):
        self.parameters, self.step = parameters, None

    def __call__(self, step: int) -> list[torch.nn.Parameter]:
        return self.parameters if step == self.step else []


def _plan_step(step: int, examples: list[dict], positions: list[int], *, config: OnlineDPOConfig,
               backend: HFRollout, prefer, reference: ReferenceLogprobs | None, pack, untouched: _Untouched,
               ctx: DistContext) -> loop.StepPlan:
    timings: dict[str, float] = {}
    chunks = loop.micro_batches(list(range(len(examples))), config.grad_accum)  # prompts per micro-batch

    # step 1. sample a pair of completions of every prompt of this rank (rows 2i, 2i + 1)
    with timed(timings, "generate"):
        rollout = sample(backend, examples, positions, config, step=step)

    # step 2. the annotator picks each pair's winner (the AI feedback of Guo et al. Algorithm 1)
    with timed(timings, "score"):
        verdicts: Preferences = prefer(examples, rollout.completions, rollout.response_ids.device)

    # step 3. reference log-probs of every sample (the KL is measured on all of them)
    with timed(timings, "reference"):
        ref_logprobs = (forward_rows(partial(reference.run, token_logprobs), rollout, chunks, pack)
                        if reference is not None else None)  # (2P, T)

    # step 4. what the step logs about its samples and verdicts
    ones = torch.ones(rollout.response_ids.shape[0], dtype=torch.bool, device=rollout.response_ids.device)
    stats = rollout_stats(rollout, verdicts.scores if verdicts.scores is not None else ones.float(),
                          verdicts.scored if verdicts.scored is not None else ones)
    if verdicts.scores is None:  # a pairwise judge scores pairs, not completions
        del stats["reward"], stats["reward_none"]
    stats.update(verdicts.stats)
    stats["pairs_skipped"] = ((~verdicts.judged).sum(), verdicts.judged.numel())
    if ref_logprobs is not None:  # KL(pi || ref) of whole completions, k1 summed over tokens, as GRPO logs it
        kl = kl_k1(rollout.logprobs, ref_logprobs) * rollout.response_mask  # (2P, T)
        stats["kl"] = (kl.sum(), ones.sum())

    # step 5. chosen and rejected rows; a pair that was not judged leaves the batch (zero weight)
    chosen, rejected = pair_rows(verdicts.first_wins, verdicts.judged)
    rollout.response_mask = rollout.response_mask * (chosen | rejected).unsqueeze(1).to(rollout.response_mask.dtype)
    judged_anywhere = float(all_reduce_sum(verdicts.judged.sum().double().reshape(1), ctx)[0]) > 0
    untouched.step = None if judged_anywhere else step
    per_row = {"chosen": chosen, "rejected": rejected}
    if ref_logprobs is not None:
        per_row["ref_logprob_sums"] = ref_logprobs.sum(1)  # (2P,)

    # step 6. one update: the preference loss over the micro-batches' judged pairs
    batches = [micro_batch(rollout, chunk, pack, per_row) for chunk in chunks]
    return loop.StepPlan(updates=[batches], tokens=sum(b["input_ids"].numel() for b in batches), stats=stats,
                         timings=timings)


def _step(model, batch, *, spec: PreferenceLoss, beta: float, hparams: dict) -> LossOutput:
    """The preference loss (a sum over the micro-batch's judged pairs, in row order)."""
    mask = batch["response_mask"]  # (2P, T), zero on the rows of pairs that were not judged
    sums = scatter_rows(token_logprobs(model, batch), mask).sum(1)  # (2P,)
    tokens = mask.sum(1)
    chosen, rejected = batch["chosen"], batch["rejected"]
    ref = batch.get("ref_logprob_sums")
    logprobs = PairLogprobs(chosen=sums[chosen], rejected=sums[rejected], chosen_tokens=tokens[chosen],
                      rejected_tokens=tokens[rejected], ref_chosen=ref[chosen] if ref is not None else None,
                      ref_rejected=ref[rejected] if ref is not None else None)
    return spec.fn(logprobs, beta=beta, **hparams)


def _count_pairs(batch: dict) -> int:
    return int(batch["chosen"].sum())


def reward_preferences(reward_fn, examples: list[dict], completions: list[str], device) -> Preferences:
    """The reward source scores both completions (extra dataset columns reach it, as in `rlhf grpo`).

    Not `judge_pairs(RewardJudge(...))`: that passes the reward no dataset columns, and its
    p = sigmoid(r_a - r_b) rounds a tiny score gap to an exact tie, which would skip the pair."""
    preferences = preferences_from_scores(*score(reward_fn, examples, completions, 2, device))
    preferences.stats.update(retry_stats(reward_fn))  # a reward server's re-sent requests
    return preferences


def judge_preferences(judge, cache: JudgeCache | None, examples: list[dict], completions: list[str],
                     device) -> Preferences:
    """The judge's P(first is better) per pair (`judge_pairs`: both orders averaged for a pairwise
    judge, sigmoid(score difference) for a pointwise one); p = 0.5 or None judges nothing."""
    verdicts = judge_pairs(judge, [e["prompt"] for e in examples], completions[0::2], completions[1::2], cache=cache)
    p = torch.tensor([float("nan") if v.p_first is None else v.p_first for v in verdicts], dtype=torch.float64,
                     device=device)  # (P,)
    parsed = ~p.isnan()
    confidence = torch.where(parsed, torch.maximum(p, 1 - p), 0.0)
    stats = {"judge_confidence": (confidence.sum(), parsed.sum())}
    if judge.kind == "pairwise":
        stats["judge_consistency"] = (sum(v.consistent is True for v in verdicts),
                                      sum(v.consistent is not None for v in verdicts))
        return Preferences(first_wins=p > 0.5, judged=parsed & (p != 0.5), stats=stats)
    pairs = [(v.details["score_a"], v.details["score_b"]) for v in verdicts]
    values = [s for pair in pairs for s in pair]  # (2P,) in rollout row order
    scores = torch.tensor([0.0 if s is None else float(s) for s in values], device=device)
    scored = torch.tensor([s is not None for s in values], device=device)
    return Preferences(first_wins=p > 0.5, judged=parsed & (p != 0.5), stats=stats, scores=scores, scored=scored)


def _judge_cache(config: OnlineDPOConfig, ctx: DistContext) -> JudgeCache:
    """output_dir/judge_cache.jsonl (rank r > 0: judge_cache.rank<r>.jsonl, one writer per file)."""
    name = "judge_cache.jsonl" if ctx.rank == 0 else f"judge_cache.rank{ctx.rank}.jsonl"
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    return JudgeCache(Path(config.output_dir) / name)


def _check_annotator(config: OnlineDPOConfig, *, reward, judge) -> bool:
    """Whether the annotator is a judge (else a reward source); exactly one must be given."""
    has_reward = reward is not None or config.reward is not None
    has_judge = judge is not None or config.judge is not None
    if has_reward == has_judge:
        raise ConfigError("config keys 'judge' and 'reward': online-dpo needs exactly one annotator, got "
                          f"{'both' if has_reward else 'neither'}: set judge=MODEL (with judge_kind, template, ...) "
                          "for AI feedback, or reward=SPEC (the higher score wins)")
    if judge is None and config.judge is not None:
        check_judge_options(config)  # template, few-shot and rubric files: before any model loads
    return has_judge


def online_dpo(config: OnlineDPOConfig, *, train_data=None, eval_data=None, model=None, tokenizer=None,
               ref_model=None, reward=None, eval_reward=None, judge=None, callbacks=None) -> loop.TrainResult:
    """Online DPO per `config`. `reward` and `eval_reward` (callables or specs) replace `config.reward`
    and `config.eval_reward`; `judge` (an object with the `rlhf.feedback.Judge` interface, e.g. a
    scripted test judge) replaces `config.judge`; `train_data` / `eval_data` (prompt rows) replace
    `config.data` / `config.eval_data`. With a judge annotator eval_data needs eval_reward (there is
    no training reward to log as eval/reward)."""
    ctx = start_run(config)
    spec = get_preference_loss(config.loss_type)
    check_config(config, spec)
    if config.num_generations != 2:
        raise ConfigError(f"config key 'num_generations': online-dpo samples one pair per prompt, so it must be 2, "
                          f"got {config.num_generations}")
    check_alarms(config, eval_data=eval_data, eval_reward=eval_reward,
                 no_kl=None if spec.needs_reference else f"loss_type={config.loss_type} loads no reference model")
    use_judge = _check_annotator(config, reward=reward, judge=judge)

    # step 0. prompts, the annotator and the held-out prompts and scorer, validated before any model loads
    if use_judge:
        rows = read_rows(train_data if train_data is not None else config.data, "prompt")
        examples, tokenizer = load_prompts(config, rows, tokenizer=tokenizer, ctx=ctx)
        reward_fn = None
    else:
        examples, reward_fn, _, tokenizer = load_prompts_and_reward(config, train_data=train_data, reward=reward,
                                                                    tokenizer=tokenizer, ctx=ctx)
        prefer = partial(reward_preferences, reward_fn)
    held_out = load_held_out(config, eval_data=eval_data, eval_reward=eval_reward, reward_fn=reward_fn,
                             tokenizer=tokenizer, ctx=ctx)

    # step 1. the policy and, when the loss needs one, the reference (the starting policy); the judge
    model, policy, reference = load_policy_and_reference(config, model=model, ref_model=ref_model, ctx=ctx,
                                                         with_reference=spec.needs_reference)
    if use_judge:
        judge = judge if judge is not None else build_judge(config, device=ctx.device, dtype=getattr(torch, config.dtype),
                                                            trust_remote_code=config.trust_remote_code)
        prefer = partial(judge_preferences, judge, _judge_cache(config, ctx))
    # each prompt once, its two completions as branches, where the attention kernel understands them
    pack = Rollout.packed_groups if supports_branches(model) else Rollout.packed_sequences
    untouched = _Untouched([p for p in policy.parameters() if p.requires_grad])
    backend = HFRollout(model, tokenizer)
    alarms = OnlineAlarms(config, backend=backend, reward_fn=reward_fn, held_out=held_out, ctx=ctx)

    # step 2. train: each step samples and judges its pairs (`_plan_step`), then the loop runs one
    # update of the preference loss over its micro-batches
    parts = loop.LoopParts(
        model=policy, examples=examples, collate=list,
        step_fn=partial(_step, spec=spec, beta=config.beta,
                        hparams={"label_smoothing": config.label_smoothing, "simpo_gamma": config.simpo_gamma}),
        count_units=_count_pairs,
        plan_step=partial(_plan_step, config=config, backend=backend, prefer=prefer,
                          reference=reference, pack=pack, untouched=untouched, ctx=ctx),
        evaluate=alarms.evaluate, after_step=alarms.after_step, stateful=alarms.stateful,
        save_final=lambda wrapped, path: save_pretrained_model(wrapped.model, tokenizer, path),
        frozen_at=untouched, callbacks=list(callbacks or []),
    )
    return loop.run(config, parts, ctx)
