"""GRPO step time and memory: rlhf `grpo` against TRL 1.16 `GRPOTrainer` (no vLLM), side by side.

Same model (the embedded SmolLM2-135M-Instruct, converted once to safetensors), the same chat
prompts in the same steps, 8 prompts x 4 completions x at most 48 new tokens per optimiser step,
one optimisation pass per batch of rollouts (TRL `num_iterations=1`, so neither side spends a
forward on old log-probs), fp32 on CPU, gradient checkpointing off, the same number of torch
threads. Held equal as well: beta 0.04 with the KL as k3 in the loss (both load a frozen reference
copy of the model and run it on every batch), sampling at temperature 1 with top-p 1 and no
top-k, group-std reward scaling, token-mean loss aggregation ("dapo" on both, `--loss` changes
it), clipping epsilon 0.2, AdamW (lr 1e-6, betas 0.9/0.999, eps 1e-8, no weight decay, linear
decay, clip-norm 1.0), one cheap pure-Python reward function, no eval, no checkpoints, no
completion logging.

Per step, each side samples, scores, runs the reference, and updates. Completions that end at EOS
before 48 tokens make a step cheaper, and the two sides draw different random samples, so the
bench prints the mean completion length each side generated; the prompts ask for long essays so
that nearly every completion runs to the 48-token limit on both sides.

Timing: `--warmup` steps (default 1), then `--timed-steps` steps (default 4); s/step is the wall
time from the end of the last warm-up step to the end of the last step, over the timed steps
(rlhf: a `grpo(callbacks=...)` hook; TRL: `TrainerCallback.on_step_end`). Each step's split
(generate / score / reference / update) comes from rlhf's metrics.jsonl and from timers around
TRL's own methods. Each (side, repeat) runs in its own child process, one at a time, alternating
the order; the parent prints medians over `--repeats` (default 3). The LAST line is the summary:

    grpo: rlhf 12.3 s/step, trl 25.1 s/step, ratio 2.04x | peak RSS rlhf 1500 MiB, trl 2900 MiB

(ratio = TRL's s/step over rlhf's: above 1, rlhf is faster.) Run from the repository root:

    python bench/grpo.py            # creates/reuses .venv-bench, re-executes itself there
    python bench/grpo.py --quick    # smoke test: 1 warm-up + 1 timed step, one repeat
    python bench/grpo.py --setup    # (re)install the bench venv, then run

Results (every step of every run) go to bench/results/grpo.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

TRL_VERSION, PIP_STEPS, REQUIREMENTS = common.TRL_VERSION, common.TRL_PIP_STEPS, common.TRL_REQUIREMENTS
SIDES = ("rlhf", "trl")
PHASES = ("generate", "score", "reference", "update")

# ----------------------------------------------------------------------------- prompts and reward

TOPICS = (
    "the history of printing", "how bridges are built", "volcanoes", "honey bees", "the moon", "tea",
    "bicycles", "ocean tides", "mechanical clocks", "glass making", "steam trains", "rain forests",
    "deserts", "the human heart", "baking bread", "paper making", "electricity", "lighthouses",
    "coffee", "chess", "Roman roads", "windmills", "the telescope", "coral reefs", "map making",
    "cotton", "salt", "the magnetic compass", "glaciers", "whales", "ancient Egypt", "weather forecasts",
    "the alphabet", "public libraries", "sailing ships", "rice farming", "the postal service", "bats",
    "thunderstorms", "musical instruments", "the water cycle", "photography", "silk", "the periodic table",
    "canals", "ants", "the first airplanes", "cheese making",
)
TEMPLATES = (
    "Write a long, detailed essay about {topic}. Cover its history, how it works today and why it "
    "matters, with many concrete examples. Use at least ten paragraphs.",
    "Explain {topic} to a curious student in great detail. Write at least 800 words, with facts, "
    "dates, names and step-by-step explanations.",
    "Give a thorough, book-length introduction to {topic}: its origins, the important ideas, famous "
    "examples and open questions. Be as detailed as you can.",
)


def make_prompt_rows(n: int) -> list[dict]:
    """n conversational prompt rows {"prompt": [{"role": "user", "content": ...}]}, all asking for a
    long answer, so completions tend to run to the token limit."""
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        template = TEMPLATES[(i + i // len(TOPICS)) % len(TEMPLATES)]
        rows.append({"prompt": [{"role": "user", "content": template.format(topic=topic)}]})
    return rows


def _completion_text(completion) -> str:
    # rlhf hands a string; TRL, for conversational prompts, a list of assistant messages
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion)


def vowel_share(prompts, completions, **columns) -> list[float]:
    """Reward: the share of the completion's letters that are vowels (pure Python, microseconds).

    Only timing matters here; any cheap score that varies within a group keeps the advantages
    non-zero, so the update does real work on both sides."""
    out = []
    for completion in completions:
        letters = [c for c in _completion_text(completion).lower() if c.isalpha()]
        out.append(sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0)
    return out


# ----------------------------------------------------------------------------- children


def _rows(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def child_rlhf(args) -> None:

    import torch
    torch.set_num_threads(args.threads)
    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.recipes.grpo import GRPOConfig, grpo

    rows = _rows(args.data)  # rlhf's loop picks each step's prompts itself (DataOrder)
    tokenizer = load_tokenizer(args.model_dir)
    model = load_causal_lm(args.model_dir, dtype=torch.float32)
    ref_model = load_causal_lm(args.model_dir, dtype=torch.float32)
    rss_loaded = common.peak_rss_mib()

    want = dict(model=args.model_dir, output_dir=str(Path(args.out) / "run"), batch_size=args.batch_size, grad_accum=1,
                max_steps=args.warmup + args.timed_steps, lr=args.lr, lr_scheduler="linear", warmup_ratio=0.0,
                weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8, max_grad_norm=1.0,
                beta=args.beta, kl_penalty="loss", num_generations=args.num_generations,
                max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, estimator="grpo",
                scale_rewards=True, loss_aggregation=args.loss, clip_range=0.2, clip_range_high=None,
                gradient_checkpointing=False, dtype="float32", threads=args.threads, seed=args.seed, save_every=0,
                progress=False, report_to="none", log_every=10**9)
    cfg, ignored = common.config_with_known_fields(GRPOConfig, want)

    clock = common.StepClock()
    result = grpo(cfg, train_data=rows, model=model, tokenizer=tokenizer, ref_model=ref_model, reward=vowel_share,
                  callbacks=[clock])
    metrics = [json.loads(line) for line in Path(result.metrics_path).read_text().splitlines() if line.strip()]
    steps = []
    for i, m in enumerate(metrics):
        steps.append({
            "step": m["step"], "wall_s": clock.wall(i), "loop_time_s": m.get("time_s"),
            "completion_length": m.get("completion_length"), "truncated": m.get("truncated"),
            "reward": m.get("reward"), "loss": m.get("loss"),
            **{p: m.get(f"time/{p}") for p in ("generate", "score", "reference")},
            "update_loop": m.get("time/update"),  # the loop's own update timer, without per-step bookkeeping
        })
        prep = [steps[-1][p] for p in ("generate", "score", "reference")]
        # as on the TRL side: everything in the step but the rollout preparation
        steps[-1]["update"] = steps[-1]["wall_s"] - sum(prep) if None not in prep else None
    common.emit_result({
        "side": "rlhf", **clock.window(args.warmup), "steps": steps,
        "first_step_s": clock.wall(0), "phases_from": "rlhf metrics.jsonl time/* keys",
        "peak_rss_loaded_mib": rss_loaded, "peak_rss_train_mib": clock.peak_rss_mib, "peak_rss_mib": common.peak_rss_mib(),
        "threads": torch.get_num_threads(), "config_ignored": ignored,
    })


def child_trl(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = _rows(args.data)
    order = json.loads(Path(args.order).read_text())
    dataset = Dataset.from_list([rows[i] for i in order])  # rlhf's per-step prompts, read sequentially below

    g = args.num_generations
    current = {p: 0.0 for p in ("generate", "score", "ref_forward", "prepare")}
    per_step: list[dict] = []
    prompt_ids_seen: list[list[int]] = []

    def add(key: str, since: float) -> None:
        current[key] += time.perf_counter() - since

    class TimedGRPOTrainer(GRPOTrainer):
        # Measurement only: each override times the parent method and calls straight through.
        def _generate_and_score_completions(self, inputs):
            t = time.perf_counter()
            try:
                return super()._generate_and_score_completions(inputs)
            finally:
                add("prepare", t)

        def _generate_single_turn(self, prompt_ids, *a, **kw):
            t = time.perf_counter()
            out = super()._generate_single_turn(prompt_ids, *a, **kw)
            add("generate", t)
            completion_ids = out[0]
            current["lengths"] = [len(c) for c in completion_ids]
            current["truncated"] = sum(1 for c in completion_ids if not c or c[-1] not in self.eos_token_ids)
            prompt_ids_seen.extend(list(p) for p in prompt_ids[::g])  # rows are prompt-major, G repeats each
            return out

        def _calculate_rewards(self, *a, **kw):
            t = time.perf_counter()
            try:
                return super()._calculate_rewards(*a, **kw)
            finally:
                add("score", t)

        def _get_per_token_logps_and_entropies(self, model, *a, **kw):
            t = time.perf_counter()
            try:
                return super()._get_per_token_logps_and_entropies(model, *a, **kw)
            finally:
                if model is self.ref_model:
                    add("ref_forward", t)

    clock = common.StepClock()

    class Timer(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            clock.start()

        def on_step_end(self, a, state, control, **kw):
            clock()
            per_step.append(dict(current))
            current.update({p: 0.0 for p in ("generate", "score", "ref_forward", "prepare")})

    n_steps = args.warmup + args.timed_steps
    cfg = GRPOConfig(
        output_dir=str(Path(args.out) / "run"),
        # per_device_train_batch_size counts completions: 8 prompts x 4 = 32, one generation per
        # optimiser step (steps_per_generation = gradient_accumulation_steps = 1)
        per_device_train_batch_size=args.batch_size * g, gradient_accumulation_steps=1, num_generations=g,
        max_completion_length=args.max_new_tokens, max_steps=n_steps, num_iterations=1,
        learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch", max_grad_norm=1.0,
        seed=args.seed, data_seed=args.seed, beta=args.beta, epsilon=0.2, loss_type=args.loss, scale_rewards="group",
        temperature=1.0, top_p=1.0, top_k=0, mask_truncated_completions=False, shuffle_dataset=False,
        bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
        save_strategy="no", eval_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True,
        log_completions=False, dataloader_num_workers=0, dataloader_pin_memory=False,
    )
    if (cfg.generation_batch_size, cfg.steps_per_generation) != (args.batch_size * g, 1):
        raise SystemExit(f"TRL would generate {cfg.generation_batch_size} completions every {cfg.steps_per_generation} "
                         f"steps; expected {args.batch_size * g} every step")
    t_init = time.perf_counter()
    trainer = TimedGRPOTrainer(model=args.model_dir, reward_funcs=[vowel_share], args=cfg, train_dataset=dataset,
                               callbacks=[Timer()])
    init_s = time.perf_counter() - t_init
    rss_loaded = common.peak_rss_mib()

    trainer.train()
    rss_after_train = common.peak_rss_mib()
    trainer.save_model(str(Path(args.out) / "final"))  # rlhf's grpo() ends by writing final/; same here

    # Same prompt ids as rlhf, step by step? (rlhf renders the chat template itself.)
    ours = json.loads(Path(args.ids).read_text())
    differ = sum(1 for a, b in zip(ours, prompt_ids_seen) if a != b) + abs(len(ours) - len(prompt_ids_seen))
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    steps = []
    for i, ph in enumerate(per_step):
        wall = clock.wall(i)
        lengths = ph.get("lengths") or []
        log = logs[i] if i < len(logs) else {}
        steps.append({
            "step": i + 1, "wall_s": wall, "completion_length": sum(lengths) / len(lengths) if lengths else None,
            "truncated": ph.get("truncated", 0) / len(lengths) if lengths else None,
            "reward": log.get("reward"), "loss": log.get("loss"),
            "generate": ph["generate"], "score": ph["score"],
            # as rlhf's time/reference: the rest of the rollout preparation (reference forward,
            # advantages, padding, TRL's per-batch metrics)
            "reference": ph["prepare"] - ph["generate"] - ph["score"], "ref_forward": ph["ref_forward"],
            "update": wall - ph["prepare"],  # loss forward + backward + optimiser + Trainer bookkeeping
        })
    common.emit_result({
        "side": "trl", **clock.window(args.warmup), "steps": steps,
        "first_step_s": clock.wall(0), "init_s": init_s, "phases_from": "timers around GRPOTrainer methods",
        "prompts_tokenised_differently": differ, "prompts_seen": len(prompt_ids_seen),
        "peak_rss_loaded_mib": rss_loaded, "peak_rss_train_mib": clock.peak_rss_mib,
        "peak_rss_after_train_mib": rss_after_train, "peak_rss_mib": common.peak_rss_mib(),
        "threads": torch.get_num_threads(),
        "generation_batch_size": cfg.generation_batch_size, "steps_per_generation": cfg.steps_per_generation,
    })


# ----------------------------------------------------------------------------- parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warmup", type=int, default=1, help="leading steps left out of the timing (default 1, at least 1)")
    p.add_argument("--timed-steps", type=int, default=4, help="steps timed after the warm-up (default 4)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per optimiser step, both sides (default 8)")
    p.add_argument("--num-generations", type=int, default=4, help="completions per prompt (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="completion token limit (default 48)")
    p.add_argument("--lr", type=float, default=1e-6, help="AdamW peak learning rate, linear decay (default 1e-6)")
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient, k3 in the loss (default 0.04)")
    p.add_argument("--loss", choices=("dapo", "grpo", "dr_grpo"), default="dapo",
                   help="loss aggregation, both sides: TRL loss_type = rlhf loss_aggregation (default dapo)")
    common.add_harness_args(p, sides=SIDES, retries=1, quick_help="smoke test: 1 warm-up + 1 timed step, 1 repeat")
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--order", help=argparse.SUPPRESS)
    p.add_argument("--ids", help=argparse.SUPPRESS)
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
    if args.child == "trl":
        return child_trl(args)

    common.ensure_bench_venv(PIP_STEPS, REQUIREMENTS, force_setup=args.setup)

    from rlhf.data.io import load_rows
    from rlhf.data.prompts import tokenize_prompts
    from rlhf.models import DEFAULT_MODEL, load_tokenizer, resolve_model_dir
    from rlhf.train.loop import DataOrder

    sides = common.parse_sides(args.sides, SIDES)
    versions = common.package_versions()
    n_steps = args.warmup + args.timed_steps

    model_dir = resolve_model_dir(DEFAULT_MODEL)  # converts the embedded GGUF once, then cached
    tokenizer = load_tokenizer(model_dir)
    rows = make_prompt_rows(n_steps * args.batch_size)  # one epoch: no prompt is seen twice
    examples, _ = tokenize_prompts(load_rows(rows), tokenizer, max_length=512)
    order = [i for step in range(n_steps) for i in DataOrder(len(rows), args.batch_size, args.seed).batch(step)[1]]
    prompt_lens = [len(e["prompt_ids"]) for e in examples]

    work = common.make_workdir(args.workdir, "bench-grpo-")
    data_path, order_path, ids_path = work / "prompts.jsonl", work / "order.json", work / "ids.json"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    order_path.write_text(json.dumps(order))
    ids_path.write_text(json.dumps([examples[i]["prompt_ids"] for i in order]))

    per_step = args.batch_size * args.num_generations
    print(f"[bench] model {model_dir}", flush=True)
    print(f"[bench] {len(rows)} chat prompts ({min(prompt_lens)}..{max(prompt_lens)} tokens with the chat template), "
          f"{args.batch_size} prompts x {args.num_generations} completions x <= {args.max_new_tokens} new tokens "
          f"= {per_step} completions per step; {args.warmup} warm-up + {args.timed_steps} timed steps", flush=True)
    print(f"[bench] lr {args.lr}, beta {args.beta} (k3 in the loss), loss aggregation {args.loss}, scale rewards by "
          f"group std, temperature 1, threads {args.threads}, repeats {args.repeats}, sides {','.join(sides)}; "
          f"work dir {work}", flush=True)
    print("[bench] versions " + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)

    def make_argv(side: str, r: int, out: Path) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--child", side, "--model-dir", str(model_dir),
                "--data", str(data_path), "--order", str(order_path), "--ids", str(ids_path), "--out", str(out),
                "--warmup", str(args.warmup), "--timed-steps", str(args.timed_steps),
                "--batch-size", str(args.batch_size), "--num-generations", str(args.num_generations),
                "--max-new-tokens", str(args.max_new_tokens), "--lr", repr(args.lr), "--beta", repr(args.beta),
                "--loss", args.loss, "--threads", str(args.threads), "--seed", str(args.seed)]

    def timed(res: dict) -> list[dict]:
        return res["steps"][args.warmup:]

    def describe(side: str, r: int, res: dict) -> str:
        if len(res["steps"]) != n_steps:
            raise SystemExit(f"[bench] {side} ran {len(res['steps'])} steps, expected {n_steps}")
        losses = [s["loss"] for s in res["steps"]]
        if any(x is None or not math.isfinite(x) for x in losses):
            raise SystemExit(f"[bench] {side} produced a missing or non-finite loss: {losses}")
        split = " ".join(f"{p} {common.fmt(_mean(s[p] for s in timed(res)), 1)}" for p in PHASES)
        return (f"[bench] {side:4s} run {r + 1}/{args.repeats}: {res['s_per_step']:.2f} s/step ({split}), "
                f"completion tokens {common.fmt(_mean(s['completion_length'] for s in timed(res)), 1)} mean, "
                f"{res['cpu_s_per_step']:.1f} CPU-s/step, peak RSS {res['peak_rss_mib']:.0f} MiB (training "
                f"{res['peak_rss_train_mib']:.0f}), child wall {res['wall_s']:.0f} s, "
                f"other load {common.fmt(res['other_load'], 2)} cores")

    runs = common.run_alternating(sides, args.repeats, make_argv, work=work, env=common.child_env(args.threads),
                                  wait_quiet_s=args.wait_quiet, retries=args.retries, describe=describe)
    if not args.workdir:  # final/ weights (~0.5 GB a run) are not needed after the run
        for d in work.glob("*/final"):
            shutil.rmtree(d, ignore_errors=True)
        for d in work.glob("*/run/final"):
            shutil.rmtree(d, ignore_errors=True)

    summary = {}
    for side, rs in runs.items():
        steps = [s for res in rs for s in timed(res)]
        summary[side] = {
            "s_per_step": common.median(x["s_per_step"] for x in rs),
            "s_per_step_range": common.spread(x["s_per_step"] for x in rs),
            "cpu_s_per_step": common.median(x["cpu_s_per_step"] for x in rs),
            **{p: common.median(_mean(s[p] for s in timed(res)) for res in rs) for p in PHASES},
            "completion_length": _mean(s["completion_length"] for s in steps),
            "completion_length_per_step": [[s["completion_length"] for s in res["steps"]] for res in rs],
            "truncated": _mean(s["truncated"] for s in steps),
            "other_load_max": max((x["other_load"] or 0.0) for x in rs),
            "peak_rss_mib": common.median(x["peak_rss_mib"] for x in rs),
            "peak_rss_train_mib": common.median(x["peak_rss_train_mib"] for x in rs),
        }
        s = summary[side]
        s["s_per_1k_completion_tokens"] = (1000 * s["s_per_step"] / (s["completion_length"] * per_step)
                                           if s["completion_length"] else None)

    checks = {}
    if "trl" in runs:
        res = runs["trl"][0]
        checks["prompts_tokenised_differently"] = res["prompts_tokenised_differently"]
        print(f"[bench] prompts TRL tokenised differently from rlhf (step by step, {res['prompts_seen']} seen): "
              f"{res['prompts_tokenised_differently']}", flush=True)
    for side in sides:
        s = summary[side]
        split = " + ".join(f"{p} {common.fmt(s[p], 2)}" for p in PHASES)
        print(f"[bench] {side}: {s['s_per_step']:.2f} s/step (runs {s['s_per_step_range'][0]:.2f}..{s['s_per_step_range'][1]:.2f}; "
              f"{split} s); mean completion {common.fmt(s['completion_length'], 1)} tokens of {args.max_new_tokens} "
              f"({common.fmt(100 * (s['truncated'] or 0), 0)}% hit the limit), "
              f"{common.fmt(s['s_per_1k_completion_tokens'], 2)} s per 1000 completion tokens; "
              f"{s['cpu_s_per_step']:.1f} CPU-s/step", flush=True)

    ratio = summary["trl"]["s_per_step"] / summary["rlhf"]["s_per_step"] if {"rlhf", "trl"} <= set(summary) else None
    payload = {
        "bench": "grpo", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "model_dir", "data", "order", "ids", "out")},
        "model": str(model_dir), "versions": versions, "machine": common.machine_info(),
        "data": {"prompts": len(rows), "min_prompt_tokens": min(prompt_lens), "max_prompt_tokens": max(prompt_lens),
                 "completions_per_step": per_step},
        "window": {"rlhf": "end of step `warmup` -> end of the last step (grpo(callbacks=...))",
                   "trl": "end of step `warmup` -> end of the last step (TrainerCallback.on_step_end)"},
        "phases": {"generate": "sampling the completions", "score": "the reward function",
                   "reference": "the rest of the rollout preparation: reference forward, KL / advantages, batching",
                   "update": "the rest of the step: loss forward + backward + optimiser + bookkeeping "
                             "(step wall - the three above)"},
        "checks": checks, "summary": summary, "ratio_trl_over_rlhf": ratio, "runs": runs,
    }
    path = common.write_results("grpo", payload)
    print(f"[bench] results in {path}", flush=True)
    print(common.summary_line("grpo", "s/step", {k: v["s_per_step"] for k, v in summary.items()},
                              {k: v["peak_rss_mib"] for k, v in summary.items()}, ratio, nd=1), flush=True)


if __name__ == "__main__":
    main()
