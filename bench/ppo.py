"""PPO step time, split into its phases: rlhf `ppo` on the embedded model with a reward model.

rlhf alone (TRL 1.16 has no PPOTrainer): s/step over the steps after the warm-up, split by its
metrics.jsonl into generate / score (an untrained reward model's forward) / reference and critic
values / train (the rest). The LAST line is the summary (medians over the repeats):

    ppo: 14.2 s/step = generate 5.1 (36%) + score 0.4 (3%) + reference/values 1.2 (8%) + train 7.5 (53%) | peak RSS 3100 MiB

`python bench/ppo.py [--quick]`; bench/README.md has the details, results/ppo.json every step.
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from grpo import make_prompt_rows  # noqa: E402  (the same long-answer chat prompts)

LABELS = {"generate": "generate", "score": "score", "reference": "reference/values", "update": "train"}


def make_untrained_reward_model(model_dir: str, out_dir: Path, seed: int) -> Path:
    """Save `AutoModelForSequenceClassification(num_labels=1)` from the causal LM in `model_dir`:
    its backbone weights and a score head drawn with `seed` (untrained), plus the tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from rlhf.models import load_tokenizer

    if not (out_dir / "config.json").is_file():
        hf_logging.set_verbosity_error()  # the "score.weight newly initialised" report is the point here
        tokenizer = load_tokenizer(model_dir)
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32,
                                                                   pad_token_id=tokenizer.pad_token_id)
        tmp = out_dir.with_name(out_dir.name + ".tmp")  # complete or absent, even after a crash
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out_dir)
    return out_dir


def child_rlhf(a) -> None:
    import torch

    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.models.reward import load_reward_model
    from rlhf.recipes.ppo import PPOConfig, ppo

    tokenizer = load_tokenizer(a.model_dir)
    model, ref_model = (load_causal_lm(a.model_dir, dtype=torch.float32) for _ in range(2))
    value_model = load_reward_model(a.reward_dir, pad_token_id=tokenizer.pad_token_id, dtype=torch.float32)
    cfg, ignored = common.rlhf_config(
        PPOConfig, a, reward=a.reward_dir, batch_size=a.batch_size, num_generations=1, max_new_tokens=a.max_new_tokens,
        max_steps=a.warmup + a.timed_steps, ppo_epochs=a.ppo_epochs, num_minibatches=a.num_minibatches, beta=a.beta,
        adaptive_kl=True, temperature=1.0, top_p=1.0, top_k=0)
    clock = common.StepClock()
    result = ppo(cfg, train_data=a.data, tokenizer=tokenizer, model=model, ref_model=ref_model, value_model=value_model,
                 callbacks=[clock])
    steps = common.online_steps(common.read_metrics(result), clock)
    common.emit(a, clock.window(a.warmup), steps=steps, loss=[s["loss"] for s in steps], config_ignored=ignored)


def main(argv=None) -> None:
    p = common.parser(__doc__, sides=("rlhf",), quick_help="smoke test: 1 warm-up + 1 timed step, 1 repeat")
    common.online_args(p, timed_steps=3, batch_help="prompts per step, one completion each", beta=0.05,
                       beta_help="starting KL coefficient, adaptive")
    p.add_argument("--ppo-epochs", type=int, default=4, help="passes over each batch of rollouts (default 4)")
    p.add_argument("--num-minibatches", type=int, default=1, help="optimiser updates per pass (default 1)")
    a, model_dir, tokenizer, work = common.parse(p, argv, quick={"timed_steps": 1, "repeats": 1},
                                                 children={"rlhf": child_rlhf}, check=common.online_check)

    from rlhf.data.io import load_rows
    from rlhf.data.prompts import tokenize_prompts

    n_steps = a.warmup + a.timed_steps
    rows = make_prompt_rows(n_steps * a.batch_size)  # one epoch: no prompt is seen twice
    lens = [len(e["prompt_ids"]) for e in tokenize_prompts(load_rows(rows), tokenizer, max_length=512)[0]]
    reward_dir = make_untrained_reward_model(model_dir, work / f"untrained-reward-model-seed{a.seed}", a.seed)
    print(f"[bench] reward model (untrained score head, seed {a.seed}) {reward_dir}; {len(rows)} chat prompts "
          f"({min(lens)}..{max(lens)} tokens with the chat template), {a.batch_size} prompts x 1 completion x <= "
          f"{a.max_new_tokens} new tokens per step, ppo_epochs {a.ppo_epochs}, num_minibatches {a.num_minibatches}; "
          f"{a.warmup} warm-up + {a.timed_steps} timed steps; lr {a.lr}, beta {a.beta} (adaptive), threads "
          f"{a.threads}, repeats {a.repeats}", flush=True)

    job = {"model_dir": model_dir, "reward_dir": str(reward_dir), "data": rows}
    runs = common.run_sides(a, work, job, common.online_line(a, LABELS))
    if not a.workdir:
        shutil.rmtree(reward_dir, ignore_errors=True)

    s = common.online_summary(a, runs, LABELS, a.batch_size)["rlhf"]  # "train" closes the sum
    common.finish(a, runs, {"rlhf": s}, model=model_dir, trl="not run: TRL 1.16 has no PPOTrainer",
                  reward_model="untrained: SmolLM2 backbone + seeded random score head")
    print("[bench] trl: no PPOTrainer in TRL 1.16 (removed from trl.trainer, not in trl.experimental); "
          "no side-by-side figure", flush=True)

    def part(k: str) -> str:
        pct = 100 * s[k] / s["s_per_step"] if s["s_per_step"] and not math.isnan(s[k]) else float("nan")
        return f"{LABELS[k]} {common.fmt(s[k], 1)} ({common.fmt(pct, 0)}%)"

    print(f"ppo: {common.fmt(s['s_per_step'], 1)} s/step = " + " + ".join(part(k) for k in LABELS)
          + f" | peak RSS {common.fmt(s['peak_rss_mib'])} MiB", flush=True)


if __name__ == "__main__":
    main()
