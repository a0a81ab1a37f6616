import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.data import (
    collate_packed,
    collate_padded,
    count_loss_tokens,
    load_rows,
    shift_labels,
    tokenize_sft,
)
from rlhf.testing import tiny_causal_lm, tiny_tokenizer

IGNORE = -100
PAD = 0


def example(input_ids, labels=None):
    return {"input_ids": list(input_ids), "labels": list(input_ids if labels is None else labels)}


@st.composite
def examples(draw):
    count = draw(st.integers(1, 4))
    out = []
    for _ in range(count):
        ids = draw(st.lists(st.integers(1, 50), min_size=1, max_size=9))
        mask = draw(st.lists(st.booleans(), min_size=len(ids), max_size=len(ids)))
        out.append(example(ids, [t if keep else IGNORE for t, keep in zip(ids, mask)]))
    return out


def test_shift_labels():
    assert shift_labels([1, 2, 3]) == [2, 3, IGNORE]
    assert shift_labels([7]) == [IGNORE]
    assert shift_labels([IGNORE, IGNORE, 5, 6]) == [IGNORE, 5, 6, IGNORE]


def test_padded_layout_by_hand():
    batch = collate_padded([example([5, 6, 7], [IGNORE, 6, 7]), example([8])], PAD)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert batch["labels"].tolist() == [[6, 7, IGNORE], [IGNORE, IGNORE, IGNORE]]
    assert batch["input_ids"].dtype == torch.long

    left = collate_padded([example([5, 6, 7], [IGNORE, 6, 7]), example([8, 9])], PAD, padding_side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [PAD, 8, 9]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert left["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]
    assert left["labels"].tolist() == [[6, 7, IGNORE], [IGNORE, 9, IGNORE]]


def unpad(batch):
    out = []
    for row in range(batch["input_ids"].shape[0]):
        real = batch["attention_mask"][row].bool()
        out.append(tuple(batch[key][row][real].tolist() for key in ("input_ids", "labels", "position_ids")))
    return out


@settings(max_examples=40, deadline=None)
@given(examples())
def test_left_and_right_padding_agree_once_pads_are_removed(batch_examples):
    right = collate_padded(batch_examples, PAD, padding_side="right")
    left = collate_padded(batch_examples, PAD, padding_side="left")
    assert unpad(right) == unpad(left)
    for (ids, labels, positions), ex in zip(unpad(left), batch_examples):
        assert ids == ex["input_ids"]
        assert labels == shift_labels(ex["labels"])
        assert positions == list(range(len(ids)))
    for batch in (left, right):
        assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
        assert count_loss_tokens(batch) == sum(sum(l != IGNORE for l in e["labels"][1:]) for e in batch_examples)


@settings(max_examples=40, deadline=None)
@given(examples())
def test_packed_positions_reset_and_labels_never_cross_documents(batch_examples):
    packed = collate_packed(batch_examples)
    assert set(packed) == {"input_ids", "position_ids", "labels"}
    lengths = [len(e["input_ids"]) for e in batch_examples]
    assert packed["input_ids"].shape == (1, sum(lengths))
    ids, positions, labels = (packed[k][0].tolist() for k in ("input_ids", "position_ids", "labels"))
    assert positions == [p for n in lengths for p in range(n)]
    start = 0
    for ex, n in zip(batch_examples, lengths):
        assert ids[start : start + n] == ex["input_ids"]
        assert labels[start + n - 1] == IGNORE  # a document's last token never predicts the next one's first
        for t in range(start, start + n - 1):
            assert labels[t] in (IGNORE, ids[t + 1])
        start += n
    assert count_loss_tokens(packed) == count_loss_tokens(collate_padded(batch_examples, PAD))


def test_collate_errors():
    with pytest.raises(ValueError, match="empty"):
        collate_padded([], PAD)
    with pytest.raises(ValueError, match="empty"):
        collate_packed([])
    with pytest.raises(ValueError, match="labels has 1 entries for 2 input_ids"):
        collate_packed([{"input_ids": [1, 2], "labels": [1]}])
    with pytest.raises(ValueError, match="padding_side"):
        collate_padded([example([1])], PAD, padding_side="middle")
    with pytest.raises(ValueError, match="pad_token_id"):
        collate_padded([example([1])], None)


def test_count_loss_tokens_takes_a_tensor():
    assert count_loss_tokens(torch.tensor([[1, IGNORE, 2]])) == 2


def summed_ce(model, batch):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    # use_cache=False: with the default use_cache=True the model builds a DynamicCache, and
    # transformers only reads packed-document boundaries from position_ids when there is no
    # cache (masking_utils._preprocess_mask_arguments), so packed documents would attend
    # to each other.
    logits = model(**inputs, use_cache=False).logits  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE, reduction="sum")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_gives_the_padded_loss_on_a_tiny_model(attn):
    tokenizer = tiny_tokenizer()
    rows = load_rows([
        {"text": "The quick brown fox."},
        {"prompt": "2+2=", "completion": "4"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]},
        {"prompt": "a much longer prompt than the others, to force padding", "completion": "ok"},
    ])
    examples_, _ = tokenize_sft(rows, tokenizer, max_length=256)
    model = tiny_causal_lm(tokenizer)
    model.set_attn_implementation(attn)
    model.eval()
    with torch.no_grad():
        right = summed_ce(model, collate_padded(examples_, tokenizer.pad_token_id))
        left = summed_ce(model, collate_padded(examples_, tokenizer.pad_token_id, padding_side="left"))
        packed = summed_ce(model, collate_packed(examples_))
        separate = sum(summed_ce(model, collate_packed([e])) for e in examples_)
    torch.testing.assert_close(packed, separate, atol=1e-4, rtol=0)
    torch.testing.assert_close(packed, right, atol=1e-4, rtol=0)
    torch.testing.assert_close(left, right, atol=1e-4, rtol=0)
