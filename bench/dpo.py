"""DPO throughput and memory: rlhf `dpo` against TRL 1.16 `DPOTrainer`, side by side.

pairs/s over one epoch, each side's reference log-probs (rlhf: one pass before the steps; TRL: a
frozen copy inside every step; `--sides ...,trl-precompute`) inside the window; the LAST line is
the summary (medians over the repeats):

    dpo: rlhf 1.23 pairs/s, trl 0.61 pairs/s, ratio 2.02x | peak RSS rlhf 1500 MiB, trl 2900 MiB

`python bench/dpo.py [--quick]`; bench/README.md says what is held equal, results/dpo.json has every step.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

SIDES = ("rlhf", "trl", "trl-precompute")


def child_rlhf(a) -> None:
    os.environ["RLHF_CACHE"] = str(Path(a.out) / "rlhf-cache")  # cold: the reference pass is computed, never read
    import torch

    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.recipes.dpo import DPOConfig, dpo

    tokenizer = load_tokenizer(a.model_dir)
    model = load_causal_lm(a.model_dir, dtype=torch.float32)
    cfg, ignored = common.rlhf_config(DPOConfig, a, batch_size=a.batch_size, epochs=1, max_steps=-1, beta=a.beta,
                                      loss_type="sigmoid", precompute_ref=True, max_length=a.max_length,
                                      truncation="error", packing=True)
    clock = common.StepClock()
    metrics = common.read_metrics(dpo(cfg, train_data=a.data, model=model, tokenizer=tokenizer, callbacks=[clock]))
    # metrics.jsonl's time_s is the loop's own time for step 1, so the steps began that long before
    # its end; everything in the window before that is the reference pass (plus milliseconds of
    # tokenising and optimiser set-up).
    first = clock.ends[0] - metrics[0]["time_s"]
    common.emit(a, clock.window(0, [m["loss_units"] for m in metrics], "pairs"), loss=[m["loss"] for m in metrics],
                step_tokens=[m["tokens"] for m in metrics], ref_s=first - clock.begin, loop_s=clock.ends[-1] - first,
                config_ignored=ignored)


def child_trl(a) -> None:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    counts: dict = {}
    pre = [0.0, 0.0]  # the precompute pass, wall and CPU seconds

    class CountingDPOTrainer(DPOTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            common.count_pair_batch(counts, inputs)
            return super().training_step(model, inputs, num_items_in_batch)

        def _precompute_ref_logps(self, *args, **kw):  # measurement only; runs inside __init__
            t, c = time.perf_counter(), time.process_time()
            try:
                return super()._precompute_ref_logps(*args, **kw)
            finally:
                pre[0], pre[1] = pre[0] + time.perf_counter() - t, pre[1] + time.process_time() - c

    cfg = common.trl_config(DPOConfig, a, per_device_train_batch_size=a.batch_size, num_train_epochs=1, max_steps=-1,
                            beta=a.beta, loss_type="sigmoid", precompute_ref_log_probs=a.side == "trl-precompute",
                            max_length=a.max_length, train_sampling_strategy="sequential", dataloader_drop_last=False)
    clock = common.StepClock()
    trainer = CountingDPOTrainer(model=a.model_dir, args=cfg, callbacks=[clock.trl_callback()],
                                 train_dataset=Dataset.from_list([a.data[i] for i in a.order]))
    ds = trainer.train_dataset  # TRL's own tokenisation: prompt, and prompt + completion + EOS text
    theirs = [[list(x) for x in t] for t in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])]
    differ = sum(x != y for x, y in zip(a.ids, theirs)) + abs(len(a.ids) - len(theirs))

    ref_s = [0.0]
    if trainer.ref_model is not None:  # measurement only: the reference forwards inside the steps
        forward = trainer.ref_model.forward

        def timed_forward(*args, **kw):
            t = time.perf_counter()
            try:
                return forward(*args, **kw)
            finally:
                ref_s[0] += time.perf_counter() - t

        trainer.ref_model.forward = timed_forward
    done = common.trl_train(trainer, clock, a.out)
    clock.begin, clock.cpu_begin = clock.begin - pre[0], clock.cpu_begin - pre[1]  # the window holds precompute
    on_the_fly = trainer.ref_model is not None
    common.emit(a, clock.window(0, counts["pairs"], "pairs"), **done, step_tokens=counts["tokens"],
                padded_positions=counts["padded_positions"], ref_s=ref_s[0] if on_the_fly else pre[0],
                ref_on_the_fly=on_the_fly, rows_tokenised_differently=differ, padding_free=trainer.padding_free)


def main(argv=None) -> None:
    p = common.parser(__doc__, sides=SIDES, quick_help="smoke test: 16 pairs (2 steps), 1 repeat")
    common.pair_args(p, lr=5e-7)
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta (default 0.1)")
    children = {"rlhf": child_rlhf, "trl": child_trl, "trl-precompute": child_trl}
    a, model_dir, tokenizer, work = common.parse(p, argv, quick={"pairs": 16, "repeats": 1}, children=children,
                                                 check=common.pair_check)

    from rlhf.data.io import load_rows
    from rlhf.data.preference import tokenize_pairs

    rows = common.make_pair_rows(tokenizer, n_pairs=a.pairs, seed=a.seed)
    examples, stats = tokenize_pairs(load_rows(rows), tokenizer, max_length=a.max_length, truncation="error")
    order = common.rlhf_order(len(rows), a.batch_size, a.seed, a.pairs // a.batch_size)
    total_tokens = sum(len(e["prompt_ids"]) * 2 + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples)
    print(f"[bench] {len(rows)} pairs ({stats}), {total_tokens} tokens in all {2 * len(rows)} sequences; one epoch = "
          f"{a.pairs // a.batch_size} steps of {a.batch_size} pairs, max_length {a.max_length}, lr {a.lr}, beta "
          f"{a.beta}, threads {a.threads}, repeats {a.repeats}, sides {','.join(a.sides)}", flush=True)

    def line(side: str, res: dict) -> str:
        where = "inside the steps" if res.get("ref_on_the_fly") else "before the steps"
        return common.pair_line(a, side, res, f"; reference {common.fmt(res['ref_s'], 1)} s {where}")

    job = {"model_dir": model_dir, "data": rows, "order": order,
           "ids": [[examples[i][k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")] for i in order]}
    runs = common.run_sides(a, work, job, line)

    summary = common.summarise(runs, ["pairs_per_s", "pairs_per_cpu_s", "timed_s", "ref_s"])
    # Both sides must train the same pairs in the same steps: each step's token count against the
    # pairs the job lists for it, whole sequences for TRL, each prompt once for rlhf's packed rows.
    steps = [job["ids"][i:i + a.batch_size] for i in range(0, len(job["ids"]), a.batch_size)]
    whole = [sum(2 * len(p) + len(c) + len(r) for p, c, r in step) for step in steps]
    shared = [sum(len(p) + len(c) + len(r) for p, c, r in step) for step in steps]
    checks = {}
    if "rlhf" in runs:
        checks["rlhf"] = {"steps_as_listed": runs["rlhf"][0]["step_tokens"] == shared, "tokens_in_rows": sum(shared)}
        print(f"[bench] rlhf: every step trained the pairs listed for it: {checks['rlhf']['steps_as_listed']}; its rows "
              f"hold each prompt once: {sum(shared)} tokens for the {total_tokens} of the whole sequences", flush=True)
    for side in [s for s in runs if s != "rlhf"]:
        res, tokens = runs[side][0], sum(runs[side][0]["step_tokens"])
        same = res["step_tokens"] == whole
        checks[side] = {"rows_tokenised_differently": res["rows_tokenised_differently"], "steps_as_listed": same,
                        "padded_positions": res["padded_positions"]}
        print(f"[bench] {side}: pairs tokenised differently from rlhf: {res['rows_tokenised_differently']}; every "
              f"step trained the pairs listed for it: {same} ({tokens} tokens); pads to {res['padded_positions']} "
              f"positions ({res['padded_positions'] / max(tokens, 1):.2f}x the tokens)", flush=True)
    if {"rlhf", "trl"} <= set(runs):
        print(f"[bench] step-1 loss rlhf {runs['rlhf'][0]['loss'][0]:.4f}, trl {runs['trl'][0]['loss'][0]:.4f} "
              "(log 2 = 0.6931 on both: the policy is the reference)", flush=True)
    common.finish(a, runs, summary, "pairs_per_s", "pairs/s", nd=2, model=model_dir, checks=checks,
                  data={"pairs": len(rows), "tokens": total_tokens, "tokenize_stats": str(stats)})


if __name__ == "__main__":
    main()
