"""Training data: load rows with locations, validate formats, tokenise with masks, collate.

    rows = validate_rows(load_rows("train.jsonl"), "sft")
    examples, stats = tokenize_sft(rows, tokenizer, max_length=512)
    batch = collate_padded(examples[:8], tokenizer.pad_token_id)   # or collate_packed(...)
"""

from .collate import collate_packed, collate_padded, count_loss_tokens, shift_labels
from .errors import DataError
from .formats import sft_row_kind, validate_rows
from .io import Row, load_rows
from .tokenize import TokenizeStats, encode_text, render_chat, tokenize_sft
from .preference import (
    collate_pairs,
    collate_sequences,
    collate_unpaired,
    encode_prompt_completion,
    tokenize_pairs,
    tokenize_unpaired,
)

__all__ = [
    "DataError",
    "Row",
    "TokenizeStats",
    "collate_packed",
    "collate_padded",
    "count_loss_tokens",
    "encode_text",
    "load_rows",
    "render_chat",
    "sft_row_kind",
    "shift_labels",
    "tokenize_sft",
    "validate_rows",
    "collate_pairs",
    "collate_sequences",
    "collate_unpaired",
    "encode_prompt_completion",
    "tokenize_pairs",
    "tokenize_unpaired",
]
