"""Row formats per task, checked up front with errors that point at file:line.

    sft         {"text": str} | {"prompt": P, "completion": C} | {"messages": [message, ...]}
    preference  {"prompt": P, "chosen": C, "rejected": C}        (chosen != rejected)
    unpaired    {"prompt": P, "completion": C, "label": bool}    (KTO)
    prompt      {"prompt": P, ...}                               (extra columns reach reward functions)

P is a non-empty string or a non-empty list of messages; C is a non-empty string or a
non-empty list of assistant messages; a message is {"role": str, "content": str} with a
role in system / user / assistant / tool.

A field whose value is null counts as absent: Parquet files and `datasets` tables fill
the columns a row lacks with nulls, so a mixed SFT file reads back as
{"text": "...", "messages": None, ...}.
"""

from __future__ import annotations

from typing import Any

from .errors import DataError, describe
from .io import Row

ROLES = ("system", "user", "assistant", "tool")
TASK_FIELDS = {
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
    "prompt": ("prompt",),
}
TASKS = ("sft", *TASK_FIELDS)
SFT_FIELDS = "text, prompt + completion, or messages"
PROMPT_EXPECTED = "a non-empty string or a non-empty list of messages"
COMPLETION_EXPECTED = "a non-empty string or a list of assistant messages"


def validate_rows(rows: list[Row], task: str, *, source: str | None = None) -> list[Row]:
    """Check every row against `task`'s format; raise DataError on the first bad one.

    `source` names the data in the error for an empty dataset (rows carry their own
    locations otherwise). Returns `rows` unchanged.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if not rows:
        where = source if source is not None else "dataset"
        raise DataError(f"{where}: no rows ({task} data needs at least one row)")
    for row in rows:
        check_row(row, task)
    return rows


def check_row(row: Row, task: str) -> str | None:
    """Validate one row; return its SFT kind for task "sft", else None."""
    data = row.data
    if not isinstance(data, dict):
        raise DataError(f"{row.location}: expected an object (dict) per row, got {describe(data)}")
    if task == "sft":
        return _check_sft(row.location, data)
    fields = TASK_FIELDS[task]
    for name in fields:
        _require(row.location, data, name, f"{task} rows need {', '.join(fields)}")
    _check_prompt(row.location, "prompt", data["prompt"])
    if task == "preference":
        _check_completion(row.location, "chosen", data["chosen"])
        _check_completion(row.location, "rejected", data["rejected"])
        if data["chosen"] == data["rejected"]:
            raise DataError(
                f"{row.location}: fields 'chosen' and 'rejected' are identical; "
                "a preference pair needs two different completions"
            )
    elif task == "unpaired":
        _check_completion(row.location, "completion", data["completion"])
        if not isinstance(data["label"], bool):
            raise DataError(
                f"{row.location}: field 'label': expected true or false (is the completion desirable), "
                f"got {_describe_value(data['label'])}"
            )
    return None


def sft_row_kind(row: dict) -> str:
    """"text", "prompt_completion" or "messages" for an SFT row (by which fields it has).

    With several, "messages" wins over prompt/completion, which wins over "text": some
    public chat sets carry a copy of the first user turn as "prompt" next to "messages".
    """
    kind = _sft_kind(row)
    if kind is None:
        keys = sorted(k for k, v in row.items() if v is not None) if isinstance(row, dict) else []
        raise DataError(f"not an SFT row: expected fields {SFT_FIELDS}, got fields {keys}")
    return kind


def _sft_kind(data: dict) -> str | None:
    if not isinstance(data, dict):
        return None
    if _present(data, "messages"):
        return "messages"
    if _present(data, "prompt") or _present(data, "completion"):
        return "prompt_completion"
    if _present(data, "text"):
        return "text"
    return None


def _check_sft(location: str, data: dict) -> str:
    kind = _sft_kind(data)
    if kind is None:
        keys = sorted(k for k, v in data.items() if v is not None)
        raise DataError(f"{location}: not an SFT row: expected fields {SFT_FIELDS}, got fields {keys}")
    if kind == "text":
        text = data["text"]
        if not isinstance(text, str) or not text:
            raise DataError(f"{location}: field 'text': expected a non-empty string, got {describe(text)}")
    elif kind == "prompt_completion":
        need = "SFT prompt rows need prompt, completion"
        _require(location, data, "prompt", need)
        _require(location, data, "completion", need)
        _check_prompt(location, "prompt", data["prompt"])
        _check_completion(location, "completion", data["completion"])
    else:
        messages = data["messages"]
        _check_messages(location, "messages", messages, "a non-empty list of messages")
        roles = [message["role"] for message in messages]
        if "assistant" not in roles:
            raise DataError(
                f"{location}: field 'messages': expected at least one assistant message "
                f"(the tokens to learn), got roles {roles}"
            )
    return kind


def _present(data: dict, name: str) -> bool:
    return data.get(name) is not None


def _require(location: str, data: dict, name: str, need: str) -> None:
    if name not in data:
        raise DataError(f"{location}: missing field '{name}' ({need})")
    if data[name] is None:
        raise DataError(f"{location}: missing field '{name}' (it is null; {need})")


def _check_prompt(location: str, field: str, value: Any) -> None:
    if isinstance(value, str):
        if not value:
            raise DataError(f"{location}: field '{field}': expected {PROMPT_EXPECTED}, got an empty string")
        return
    if not isinstance(value, list) or not value:
        raise DataError(f"{location}: field '{field}': expected {PROMPT_EXPECTED}, got {describe(value)}")
    _check_messages(location, field, value, PROMPT_EXPECTED)


def _check_completion(location: str, field: str, value: Any) -> None:
    if isinstance(value, str):
        if not value:
            raise DataError(f"{location}: field '{field}': expected {COMPLETION_EXPECTED}, got an empty string")
        return
    if not isinstance(value, list) or not value:
        raise DataError(f"{location}: field '{field}': expected {COMPLETION_EXPECTED}, got {describe(value)}")
    _check_messages(location, field, value, COMPLETION_EXPECTED)
    for index, message in enumerate(value):
        if message["role"] != "assistant":
            raise DataError(
                f"{location}: field '{field}[{index}].role': expected 'assistant' "
                f"(a completion holds only assistant messages), got {message['role']!r}"
            )


def _check_messages(location: str, field: str, value: Any, expected: str) -> None:
    if not isinstance(value, list) or not value:
        raise DataError(f"{location}: field '{field}': expected {expected}, got {describe(value)}")
    for index, message in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(message, dict):
            raise DataError(
                f"{location}: field '{where}': expected a message {{\"role\": ..., \"content\": ...}}, "
                f"got {describe(message)}"
            )
        for key in ("role", "content"):
            if message.get(key) is None:
                raise DataError(f"{location}: field '{where}': missing key '{key}' (a message needs role and content)")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise DataError(
                f"{location}: field '{where}.role': expected one of {', '.join(ROLES)}, got {_describe_value(role)}"
            )
        if not isinstance(content, str):
            raise DataError(f"{location}: field '{where}.content': expected a string, got {describe(content)}")


def _describe_value(value: Any) -> str:
    """Show short scalars themselves (a wrong role or label), else their type."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool) and len(repr(value)) <= 40:
        return f"{value!r} ({type(value).__name__})" if not isinstance(value, str) else repr(value)
    return describe(value)
