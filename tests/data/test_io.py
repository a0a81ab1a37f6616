import json
from pathlib import Path

import pytest

from rlhf.data import DataError, Row, load_rows

ROWS = [
    {"prompt": "2+2?", "completion": "4"},
    {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hello"}]},
]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_rows_carry_physical_line_numbers(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [json.dumps(ROWS[0]), "", "   ", json.dumps(ROWS[1])])
    rows = load_rows(path)
    assert [row.data for row in rows] == ROWS
    assert [row.location for row in rows] == [f"{path}:1", f"{path}:4"]


def test_str_path_and_json_extension(tmp_path):
    path = write_lines(tmp_path / "data.json", [json.dumps(r) for r in ROWS])
    rows = load_rows(str(path))
    assert rows[1] == Row(f"{path}:2", ROWS[1])


def test_json_array_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(ROWS))
    rows = load_rows(path)
    assert [row.data for row in rows] == ROWS
    assert rows[0].location == f"{path} row 1"


def test_utf8_bom_is_ignored(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "caf\u00e9"}).encode() + b"\n")
    assert load_rows(path)[0].data == {"text": "caf\u00e9"}


def test_invalid_json_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [json.dumps(ROWS[0]), json.dumps(ROWS[1]), '{"prompt": "x",'])
    with pytest.raises(DataError, match=r"train\.jsonl:3: invalid JSON") as info:
        load_rows(path)
    assert "column" in str(info.value)


def test_line_that_is_not_an_object(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [json.dumps(ROWS[0]), "", '["a", "b"]'])
    with pytest.raises(DataError, match=r"train\.jsonl:3: expected a JSON object per line, got an array"):
        load_rows(path)


def test_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b'\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"train\.jsonl:2: not valid UTF-8"):
        load_rows(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        load_rows(tmp_path / "nope.jsonl")


def test_unknown_extension(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("a,b\n")
    with pytest.raises(DataError, match=r"train\.csv: unknown file extension '\.csv'"):
        load_rows(path)


def test_directory_that_is_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="not a datasets save_to_disk directory"):
        load_rows(tmp_path)


def test_parquet_file(tmp_path):
    import datasets

    path = tmp_path / "x.parquet"
    datasets.Dataset.from_list(ROWS[:1] * 3).to_parquet(str(path))
    rows = load_rows(path)
    assert [row.data for row in rows] == ROWS[:1] * 3
    assert rows[2].location == f"{path} row 3"


def test_parquet_nested_messages_round_trip(tmp_path):
    import datasets

    path = tmp_path / "chat.parquet"
    datasets.Dataset.from_list(ROWS[1:]).to_parquet(str(path))
    assert load_rows(path)[0].data == ROWS[1]


def test_datasets_directory_and_dataset_dict(tmp_path):
    import datasets

    dataset = datasets.Dataset.from_list(ROWS[:1] * 2)
    dataset.save_to_disk(str(tmp_path / "ds"))
    rows = load_rows(tmp_path / "ds")
    assert [row.data for row in rows] == ROWS[:1] * 2
    assert rows[1].location == f"{tmp_path / 'ds'} row 2"

    datasets.DatasetDict({"train": dataset, "test": dataset.select([0])}).save_to_disk(str(tmp_path / "dd"))
    assert len(load_rows(tmp_path / "dd")) == 2


def test_dataset_dict_without_train_split_is_an_error(tmp_path):
    import datasets

    dataset = datasets.Dataset.from_list(ROWS[:1])
    with pytest.raises(DataError, match="no 'train' split"):
        load_rows(datasets.DatasetDict({"a": dataset, "b": dataset}))


def test_in_memory_sources():
    import datasets

    rows = load_rows(ROWS)
    assert [row.location for row in rows] == ["<memory> row 1", "<memory> row 2"]
    assert [row.data for row in load_rows(datasets.Dataset.from_list(ROWS[:1]))] == ROWS[:1]
    with pytest.raises(DataError, match=r"<memory> row 2: expected an object \(dict\) per row, got str"):
        load_rows([ROWS[0], "oops"])
    with pytest.raises(TypeError):
        load_rows(42)


def test_empty_file_gives_no_rows(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    assert load_rows(path) == []
