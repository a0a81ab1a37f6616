"""Load rows from JSONL / JSON / Parquet files, `datasets` directories or memory.

Each row keeps its location (``path:line`` for JSON lines, ``path row N`` otherwise),
so that validation and tokenisation errors later can point at the exact line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError, describe

MEMORY = "<memory>"
JSON_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True)
class Row:
    """One example and where it came from."""

    location: str  # "path/train.jsonl:12", "path/x.parquet row 3", "<memory> row 3" (1-based)
    data: dict


def load_rows(source: Any) -> list[Row]:
    """Read every row of `source` into memory, each tagged with its location.

    `source` is a path to a ``.jsonl`` / ``.json`` file (JSON lines; a ``.json`` file
    holding one top-level array is also read), a ``.parquet`` file, a `datasets`
    ``save_to_disk`` directory, or an in-memory ``datasets.Dataset`` / list of dicts.
    """
    if isinstance(source, (str, Path)):
        return _load_path(Path(source), str(source))
    if isinstance(source, (list, tuple)):
        return _rows_from_records(source, MEMORY)
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        datasets = None
    if datasets is not None and isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return _rows_from_records(_dataset_records(source, MEMORY), MEMORY)
    raise TypeError(
        "load_rows() takes a path (.jsonl, .json, .parquet or a datasets directory), "
        f"a datasets.Dataset or a list of dicts, got {type(source).__name__}"
    )


def _load_path(path: Path, name: str) -> list[Row]:
    if not path.exists():
        raise DataError(f"{name}: no such file or directory")
    if path.is_dir():
        return _rows_from_records(_dataset_records(_load_dataset_dir(path, name), name), name)
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return _load_json_lines(path, name)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            records = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise DataError(f"{name}: cannot read as Parquet: {exc}") from exc
        return _rows_from_records(records, name)
    raise DataError(
        f"{name}: unknown file extension {path.suffix!r}; expected .jsonl or .json (JSON lines), "
        ".parquet, or a directory written by datasets' save_to_disk"
    )


def _load_json_lines(path: Path, name: str) -> list[Row]:
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark from some editors
        raw = raw[3:]
    if raw.lstrip()[:1] == b"[":
        # A .json file holding one array of objects: common enough to accept, though
        # its rows have no line numbers.
        try:
            records = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{name}: invalid JSON array: {exc}") from exc
        return _rows_from_records(records, name)
    rows = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        location = f"{name}:{number}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{location}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
        if not text.strip():
            continue  # blank lines are skipped but still counted, so numbers match an editor's
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{location}: invalid JSON: {exc.msg} (column {exc.colno})") from exc
        if not isinstance(data, dict):
            raise DataError(f"{location}: expected a JSON object per line, got {_json_kind(data)}")
        rows.append(Row(location, data))
    return rows


def _load_dataset_dir(path: Path, name: str):
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((path / marker).exists() for marker in markers):
        raise DataError(
            f"{name}: is a directory but not a datasets save_to_disk directory "
            f"(none of {', '.join(markers)} inside)"
        )
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"{name}: cannot load with datasets.load_from_disk: {exc}") from exc


def _dataset_records(dataset, name: str) -> list:
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        splits = list(dataset)
        if "train" in dataset:
            dataset = dataset["train"]
        elif len(splits) == 1:
            dataset = dataset[splits[0]]
        else:
            raise DataError(
                f"{name}: a DatasetDict with splits {splits} and no 'train' split; "
                "pass the split you want (e.g. dataset['test'])"
            )
    return dataset.to_list()


def _rows_from_records(records, name: str) -> list[Row]:
    if not isinstance(records, (list, tuple)):
        raise DataError(f"{name}: expected a list of rows, got {describe(records)}")
    rows = []
    for index, data in enumerate(records, start=1):
        location = f"{name} row {index}"
        if not isinstance(data, dict):
            raise DataError(f"{location}: expected an object (dict) per row, got {describe(data)}")
        rows.append(Row(location, data))
    return rows


def _json_kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
