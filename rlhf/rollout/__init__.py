"""Rollouts: sample completions of prompts from a policy, with what RL training needs of them.

    from rlhf.rollout import GenerationConfig, generate
    rollout = generate(model, prompts, GenerationConfig(num_generations=4, temperature=0.7), tokenizer)
    rollout.completions      # B = len(prompts) x 4 strings, group-major
    rollout.logprobs         # (B, T) old_logprobs, masked by rollout.response_mask

One interface (`RolloutBackend.generate(prompts, config) -> Rollout`); `HFRollout` samples
with a transformers model and its KV cache. A vLLM backend will implement the same protocol.
"""

from __future__ import annotations

import torch

from .base import GenerationConfig, Rollout, RolloutBackend, sampling_temperature
from .hf import HFRollout

__all__ = ["GenerationConfig", "HFRollout", "Rollout", "RolloutBackend", "generate", "sampling_temperature"]


def generate(policy, prompts: list, config: GenerationConfig | None = None, tokenizer=None, *,
             generator=None) -> Rollout:
    """Sample `config.num_generations` completions of every prompt from `policy`.

    `policy` is a `RolloutBackend` (an `HFRollout`, later a vLLM engine), or a transformers
    causal LM (or peft model) with its `tokenizer`, sampled by a fresh `HFRollout` -- whose
    generator, unless `generator` is given or config.seed is set, is seeded from torch's
    global RNG. Keep an `HFRollout` across calls to own the random stream (exact resume).
    """
    config = config if config is not None else GenerationConfig()
    if not isinstance(policy, torch.nn.Module) and isinstance(policy, RolloutBackend):
        if generator is not None:
            return policy.generate(prompts, config, generator=generator)
        return policy.generate(prompts, config)
    if tokenizer is None:
        raise ValueError("generate(model, ...) needs the tokenizer; or pass an HFRollout as the policy")
    return HFRollout(policy, tokenizer, generator=generator).generate(prompts, config)
