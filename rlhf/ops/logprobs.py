"""Per-token log-probabilities without a full-vocabulary fp32 copy of every position.

Shapes: N selected tokens, H hidden size, V vocabulary.
"""

from __future__ import annotations

import torch


def logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] = logits[target] - logsumexp(logits), computed in fp32.

    logits: (N, V); targets: (N,) -> (N,). logsumexp keeps one (N, V) tensor for backward,
    where log_softmax + gather would keep the whole normalised copy as well.
    """
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def logprobs_from_hidden(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         *, chunk_size: int = 1024) -> torch.Tensor:
    """log p(target | hidden) through an output projection `weight` (V, H), `chunk_size` rows at a time.

    hidden: (N, H) only the positions that carry a loss (the LM head is never applied to
    prompt or pad positions); targets: (N,) -> (N,). Chunking bounds the transient
    (chunk, V) softmax workspace.
    """
    if hidden.shape[0] <= chunk_size:
        return logprobs_from_logits(hidden @ weight.T, targets)
    pieces = [
        logprobs_from_logits(h @ weight.T, t)
        for h, t in zip(hidden.split(chunk_size), targets.split(chunk_size))
    ]
    return torch.cat(pieces)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H(p) = logsumexp(z) - sum_v softmax(z)_v z_v. logits: (N, V) -> (N,)."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def sequence_sums(values: torch.Tensor, segment_ids: torch.Tensor, num_sequences: int) -> torch.Tensor:
    """Sum per-token values into their sequences: out[s] = sum_{t: seg[t] = s} values[t].

    values: (N,); segment_ids: (N,) in [0, S) -> (S,). Used to turn the log-probs of the
    labelled positions of a (packed or padded) batch into log pi(y | x) per sequence.
    """
    out = torch.zeros(num_sequences, dtype=values.dtype, device=values.device)
    return out.index_add(0, segment_ids, values)
