"""Tests that need real processes: a SIGKILL during a checkpoint write, and DDP over 2 gloo ranks."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.train import checkpoint
from tests.train.helpers import assert_same_weights, final_weights, run_tiny_sft

REPO = Path(__file__).resolve().parents[2]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = str(os.cpu_count() or 1)
    import torch

    if torch.cuda.device_count() < 2:  # two ranks need two GPUs for NCCL; else they run on gloo (CPU)
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


KILL_SCRIPT = """
import os, signal, sys
from rlhf.train import checkpoint
from tests.train.helpers import run_tiny_sft

real_write = checkpoint.write_main_files

def write_then_die(tmp, **kwargs):
    if kwargs["state"]["loop"]["step"] == 4:
        (tmp / "model.safetensors").write_bytes(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)
    real_write(tmp, **kwargs)

checkpoint.write_main_files = write_then_die
run_tiny_sft(sys.argv[1], save_every=2, dropout=0.1)
"""


def test_sigkill_during_checkpoint_write_keeps_previous_and_resume_works(tmp_path, caplog):
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(out)], env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    root = out / "checkpoints"
    assert (root / ".tmp-step-4").is_dir()
    assert [step for step, _ in checkpoint.list_checkpoints(root)] == [2]

    run_tiny_sft(out, save_every=2, dropout=0.1, resume=True)
    assert ".tmp-step-4" in caplog.text
    run_tiny_sft(tmp_path / "full", save_every=2, dropout=0.1)
    assert_same_weights(final_weights(out), final_weights(tmp_path / "full"))


DDP_SCRIPT = """
import sys
from tests.train.helpers import run_tiny_sft
run_tiny_sft(sys.argv[1], batch_size=8, grad_accum=int(sys.argv[2]), packing=sys.argv[3] == "packed")
"""


@pytest.mark.parametrize("grad_accum, packing", [(1, "packed"), (2, "padded")])
def test_ddp_two_gloo_ranks_match_one_process(tmp_path, grad_accum, packing):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "ddp"
    env = _env()
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(out), str(grad_accum), packing],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_tiny_sft(tmp_path / "single", batch_size=8, grad_accum=1, packing=packing == "packed")
    assert_same_weights(final_weights(out), final_weights(tmp_path / "single"), atol=1e-5)


DPO_DDP_SCRIPT = """
import sys
from rlhf.recipes.dpo import DPOConfig, dpo
from rlhf.testing import tiny_causal_lm, tiny_tokenizer
from tests.recipes.preference_data import marker_pairs
tok = tiny_tokenizer()
dpo(DPOConfig(output_dir=sys.argv[1], batch_size=8, lr=1e-3, max_steps=3, progress=False),
    train_data=marker_pairs(32, 0), model=tiny_causal_lm(tok, seed=0), tokenizer=tok)
"""


def test_dpo_ddp_two_gloo_ranks_match_one_process(tmp_path):
    script = tmp_path / "dpo_ddp.py"
    script.write_text(DPO_DDP_SCRIPT)
    env = _env()
    env["OMP_NUM_THREADS"] = "1"
    env["RLHF_CACHE"] = str(tmp_path / "cache")  # no cached reference: each rank computes its share
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path / "ddp")], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    env["RLHF_CACHE"] = str(tmp_path / "cache-single")
    proc = subprocess.run([sys.executable, "-c", DPO_DDP_SCRIPT, str(tmp_path / "single")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(final_weights(tmp_path / "ddp"), final_weights(tmp_path / "single"), atol=1e-5)
