"""Supervised fine-tuning and causal-LM pretraining: `rlhf sft`.

Rows are raw text (every token is a target: pretraining), prompt/completion (loss on the
completion only) or chat messages (loss on assistant turns only).

Departures from the usual recipe (TRL SFTTrainer, Ouyang et al. 2022 sec. 3.5):
- `packing=true` (the default) is padding-free: each micro-batch is one row of concatenated
  examples with position ids restarting per example, so no compute is spent on pad tokens
  and attention never crosses examples. The loss equals the padded loss.
- The LM head runs on labelled positions only (see `rlhf.models.forward`).
- The loss is normalised by the number of target tokens in the whole accumulation window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch

from rlhf.config import option
from rlhf.data import collate_packed, collate_padded, count_loss_tokens, tokenize_sft
from rlhf.losses.sft import sft_loss
from rlhf.losses.types import LossOutput
from rlhf.models import load_causal_lm, load_tokenizer, save_pretrained_model
from rlhf.models.forward import CausalLMLogprobs
from rlhf.recipes._shared import micro_batch_size, pad_token_id, prepare_trainable, read_rows, start_run
from rlhf.train import loop
from rlhf.train.config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class SFTConfig(TrainConfig):
    output_dir: str = option("runs/sft", "where config.yaml, metrics.jsonl, checkpoints/ and final/ are written")
    max_length: int = option(1024, "longest tokenised example, prompt included")
    truncation: Literal["error", "truncate", "drop"] = option("error", "what to do with a longer example: error, truncate it, or drop it (counted)")
    packing: bool = option(True, "padding-free batches: examples concatenated with per-example position ids")



def _step(model, batch) -> LossOutput:
    logprobs = model(input_ids=batch["input_ids"], labels=batch["labels"],
                     attention_mask=batch.get("attention_mask"), position_ids=batch.get("position_ids"))
    return sft_loss(logprobs)


def sft(config: SFTConfig, *, train_data=None, eval_data=None, model=None, tokenizer=None,
        callbacks=None) -> loop.TrainResult:
    """Run SFT per `config`. `train_data` / `eval_data` (a list of dicts or a `datasets.Dataset`)
    replace `config.data` / `config.eval_data`; `model` and `tokenizer` replace `config.model`."""
    ctx = start_run(config)

    # step 1. read and validate every row before touching a model
    train_rows = read_rows(train_data if train_data is not None else config.data, "sft")
    eval_rows = read_rows(eval_data if eval_data is not None else config.eval_data, "sft", required=False)

    # step 2. tokenise: chat template, completion/assistant-only labels, EOS once, truncation policy
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    examples, stats = tokenize_sft(train_rows, tokenizer, max_length=config.max_length, truncation=config.truncation)
    if ctx.is_main:
        logger.info("training data: %s", stats)
    eval_examples = None
    if eval_rows is not None:
        eval_examples, eval_stats = tokenize_sft(eval_rows, tokenizer, max_length=config.max_length, truncation=config.truncation)
        if ctx.is_main:
            logger.info("eval data: %s", eval_stats)

    # step 3. the model (optionally with LoRA adapters), wrapped to return target log-probs
    if model is None:
        model = load_causal_lm(config.model, dtype=getattr(torch, config.dtype), trust_remote_code=config.trust_remote_code)
    model = prepare_trainable(model, config, ctx.device)
    policy = CausalLMLogprobs(model)

    # step 4. train: the loop accumulates, clips, steps, logs, checkpoints and resumes
    pad_id = pad_token_id(tokenizer)
    collate = collate_packed if config.packing else partial(collate_padded, pad_token_id=pad_id)
    evaluate = None
    if eval_examples:
        micro = micro_batch_size(config, ctx)
        evaluate = partial(loop.evaluate_loss, examples=eval_examples, collate=collate, step_fn=_step,
                           count_units=count_loss_tokens, batch_size=micro, ctx=ctx)
    parts = loop.LoopParts(
        model=policy,
        examples=examples,
        collate=collate,
        step_fn=_step,
        count_units=count_loss_tokens,
        save_final=lambda wrapped, path: save_pretrained_model(wrapped.model, tokenizer, path),
        evaluate=evaluate,
        callbacks=list(callbacks or []),
    )
    return loop.run(config, parts, ctx)
