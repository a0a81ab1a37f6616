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

import logging
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch

from rlhf.config import option
from rlhf.data.preference import collate_pairs, tokenize_pairs
from rlhf.losses.preference import PairLogps, get_preference_loss
from rlhf.losses.types import LossOutput
from rlhf.models import is_peft_model, load_causal_lm, load_tokenizer, save_pretrained_model
from rlhf.models.forward import CausalLMLogprobs, sequence_logps
from rlhf.models.reference import ReferenceLogps
from rlhf.recipes._shared import micro_batch_size, pad_token_id, prepare_trainable, read_rows
from rlhf.train import loop
from rlhf.train.config import TrainConfig
from rlhf.train.distributed import init_distributed

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



def _collate(examples: list[dict], *, pad_token_id: int, packed: bool) -> dict:
    batch = collate_pairs(examples, pad_token_id=pad_token_id, packed=packed)
    if "ref_chosen" in examples[0]:
        batch["ref_chosen"] = torch.tensor([e["ref_chosen"] for e in examples], dtype=torch.float64)
        batch["ref_rejected"] = torch.tensor([e["ref_rejected"] for e in examples], dtype=torch.float64)
    return batch


def pair_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of the chosen (B,) and rejected (B,) sequences in one forward pass."""
    sums = sequence_logps(model, batch)  # (2B,): chosen then rejected
    return sums[: batch["num_pairs"]], sums[batch["num_pairs"] :]


def _step(model, batch, *, loss_type: str, beta: float, hparams: dict, rpo_alpha: float,
          reference: ReferenceLogps | None) -> LossOutput:
    spec = get_preference_loss(loss_type)
    chosen, rejected = pair_logps(model, batch)
    b = batch["num_pairs"]
    if spec.needs_reference and "ref_chosen" not in batch:
        batch["ref_chosen"], batch["ref_rejected"] = reference.pair_logps(batch)  # on the fly
    logps = PairLogps(chosen=chosen, rejected=rejected, chosen_tokens=batch["num_tokens"][:b],
                      rejected_tokens=batch["num_tokens"][b:],
                      ref_chosen=batch.get("ref_chosen"), ref_rejected=batch.get("ref_rejected"))
    out = spec.fn(logps, beta=beta, **hparams)
    if rpo_alpha > 0:
        nll = -(chosen / batch["num_tokens"][:b]).sum()  # mean token NLL of each chosen completion, summed over pairs
        out = LossOutput(out.loss + rpo_alpha * nll, {**out.metrics, "nll_chosen": nll.detach()})
    return out


def dpo(config: DPOConfig, *, train_data=None, eval_data=None, model=None, tokenizer=None,
        ref_model=None, callbacks=None) -> loop.TrainResult:
    """Train a policy on preference pairs per `config`."""
    ctx = init_distributed()
    spec = get_preference_loss(config.loss_type)  # an unknown loss_type fails here, before any work
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

    # step 3. the policy (optionally LoRA) and, when the loss needs one, the reference
    if model is None:
        model = load_causal_lm(config.model, dtype=getattr(torch, config.dtype), trust_remote_code=config.trust_remote_code)
    model = prepare_trainable(model, config, ctx.device)
    policy = CausalLMLogprobs(model)
    pad_id = pad_token_id(tokenizer)
    collate = partial(_collate, pad_token_id=pad_id, packed=config.packing)
    micro = micro_batch_size(config, ctx)

    reference = None
    if spec.needs_reference:
        if ref_model is None and config.ref_model is not None:
            ref_model = load_causal_lm(config.ref_model, dtype=getattr(torch, config.dtype),
                                       trust_remote_code=config.trust_remote_code).to(ctx.device)
        if ref_model is None and not is_peft_model(model) and not config.precompute_ref:
            # on-the-fly needs a frozen copy of the starting weights
            ref_model = load_causal_lm(config.model, dtype=getattr(torch, config.dtype),
                                       trust_remote_code=config.trust_remote_code).to(ctx.device)
        reference = ReferenceLogps(policy=policy, ref_model=ref_model, collate=collate, pair_logps=pair_logps)
        if config.precompute_ref:
            # step 3b. reference log-probs once, cached on disk by weights + data
            reference.attach(examples, batch_size=micro, ctx=ctx, label="train")
            if eval_examples:
                reference.attach(eval_examples, batch_size=micro, ctx=ctx, label="eval")
            reference = ref_model = reference.release()  # the reference copy, if any, is not needed any more

    # step 4. train; the loop normalises by the number of pairs in the window
    step_fn = partial(_step, loss_type=config.loss_type, beta=config.beta, rpo_alpha=config.rpo_alpha,
                      hparams={"label_smoothing": config.label_smoothing, "simpo_gamma": config.simpo_gamma},
                      reference=reference)
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
