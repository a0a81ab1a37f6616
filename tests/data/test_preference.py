import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.data import (
    DataError,
    collate_pairs,
    collate_sequences,
    collate_unpaired,
    encode_prompt_completion,
    load_rows,
    tokenize_pairs,
    tokenize_unpaired,
    validate_rows,
)
from rlhf.testing import tiny_causal_lm, tiny_tokenizer

IGNORE = -100
EOS = "<|im_end|>"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


def pairs(rows, tokenizer, *, max_length=4096, **kwargs):
    return tokenize_pairs(validate_rows(load_rows(rows), "preference"), tokenizer, max_length=max_length, **kwargs)


def one_pair(row, tokenizer, **kwargs):
    examples, stats = pairs([row], tokenizer, **kwargs)
    assert stats.kept == len(examples) == 1
    return examples[0]


def decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False)


# --- tokenisation ---------------------------------------------------------------------------


def test_string_pair_completions_decode_to_text_plus_one_eos(tok):
    example = one_pair({"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " five" + EOS}, tok)
    assert example["prompt_ids"] == tok("Q: 2+2?\nA:")["input_ids"]
    assert decode(tok, example["chosen_ids"]) == " 4" + EOS
    assert decode(tok, example["rejected_ids"]) == " five" + EOS  # already there: not doubled
    assert example["rejected_ids"].count(tok.eos_token_id) == 1


@pytest.mark.parametrize(
    "prompt, chosen, rejected",
    [
        (user("What is 2+2?"), assistant("4"), assistant("five")),
        ("What is 2+2?", assistant("4"), "five"),  # mixed: string sides become messages
        ([{"role": "system", "content": "Be terse."}, *user("What is 2+2?")], "4", "five"),
    ],
)
def test_chat_pair_completion_is_the_rendered_suffix_up_to_eos(tok, prompt, chosen, rejected):
    example = one_pair({"prompt": prompt, "chosen": chosen, "rejected": rejected}, tok)
    prompt_messages = user(prompt) if isinstance(prompt, str) else prompt
    rendered_prompt = tok.apply_chat_template(prompt_messages, add_generation_prompt=True, tokenize=False)
    assert decode(tok, example["prompt_ids"]) == rendered_prompt
    assert rendered_prompt.endswith("<|im_start|>assistant\n")
    # exactly the content and EOS: ChatML's "\n" after <|im_end|> is left out
    assert decode(tok, example["chosen_ids"]) == "4" + EOS
    assert decode(tok, example["rejected_ids"]) == "five" + EOS
    full = tok.apply_chat_template(prompt_messages + assistant("4"), tokenize=True, return_dict=False)
    assert list(full)[: len(example["prompt_ids"]) + len(example["chosen_ids"])] == (
        example["prompt_ids"] + example["chosen_ids"]
    )


def test_chat_completion_of_several_assistant_messages_keeps_all_of_them(tok):
    chosen = assistant("one") + assistant("two")
    example = one_pair({"prompt": user("count"), "chosen": chosen, "rejected": assistant("three")}, tok)
    assert decode(tok, example["chosen_ids"]) == "one" + EOS + "\n<|im_start|>assistant\ntwo" + EOS


def test_append_eos_false_sequences_do_not_end_in_eos(tok):
    string = one_pair({"prompt": "Q:", "chosen": " yes", "rejected": " no"}, tok, append_eos=False)
    assert decode(tok, string["chosen_ids"]) == " yes"
    assert decode(tok, string["rejected_ids"]) == " no"
    chat = one_pair({"prompt": user("Q"), "chosen": "yes", "rejected": "no"}, tok, append_eos=False)
    assert decode(tok, chat["chosen_ids"]) == "yes" + EOS + "\n"  # the template's rendering, exactly
    for example in (string, chat):
        for key in ("chosen_ids", "rejected_ids"):
            assert example[key][-1] != tok.eos_token_id


def test_append_eos_false_score_position_matches_transformers_rule_when_pad_is_eos():
    tokenizer = tiny_tokenizer(pad_token=EOS)
    rows = [
        {"prompt": user("Q"), "chosen": "yes", "rejected": "no, definitely not"},
        {"prompt": "a longer string prompt", "chosen": " a", "rejected": " b"},
    ]
    examples, _ = pairs(rows, tokenizer, append_eos=False)
    batch = collate_pairs(examples, pad_token_id=tokenizer.pad_token_id, packed=False)
    # transformers' sequence classifiers read the rightmost token that is not pad_token_id
    ids = batch["input_ids"]
    non_pad = (ids != tokenizer.pad_token_id).long() * torch.arange(ids.shape[1])
    hf_last = torch.arange(ids.shape[0]) * ids.shape[1] + non_pad.argmax(-1)
    assert batch["last_index"].tolist() == hf_last.tolist()


def test_identical_completions_after_tokenisation_name_the_row(tok, tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": "same", "rejected": assistant("same")},  # differ as data, not as tokens
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    rows = validate_rows(load_rows(path), "preference")
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: fields 'chosen' and 'rejected' tokenise to the same ids"):
        tokenize_pairs(rows, tok, max_length=100)


def test_chat_row_without_template_is_a_data_error():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(DataError, match=r"<memory> row 1: .*no chat template"):
        pairs([{"prompt": user("q"), "chosen": "a", "rejected": "b"}], tokenizer)


def test_template_without_prefix_property_is_a_data_error(tok):
    tokenizer = tiny_tokenizer()
    # a generation prompt that differs from how the assistant turn is rendered
    tokenizer.chat_template = tok.chat_template.replace("'<|im_start|>assistant\n'", "'<|im_start|>bot\n'")
    assert tokenizer.chat_template != tok.chat_template
    with pytest.raises(DataError, match=r"<memory> row 1: field 'chosen': cannot locate the completion"):
        pairs([{"prompt": user("q"), "chosen": "a", "rejected": "b"}], tokenizer)


def lengths_row(prompt_len, chosen_len, rejected_len):
    # byte-level tokenizer: one token per ASCII character (+ EOS on completions)
    return {"prompt": "p" * prompt_len, "chosen": "c" * chosen_len, "rejected": "r" * rejected_len}


def test_truncation_policies_and_counts(tok):
    rows = [
        lengths_row(3, 2, 2),  # 3 + 3 = 6: fits
        lengths_row(3, 6, 2),  # 3 + 7 = 10: too long
        lengths_row(8, 1, 1),  # 8 + 2 = 10: too long, and the prompt leaves 0 completion tokens at 8
    ]
    with pytest.raises(DataError, match=r"<memory> row 2: tokenised length 10 .* exceeds max_length 8"):
        pairs(rows, tok, max_length=8)

    kept, stats = pairs(rows, tok, max_length=8, truncation="drop")
    assert (stats.total, stats.kept, stats.dropped, stats.truncated) == (3, 1, 2, 0)
    assert decode(tok, kept[0]["chosen_ids"]) == "cc" + EOS

    kept, stats = pairs(rows, tok, max_length=8, truncation="truncate")
    assert (stats.total, stats.kept, stats.dropped, stats.truncated) == (3, 2, 1, 1)
    assert str(stats) == "kept 2/3 rows (1 truncated, 1 dropped)"
    cut = kept[1]
    assert decode(tok, cut["prompt_ids"]) == "ppp"
    assert decode(tok, cut["chosen_ids"]) == "ccccc"  # head kept, EOS cut off with the tail
    assert decode(tok, cut["rejected_ids"]) == "rr" + EOS  # short enough: untouched
    for example in kept:
        assert len(example["prompt_ids"]) + max(len(example["chosen_ids"]), len(example["rejected_ids"])) <= 8


def test_truncation_that_makes_the_pair_identical_drops_it(tok):
    row = {"prompt": "ppp", "chosen": "same start, then A", "rejected": "same start, then B"}
    kept, stats = pairs([row], tok, max_length=8, truncation="truncate")
    assert kept == [] and (stats.kept, stats.dropped) == (0, 1)


def test_bad_arguments(tok):
    rows = [lengths_row(1, 1, 2)]
    with pytest.raises(ValueError, match="truncation"):
        pairs(rows, tok, truncation="left")
    with pytest.raises(ValueError, match="max_length"):
        pairs(rows, tok, max_length=0)


def test_tokenize_unpaired(tok):
    long_completion = " a very long completion, longer still"
    rows = validate_rows(load_rows([
        {"prompt": "Q:", "completion": " yes", "label": True},
        {"prompt": user("Q"), "completion": "no", "label": False},  # 20 prompt tokens + "no" + EOS
        {"prompt": "Q:", "completion": long_completion, "label": True},
        {"prompt": "a prompt that is far too long", "completion": "x", "label": False},
    ]), "unpaired")
    with pytest.raises(DataError, match=r"<memory> row 3: tokenised length 40 "):
        tokenize_unpaired(rows, tok, max_length=24)
    examples, stats = tokenize_unpaired(rows, tok, max_length=24, truncation="truncate")
    assert (stats.kept, stats.truncated, stats.dropped) == (3, 1, 1)
    assert [e["label"] for e in examples] == [True, False, True]
    assert decode(tok, examples[0]["completion_ids"]) == " yes" + EOS
    assert decode(tok, examples[1]["completion_ids"]) == "no" + EOS
    assert decode(tok, examples[2]["completion_ids"]) == long_completion[:22]
    _, dropped = tokenize_unpaired(rows, tok, max_length=24, truncation="drop")
    assert (dropped.kept, dropped.dropped) == (2, 2)


def test_encode_prompt_completion(tok):
    row = load_rows([{"prompt": user("Q"), "completion": "yes"}])[0]
    prompt_ids, completion_ids = encode_prompt_completion(row, tok, append_eos=False)
    assert decode(tok, completion_ids) == "yes" + EOS + "\n"
    _, cut = encode_prompt_completion(row, tok, append_eos=False, max_length=len(prompt_ids) + 2)
    assert decode(tok, cut) == "ye"
    with pytest.raises(DataError, match=r"<memory> row 1: the prompt alone"):
        encode_prompt_completion(row, tok, max_length=len(prompt_ids))
    with pytest.raises(DataError, match=r"missing field 'completion'"):
        encode_prompt_completion(load_rows([{"prompt": "Q"}])[0], tok)
    # an empty completion is an answer to score: the prompt alone, plus what EOS / the template add
    empty = load_rows([{"prompt": "Q", "completion": ""}, {"prompt": user("Q"), "completion": ""}])
    assert encode_prompt_completion(empty[0], tok, append_eos=False)[1] == []
    assert decode(tok, encode_prompt_completion(empty[0], tok)[1]) == EOS
    assert decode(tok, encode_prompt_completion(empty[1], tok, append_eos=False)[1]) == EOS + "\n"


# --- collation ------------------------------------------------------------------------------


def test_collate_sequences_by_hand():
    sequences = [([1, 2], [3, 4]), ([5], [6])]
    padded = collate_sequences(sequences, pad_token_id=0, packed=False)
    assert padded["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 0, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert padded["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 0, 0]]
    assert padded["labels"].tolist() == [[IGNORE, 3, 4, IGNORE], [6, IGNORE, IGNORE, IGNORE]]
    assert padded["segment_ids"].tolist() == [[-1, 0, 0, -1], [1, -1, -1, -1]]
    assert padded["last_index"].tolist() == [3, 5]
    assert padded["num_tokens"].tolist() == [2, 1]

    packed = collate_sequences(sequences, pad_token_id=None, packed=True)
    assert set(packed) == {"input_ids", "position_ids", "labels", "segment_ids", "last_index", "num_tokens"}
    assert packed["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1]]
    assert packed["labels"].tolist() == [[IGNORE, 3, 4, IGNORE, 6, IGNORE]]
    assert packed["segment_ids"].tolist() == [[-1, 0, 0, -1, 1, -1]]
    assert packed["last_index"].tolist() == [3, 5]
    assert packed["num_tokens"].tolist() == [2, 1]
    for batch in (padded, packed):
        assert all(batch[k].dtype == torch.long for k in ("segment_ids", "last_index", "num_tokens"))


@st.composite
def sequence_lists(draw):
    count = draw(st.integers(1, 5))
    return [
        (draw(st.lists(st.integers(1, 40), max_size=5)), draw(st.lists(st.integers(1, 40), min_size=1, max_size=5)))
        for _ in range(count)
    ]


@settings(max_examples=60, deadline=None)
@given(sequence_lists(), st.booleans())
def test_segments_and_labels_never_cross_sequences(sequences, packed):
    batch = collate_sequences(sequences, pad_token_id=0, packed=packed)
    ids = batch["input_ids"].reshape(-1).tolist()
    labels = batch["labels"].reshape(-1).tolist()
    segments = batch["segment_ids"].reshape(-1).tolist()
    width = batch["input_ids"].shape[1]
    start = 0
    for s, (prompt, completion) in enumerate(sequences):
        length = len(prompt) + len(completion)
        if not packed:
            start = s * width
        span = range(start, start + length)
        assert ids[start : start + length] == prompt + completion
        assert batch["last_index"][s] == span[-1]
        # labelled positions of sequence s: exactly those predicting its completion tokens
        mine = [t for t in range(len(ids)) if segments[t] == s]
        first = max(len(prompt), 1)  # nothing predicts a sequence's first token
        assert mine == [start + k - 1 for k in range(first, length)]
        assert [labels[t] for t in mine] == (prompt + completion)[first:]
        assert all(t + 1 in span for t in mine)
        assert batch["num_tokens"][s] == len(mine)
        start += length
    assert [segment != -1 for segment in segments] == [label != IGNORE for label in labels]


def test_collate_errors():
    with pytest.raises(ValueError, match="empty"):
        collate_sequences([], pad_token_id=0, packed=True)
    with pytest.raises(ValueError, match="pad_token_id"):
        collate_sequences([([1], [2])], pad_token_id=None, packed=False)
    with pytest.raises(ValueError, match="no tokens"):
        collate_sequences([([], [])], pad_token_id=0, packed=True)
    with pytest.raises(ValueError, match="empty"):
        collate_pairs([], pad_token_id=0, packed=True)


def test_collate_pairs_orders_chosen_then_rejected():
    examples = [
        {"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3, 3]},
        {"prompt_ids": [4, 4], "chosen_ids": [5], "rejected_ids": [6]},
    ]
    batch = collate_pairs(examples, pad_token_id=0, packed=False)
    assert batch["num_pairs"] == 2
    assert batch["input_ids"].tolist() == [[1, 2, 0], [4, 4, 5], [1, 3, 3], [4, 4, 6]]
    assert batch["num_tokens"].tolist() == [1, 1, 2, 1]


def test_collate_unpaired_mismatches_completions():
    examples = [
        {"prompt_ids": [1], "completion_ids": [10], "label": True},
        {"prompt_ids": [2], "completion_ids": [20, 21], "label": False},
        {"prompt_ids": [3], "completion_ids": [30], "label": True},
    ]
    batch = collate_unpaired(examples, pad_token_id=0, packed=True)
    assert batch["num_samples"] == 3
    assert batch["desirable"].dtype == torch.bool and batch["desirable"].tolist() == [True, False, True]
    # matched (p_i, c_i), and separately mismatched (p_i, c_{(i+1) % B})
    assert batch["input_ids"].tolist() == [[1, 10, 2, 20, 21, 3, 30]]
    assert batch["kl_input_ids"].tolist() == [[1, 20, 21, 2, 30, 3, 10]]
    assert batch["num_tokens"].tolist() == [1, 2, 1] and batch["kl_num_tokens"].tolist() == [2, 1, 1]

    single = collate_unpaired(examples[:1], pad_token_id=0, packed=False)
    assert single["kl_input_ids"].tolist() == single["input_ids"].tolist() == [[1, 10]]  # B == 1: mismatched == matched
    assert single["num_samples"] == 1 and single["desirable"].tolist() == [True]


# --- on a tiny model ------------------------------------------------------------------------


def per_sequence_logprobs(model, batch):
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    # use_cache=False: with a cache transformers ignores the packed documents' boundaries
    logits = model(**inputs, use_cache=False).logits  # (B, T, V)
    selected = batch["labels"] != IGNORE
    logprobs = torch.log_softmax(logits[selected], -1).gather(-1, batch["labels"][selected][:, None]).squeeze(-1)
    count = batch["last_index"].shape[0]
    return torch.zeros(count).index_add(0, batch["segment_ids"][selected], logprobs)  # (S,)


def reference_logprobs(model, prompt_ids, completion_ids):
    """One sequence alone, no collator: sum of log p(completion token | everything before it)."""
    ids = torch.tensor([prompt_ids + completion_ids])
    logprobs = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0], -1)  # (T, V)
    start = len(prompt_ids)
    return sum(logprobs[t - 1, ids[0, t]] for t in range(start, ids.shape[1]))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_and_padded_pairs_agree_on_a_tiny_model(attn):
    tokenizer = tiny_tokenizer()
    rows = [
        {"prompt": "2+2=", "chosen": "4", "rejected": "five, I think"},
        {"prompt": user("say hi"), "chosen": "hello there", "rejected": "no"},
        {"prompt": "a much longer prompt than the others, to force padding", "chosen": "ok", "rejected": "fine"},
    ]
    examples, _ = pairs(rows, tokenizer)
    model = tiny_causal_lm(tokenizer)
    model.set_attn_implementation(attn)
    model.eval()
    with torch.no_grad():
        padded_batch = collate_pairs(examples, pad_token_id=tokenizer.pad_token_id, packed=False)
        packed_batch = collate_pairs(examples, pad_token_id=tokenizer.pad_token_id, packed=True)
        padded = per_sequence_logprobs(model, padded_batch)
        packed = per_sequence_logprobs(model, packed_batch)
        sequences = [(e["prompt_ids"], e[key]) for key in ("chosen_ids", "rejected_ids") for e in examples]
        reference = torch.stack([reference_logprobs(model, p, c) for p, c in sequences])

        # the last token's output (where a reward model reads its score) agrees too
        last = {}
        for name, batch in (("padded", padded_batch), ("packed", packed_batch)):
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
            logits = model(**inputs, use_cache=False).logits
            last[name] = logits.reshape(-1, logits.shape[-1])[batch["last_index"]]

    torch.testing.assert_close(packed, padded, atol=1e-4, rtol=0)
    torch.testing.assert_close(packed, reference, atol=1e-4, rtol=0)
    torch.testing.assert_close(last["packed"], last["padded"], atol=1e-4, rtol=0)
    for batch in (padded_batch, packed_batch):
        flat = batch["input_ids"].reshape(-1)
        assert flat[batch["last_index"]].tolist() == [c[-1] for _, c in sequences]
        assert batch["num_tokens"].tolist() == [len(c) for _, c in sequences]
    # padded: the last real token is followed by padding or the row's end
    mask = padded_batch["attention_mask"].reshape(-1)
    assert mask[padded_batch["last_index"]].tolist() == [1] * len(sequences)
    width = padded_batch["input_ids"].shape[1]
    for index in padded_batch["last_index"].tolist():
        assert (index + 1) % width == 0 or mask[index + 1] == 0
