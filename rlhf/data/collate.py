"""Batch tokenised examples, padded (B, T) or packed padding-free (1, N).

Labels are shifted per example here (``labels[t]`` becomes the target of position t),
so a loss is plain cross-entropy of logits against labels, and packing never makes the
last token of one document predict the first token of the next.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def shift_labels(labels: list[int]) -> list[int]:
    """Targets per position: ``labels[1:] + [-100]`` (the last token predicts nothing)."""
    return list(labels[1:]) + [IGNORE_INDEX]


def collate_padded(
    examples: list[dict], pad_token_id: int, *, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad examples to the longest one.

    Returns input_ids (B, T), attention_mask (B, T), position_ids (B, T) counting from 0
    at each example's first real token (also under left padding; 0 on pads) and labels
    (B, T): shifted targets, -100 on pads and on each example's last token.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
        raise ValueError(
            f"pad_token_id must be an int, got {pad_token_id!r} (a tokenizer without a pad token can pad with its EOS id)"
        )
    _check_examples(examples)
    width = max(len(example["input_ids"]) for example in examples)
    batch = len(examples)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    position_ids = torch.zeros((batch, width), dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    for b, example in enumerate(examples):
        length = len(example["input_ids"])
        start = 0 if padding_side == "right" else width - length
        span = slice(start, start + length)
        input_ids[b, span] = torch.as_tensor(example["input_ids"], dtype=torch.long)
        attention_mask[b, span] = 1
        position_ids[b, span] = torch.arange(length)
        labels[b, span] = torch.as_tensor(shift_labels(example["labels"]), dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, "labels": labels}


def collate_packed(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Concatenate examples into one padding-free row (1, N), N = sum of lengths.

    position_ids restart at 0 for each example; with no attention_mask, transformers
    reads the document boundaries from them (``find_packed_sequence_indices`` in
    masking_utils) and masks attention across documents.
    """
    _check_examples(examples)
    input_ids, position_ids, labels = [], [], []
    for example in examples:
        input_ids.extend(example["input_ids"])
        position_ids.extend(range(len(example["input_ids"])))
        labels.extend(shift_labels(example["labels"]))
    return {
        "input_ids": torch.tensor([input_ids], dtype=torch.long),
        "position_ids": torch.tensor([position_ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
    }


def count_loss_tokens(batch) -> int:
    """Number of target positions: ``(labels != -100).sum()``; takes a batch or a labels tensor."""
    labels = batch["labels"] if isinstance(batch, dict) else batch
    return int((torch.as_tensor(labels) != IGNORE_INDEX).sum())


def _check_examples(examples: list[dict]) -> None:
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    for index, example in enumerate(examples):
        length = len(example["input_ids"])
        if length == 0:
            raise ValueError(f"example {index} has no tokens")
        if len(example["labels"]) != length:
            raise ValueError(
                f"example {index}: labels has {len(example['labels'])} entries for {length} input_ids"
            )
