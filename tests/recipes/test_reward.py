import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhf.data import DataError
from rlhf.models.reward import RewardModelScorer
from rlhf.recipes.reward import RewardConfig, reward
from rlhf.testing import tiny_tokenizer
from tests.recipes.preference_data import marker_pairs


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("rm")
    result = reward(RewardConfig(model=tiny_model_dir, output_dir=str(out), batch_size=8, lr=3e-3, epochs=2,
                                 progress=False), train_data=marker_pairs(128, 0), eval_data=marker_pairs(32, 1))
    return result


def test_reward_model_learns_the_synthetic_preference(trained_rm):
    assert trained_rm.last_metrics["eval_accuracy"] >= 0.9
    assert trained_rm.last_metrics["eval_margin"] > 0


def _hf_scores(model_dir, texts, side):
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = side
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        return model(**batch).logits.squeeze(-1)


def test_final_loads_with_auto_class_and_gives_the_same_scores_left_and_right_padded(trained_rm):
    pairs = marker_pairs(6, 2)
    prompts = [p["prompt"] for p in pairs]
    completions = [p["chosen"] if i % 2 else p["rejected"] + " indeed, much longer" for i, p in enumerate(pairs)]
    ours = torch.tensor(RewardModelScorer(trained_rm.final_dir)(prompts, completions))
    texts = [p + c for p, c in zip(prompts, completions)]
    right = _hf_scores(trained_rm.final_dir, texts, "right")
    left = _hf_scores(trained_rm.final_dir, texts, "left")
    assert torch.allclose(right, left, atol=1e-4)
    assert torch.allclose(ours, right, atol=1e-4)
    assert ours.std() > 1e-3  # the scores are not all the same


def test_pad_equal_to_eos_scores_at_the_last_real_token(tmp_path):
    # SmolLM2's situation: pad == EOS. Sequences carry no trailing EOS, so transformers' rule agrees.
    tok = tiny_tokenizer(pad_token="<|im_end|>")
    from rlhf.testing import save_tiny_model

    base = save_tiny_model(tmp_path / "base", tokenizer=tok)
    result = reward(RewardConfig(model=base, output_dir=str(tmp_path / "rm"), batch_size=4, max_steps=2, progress=False),
                    train_data=marker_pairs(8, 0), tokenizer=tok)
    pairs = marker_pairs(4, 3)
    ours = torch.tensor(RewardModelScorer(result.final_dir)([p["prompt"] for p in pairs], [p["chosen"] * (i + 1) for i, p in enumerate(pairs)]))
    texts = [p["prompt"] + p["chosen"] * (i + 1) for i, p in enumerate(pairs)]
    assert torch.allclose(ours, _hf_scores(result.final_dir, texts, "left"), atol=1e-4)
    assert torch.allclose(ours, _hf_scores(result.final_dir, texts, "right"), atol=1e-4)


def test_margin_column_is_checked_before_any_model_work(tmp_path):
    rows = marker_pairs(4, 0)
    rows[2]["margin"] = "big"
    for row in rows[:2] + rows[3:]:
        row["margin"] = 1.0
    with pytest.raises(ValueError, match=r"row 3: field 'margin'"):
        reward(RewardConfig(model="/nonexistent", output_dir=str(tmp_path), use_margin=True), train_data=rows)


def test_identical_chosen_and_rejected_is_reported(tmp_path):
    rows = marker_pairs(4, 0)
    rows[1]["rejected"] = rows[1]["chosen"]
    with pytest.raises(DataError, match="row 2"):
        reward(RewardConfig(model="/nonexistent", output_dir=str(tmp_path)), train_data=rows)


def test_seed_fixes_the_score_head_initialisation(tmp_path, tiny_model_dir):
    from tests.train.helpers import assert_same_weights, final_weights

    def train(out, seed):
        torch.manual_seed(1000 + len(str(out)))  # a different global RNG state before each run
        reward(RewardConfig(model=tiny_model_dir, output_dir=str(out), batch_size=8, lr=3e-3, max_steps=2, seed=seed,
                            progress=False), train_data=marker_pairs(16, 0))
        return final_weights(out)

    assert_same_weights(train(tmp_path / "a", 0), train(tmp_path / "bb", 0))
    other = train(tmp_path / "ccc", 1)
    assert not torch.equal(other["score.weight"], train(tmp_path / "dddd", 0)["score.weight"])


def test_pairs_sharing_their_prompt_score_and_train_as_separate_sequences(tmp_path, tiny_model_dir, monkeypatch):
    # packing=true packs each prompt once with chosen and rejected branching from it; a padded
    # batch (packing=false) holds every sequence whole: the same scores, and the same weights after training.
    from rlhf.data.preference import collate_pairs, collate_pairs_sharing_prompts
    from rlhf.models.reward import SequenceScores, load_reward_model
    from tests.train.helpers import assert_same_weights, final_weights

    tok = tiny_tokenizer()
    examples = [{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, 12, 13]},
                {"prompt_ids": [], "chosen_ids": [14, 15, 16], "rejected_ids": [17]},  # no prompt: two documents
                {"prompt_ids": [18, 19], "chosen_ids": [20], "rejected_ids": []}]  # rejected = the prompt alone
    scorer = SequenceScores(load_reward_model(tiny_model_dir, pad_token_id=tok.pad_token_id)).eval()
    shared = collate_pairs_sharing_prompts(examples)
    plain = collate_pairs(examples, pad_token_id=tok.pad_token_id, packed=False)
    assert shared["input_ids"].numel() == 5 + 4 + 3 + 1 + 3 < plain["attention_mask"].sum()
    with torch.no_grad():
        ours = scorer(input_ids=shared["input_ids"], last_index=shared["last_index"],
                      position_ids=shared["position_ids"])
        whole = scorer(input_ids=plain["input_ids"], last_index=plain["last_index"],
                       attention_mask=plain["attention_mask"], position_ids=plain["position_ids"])
    assert torch.allclose(ours, whole, atol=1e-5) and whole.std() > 1e-3

    import rlhf.data.preference as preference

    shared_batches = []
    real = preference.collate_pairs_sharing_prompts
    monkeypatch.setattr(preference, "collate_pairs_sharing_prompts", lambda ex: shared_batches.append(1) or real(ex))
    for packing in (True, False):
        shared_batches.clear()
        reward(RewardConfig(model=tiny_model_dir, output_dir=str(tmp_path / str(packing)), batch_size=8, lr=3e-3,
                            max_steps=3, packing=packing, progress=False), train_data=marker_pairs(24, 0))
        assert bool(shared_batches) == packing  # packing=true trained on shared-prompt rows, false on whole ones
    assert_same_weights(final_weights(tmp_path / "True"), final_weights(tmp_path / "False"), atol=1e-5)
