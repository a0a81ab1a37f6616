import contextlib

import pytest
import torch

from rlhf.models.forward import CausalLMLogprobs
from rlhf.rollout import GenerationConfig, HFRollout, Rollout, RolloutBackend, generate
from rlhf.rollout.hf import _draw, _sample
from rlhf.testing import tiny_causal_lm, tiny_tokenizer

PROMPTS = ["hi", "the quick brown fox jumps", "abc def"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_causal_lm(tok).eval()


@contextlib.contextmanager
def forced(model, schedule):
    """Force tokens: schedule[step][row] = token id the LM head makes (nearly) certain at that decoding step."""
    calls = {"step": 0}

    def hook(module, inputs, output):
        rows = schedule.get(calls["step"], {})
        calls["step"] += 1
        if not rows:
            return None
        output = output.clone()
        for row, token in rows.items():
            output[row, -1, token] += 1e4
        return output

    handle = model.get_output_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def padded_sequences(rollout: Rollout) -> dict[str, torch.Tensor]:
    """prompt + response as one left-/right-padded (B, P + T) batch: the plain layout that the
    packed rows are checked against. Positions count from each row's first real prompt token."""
    input_ids = torch.cat([rollout.prompt_ids, rollout.response_ids], dim=1)
    attention_mask = torch.cat([rollout.prompt_mask, rollout.response_mask], dim=1)
    prompt_positions = (rollout.prompt_mask.cumsum(-1) - 1).clamp(min=0)
    steps = torch.arange(rollout.response_ids.shape[1])
    response_positions = rollout.prompt_mask.sum(-1, keepdim=True) + steps
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "position_ids": torch.cat([prompt_positions, response_positions], dim=1)}


def padded_labels(rollout: Rollout) -> torch.Tensor:
    """(B, P + T) shifted labels for `padded_sequences`: position P - 1 + t predicts response token t."""
    width = rollout.prompt_ids.shape[1]
    labels = torch.full((rollout.prompt_ids.shape[0], width + rollout.response_ids.shape[1]), -100)
    labels[:, width - 1: width - 1 + rollout.response_ids.shape[1]] = torch.where(
        rollout.response_mask.bool(), rollout.response_ids, -100)
    return labels


def _naive_logprobs(model, prompt_ids, response_ids, *, entropy=False, temperature=1.0):
    """log softmax(logits / T)(response_t | prompt, response_<t) from one unpadded, uncached forward
    with default positions; with entropy=True, also -sum_v pi log pi at each of those positions."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float() / temperature
    logp = torch.log_softmax(logits[len(prompt_ids) - 1: -1], dim=-1)
    chosen = logp.gather(-1, torch.tensor(response_ids).unsqueeze(-1)).squeeze(-1)
    return (chosen, -(logp.exp() * logp).sum(-1)) if entropy else chosen


def _rows(rollout: Rollout, b: int) -> tuple[list[int], list[int]]:
    prompt = rollout.prompt_ids[b][rollout.prompt_mask[b].bool()].tolist()
    response = rollout.response_ids[b][rollout.response_mask[b].bool()].tolist()
    return prompt, response


def _check_matches_training_forward(model, rollout: Rollout, temperature: float = 1.0):
    batch = padded_sequences(rollout)
    width = rollout.prompt_ids.shape[1]
    # Shifted labels built by hand: position P - 1 + t predicts response token t.
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, width - 1: -1] = torch.where(rollout.response_mask.bool(), rollout.response_ids, -100)
    assert torch.equal(labels, padded_labels(rollout))
    with torch.no_grad():
        trained = CausalLMLogprobs(model, temperature=temperature)(labels=labels, **batch)  # (N,)
    expected = rollout.logprobs[rollout.response_mask.bool()]
    assert trained.shape == expected.shape and expected.numel() > 0
    assert (trained - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_logprobs_are_those_of_the_tempered_distribution_and_match_training_forward(model, tok, temperature):
    # Many ids end a completion, so rows stop at varied lengths and masks matter.
    backend = HFRollout(model, tok, eos_token_ids=list(range(0, 256, 9)))
    config = GenerationConfig(max_new_tokens=12, temperature=temperature, top_p=0.9, num_generations=2, seed=3)
    rollout = backend.generate(PROMPTS, config)
    batch, width = rollout.prompt_ids.shape
    assert batch == 6 and rollout.response_ids.shape[0] == 6
    assert rollout.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert len(set(rollout.prompt_mask.sum(-1).tolist())) == 3  # left padding really happens
    assert rollout.prompt_mask[:, -1].all()  # left-padded
    lengths = rollout.response_mask.sum(-1)
    assert len(set(lengths.tolist())) > 1, "want rows of different lengths"
    # Right padding: the mask is a prefix of ones.
    steps = torch.arange(rollout.response_ids.shape[1])
    assert torch.equal(rollout.response_mask.bool(), steps < lengths.unsqueeze(-1))
    assert rollout.logprobs.dtype == torch.float32
    assert (rollout.logprobs[rollout.response_mask == 0] == 0).all()
    _check_matches_training_forward(model, rollout, temperature)
    # Independent of sequences(): log_softmax(logits / T) of an unpadded, uncached forward per row.
    for b in range(batch):
        prompt, response = _rows(rollout, b)
        naive, entropy = _naive_logprobs(model, prompt, response, entropy=True, temperature=temperature)
        assert (naive - rollout.logprobs[b, : len(response)]).abs().max().item() <= 1e-4
        assert (entropy - rollout.entropy[b, : len(response)]).abs().max().item() <= 1e-4
    assert (rollout.entropy[rollout.response_mask == 0] == 0).all()


def test_packed_sequences_give_the_padded_batch_logprobs_without_its_pads(model, tok):
    backend = HFRollout(model, tok, eos_token_ids=list(range(0, 256, 9)))
    rollout = backend.generate(PROMPTS, GenerationConfig(max_new_tokens=12, num_generations=2, seed=3))
    rollout.response_mask[3] = 0  # a skipped sample (reward None) drops out of the packed row
    mask = rollout.response_mask.bool()
    packed = rollout.packed_sequences()
    real = int(rollout.prompt_mask.sum() - rollout.prompt_mask[3].sum() + rollout.response_mask.sum())
    assert packed["input_ids"].shape == packed["labels"].shape == packed["position_ids"].shape == (1, real)
    with torch.no_grad():
        padded = CausalLMLogprobs(model)(labels=padded_labels(rollout), **padded_sequences(rollout))
        flat = CausalLMLogprobs(model)(**packed)
    assert flat.shape == padded.shape == (int(mask.sum()),)
    assert (flat - padded).abs().max().item() <= 1e-5
    assert (flat - rollout.logprobs[mask]).abs().max().item() <= 1e-4


def test_packed_groups_share_each_prompt_and_match_logprobs_and_gradients(tok):
    model = tiny_causal_lm(tok, seed=2)
    backend = HFRollout(model, tok, eos_token_ids=list(range(0, 256, 7)))
    rollout = backend.generate(PROMPTS, GenerationConfig(max_new_tokens=10, num_generations=3, seed=4))
    rollout.response_mask[4] = 0  # a skipped sample
    assert len(set(rollout.response_mask.sum(1).tolist())) > 2  # completions of varied lengths
    grouped = rollout.packed_groups()
    prompts = sum(int(rollout.prompt_mask[b].sum()) for b in range(0, 9, 3))
    assert grouped["input_ids"].shape[1] == prompts + int(rollout.response_mask.sum())  # each prompt once
    policy = CausalLMLogprobs(model)

    def logprobs_and_grads(**batch):
        model.zero_grad()
        out = policy(**batch)
        (out * torch.linspace(0.5, 2.0, out.numel())).sum().backward()  # unequal weights per token
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    padded, padded_grads = logprobs_and_grads(labels=padded_labels(rollout), **padded_sequences(rollout))
    flat, flat_grads = logprobs_and_grads(**grouped)
    assert flat.shape == padded.shape
    assert (flat - padded).abs().max().item() <= 1e-5
    for a, b in zip(padded_grads, flat_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_sequences_positions_count_from_first_prompt_token(model, tok):
    rollout = generate(model, PROMPTS, GenerationConfig(max_new_tokens=3, seed=0), tok)
    seq = padded_sequences(rollout)
    for b in range(rollout.prompt_ids.shape[0]):
        length = int(rollout.prompt_mask[b].sum())
        real = seq["position_ids"][b][seq["attention_mask"][b].bool()]
        assert real.tolist() == list(range(length + int(rollout.response_mask[b].sum())))


def test_greedy_equals_naive_argmax_loop(model, tok):
    max_new = 6
    rollout = HFRollout(model, tok).generate(PROMPTS, GenerationConfig(max_new_tokens=max_new, temperature=0))
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt)["input_ids"]
        out = []
        with torch.no_grad():
            for _ in range(max_new):
                token = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
                out.append(token)
                if token == tok.eos_token_id:
                    break
        assert _rows(rollout, i)[1] == out


def test_eos_stops_a_row_and_mask_includes_it(model, tok):
    eos = tok.eos_token_id
    with forced(model, {2: {0: eos}, 4: {2: eos}}):
        rollout = HFRollout(model, tok).generate(["hi", "hello", "hey"], GenerationConfig(max_new_tokens=8, seed=0))
    assert rollout.response_ids.shape == (3, 8)
    assert rollout.response_mask[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert rollout.response_ids[0, 2] == eos
    assert (rollout.response_ids[0, 3:] == tok.pad_token_id).all()
    assert rollout.response_mask[1].tolist() == [1] * 8
    assert rollout.response_mask[2].tolist() == [1] * 5 + [0] * 3
    assert rollout.truncated.tolist() == [False, True, False]
    assert "<|im_end|>" not in rollout.completions[0]
    assert rollout.completions[0] == tok.decode(rollout.response_ids[0, :2])


def test_generation_stops_early_when_every_row_finished(model, tok):
    eos = tok.eos_token_id
    with forced(model, {1: {0: eos, 1: eos}}):
        rollout = HFRollout(model, tok).generate(["hi", "hello"], GenerationConfig(max_new_tokens=50, seed=0))
    assert rollout.response_ids.shape == (2, 2)
    assert not rollout.truncated.any()


def test_max_new_tokens_respected(model, tok):
    rollout = HFRollout(model, tok, eos_token_ids=[tok.eos_token_id]).generate(
        PROMPTS, GenerationConfig(max_new_tokens=5, num_generations=2, seed=1))
    assert rollout.response_ids.shape == (6, 5)
    assert rollout.response_mask.all() and rollout.truncated.all()


def test_stop_string_cuts_completion_and_ends_mask(model, tok):
    x, b, c = (tok.convert_tokens_to_ids(t) for t in "xbc")
    schedule = {0: {0: x, 1: x}, 1: {0: b, 1: x}, 2: {0: c}}
    with forced(model, schedule):
        rollout = HFRollout(model, tok).generate(
            ["p", "q"], GenerationConfig(max_new_tokens=6, stop_strings=["bc", "nope!"], seed=0))
    # Row 0: "x", "b", "c" -> "bc" completed by the third token: the mask ends there, text stops before it.
    assert rollout.response_ids[0, :3].tolist() == [x, b, c]
    assert rollout.response_mask[0].tolist() == [1, 1, 1, 0, 0, 0]
    assert rollout.completions[0] == "x"
    assert rollout.truncated.tolist() == [False, True]
    assert rollout.response_mask[1].all()
    assert rollout.completions[1].startswith("xx")


def test_seed_reproducible_and_different_seeds_differ(model, tok):
    config = GenerationConfig(max_new_tokens=8, num_generations=2, seed=11)
    a = HFRollout(model, tok).generate(PROMPTS, config)
    b = HFRollout(model, tok).generate(PROMPTS, config)
    c = HFRollout(model, tok).generate(PROMPTS, GenerationConfig(max_new_tokens=8, num_generations=2, seed=12))
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.response_ids, c.response_ids)
    # The two completions of one prompt are different samples.
    assert not torch.equal(a.response_ids[0], a.response_ids[1])


def test_per_prompt_seeds_make_samples_independent_of_the_batch(model, tok):
    config = GenerationConfig(max_new_tokens=8, num_generations=2)
    together = HFRollout(model, tok).generate(PROMPTS, config, seeds=[10, 11, 12])
    for i, prompt in enumerate(PROMPTS):
        alone = HFRollout(model, tok).generate([prompt], config, seeds=[10 + i])
        assert alone.completions == together.completions[2 * i: 2 * i + 2]
    other = HFRollout(model, tok).generate(PROMPTS, config, seeds=[10, 11, 13])
    assert other.completions[:4] == together.completions[:4] and other.completions[4:] != together.completions[4:]
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        HFRollout(model, tok).generate(PROMPTS, config, seeds=[1, 2])


def test_rng_state_resumes_the_stream(model, tok):
    backend = HFRollout(model, tok, generator=torch.Generator().manual_seed(5))
    config = GenerationConfig(max_new_tokens=6)
    backend.generate(PROMPTS, config)
    state = backend.get_rng_state()
    second = backend.generate(PROMPTS, config)
    third = backend.generate(PROMPTS, config)
    assert not torch.equal(second.response_ids, third.response_ids)  # the stream moves on
    resumed = HFRollout(model, tok, generator=torch.Generator().manual_seed(99))
    resumed.set_rng_state(state)
    assert torch.equal(resumed.generate(PROMPTS, config).response_ids, second.response_ids)


def test_chat_prompts_use_the_template(model, tok):
    messages = [{"role": "user", "content": "hello"}]
    rollout = HFRollout(model, tok).generate([messages, "plain"], GenerationConfig(max_new_tokens=2, seed=0))
    expected = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    assert _rows(rollout, 0)[0] == expected
    assert tok.decode(expected).endswith("<|im_start|>assistant\n")
    assert _rows(rollout, 1)[0] == tok("plain")["input_ids"]
    # Token-id prompts pass through (greedy: a batch of one draws other random numbers than a batch of two).
    greedy = GenerationConfig(max_new_tokens=3, temperature=0)
    from_ids = HFRollout(model, tok).generate([expected], greedy)
    from_messages = HFRollout(model, tok).generate([messages], greedy)
    assert torch.equal(from_ids.prompt_ids, from_messages.prompt_ids)
    assert torch.equal(from_ids.response_ids, from_messages.response_ids)


def test_pad_equal_to_eos(tok):
    pad_eos = tiny_tokenizer(pad_token="<|im_end|>")
    assert pad_eos.pad_token_id == pad_eos.eos_token_id
    model = tiny_causal_lm(pad_eos).eval()
    eos = pad_eos.eos_token_id
    with forced(model, {0: {1: eos}, 3: {0: eos}}):
        rollout = HFRollout(model, pad_eos).generate(["a", "bb", "the ccc"], GenerationConfig(max_new_tokens=6, seed=0))
    assert (rollout.prompt_ids[0][~rollout.prompt_mask[0].bool()] == eos).all()  # pads are EOS ids, masked out
    assert rollout.response_mask[0].tolist() == [1, 1, 1, 1, 0, 0]
    assert rollout.response_mask[1].tolist() == [1, 0, 0, 0, 0, 0]
    assert rollout.response_mask[2].all()
    assert (rollout.response_ids[1] == eos).all()
    assert rollout.truncated.tolist() == [False, False, True]
    assert rollout.completions[1] == ""
    # Without the forcing hook, the logprobs of an unforced rollout match the training forward.
    unforced = HFRollout(model, pad_eos, eos_token_ids=list(range(0, 256, 9))).generate(
        ["a", "bb", "the ccc"], GenerationConfig(max_new_tokens=8, seed=1, temperature=0.7))
    _check_matches_training_forward(model, unforced, temperature=0.7)


def test_peft_model_and_training_mode_restored(tok):
    from rlhf.models import LoraConfig, apply_lora

    model = apply_lora(tiny_causal_lm(tok), LoraConfig(r=4, alpha=8))
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    model.train()
    model.base_model.model.model.layers[0].eval()  # a module the caller keeps in eval mode
    rollout = generate(model, PROMPTS, GenerationConfig(max_new_tokens=4, num_generations=2, seed=0), tok)
    assert model.training and not model.base_model.model.model.layers[0].training
    assert model.base_model.model.model.layers[1].training
    model.eval()
    _check_matches_training_forward(model, rollout)


def test_protocol_and_generate_dispatch(model, tok):
    backend = HFRollout(model, tok)
    assert isinstance(backend, RolloutBackend)
    config = GenerationConfig(max_new_tokens=4, seed=7)
    assert torch.equal(generate(backend, PROMPTS, config).response_ids,
                       generate(model, PROMPTS, config, tok).response_ids)
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, PROMPTS, config)
    with pytest.raises(ValueError, match="prompt 1"):
        backend.generate(["ok", 3], config)


def test_sample_filters_against_hand_worked_sets():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(4000, 4)
    gen = torch.Generator().manual_seed(0)

    def u():
        return 1.0 - torch.rand(4000, generator=gen, dtype=torch.float64)

    top_p = _sample(logits, GenerationConfig(top_p=0.7), u())  # nucleus {0, 1}: 0.5 < 0.7 <= 0.8
    assert set(top_p.tolist()) == {0, 1}
    assert abs((top_p == 0).float().mean().item() - 0.5 / 0.8) < 0.05
    top_k = _sample(logits, GenerationConfig(top_k=3), u())
    assert set(top_k.tolist()) == {0, 1, 2}
    plain = _sample(logits, GenerationConfig(), u())
    assert set(plain.tolist()) == {0, 1, 2, 3}
    cold = _sample(logits / 0.25, GenerationConfig(temperature=0.25), u())  # p^4 renormalised: 0.5^4 / sum = 0.87
    assert abs((cold == 0).float().mean().item() - 0.0625 / (0.0625 + 0.0081 + 0.00050625 + 0.00000625)) < 0.03
    assert (_sample(logits, GenerationConfig(temperature=0), u()) == 0).all()


def test_draw_matches_the_probabilities_and_never_picks_a_zero():
    probs = torch.tensor([0.0, 0.1, 0.0, 0.6, 0.3, 0.0])
    draws = _draw(probs.expand(20000, 6), 1.0 - torch.rand(20000, generator=torch.Generator().manual_seed(0),
                                                           dtype=torch.float64))
    freq = torch.bincount(draws, minlength=6).float() / 20000
    assert freq[probs == 0].sum() == 0
    assert (freq - probs).abs().max() < 0.01  # 3 standard errors of the largest cell (0.0035)


@pytest.mark.parametrize("field, value", [("max_new_tokens", 0), ("temperature", -1.0), ("top_p", 0.0),
                                          ("top_p", 1.5), ("top_k", -1), ("num_generations", 0),
                                          ("stop_strings", "stop"), ("stop_strings", [""]), ("seed", 1.5)])
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        GenerationConfig(**{field: value})
