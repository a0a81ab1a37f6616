import json
import logging

import pytest
import torch

import rlhf.recipes.dpo as dpo_recipe
from rlhf.data import load_rows
from rlhf.data.preference import tokenize_pairs
from rlhf.models.forward import CausalLMLogprobs
from rlhf.recipes.dpo import DPOConfig, dpo
from rlhf.recipes.kto import KTOConfig, kto
from rlhf.testing import tiny_causal_lm, tiny_tokenizer
from rlhf.train.config import LoraConfig
from tests.recipes.preference_data import marker_pairs, marker_unpaired


def preference_probability(model, tokenizer, rows) -> float:
    """Mean over held-out pairs of pi(chosen) / (pi(chosen) + pi(rejected)) = sigmoid(log-ratio)."""
    examples, _ = tokenize_pairs(load_rows(rows), tokenizer, max_length=128)
    batch = dpo_recipe._collate(examples, pad_token_id=tokenizer.pad_token_id, packed=True)
    with torch.no_grad():
        chosen, rejected = dpo_recipe.pair_logprobs(CausalLMLogprobs(model).eval(), batch)
    return float(torch.sigmoid(chosen - rejected).mean())


HELD_OUT = marker_pairs(32, 1)


@pytest.mark.parametrize("loss_type, beta", [("sigmoid", 0.1), ("ipo", 0.1), ("simpo", 2.0), ("orpo", 1.0),
                                             ("hinge", 0.1), ("robust", 0.1)])
def test_each_loss_raises_the_probability_of_the_preferred_completion(tmp_path, loss_type, beta):
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    before = preference_probability(model, tok, HELD_OUT)
    config = DPOConfig(output_dir=str(tmp_path), batch_size=8, lr=1e-3, epochs=1, beta=beta, loss_type=loss_type,
                       label_smoothing=0.1 if loss_type == "robust" else 0.0, progress=False)
    dpo(config, train_data=marker_pairs(128, 0), model=model, tokenizer=tok)
    after = preference_probability(model, tok, HELD_OUT)
    assert after > before + 0.03, (before, after)


def test_kto_raises_the_probability_of_the_desirable_completion(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    before = preference_probability(model, tok, HELD_OUT)
    kto(KTOConfig(output_dir=str(tmp_path), batch_size=8, lr=1e-3, epochs=1, progress=False),
        train_data=marker_unpaired(128, 0), model=model, ref_model=tiny_causal_lm(tok, seed=0), tokenizer=tok)
    assert preference_probability(model, tok, HELD_OUT) > before + 0.03


def _first_losses(path):
    return [json.loads(line)["loss"] for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_precomputed_reference_equals_on_the_fly_and_is_cached(tmp_path, caplog):
    tok = tiny_tokenizer()
    base = dict(batch_size=8, lr=1e-3, max_steps=3, progress=False)
    dpo(DPOConfig(output_dir=str(tmp_path / "pre"), **base), train_data=marker_pairs(32, 0),
        model=tiny_causal_lm(tok, seed=0), tokenizer=tok)
    dpo(DPOConfig(output_dir=str(tmp_path / "fly"), precompute_ref=False, **base), train_data=marker_pairs(32, 0),
        model=tiny_causal_lm(tok, seed=0), ref_model=tiny_causal_lm(tok, seed=0), tokenizer=tok)
    assert _first_losses(tmp_path / "pre") == pytest.approx(_first_losses(tmp_path / "fly"), abs=1e-5)
    with caplog.at_level(logging.INFO):
        dpo(DPOConfig(output_dir=str(tmp_path / "again"), **base), train_data=marker_pairs(32, 0),
            model=tiny_causal_lm(tok, seed=0), tokenizer=tok)
    assert "loaded from" in caplog.text
    assert _first_losses(tmp_path / "again") == _first_losses(tmp_path / "pre")


def test_lora_dpo_keeps_one_copy_of_the_base_weights(tmp_path, monkeypatch, tiny_model_dir):
    loads = []
    real_load = dpo_recipe.load_causal_lm
    monkeypatch.setattr(dpo_recipe, "load_causal_lm", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    tok = tiny_tokenizer()
    base = dict(model=tiny_model_dir, batch_size=8, lr=1e-2, max_steps=3, progress=False,
                lora=LoraConfig(enabled=True, r=4))
    dpo(DPOConfig(output_dir=str(tmp_path / "pre"), **base), train_data=marker_pairs(32, 0), tokenizer=tok)
    dpo(DPOConfig(output_dir=str(tmp_path / "fly"), precompute_ref=False, **base), train_data=marker_pairs(32, 0),
        tokenizer=tok)
    assert len(loads) == 2  # one model per run: the reference is the base with adapters disabled
    # with zero-initialised adapters the policy starts at the reference, so the first losses agree
    assert _first_losses(tmp_path / "pre")[0] == pytest.approx(_first_losses(tmp_path / "fly")[0], abs=1e-5)
    assert _first_losses(tmp_path / "fly")[0] == pytest.approx(0.6931, abs=1e-3)  # log 2 at the reference


def test_dpo_resume_is_exact(tmp_path):
    from rlhf.train.loop import StopTraining

    tok = tiny_tokenizer()
    base = dict(batch_size=8, lr=1e-3, max_steps=4, save_every=2, progress=False)

    def stop(step, metrics):
        if step == 3:
            raise StopTraining

    dpo(DPOConfig(output_dir=str(tmp_path / "full"), **base), train_data=marker_pairs(32, 0),
        model=tiny_causal_lm(tok, seed=0), tokenizer=tok)
    dpo(DPOConfig(output_dir=str(tmp_path / "part"), **base), train_data=marker_pairs(32, 0),
        model=tiny_causal_lm(tok, seed=0), tokenizer=tok, callbacks=[stop])
    dpo(DPOConfig(output_dir=str(tmp_path / "part"), resume=True, **base), train_data=marker_pairs(32, 0),
        model=tiny_causal_lm(tok, seed=0), tokenizer=tok)
    assert _first_losses(tmp_path / "full") == _first_losses(tmp_path / "part")


def test_unknown_loss_type_fails_before_any_work(tmp_path):
    from rlhf.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="loss_type"):
        load_config(DPOConfig, None, ["loss_type=dpo++"])


def _first_metrics(path) -> dict:
    return json.loads((path / "metrics.jsonl").read_text().splitlines()[0])


@pytest.mark.parametrize("precompute_ref", [True, False])
def test_an_in_memory_policy_is_its_own_reference_whatever_config_model_says(tmp_path, precompute_ref):
    # config.model names nothing loadable: the reference must come from the model passed in
    tok = tiny_tokenizer()
    config = DPOConfig(output_dir=str(tmp_path), model=str(tmp_path / "no-such-model"), batch_size=8, lr=1e-3,
                       max_steps=1, precompute_ref=precompute_ref, progress=False)
    dpo(config, train_data=marker_pairs(8, 0), model=tiny_causal_lm(tok, seed=0), tokenizer=tok)
    first = _first_metrics(tmp_path)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # the policy starts at its reference
    assert first["loss"] == pytest.approx(0.693147, abs=1e-5)  # log 2


def test_kto_with_an_in_memory_policy_uses_it_as_the_reference(tmp_path):
    tok = tiny_tokenizer()
    config = KTOConfig(output_dir=str(tmp_path), model=str(tmp_path / "no-such-model"), batch_size=8, lr=1e-3,
                       max_steps=1, progress=False)
    kto(config, train_data=marker_unpaired(8, 0), model=tiny_causal_lm(tok, seed=0), tokenizer=tok)
    first = _first_metrics(tmp_path)
    assert first["kl"] == pytest.approx(0.0, abs=1e-6) and first["loss"] == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("loss_type", ["ipo", "hinge", "simpo", "orpo"])
def test_label_smoothing_with_a_loss_that_ignores_it_is_a_config_error(tmp_path, loss_type):
    from rlhf.config import ConfigError

    config = DPOConfig(output_dir=str(tmp_path), model=str(tmp_path / "no-such-model"), loss_type=loss_type,
                       label_smoothing=0.1, progress=False)
    with pytest.raises(ConfigError, match=r"'label_smoothing'.*'loss_type'"):  # before any model or data loads
        dpo(config, train_data=marker_pairs(8, 0))


def test_shared_prompt_pairs_give_the_sums_and_weights_of_whole_sequences(tmp_path, monkeypatch):
    # Each prompt once, chosen and rejected branching from it (packing=true with our packed SDPA)
    # against right-padded whole sequences (packing=false): the same log-prob sums, token counts
    # and, after training with a length-normalised loss and the reference on the fly, the same weights.
    from rlhf.data.preference import collate_pairs, collate_pairs_sharing_prompts
    from tests.train.helpers import assert_same_weights, final_weights

    tok = tiny_tokenizer()
    examples = [{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, 12, 13]},
                {"prompt_ids": [], "chosen_ids": [14, 15, 16], "rejected_ids": [17, 18]},  # no prompt
                {"prompt_ids": [19, 20], "chosen_ids": [21], "rejected_ids": [22, 23]}]
    policy = CausalLMLogprobs(tiny_causal_lm(tok, seed=0)).eval()
    shared = collate_pairs_sharing_prompts(examples)
    whole = collate_pairs(examples, pad_token_id=tok.pad_token_id, packed=False)
    assert shared["num_tokens"].tolist() == whole["num_tokens"].tolist() == [2, 2, 1, 4, 1, 2]
    with torch.no_grad():
        ours, theirs = dpo_recipe.pair_logprobs(policy, shared), dpo_recipe.pair_logprobs(policy, whole)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-5)

    import rlhf.data.preference as preference

    shared_batches = []
    real = preference.collate_pairs_sharing_prompts
    monkeypatch.setattr(preference, "collate_pairs_sharing_prompts", lambda ex: shared_batches.append(1) or real(ex))
    for packing in (True, False):
        shared_batches.clear()
        dpo(DPOConfig(output_dir=str(tmp_path / str(packing)), batch_size=8, lr=1e-3, max_steps=3, loss_type="ipo",
                      rpo_alpha=0.5, packing=packing, progress=False),
            train_data=marker_pairs(24, 0), model=tiny_causal_lm(tok, seed=0), tokenizer=tok)
        assert bool(shared_batches) == packing  # packing=true trained on shared-prompt rows, false on whole ones
    assert_same_weights(final_weights(tmp_path / "True"), final_weights(tmp_path / "False"), atol=1e-5)
