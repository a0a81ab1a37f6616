import torch

from rlhf.data import collate_packed, collate_padded
from rlhf.models.attention import NAME, use_packed_attention
from rlhf.testing import tiny_causal_lm, tiny_tokenizer


def _examples():
    torch.manual_seed(0)
    return [{"input_ids": torch.randint(0, 250, (n,)).tolist(), "labels": torch.randint(0, 250, (n,)).tolist()}
            for n in (7, 3, 12, 1, 9)]


def test_per_document_attention_equals_the_block_masked_row_values_and_gradients():
    tok = tiny_tokenizer()
    reference, packed = tiny_causal_lm(tok, seed=1), tiny_causal_lm(tok, seed=1)  # 4 heads over 2 kv heads (GQA)
    use_packed_attention(packed)
    assert packed.config._attn_implementation == NAME
    batch = collate_packed(_examples())
    outs = []
    for model in (reference, packed):
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        logits.square().mean().backward()
        outs.append((logits.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5)
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-5)


def test_padded_batches_and_cached_decoding_fall_back_to_sdpa():
    tok = tiny_tokenizer()
    reference, packed = tiny_causal_lm(tok, seed=1), tiny_causal_lm(tok, seed=1)
    use_packed_attention(packed)
    batch = collate_padded(_examples(), tok.pad_token_id, padding_side="left")
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        assert torch.allclose(reference(**inputs).logits, packed(**inputs).logits, atol=1e-6)
        ids = torch.tensor([[5, 6, 7, 8]])
        a = reference.generate(ids, max_new_tokens=5, do_sample=False)
        b = packed.generate(ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(a, b)


def test_segments_find_documents_and_branches_of_a_shared_prompt():
    from rlhf.models.attention import _segments

    def seg(*positions):
        return _segments(torch.tensor([sum(positions, [])]))

    doc = lambda n, start=0: list(range(start, start + n))  # noqa: E731
    # two documents; then a prompt of 3 with two completions (positions 3.. twice), then a document
    assert seg(doc(4), doc(2)) == [(0, 4, 0, 0), (4, 6, 4, 0)]
    # (the first completion simply continues its prompt: one causal segment; the second branches off)
    assert seg(doc(3), doc(2, 3), doc(4, 3), doc(2)) == [(0, 5, 0, 0), (5, 9, 0, 3), (9, 11, 9, 0)]
    assert seg(doc(5)) is None  # one plain document: transformers' own SDPA
    assert seg(doc(3), doc(2, 4)) is None  # a "branch" longer than its prompt: not ours to guess
    assert _segments(torch.arange(6).view(2, 3)) is None  # a padded batch


def test_only_our_packed_sdpa_supports_branches():
    from rlhf.models import supports_branches
    from rlhf.models.forward import CausalLMLogprobs

    tok = tiny_tokenizer()
    eager = tiny_causal_lm(tok, attn_implementation="eager")
    CausalLMLogprobs(eager)  # wrapping switches SDPA models only
    assert not supports_branches(eager)
    sdpa = tiny_causal_lm(tok)
    assert not supports_branches(sdpa)  # transformers' own SDPA: a branch would lose its prompt
    CausalLMLogprobs(sdpa)
    assert supports_branches(sdpa)


def test_eager_attention_separates_packed_documents_but_not_branches():
    # transformers (masking_utils.find_packed_sequence_indices) starts a new document wherever
    # position ids stop counting up, under any attention kernel, when no attention_mask is given:
    # padding-free rows are right with eager attention, while a branch is cut off from its prompt,
    # hence `supports_branches`.
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=1, attn_implementation="eager").eval()
    torch.manual_seed(0)
    prompt, first, second = (torch.randint(0, 250, (1, n)) for n in (5, 3, 3))
    with torch.no_grad():
        alone = torch.cat([model(input_ids=prompt).logits, model(input_ids=second).logits], dim=1)
        packed = model(input_ids=torch.cat([prompt, second], 1), use_cache=False,
                       position_ids=torch.cat([torch.arange(5), torch.arange(3)]).unsqueeze(0)).logits
        assert torch.allclose(alone, packed, atol=1e-5)
        continued = model(input_ids=torch.cat([prompt, second], 1)).logits[:, 5:]
        branched = model(input_ids=torch.cat([prompt, first, second], 1), use_cache=False,
                         position_ids=torch.cat([torch.arange(8), torch.arange(5, 8)]).unsqueeze(0)).logits[:, 8:]
    assert not torch.allclose(continued, branched, atol=1e-2)
