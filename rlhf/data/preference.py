"""Preference pairs and unpaired (KTO) feedback -> (prompt, completion) token ids -> batches.

    rows = validate_rows(load_rows("pairs.jsonl"), "preference")
    examples, stats = tokenize_pairs(rows, tokenizer, max_length=1024)
    batch = collate_pairs(examples[:8], pad_token_id=tokenizer.pad_token_id, packed=True)
    # sequence i is prompt_i + chosen_i, sequence B + i is prompt_i + rejected_i

Every example keeps its prompt and completion ids apart, so one collator serves DPO-style
losses (sum of log-probs over completion tokens), reward models (the score at the last
token) and KTO (matched and mismatched prompt/completion pairs).

Completion ids are found by construction, as in `tokenize.py`: string rows tokenise the
prompt and the completion separately; chat rows render the prompt with the generation
prompt and check that it is a prefix of the rendered prompt + completion, whose suffix is
the completion. Labels never come from ``input_ids != pad_token_id``.

EOS (``append_eos``):
- True (policies: DPO family, KTO): a string completion gets the EOS appended once; a chat
  completion keeps the template's rendering up to and including its last EOS, so ChatML's
  "\\n" after ``<|im_end|>`` (formatting the model never has to generate) is left out.
- False (reward models): a string completion is tokenised as written, nothing appended; a
  chat completion keeps the template's rendering exactly, trailing "\\n" included. Either
  way the sequence does not end in the EOS id, so where pad == EOS (SmolLM2) transformers'
  "last token that is not pad" rule finds the same position as our ``last_index``.
"""

from __future__ import annotations

import torch

from .collate import IGNORE_INDEX, collate_packed, collate_padded
from .errors import DataError
from .formats import _check_completion, _check_prompt, check_row
from .io import Row
from .tokenize import TRUNCATION_POLICIES, TokenizeStats, _append_eos, encode_text, render_chat

Sequence = tuple[list[int], list[int]]  # (prompt_ids, completion_ids)


def tokenize_pairs(
    rows: list[Row], tokenizer, *, max_length: int, truncation: str = "error", append_eos: bool = True
) -> tuple[list[dict], TokenizeStats]:
    """Tokenise preference rows into ``{"prompt_ids", "chosen_ids", "rejected_ids"}`` examples.

    Length is ``len(prompt_ids) + max(len(chosen_ids), len(rejected_ids))``; above
    `max_length`, truncation "error" raises DataError naming the row, "drop" skips the row,
    "truncate" keeps the prompt and the head of each completion (completion tokens are cut
    from the end until each sequence fits). A row is dropped (and counted) when truncation
    would leave no completion token, or would leave chosen and rejected identical (such a
    pair carries no preference). A pair whose completions tokenise identically is a
    DataError: it would train on nothing.

    If any of prompt / chosen / rejected is a message list, the whole row goes through the
    chat template (a string prompt becomes one user message, a string completion one
    assistant message), so chosen and rejected share one prompt rendering.
    See the module docstring for `append_eos`.
    """
    _check_arguments(max_length, truncation)
    eos_id = _eos_id(tokenizer, append_eos)
    stats = TokenizeStats(total=len(rows))
    examples = []
    for row in rows:
        check_row(row, "preference")
        prompt_ids, (chosen_ids, rejected_ids) = _encode_row(
            row, tokenizer, ("chosen", "rejected"), append_eos=append_eos, eos_id=eos_id
        )
        if chosen_ids == rejected_ids:
            raise DataError(
                f"{row.location}: fields 'chosen' and 'rejected' tokenise to the same ids; "
                "a preference pair needs two different completions"
            )
        fitted = _fit(row, prompt_ids, [chosen_ids, rejected_ids], max_length, truncation)
        if fitted is None or fitted[0] == fitted[1]:
            stats.dropped += 1
            continue
        stats.kept += 1
        stats.truncated += fitted != [chosen_ids, rejected_ids]
        examples.append({"prompt_ids": prompt_ids, "chosen_ids": fitted[0], "rejected_ids": fitted[1]})
    return examples, stats


def tokenize_unpaired(
    rows: list[Row], tokenizer, *, max_length: int, truncation: str = "error", append_eos: bool = True
) -> tuple[list[dict], TokenizeStats]:
    """Tokenise KTO rows into ``{"prompt_ids", "completion_ids", "label"}`` examples.

    Same rules as `tokenize_pairs` with one completion: length is
    ``len(prompt_ids) + len(completion_ids)``; "truncate" keeps the completion's head and
    drops (counts) a row whose prompt leaves no room for a completion token.
    """
    _check_arguments(max_length, truncation)
    eos_id = _eos_id(tokenizer, append_eos)
    stats = TokenizeStats(total=len(rows))
    examples = []
    for row in rows:
        check_row(row, "unpaired")
        prompt_ids, (completion_ids,) = _encode_row(
            row, tokenizer, ("completion",), append_eos=append_eos, eos_id=eos_id
        )
        fitted = _fit(row, prompt_ids, [completion_ids], max_length, truncation)
        if fitted is None:
            stats.dropped += 1
            continue
        stats.kept += 1
        stats.truncated += fitted[0] != completion_ids
        examples.append({"prompt_ids": prompt_ids, "completion_ids": fitted[0], "label": bool(row.data["label"])})
    return examples, stats


def encode_prompt_completion(
    row: Row, tokenizer, *, append_eos: bool = True, max_length: int | None = None
) -> Sequence:
    """One ``{"prompt": P, "completion": C}`` row -> (prompt_ids, completion_ids), for scoring.

    An empty completion ("") is a valid answer to score: its ids are whatever the EOS or the
    chat template adds, possibly none (the sequence is then the prompt alone).
    With `max_length`, the completion's head is kept; a prompt that leaves no room for a
    completion token is a DataError naming the row.
    """
    for field, check in (("prompt", _check_prompt), ("completion", _check_completion)):
        if row.data.get(field) is None:
            raise DataError(f"{row.location}: missing field '{field}' (scoring needs prompt, completion)")
        if not (field == "completion" and row.data[field] == ""):
            check(row.location, field, row.data[field])
    prompt_ids, (completion_ids,) = _encode_row(
        row, tokenizer, ("completion",), append_eos=append_eos, eos_id=_eos_id(tokenizer, append_eos),
        allow_empty=True,
    )
    if max_length is None:
        return prompt_ids, completion_ids
    _check_arguments(max_length, "truncate")
    fitted = _fit(row, prompt_ids, [completion_ids], max_length, "truncate")
    if fitted is None:
        raise DataError(
            f"{row.location}: the prompt alone is {len(prompt_ids)} tokens, leaving no room for the completion "
            f"within max_length {max_length}"
        )
    return prompt_ids, fitted[0]


def collate_sequences(
    sequences: list[Sequence], *, pad_token_id: int | None, packed: bool
) -> dict[str, torch.Tensor]:
    """Batch S (prompt_ids, completion_ids) sequences; the completion tokens are the targets.

    packed=True: one padding-free row: input_ids, position_ids (restarting at 0 per
    sequence; call the model with use_cache=False so transformers masks across them) and
    labels, all (1, N); no attention_mask; `pad_token_id` is unused.
    packed=False: right-padded (S, T) input_ids, attention_mask, position_ids, labels.

    labels are shifted (`collate.shift_labels`): labels[t] is the token predicted at t,
    -100 except at positions predicting a completion token. Also:
    - segment_ids: labels' shape; the sequence index s at labelled positions, -1 elsewhere.
      With (N,) log-probs of the labelled positions in row-major order,
      ``torch.zeros(S).index_add(0, segment_ids[labels != -100], logprobs)`` sums them per
      sequence, in either layout.
    - last_index: (S,) flat index into ``input_ids.view(-1)`` of each sequence's last token
      (where a reward model's score is read).
    - num_tokens: (S,) labelled tokens per sequence (len(completion), or one fewer when
      the prompt is empty: the first token of a sequence has nothing predicting it).
    """
    if not sequences:
        raise ValueError("cannot collate an empty list of sequences")
    examples = []
    for index, sequence in enumerate(sequences):
        if not isinstance(sequence, (tuple, list)) or len(sequence) != 2:
            raise ValueError(f"sequence {index}: expected a (prompt_ids, completion_ids) pair")
        prompt_ids, completion_ids = (list(part) for part in sequence)
        examples.append({
            "input_ids": prompt_ids + completion_ids,
            "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
        })
    lengths = torch.tensor([len(example["input_ids"]) for example in examples], dtype=torch.long)  # (S,)
    count = len(examples)
    if packed:
        batch = collate_packed(examples)
        segment = torch.repeat_interleave(torch.arange(count), lengths).unsqueeze(0)  # (1, N)
        last_index = torch.cumsum(lengths, 0) - 1
    else:
        batch = collate_padded(examples, pad_token_id, padding_side="right")
        width = batch["input_ids"].shape[1]
        segment = torch.arange(count).unsqueeze(1).expand(count, width)  # (S, T)
        last_index = torch.arange(count) * width + lengths - 1
    labelled = batch["labels"] != IGNORE_INDEX
    batch["segment_ids"] = torch.where(labelled, segment, torch.full_like(segment, -1))
    batch["last_index"] = last_index
    batch["num_tokens"] = torch.bincount(batch["segment_ids"][labelled], minlength=count)
    return batch


def collate_pairs(examples: list[dict], *, pad_token_id: int | None, packed: bool,
                  share_prompts: bool = False) -> dict:
    """`collate_sequences` on B chosen then B rejected sequences, plus ``num_pairs`` = B (an int).

    Sequence i is prompt_i + chosen_i and sequence B + i is prompt_i + rejected_i, so per
    sequence results split as ``x[:B]`` (chosen) and ``x[B:]`` (rejected). With `packed` and
    `share_prompts`, `collate_pairs_sharing_prompts`: each prompt once, its completions branching
    from it (the model must support branches).
    """
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    if packed and share_prompts:
        return collate_pairs_sharing_prompts(examples)
    chosen = [(e["prompt_ids"], e["chosen_ids"]) for e in examples]
    rejected = [(e["prompt_ids"], e["rejected_ids"]) for e in examples]
    batch = collate_sequences(chosen + rejected, pad_token_id=pad_token_id, packed=packed)
    batch["num_pairs"] = len(examples)
    return batch


def collate_pairs_sharing_prompts(examples: list[dict]) -> dict:
    """The B pairs as one packed row where each prompt appears once, followed by its chosen and its
    rejected completion as two branches of it: `collate_pairs(packed=True)` in fewer tokens.

    Position ids restart at 0 at each prompt and both completions continue from the prompt's
    length, so the second branch attends to the prompt and itself only (`rlhf.models.attention`,
    which the model must use: `supports_branches`). On the demo's gold pairs (a 51-token chat
    prompt, 31-token completions) a pair costs 114 tokens instead of 165.

    The last prompt token predicts the first token of both completions, so the N targets come as
    flat (N,) `labels` with their (N,) `label_positions` in the row and (N,) `segment_ids` (the
    sequence each belongs to); sequences are numbered as in `collate_pairs`, the B chosen then the
    B rejected, for `last_index` (2B,) (where a reward model reads its score) and `num_tokens` (2B,).
    Also input_ids, position_ids (1, L) and num_pairs = B.
    """
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    count = len(examples)
    ids, positions, targets, target_positions, segments = [], [], [], [], []
    last = [0] * (2 * count)
    for i, e in enumerate(examples):
        prompt = list(e["prompt_ids"])
        prompt_last = len(ids) + len(prompt) - 1  # -1 into the row when the prompt is empty: unused
        ids += prompt
        positions += range(len(prompt))
        for sequence, completion in ((i, list(e["chosen_ids"])), (count + i, list(e["rejected_ids"]))):
            start = len(ids)
            ids += completion
            positions += range(len(prompt), len(prompt) + len(completion))
            predictors = ([prompt_last] if prompt else []) + list(range(start, start + len(completion) - 1))
            predicted = completion if prompt else completion[1:]  # no token predicts a document's first
            targets += predicted
            target_positions += predictors
            segments += [sequence] * len(predicted)
            last[sequence] = len(ids) - 1 if completion else prompt_last
    return {"input_ids": torch.tensor([ids], dtype=torch.long), "position_ids": torch.tensor([positions], dtype=torch.long),
            "labels": torch.tensor(targets, dtype=torch.long), "label_positions": torch.tensor(target_positions, dtype=torch.long),
            "segment_ids": torch.tensor(segments, dtype=torch.long), "last_index": torch.tensor(last, dtype=torch.long),
            "num_tokens": torch.bincount(torch.tensor(segments, dtype=torch.long), minlength=2 * count),
            "num_pairs": count}


def collate_unpaired(examples: list[dict], *, pad_token_id: int | None, packed: bool) -> dict:
    """The B matched sequences, plus the B mismatched ones under `kl_`-prefixed keys, for KTO.

    Sequence i is prompt_i + completion_i; `kl_` sequence i is prompt_i + completion_{(i+1) % B},
    the mismatched pairs from which KTO estimates its KL reference point z_0 (Ethayarajh et
    al. 2024, arXiv 2402.01306, sec. 4.1). They are separate batches because z_0 carries no
    gradient: the mismatched pass runs without autograd. With B == 1 the "mismatched"
    sequence is the matched one (a micro-batch of one has no other completion). Also returns
    ``desirable`` (B,) bool, the labels, and ``num_samples`` = B (an int).
    """
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    count = len(examples)
    matched = [(e["prompt_ids"], e["completion_ids"]) for e in examples]
    mismatched = [(e["prompt_ids"], examples[(i + 1) % count]["completion_ids"]) for i, e in enumerate(examples)]
    batch = collate_sequences(matched, pad_token_id=pad_token_id, packed=packed)
    kl_batch = collate_sequences(mismatched, pad_token_id=pad_token_id, packed=packed)
    batch.update({f"kl_{key}": value for key, value in kl_batch.items()})
    batch["desirable"] = torch.tensor([bool(e["label"]) for e in examples], dtype=torch.bool)
    batch["num_samples"] = count
    return batch


def _check_arguments(max_length: int, truncation: str) -> None:
    if truncation not in TRUNCATION_POLICIES:
        raise ValueError(f"truncation must be one of {', '.join(TRUNCATION_POLICIES)}, got {truncation!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")


def _eos_id(tokenizer, append_eos: bool) -> int | None:
    eos_id = tokenizer.eos_token_id
    if append_eos and eos_id is None:
        raise ValueError(
            "the tokenizer has no eos_token; append_eos=True needs one to mark where a completion ends"
        )
    return eos_id


def _fit(row: Row, prompt_ids: list[int], completions: list[list[int]], max_length: int, truncation: str):
    """Apply the truncation policy; the completions as kept, or None to drop the row."""
    length = len(prompt_ids) + max(len(ids) for ids in completions)
    if length <= max_length:
        return completions
    if truncation == "error":
        raise DataError(
            f"{row.location}: tokenised length {length} (prompt {len(prompt_ids)} + longest completion "
            f"{length - len(prompt_ids)}) exceeds max_length {max_length} "
            "(truncation='error'; set truncation=truncate or drop)"
        )
    budget = max_length - len(prompt_ids)
    if truncation == "drop" or budget < 1:
        return None
    return [ids[:budget] for ids in completions]


def _encode_row(
    row: Row, tokenizer, fields: tuple[str, ...], *, append_eos: bool, eos_id: int | None, allow_empty: bool = False
) -> tuple[list[int], list[list[int]]]:
    """(prompt_ids, [completion_ids per field]) for one validated row; `allow_empty`: a completion
    may tokenise to no ids (scoring), where training would have nothing to learn from it."""
    data = row.data
    prompt = data["prompt"]
    completions = [data[field] for field in fields]
    if isinstance(prompt, str) and all(isinstance(c, str) for c in completions):
        prompt_ids = encode_text(tokenizer, prompt, add_special_tokens=True)
        out = []
        for field, completion in zip(fields, completions):
            ids = encode_text(tokenizer, completion, add_special_tokens=False)
            if not ids and not allow_empty:
                raise DataError(f"{row.location}: field '{field}' tokenises to no tokens")
            out.append(_append_eos(ids, eos_id) if append_eos else ids)
        _check_prompt_ids(row, prompt_ids)
        return prompt_ids, out

    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{row.location}: this row holds chat messages but the tokenizer has no chat template; "
            "set tokenizer.chat_template, or use string prompts and completions"
        )
    prompt_messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    prompt_ids = render_chat(tokenizer, prompt_messages, add_generation_prompt=True)
    _check_prompt_ids(row, prompt_ids)
    out = []
    for field, completion in zip(fields, completions):
        messages = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else list(completion)
        full = render_chat(tokenizer, prompt_messages + messages, add_generation_prompt=False)
        if full[: len(prompt_ids)] != prompt_ids:
            raise DataError(
                f"{row.location}: field '{field}': cannot locate the completion: the chat template's rendering "
                "of the prompt with add_generation_prompt=True is not a prefix of its rendering of the prompt "
                "followed by the completion (the template renders an assistant turn differently from its "
                "generation prompt)"
            )
        ids = full[len(prompt_ids) :]
        if append_eos and eos_id in ids:
            # Stop at the last EOS: what a template writes after it (ChatML's "\n") is
            # formatting the model never has to generate. The last, not the first, so a
            # completion of several assistant messages keeps all of them.
            ids = ids[: len(ids) - ids[::-1].index(eos_id)]
        if not ids and not allow_empty:
            raise DataError(f"{row.location}: field '{field}': the chat template renders the completion as no tokens")
        out.append(ids)
    return prompt_ids, out


def _check_prompt_ids(row: Row, prompt_ids: list[int]) -> None:
    # The first token of a sequence is predicted by nothing, so an empty prompt would
    # silently lose the completion's first token from the loss.
    if not prompt_ids:
        raise DataError(f"{row.location}: field 'prompt' tokenises to no tokens")
