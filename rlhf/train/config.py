"""The training keys every command shares (DESIGN.md "Public contracts")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhf.config import option
from rlhf.models.lora import LoraConfig


@dataclass
class TrainConfig:
    model: str = option("smollm2-135m-instruct", "model spec: a local Hugging Face directory or 'smollm2-135m-instruct'")
    data: str | None = option(None, "training data: a JSONL / Parquet file or a `datasets` directory")
    eval_data: str | None = option(None, "held-out data in the same format, evaluated every eval_every steps and at the end")
    output_dir: str = option("runs/run", "where config.yaml, metrics.jsonl, checkpoints/ and final/ are written")
    max_steps: int = option(-1, "optimiser steps to run; -1 means `epochs` full passes over the data")
    epochs: int = option(1, "passes over the training data (when max_steps is -1)")
    batch_size: int = option(8, "dataset rows per optimiser step (global, across all processes)")
    grad_accum: int = option(1, "micro-batches per optimiser step on each process")
    lr: float = option(2e-5, "peak learning rate (AdamW)")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay")
    adam_beta1: float = option(0.9, "AdamW beta1")
    adam_beta2: float = option(0.999, "AdamW beta2")
    adam_eps: float = option(1e-8, "AdamW epsilon")
    lr_scheduler: Literal["constant", "linear", "cosine"] = option("linear", "learning-rate decay after warmup")
    warmup_ratio: float = option(0.0, "fraction of the steps spent warming the learning rate up linearly from 0")
    max_grad_norm: float = option(1.0, "clip the global gradient norm to this (0 disables clipping)")
    max_nonfinite_steps: int = option(3, "abort after this many consecutive steps with a non-finite loss or gradient")
    seed: int = option(0, "random seed for data order, initialisation and sampling")
    save_every: int = option(0, "write a resumable checkpoint every N steps (0: only final/)")
    keep_checkpoints: int = option(2, "how many recent checkpoints to keep")
    resume: bool = option(False, "continue from the newest complete checkpoint in output_dir/checkpoints")
    resume_from: str | None = option(None, "continue from this checkpoint directory (e.g. an older output_dir/checkpoints/step-N)")
    eval_every: int = option(0, "evaluate on eval_data every N steps (0: only at the end)")
    report_to: str = option("none", "extra loggers, comma-separated: tensorboard, wandb, trackio (used when installed)")
    progress: bool = option(True, "show a progress bar")
    disable_dropout: bool = option(True, "turn the model's (and LoRA's) dropout off, as TRL does: PPO's first ratio is then 1 and DPO's first margin 0")
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory")
    dtype: Literal["float32", "bfloat16", "float16"] = option("float32", "parameter dtype (float32 is the fast one on CPU)")
    trust_remote_code: bool = option(False, "allow model code from the model directory to run")
    threads: int = option(0, "torch intra-op threads on CPU (0: leave torch's default)")
    lora: LoraConfig = option(LoraConfig(), "LoRA adapters")
