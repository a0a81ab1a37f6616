"""SFT rows -> token ids and (unshifted) labels, with -100 where no loss is taken.

Labels are found by construction, never from ``input_ids != pad_token_id``: many
checkpoints (SmolLM2 among them) use the EOS token as pad, and the EOS that ends a
completion must keep its label or the model never learns to stop.

Chat rows are rendered with the tokenizer's own chat template. The assistant tokens are
located by rendering incremental prefixes (the approach of open-instruct's
``sft_tulu_tokenize_and_truncate`` and TRL's prefix check): the render of
``messages[:i]`` with the generation prompt must be a prefix of the render of
``messages[:i+1]``, and the new tokens are assistant turn i. This works for any
template, unlike ``{% generation %}`` markers which few templates carry.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DataError
from .formats import check_row
from .io import Row

IGNORE_INDEX = -100
TRUNCATION_POLICIES = ("error", "truncate", "drop")


@dataclass
class TokenizeStats:
    """What happened to the rows: kept + dropped == total; truncated counts kept rows."""

    total: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: int = 0

    def __str__(self) -> str:
        return f"kept {self.kept}/{self.total} rows ({self.truncated} truncated, {self.dropped} dropped)"


def tokenize_sft(
    rows: list[Row], tokenizer, *, max_length: int, truncation: str = "error"
) -> tuple[list[dict], TokenizeStats]:
    """Tokenise SFT rows into ``{"input_ids", "labels"}`` examples, one per kept row.

    text rows: every token is a target (language modelling), EOS appended once.
    string prompt/completion: targets are the completion tokens and the EOS.
    chat rows (messages, or a prompt/completion with message lists): targets are the
    assistant turns up to and including their first EOS token.

    truncation: "error" raises DataError for a row longer than `max_length`, "truncate"
    keeps its first `max_length` tokens, "drop" skips it. A row left with no target that
    a shifted loss can use (a labelled token after position 0) is dropped too.
    """
    if truncation not in TRUNCATION_POLICIES:
        raise ValueError(f"truncation must be one of {', '.join(TRUNCATION_POLICIES)}, got {truncation!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no eos_token; SFT needs one to mark where a completion ends")

    stats = TokenizeStats(total=len(rows))
    examples = []
    for row in rows:
        kind = check_row(row, "sft")
        input_ids, labels = _encode_sft(row, kind, tokenizer, eos_id)
        was_truncated = False
        if len(input_ids) > max_length:
            if truncation == "error":
                raise DataError(
                    f"{row.location}: tokenised length {len(input_ids)} exceeds max_length {max_length} "
                    "(truncation='error'; set truncation=truncate or drop)"
                )
            if truncation == "drop":
                stats.dropped += 1
                continue
            input_ids, labels = input_ids[:max_length], labels[:max_length]
            was_truncated = True
        # Position 0 is never predicted (the loss shifts labels left by one), so a row
        # whose only target sits there would contribute nothing but compute.
        if all(label == IGNORE_INDEX for label in labels[1:]):
            stats.dropped += 1
            continue
        stats.kept += 1
        stats.truncated += was_truncated
        examples.append({"input_ids": input_ids, "labels": labels})
    return examples, stats


def _encode_sft(row: Row, kind: str, tokenizer, eos_id: int) -> tuple[list[int], list[int]]:
    data = row.data
    if kind == "text":
        input_ids = _append_eos(encode_text(tokenizer, data["text"], add_special_tokens=True), eos_id)
        return input_ids, list(input_ids)
    if kind == "messages":
        messages = data["messages"]
        targets = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
        return _encode_chat(row, tokenizer, messages, targets, eos_id)
    prompt, completion = data["prompt"], data["completion"]
    if isinstance(prompt, str) and isinstance(completion, str):
        prompt_ids = encode_text(tokenizer, prompt, add_special_tokens=True)
        completion_ids = _append_eos(encode_text(tokenizer, completion, add_special_tokens=False), eos_id)
        return prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    # Mixed string / messages: the string side becomes the user or assistant turn, so
    # the whole row goes through the chat template.
    prompt_messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    completion_messages = (
        [{"role": "assistant", "content": completion}] if isinstance(completion, str) else list(completion)
    )
    messages = prompt_messages + completion_messages
    targets = list(range(len(prompt_messages), len(messages)))
    return _encode_chat(row, tokenizer, messages, targets, eos_id)


def _encode_chat(
    row: Row, tokenizer, messages: list[dict], targets: list[int], eos_id: int
) -> tuple[list[int], list[int]]:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{row.location}: this row holds chat messages but the tokenizer has no chat template; "
            "set tokenizer.chat_template, or use text / string prompt-completion rows"
        )
    input_ids = render_chat(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(input_ids)
    for i in targets:
        if i == 0:
            raise DataError(
                f"{row.location}: message 0 is an assistant turn; a chat template cannot render the prompt "
                "before it, so start the conversation with a system or user message"
            )
        before = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        through = render_chat(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if through[: len(before)] != before:
            raise DataError(
                f"{row.location}: cannot locate assistant message {i}: the chat template's rendering of "
                f"messages[:{i}] with add_generation_prompt=True is not a prefix of its rendering of "
                f"messages[:{i + 1}] (the template renders an assistant turn differently from its "
                "generation prompt)"
            )
        if input_ids[: len(through)] != through:
            raise DataError(
                f"{row.location}: cannot locate assistant message {i}: the chat template rewrites it once later "
                f"messages follow (the rendering of messages[:{i + 1}] is not a prefix of the whole "
                "conversation's, e.g. a template that strips reasoning from past turns); split such "
                "conversations into one row per assistant turn"
            )
        # Stop at the turn's first EOS: what a template writes after it (ChatML's "\n")
        # is formatting the model never has to generate.
        for t in range(len(before), len(through)):
            labels[t] = input_ids[t]
            if input_ids[t] == eos_id:
                break
    return input_ids, labels


def render_chat(tokenizer, messages: list[dict], *, add_generation_prompt: bool) -> list[int]:
    """Token ids of `messages` through the tokenizer's chat template (as a plain list)."""
    # transformers v5 returns a BatchEncoding unless return_dict=False.
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
    )
    return list(ids)


def encode_text(tokenizer, text: str, *, add_special_tokens: bool) -> list[int]:
    """Token ids of plain `text` (with the tokenizer's BOS etc. when `add_special_tokens`)."""
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def _append_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids if ids and ids[-1] == eos_id else ids + [eos_id]
