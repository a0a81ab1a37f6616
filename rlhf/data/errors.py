"""The one exception type for bad training data.

Every message starts with where the problem is (``train.jsonl:7`` or ``<memory> row 3``),
then names the field and says what was expected and what was found, so a user can
open the file at that line and fix it without reading this library's source.
"""

from __future__ import annotations

from typing import Any

from rlhf.errors import UserError


class DataError(UserError, ValueError):
    """A data file or row does not have the shape a task needs."""


def describe(value: Any) -> str:
    """A short description of a value for "got ..." in error messages."""
    if value is None:
        return "null"
    if isinstance(value, str):
        if not value:
            return "an empty string"
        return "str"
    if isinstance(value, (list, tuple)) and not value:
        return "an empty list"
    return type(value).__name__
