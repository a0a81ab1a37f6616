"""Python reward functions named by a spec: `module:function` or `path/to/file.py:function`.

    fn = load_function("my_rules:exact_match")         # importlib.import_module("my_rules")
    fn = load_function("rewards/rules.py:exact_match")  # the file, loaded as a module

The function part may be dotted (`module:Rules.length_penalty`). A file is loaded under a
private module name (`rlhf_reward_file_<stem>_<hash>`) registered in `sys.modules`, so
dataclasses and pickling inside it work; its directory is not added to `sys.path`. A relative
file path is relative to the working directory.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Callable

from .base import RewardError

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ATTRIBUTE_PATH = _MODULE_NAME  # Class.method has the same shape as a dotted module name


def split_function_spec(spec: str) -> tuple[str, str, bool] | None:
    """`(target, attribute, is_file)` for a `module:function` / `file.py:function` spec, else None.

    Only the shape is checked (nothing is imported), so resolution can reject a bad spec early.
    """
    if not isinstance(spec, str) or ":" not in spec:
        return None
    target, attribute = spec.strip().rsplit(":", 1)
    target, attribute = target.strip(), attribute.strip()
    if not target or not _ATTRIBUTE_PATH.match(attribute):
        return None
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    if not is_file and not _MODULE_NAME.match(target):
        return None
    return target, attribute, is_file


def load_function(spec: str) -> Callable:
    """The callable a `module:function` or `path/file.py:function` spec names, or a RewardError."""
    parts = split_function_spec(spec)
    if parts is None:
        raise RewardError(
            f"reward function {spec!r}: expected 'module:function' (an importable module) or "
            "'path/to/file.py:function'"
        )
    target, attribute, is_file = parts
    module = _load_file(spec, target) if is_file else _import_module(spec, target)
    value = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            where = f"file {target!r}" if is_file else f"module {target!r}"
            available = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                               and getattr(v, "__module__", None) == module.__name__)
            hint = f" (functions defined there: {', '.join(available[:12])})" if available else ""
            raise RewardError(f"reward function {spec!r}: {where} has no attribute {attribute!r}{hint}")
        value = getattr(value, part)
    if not callable(value):
        raise RewardError(
            f"reward function {spec!r}: {attribute!r} is a {type(value).__name__}, not a callable; a reward "
            "function is fn(prompts, completions, **columns) -> list[float | None]"
        )
    return value


def _import_module(spec: str, name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing == name or name.startswith(missing + "."):
            raise RewardError(
                f"reward function {spec!r}: module {name!r} not found (is it installed, or on PYTHONPATH? "
                "a file is named as 'path/to/file.py:function')"
            ) from error
        raise RewardError(f"reward function {spec!r}: importing module {name!r} failed: {error}") from error
    except Exception as error:  # noqa: BLE001 - any import-time failure, chained
        raise RewardError(
            f"reward function {spec!r}: importing module {name!r} failed: {type(error).__name__}: {error}"
        ) from error


def _load_file(spec: str, target: str):
    path = Path(target).expanduser()
    if not path.is_file():
        what = "is a directory, not a Python file" if path.is_dir() else "not found"
        raise RewardError(f"reward function {spec!r}: file {target!r} {what}")
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"rlhf_reward_file_{stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise RewardError(f"reward function {spec!r}: cannot load {target!r} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001
        sys.modules.pop(module_name, None)
        raise RewardError(
            f"reward function {spec!r}: running {target!r} failed: {type(error).__name__}: {error}"
        ) from error
    return module
