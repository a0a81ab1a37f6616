"""The reward source protocol, and the checks every source's output goes through.

A reward source is any callable

    source(prompts: list, completions: list, **columns) -> list[float | None]

with one entry per sample: a finite number, or None to skip that sample (it then carries no
reward signal; the RL recipe decides what skipping means). Prompts and completions are what
data rows hold: strings, or lists of chat messages. Extra dataset columns arrive as keyword
lists of the same length (`answer=[...]`), so a rule can compare a completion to its row's
reference answer.

`checked_call` is the one gate between a source and the recipes: whatever a source does wrong
(raises, returns a dict, the wrong number of values, NaN, a string, a bool) becomes a
`RewardError` naming the source and, where there is one, the sample index.

A source that retries failed calls (the HTTP source) may also have `take_retries() -> int`, the
retries since its last read; `take_retries(source)` finds those counters through the wrappers
(`CheckedReward`, a weighted sum's components) and sums them, None when no part can retry.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Protocol, runtime_checkable

from rlhf.errors import UserError


class RewardError(UserError, ValueError):
    """A reward source that cannot be resolved, or that misbehaved when called."""


@runtime_checkable
class RewardSource(Protocol):
    """`(prompts, completions, **columns) -> list[float | None]`, one entry per sample."""

    def __call__(self, prompts: list, completions: list, **columns: list) -> list[float | None]: ...


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_numpy_bool(value: Any) -> bool:
    kind = type(value)
    return kind.__module__ == "numpy" and kind.__name__ in ("bool_", "bool")


def _as_reward(value: Any) -> float | None:
    """The value as a float, None for None; raise TypeError / ValueError for anything else."""
    if value is None:
        return None
    # bool is an int subclass (numpy's bool_ is not a numbers.Real), but True is not a reward: it is
    # almost always a rule that forgot to map pass/fail to numbers.
    if isinstance(value, bool) or _is_numpy_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError("not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number


def check_rewards(values: Any, count: int, name: str, *, what: str = "reward function") -> list[float | None]:
    """`values` as a list of `count` floats / Nones, or a RewardError naming `name` and the sample.

    Lists and tuples are accepted, and 1-D numpy arrays / torch tensors (converted with `.tolist()`).
    """
    if hasattr(values, "tolist") and getattr(values, "ndim", None) == 1:
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise RewardError(
            f"{what} {name!r} returned {type(values).__name__} {_describe(values)}; "
            f"expected a list of {count} floats (None to skip a sample)"
        )
    if len(values) != count:
        raise RewardError(f"{what} {name!r} returned {len(values)} values for {count} samples")
    out: list[float | None] = []
    for index, value in enumerate(values):
        try:
            out.append(_as_reward(value))
        except (TypeError, ValueError):
            raise RewardError(
                f"{what} {name!r}, sample {index}: got {_describe(value)}; "
                "expected a finite float (or None to skip the sample)"
            ) from None
    return out


def _check_inputs(name: str, prompts: Any, completions: Any, columns: dict) -> int:
    for field, value in (("prompts", prompts), ("completions", completions)):
        if not isinstance(value, (list, tuple)):
            raise RewardError(f"reward function {name!r}: {field} must be a list, got {type(value).__name__}")
    count = len(prompts)
    if len(completions) != count:
        raise RewardError(f"reward function {name!r}: {count} prompts but {len(completions)} completions")
    for column, value in columns.items():
        if not hasattr(value, "__len__") or isinstance(value, (str, bytes, dict)):
            raise RewardError(f"reward function {name!r}: column {column!r} must be a list, got {type(value).__name__}")
        if len(value) != count:
            raise RewardError(f"reward function {name!r}: column {column!r} has {len(value)} values for {count} samples")
    return count


def _slice(columns: dict, index: int) -> dict:
    return {column: [value[index]] for column, value in columns.items()}


def checked_call(source, name: str, prompts: list, completions: list, **columns) -> list[float | None]:
    """Call `source` and return its rewards as floats / Nones, or raise RewardError naming `name`.

    Failure modes, each a RewardError naming the source:
    - it raises a RewardError: it passes through unchanged, since RewardErrors are user-facing
      messages that already name their source (an HTTP reward its URL, a weighted sum's component
      that component); wrapping would name the source twice;
    - it raises anything else: the exception is chained. For sources that do not opt out (a user function: see
      `isolate_failures`), the batch is re-run one sample at a time to name the first sample that
      raises, so "sample 2" points at the row to look at; sources for which a per-sample re-run
      is costly or meaningless (model, judge, HTTP) set ``isolate_failures = False``;
    - it returns something other than a list (tuple, 1-D array) of one value per sample:
      "reward function 'mod:fn' returned 3 values for 4 samples";
    - a value is NaN / inf, or not a number (bool included): "..., sample 2: got nan".
    """
    count = _check_inputs(name, prompts, completions, columns)
    try:
        values = source(prompts, completions, **columns)
    except RewardError:
        raise
    except Exception as error:  # noqa: BLE001 - every failure is reported, chained, with the source's name
        where = _failing_sample(source, prompts, completions, columns)
        at = f", sample {where}" if where is not None else ""
        raise RewardError(f"reward function {name!r}{at} raised {type(error).__name__}: {error}") from error
    return check_rewards(values, count, name)


def _failing_sample(source, prompts: list, completions: list, columns: dict) -> int | None:
    """Index of the first sample on which `source` raises by itself, or None (not isolated / none does)."""
    if not getattr(source, "isolate_failures", True) or not prompts:
        return None
    if len(prompts) == 1:
        return 0
    for index in range(len(prompts)):
        try:
            source([prompts[index]], [completions[index]], **_slice(columns, index))
        except Exception:  # noqa: BLE001
            return index
    return None


class CheckedReward:
    """A reward source behind `checked_call`, with the name its errors use (the spec it came from).

    `resolve_reward` returns these; `source` is the wrapped callable.
    """

    isolate_failures = False  # the wrapped source is isolated (or not) by the inner checked_call

    def __init__(self, source, name: str):
        if isinstance(source, CheckedReward):
            source = source.source
        if not callable(source):
            raise RewardError(f"reward source {name!r} is not callable ({type(source).__name__})")
        self.source, self.name = source, name

    def __call__(self, prompts: list, completions: list, **columns) -> list[float | None]:
        return checked_call(self.source, self.name, prompts, completions, **columns)

    def __repr__(self) -> str:
        return f"CheckedReward({self.name!r})"


def take_retries(source) -> int | None:
    """Retries that `source` (or the sources it wraps) made since the last read; None if it never retries."""
    own = getattr(source, "take_retries", None)
    if callable(own):
        return int(own())
    if isinstance(source, CheckedReward):
        inner = [source.source]
    else:  # a weighted sum's (source, weight) pairs
        inner = [part[0] for part in getattr(source, "components", ()) if isinstance(part, (tuple, list))]
    counts = [count for count in map(take_retries, inner) if count is not None]
    return sum(counts) if counts else None


def source_name(source) -> str:
    """A readable name for a callable: its `name`, else module:qualname, else its repr."""
    name = getattr(source, "name", None)
    if isinstance(name, str) and name:
        return name
    qualname = getattr(source, "__qualname__", None) or getattr(type(source), "__qualname__", None)
    module = getattr(source, "__module__", None) or getattr(type(source), "__module__", None)
    if qualname and module:
        return f"{module}:{qualname}"
    return repr(source)
