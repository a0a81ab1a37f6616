import json

import pytest

from rlhf.data import DataError, Row, load_rows, sft_row_kind, validate_rows

USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "hello"}

GOOD = {
    "sft": [
        {"text": "plain text"},
        {"prompt": "q", "completion": "a"},
        {"prompt": [USER], "completion": [ASSISTANT]},
        {"messages": [{"role": "system", "content": ""}, USER, ASSISTANT, {"role": "tool", "content": "{}"}]},
    ],
    "preference": [
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
        {"prompt": [USER], "chosen": [ASSISTANT], "rejected": [{"role": "assistant", "content": "meh"}]},
    ],
    "unpaired": [
        {"prompt": "q", "completion": "a", "label": True},
        {"prompt": [USER], "completion": "a", "label": False},
    ],
    "prompt": [
        {"prompt": "q", "answer": 4, "anything": None},
        {"prompt": [USER]},
    ],
}


def jsonl(tmp_path, rows, name="train.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return load_rows(path)


@pytest.mark.parametrize("task", sorted(GOOD))
def test_each_format_loads_and_validates(tmp_path, task):
    rows = jsonl(tmp_path, GOOD[task])
    assert validate_rows(rows, task) is rows


def test_sft_row_kind():
    assert [sft_row_kind(r) for r in GOOD["sft"]] == ["text", "prompt_completion", "prompt_completion", "messages"]
    # Columnar sources fill absent columns with null; ultrachat-style rows carry both prompt and messages.
    assert sft_row_kind({"text": "t", "prompt": None, "completion": None, "messages": None}) == "text"
    assert sft_row_kind({"prompt": "first user turn", "messages": [USER, ASSISTANT]}) == "messages"
    with pytest.raises(DataError, match="not an SFT row"):
        sft_row_kind({"foo": 1})


def test_mixed_columns_from_parquet_validate(tmp_path):
    import datasets

    path = tmp_path / "mixed.parquet"
    columns = {"text": ["a", None], "prompt": [None, "q"], "completion": [None, "c"]}
    datasets.Dataset.from_dict(columns).to_parquet(str(path))
    rows = load_rows(path)
    assert rows[0].data["prompt"] is None
    validate_rows(rows, "sft")


BAD = [
    # (task, bad row, expected message after "train.jsonl:3: ")
    ("sft", {"prompt": "q", "completion": 5},
     "field 'completion': expected a non-empty string or a list of assistant messages, got int"),
    ("sft", {"prompt": "", "completion": "a"},
     "field 'prompt': expected a non-empty string or a non-empty list of messages, got an empty string"),
    ("sft", {"prompt": "q"}, "missing field 'completion' (SFT prompt rows need prompt, completion)"),
    ("sft", {"text": 3}, "field 'text': expected a non-empty string, got int"),
    ("sft", {"txt": "x"}, "not an SFT row: expected fields text, prompt + completion, or messages, got fields ['txt']"),
    ("sft", {"messages": [USER]}, "field 'messages': expected at least one assistant message"),
    ("sft", {"messages": []}, "field 'messages': expected a non-empty list of messages, got an empty list"),
    ("sft", {"messages": [USER, {"role": "bot", "content": "x"}]},
     "field 'messages[1].role': expected one of system, user, assistant, tool, got 'bot'"),
    ("sft", {"messages": [USER, {"role": "assistant", "content": 1}]},
     "field 'messages[1].content': expected a string, got int"),
    ("sft", {"messages": [USER, {"role": "assistant"}]}, "field 'messages[1]': missing key 'content'"),
    ("sft", {"messages": [USER, "hello"]}, "field 'messages[1]': expected a message"),
    ("sft", {"prompt": "q", "completion": [USER]},
     "field 'completion[0].role': expected 'assistant' (a completion holds only assistant messages), got 'user'"),
    ("preference", {"prompt": "q", "chosen": "a"},
     "missing field 'rejected' (preference rows need prompt, chosen, rejected)"),
    ("preference", {"prompt": "q", "chosen": "a", "rejected": None}, "missing field 'rejected' (it is null"),
    ("preference", {"prompt": "q", "chosen": "a", "rejected": "a"}, "fields 'chosen' and 'rejected' are identical"),
    ("preference", {"prompt": "q", "chosen": "a", "rejected": []},
     "field 'rejected': expected a non-empty string or a list of assistant messages, got an empty list"),
    ("unpaired", {"prompt": "q", "completion": "a", "label": 1}, "field 'label': expected true or false"),
    ("unpaired", {"prompt": "q", "completion": "a"}, "missing field 'label' (unpaired rows need prompt, completion, label)"),
    ("prompt", {"question": "q"}, "missing field 'prompt' (prompt rows need prompt)"),
    ("prompt", {"prompt": {"role": "user"}}, "field 'prompt': expected a non-empty string or a non-empty list of messages, got dict"),
]


@pytest.mark.parametrize("task,bad,message", BAD, ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(BAD)])
def test_errors_name_file_line_and_field(tmp_path, task, bad, message):
    rows = jsonl(tmp_path, [GOOD[task][0], GOOD[task][-1], bad, GOOD[task][0]])
    with pytest.raises(DataError) as info:
        validate_rows(rows, task)
    text = str(info.value)
    assert text.startswith(f"{tmp_path / 'train.jsonl'}:3: "), text
    assert message in text


def test_blank_lines_count_towards_line_numbers(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n\n\n" + json.dumps({"text": ""}) + "\n")
    with pytest.raises(DataError, match=r"train\.jsonl:4: field 'text'"):
        validate_rows(load_rows(path), "sft")


def test_memory_rows_name_row_number():
    rows = load_rows([{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a"}])
    with pytest.raises(DataError, match=r"^<memory> row 2: missing field 'rejected'"):
        validate_rows(rows, "preference")


def test_empty_dataset_names_source(tmp_path):
    with pytest.raises(DataError, match=r"empty\.jsonl: no rows"):
        validate_rows([], "sft", source=str(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match="no rows"):
        validate_rows([], "preference")


def test_unknown_task_and_non_dict_row():
    with pytest.raises(ValueError, match="unknown task"):
        validate_rows(load_rows([{"text": "a"}]), "rl")
    with pytest.raises(DataError, match=r"^x:1: expected an object"):
        validate_rows([Row("x:1", ["not", "a", "dict"])], "sft")
