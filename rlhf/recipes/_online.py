"""Steps that the online recipes (PPO, GRPO) take the same way: prompts, models, sampling, scoring."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch

from rlhf.config import option

from rlhf.data.prompts import tokenize_prompts
from rlhf.models import is_peft_model, load_causal_lm, load_tokenizer
from rlhf.models.forward import CausalLMLogprobs
from rlhf.models.reference import ReferenceLogps
from rlhf.recipes._shared import prepare_trainable, read_rows
from rlhf.rewards import resolve_reward
from rlhf.rollout import GenerationConfig
from rlhf.train.config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class OnlineConfig(TrainConfig):
    """What every online recipe takes beyond training: the reward, sampling, prompts, reference."""

    reward: str | None = option(None, "reward source spec: reward-model dir, module:function, file.py:function, judge:<model>, http(s)://...")
    max_new_tokens: int = option(64, "longest completion in tokens")
    temperature: float = option(1.0, "sampling temperature")
    top_p: float = option(1.0, "nucleus sampling threshold (1 disables)")
    top_k: int = option(0, "sample from the k most likely tokens (0 disables)")
    stop_strings: list[str] = option([], "a completion also ends at any of these strings")
    max_prompt_length: int = option(512, "longest prompt in tokens")
    prompt_truncation: Literal["error", "drop"] = option("error", "a longer prompt is an error, or dropped (counted)")
    ref_model: str | None = option(None, "reference model spec; default: the starting policy")


def load_prompts_and_reward(config, *, train_data, reward, tokenizer, ctx):
    """Validated, tokenised prompts and the resolved reward source, before any policy loads.

    Returns (examples, reward_fn, reward_spec, tokenizer).
    """
    rows = read_rows(train_data if train_data is not None else config.data, "prompt")
    spec = reward if reward is not None else config.reward
    if spec is None:
        raise ValueError("no reward: set reward=SPEC (a reward-model dir, module:function, judge:<model> or a URL)")
    columns = sorted({k for row in rows for k in row.data if k != "prompt"})
    reward_fn = resolve_reward(spec, columns=columns, device=str(ctx.device))
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    examples, stats = tokenize_prompts(rows, tokenizer, max_length=config.max_prompt_length, truncation=config.prompt_truncation)
    if ctx.is_main:
        logger.info("prompts: %s", stats)
    return examples, reward_fn, spec, tokenizer


def load_policy_and_reference(config, *, model, ref_model, ctx, with_reference: bool = True):
    """The trainable policy (`config.lora` applied, on the device) and its reference log-probs.

    The reference is the base with adapters off under LoRA (no second copy), else `ref_model`,
    `config.ref_model` or a frozen copy of `config.model`; with_reference=False loads none.
    Returns (model, CausalLMLogprobs(model), ReferenceLogps | None).
    """
    dtype = getattr(torch, config.dtype)
    if model is None:
        model = load_causal_lm(config.model, dtype=dtype, trust_remote_code=config.trust_remote_code)
    model = prepare_trainable(model, config, ctx.device)
    policy = CausalLMLogprobs(model)
    if not with_reference:
        return model, policy, None
    if ref_model is None and (config.ref_model is not None or not is_peft_model(model)):
        ref_model = load_causal_lm(config.ref_model or config.model, dtype=dtype, trust_remote_code=config.trust_remote_code)
    reference = ReferenceLogps(policy=policy, ref_model=ref_model.to(ctx.device) if ref_model is not None else None)
    return model, policy, reference


def collate_prompts(examples: list[dict]) -> dict:
    return {"prompt_ids": [e["prompt_ids"] for e in examples], "prompts": [e["prompt"] for e in examples],
            "columns": [e["columns"] for e in examples]}


def sample(backend, batch: dict, config, *, step: int, rank: int, index: int):
    """G completions per prompt from a generator seeded by (seed, step, rank, micro-batch), so a
    resumed run samples exactly what the uninterrupted one did."""
    generation = GenerationConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                  top_p=config.top_p, top_k=config.top_k, stop_strings=list(config.stop_strings),
                                  num_generations=config.num_generations)
    seed = (config.seed * 1_000_003 + step * 10_007 + rank * 101 + index) % (2**63)
    return backend.generate(batch["prompt_ids"], generation, generator=torch.Generator().manual_seed(seed))


def score(reward_fn, batch: dict, completions: list[str], group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) scores and (B,) validity (False where the reward source returned None, scored 0)."""
    names = sorted(batch["columns"][0]) if batch["columns"] else []
    rewards = reward_fn([p for p in batch["prompts"] for _ in range(group_size)], completions,
                        **{k: [c.get(k) for c in batch["columns"] for _ in range(group_size)] for k in names})
    valid = torch.tensor([r is not None for r in rewards])
    return torch.tensor([float(r) if r is not None else 0.0 for r in rewards]), valid
