import pytest

from rlhf.data import DataError, TokenizeStats, collate_padded, load_rows, tokenize_sft
from rlhf.testing import tiny_tokenizer

IGNORE = -100
EOS = "<|im_end|>"
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "six, obviously"},
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def one(rows, tokenizer, max_length=4096, **kwargs):
    examples, stats = tokenize_sft(load_rows(rows), tokenizer, max_length=max_length, **kwargs)
    assert stats.kept == len(examples) == 1
    example = examples[0]
    assert len(example["input_ids"]) == len(example["labels"])
    return example


def labelled_runs(tokenizer, example):
    """Decode each contiguous run of labelled tokens."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"]):
        if label == IGNORE:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token, "unshifted labels must equal the token they sit on"
            current.append(token)
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def test_text_row_labels_everything_and_appends_eos_once(tok):
    example = one([{"text": "hello world"}], tok)
    assert example["input_ids"] == tok("hello world")["input_ids"] + [tok.eos_token_id]
    assert example["labels"] == example["input_ids"]

    already = one([{"text": "hello world" + EOS}], tok)
    assert already["input_ids"] == example["input_ids"]
    assert already["input_ids"].count(tok.eos_token_id) == 1


def test_string_prompt_completion_labels_only_completion_and_eos(tok):
    example = one([{"prompt": "Q: 2+2?\nA:", "completion": " 4"}], tok)
    prompt_len = len(tok("Q: 2+2?\nA:")["input_ids"])
    assert example["labels"][:prompt_len] == [IGNORE] * prompt_len
    assert labelled_runs(tok, example) == [" 4" + EOS]
    assert example["input_ids"][-1] == tok.eos_token_id

    once = one([{"prompt": "Q: 2+2?\nA:", "completion": " 4" + EOS}], tok)
    assert once == example


def test_multi_turn_chat_labels_exactly_assistant_contents_and_eos(tok):
    example = one([{"messages": CONVERSATION}], tok)
    assert example["input_ids"] == tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False)
    assert labelled_runs(tok, example) == ["4" + EOS, "six, obviously" + EOS]
    labelled_text = "".join(labelled_runs(tok, example))
    for message in CONVERSATION:
        if message["role"] != "assistant":
            assert message["content"] not in labelled_text
    assert "assistant" not in labelled_text and "<|im_start|>" not in labelled_text
    # The "\n" ChatML writes after <|im_end|> is template formatting, not a target.
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    eos_positions = [i for i, t in enumerate(example["input_ids"]) if t == tok.eos_token_id]
    for i in eos_positions:
        if example["labels"][i] != IGNORE:
            assert example["input_ids"][i + 1 : i + 2] == newline
            assert example["labels"][i + 1] == IGNORE


def test_chat_prompt_completion_labels_only_the_completion(tok):
    row = {"prompt": CONVERSATION[:4], "completion": CONVERSATION[4:]}
    example = one([row], tok)
    assert example["input_ids"] == tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False)
    assert labelled_runs(tok, example) == ["six, obviously" + EOS]


def test_string_prompt_with_message_completion_uses_the_template(tok):
    example = one([{"prompt": "hi", "completion": [{"role": "assistant", "content": "yo"}]}], tok)
    expected = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tokenize=True, return_dict=False
    )
    assert example["input_ids"] == expected
    assert labelled_runs(tok, example) == ["yo" + EOS]


@pytest.mark.parametrize("row", [{"text": "the end"}, {"prompt": "q", "completion": "a"}, {"messages": CONVERSATION}])
def test_pad_equal_to_eos_keeps_eos_labelled(row):
    tokenizer = tiny_tokenizer(pad_token=EOS)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    example = one([row], tokenizer)
    eos_labels = [l for l in example["labels"] if l == tokenizer.eos_token_id]
    assert eos_labels, "the EOS that ends a completion must be a target"
    # Padding with the EOS id next to a longer example must not erase that target.
    longer = {"input_ids": [5] * (len(example["input_ids"]) + 3), "labels": [5] * (len(example["input_ids"]) + 3)}
    batch = collate_padded([example, longer], tokenizer.pad_token_id)
    assert (batch["labels"][0] == tokenizer.eos_token_id).sum() == len(eos_labels)


def test_tokenizer_without_pad_token():
    tokenizer = tiny_tokenizer(pad_token=None)
    assert tokenizer.pad_token_id is None
    examples, stats = tokenize_sft(
        load_rows([{"text": "a"}, {"messages": CONVERSATION}]), tokenizer, max_length=4096
    )
    assert stats.kept == 2
    assert labelled_runs(tokenizer, examples[1]) == ["4" + EOS, "six, obviously" + EOS]
    with pytest.raises(ValueError, match="pad_token_id must be an int"):
        collate_padded(examples, tokenizer.pad_token_id)
    collate_padded(examples, tokenizer.eos_token_id)


def test_no_chat_template_is_a_clear_error():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(DataError, match=r"<memory> row 1: .*tokenizer has no chat template"):
        tokenize_sft(load_rows([{"messages": CONVERSATION}]), tokenizer, max_length=4096)
    # Plain rows still work without one.
    assert tokenize_sft(load_rows([{"prompt": "q", "completion": "a"}]), tokenizer, max_length=64)[1].kept == 1


def test_template_that_rewrites_history_is_an_error():
    tokenizer = tiny_tokenizer()
    # Like reasoning templates that strip past assistant turns once a later message follows.
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and not loop.last %}{{ '' }}{% else %}{{ m['content'] }}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(DataError, match=r"<memory> row 1: cannot locate assistant message 2: .*rewrites"):
        tokenize_sft(load_rows([{"messages": CONVERSATION}]), tokenizer, max_length=4096)


def test_template_whose_generation_prompt_differs_is_an_error():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ 'bot' if m['role'] == 'assistant' else m['role'] }}\n"
        "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(DataError, match=r"cannot locate assistant message 2: .*not a prefix"):
        tokenize_sft(load_rows([{"messages": CONVERSATION}]), tokenizer, max_length=4096)


def test_template_without_eos_labels_the_whole_turn():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    example = one([{"messages": CONVERSATION[1:3]}], tokenizer)
    assert labelled_runs(tokenizer, example) == ["4\n\n"]


def test_leading_assistant_message_is_an_error(tok):
    rows = load_rows([{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]}])
    with pytest.raises(DataError, match="message 0 is an assistant turn"):
        tokenize_sft(rows, tok, max_length=4096)


def test_invalid_rows_are_rejected_with_location(tok):
    with pytest.raises(DataError, match=r"<memory> row 2: field 'completion'"):
        tokenize_sft(load_rows([{"text": "a"}, {"prompt": "q", "completion": 3}]), tok, max_length=64)


ROWS = [
    {"text": "x" * 10},  # 11 tokens with EOS
    {"prompt": "p" * 30, "completion": "c" * 5},  # 36 tokens, labels only in the last 6
    {"text": "short"},  # 6 tokens
]


def test_truncation_error_names_row_and_lengths(tok):
    with pytest.raises(DataError) as info:
        tokenize_sft(load_rows(ROWS), tok, max_length=20)
    assert str(info.value) == (
        "<memory> row 2: tokenised length 36 exceeds max_length 20 "
        "(truncation='error'; set truncation=truncate or drop)"
    )


def test_truncation_truncate_keeps_prefix_and_drops_rows_left_without_labels(tok):
    examples, stats = tokenize_sft(load_rows(ROWS), tok, max_length=8, truncation="truncate")
    # Row 1 is cut to 8 tokens; row 2 loses its whole completion and is dropped.
    assert (stats.total, stats.kept, stats.truncated, stats.dropped) == (3, 2, 1, 1)
    assert examples[0]["input_ids"] == tok("x" * 8)["input_ids"]
    assert examples[0]["labels"] == examples[0]["input_ids"]
    assert len(examples[1]["input_ids"]) == 6

    examples, stats = tokenize_sft(load_rows(ROWS), tok, max_length=32, truncation="truncate")
    assert (stats.kept, stats.truncated, stats.dropped) == (3, 1, 0)
    assert len(examples[1]["input_ids"]) == 32
    assert labelled_runs(tok, examples[1]) == ["cc"]  # the first two completion tokens survive


def test_truncation_drop_counts(tok):
    examples, stats = tokenize_sft(load_rows(ROWS), tok, max_length=11, truncation="drop")
    assert (stats.total, stats.kept, stats.truncated, stats.dropped) == (3, 2, 0, 1)
    assert [len(e["input_ids"]) for e in examples] == [11, 6]
    assert str(stats) == "kept 2/3 rows (0 truncated, 1 dropped)"


def test_invalid_arguments(tok):
    rows = load_rows(ROWS)
    with pytest.raises(ValueError, match="truncation must be one of"):
        tokenize_sft(rows, tok, max_length=8, truncation="cut")
    with pytest.raises(ValueError, match="max_length"):
        tokenize_sft(rows, tok, max_length=0)


def test_stats_defaults():
    assert str(TokenizeStats(total=2, kept=2, truncated=0, dropped=0)) == "kept 2/2 rows (0 truncated, 0 dropped)"
