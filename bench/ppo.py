"""PPO step time, split into its phases: rlhf `ppo` on the embedded model with a learned reward model.

One rlhf PPO step = sample completions (generation), score them with a reward model (a real
forward pass of a second network), run the frozen reference and the critic over the batch
(reference log-probs, old values, KL-shaped rewards, GAE), then `ppo_epochs` passes of clipped
policy + value updates. The bench prints how a step's wall time splits across those four.

Settings: the embedded SmolLM2-135M-Instruct as policy (and, frozen, as reference), 8 chat prompts
x 1 completion x at most 48 new tokens per step, ppo_epochs 4, num_minibatches 1, fp32 on CPU,
gradient checkpointing off, AdamW (lr 1e-6), adaptive KL from beta 0.05. The reward model is
`AutoModelForSequenceClassification(num_labels=1)` built from the same SmolLM2 directory with a
seeded random score head and saved once per run, *untrained*: only timing matters, and its forward
costs what a trained one's would. It is the reward source (`reward=<dir>`: rlhf loads its own
copy) and, loaded once more, the critic's initialisation (`value_model=`), as InstructGPT does.
The prompts ask for long essays, so completions tend to run to the 48-token limit; the bench
prints the mean completion length.

No TRL side: TRL 1.16 ships no PPOTrainer (it is gone from `trl.trainer` and is not in
`trl.experimental`), so there is nothing to match.

Timing: `--warmup` steps (default 1), then `--timed-steps` (default 3); s/step is the wall time
from the end of the last warm-up step to the end of the last step (a `ppo(callbacks=...)` hook)
over the timed steps. The split reads rlhf's metrics.jsonl: `time/generate`, `time/score`,
`time/reference` (reference and critic forwards, rewards, GAE); "train" is the rest of the step
(the PPO updates, `time/update`, plus the loop's bookkeeping). Each repeat runs in its own child
process, one at a time; medians over `--repeats` (default 3). The LAST line is the summary:

    ppo: 14.2 s/step = generate 5.1 (36%) + score 0.4 (3%) + reference/values 1.2 (8%) + train 7.5 (53%) | peak RSS 3100 MiB

Run from the repository root:

    python bench/ppo.py            # creates/reuses .venv-bench, re-executes itself there
    python bench/ppo.py --quick    # smoke test: 1 warm-up + 1 timed step, one repeat

Results (every step of every run) go to bench/results/ppo.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from grpo import make_prompt_rows  # noqa: E402  (the same long-answer chat prompts)

TRL_VERSION, PIP_STEPS, REQUIREMENTS = common.TRL_VERSION, common.TRL_PIP_STEPS, common.TRL_REQUIREMENTS
SIDES = ("rlhf",)
PHASES = ("generate", "score", "reference", "train")
LABELS = {"generate": "generate", "score": "score", "reference": "reference/values", "train": "train"}


# ----------------------------------------------------------------------------- the reward model


def make_untrained_reward_model(model_dir: Path, out_dir: Path, seed: int) -> Path:
    """Save `AutoModelForSequenceClassification(num_labels=1)` from the causal LM in `model_dir`:
    its backbone weights and a score head drawn with `seed` (untrained), plus the tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from rlhf.models import load_tokenizer

    if (out_dir / "config.json").is_file():
        return out_dir
    hf_logging.set_verbosity_error()  # the "score.weight newly initialised" report is the point here
    hf_logging.disable_progress_bar()
    tokenizer = load_tokenizer(model_dir)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32,
                                                               pad_token_id=tokenizer.pad_token_id)
    model.config.pad_token_id = tokenizer.pad_token_id
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)
    del model
    gc.collect()
    return out_dir


# ----------------------------------------------------------------------------- child


def child_rlhf(args) -> None:

    import torch
    torch.set_num_threads(args.threads)
    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.models.reward import load_reward_model
    from rlhf.recipes.ppo import PPOConfig, ppo

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    tokenizer = load_tokenizer(args.model_dir)
    model = load_causal_lm(args.model_dir, dtype=torch.float32)
    ref_model = load_causal_lm(args.model_dir, dtype=torch.float32)
    value_model = load_reward_model(args.reward_dir, pad_token_id=tokenizer.pad_token_id, dtype=torch.float32)
    rss_loaded = common.peak_rss_mib()

    want = dict(model=args.model_dir, reward=args.reward_dir, output_dir=str(Path(args.out) / "run"),
                batch_size=args.batch_size, grad_accum=1, num_generations=1, max_new_tokens=args.max_new_tokens,
                max_steps=args.warmup + args.timed_steps, ppo_epochs=args.ppo_epochs,
                num_minibatches=args.num_minibatches, lr=args.lr, lr_scheduler="linear", warmup_ratio=0.0,
                weight_decay=0.0, max_grad_norm=1.0, beta=args.beta, adaptive_kl=True, temperature=1.0, top_p=1.0,
                top_k=0, gradient_checkpointing=False, dtype="float32", threads=args.threads, seed=args.seed,
                save_every=0, progress=False, report_to="none", log_every=10**9)
    cfg, ignored = common.config_with_known_fields(PPOConfig, want)

    clock = common.StepClock()
    result = ppo(cfg, train_data=rows, tokenizer=tokenizer, model=model, ref_model=ref_model, value_model=value_model,
                 callbacks=[clock])
    metrics = [json.loads(line) for line in Path(result.metrics_path).read_text().splitlines() if line.strip()]
    steps = []
    for i, m in enumerate(metrics):
        wall = clock.wall(i)
        phases = {p: m.get(f"time/{p}") for p in ("generate", "score", "reference")}
        steps.append({
            "step": m["step"], "wall_s": wall, "loop_time_s": m.get("time_s"), **phases,
            "train": wall - sum(phases.values()) if None not in phases.values() else None,
            "update_loop": m.get("time/update"),  # the PPO updates alone, without the loop's bookkeeping
            # completion_length is the batch's response tokens over its completions
            "completion_length": m.get("completion_length"), "truncated": m.get("truncated"),
            "score_mean": m.get("score"), "kl": m.get("kl"), "loss": m.get("loss"),
        })
    common.emit_result({
        "side": "rlhf", **clock.window(args.warmup), "steps": steps,
        "first_step_s": clock.wall(0),
        "peak_rss_loaded_mib": rss_loaded, "peak_rss_train_mib": clock.peak_rss_mib, "peak_rss_mib": common.peak_rss_mib(),
        "threads": torch.get_num_threads(), "config_ignored": ignored,
    })


# ----------------------------------------------------------------------------- parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warmup", type=int, default=1, help="leading steps left out of the timing (default 1, at least 1)")
    p.add_argument("--timed-steps", type=int, default=3, help="steps timed after the warm-up (default 3)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per step, one completion each (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="completion token limit (default 48)")
    p.add_argument("--ppo-epochs", type=int, default=4, help="passes over each batch of rollouts (default 4)")
    p.add_argument("--num-minibatches", type=int, default=1, help="optimiser updates per pass (default 1)")
    p.add_argument("--lr", type=float, default=1e-6, help="AdamW peak learning rate, linear decay (default 1e-6)")
    p.add_argument("--beta", type=float, default=0.05, help="starting KL coefficient, adaptive (default 0.05)")
    common.add_harness_args(p, sides=SIDES, retries=1, quick_help="smoke test: 1 warm-up + 1 timed step, 1 repeat")
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--reward-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    common.apply_quick(p, args, {"timed_steps": 1, "warmup": 1, "repeats": 1})
    if args.warmup < 1 or args.timed_steps < 1:
        p.error("--warmup and --timed-steps must be at least 1")
    return args


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child == "rlhf":
        return child_rlhf(args)

    common.ensure_bench_venv(PIP_STEPS, REQUIREMENTS, force_setup=args.setup)

    from rlhf.data.io import load_rows
    from rlhf.data.prompts import tokenize_prompts
    from rlhf.models import DEFAULT_MODEL, load_tokenizer, resolve_model_dir

    versions = common.package_versions()
    n_steps = args.warmup + args.timed_steps
    model_dir = resolve_model_dir(DEFAULT_MODEL)  # converts the embedded GGUF once, then cached
    tokenizer = load_tokenizer(model_dir)
    rows = make_prompt_rows(n_steps * args.batch_size)  # one epoch: no prompt is seen twice
    examples, _ = tokenize_prompts(load_rows(rows), tokenizer, max_length=512)
    prompt_lens = [len(e["prompt_ids"]) for e in examples]

    work = common.make_workdir(args.workdir, "bench-ppo-")
    data_path = work / "prompts.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reward_dir = make_untrained_reward_model(Path(model_dir), work / f"untrained-reward-model-seed{args.seed}", args.seed)

    print(f"[bench] model {model_dir}; reward model (untrained score head, seed {args.seed}) {reward_dir}", flush=True)
    print(f"[bench] {len(rows)} chat prompts ({min(prompt_lens)}..{max(prompt_lens)} tokens with the chat template), "
          f"{args.batch_size} prompts x 1 completion x <= {args.max_new_tokens} new tokens per step, ppo_epochs "
          f"{args.ppo_epochs}, num_minibatches {args.num_minibatches}; {args.warmup} warm-up + {args.timed_steps} "
          f"timed steps; lr {args.lr}, beta {args.beta} (adaptive), threads {args.threads}, repeats {args.repeats}; "
          f"work dir {work}", flush=True)
    print("[bench] versions " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "trl"), flush=True)

    def make_argv(side: str, r: int, out: Path) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--child", side, "--model-dir", str(model_dir),
                "--reward-dir", str(reward_dir), "--data", str(data_path), "--out", str(out),
                "--warmup", str(args.warmup), "--timed-steps", str(args.timed_steps),
                "--batch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens),
                "--ppo-epochs", str(args.ppo_epochs), "--num-minibatches", str(args.num_minibatches),
                "--lr", repr(args.lr), "--beta", repr(args.beta), "--threads", str(args.threads),
                "--seed", str(args.seed)]

    def timed(res: dict) -> list[dict]:
        return res["steps"][args.warmup:]

    def describe(side: str, r: int, res: dict) -> str:
        if len(res["steps"]) != n_steps:
            raise SystemExit(f"[bench] ran {len(res['steps'])} steps, expected {n_steps}")
        losses = [s["loss"] for s in res["steps"]]
        if any(x is None or not math.isfinite(x) for x in losses):
            raise SystemExit(f"[bench] a missing or non-finite loss: {losses}")
        split = " ".join(f"{LABELS[p]} {common.fmt(_mean(s[p] for s in timed(res)), 1)}" for p in PHASES)
        return (f"[bench] run {r + 1}/{args.repeats}: {res['s_per_step']:.2f} s/step ({split}), completion tokens "
                f"{common.fmt(_mean(s['completion_length'] for s in timed(res)), 1)} mean, "
                f"{res['cpu_s_per_step']:.1f} CPU-s/step, peak RSS {res['peak_rss_mib']:.0f} MiB (training "
                f"{res['peak_rss_train_mib']:.0f}), child wall {res['wall_s']:.0f} s, "
                f"other load {common.fmt(res['other_load'], 2)} cores")

    runs = common.run_alternating(SIDES, args.repeats, make_argv, work=work, env=common.child_env(args.threads),
                                  wait_quiet_s=args.wait_quiet, retries=args.retries, describe=describe)["rlhf"]
    if not args.workdir:  # the run's final/ and critic/ weights (~1 GB) and the reward model are not needed now
        for pattern in ("*/run/final", "*/run/critic", reward_dir.name):
            for d in work.glob(pattern):
                shutil.rmtree(d, ignore_errors=True)

    s_per_step = common.median(x["s_per_step"] for x in runs)
    split = {p: common.median(_mean(s[p] for s in timed(res)) for res in runs) for p in ("generate", "score", "reference")}
    # "train" closes the sum, so the parts add up to the median s/step
    split["train"] = s_per_step - sum(split.values()) if not any(math.isnan(v) for v in split.values()) else float("nan")
    steps = [s for res in runs for s in timed(res)]
    summary = {
        "s_per_step": s_per_step, "s_per_step_range": common.spread(x["s_per_step"] for x in runs),
        "cpu_s_per_step": common.median(x["cpu_s_per_step"] for x in runs), **split,
        "update_loop": common.median(_mean(s["update_loop"] for s in timed(res)) for res in runs),
        "completion_length": _mean(s["completion_length"] for s in steps),
        "truncated": _mean(s["truncated"] for s in steps),
        "other_load_max": max((x["other_load"] or 0.0) for x in runs),
        "peak_rss_mib": common.median(x["peak_rss_mib"] for x in runs),
        "peak_rss_train_mib": common.median(x["peak_rss_train_mib"] for x in runs),
    }
    print(f"[bench] rlhf ppo: {s_per_step:.2f} s/step (runs {summary['s_per_step_range'][0]:.2f}.."
          f"{summary['s_per_step_range'][1]:.2f}); PPO updates alone (time/update) "
          f"{common.fmt(summary['update_loop'], 2)} s of the train part; mean completion "
          f"{common.fmt(summary['completion_length'], 1)} tokens of {args.max_new_tokens} "
          f"({common.fmt(100 * (summary['truncated'] or 0), 0)}% hit the limit); "
          f"{summary['cpu_s_per_step']:.1f} CPU-s/step", flush=True)
    payload = {
        "bench": "ppo", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "model_dir", "data", "reward_dir", "out")},
        "model": str(model_dir), "reward_model": "untrained: SmolLM2 backbone + seeded random score head",
        "versions": versions, "machine": common.machine_info(),
        "data": {"prompts": len(rows), "min_prompt_tokens": min(prompt_lens), "max_prompt_tokens": max(prompt_lens)},
        "window": "end of step `warmup` -> end of the last step (ppo(callbacks=...))",
        "phases": {"generate": "time/generate: sampling", "score": "time/score: the reward model",
                   "reference": "time/reference: reference + critic forwards, KL-shaped rewards, GAE",
                   "train": "step wall - the three above: ppo_epochs x num_minibatches updates + bookkeeping"},
        "trl": "not run: TRL 1.16 has no PPOTrainer",
        "summary": summary, "runs": runs,
    }
    path = common.write_results("ppo", payload)
    print(f"[bench] results in {path}", flush=True)
    print("[bench] trl: no PPOTrainer in TRL 1.16 (removed from trl.trainer, not in trl.experimental); "
          "no side-by-side figure", flush=True)

    def part(p: str) -> str:
        v = split[p]
        pct = 100 * v / s_per_step if s_per_step and not math.isnan(v) else float("nan")
        return f"{LABELS[p]} {common.fmt(v, 1)} ({common.fmt(pct, 0)}%)"

    print(f"ppo: {common.fmt(s_per_step, 1)} s/step = " + " + ".join(part(p) for p in PHASES)
          + f" | peak RSS {common.fmt(summary['peak_rss_mib'])} MiB", flush=True)


if __name__ == "__main__":
    main()
