"""SFT throughput and memory: rlhf `sft` against TRL 1.16 `SFTTrainer`, side by side.

Same model (the embedded SmolLM2-135M-Instruct, converted once to safetensors), same synthetic
prompt/completion rows, same global batch (rows per optimiser step), same max length, fp32 on CPU,
AdamW with the same hyper-parameters and linear decay, completion-only loss, no gradient
checkpointing, no eval, no checkpoints while timing, dataloader in the main process, and the same
number of torch threads on both sides. With `--packing` (the default) both sides run padding-free:
each step's rows are concatenated into one (1, N) row with per-example position ids (rlhf
`packing=True`; TRL `padding_free=True, packing=False`, which keeps TRL's batch at the same rows
rather than packing whole-dataset bins). `--no-packing` pads each batch on both sides instead.
Both sides also get the same rows in the same order: TRL is handed the dataset in rlhf's per-step
order and told to read it sequentially, so every step sees the very same tokens.

Each (side, repeat) runs in its own child process, one at a time, alternating rlhf / TRL. A child
times steps warmup+1..steps as the wall time between the end of step `warmup` and the end of the
last step (data collation, forward, backward, optimiser, per-step logging all included), counts
the non-pad tokens of those steps, and reports its peak RSS. The parent prints medians over the
repeats; the LAST line is the summary:

    sft: rlhf 1234 tok/s, trl 987 tok/s, ratio 1.25x | peak RSS rlhf 812 MiB, trl 1010 MiB

Run from the repository root:

    python bench/sft.py            # creates/reuses .venv-bench, re-executes itself there
    python bench/sft.py --quick    # smoke test: a few steps, one repeat
    python bench/sft.py --setup    # (re)install the bench venv, then run

Results (every step of every run) go to bench/results/sft.json.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

TRL_VERSION, PIP_STEPS, REQUIREMENTS = common.TRL_VERSION, common.TRL_PIP_STEPS, common.TRL_REQUIREMENTS

_WORDS = common.PAIR_WORDS


# ----------------------------------------------------------------------------- data


def make_rows(tokenizer, *, n_rows: int, max_length: int, seed: int, min_tokens: int = 32,
              max_tokens: int = 256) -> tuple[list[dict], list[int]]:
    """Deterministic synthetic prompt/completion rows whose tokenised length (prompt + completion
    + EOS, as both libraries tokenise it) is uniform in [min_tokens, min(max_tokens, max_length)],
    so neither side truncates. Returns the rows and their token lengths."""
    rng = random.Random(seed)
    hi = min(max_tokens, max_length)
    lo = min(min_tokens, hi)
    word_len = {w: len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in _WORDS}

    def n_tokens(prompt: str, completion: str) -> int:
        return (len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
                + len(tokenizer(completion, add_special_tokens=False)["input_ids"]) + 1)  # + EOS

    rows, lengths = [], []
    for i in range(n_rows):
        target = rng.randint(lo, hi)
        prompt_share = rng.uniform(0.2, 0.5)
        head = f"Question {i}:"
        tail = "\nAnswer:"
        prompt_words: list[str] = []
        budget = max(int(target * prompt_share) - n_tokens(head + tail, ""), 1)
        while budget > 0:
            w = rng.choice(_WORDS)
            prompt_words.append(w)
            budget -= word_len[w]
        prompt = head + "".join(" " + w for w in prompt_words) + "?" + tail
        completion_words: list[str] = []
        budget = target - n_tokens(prompt, " .")
        while budget > 0:
            w = rng.choice(_WORDS)
            completion_words.append(w)
            budget -= word_len[w]
        completion = "".join(" " + w for w in completion_words) + "."
        while n_tokens(prompt, completion) > hi and completion_words:  # merges can over-count; trim
            completion_words.pop()
            completion = "".join(" " + w for w in completion_words) + "."
        rows.append({"prompt": prompt, "completion": completion})
        lengths.append(n_tokens(prompt, completion))
    return rows, lengths


def check_tokenisation_agrees(tokenizer, rows: list[dict]) -> int:
    """How many rows TRL tokenises differently from rlhf: TRL encodes prompt+completion+eos_text
    in one go, rlhf encodes prompt and completion separately and appends the EOS id."""
    eos = tokenizer.eos_token
    differ = 0
    for row in rows:
        ours = (tokenizer(row["prompt"], add_special_tokens=True)["input_ids"]
                + tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
        theirs = tokenizer(row["prompt"] + row["completion"] + eos)["input_ids"]
        differ += ours != theirs
    return differ


def rlhf_batch_order(n_rows: int, batch_size: int, seed: int, steps: int) -> list[int] | None:
    """Row indices in the order rlhf's loop visits them (DataOrder), for `steps` steps; None if the
    loop's ordering is not importable (then TRL samples its own order)."""
    try:
        from rlhf.train.loop import DataOrder
        order = DataOrder(n_rows, batch_size, seed)
        return [i for step in range(steps) for i in order.batch(step)[1]]
    except Exception as exc:  # pragma: no cover - depends on rlhf internals
        print(f"[bench] rlhf DataOrder unavailable ({exc!r}); TRL uses its own random order", flush=True)
        return None


# ----------------------------------------------------------------------------- children


def _timed(step_ends: list[float], cpu_ends: list[float], tokens: list[int], warmup: int) -> dict:
    """tok/s over steps warmup+1..N: their tokens over the wall time from the end of step `warmup`
    (the start of training when warmup is 0) to the end of step N. Also the process CPU time
    (all threads) over the same window: tokens per CPU-second is less sensitive than wall time
    to other processes competing for the cores."""
    n = len(tokens)
    if n <= warmup:
        raise RuntimeError(f"only {n} steps ran; need more than warmup={warmup}")
    timed_tokens = sum(tokens[warmup:])
    elapsed = step_ends[n] - step_ends[warmup]  # step_ends[0] is the start of step 1
    cpu = cpu_ends[n] - cpu_ends[warmup] if len(cpu_ends) > n else float("nan")
    return {"timed_steps": n - warmup, "timed_tokens": timed_tokens, "timed_s": elapsed,
            "tokens_per_s": timed_tokens / elapsed, "timed_cpu_s": cpu,
            "tokens_per_cpu_s": timed_tokens / cpu if cpu and cpu > 0 else float("nan")}


def child_rlhf(args) -> None:
    import dataclasses

    import torch
    torch.set_num_threads(args.threads)
    from rlhf.recipes.sft import SFTConfig, sft

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    out = Path(args.out)
    want = dict(model=args.model_dir, output_dir=str(out), batch_size=args.batch_size, grad_accum=1,
                max_length=args.max_length, truncation="error", lr=args.lr, lr_scheduler="linear",
                warmup_ratio=0.0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8,
                max_grad_norm=1.0, epochs=1, max_steps=args.steps, seed=args.seed, save_every=0,
                packing=args.packing, gradient_checkpointing=False, dtype="float32", threads=args.threads,
                progress=False, report_to="none", log_every=10**9, logging="none")
    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    cfg = SFTConfig(**{k: v for k, v in want.items() if k in fields})
    ignored = sorted(set(want) - fields)

    step_ends = [0.0]
    cpu_ends = [float("nan")]
    rss_train = [0.0]
    threads_seen = []

    def on_step(step: int, metrics: dict) -> None:
        step_ends.append(time.perf_counter())
        cpu_ends.append(time.process_time())
        rss_train[0] = common.peak_rss_mib()
        threads_seen.append(torch.get_num_threads())

    # The loop's first step starts right after sft() finishes tokenising and loading; the start
    # of step 1 is approximated by the first step's own time_s (only used when warmup == 0).
    result = sft(cfg, train_data=rows, callbacks=[on_step])
    metrics = [json.loads(line) for line in Path(result.metrics_path).read_text().splitlines() if line.strip()]
    step_ends[0] = step_ends[1] - metrics[0]["time_s"]
    tokens = [int(m["tokens"]) for m in metrics]
    emit = {
        "side": "rlhf", **_timed(step_ends, cpu_ends, tokens, args.warmup),
        "step_tokens": tokens, "loss": [m["loss"] for m in metrics],
        "loss_tokens": [m.get("loss_units") for m in metrics],
        "step_time_s": [b - a for a, b in zip(step_ends, step_ends[1:])],
        "loop_time_s": [m["time_s"] for m in metrics],
        "peak_rss_train_mib": rss_train[0], "peak_rss_mib": common.peak_rss_mib(),
        "threads": sorted(set(threads_seen)), "config_ignored": ignored,
    }
    common.emit_result(emit)


def child_trl(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    order = json.loads(Path(args.order).read_text()) if args.order else None
    if order is not None:
        rows = [rows[i] for i in order]  # rlhf's per-step order, read sequentially below
    dataset = Dataset.from_list(rows)

    step_ends = [0.0]
    cpu_ends = [0.0]
    rss_train = [0.0]
    threads_seen = []

    class Timer(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            step_ends[0] = time.perf_counter()
            cpu_ends[0] = time.process_time()

        def on_step_end(self, a, state, control, **kw):
            step_ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())
            rss_train[0] = common.peak_rss_mib()
            threads_seen.append(torch.get_num_threads())

    step_tokens: list[int] = []
    loss_tokens: list[int] = []

    class CountingSFTTrainer(SFTTrainer):
        # Counts what each optimiser step processes, the way rlhf counts it: non-pad tokens
        # (attention_mask.sum(), or every token of a padding-free row).
        def training_step(self, model, inputs, num_items_in_batch=None):
            if "attention_mask" in inputs:
                step_tokens.append(int(inputs["attention_mask"].sum()))
            else:
                step_tokens.append(int(inputs["input_ids"].numel()))
            loss_tokens.append(int((inputs["labels"][:, 1:] != -100).sum()))
            return super().training_step(model, inputs, num_items_in_batch)

    cfg = SFTConfig(
        output_dir=args.out,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        max_steps=args.steps, num_train_epochs=1,
        learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch", max_grad_norm=1.0,
        seed=args.seed, data_seed=args.seed,
        bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
        # padding_free without packing does not truncate (TRL refuses max_length there); the rows
        # are generated no longer than max_length, so nothing needs truncating.
        max_length=None if args.packing else args.max_length,
        packing=False, padding_free=args.packing, completion_only_loss=True,
        train_sampling_strategy="sequential" if order is not None else "random",
        save_strategy="no", eval_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=False,
    )
    trainer = CountingSFTTrainer(model=args.model_dir, args=cfg, train_dataset=dataset, callbacks=[Timer()])
    trainer.train()
    rss_after_train = common.peak_rss_mib()
    # rlhf's sft() ends by writing final/ (model + tokenizer); do the same so whole-process peaks compare.
    trainer.save_model(str(Path(args.out) / "final"))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    emit = {
        "side": "trl", **_timed(step_ends, cpu_ends, step_tokens, args.warmup),
        "step_tokens": step_tokens, "loss": losses, "loss_tokens": loss_tokens,
        "step_time_s": [b - a for a, b in zip(step_ends, step_ends[1:])],
        "peak_rss_train_mib": max(rss_train[0], 0.0), "peak_rss_after_train_mib": rss_after_train,
        "peak_rss_mib": common.peak_rss_mib(), "threads": sorted(set(threads_seen)),
        "trl_padding_free": trainer.padding_free, "trl_completion_only_loss": trainer.completion_only_loss,
        "train_rows": len(dataset),
    }
    common.emit_result(emit)


# ----------------------------------------------------------------------------- parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12, help="optimiser steps per run (default 12)")
    p.add_argument("--warmup", type=int, default=2, help="leading steps left out of the timing (default 2)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per optimiser step, both sides (default 8)")
    p.add_argument("--max-length", type=int, default=256, help="max tokens per row; rows are 32..min(256, this) (default 256)")
    p.add_argument("--rows", type=int, default=256, help="synthetic dataset rows (default 256)")
    p.add_argument("--lr", type=float, default=2e-5, help="AdamW peak learning rate, linear decay (default 2e-5)")
    p.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True,
                   help="padding-free rows on both sides (default); --no-packing pads each batch on both sides")
    common.add_harness_args(p, sides=("rlhf", "trl"), retries=2,
                            quick_help="smoke test: defaults become 4 steps, 1 warmup, 1 repeat, max length 128, 64 rows")
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--order", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # smaller defaults; flags given explicitly still win
    common.apply_quick(p, args, {"steps": 4, "warmup": 1, "repeats": 1, "max_length": 128, "rows": 64})
    if args.steps <= args.warmup:
        p.error("--steps must be larger than --warmup")
    return args


def _child_argv(args, side: str, model_dir: Path, data: Path, order: Path | None, out: Path) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--model-dir", str(model_dir),
            "--data", str(data), "--out", str(out), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--lr", repr(args.lr),
            "--threads", str(args.threads), "--seed", str(args.seed),
            "--packing" if args.packing else "--no-packing"]
    if order is not None and side == "trl":
        argv += ["--order", str(order)]
    return argv


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child == "rlhf":
        return child_rlhf(args)
    if args.child == "trl":
        return child_trl(args)

    common.ensure_bench_venv(PIP_STEPS, REQUIREMENTS, force_setup=args.setup)

    from rlhf.models import DEFAULT_MODEL, load_tokenizer, resolve_model_dir

    sides = common.parse_sides(args.sides, ("rlhf", "trl"))
    versions = common.package_versions()
    if not versions["transformers"].startswith("5."):
        raise SystemExit(f"TRL {TRL_VERSION} needs transformers v5; the bench venv has {versions['transformers']}")

    model_dir = resolve_model_dir(DEFAULT_MODEL)  # converts the embedded GGUF once, then cached
    tokenizer = load_tokenizer(model_dir)
    rows, lengths = make_rows(tokenizer, n_rows=args.rows, max_length=args.max_length, seed=args.seed)
    differ = check_tokenisation_agrees(tokenizer, rows)
    if args.steps * args.batch_size > args.rows:
        print(f"[bench] note: {args.steps} steps x {args.batch_size} rows exceed {args.rows} rows; "
              "both sides start a second epoch", flush=True)

    work = common.make_workdir(args.workdir, "bench-sft-")
    data_path = work / "data.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    order = rlhf_batch_order(len(rows), args.batch_size, args.seed, args.steps)
    order_path = None
    if order is not None:
        order_path = work / "order.json"
        order_path.write_text(json.dumps(order))

    print(f"[bench] model {model_dir}", flush=True)
    print(f"[bench] {len(rows)} rows, tokens/row min {min(lengths)} mean {sum(lengths) / len(lengths):.0f} "
          f"max {max(lengths)}; rows tokenised differently by TRL: {differ}", flush=True)
    print(f"[bench] steps {args.steps} (timed {args.warmup + 1}..{args.steps}), batch {args.batch_size} rows, "
          f"max_length {args.max_length}, packing {args.packing}, threads {args.threads}, repeats {args.repeats}; "
          f"work dir {work}", flush=True)
    print("[bench] versions " + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)

    env = common.child_env(args.threads)
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(args.repeats):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            for attempt in range(args.retries + 1):
                quiet = common.wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
                out = work / f"{side}-{r}-{attempt}"
                res = common.run_child(_child_argv(args, side, model_dir, data_path, order_path, out),
                                       label=f"{side} run {r + 1}", log_path=work / f"{side}-{r}-{attempt}.log", env=env)
                res["load_before"] = quiet
                res["attempt"] = attempt
                if res["other_load"] is None or res["other_load"] <= 0.25 or attempt == args.retries:
                    break
                print(f"[bench] {side} run {r + 1}: other processes used {res['other_load']:.2f} cores; "
                      "running it again", flush=True)
            runs[side].append(res)
            losses = res["loss"]
            print(f"[bench] {side:4s} run {r + 1}/{args.repeats}: {res['tokens_per_s']:7.1f} tok/s "
                  f"({res['timed_tokens']} tokens in {res['timed_s']:.1f} s), peak RSS {res['peak_rss_mib']:.0f} MiB "
                  f"(training {res['peak_rss_train_mib']:.0f}), loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
                  f"child wall {res['wall_s']:.0f} s, other load {common.fmt(res['other_load'], 2)} cores", flush=True)
            if res["other_load"] is not None and res["other_load"] > 0.25:
                print(f"[bench] WARNING: other processes used {res['other_load']:.2f} cores during this run; "
                      "its wall-clock numbers are inflated (tokens per CPU-second is the steadier figure)", flush=True)
            if not all(math.isfinite(x) for x in losses):
                raise SystemExit(f"[bench] {side} produced a non-finite loss: {losses}")

    def best_of(rs: list[dict]) -> float:
        # Every run of a side processes the same tokens step by step, so the fastest time seen for
        # each step, summed, is the figure least disturbed by other activity on the machine.
        steps = [list(col) for col in zip(*(x["step_time_s"] for x in rs))][args.warmup:]
        return rs[0]["timed_tokens"] / sum(min(col) for col in steps)

    summary = {}
    for side, rs in runs.items():
        summary[side] = {
            "tokens_per_s_best_steps": best_of(rs),
            "tokens_per_s": common.median(x["tokens_per_s"] for x in rs),
            "tokens_per_s_range": common.spread(x["tokens_per_s"] for x in rs),
            "tokens_per_cpu_s": common.median(x["tokens_per_cpu_s"] for x in rs),
            "other_load_max": max((x["other_load"] or 0.0) for x in rs),
            "peak_rss_mib": common.median(x["peak_rss_mib"] for x in rs),
            "peak_rss_train_mib": common.median(x["peak_rss_train_mib"] for x in rs),
            "timed_tokens": rs[0]["timed_tokens"],
            "total_tokens": sum(rs[0]["step_tokens"]),
            "loss_first_last": [rs[0]["loss"][0], rs[0]["loss"][-1]],
        }
    ratio = (summary["rlhf"]["tokens_per_s"] / summary["trl"]["tokens_per_s"]
             if {"rlhf", "trl"} <= set(summary) else None)
    same_tokens = None
    if {"rlhf", "trl"} <= set(summary):
        same_tokens = runs["rlhf"][0]["step_tokens"] == runs["trl"][0]["step_tokens"]
        print(f"[bench] tokens per step identical on both sides: {same_tokens} "
              f"(rlhf {summary['rlhf']['total_tokens']}, trl {summary['trl']['total_tokens']} in all steps; "
              f"loss tokens rlhf {sum(t or 0 for t in runs['rlhf'][0]['loss_tokens'])}, "
              f"trl {sum(runs['trl'][0]['loss_tokens'])})", flush=True)
        best_r, best_t = summary["rlhf"]["tokens_per_s_best_steps"], summary["trl"]["tokens_per_s_best_steps"]
        print(f"[bench] fastest time per step over the repeats, summed (noise floor): rlhf {best_r:.1f} tok/s, "
              f"trl {best_t:.1f} tok/s, ratio {best_r / best_t:.2f}x", flush=True)
        cpu_r, cpu_t = summary["rlhf"]["tokens_per_cpu_s"], summary["trl"]["tokens_per_cpu_s"]
        print(f"[bench] tokens per CPU-second (less load-sensitive): rlhf {common.fmt(cpu_r, 1)}, trl {common.fmt(cpu_t, 1)}, "
              f"ratio {common.fmt(cpu_r / cpu_t, 2)}x", flush=True)
        print(f"[bench] step-1 loss rlhf {runs['rlhf'][0]['loss'][0]:.4f}, trl {runs['trl'][0]['loss'][0]:.4f}",
              flush=True)

    payload = {
        "bench": "sft", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "model_dir", "data", "order", "out")},
        "model": str(model_dir), "versions": versions, "machine": common.machine_info(),
        "data": {"rows": len(rows), "min_tokens": min(lengths), "max_tokens": max(lengths),
                 "mean_tokens": sum(lengths) / len(lengths), "rows_tokenised_differently_by_trl": differ,
                 "same_batches": order is not None, "same_step_tokens": same_tokens},
        "summary": summary, "ratio": ratio, "runs": runs,
    }
    path = common.write_results("sft", payload)
    print(f"[bench] results in {path}", flush=True)

    print(common.summary_line("sft", "tok/s", {k: v["tokens_per_s"] for k, v in summary.items()},
                              {k: v["peak_rss_mib"] for k, v in summary.items()}, ratio, nd=0), flush=True)


if __name__ == "__main__":
    main()
