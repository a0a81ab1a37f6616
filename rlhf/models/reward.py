"""Reward models: a scalar head on a causal LM (`AutoModelForSequenceClassification`, one label).

The score of a sequence is the head applied to the hidden state of its last real token.
Our training forward reads that position from the collator's `last_index`, which is right
under left padding, right padding and packing alike. `transformers` reads "the last token that
is not pad_token_id", the same position as long as a sequence does not end in the pad token,
which is why reward data is tokenised without a trailing EOS (SmolLM2's pad is its EOS).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .attention import use_packed_attention
from .forward import at_labels
from .loading import check_remote_code, quiet_progress_bars, resolve_model_dir
from .lora import hf_model

logger = logging.getLogger(__name__)


def load_reward_model(spec: str | Path, *, pad_token_id: int, dtype: torch.dtype = torch.float32,
                      trust_remote_code: bool = False, cache_dir: str | Path | None = None,
                      zero_new_head: bool = False):
    """A one-label `AutoModelForSequenceClassification` from a causal LM or reward model directory.

    From a causal LM the backbone weights load and the score head is new: random (std =
    initializer_range), or zero with `zero_new_head` (a critic's values then start at 0); from a
    saved reward model everything loads.
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    model_dir = resolve_model_dir(spec, cache_dir=cache_dir)
    check_remote_code(model_dir, trust_remote_code)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report calls a new head "MISSING"; we say what it means below
    try:
        with quiet_progress_bars():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                model_dir, num_labels=1, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
                attn_implementation="sdpa", pad_token_id=pad_token_id, output_loading_info=True,
            )
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = pad_token_id  # transformers needs it to find the last token of a padded batch
    head_keys = [k for k in info["missing_keys"] if k.split(".")[0] in HEAD_NAMES]
    others = sorted(set(info["missing_keys"]) - set(head_keys))
    if others:
        logger.warning("%s: weights missing from the checkpoint, initialised anew: %s", model_dir, ", ".join(others))
    if head_keys:
        if zero_new_head:
            zero_parameters(score_head(model))
        logger.info("%s is a causal LM: its backbone loaded, with a new %s score head", model_dir,
                    "zero" if zero_new_head else "random")
    return model


def zero_parameters(module: torch.nn.Module) -> None:
    """Set every parameter of `module` to 0 (a new value head: every value starts at 0)."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.zero_()


HEAD_NAMES = ("score", "classifier")  # what transformers' sequence-classification classes call their head


def score_head(model: torch.nn.Module) -> torch.nn.Module:
    hf = hf_model(model)
    for name in HEAD_NAMES:
        if hasattr(hf, name):
            return getattr(hf, name)
    raise ValueError(f"{type(hf).__name__} has no 'score' head: not a sequence-classification reward model")


class SequenceScores(torch.nn.Module):
    """Wraps a reward model so forward returns one scalar per sequence, (S,).

    DistributedDataParallel wraps this module, so the head runs inside DDP's forward; the head
    is applied to the S last positions only, not to every token.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        use_packed_attention(model)

    def forward(self, input_ids: torch.Tensor, last_index: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids: (B, T); last_index: (S,) flat indices into the (B*T) positions -> (S,) scores."""
        hf = hf_model(self.model)
        hidden = hf.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state  # (B, T, H)
        last = hidden.reshape(-1, hidden.shape[-1])[last_index]  # (S, H)
        return score_head(self.model)(last).squeeze(-1).float()


class RewardModelScorer:
    """Score (prompt, completion) texts with a trained reward model directory.

        scorer = RewardModelScorer("runs/reward/final")
        scorer(["What is 2+2?"], ["4."])  -> [1.73]

    Texts are re-tokenised with the reward model's own tokenizer (it may differ from a
    policy's); chat prompts (lists of messages) go through its chat template.
    """

    def __init__(self, model_dir: str | Path, *, batch_size: int = 8, max_length: int = 1024,
                 device: str | torch.device = "cpu", trust_remote_code: bool = False):
        from .loading import load_tokenizer

        self.tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
        self.model = load_reward_model(model_dir, pad_token_id=self.tokenizer.pad_token_id,
                                       trust_remote_code=trust_remote_code).to(device).eval()
        self.scores = SequenceScores(self.model)
        self.batch_size, self.max_length, self.device = batch_size, max_length, torch.device(device)

    @torch.no_grad()
    def __call__(self, prompts: list, completions: list) -> list[float]:
        from rlhf.data.io import load_rows
        from rlhf.data.preference import collate_sequences, encode_prompt_completion

        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        rows = load_rows([{"prompt": p, "completion": c} for p, c in zip(prompts, completions)])
        out: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            sequences = [encode_prompt_completion(row, self.tokenizer, append_eos=False, max_length=self.max_length)
                         for row in rows[start : start + self.batch_size]]
            batch = collate_sequences(sequences, pad_token_id=self.tokenizer.pad_token_id, packed=False)
            scores = self.scores(input_ids=batch["input_ids"].to(self.device), last_index=batch["last_index"].to(self.device),
                                 attention_mask=batch["attention_mask"].to(self.device),
                                 position_ids=batch["position_ids"].to(self.device))
            out.extend(scores.tolist())
        return out


class TokenValues(torch.nn.Module):
    """A value model (critic) for PPO: the scalar head applied at every labelled position.

    Built on a one-label sequence-classification model (a trained reward model is the usual
    initialisation, Ouyang et al. 2022 sec. 3.5), so it saves and loads like one.
    labels: (B, T) shifted targets as for `CausalLMLogprobs`; returns (N,) values V(s_t) at the
    N labelled positions, the state before each response token is generated.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        use_packed_attention(model)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, label_positions: torch.Tensor | None = None) -> torch.Tensor:
        hf = hf_model(self.model)
        hidden = hf.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state  # (B, T, H)
        return score_head(self.model)(at_labels(hidden, labels, label_positions)).squeeze(-1).float()  # (N,)


def reward_model_from_causal_lm(model: torch.nn.Module, *, pad_token_id: int,
                                zero_new_head: bool = False) -> torch.nn.Module:
    """A one-label sequence-classification model with the backbone weights of an in-memory causal
    LM (a copy) and a new score head, as `load_reward_model` builds from a causal LM directory."""
    import copy

    from transformers import AutoModelForSequenceClassification

    source = hf_model(model)
    config = copy.deepcopy(source.config)
    config.num_labels, config.pad_token_id = 1, pad_token_id
    critic = AutoModelForSequenceClassification.from_config(config, dtype=next(source.parameters()).dtype)
    backbone = source.base_model_prefix  # e.g. "model": the same name in both classes
    getattr(critic, backbone).load_state_dict(getattr(source, backbone).state_dict())
    if zero_new_head:
        zero_parameters(score_head(critic))
    return critic
