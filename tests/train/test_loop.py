import json
import math
import logging

import pytest
import torch

from rlhf.config import ConfigError
from rlhf.losses.types import LossOutput
from rlhf.train import loop
from rlhf.train.config import TrainConfig
from rlhf.train.distributed import DistContext
from tests.train.helpers import assert_same_weights, final_weights, run_tiny_sft


@pytest.mark.parametrize("packing", [True, False])
def test_batch8_accum1_equals_batch8_in_8_micro_batches(tmp_path, packing):
    run_tiny_sft(tmp_path / "a", packing=packing, grad_accum=1)
    run_tiny_sft(tmp_path / "b", packing=packing, grad_accum=8)
    assert_same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"), atol=1e-5)


def test_micro_batches_have_unequal_token_counts_so_the_equivalence_has_teeth(tokenizer):
    # With equal counts, a mean of per-micro-batch means would equal the window mean and the
    # test above could not tell the two normalisations apart.
    from rlhf.data import count_loss_tokens, collate_packed, load_rows, tokenize_sft
    from tests.conftest import sft_rows

    examples, _ = tokenize_sft(load_rows(sft_rows(32)), tokenizer, max_length=512)
    _, rows = loop.DataOrder(len(examples), 8, seed=3).batch(0)
    counts = [count_loss_tokens(collate_packed([examples[i]])) for i in rows]
    assert len(set(counts)) > 1


def test_metrics_and_outputs(tmp_path):
    result = run_tiny_sft(tmp_path, save_every=2, keep_checkpoints=2)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "lr", "grad_norm", "tokens", "tokens_per_s"} <= m.keys() for m in lines)
    # the rate each step trained with: the peak first, then linear decay over the 6 steps
    assert [m["lr"] for m in lines] == pytest.approx([5e-3 * (1 - k / 6) for k in range(6)])
    assert (tmp_path / "config.yaml").is_file()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert result.final_dir == tmp_path / "final"


class _Stop:
    def __init__(self, at):
        self.at = at

    def __call__(self, step, metrics):
        if step == self.at:
            raise loop.StopTraining


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    full = tmp_path / "full"
    run_tiny_sft(full, save_every=2, dropout=0.1)
    part = tmp_path / "part"
    run_tiny_sft(part, save_every=2, dropout=0.1, callbacks=[_Stop(3)])  # dies after step 3; step-2 is on disk
    assert not (part / "final").exists()
    run_tiny_sft(part, save_every=2, dropout=0.1, resume=True)
    assert_same_weights(final_weights(full), final_weights(part))
    losses = lambda d: [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert losses(full) == losses(part)


def test_resume_without_dropout_rng_restore_would_differ(tmp_path):
    # The bit-equality above must be able to fail: a run from scratch with another seed differs.
    run_tiny_sft(tmp_path / "a", dropout=0.1)
    run_tiny_sft(tmp_path / "b", dropout=0.1, seed=4)
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_config_and_names_the_keys(tmp_path):
    run_tiny_sft(tmp_path, save_every=2, callbacks=[_Stop(3)])
    with pytest.raises(ValueError, match=r"differs in .*lr.*max_length"):
        run_tiny_sft(tmp_path, save_every=2, resume=True, lr=1e-3, max_length=99)


def test_partial_checkpoint_is_ignored_with_a_warning(tmp_path, caplog):
    run_tiny_sft(tmp_path, save_every=2, callbacks=[_Stop(3)])
    partial = tmp_path / "checkpoints" / "step-99"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        result = run_tiny_sft(tmp_path, save_every=2, resume=True)
    assert "step-99" in caplog.text and "partial" in caplog.text
    assert result.steps == 6


# --- the non-finite guard, on a one-parameter model -------------------------------------------

class _Scalar(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0]))

    def forward(self, x):
        return self.w * x


def _parts(values, saved):
    def step_fn(model, batch):
        return LossOutput(loss=(model(batch["x"]) ** 2).sum(), metrics={})

    return loop.LoopParts(
        model=_Scalar(), examples=[{"x": v} for v in values],
        collate=lambda rows: {"x": torch.tensor([r["x"] for r in rows]), "input_ids": torch.zeros(len(rows), 1)},
        step_fn=step_fn, count_units=lambda b: len(b["x"]), save_final=lambda m, p: saved.append(m.w.item()))


def _config(tmp_path, **kw):
    return TrainConfig(output_dir=str(tmp_path), batch_size=1, lr=0.1, progress=False, **kw)


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, caplog):
    saved = []
    # batch order is shuffled, so use a pattern with one NaN among finite rows and check the count
    values = [1.0, float("nan"), 2.0, 3.0]
    result = loop.run(_config(tmp_path, epochs=1, max_nonfinite_steps=2), _parts(values, saved), DistContext())
    assert result.last_metrics["skipped_steps"] == 1
    assert len(saved) == 1 and math.isfinite(saved[0])  # final weights written, and finite
    assert "non-finite" in caplog.text


def test_consecutive_nonfinite_steps_abort_with_the_step_number(tmp_path):
    saved = []
    with pytest.raises(loop.NonFiniteError, match=r"step 2: 2 consecutive"):
        loop.run(_config(tmp_path, epochs=1, max_nonfinite_steps=2), _parts([float("inf")] * 4, saved), DistContext())
    assert saved == []


def test_a_moved_run_directory_resumes(tmp_path):
    import shutil

    run_tiny_sft(tmp_path / "full", save_every=2)
    run_tiny_sft(tmp_path / "a", save_every=2, callbacks=[_Stop(3)])
    shutil.move(tmp_path / "a", tmp_path / "b")  # output_dir changes; nothing the training computes does
    result = run_tiny_sft(tmp_path / "b", save_every=2, resume=True, progress=True)
    assert result.steps == 6
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "b"))


@pytest.mark.parametrize("key, value", [("grad_accum", 0), ("batch_size", 0), ("epochs", 0), ("max_steps", 0),
                                        ("max_steps", -2), ("save_every", -1), ("lr", -1e-5), ("warmup_ratio", 1.0),
                                        ("keep_checkpoints", 0)])
def test_degenerate_settings_are_refused_at_start_up_naming_the_key(tmp_path, key, value, monkeypatch):
    import rlhf.recipes.sft as sft_recipe

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the config was checked")

    monkeypatch.setattr(sft_recipe, "read_rows", no_data)
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        run_tiny_sft(tmp_path, **{key: value})


def test_resume_from_a_checkpoint_at_an_epoch_boundary_with_accumulation_is_bit_identical(tmp_path):
    # 32 rows / batch 8: step 4 ends epoch 0, so the resumed run starts on epoch 1's fresh permutation;
    # checkpoints come after an optimiser step, never inside an accumulation window
    full = tmp_path / "full"
    run_tiny_sft(full, save_every=4, grad_accum=2, dropout=0.1, max_steps=7)
    part = tmp_path / "part"
    run_tiny_sft(part, save_every=4, grad_accum=2, dropout=0.1, max_steps=7, callbacks=[_Stop(5)])
    assert [json.loads(x)["epoch"] for x in (part / "metrics.jsonl").read_text().splitlines()] == [0, 0, 0, 0, 1]
    run_tiny_sft(part, save_every=4, grad_accum=2, dropout=0.1, max_steps=7, resume=True)
    assert_same_weights(final_weights(full), final_weights(part))


def test_non_finite_weights_are_never_saved(tmp_path):
    parts = _parts([1.0, 2.0, 3.0, 4.0], saved := [])

    def poison(step, metrics):  # weights corrupted after step 1 (as a bad kernel or bit flip would)
        if step == 1:
            with torch.no_grad():
                parts.model.w.fill_(float("nan"))

    parts.callbacks.append(poison)
    with pytest.raises(loop.NonFiniteError, match=r"step 2: weights are not finite; refusing to write a checkpoint"):
        loop.run(_config(tmp_path, epochs=1, save_every=2, max_nonfinite_steps=5), parts, DistContext())
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").glob("step-*"))
    assert saved == []
