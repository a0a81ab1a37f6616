"""Steps that the online recipes (PPO, GRPO) take the same way: prompts, sampling, scoring."""

from __future__ import annotations

import logging

import torch

from rlhf.data.prompts import tokenize_prompts
from rlhf.models import load_tokenizer
from rlhf.recipes._shared import read_rows
from rlhf.rewards import resolve_reward
from rlhf.rollout import GenerationConfig

logger = logging.getLogger(__name__)


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
