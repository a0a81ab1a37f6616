"""SIGTERM / SIGINT sent for real to a training process (RELIABILITY.md, pre-emption): the step
finishes, a checkpoint is written, the resume command is printed, the exit status is 128 + signal,
and the resumed run ends bit-identical to an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf.cli import main, resume_command
from rlhf.train import checkpoint
from rlhf.train.preemption import Preempted
from tests.conftest import sft_rows
from tests.train.helpers import assert_same_weights, final_weights
from tests.train.test_process_level import REPO, _env

REWARDS_FILE = str(REPO / "tests" / "recipes" / "rl_rewards.py")

# The CLI in a child process, each step slowed down so that a signal lands mid-run; `pids/RANK`
# says the process is up. Nothing about signals is mocked.
CHILD = """
import os, sys, time
from pathlib import Path
from rlhf.train import loop

real_step = loop._Trainer.train_step

def slow_step(self, step):
    time.sleep(float(os.environ["STEP_SLEEP"]))
    return real_step(self, step)

loop._Trainer.train_step = slow_step
from rlhf.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _steps_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _signal_mid_run(argv, out: Path, signum: int, tmp_path: Path, *, after_steps: int = 2):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**_env(), "STEP_SLEEP": "0.3"}
    proc = subprocess.Popen([sys.executable, str(script), *argv], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _steps_logged(out) < after_steps:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run never logged a step"
        time.sleep(0.02)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


def _sft_argv(tmp_path, model_dir, out):
    data = _write_jsonl(tmp_path / "sft.jsonl", sft_rows(32))
    return ["sft", f"model={model_dir}", f"data={data}", f"output_dir={out}", "batch_size=4", "max_steps=12",
            "lr=5e-3", "seed=3", "progress=false", "save_every=5"]


def _grpo_argv(tmp_path, model_dir, out):
    data = _write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"say something {i}:"} for i in range(16)])
    return ["grpo", f"model={model_dir}", f"data={data}", f"output_dir={out}", "batch_size=4", "max_steps=8",
            "num_generations=4", "max_new_tokens=8", "lr=1e-2", "progress=false", f"reward={REWARDS_FILE}:near_a"]


@pytest.mark.parametrize("command, signum", [("sft", signal.SIGINT), ("grpo", signal.SIGTERM)])
def test_a_signal_mid_run_checkpoints_and_the_resumed_run_is_bit_identical(tmp_path, tiny_model_dir, command,
                                                                           signum):
    build = _sft_argv if command == "sft" else _grpo_argv
    out = tmp_path / "signalled"
    argv = build(tmp_path, tiny_model_dir, out)
    code, stderr = _signal_mid_run(argv, out, signum, tmp_path)

    assert code == 128 + signum, stderr[-3000:]
    stopped_at = _steps_logged(out)
    assert [s for s, _ in checkpoint.list_checkpoints(out / "checkpoints")][-1] == stopped_at
    assert not (out / "final").exists()
    name = signal.Signals(signum).name
    assert f"stopped by {name} after step {stopped_at}" in stderr
    assert f"Resume with: rlhf {command} " in stderr and stderr.rstrip().endswith("--resume")

    assert main(argv + ["--resume"]) == 0
    reference = tmp_path / "uninterrupted"
    assert main(build(tmp_path, tiny_model_dir, reference)) == 0
    assert_same_weights(final_weights(out), final_weights(reference))


def test_a_second_signal_during_the_save_stops_at_once_and_keeps_the_previous_checkpoint(tmp_path, tiny_model_dir):
    """The first SIGTERM asks for a checkpoint; a second one while it is written kills the process.
    The partial checkpoint is ignored and the previous one resumes exactly."""
    out = tmp_path / "twice"
    argv = _sft_argv(tmp_path, tiny_model_dir, out)
    script = tmp_path / "child.py"
    # writing the checkpoint takes 3 s, long enough for the second signal to land inside it
    script.write_text(CHILD.replace("from rlhf.cli import main", """
from rlhf.train import checkpoint
real_write = checkpoint.write_main_files
def slow_write(tmp, **kwargs):
    Path(os.environ["SAVING"]).touch()
    time.sleep(3)
    real_write(tmp, **kwargs)
checkpoint.write_main_files = slow_write
from rlhf.cli import main"""))
    saving = tmp_path / "saving"
    env = {**_env(), "STEP_SLEEP": "0.3", "SAVING": str(saving)}
    proc = subprocess.Popen([sys.executable, str(script), *argv], env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _steps_logged(out) < 6:  # step-5 is committed by now
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    saving.unlink()
    proc.send_signal(signal.SIGTERM)
    while not saving.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM  # the default action: killed by the signal
    assert [s for s, _ in checkpoint.list_checkpoints(out / "checkpoints")] == [5]

    assert main(argv + ["--resume"]) == 0
    assert main(_sft_argv(tmp_path, tiny_model_dir, tmp_path / "uninterrupted")) == 0
    assert_same_weights(final_weights(out), final_weights(tmp_path / "uninterrupted"))


DDP_CHILD = CHILD.replace("from rlhf.cli import main", """
Path(os.environ["PIDS"], os.environ["RANK"]).write_text(str(os.getpid()))
from rlhf.cli import main""")


def test_under_torchrun_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, tiny_model_dir):
    script = tmp_path / "ddp_child.py"
    script.write_text(DDP_CHILD)
    pids = tmp_path / "pids"
    pids.mkdir()
    out = tmp_path / "ddp"
    argv = _sft_argv(tmp_path, tiny_model_dir, out)
    env = {**_env(), "OMP_NUM_THREADS": "1", "STEP_SLEEP": "0.3", "PIDS": str(pids)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.Popen([*torchrun, str(script), *argv], env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while _steps_logged(out) < 2 or not (pids / "1").is_file():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(int((pids / "1").read_text()), signal.SIGTERM)  # rank 1 only; rank 0 learns it in the collective
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode != 0
    stopped_at = _steps_logged(out)
    assert [s for s, _ in checkpoint.list_checkpoints(out / "checkpoints")][-1] == stopped_at, stderr[-3000:]
    assert f"stopped by SIGTERM after step {stopped_at}" in stderr
    assert stderr.count("exitcode  : 143") == 2, stderr[-3000:]  # torchrun's failure report, one per rank

    env["STEP_SLEEP"] = "0"
    resumed = subprocess.run([*torchrun, str(script), *argv, "--resume"], env=env, cwd=REPO, capture_output=True,
                             text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert main(_sft_argv(tmp_path, tiny_model_dir, tmp_path / "single")) == 0
    assert_same_weights(final_weights(out), final_weights(tmp_path / "single"), atol=1e-5)


def test_the_resume_command_adds_resume_once():
    assert resume_command(["sft", "--config", "my run.yaml", "lr=1e-5"]) == "rlhf sft --config 'my run.yaml' lr=1e-5 --resume"
    assert resume_command(["grpo", "resume=true"]) == "rlhf grpo resume=true"
    assert resume_command(["dpo", "--resume"]) == "rlhf dpo --resume"


def test_preempted_exit_codes():
    assert Preempted(signal.SIGTERM, 3, "x").exit_code == 143
    assert Preempted(signal.SIGINT, 3, "x").exit_code == 130
