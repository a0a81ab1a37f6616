"""DPO throughput and memory: rlhf `dpo` against TRL 1.16 `DPOTrainer`, side by side.

Same model (the embedded SmolLM2-135M-Instruct, converted once to safetensors), the same synthetic
preference pairs in the same order, 8 pairs per optimiser step, one epoch, the same max length, fp32
on CPU, AdamW with the same hyper-parameters and linear decay, sigmoid (DPO) loss with the same beta,
gradient checkpointing off, no eval, no checkpoints, data loading in the main process, the same
number of torch threads. Each library computes the reference log-probs its own default way:

- rlhf (`precompute_ref=True`, its default): one no-grad pass of the policy itself over the whole
  data set before the first update (no second copy of the weights), written to a cache that each
  run starts cold (a fresh `RLHF_CACHE`), so the pass is always paid;
- TRL (`precompute_ref_log_probs=False`, its default): a second, frozen copy of the model, run on
  every batch inside every training step. `--sides rlhf,trl,trl-precompute` adds a TRL run with
  `precompute_ref_log_probs=True` (that pass runs in `DPOTrainer.__init__`; the bench times it
  and adds it to the window).

What is timed, per child ("the window"), is one epoch including the reference computation:
- rlhf: from just before the `dpo(...)` call (model and tokenizer already loaded and passed in)
  to the end of the last optimiser step: tokenising the pairs (milliseconds), the reference pass
  (weights fingerprint, no-grad forwards, cache write), building the optimiser, every step;
- TRL: from just before `trainer.train()` (the trainer, i.e. model + reference-model loading and
  dataset tokenisation, already built) to the end of the last step: accelerate setup, building
  the optimiser, every step with its on-the-fly reference forward; plus, for trl-precompute, the
  precompute pass that ran in the constructor.
Model loading, process start-up and the final save are outside the window on both sides.
pairs/s = pairs in the epoch / window seconds.

Each (side, repeat) runs in its own child process, one at a time, alternating the order. The
parent prints medians; the LAST line is the summary:

    dpo: rlhf 1.23 pairs/s, trl 0.61 pairs/s, ratio 2.02x | peak RSS rlhf 1500 MiB, trl 2900 MiB

Run from the repository root:

    python bench/dpo.py            # creates/reuses .venv-bench, re-executes itself there
    python bench/dpo.py --quick    # smoke test: 16 pairs (2 steps), one repeat
    python bench/dpo.py --setup    # (re)install the bench venv, then run

Results (every step of every run) go to bench/results/dpo.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

TRL_VERSION, PIP_STEPS, REQUIREMENTS = common.TRL_VERSION, common.TRL_PIP_STEPS, common.TRL_REQUIREMENTS
SIDES = ("rlhf", "trl", "trl-precompute")


# ----------------------------------------------------------------------------- children


def _window(t0: float, c0: float, step_ends: list[float], cpu_ends: list[float], pairs: int, extra_s: float = 0.0,
            extra_cpu_s: float = 0.0) -> dict:
    elapsed = step_ends[-1] - t0 + extra_s
    cpu = cpu_ends[-1] - c0 + extra_cpu_s
    return {"window_s": elapsed, "window_cpu_s": cpu, "pairs": pairs, "pairs_per_s": pairs / elapsed,
            "pairs_per_cpu_s": pairs / cpu if cpu > 0 else float("nan")}


def child_rlhf(args) -> None:
    import dataclasses

    # A fresh cache root: the reference pass is computed, never read from an earlier run's cache.
    os.environ["RLHF_CACHE"] = str(Path(args.out) / "rlhf-cache")
    import torch
    torch.set_num_threads(args.threads)
    import rlhf.models.reference as reference
    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.recipes.dpo import DPOConfig, dpo

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    tokenizer = load_tokenizer(args.model_dir)
    model = load_causal_lm(args.model_dir, dtype=torch.float32)
    rss_loaded = common.peak_rss_mib()

    want = dict(model=args.model_dir, output_dir=str(Path(args.out) / "run"), batch_size=args.batch_size, grad_accum=1,
                epochs=1, max_steps=-1, lr=args.lr, lr_scheduler="linear", warmup_ratio=0.0, weight_decay=0.0,
                adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8, max_grad_norm=1.0, beta=args.beta,
                loss_type="sigmoid", precompute_ref=True, max_length=args.max_length, truncation="error",
                packing=True, gradient_checkpointing=False, dtype="float32", threads=args.threads, seed=args.seed,
                save_every=0, progress=False, report_to="none", log_every=10**9)
    fields = {f.name for f in dataclasses.fields(DPOConfig)}
    cfg = DPOConfig(**{k: v for k, v in want.items() if k in fields})
    ignored = sorted(set(want) - fields)

    # Measurement only: when the reference pass starts and ends (it calls straight through).
    ref_span: list[float] = []
    attach = reference.ReferenceLogps.attach

    def timed_attach(self, *a, **kw):
        ref_span.append(time.perf_counter())
        try:
            return attach(self, *a, **kw)
        finally:
            ref_span.append(time.perf_counter())

    reference.ReferenceLogps.attach = timed_attach

    step_ends: list[float] = []
    cpu_ends: list[float] = []
    rss_train = [0.0]

    def on_step(step: int, metrics: dict) -> None:
        step_ends.append(time.perf_counter())
        cpu_ends.append(time.process_time())
        rss_train[0] = common.peak_rss_mib()

    t0, c0 = time.perf_counter(), time.process_time()
    result = dpo(cfg, train_data=rows, model=model, tokenizer=tokenizer, callbacks=[on_step])
    metrics = [json.loads(line) for line in Path(result.metrics_path).read_text().splitlines() if line.strip()]
    pairs = sum(int(m["loss_units"]) for m in metrics)
    loop_start = step_ends[0] - metrics[0]["time_s"]
    common.emit_result({
        "side": "rlhf", **_window(t0, c0, step_ends, cpu_ends, pairs),
        "ref_s": (ref_span[1] - ref_span[0]) if len(ref_span) >= 2 else None,
        "before_ref_s": (ref_span[0] - t0) if ref_span else None,
        "loop_s": step_ends[-1] - loop_start,
        "steps": len(metrics), "step_pairs": [int(m["loss_units"]) for m in metrics],
        "step_tokens": [int(m["tokens"]) for m in metrics], "loss": [m["loss"] for m in metrics],
        "step_time_s": [m["time_s"] for m in metrics],
        "peak_rss_loaded_mib": rss_loaded, "peak_rss_train_mib": rss_train[0], "peak_rss_mib": common.peak_rss_mib(),
        "threads": torch.get_num_threads(), "config_ignored": ignored,
    })


def child_trl(args, precompute: bool) -> None:
    import torch
    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    order = json.loads(Path(args.order).read_text())
    rows = [rows[i] for i in order]  # rlhf's per-step order, read sequentially below
    dataset = Dataset.from_list(rows)

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
    precompute_span = [0.0, 0.0, 0.0, 0.0]  # wall start, wall end, cpu start, cpu end

    class CountingDPOTrainer(DPOTrainer):
        # Counts what each step processes, the way rlhf counts it: non-pad tokens and pairs.
        def training_step(self, model, inputs, num_items_in_batch=None):
            step_tokens.append(int(inputs["attention_mask"].sum()))
            step_pairs.append(int(inputs["input_ids"].shape[0]) // 2)
            step_width.append(int(inputs["input_ids"].shape[1]))
            return super().training_step(model, inputs, num_items_in_batch)

        def _precompute_ref_logps(self, *a, **kw):  # measurement only; runs inside __init__
            precompute_span[0], precompute_span[2] = time.perf_counter(), time.process_time()
            try:
                return super()._precompute_ref_logps(*a, **kw)
            finally:
                precompute_span[1], precompute_span[3] = time.perf_counter(), time.process_time()

    cfg = DPOConfig(
        output_dir=str(Path(args.out) / "run"),
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1, num_train_epochs=1, max_steps=-1,
        learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch", max_grad_norm=1.0,
        seed=args.seed, data_seed=args.seed, beta=args.beta, loss_type="sigmoid",
        precompute_ref_log_probs=precompute, max_length=args.max_length,
        bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
        train_sampling_strategy="sequential", dataloader_drop_last=False,
        save_strategy="no", eval_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=False,
    )
    t_init = time.perf_counter()
    trainer = CountingDPOTrainer(model=args.model_dir, args=cfg, train_dataset=dataset, callbacks=[Timer()])
    init_s = time.perf_counter() - t_init
    rss_loaded = common.peak_rss_mib()

    # Same ids as rlhf? TRL tokenises prompt and prompt + completion + EOS text itself.
    ours = json.loads(Path(args.ids).read_text())  # in TRL's (sequential) order
    ds = trainer.train_dataset
    theirs = list(zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))
    differ = sum(1 for a, b in zip(ours, theirs) if [list(x) for x in b] != a) + abs(len(ours) - len(theirs))

    # Measurement only: time spent in the on-the-fly reference forwards.
    ref_time = [0.0]
    if trainer.ref_model is not None:
        ref_forward = trainer.ref_model.forward

        def timed_forward(*a, **kw):
            t = time.perf_counter()
            try:
                return ref_forward(*a, **kw)
            finally:
                ref_time[0] += time.perf_counter() - t

        trainer.ref_model.forward = timed_forward

    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    rss_after_train = common.peak_rss_mib()
    trainer.save_model(str(Path(args.out) / "final"))  # rlhf's dpo() ends by writing final/; same here
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    extra = (precompute_span[1] - precompute_span[0]) if precompute else 0.0
    extra_cpu = (precompute_span[3] - precompute_span[2]) if precompute else 0.0
    common.emit_result({
        "side": "trl-precompute" if precompute else "trl",
        **_window(t0, c0, step_ends, cpu_ends, sum(step_pairs), extra, extra_cpu),
        "ref_s": ref_time[0] if trainer.ref_model is not None else extra,
        "ref_on_the_fly": trainer.ref_model is not None,
        "train_setup_s": begin[0] - t0, "loop_s": step_ends[-1] - begin[0], "init_s": init_s,
        "steps": len(step_ends), "step_pairs": step_pairs, "step_tokens": step_tokens, "step_width": step_width,
        "loss": losses, "step_time_s": [b - a for a, b in zip([begin[0]] + step_ends, step_ends)],
        "rows_tokenised_differently": differ, "train_rows": len(ds),
        "peak_rss_loaded_mib": rss_loaded, "peak_rss_train_mib": rss_train[0],
        "peak_rss_after_train_mib": rss_after_train, "peak_rss_mib": common.peak_rss_mib(),
        "threads": torch.get_num_threads(), "padding_free": trainer.padding_free,
    })


# ----------------------------------------------------------------------------- parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=64, help="synthetic pairs, one epoch over them (default 64: 8 steps)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per optimiser step, both sides (default 8)")
    p.add_argument("--max-length", type=int, default=256, help="max tokens per sequence, both sides (default 256)")
    p.add_argument("--lr", type=float, default=5e-7, help="AdamW peak learning rate, linear decay (default 5e-7)")
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta (default 0.1)")
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
    if args.child in ("trl", "trl-precompute"):
        return child_trl(args, precompute=args.child == "trl-precompute")

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
    examples, stats = tokenize_pairs(load_rows(rows), tokenizer, max_length=args.max_length, truncation="error")
    order = [i for step in range(args.pairs // args.batch_size)
             for i in DataOrder(len(rows), args.batch_size, args.seed).batch(step)[1]]
    seq_lens = [len(e["prompt_ids"]) + len(e[k]) for e in examples for k in ("chosen_ids", "rejected_ids")]
    total_tokens = sum(seq_lens)

    work = common.make_workdir(args.workdir, "bench-dpo-")
    data_path, order_path, ids_path = work / "pairs.jsonl", work / "order.json", work / "ids.json"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    order_path.write_text(json.dumps(order))
    ids_path.write_text(json.dumps([[examples[i]["prompt_ids"], examples[i]["chosen_ids"], examples[i]["rejected_ids"]]
                                    for i in order]))

    print(f"[bench] model {model_dir}", flush=True)
    print(f"[bench] {len(rows)} pairs ({stats}); prompt tokens {min(len(e['prompt_ids']) for e in examples)}.."
          f"{max(len(e['prompt_ids']) for e in examples)}, completion tokens (with EOS) "
          f"{min(min(len(e['chosen_ids']), len(e['rejected_ids'])) for e in examples)}.."
          f"{max(max(len(e['chosen_ids']), len(e['rejected_ids'])) for e in examples)}; "
          f"{total_tokens} tokens in all {2 * len(rows)} sequences", flush=True)
    print(f"[bench] one epoch = {args.pairs // args.batch_size} steps of {args.batch_size} pairs, max_length "
          f"{args.max_length}, lr {args.lr}, beta {args.beta}, threads {args.threads}, repeats {args.repeats}, "
          f"sides {','.join(sides)}; work dir {work}", flush=True)
    print("[bench] versions " + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)

    def make_argv(side: str, r: int, out: Path) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--child", side, "--model-dir", str(model_dir),
                "--data", str(data_path), "--order", str(order_path), "--ids", str(ids_path), "--out", str(out),
                "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--lr", repr(args.lr),
                "--beta", repr(args.beta), "--threads", str(args.threads), "--seed", str(args.seed)]

    def describe(side: str, r: int, res: dict) -> str:
        losses = res["loss"]
        if not losses or not all(math.isfinite(x) for x in losses):
            raise SystemExit(f"[bench] {side} produced no or a non-finite loss: {losses}")
        if res["pairs"] != args.pairs:
            raise SystemExit(f"[bench] {side} trained on {res['pairs']} pairs, expected {args.pairs}")
        ref = f"reference {common.fmt(res['ref_s'], 1)} s" + (" (on the fly)" if res.get("ref_on_the_fly") else "")
        return (f"[bench] {side:14s} run {r + 1}/{args.repeats}: {res['pairs_per_s']:.3f} pairs/s ({res['pairs']} pairs "
                f"in {res['window_s']:.1f} s; {ref}), {res['pairs_per_cpu_s']:.3f} pairs/CPU-s, peak RSS "
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
            "ref_s": common.median(x["ref_s"] for x in rs),
            "loop_s": common.median(x["loop_s"] for x in rs),
            "other_load_max": max((x["other_load"] or 0.0) for x in rs),
            "peak_rss_mib": common.median(x["peak_rss_mib"] for x in rs),
            "peak_rss_train_mib": common.median(x["peak_rss_train_mib"] for x in rs),
            "tokens": sum(rs[0]["step_tokens"]),
            "loss_first_last": [rs[0]["loss"][0], rs[0]["loss"][-1]],
        }
    checks = {}
    for side in [s for s in sides if s != "rlhf"]:
        res = runs[side][0]
        checks[side] = {"rows_tokenised_differently": res["rows_tokenised_differently"],
                        "same_step_tokens": runs["rlhf"][0]["step_tokens"] == res["step_tokens"] if "rlhf" in runs else None,
                        "padded_positions": sum(w * 2 * p for w, p in zip(res["step_width"], res["step_pairs"]))}
        print(f"[bench] {side}: rows TRL tokenised differently from rlhf: {res['rows_tokenised_differently']}; "
              f"tokens rlhf {total_tokens}, {side} {summary[side]['tokens']} (per step identical: "
              f"{checks[side]['same_step_tokens']}); {side} pads to {checks[side]['padded_positions']} positions "
              f"({checks[side]['padded_positions'] / max(summary[side]['tokens'], 1):.2f}x the tokens)", flush=True)
    for side in sides:
        s = summary[side]
        print(f"[bench] {side}: window {s['window_s']:.1f} s = reference {common.fmt(s['ref_s'], 1)} s "
              f"{'inside the steps' if side == 'trl' else 'before the steps'}, steps {s['loop_s']:.1f} s; "
              f"{s['pairs_per_cpu_s']:.3f} pairs per CPU-second; losses {s['loss_first_last'][0]:.4f} -> "
              f"{s['loss_first_last'][1]:.4f}", flush=True)

    ratio = summary["rlhf"]["pairs_per_s"] / summary["trl"]["pairs_per_s"] if {"rlhf", "trl"} <= set(summary) else None
    payload = {
        "bench": "dpo", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "model_dir", "data", "order", "ids", "out")},
        "model": str(model_dir), "versions": versions, "machine": common.machine_info(),
        "data": {"pairs": len(rows), "tokens": total_tokens, "min_seq_tokens": min(seq_lens),
                 "max_seq_tokens": max(seq_lens), "tokenize_stats": str(stats)},
        "window": {"rlhf": "dpo() call (model + tokenizer preloaded) -> end of last step: tokenise, reference pass, steps",
                   "trl": "trainer.train() -> end of last step (reference on the fly inside each step)",
                   "trl-precompute": "precompute pass in DPOTrainer.__init__ + trainer.train() -> end of last step"},
        "checks": checks, "summary": summary, "ratio": ratio, "runs": runs,
    }
    path = common.write_results("dpo", payload)
    print(f"[bench] results in {path}", flush=True)

    print(common.summary_line("dpo", "pairs/s", {k: v["pairs_per_s"] for k, v in summary.items()},
                              {k: v["peak_rss_mib"] for k, v in summary.items()}, ratio, nd=2), flush=True)


if __name__ == "__main__":
    main()
