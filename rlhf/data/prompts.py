"""Prompts for online RL and labelling: token ids up front, so length limits fail before any model work."""

from __future__ import annotations

from .errors import DataError
from .io import Row
from .tokenize import TokenizeStats, encode_text, render_chat

PROMPT_POLICIES = ("error", "drop")


def tokenize_prompts(rows: list[Row], tokenizer, *, max_length: int, truncation: str = "error") -> tuple[list[dict], TokenizeStats]:
    """Rows {"prompt": P, ...} -> examples {"prompt_ids", "prompt", "columns"}, one per kept row.

    A string prompt is tokenised with the tokenizer's default special tokens; a list of chat
    messages goes through the chat template with the generation prompt. `columns` holds the
    row's other fields, which reach reward functions. A prompt longer than `max_length` is an
    error (truncation="error") or skipped and counted ("drop"); a prompt is never cut, since a
    truncated question changes what a good answer is.
    """
    if truncation not in PROMPT_POLICIES:
        raise ValueError(f"prompt truncation must be one of {', '.join(PROMPT_POLICIES)}, got {truncation!r}")
    stats = TokenizeStats(total=len(rows))
    examples = []
    for row in rows:
        prompt = row.data["prompt"]
        if isinstance(prompt, str):
            ids = encode_text(tokenizer, prompt, add_special_tokens=True)
        else:
            if not getattr(tokenizer, "chat_template", None):
                raise DataError(f"{row.location}: field 'prompt' holds chat messages but the tokenizer has no chat template")
            ids = render_chat(tokenizer, prompt, add_generation_prompt=True)
        if len(ids) > max_length:
            if truncation == "error":
                raise DataError(f"{row.location}: field 'prompt': {len(ids)} tokens exceed max_prompt_length {max_length} "
                                "(set prompt_truncation=drop to skip such prompts)")
            stats.dropped += 1
            continue
        stats.kept += 1
        examples.append({"prompt_ids": ids, "prompt": prompt,
                         "columns": {k: v for k, v in row.data.items() if k != "prompt"}})
    return examples, stats
