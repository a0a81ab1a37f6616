"""Kahneman-Tversky optimisation on unpaired feedback: `rlhf kto`.

Rows are (prompt, completion, label): a thumbs up or down, no pairs needed (Ethayarajh et al.
2024). The loss compares each sample's implied reward beta * log(pi / pi_ref) with a reference
point z_0, the policy's KL to the reference estimated on mismatched (prompt_i, completion_j)
pairs of the same micro-batch.

Departures from the paper / TRL KTOTrainer:
- z_0 is estimated per micro-batch (as TRL does per device batch), so unlike the other
  recipes, grad_accum changes the result slightly;
- the mismatched pass runs without autograd (z_0 carries no gradient), as a separate batch;
- reference log-probs are computed on the fly: with LoRA by disabling the adapters, otherwise
  with a frozen copy of the starting model.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch

from rlhf.config import option
from rlhf.data.preference import collate_unpaired, tokenize_unpaired
from rlhf.losses.kto import kto_loss
from rlhf.losses.types import LossOutput
from rlhf.models import is_peft_model, load_causal_lm, load_tokenizer, save_pretrained_model
from rlhf.models.forward import CausalLMLogprobs, sequence_logprobs
from rlhf.models.reference import ReferenceLogprobs
from rlhf.recipes._shared import micro_batch_size, pad_token_id, prepare_trainable, read_rows
from rlhf.train import loop
from rlhf.train.config import TrainConfig
from rlhf.train.distributed import init_distributed

logger = logging.getLogger(__name__)


@dataclass
class KTOConfig(TrainConfig):
    output_dir: str = option("runs/kto", "where config.yaml, metrics.jsonl, checkpoints/ and final/ are written")
    lr: float = option(5e-7, "peak learning rate (AdamW)")
    beta: float = option(0.1, "scale of the implied reward beta * log(pi / pi_ref)")
    loss_type: Literal["kto"] = option("kto", "kto (the only unpaired loss so far)")
    desirable_weight: float = option(1.0, "weight of thumbs-up samples (raise it when they are rarer)")
    undesirable_weight: float = option(1.0, "weight of thumbs-down samples")
    ref_model: str | None = option(None, "reference model spec; default: the starting policy")
    max_length: int = option(1024, "longest prompt + completion in tokens")
    truncation: Literal["error", "truncate", "drop"] = option("error", "what to do with a longer row: error, truncate it, or drop it (counted)")
    packing: bool = option(True, "padding-free batches: sequences concatenated with per-sequence position ids")


def matched_and_mismatched_logprobs(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) log-probs of the matched sequences and of the mismatched `kl_` ones."""
    return sequence_logprobs(model, batch), sequence_logprobs(model, batch, prefix="kl_")


def _step(model, batch, *, beta: float, desirable_weight: float, undesirable_weight: float,
          reference: ReferenceLogprobs) -> LossOutput:
    with torch.no_grad():  # z_0 is a detached reference point: no graph for the mismatched pass
        kl_logprobs = sequence_logprobs(model, batch, prefix="kl_")
    logprobs = sequence_logprobs(model, batch)
    ref_logprobs, ref_kl_logprobs = reference.pair_logprobs(batch)
    return kto_loss(logprobs, ref_logprobs.to(logprobs.dtype), batch["desirable"], kl_logprobs, ref_kl_logprobs.to(logprobs.dtype),
                    beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)


def kto(config: KTOConfig, *, train_data=None, eval_data=None, model=None, tokenizer=None,
        ref_model=None, callbacks=None) -> loop.TrainResult:
    """Train a policy on unpaired thumbs-up / thumbs-down feedback per `config`."""
    ctx = init_distributed()
    loop.check_train_config(config)
    loop.check_resume(config)

    # step 1. read and validate every row before touching a model
    train_rows = read_rows(train_data if train_data is not None else config.data, "unpaired")
    eval_rows = read_rows(eval_data if eval_data is not None else config.eval_data, "unpaired", required=False)
    labels = [bool(row.data["label"]) for row in train_rows]
    if all(labels) or not any(labels):
        raise ValueError(f"KTO needs both desirable and undesirable rows; every training row has label={labels[0]}")

    # step 2. tokenise prompt + completion (EOS once)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    examples, stats = tokenize_unpaired(train_rows, tokenizer, max_length=config.max_length, truncation=config.truncation)
    eval_examples = None
    if eval_rows is not None:
        eval_examples, _ = tokenize_unpaired(eval_rows, tokenizer, max_length=config.max_length, truncation=config.truncation)
    if ctx.is_main:
        logger.info("rows: %s", stats)

    # step 3. the policy, and the reference: `ref_model`, else `config.ref_model`, else the starting
    # policy (LoRA adapters off, or a frozen copy of it)
    dtype = getattr(torch, config.dtype)
    if model is None:
        model = load_causal_lm(config.model, dtype=dtype, trust_remote_code=config.trust_remote_code)
    if ref_model is None:
        if config.ref_model is not None:
            ref_model = load_causal_lm(config.ref_model, dtype=dtype, trust_remote_code=config.trust_remote_code)
        elif not config.lora.enabled and not is_peft_model(model):
            ref_model = copy.deepcopy(model)  # the starting weights, whichever way the policy arrived
    model = prepare_trainable(model, config, ctx.device)
    policy = CausalLMLogprobs(model)
    pad_id = pad_token_id(tokenizer)
    collate = partial(collate_unpaired, pad_token_id=pad_id, packed=config.packing)
    reference = ReferenceLogprobs(policy=policy, ref_model=ref_model.to(ctx.device) if ref_model is not None else None,
                               collate=collate, pair_logprobs=matched_and_mismatched_logprobs)

    # step 4. train; the loop normalises by the number of samples in the window
    step_fn = partial(_step, beta=config.beta, desirable_weight=config.desirable_weight,
                      undesirable_weight=config.undesirable_weight, reference=reference)
    count_samples = lambda batch: int(batch["num_samples"])  # noqa: E731
    evaluate = None
    if eval_examples:
        evaluate = partial(loop.evaluate_loss, examples=eval_examples, collate=collate, step_fn=step_fn,
                           count_units=count_samples, batch_size=micro_batch_size(config, ctx), ctx=ctx)
    parts = loop.LoopParts(
        model=policy, examples=examples, collate=collate, step_fn=step_fn, count_units=count_samples,
        save_final=lambda wrapped, path: save_pretrained_model(wrapped.model, tokenizer, path),
        evaluate=evaluate, callbacks=list(callbacks or []),
    )
    return loop.run(config, parts, ctx)
