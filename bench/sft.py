"""SFT throughput and memory: rlhf `sft` against TRL 1.16 `SFTTrainer`, side by side.

tokens/s over steps warmup+1..N, same rows in the same steps, padding-free on both sides (or
`--no-packing`); the LAST line is the summary (medians over the repeats):

    sft: rlhf 1234 tok/s, trl 987 tok/s, ratio 1.25x | peak RSS rlhf 812 MiB, trl 1010 MiB

`python bench/sft.py [--quick]`; bench/README.md says what is held equal, results/sft.json has every step.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402


def make_rows(tokenizer, *, n_rows: int, max_length: int, seed: int) -> tuple[list[dict], list[int]]:
    """Deterministic prompt/completion rows whose tokenised length (prompt + completion + EOS, as
    both libraries tokenise it) is at most, and close to, a target uniform in 32..min(256,
    max_length), so neither side truncates. Returns the rows and their token lengths."""
    rng = random.Random(seed)
    fill, count = common.text_filler(tokenizer, rng)
    hi = min(256, max_length)
    rows, lengths = [], []
    for i in range(n_rows):
        target = rng.randint(min(32, hi), hi)
        prompt = fill(f"Question {i}:", "?\nAnswer:", int(target * rng.uniform(0.2, 0.5)), True)
        completion = fill("", ".", target - count(prompt, True) - 1, False)  # - 1: the EOS
        rows.append({"prompt": prompt, "completion": completion})
        lengths.append(count(prompt, True) + count(completion, False) + 1)
    return rows, lengths


def tokenised_differently(tokenizer, rows: list[dict]) -> int:
    """Rows TRL tokenises differently from rlhf: TRL encodes prompt + completion + EOS text in one
    go, rlhf encodes prompt and completion apart and appends the EOS id."""
    def ids(text, special=True):
        return tokenizer(text, add_special_tokens=special)["input_ids"]

    return sum(ids(r["prompt"]) + ids(r["completion"], False) + [tokenizer.eos_token_id]
               != ids(r["prompt"] + r["completion"] + tokenizer.eos_token) for r in rows)


def child_rlhf(a) -> None:
    from rlhf.recipes.sft import SFTConfig, sft

    cfg, ignored = common.rlhf_config(SFTConfig, a, batch_size=a.batch_size, max_length=a.max_length, epochs=1,
                                      truncation="error", max_steps=a.steps, packing=a.packing, logging="none")
    clock = common.StepClock()
    metrics = common.read_metrics(sft(cfg, train_data=a.data, callbacks=[clock]))
    common.emit(a, clock.window(a.warmup, [m["tokens"] for m in metrics], "tokens"), loss=[m["loss"] for m in metrics],
                loss_tokens=[m.get("loss_units") for m in metrics], config_ignored=ignored)


def child_trl(a) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    loss_tokens, tokens = [], []

    class CountingSFTTrainer(SFTTrainer):
        # What each step processes, counted as rlhf counts it: non-pad tokens (every token of a
        # padding-free row), and the tokens in the loss.
        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            tokens.append(int(mask.sum()) if mask is not None else inputs["input_ids"].numel())
            loss_tokens.append(int((inputs["labels"][:, 1:] != -100).sum()))
            return super().training_step(model, inputs, num_items_in_batch)

    cfg = common.trl_config(
        SFTConfig, a, per_device_train_batch_size=a.batch_size, max_steps=a.steps, num_train_epochs=1,
        # padding_free without packing refuses max_length; the rows are made no longer than it
        max_length=None if a.packing else a.max_length, packing=False, padding_free=a.packing,
        completion_only_loss=True, train_sampling_strategy="sequential")
    clock = common.StepClock()
    trainer = CountingSFTTrainer(model=a.model_dir, args=cfg, callbacks=[clock.trl_callback()],
                                 train_dataset=Dataset.from_list([a.data[i] for i in a.order]))
    done = common.trl_train(trainer, clock, a.out)
    common.emit(a, clock.window(a.warmup, tokens, "tokens"), **done, loss_tokens=loss_tokens,
                trl_padding_free=trainer.padding_free, trl_completion_only_loss=trainer.completion_only_loss)


def main(argv=None) -> None:
    p = common.parser(__doc__, sides=("rlhf", "trl"), retries=2,
                      quick_help="smoke test: defaults become 4 steps, 1 warm-up, 1 repeat, max length 128, 64 rows")
    p.add_argument("--steps", type=int, default=12, help="optimiser steps per run (default 12)")
    p.add_argument("--warmup", type=int, default=2, help="leading steps left out of the timing (default 2, at least 1)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per optimiser step, both sides (default 8)")
    p.add_argument("--max-length", type=int, default=256,
                   help="max tokens per row; rows are 32..min(256, this) (default 256)")
    p.add_argument("--rows", type=int, default=256, help="synthetic dataset rows (default 256)")
    p.add_argument("--lr", type=float, default=2e-5, help="AdamW peak learning rate, linear decay (default 2e-5)")
    p.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True,
                   help="padding-free rows on both sides (default); --no-packing pads each batch on both sides")
    a, model_dir, tokenizer, work = common.parse(
        p, argv, quick={"steps": 4, "warmup": 1, "repeats": 1, "max_length": 128, "rows": 64},
        children={"rlhf": child_rlhf, "trl": child_trl},
        check=lambda a: None if 1 <= a.warmup < a.steps else "need 1 <= --warmup < --steps")

    rows, lengths = make_rows(tokenizer, n_rows=a.rows, max_length=a.max_length, seed=a.seed)
    differ = tokenised_differently(tokenizer, rows)
    order = common.rlhf_order(len(rows), a.batch_size, a.seed, a.steps)
    if a.steps * a.batch_size > a.rows:
        print(f"[bench] note: {a.steps} steps x {a.batch_size} rows exceed {a.rows} rows; both sides start a second "
              "epoch")
    print(f"[bench] {len(rows)} rows, tokens/row min {min(lengths)} mean {sum(lengths) / len(lengths):.0f} max "
          f"{max(lengths)}; rows tokenised differently by TRL: {differ}; steps {a.steps} (timed {a.warmup + 1}.."
          f"{a.steps}), batch {a.batch_size} rows, packing {a.packing}, threads {a.threads}, repeats {a.repeats}",
          flush=True)

    runs = common.run_sides(a, work, {"model_dir": model_dir, "data": rows, "order": order}, lambda side, res: (
        f"{res['tokens_per_s']:.1f} tok/s ({res['tokens']} tokens in {res['timed_s']:.1f} s)"))

    summary = common.summarise(runs, ["tokens_per_s", "tokens_per_cpu_s"])
    for side, rs in runs.items():
        # Every run of a side processes the same tokens step by step, so the fastest time seen for
        # each timed step, summed, is the figure least disturbed by other activity (a noise floor).
        fastest = sum(min(col) for col in list(zip(*(x["step_time_s"] for x in rs)))[a.warmup:])
        summary[side].update(tokens_per_s_best_steps=rs[0]["tokens"] / fastest, timed_tokens=rs[0]["tokens"],
                             total_tokens=sum(rs[0]["step_tokens"]))
    same_tokens = None
    if {"rlhf", "trl"} <= set(runs):
        r, t = runs["rlhf"][0], runs["trl"][0]
        same_tokens = r["step_tokens"] == t["step_tokens"]
        print(f"[bench] tokens per step identical on both sides: {same_tokens} (rlhf {sum(r['step_tokens'])}, trl "
              f"{sum(t['step_tokens'])} in all steps; loss tokens rlhf {sum(x or 0 for x in r['loss_tokens'])}, "
              f"trl {sum(t['loss_tokens'])}); step-1 loss rlhf {r['loss'][0]:.4f}, trl {t['loss'][0]:.4f}", flush=True)
        for k, what in (("tokens_per_s_best_steps", "fastest time per step over the repeats, summed (noise floor)"),
                        ("tokens_per_cpu_s", "tokens per CPU-second (less load-sensitive)")):
            br, bt = summary["rlhf"][k], summary["trl"][k]
            print(f"[bench] {what}: rlhf {common.fmt(br, 1)}, trl {common.fmt(bt, 1)}, ratio {common.fmt(br / bt, 2)}x")
    common.finish(a, runs, summary, "tokens_per_s", "tok/s", nd=0, model=model_dir,
                  data={"rows": len(rows), "min_tokens": min(lengths), "max_tokens": max(lengths),
                        "mean_tokens": sum(lengths) / len(lengths), "rows_tokenised_differently_by_trl": differ,
                        "same_step_tokens": same_tokens})


if __name__ == "__main__":
    main()
