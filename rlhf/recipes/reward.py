"""Reward modelling on preference pairs: `rlhf reward`.

A scalar head on a causal LM is trained so that r(prompt, chosen) > r(prompt, rejected), with
the Bradley-Terry loss -log sigmoid(r_c - r_r) (Ouyang et al. 2022, eq. 1), an optional per-pair
margin (a `margin` column, Llama 2) and optional reward centring.

Departures from the usual recipe (TRL RewardTrainer):
- chosen and rejected go through the model in one forward pass, padding-free by default;
- sequences carry no trailing EOS, so the score position agrees with transformers' "last
  non-pad token" rule even where pad == EOS (see `rlhf.models.reward`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch

from rlhf.config import ConfigError, option
from rlhf.data import DataError
from rlhf.data.preference import collate_pairs, tokenize_pairs
from rlhf.losses.reward import bradley_terry_loss
from rlhf.losses.types import LossOutput
from rlhf.models import load_tokenizer, save_pretrained_model, supports_branches
from rlhf.models.reward import SequenceScores, load_reward_model
from rlhf.recipes._shared import micro_batch_size, pad_token_id, prepare_trainable, read_rows, start_run
from rlhf.train import loop
from rlhf.train.config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class RewardConfig(TrainConfig):
    output_dir: str = option("runs/reward", "where config.yaml, metrics.jsonl, checkpoints/ and final/ are written")
    lr: float = option(1e-5, "peak learning rate (AdamW)")
    max_length: int = option(1024, "longest prompt + completion in tokens")
    truncation: Literal["error", "truncate", "drop"] = option("error", "what to do with a longer pair: error, truncate it, or drop it (counted)")
    packing: bool = option(True, "padding-free batches: sequences concatenated with per-sequence position ids")
    center_coef: float = option(0.0, "reward centring: adds center_coef * (r_c + r_r)^2 (Eisenstein et al. 2023)")
    use_margin: bool = option(False, "subtract each row's `margin` column inside the sigmoid (Llama 2)")



def _collate(examples: list[dict], *, pad_token_id: int, packed: bool, share_prompts: bool) -> dict:
    batch = collate_pairs(examples, pad_token_id=pad_token_id, packed=packed, share_prompts=share_prompts)
    batch["margin"] = torch.tensor([float(e.get("margin", 0.0)) for e in examples])
    return batch


def _step(model, batch, *, center_coef: float, use_margin: bool) -> LossOutput:
    scores = model(input_ids=batch["input_ids"], last_index=batch["last_index"],
                   attention_mask=batch.get("attention_mask"), position_ids=batch.get("position_ids"))  # (2B,)
    b = batch["num_pairs"]
    return bradley_terry_loss(scores[:b], scores[b:], margin=batch["margin"] if use_margin else None,
                              center_coef=center_coef)


def _check_margins(rows) -> None:
    for row in rows:
        value = row.data.get("margin")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(f"{row.location}: field 'margin': use_margin=true needs a number, got {value!r}")


def reward(config: RewardConfig, *, train_data=None, eval_data=None, model=None, tokenizer=None,
           callbacks=None) -> loop.TrainResult:
    """Train a reward model per `config`; `final/` loads with AutoModelForSequenceClassification."""
    ctx = start_run(config)

    # step 1. read and validate every pair before touching a model
    train_rows = read_rows(train_data if train_data is not None else config.data, "preference")
    eval_rows = read_rows(eval_data if eval_data is not None else config.eval_data, "preference", required=False)
    if config.use_margin:
        _check_margins(train_rows)

    # step 2. tokenise prompt + chosen / rejected, without a trailing EOS (see the module docstring)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)

    def tokenise(rows):
        examples, stats = tokenize_pairs(rows, tokenizer, max_length=config.max_length, truncation=config.truncation,
                                         append_eos=False)
        if config.use_margin and rows is train_rows:
            if stats.dropped:  # margins are matched to examples by position
                raise ConfigError(f"use_margin=true needs every pair kept, but {stats.dropped} were dropped; "
                                 "use truncation=error to find them")
            for row, example in zip(rows, examples):
                example["margin"] = float(row.data["margin"])
        if ctx.is_main:
            logger.info("pairs: %s", stats)
        return examples

    examples = tokenise(train_rows)
    eval_examples = tokenise(eval_rows) if eval_rows is not None else None

    # step 3. the reward model: the LM's backbone plus a fresh scalar head
    pad_id = pad_token_id(tokenizer)
    if model is None:
        model = load_reward_model(config.model, pad_token_id=pad_id, dtype=getattr(torch, config.dtype),
                                  trust_remote_code=config.trust_remote_code)
    model = prepare_trainable(model, config, ctx.device)
    scorer = SequenceScores(model)

    # step 4. train on pairs; the loop normalises by the number of pairs in the window
    # packed rows hold each prompt once, chosen and rejected branching from it, when the attention allows
    collate = partial(_collate, pad_token_id=pad_id, packed=config.packing, share_prompts=supports_branches(model))
    step_fn = partial(_step, center_coef=config.center_coef, use_margin=config.use_margin)
    count_pairs = lambda batch: int(batch["num_pairs"])  # noqa: E731
    evaluate = None
    if eval_examples:
        micro = micro_batch_size(config, ctx)
        evaluate = partial(loop.evaluate_loss, examples=eval_examples, collate=collate, step_fn=step_fn,
                           count_units=count_pairs, batch_size=micro, ctx=ctx)
    parts = loop.LoopParts(
        model=scorer, examples=examples, collate=collate, step_fn=step_fn, count_units=count_pairs,
        save_final=lambda wrapped, path: save_pretrained_model(wrapped.model, tokenizer, path),
        evaluate=evaluate, callbacks=list(callbacks or []),
    )
    return loop.run(config, parts, ctx)
