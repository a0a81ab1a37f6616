"""The training forward pass: hidden states from the backbone, the LM head on labelled positions only."""

from __future__ import annotations

import torch

from rlhf.models.attention import use_packed_attention
from rlhf.models.dropout import eval_mode
from rlhf.models.lora import hf_model
from rlhf.ops.logprobs import logprobs_from_hidden, logprobs_from_logits, sequence_sums


# How far the shortcut's log-probs may differ from the model's own, in units of the logits'
# rounding error: 16-bit logits carry ~eps * |logit| of error on both paths.
_SHORTCUT_ATOL = 1e-4
_SHORTCUT_ROUNDING = 4.0


class CausalLMLogprobs(torch.nn.Module):
    """Wraps a causal LM so that forward returns log pi(target) at labelled positions.

    It is this wrapper that DistributedDataParallel wraps, so the whole computation,
    LM head included, runs inside DDP's forward. Logits are never built for prompt or
    pad positions, and never for the whole vocabulary of every position at once.
    """

    def __init__(self, model: torch.nn.Module, *, chunk_size: int = 1024, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        # log-probs of softmax(logits / temperature): online recipes pass their sampling
        # temperature, so training, rollout and reference log-probs describe one distribution
        self.temperature = float(temperature)
        use_packed_attention(model)  # padding-free batches cost per document, not per row
        self._plain_head = _declares_plain_head(model) and _shortcut_matches_forward(model)

    @property
    def uses_hidden_shortcut(self) -> bool:
        """Whether log-probs come from final hidden states x LM-head weight (else the model's own forward)."""
        return self._plain_head

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, label_positions: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids, labels: (B, T), labels already shifted (labels[b, t] is the token after t; -100: no loss).

        Returns (N,) log-probs of the N labelled targets, in row-major (b, t) order.
        With `label_positions` (N,), indices into the flattened (B * T) positions, `labels` are
        the (N,) targets predicted there instead; a position may predict several targets (the
        last prompt token of a shared prompt predicts each completion's first token).
        """
        targets = label_targets(labels, label_positions)  # (N,)
        if not self._plain_head:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                use_cache=False).logits
            return logprobs_from_logits(at_labels(logits, labels, label_positions) / self.temperature, targets)
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)  # (B, T, H)
        return self.logprobs_from_hidden(at_labels(hidden, labels, label_positions), targets)

    def hidden_states(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        """(B, T, H) the backbone's final hidden states (what the LM head reads)."""
        return hf_model(self.model).base_model(input_ids=input_ids, attention_mask=attention_mask,
                                                position_ids=position_ids, use_cache=False).last_hidden_state

    def logprobs_from_hidden(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N,) log-probs of targets (N,) from hidden states (N, H), through the LM head in chunks."""
        if not self._plain_head:
            raise ValueError("this model's LM head has a bias or rescales its logits; it needs the model's own forward")
        weight = hf_model(self.model).get_output_embeddings().weight  # (V, H)
        if self.temperature != 1.0:  # a bias-free head: (h W^T) / T == (h / T) W^T
            hidden = hidden / self.temperature
        return logprobs_from_hidden(hidden, weight, targets, chunk_size=self.chunk_size)


def _declares_plain_head(model: torch.nn.Module) -> bool:
    """Cheap early out: a head bias, Gemma 2 soft-capping or Cohere's logit_scale rule the shortcut out."""
    config = hf_model(model).config
    head = hf_model(model).get_output_embeddings()
    return (head is not None and getattr(head, "bias", None) is None
            and getattr(config, "final_logit_softcapping", None) is None and getattr(config, "logit_scale", None) is None)


def _shortcut_matches_forward(model: torch.nn.Module, num_tokens: int = 8) -> bool:
    """Whether final hidden states x LM-head weight give the model's own log-probs on a few tokens.

    Models rescale logits in their forward in ways no config flag announces (Granite and
    MiniCPM3 divide by `logits_scaling`, Falcon-H1 multiplies by `lm_head_multiplier`), so the
    shortcut is checked against the forward once rather than trusted.
    """
    hf = hf_model(model)
    weight = hf.get_output_embeddings().weight  # (V, H)
    if weight.device.type == "meta":  # no values to compare yet: trust the config-level checks
        return True
    ids = (torch.arange(num_tokens, device=weight.device) * 7919 % weight.shape[0]).unsqueeze(0)  # (1, T)
    with eval_mode(model), torch.no_grad():  # dropout would make the two passes differ for no fault of the shortcut
        own = model(input_ids=ids, use_cache=False).logits[0]  # (T, V)
        hidden = hf.base_model(input_ids=ids, use_cache=False).last_hidden_state[0]  # (T, H)
        shortcut = hidden @ weight.T  # (T, V)
    tolerance = _SHORTCUT_ATOL + _SHORTCUT_ROUNDING * torch.finfo(own.dtype).eps * own.float().abs().max().item()
    gap = (torch.log_softmax(own.float(), -1) - torch.log_softmax(shortcut.float(), -1)).abs().max().item()
    return gap <= tolerance


def sequence_logprobs(model: torch.nn.Module, batch: dict, prefix: str = "") -> torch.Tensor:
    """log pi(completion | prompt) summed per sequence, (S,), for a `collate_sequences` or a
    `collate_pairs_sharing_prompts` batch (flat targets at `label_positions`).

    `model` is a `CausalLMLogprobs` (or DDP around one); `prefix` selects a second batch stored
    under prefixed keys (KTO's mismatched `kl_` sequences).
    """
    labels, label_positions = batch[prefix + "labels"], batch.get(prefix + "label_positions")
    logprobs = model(input_ids=batch[prefix + "input_ids"], labels=labels,
                     attention_mask=batch.get(prefix + "attention_mask"),
                     position_ids=batch.get(prefix + "position_ids"), label_positions=label_positions)  # (N,)
    segments = batch[prefix + "segment_ids"]
    if label_positions is None:  # (B, T) segment ids -> those of the N labelled positions
        segments = segments[labels != -100]
    return sequence_sums(logprobs, segments, batch[prefix + "last_index"].shape[0])


def at_labels(x: torch.Tensor, labels: torch.Tensor, label_positions: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, ...) -> (N, ...): the entries at the N positions that predict a target.

    Without `label_positions` those are where the shifted `labels` (B, T) are not -100, row-major;
    with them (N,), indices into the flattened (B * T) positions (`Rollout.packed_groups`, where the
    last token of a shared prompt predicts each of its completions' first tokens).
    """
    return x[labels != -100] if label_positions is None else x.flatten(0, 1)[label_positions]


def label_targets(labels: torch.Tensor, label_positions: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) the targets `at_labels` pairs with its N positions: the non -100 shifted labels, row-major,
    or `labels` itself when it comes flat with `label_positions`."""
    return labels[labels != -100] if label_positions is None else labels
