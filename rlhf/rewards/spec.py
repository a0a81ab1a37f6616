"""Reward source specs -> reward sources (the `reward` key of the RL commands).

Accepted forms (DESIGN.md, "Reward source spec"):

    runs/reward/final                 a reward-model directory (holds config.json) -> RewardModelSource
    my_rules:exact_match              a function in an importable module
    rewards/rules.py:exact_match      a function in a Python file
    judge:smollm2-135m-instruct       an LLM judge (a model spec: local HF directory or alias) -> JudgeReward
    judge:<model>?few_shot=shots.jsonl&template=judge.txt&verdict=yes_no
                                      the judge with options (`rewards.judge.SPEC_OPTIONS`): template,
                                      few_shot, rubric (files), system, verdict (rating | yes_no), scale
                                      (e.g. 1-5), rationale, max_rationale_tokens, batch_size, max_length
    http://127.0.0.1:8000/score       a reward server (http or https) -> HttpReward
    <a callable>                      used as is (Python calls)

and weighted sums of those (-> WeightedSum; a None from any part makes the sample None):

    "0.5*runs/reward/final, 2.0*my_rules:exact_match"     a string of weight*spec, comma-separated
    [["runs/reward/final", 0.5], ["my_rules:exact_match", 2.0]]   a list of (spec, weight) pairs
    ["my_rules:exact_match", "0.1*my_rules:brevity"]       list items may be plain specs (weight 1)
    [{"spec": "my_rules:exact_match", "weight": 2.0}]      or {spec, weight} dicts (handy in YAML)

A string with a comma splits into parts only when it starts with `<number>*`; a URL or path
holding commas is written in the list form.

Resolution happens in two passes. The first checks every part of the spec cheaply: the form,
that a directory exists and holds config.json, that a judge model is a directory with
config.json or a known alias (its options known, their files read and checked), and imports
Python functions (checking, when `columns` is given, that each function accepts those dataset
columns). An unresolvable spec is a RewardError listing
the accepted forms before any model loads. The second pass builds the sources: reward models and
judges load eagerly here, so a broken model fails before the first RL step, not after it.

Every source returned is a `CheckedReward` named by its spec, so its errors name the spec.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from .base import CheckedReward, RewardError, source_name
from .combine import WeightedSum
from .python import load_function, split_function_spec

FORMS = (
    "a reward-model directory (holding config.json); 'module:function' or 'path/to/file.py:function' "
    "for a Python function fn(prompts, completions, **columns) -> list[float | None]; 'judge:<model>' for an "
    "LLM judge (a local model directory or 'smollm2-135m-instruct'; options as 'judge:<model>?few_shot=FILE&"
    "template=FILE&rubric=FILE&verdict=rating|yes_no'); 'http(s)://host:port/path' for a reward "
    "server; a weighted sum '0.5*spec1, 2.0*spec2' or a list of (spec, weight) pairs"
)

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_WEIGHTED = re.compile(rf"^\s*({_NUMBER})\s*\*\s*(.+?)\s*$", re.S)

Plan = tuple[str, Callable[[], Any]]  # (name, build) for one source


def resolve_reward(spec: str | Callable | list | tuple, *, columns: Iterable[str] | None = None,
                   device: str = "cpu") -> CheckedReward:
    """The reward source that `spec` names, behind `checked_call` (see the module docstring).

    columns: names of the extra dataset columns the source will be called with; Python functions
        that cannot take them are rejected here rather than at the first RL step.
    device: where reward models and judges run.
    """
    columns = None if columns is None else [str(c) for c in columns]
    if isinstance(spec, CheckedReward):
        _check_columns(spec.name, spec.source, columns)
        return spec
    if isinstance(spec, (list, tuple)):
        parts = [(*_plan_single(item_spec, columns, device), weight) for item_spec, weight in _list_items(spec)]
        name = " + ".join(f"{weight:g}*{name}" for name, _, weight in parts)
        return _combine(parts, name)
    if isinstance(spec, str) and _WEIGHTED.match(spec):
        parts = [(*_plan_single(item_spec, columns, device), weight) for item_spec, weight in _weighted_string(spec)]
        return _combine(parts, spec.strip())
    name, build = _plan_single(spec, columns, device)
    return CheckedReward(build(), name)


def _combine(parts: list[tuple[str, Callable, float]], name: str) -> CheckedReward:
    sum_ = WeightedSum([(CheckedReward(build(), part_name), weight) for part_name, build, weight in parts], name=name)
    return CheckedReward(sum_, name)


def _weight(value: Any, where: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise RewardError(f"reward spec {where}: weight must be a finite number, got {value!r}")
    return float(value)


def _weighted_string(spec: str) -> list[tuple[str, float]]:
    items = []
    for index, part in enumerate(spec.split(",")):
        match = _WEIGHTED.match(part)
        if not match:
            raise RewardError(
                f"reward spec {spec!r}: part {index + 1} ({part.strip()!r}) is not 'weight*spec'; a weighted "
                "sum is written '0.5*spec1, 2.0*spec2' (use the list form for specs containing commas)"
            )
        items.append((match.group(2), _weight(match.group(1), repr(part.strip()))))
    return items


def _list_items(spec: list | tuple) -> list[tuple[Any, float]]:
    if not spec:
        raise RewardError(f"reward spec is an empty list; expected {FORMS}")
    items = []
    for index, item in enumerate(spec):
        where = f"item {index}"
        if isinstance(item, dict):
            unknown = set(item) - {"spec", "weight"}
            if "spec" not in item or unknown:
                raise RewardError(f"reward spec {where}: a dict item needs 'spec' (and optionally 'weight'), got "
                                  f"keys {sorted(item)}")
            items.append((item["spec"], _weight(item.get("weight", 1.0), where)))
        elif isinstance(item, (list, tuple)):
            if len(item) != 2:
                raise RewardError(f"reward spec {where}: expected a (spec, weight) pair, got {item!r:.80}")
            items.append((item[0], _weight(item[1], where)))
        elif isinstance(item, str) and _WEIGHTED.match(item) and "," not in item:
            match = _WEIGHTED.match(item)
            items.append((match.group(2), _weight(match.group(1), where)))
        else:
            items.append((item, 1.0))
    return items


def _plan_single(spec: Any, columns: list[str] | None, device: str) -> Plan:
    """(name, build) for one non-combined spec, after every cheap check."""
    if isinstance(spec, CheckedReward):
        _check_columns(spec.name, spec.source, columns)
        return spec.name, lambda: spec.source
    if callable(spec) and not isinstance(spec, (str, Path)):
        name = source_name(spec)
        _check_columns(name, spec, columns)
        return name, lambda: spec
    if isinstance(spec, Path):
        spec = str(spec)
    if not isinstance(spec, str):
        raise RewardError(f"reward spec must be a string, a callable or a list, got {type(spec).__name__}; "
                          f"expected {FORMS}")
    text = spec.strip()
    if not text:
        raise RewardError(f"reward spec is empty; expected {FORMS}")
    lowered = text.lower()

    if lowered.startswith(("http://", "https://")):
        from .remote import HttpReward

        if columns:
            clash = [c for c in columns if c in ("prompts", "completions")]
            if clash:
                raise RewardError(f"reward spec {text!r}: dataset column {clash[0]!r} clashes with the request's "
                                  "own key; rename the column")
        return text, lambda: HttpReward(text)

    scheme = re.match(r"^([a-z][a-z0-9+.-]*)://", lowered)
    if scheme:
        raise RewardError(f"reward spec {text!r}: unsupported URL scheme {scheme.group(1)!r} (a reward server is "
                          "http:// or https://)")

    if lowered.startswith("judge:"):
        from .judge import JudgeReward, parse_judge_spec

        model, options = parse_judge_spec(text)
        _check_judge_model(text, model)
        return text, lambda: JudgeReward(model, device=device, **options)

    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RewardError(f"reward spec {text!r}: the directory has no config.json, so it is not a reward-model "
                              f"directory (a training run's model is in its final/ subdirectory); expected {FORMS}")
        from .model import RewardModelSource

        return text, lambda: RewardModelSource(path, device=device)

    if split_function_spec(text) is not None:
        function = load_function(text)
        _check_columns(text, function, columns)
        return text, lambda: function

    if path.exists():
        reason = "is a file, not a reward-model directory (a Python file is named 'file.py:function')"
    elif "/" in text or text.startswith((".", "~")):
        reason = "no such directory"
    else:
        reason = "matches no reward spec form"
    raise RewardError(f"reward spec {text!r}: {reason}; expected {FORMS}")


def _check_judge_model(spec: str, model: str) -> None:
    from rlhf.models import loading

    if not model:
        raise RewardError(f"reward spec {spec!r}: 'judge:' needs a model, e.g. 'judge:smollm2-135m-instruct'")
    path = Path(model).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return
    aliases = getattr(loading, "_EMBEDDED", {loading.DEFAULT_MODEL: None})
    if model.lower() in aliases:
        return
    hint = " (the directory has no config.json)" if path.is_dir() else ""
    raise RewardError(f"reward spec {spec!r}: judge model {model!r} is neither a local model directory with config.json "
                      f"nor a known alias ({', '.join(sorted(aliases))}){hint}")


def _check_columns(name: str, function: Callable, columns: list[str] | None) -> None:
    """A function that cannot be called as fn(prompts, completions, **columns) fails here, not mid-training."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # builtins and some C callables have no signature: nothing to check
        return
    try:
        if columns is None:  # the columns are not known yet: only the two lists must fit
            signature.bind_partial([], [])
        else:
            signature.bind([], [], **{column: [] for column in columns})
    except TypeError as error:
        extra = f" with dataset columns {', '.join(columns)}" if columns else ""
        raise RewardError(
            f"reward function {name!r} cannot be called as fn(prompts, completions, **columns){extra}: {error}; "
            "give it the signature fn(prompts, completions, **columns)"
        ) from None
