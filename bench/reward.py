"""Reward-model throughput and memory: rlhf `reward` against TRL 1.16 `RewardTrainer`, side by side.

Same model (the embedded SmolLM2-135M-Instruct backbone under a one-label sequence-classification
head, `AutoModelForSequenceClassification(num_labels=1)` with pad_token_id set, on both sides), the
same synthetic preference pairs in the same order, 8 pairs per optimiser step, one epoch, the same
max length, fp32 on CPU, AdamW with the same hyper-parameters and linear decay, Bradley-Terry loss,
gradient checkpointing off, no eval, no checkpoints, data loading in the main process, the same
number of torch threads. Both score heads start from the same values (drawn from a seeded
generator after loading), so the first-step losses must agree.

Tokens: each library tokenises the text rows itself (as users run it). TRL appends the EOS text
to each completion; rlhf does not (SmolLM2's pad is its EOS, so transformers' "last non-pad
token" rule reads the score at the same position either way, and causal attention makes that
position's hidden state identical), so TRL runs one more token per sequence. The bench checks
that TRL's ids are exactly rlhf's plus that EOS, and reports both token totals.
`--trl-same-ids` hands TRL rlhf's token ids instead (pre-tokenised `chosen_ids` / `rejected_ids`
columns), so both sides process identical tokens.

What is timed, per child ("the window"): one epoch,
- rlhf: from just before the `reward(...)` call (model and tokenizer already loaded and passed
  in) to the end of the last optimiser step: tokenising the pairs, building the optimiser, every
  step;
- TRL: from just before `trainer.train()` (model loading and dataset tokenisation already done in
  the constructor) to the end of the last step: accelerate setup, building the optimiser, every step.
Model loading, process start-up and the final save are outside the window on both sides.
pairs/s = pairs in the epoch / window seconds.

Each (side, repeat) runs in its own child process, one at a time, alternating the order. The
parent prints medians; the LAST line is the summary:

    reward: rlhf 2.34 pairs/s, trl 1.56 pairs/s, ratio 1.50x | peak RSS rlhf 1500 MiB, trl 2000 MiB

Run from the repository root:

    python bench/reward.py            # creates/reuses .venv-bench, re-executes itself there
    python bench/reward.py --quick    # smoke test: 16 pairs (2 steps), one repeat
    python bench/reward.py --setup    # (re)install the bench venv, then run

Results (every step of every run) go to bench/results/reward.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

TRL_VERSION, PIP_STEPS, REQUIREMENTS = common.TRL_VERSION, common.TRL_PIP_STEPS, common.TRL_REQUIREMENTS
SIDES = ("rlhf", "trl")
HEAD_STD = 0.02  # SmolLM2's initializer_range


# ----------------------------------------------------------------------------- children


def _same_head(model, seed: int) -> None:
    """Give the score head the same starting values on both sides (normal(0, HEAD_STD), seeded)."""
    import torch

    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = hf.score
    generator = torch.Generator().manual_seed(seed + 12345)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * HEAD_STD)
        if head.bias is not None:
            head.bias.zero_()


def _window(t0: float, c0: float, step_ends: list[float], cpu_ends: list[float], pairs: int) -> dict:
    elapsed = step_ends[-1] - t0
    cpu = cpu_ends[-1] - c0
    return {"window_s": elapsed, "window_cpu_s": cpu, "pairs": pairs, "pairs_per_s": pairs / elapsed,
            "pairs_per_cpu_s": pairs / cpu if cpu > 0 else float("nan")}


def child_rlhf(args) -> None:
    import dataclasses

    import torch
    torch.set_num_threads(args.threads)
    from rlhf.models import load_tokenizer
    from rlhf.models.reward import load_reward_model
    from rlhf.recipes._shared import pad_token_id
    from rlhf.recipes.reward import RewardConfig, reward

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    tokenizer = load_tokenizer(args.model_dir)
    model = load_reward_model(args.model_dir, pad_token_id=pad_token_id(tokenizer), dtype=torch.float32)
    _same_head(model, args.seed)
    rss_loaded = common.peak_rss_mib()

    want = dict(model=args.model_dir, output_dir=str(Path(args.out) / "run"), batch_size=args.batch_size, grad_accum=1,
                epochs=1, max_steps=-1, lr=args.lr, lr_scheduler="linear", warmup_ratio=0.0, weight_decay=0.0,
                adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8, max_grad_norm=1.0, max_length=args.max_length,
                truncation="error", packing=True, center_coef=0.0, use_margin=False, gradient_checkpointing=False,
                dtype="float32", threads=args.threads, seed=args.seed, save_every=0, progress=False,
                report_to="none", log_every=10**9)
    fields = {f.name for f in dataclasses.fields(RewardConfig)}
    cfg = RewardConfig(**{k: v for k, v in want.items() if k in fields})
    ignored = sorted(set(want) - fields)

    step_ends: list[float] = []
    cpu_ends: list[float] = []
    rss_train = [0.0]

    def on_step(step: int, metrics: dict) -> None:
        step_ends.append(time.perf_counter())
        cpu_ends.append(time.process_time())
        rss_train[0] = common.peak_rss_mib()

    t0, c0 = time.perf_counter(), time.process_time()
    result = reward(cfg, train_data=rows, model=model, tokenizer=tokenizer, callbacks=[on_step])
    metrics = [json.loads(line) for line in Path(result.metrics_path).read_text().splitlines() if line.strip()]
    loop_start = step_ends[0] - metrics[0]["time_s"]
    common.emit_result({
        "side": "rlhf", **_window(t0, c0, step_ends, cpu_ends, sum(int(m["loss_units"]) for m in metrics)),
        "loop_s": step_ends[-1] - loop_start, "before_loop_s": loop_start - t0,
        "steps": len(metrics), "step_pairs": [int(m["loss_units"]) for m in metrics],
        "step_tokens": [int(m["tokens"]) for m in metrics], "loss": [m["loss"] for m in metrics],
        "step_time_s": [m["time_s"] for m in metrics],
        "peak_rss_loaded_mib": rss_loaded, "peak_rss_train_mib": rss_train[0], "peak_rss_mib": common.peak_rss_mib(),
        "threads": torch.get_num_threads(), "config_ignored": ignored,
    })


def child_trl(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

    ours = json.loads(Path(args.ids).read_text())  # rlhf's [chosen_ids, rejected_ids] (prompt included), TRL order
    if args.trl_same_ids:
        dataset = Dataset.from_list([{"chosen_ids": c, "rejected_ids": r} for c, r in ours])
    else:
        rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
        order = json.loads(Path(args.order).read_text())
        dataset = Dataset.from_list([rows[i] for i in order])  # rlhf's per-step order, read sequentially below

    step_ends: list[float] = []
    cpu_ends: list[float] = []
    rss_train = [0.0]
    begin = [0.0]

    class Timer(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            begin[0] = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            step_ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())
            rss_train[0] = common.peak_rss_mib()

    step_tokens: list[int] = []
    step_pairs: list[int] = []
    step_width: list[int] = []

    class CountingRewardTrainer(RewardTrainer):
        # Counts what each step processes, the way rlhf counts it: non-pad tokens and pairs.
        def training_step(self, model, inputs, num_items_in_batch=None):
            step_tokens.append(int(inputs["attention_mask"].sum()))
            step_pairs.append(int(inputs["input_ids"].shape[0]) // 2)
            step_width.append(int(inputs["input_ids"].shape[1]))
            return super().training_step(model, inputs, num_items_in_batch)

    cfg = RewardConfig(
        output_dir=str(Path(args.out) / "run"),
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1, num_train_epochs=1, max_steps=-1,
        learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch", max_grad_norm=1.0,
        seed=args.seed, data_seed=args.seed, max_length=args.max_length, center_rewards_coefficient=None,
        bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
        train_sampling_strategy="sequential", dataloader_drop_last=False,
        save_strategy="no", eval_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=False,
    )
    t_init = time.perf_counter()
    trainer = CountingRewardTrainer(model=args.model_dir, args=cfg, train_dataset=dataset, callbacks=[Timer()])
    init_s = time.perf_counter() - t_init
    _same_head(trainer.model, args.seed)  # before train(): the optimiser is built there
    rss_loaded = common.peak_rss_mib()

    ds = trainer.train_dataset
    eos = trainer.processing_class.eos_token_id
    theirs = list(zip(ds["chosen_ids"], ds["rejected_ids"]))
    same = plus_eos = 0
    for (c, r), (tc, tr) in zip(ours, theirs):
        tc, tr = list(tc), list(tr)
        same += tc == c and tr == r
        plus_eos += tc == c + [eos] and tr == r + [eos]

    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    rss_after_train = common.peak_rss_mib()
    trainer.save_model(str(Path(args.out) / "final"))  # rlhf's reward() ends by writing final/; same here
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    common.emit_result({
        "side": "trl", **_window(t0, c0, step_ends, cpu_ends, sum(step_pairs)),
        "train_setup_s": begin[0] - t0, "loop_s": step_ends[-1] - begin[0], "init_s": init_s,
        "steps": len(step_ends), "step_pairs": step_pairs, "step_tokens": step_tokens, "step_width": step_width,
        "loss": losses, "step_time_s": [b - a for a, b in zip([begin[0]] + step_ends, step_ends)],
        "rows_same_ids": same, "rows_same_ids_plus_eos": plus_eos, "train_rows": len(ds),
        "trl_same_ids": bool(args.trl_same_ids),
        "peak_rss_loaded_mib": rss_loaded, "peak_rss_train_mib": rss_train[0],
        "peak_rss_after_train_mib": rss_after_train, "peak_rss_mib": common.peak_rss_mib(),
        "threads": torch.get_num_threads(),
    })


# ----------------------------------------------------------------------------- parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=64, help="synthetic pairs, one epoch over them (default 64: 8 steps)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per optimiser step, both sides (default 8)")
    p.add_argument("--max-length", type=int, default=256, help="max tokens per sequence, both sides (default 256)")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW peak learning rate, linear decay (default 1e-5)")
    p.add_argument("--trl-same-ids", action="store_true",
                   help="hand TRL rlhf's token ids (no trailing EOS) instead of the text rows")
    common.add_harness_args(p, sides=SIDES, retries=1, quick_help="smoke test: 16 pairs (2 steps), 1 repeat")
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--order", help=argparse.SUPPRESS)
    p.add_argument("--ids", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.pairs, args.repeats = 16, 1
    if args.pairs % args.batch_size:
        p.error("--pairs must be a multiple of --batch-size (rlhf drops an incomplete last batch, TRL does not)")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child == "rlhf":
        return child_rlhf(args)
    if args.child == "trl":
        return child_trl(args)

    common.ensure_bench_venv(PIP_STEPS, REQUIREMENTS, force_setup=args.setup)

    from rlhf.data.io import load_rows
    from rlhf.data.preference import tokenize_pairs
    from rlhf.models import DEFAULT_MODEL, load_tokenizer, resolve_model_dir
    from rlhf.train.loop import DataOrder

    sides = common.parse_sides(args.sides, SIDES)
    versions = common.package_versions()

    model_dir = resolve_model_dir(DEFAULT_MODEL)  # converts the embedded GGUF once, then cached
    tokenizer = load_tokenizer(model_dir)
    rows = common.make_pair_rows(tokenizer, n_pairs=args.pairs, seed=args.seed)
    # as rlhf's reward() tokenises: prompt + completion, no EOS appended
    examples, stats = tokenize_pairs(load_rows(rows), tokenizer, max_length=args.max_length, truncation="error",
                                     append_eos=False)
    order = [i for step in range(args.pairs // args.batch_size)
             for i in DataOrder(len(rows), args.batch_size, args.seed).batch(step)[1]]
    seq_lens = [len(e["prompt_ids"]) + len(e[k]) for e in examples for k in ("chosen_ids", "rejected_ids")]
    total_tokens = sum(seq_lens)

    work = common.make_workdir(args.workdir, "bench-reward-")
    data_path, order_path, ids_path = work / "pairs.jsonl", work / "order.json", work / "ids.json"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    order_path.write_text(json.dumps(order))
    ids_path.write_text(json.dumps([[examples[i]["prompt_ids"] + examples[i]["chosen_ids"],
                                     examples[i]["prompt_ids"] + examples[i]["rejected_ids"]] for i in order]))

    print(f"[bench] model {model_dir}", flush=True)
    print(f"[bench] {len(rows)} pairs ({stats}); sequence tokens {min(seq_lens)}..{max(seq_lens)}, "
          f"{total_tokens} in all {2 * len(rows)} sequences (rlhf tokenisation, no EOS)", flush=True)
    print(f"[bench] one epoch = {args.pairs // args.batch_size} steps of {args.batch_size} pairs, max_length "
          f"{args.max_length}, lr {args.lr}, threads {args.threads}, repeats {args.repeats}, TRL input "
          f"{'rlhf token ids' if args.trl_same_ids else 'text rows'}; work dir {work}", flush=True)
    print("[bench] versions " + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)

    def make_argv(side: str, r: int, out: Path) -> list[str]:
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--model-dir", str(model_dir),
                "--data", str(data_path), "--order", str(order_path), "--ids", str(ids_path), "--out", str(out),
                "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--lr", repr(args.lr),
                "--threads", str(args.threads), "--seed", str(args.seed)]
        return argv + (["--trl-same-ids"] if args.trl_same_ids else [])

    def describe(side: str, r: int, res: dict) -> str:
        losses = res["loss"]
        if not losses or not all(math.isfinite(x) for x in losses):
            raise SystemExit(f"[bench] {side} produced no or a non-finite loss: {losses}")
        if res["pairs"] != args.pairs:
            raise SystemExit(f"[bench] {side} trained on {res['pairs']} pairs, expected {args.pairs}")
        return (f"[bench] {side:4s} run {r + 1}/{args.repeats}: {res['pairs_per_s']:.3f} pairs/s ({res['pairs']} pairs "
                f"in {res['window_s']:.1f} s), {res['pairs_per_cpu_s']:.3f} pairs/CPU-s, peak RSS "
                f"{res['peak_rss_mib']:.0f} MiB (training {res['peak_rss_train_mib']:.0f}), loss {losses[0]:.4f} -> "
                f"{losses[-1]:.4f}, child wall {res['wall_s']:.0f} s, other load {common.fmt(res['other_load'], 2)} cores")

    runs = common.run_alternating(sides, args.repeats, make_argv, work=work, env=common.child_env(args.threads),
                                  wait_quiet_s=args.wait_quiet, retries=args.retries, describe=describe)

    summary = {}
    for side, rs in runs.items():
        summary[side] = {
            "pairs_per_s": common.median(x["pairs_per_s"] for x in rs),
            "pairs_per_s_range": common.spread(x["pairs_per_s"] for x in rs),
            "pairs_per_cpu_s": common.median(x["pairs_per_cpu_s"] for x in rs),
            "window_s": common.median(x["window_s"] for x in rs),
            "loop_s": common.median(x["loop_s"] for x in rs),
            "other_load_max": max((x["other_load"] or 0.0) for x in rs),
            "peak_rss_mib": common.median(x["peak_rss_mib"] for x in rs),
            "peak_rss_train_mib": common.median(x["peak_rss_train_mib"] for x in rs),
            "tokens": sum(rs[0]["step_tokens"]),
            "loss_first_last": [rs[0]["loss"][0], rs[0]["loss"][-1]],
        }
    checks = {}
    if "trl" in runs:
        res = runs["trl"][0]
        padded = sum(w * 2 * p for w, p in zip(res["step_width"], res["step_pairs"]))
        checks = {"rows_same_ids": res["rows_same_ids"], "rows_same_ids_plus_eos": res["rows_same_ids_plus_eos"],
                  "trl_padded_positions": padded}
        print(f"[bench] TRL ids vs rlhf's, of {res['train_rows']} pairs: identical {res['rows_same_ids']}, identical plus "
              f"a trailing EOS {res['rows_same_ids_plus_eos']}; tokens rlhf {total_tokens}, trl {summary['trl']['tokens']}; "
              f"TRL pads to {padded} positions ({padded / max(summary['trl']['tokens'], 1):.2f}x its tokens)", flush=True)
    if {"rlhf", "trl"} <= set(runs):
        l_r, l_t = runs["rlhf"][0]["loss"], runs["trl"][0]["loss"]
        checks["step1_loss"] = {"rlhf": l_r[0], "trl": l_t[0]}
        print(f"[bench] step-1 loss rlhf {l_r[0]:.5f}, trl {l_t[0]:.5f}; last step rlhf {l_r[-1]:.5f}, trl {l_t[-1]:.5f}",
              flush=True)
    for side in sides:
        s = summary[side]
        print(f"[bench] {side}: window {s['window_s']:.1f} s (steps {s['loop_s']:.1f} s); "
              f"{s['pairs_per_cpu_s']:.3f} pairs per CPU-second", flush=True)

    ratio = summary["rlhf"]["pairs_per_s"] / summary["trl"]["pairs_per_s"] if {"rlhf", "trl"} <= set(summary) else None
    payload = {
        "bench": "reward", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "model_dir", "data", "order", "ids", "out")},
        "model": str(model_dir), "versions": versions, "machine": common.machine_info(),
        "data": {"pairs": len(rows), "tokens_rlhf": total_tokens, "min_seq_tokens": min(seq_lens),
                 "max_seq_tokens": max(seq_lens), "tokenize_stats": str(stats)},
        "window": {"rlhf": "reward() call (model + tokenizer preloaded) -> end of last step",
                   "trl": "trainer.train() -> end of last step"},
        "checks": checks, "summary": summary, "ratio": ratio, "runs": runs,
    }
    path = common.write_results("reward", payload)
    print(f"[bench] results in {path}", flush=True)

    print(common.summary_line("reward", "pairs/s", {k: v["pairs_per_s"] for k, v in summary.items()},
                              {k: v["peak_rss_mib"] for k, v in summary.items()}, ratio, nd=2), flush=True)


if __name__ == "__main__":
    main()
