"""Direct preference optimisation and its family: `rlhf dpo`.

Preferences go straight into the policy, no reward model and no RL (Rafailov et al. 2023).
`loss_type` picks the objective from `rlhf.losses.preference.PREFERENCE_LOSSES`: sigmoid (DPO),
robust, ipo, hinge, simpo, orpo; `label_smoothing` > 0 with sigmoid is cDPO.

Departures from the paper's recipe / TRL DPOTrainer:
- chosen and rejected run in one forward pass, padding-free by default, and the LM head runs
  on completion positions only;
- reference log-probs are computed once before training (`precompute_ref=true`), with the
  policy itself when the reference is the starting model, so no second copy of the weights is
  ever loaded; they are cached on disk, keyed by the reference weights and the tokenised data;
- with LoRA the reference is the base model with the adapters disabled;
- `rpo_alpha` adds an NLL term on the chosen completion (RPO, Pang et al. 2024, eq. 3).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Literal

import torch

from rlhf.config import ConfigError, option
from rlhf.data.preference import collate_pairs, tokenize_pairs
from rlhf.losses.preference import PREFERENCE_LOSSES, PairLogprobs, PreferenceLoss, get_preference_loss
from rlhf.losses.types import LossOutput
from rlhf.models import is_peft_model, load_causal_lm, load_tokenizer, save_pretrained_model, supports_branches
from rlhf.models.attention import use_packed_attention
from rlhf.models.forward import CausalLMLogprobs, sequence_logprobs
from rlhf.models.reference import ReferenceLogprobs
from rlhf.recipes._shared import micro_batch_size, pad_token_id, prepare_trainable, read_rows
from rlhf.train import loop
from rlhf.train.config import TrainConfig
from rlhf.train.distributed import all_reduce_sum, init_distributed, shard_rows

logger = logging.getLogger(__name__)


@dataclass
class DPOConfig(TrainConfig):
    output_dir: str = option("runs/dpo", "where config.yaml, metrics.jsonl, checkpoints/ and final/ are written")
    lr: float = option(5e-7, "peak learning rate (AdamW); DPO wants a small one")
    beta: float = option(0.1, "strength of the KL regularisation to the reference (lambda for ORPO, beta for SimPO)")
    loss_type: Literal["sigmoid", "robust", "ipo", "hinge", "simpo", "orpo"] = option(
        "sigmoid", "sigmoid (DPO), robust, ipo, hinge, simpo or orpo (see rlhf.losses.preference)")
    label_smoothing: float = option(0.0, "assumed label-noise rate for sigmoid (cDPO) and robust")
    simpo_gamma: float = option(0.5, "SimPO target reward margin gamma")
    rpo_alpha: float = option(0.0, "weight of an NLL term on the chosen completion (RPO); 0 disables it")
    ref_model: str | None = option(None, "reference model spec; default: the starting policy")
    precompute_ref: bool = option(True, "compute reference log-probs once before training (else on the fly)")
    max_length: int = option(1024, "longest prompt + completion in tokens")
    truncation: Literal["error", "truncate", "drop"] = option("error", "what to do with a longer pair: error, truncate it, or drop it (counted)")
    packing: bool = option(True, "padding-free batches: sequences concatenated with per-sequence position ids")
    append_eos: bool = option(True, "end chosen and rejected with EOS (false: score the completions exactly as written)")


class Reference(Enum):
    """Where a step's reference log-probs come from; decided once, before training."""

    NONE = "none"  # a reference-free loss (SimPO, ORPO)
    PRECOMPUTED = "precomputed"  # stored in the examples before training, batched by `_collate`
    ON_THE_FLY = "on_the_fly"  # a no-grad forward of the reference in every step


def reference_mode(spec: PreferenceLoss, config: DPOConfig) -> Reference:
    if not spec.needs_reference:
        return Reference.NONE
    return Reference.PRECOMPUTED if config.precompute_ref else Reference.ON_THE_FLY


def check_config(config: DPOConfig, spec: PreferenceLoss) -> None:
    """Settings that the chosen loss would silently ignore are errors (before any model loads)."""
    if config.label_smoothing and not spec.uses_label_smoothing:
        users = sorted(name for name, loss in PREFERENCE_LOSSES.items() if loss.uses_label_smoothing)
        raise ConfigError(
            f"config keys 'label_smoothing' ({config.label_smoothing}) and 'loss_type' ({config.loss_type!r}): "
            f"loss_type {config.loss_type!r} ignores label_smoothing; only {', '.join(users)} use it. "
            "Set label_smoothing=0 or pick one of those loss types."
        )


def _collate(examples: list[dict], *, pad_token_id: int, packed: bool, share_prompts: bool = False,
             with_reference: bool = False) -> dict:
    """`collate_pairs`, plus the precomputed reference sums (B,) when `with_reference`."""
    batch = collate_pairs(examples, pad_token_id=pad_token_id, packed=packed, share_prompts=share_prompts)
    if with_reference:
        batch["ref_chosen"] = torch.tensor([e["ref_chosen"] for e in examples], dtype=torch.float64)
        batch["ref_rejected"] = torch.tensor([e["ref_rejected"] for e in examples], dtype=torch.float64)
    return batch


def _stored_reference(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return batch["ref_chosen"], batch["ref_rejected"]


def pair_logprobs(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of the chosen (B,) and rejected (B,) sequences in one forward pass."""
    sums = sequence_logprobs(model, batch)  # (2B,): chosen then rejected
    return sums[: batch["num_pairs"]], sums[batch["num_pairs"] :]


def _step(model, batch, *, spec: PreferenceLoss, beta: float, hparams: dict, rpo_alpha: float,
          reference_logprobs: Callable[[dict], tuple[torch.Tensor, torch.Tensor]] | None) -> LossOutput:
    """`reference_logprobs(batch)`: the (B,) reference sums of chosen and rejected; None for reference-free losses."""
    chosen, rejected = pair_logprobs(model, batch)
    b = batch["num_pairs"]
    ref_chosen, ref_rejected = reference_logprobs(batch) if reference_logprobs is not None else (None, None)
    logprobs = PairLogprobs(chosen=chosen, rejected=rejected, chosen_tokens=batch["num_tokens"][:b],
                      rejected_tokens=batch["num_tokens"][b:], ref_chosen=ref_chosen, ref_rejected=ref_rejected)
    out = spec.fn(logprobs, beta=beta, **hparams)
    if rpo_alpha > 0:
        nll = -(chosen / batch["num_tokens"][:b]).sum()  # mean token NLL of each chosen completion, summed over pairs
        out = LossOutput(out.loss + rpo_alpha * nll, {**out.metrics, "nll_chosen": nll.detach()})
    return out


def dpo(config: DPOConfig, *, train_data=None, eval_data=None, model=None, tokenizer=None,
        ref_model=None, callbacks=None) -> loop.TrainResult:
    """Train a policy on preference pairs per `config`."""
    ctx = init_distributed()
    spec = get_preference_loss(config.loss_type)  # an unknown loss_type fails here, before any work
    check_config(config, spec)
    mode = reference_mode(spec, config)
    loop.check_train_config(config)
    loop.check_resume(config)

    # step 1. read and validate every pair before touching a model
    train_rows = read_rows(train_data if train_data is not None else config.data, "preference")
    eval_rows = read_rows(eval_data if eval_data is not None else config.eval_data, "preference", required=False)

    # step 2. tokenise: prompt ids + chosen / rejected completion ids (EOS once, unless append_eos=false)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    encode = partial(tokenize_pairs, tokenizer=tokenizer, max_length=config.max_length, truncation=config.truncation,
                     append_eos=config.append_eos)
    examples, stats = encode(train_rows)
    eval_examples = None
    if eval_rows is not None:
        eval_examples, _ = encode(eval_rows)
    if ctx.is_main:
        logger.info("pairs: %s", stats)

    # step 3. the policy (optionally LoRA) and, when the loss needs one, the reference: `ref_model`,
    # else `config.ref_model`, else the starting policy (adapters off under LoRA; precomputed with the
    # policy itself before its first update; on the fly, a frozen copy of it)
    dtype = getattr(torch, config.dtype)
    if model is None:
        model = load_causal_lm(config.model, dtype=dtype, trust_remote_code=config.trust_remote_code)
    if mode is not Reference.NONE and ref_model is None:
        if config.ref_model is not None:
            ref_model = load_causal_lm(config.ref_model, dtype=dtype, trust_remote_code=config.trust_remote_code)
        elif mode is Reference.ON_THE_FLY and not config.lora.enabled and not is_peft_model(model):
            ref_model = copy.deepcopy(model)  # the starting weights, whichever way the policy arrived
    model = prepare_trainable(model, config, ctx.device)
    policy = CausalLMLogprobs(model)
    pad_id = pad_token_id(tokenizer)
    micro = micro_batch_size(config, ctx)

    if ref_model is not None:
        use_packed_attention(ref_model)  # as its log-prob wrapper will: branches need it
    # packed rows hold each prompt once, chosen and rejected branching from it, when every model allows
    share = supports_branches(model) and (ref_model is None or supports_branches(ref_model))
    reference_logprobs = None
    if mode is not Reference.NONE:
        reference = ReferenceLogprobs(policy=policy, ref_model=ref_model.to(ctx.device) if ref_model is not None else None,
                                   collate=partial(_collate, pad_token_id=pad_id, packed=config.packing,
                                                   share_prompts=share),
                                   pair_logprobs=pair_logprobs)
        ref_model = None
        if mode is Reference.PRECOMPUTED:
            # step 3b. reference log-probs once, each rank its share, cached on disk by weights + data
            for part, label in ((examples, "train"), (eval_examples, "eval")):
                if part:
                    reference.attach(part, batch_size=micro, device=ctx.device, label=label,
                                     rows=shard_rows(list(range(len(part))), ctx),
                                     reduce=partial(all_reduce_sum, ctx=ctx), write_cache=ctx.is_main,
                                     progress=ctx.is_main)
            reference.release()  # the reference copy, if any, is not needed any more
            reference_logprobs = _stored_reference
        else:
            reference_logprobs = reference.pair_logprobs
    collate = partial(_collate, pad_token_id=pad_id, packed=config.packing, share_prompts=share,
                      with_reference=mode is Reference.PRECOMPUTED)

    # step 4. train; the loop normalises by the number of pairs in the window
    step_fn = partial(_step, spec=spec, beta=config.beta, rpo_alpha=config.rpo_alpha,
                      hparams={"label_smoothing": config.label_smoothing, "simpo_gamma": config.simpo_gamma},
                      reference_logprobs=reference_logprobs)
    count_pairs = lambda batch: int(batch["num_pairs"])  # noqa: E731
    evaluate = None
    if eval_examples:
        evaluate = partial(loop.evaluate_loss, examples=eval_examples, collate=collate, step_fn=step_fn,
                           count_units=count_pairs, batch_size=micro, ctx=ctx)
    parts = loop.LoopParts(
        model=policy, examples=examples, collate=collate, step_fn=step_fn, count_units=count_pairs,
        save_final=lambda wrapped, path: save_pretrained_model(wrapped.model, tokenizer, path),
        evaluate=evaluate, callbacks=list(callbacks or []),
    )
    return loop.run(config, parts, ctx)
