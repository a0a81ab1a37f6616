"""The rollout contract: `GenerationConfig` in, `Rollout` out, whatever engine samples.

Shapes: B = number of prompts x G (`num_generations`), group-major (rows ``[i*G:(i+1)*G]``
are prompt i's completions); P padded prompt length; T response length (the longest
completion in the batch, at most `max_new_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


@dataclass
class GenerationConfig:
    """How to sample completions."""

    max_new_tokens: int = 64
    """Most tokens generated per completion (the stopping EOS included)."""
    temperature: float = 1.0
    """Softmax temperature of the sampling distribution; 0 means greedy (argmax) decoding."""
    top_p: float = 1.0
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p; 1 disables."""
    top_k: int = 0
    """Sample from the k most probable tokens only; 0 disables."""
    stop_strings: list[str] = field(default_factory=list)
    """A completion also ends at the token that completes one of these strings (cut out of `completions`)."""
    num_generations: int = 1
    """Completions per prompt (G); rows are group-major."""
    seed: int | None = None
    """Reseed the backend's generator at every call (reproducible rollouts); None: continue its stream."""

    def __post_init__(self):
        def bad(name, expected):
            raise ValueError(f"GenerationConfig.{name} must be {expected}, got {getattr(self, name)!r}")

        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            bad("max_new_tokens", "a positive integer")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or not (
            self.temperature >= 0
        ):
            bad("temperature", "a number >= 0")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not (0 < self.top_p <= 1):
            bad("top_p", "a number in (0, 1]")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            bad("top_k", "an integer >= 0")
        if isinstance(self.num_generations, bool) or not isinstance(self.num_generations, int) or (
            self.num_generations < 1
        ):
            bad("num_generations", "a positive integer")
        if isinstance(self.stop_strings, str) or not all(isinstance(s, str) and s for s in self.stop_strings):
            bad("stop_strings", "a list of non-empty strings")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            bad("seed", "an integer or None")


def sampling_temperature(temperature: float) -> float:
    """What logits are divided by for log-probs: the sampling temperature (1 for greedy, T = 0).

    Rollout, training and reference log-probs all use it, so the KL and the importance ratio
    are those of the distribution that was sampled (TRL divides policy and reference logits by
    the temperature in the same way).
    """
    return float(temperature) if temperature > 0 else 1.0


@dataclass
class Rollout:
    """Sampled completions and what training needs of them, all on the policy's device.

    `logprobs` are log softmax(logits / T)(token) of the policy at the sampling temperature T
    (`sampling_temperature`), *before top-k / top-p* -- what a training forward
    (`CausalLMLogprobs` with the same temperature) computes for the same tokens, so they serve
    as `old_logprobs` without a second forward. Like TRL and OpenRLHF, top-k / top-p truncation
    is not part of these log-probs: the ratio is taken against the tempered policy.
    Generation uses a KV cache and another batch layout than training, so they agree with a
    recomputation to float round-off (about 1e-6 in fp32), not bitwise; a recipe that needs
    exact agreement recomputes them with a training forward.
    """

    prompt_ids: torch.Tensor  # (B, P) long, left-padded
    prompt_mask: torch.Tensor  # (B, P) long, 1 on prompt tokens
    response_ids: torch.Tensor  # (B, T) long, right-padded with the pad id
    response_mask: torch.Tensor  # (B, T) long, 1 on generated tokens up to and including the one that ended it
    logprobs: torch.Tensor  # (B, T) float32, log pi_T(response_ids | ...) at the sampling temperature; 0 off the mask
    truncated: torch.Tensor  # (B,) bool, no EOS / stop string within max_new_tokens
    completions: list[str]  # (B,) decoded masked responses, special tokens and stop strings cut out
    prompt_index: torch.Tensor  # (B,) long, the prompt each row answers (i for rows [i*G:(i+1)*G])
    # (B, T) float32, entropy of the tempered policy at each generated position (0 off the
    # mask), for the metrics; None when a backend does not compute it
    entropy: torch.Tensor | None = None

    @property
    def num_generations(self) -> int:
        """G, the completions per prompt."""
        rows = self.prompt_index.shape[0]
        prompts = int(self.prompt_index.max().item()) + 1 if rows else 1
        return rows // prompts

    def rows_of(self, prompts: list[int]) -> torch.Tensor:
        """(len(prompts) * G,) long: the rows of the given prompts' completions, in that order."""
        group = self.num_generations
        index = torch.as_tensor(prompts, dtype=torch.long, device=self.response_ids.device)
        return (index.unsqueeze(1) * group + torch.arange(group, device=index.device)).flatten()

    def select(self, prompts: list[int]) -> "Rollout":
        """The completions of `prompts` (indices into this rollout's prompts), as a rollout of its
        own: prompt i of the result is prompts[i]. Widths (P, T) are kept; masks say what is real."""
        rows = self.rows_of(prompts)
        group = self.num_generations
        return Rollout(
            prompt_ids=self.prompt_ids[rows], prompt_mask=self.prompt_mask[rows], response_ids=self.response_ids[rows],
            response_mask=self.response_mask[rows], logprobs=self.logprobs[rows], truncated=self.truncated[rows],
            completions=[self.completions[p * group + g] for p in prompts for g in range(group)],
            prompt_index=torch.arange(len(prompts), device=rows.device).repeat_interleave(self.num_generations),
            entropy=self.entropy[rows] if self.entropy is not None else None,
        )

    def packed_sequences(self, ignore_index: int = -100) -> dict[str, torch.Tensor]:
        """prompt + response of every row as one padding-free (1, N) row, for the training forward.

        Returns input_ids, position_ids (restarting at 0 for each row, so per-document attention
        applies) and shifted labels (1, N). Only real tokens are kept: left padding, the pads after
        a row ended, and rows whose response_mask is all 0 (skipped samples) cost nothing. The
        labelled positions come in the order of ``response_mask.bool()`` (row-major), so the (N,)
        log-probs of `CausalLMLogprobs` map back to (B, T) row-major in the response mask.
        """
        ids, labels, positions = [], [], []
        for b in range(self.prompt_ids.shape[0]):
            response = self.response_ids[b][self.response_mask[b].bool()]
            if response.numel() == 0:
                continue
            prompt = self.prompt_ids[b][self.prompt_mask[b].bool()]
            row = torch.cat([prompt, response])
            row_labels = torch.full_like(row, ignore_index)
            row_labels[prompt.numel() - 1: -1] = response
            ids.append(row)
            labels.append(row_labels)
            positions.append(torch.arange(row.numel(), device=row.device))
        if not ids:  # every sample skipped: one dummy token with no label keeps shapes valid
            device = self.prompt_ids.device
            return {"input_ids": self.prompt_ids[:1, -1:], "position_ids": torch.zeros(1, 1, dtype=torch.long, device=device),
                    "labels": torch.full((1, 1), ignore_index, dtype=torch.long, device=device)}
        return {"input_ids": torch.cat(ids)[None], "position_ids": torch.cat(positions)[None],
                "labels": torch.cat(labels)[None]}

    def packed_groups(self) -> dict[str, torch.Tensor]:
        """Like `packed_sequences`, but each prompt appears once, followed by its G completions.

        The completions are branches of their prompt (position ids restart at the prompt's
        length; see `rlhf.models.attention`): each attends to the whole prompt and to itself, never
        to its siblings, so every log-prob equals that of `packed_sequences()`, at the cost of one copy of
        the prompt instead of G. The last prompt token predicts each completion's first token, so
        targets come as (N,) `labels` with their (N,) `label_positions` in the row, in the order of
        ``response_mask.bool()``.
        """
        group = self.num_generations
        ids, positions, targets, label_positions = [], [], [], []
        length = 0
        for first in range(0, self.prompt_ids.shape[0], group):
            rows = [b for b in range(first, first + group) if self.response_mask[b].any()]
            if not rows:
                continue
            prompt = self.prompt_ids[first][self.prompt_mask[first].bool()]
            ids.append(prompt)
            positions.append(torch.arange(prompt.numel(), device=prompt.device))
            last_prompt_token = length + prompt.numel() - 1
            length += prompt.numel()
            for b in rows:
                response = self.response_ids[b][self.response_mask[b].bool()]
                ids.append(response)
                positions.append(torch.arange(prompt.numel(), prompt.numel() + response.numel(), device=prompt.device))
                targets.append(response)
                label_positions.append(torch.cat([torch.tensor([last_prompt_token], device=prompt.device),
                                                  torch.arange(length, length + response.numel() - 1, device=prompt.device)]))
                length += response.numel()
        if not ids:
            return self.packed_sequences()  # every sample skipped: its dummy row
        return {"input_ids": torch.cat(ids)[None], "position_ids": torch.cat(positions)[None],
                "labels": torch.cat(targets), "label_positions": torch.cat(label_positions)}


@runtime_checkable
class RolloutBackend(Protocol):
    """An engine that samples completions: Hugging Face now (`HFRollout`), vLLM later."""

    def generate(self, prompts: list, config: GenerationConfig) -> Rollout:
        """Prompts are strings, chat-message lists or token-id lists; returns B = len(prompts) x G rows."""
        ...
