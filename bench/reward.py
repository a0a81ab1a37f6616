"""Reward-model throughput and memory: rlhf `reward` against TRL 1.16 `RewardTrainer`, side by side.

pairs/s over one epoch from identical starting weights (so the losses agree); each side tokenises
the text itself (`--trl-same-ids`: TRL gets rlhf's ids). The LAST line is the summary (medians):

    reward: rlhf 2.34 pairs/s, trl 1.56 pairs/s, ratio 1.50x | peak RSS rlhf 1500 MiB, trl 2000 MiB

`python bench/reward.py [--quick]`; bench/README.md says what is held equal, results/reward.json has every step.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

HEAD_STD = 0.02  # SmolLM2's initializer_range


def same_head(model, seed: int) -> None:
    """The same starting score head on both sides: normal(0, HEAD_STD) from a seeded generator."""
    import torch

    head = (model.get_base_model() if hasattr(model, "get_base_model") else model).score
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed + 12345)
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * HEAD_STD)
        if head.bias is not None:
            head.bias.zero_()


def child_rlhf(a) -> None:
    import torch

    from rlhf.models import load_tokenizer
    from rlhf.models.reward import load_reward_model
    from rlhf.recipes.reward import RewardConfig, reward

    tokenizer = load_tokenizer(a.model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = load_reward_model(a.model_dir, pad_token_id=pad_id, dtype=torch.float32)
    same_head(model, a.seed)
    cfg, ignored = common.rlhf_config(RewardConfig, a, batch_size=a.batch_size, epochs=1, max_steps=-1,
                                      max_length=a.max_length, truncation="error", packing=True, center_coef=0.0,
                                      use_margin=False)
    clock = common.StepClock()
    metrics = common.read_metrics(reward(cfg, train_data=a.data, model=model, tokenizer=tokenizer, callbacks=[clock]))
    common.emit(a, clock.window(0, [m["loss_units"] for m in metrics], "pairs"), loss=[m["loss"] for m in metrics],
                step_tokens=[m["tokens"] for m in metrics], config_ignored=ignored)


def child_trl(a) -> None:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    if a.trl_same_ids:
        rows = [{"chosen_ids": c, "rejected_ids": r} for c, r in a.ids]
    else:
        rows = [a.data[i] for i in a.order]  # rlhf's per-step order, read sequentially
    counts: dict = {}

    class CountingRewardTrainer(RewardTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            common.count_pair_batch(counts, inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    cfg = common.trl_config(RewardConfig, a, per_device_train_batch_size=a.batch_size, num_train_epochs=1, max_steps=-1,
                            max_length=a.max_length, center_rewards_coefficient=None,
                            train_sampling_strategy="sequential", dataloader_drop_last=False)
    clock = common.StepClock()
    trainer = CountingRewardTrainer(model=a.model_dir, args=cfg, train_dataset=Dataset.from_list(rows),
                                    callbacks=[clock.trl_callback()])
    same_head(trainer.model, a.seed)  # before train(), which builds the optimiser
    ds, eos = trainer.train_dataset, trainer.processing_class.eos_token_id
    theirs = [(list(c), list(r)) for c, r in zip(ds["chosen_ids"], ds["rejected_ids"])]
    same = sum(t == (c, r) for (c, r), t in zip(a.ids, theirs))
    plus_eos = sum(t == (c + [eos], r + [eos]) for (c, r), t in zip(a.ids, theirs))
    done = common.trl_train(trainer, clock, a.out)
    common.emit(a, clock.window(0, counts["pairs"], "pairs"), **done, step_tokens=counts["tokens"],
                padded_positions=counts["padded_positions"], rows_same_ids=same, rows_same_ids_plus_eos=plus_eos,
                train_rows=len(ds))


def main(argv=None) -> None:
    p = common.parser(__doc__, sides=("rlhf", "trl"), quick_help="smoke test: 16 pairs (2 steps), 1 repeat")
    common.pair_args(p, lr=1e-5)
    p.add_argument("--trl-same-ids", action="store_true",
                   help="hand TRL rlhf's token ids (no trailing EOS) instead of the text rows")
    a, model_dir, tokenizer, work = common.parse(p, argv, quick={"pairs": 16, "repeats": 1},
                                                 children={"rlhf": child_rlhf, "trl": child_trl}, check=common.pair_check)

    from rlhf.data.io import load_rows
    from rlhf.data.preference import tokenize_pairs

    rows = common.make_pair_rows(tokenizer, n_pairs=a.pairs, seed=a.seed)
    # as rlhf's reward() tokenises: prompt + completion, no EOS appended
    examples, stats = tokenize_pairs(load_rows(rows), tokenizer, max_length=a.max_length, truncation="error",
                                     append_eos=False)
    order = common.rlhf_order(len(rows), a.batch_size, a.seed, a.pairs // a.batch_size)
    ids = [[examples[i]["prompt_ids"] + examples[i][k] for k in ("chosen_ids", "rejected_ids")] for i in order]
    total_tokens = sum(len(x) for pair in ids for x in pair)
    print(f"[bench] {len(rows)} pairs ({stats}), {total_tokens} tokens in all {2 * len(rows)} sequences (rlhf "
          f"tokenisation, no EOS); one epoch = {a.pairs // a.batch_size} steps of {a.batch_size} pairs, max_length "
          f"{a.max_length}, lr {a.lr}, threads {a.threads}, repeats {a.repeats}, TRL input "
          f"{'rlhf token ids' if a.trl_same_ids else 'text rows'}", flush=True)

    runs = common.run_sides(a, work, {"model_dir": model_dir, "data": rows, "order": order, "ids": ids},
                            lambda side, res: common.pair_line(a, side, res))

    summary = common.summarise(runs, ["pairs_per_s", "pairs_per_cpu_s", "timed_s"])
    for side, rs in runs.items():
        summary[side]["tokens"] = sum(rs[0]["step_tokens"])
    checks = {}
    if "trl" in runs:
        res = runs["trl"][0]
        padded = res["padded_positions"]
        checks = {"rows_same_ids": res["rows_same_ids"], "rows_same_ids_plus_eos": res["rows_same_ids_plus_eos"],
                  "trl_padded_positions": padded}
        print(f"[bench] TRL ids vs rlhf's, of {res['train_rows']} pairs: identical {res['rows_same_ids']}, identical "
              f"plus a trailing EOS {res['rows_same_ids_plus_eos']}; tokens rlhf {total_tokens}, trl "
              f"{summary['trl']['tokens']}; TRL pads to {padded} positions "
              f"({padded / max(summary['trl']['tokens'], 1):.2f}x its tokens)", flush=True)
    if {"rlhf", "trl"} <= set(runs):
        l_r, l_t = runs["rlhf"][0]["loss"], runs["trl"][0]["loss"]
        checks["step1_loss"] = {"rlhf": l_r[0], "trl": l_t[0]}
        print(f"[bench] step-1 loss rlhf {l_r[0]:.5f}, trl {l_t[0]:.5f}; last step rlhf {l_r[-1]:.5f}, "
              f"trl {l_t[-1]:.5f}", flush=True)
    common.finish(a, runs, summary, "pairs_per_s", "pairs/s", nd=2, model=model_dir, checks=checks,
                  data={"pairs": len(rows), "tokens_rlhf": total_tokens, "tokenize_stats": str(stats)})


if __name__ == "__main__":
    main()
