"""Checkpoints that must not be trusted: a flipped byte, a truncated or extra file, a planted
pickle, a full disk (RELIABILITY.md cases 4-6 and 8)."""

import json
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from rlhf.config import ConfigError
from rlhf.train import checkpoint, loop
from rlhf.train.checkpoint import CheckpointError
from tests.train.helpers import assert_same_weights, final_weights, run_tiny_sft


class _Stop:
    def __init__(self, at):
        self.at = at

    def __call__(self, step, metrics):
        if step == self.at:
            raise loop.StopTraining


@pytest.fixture(scope="module")
def _stopped_once(tmp_path_factory):
    out = tmp_path_factory.mktemp("stopped") / "run"
    run_tiny_sft(out, save_every=2, dropout=0.1, callbacks=[_Stop(5)])
    assert [s for s, _ in checkpoint.list_checkpoints(out / "checkpoints")] == [2, 4]
    return out


@pytest.fixture
def stopped_run(_stopped_once, tmp_path):
    """A run stopped after step 5 with checkpoints step-2 and step-4 on disk (a fresh copy per test)."""
    out = tmp_path / "run"
    shutil.copytree(_stopped_once, out)
    return out


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_every_checkpoint_file_is_in_its_manifest(stopped_run):
    step4 = stopped_run / "checkpoints" / "step-4"
    listed = json.loads((step4 / checkpoint.MANIFEST).read_text())["files"]
    on_disk = {p.name for p in step4.iterdir()} - {checkpoint.MANIFEST, checkpoint.MARKER}
    assert set(listed) == on_disk and {"model.safetensors", "optimizer.pt", "rng-rank0.pt"} <= on_disk
    assert listed["optimizer.pt"]["bytes"] == (step4 / "optimizer.pt").stat().st_size


def test_a_flipped_byte_refuses_to_resume_and_an_older_checkpoint_resumes_exactly(stopped_run, tmp_path):
    step4 = stopped_run / "checkpoints" / "step-4"
    _flip_middle_byte(step4 / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"step-4 is corrupt: model\.safetensors does not match the SHA-256") as err:
        run_tiny_sft(stopped_run, save_every=2, dropout=0.1, resume=True)
    assert "resume_from=" + str(stopped_run / "checkpoints" / "step-2") in str(err.value)
    assert not (stopped_run / "final").exists()  # never started over silently

    run_tiny_sft(stopped_run, save_every=2, dropout=0.1, resume_from=str(stopped_run / "checkpoints" / "step-2"))
    run_tiny_sft(tmp_path / "full", save_every=2, dropout=0.1)
    assert_same_weights(final_weights(stopped_run), final_weights(tmp_path / "full"))


def test_a_truncated_file_names_its_size(stopped_run):
    optimizer = stopped_run / "checkpoints" / "step-4" / "optimizer.pt"
    size = optimizer.stat().st_size
    with optimizer.open("r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CheckpointError, match=rf"optimizer\.pt has {size // 2} bytes, {size} were written"):
        run_tiny_sft(stopped_run, save_every=2, dropout=0.1, resume=True)


def test_a_missing_or_added_file_is_refused(stopped_run):
    step4 = stopped_run / "checkpoints" / "step-4"
    (step4 / "rng-rank1.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"rng-rank1\.pt is not listed in the manifest"):
        run_tiny_sft(stopped_run, save_every=2, dropout=0.1, resume=True)
    (step4 / "rng-rank1.pt").unlink()
    (step4 / "scheduler.pt").unlink()
    with pytest.raises(CheckpointError, match=r"scheduler\.pt is missing"):
        run_tiny_sft(stopped_run, save_every=2, dropout=0.1, resume=True)


def test_resume_from_must_be_a_complete_checkpoint(stopped_run):
    with pytest.raises(ConfigError, match=r"resume_from=.*not a complete checkpoint"):
        run_tiny_sft(stopped_run, save_every=2, dropout=0.1, resume_from=str(stopped_run / "checkpoints"))


class _Planted:
    """Unpickling this runs `Path(marker).touch()`: what a malicious checkpoint file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng-rank0.pt"])
@pytest.mark.parametrize("manifest_rewritten", [False, True])
def test_a_planted_pickle_is_refused_and_never_runs(stopped_run, tmp_path, name, manifest_rewritten):
    step4 = stopped_run / "checkpoints" / "step-4"
    marker = tmp_path / "pwned"
    with (step4 / name).open("wb") as f:
        pickle.dump({"state": _Planted(marker)}, f)
    if manifest_rewritten:  # an attacker who also fixes the checksums reaches the loader itself
        checkpoint.write_manifest(step4)
        match = rf"refusing to load .*step-4/{name}: it holds Python objects"
    else:
        match = rf"step-4 is corrupt: {name} "
    with pytest.raises(CheckpointError, match=match) as err:
        run_tiny_sft(stopped_run, save_every=2, dropout=0.1, resume=True)
    assert "weights_only=False;" not in str(err.value)  # torch's advice to disable the guard is not passed on
    assert not marker.exists()


def test_every_pt_file_that_resume_reads_is_covered(stopped_run):
    # the planted-pickle test above must list every .pt file a checkpoint holds
    names = {p.name for p in (stopped_run / "checkpoints" / "step-4").glob("*.pt")}
    assert names == {"optimizer.pt", "scheduler.pt", "rng-rank0.pt"}


# --- a full disk ---------------------------------------------------------------------------------

def _fail_part_way(monkeypatch, at_step):
    """Make the model file's write fail half-way with ENOSPC, as a full disk would."""
    real = checkpoint.write_main_files

    def write(tmp, **kwargs):
        if kwargs["state"]["loop"]["step"] == at_step:
            (tmp / "model.safetensors").write_bytes(b"half a file")
            raise OSError(28, "No space left on device")
        real(tmp, **kwargs)

    monkeypatch.setattr(checkpoint, "write_main_files", write)


def _check_disk_full_outcome(out, error, tmp_path):
    message = str(error)
    assert "no space left on the device writing checkpoint step-4" in message
    assert str(out / "checkpoints") in message and "MiB" in message
    assert "previous checkpoint" in message and "step-2 is intact" in message
    assert not (out / "checkpoints" / ".tmp-step-4").exists()
    assert [s for s, _ in checkpoint.list_checkpoints(out / "checkpoints")] == [2]
    # with space again the run resumes from step-2 and ends where an uninterrupted run does
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    run_tiny_sft(moved, save_every=2, resume=True)
    run_tiny_sft(tmp_path / "full", save_every=2)
    assert_same_weights(final_weights(moved), final_weights(tmp_path / "full"))


def test_a_write_failing_with_enospc_removes_the_partial_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _fail_part_way(monkeypatch, at_step=4)
    with pytest.raises(CheckpointError) as err:
        run_tiny_sft(out, save_every=2)
    monkeypatch.undo()
    _check_disk_full_outcome(out, err.value, tmp_path)


@pytest.fixture
def small_filesystem(tmp_path, monkeypatch):
    """A real size-limited tmpfs where this process may mount one (root); else a write failing part-way."""
    mount = tmp_path / "small"
    mount.mkdir()
    size = checkpoint_bytes() * 3 // 2 + 16 * 1024  # one checkpoint fits (with config and metrics), two do not
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        _fail_part_way(monkeypatch, at_step=4)
        yield mount, False
        return
    try:
        yield mount, True
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def checkpoint_bytes() -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        run_tiny_sft(d, save_every=2, max_steps=3)
        step2 = Path(d) / "checkpoints" / "step-2"
        return sum(p.stat().st_size for p in step2.iterdir())


def test_a_full_filesystem_keeps_the_previous_checkpoint(small_filesystem, tmp_path):
    mount, _ = small_filesystem
    out = mount / "run"
    with pytest.raises(CheckpointError) as err:
        run_tiny_sft(out, save_every=2)
    _check_disk_full_outcome(out, err.value, tmp_path)


def test_disk_full_is_recognised_through_wrapping_errors():
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # torch.save
    except RuntimeError as wrapped:
        assert checkpoint.disk_full(wrapped)
    assert checkpoint.disk_full(Exception("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert not checkpoint.disk_full(OSError(13, "Permission denied"))
    assert not checkpoint.disk_full(torch.cuda.OutOfMemoryError("out of memory"))
