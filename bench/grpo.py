"""GRPO step time and memory: rlhf `grpo` against TRL 1.16 `GRPOTrainer` (no vLLM), side by side.

s/step over the steps after the warm-up, split into generate / score / reference / update (rlhf:
its metrics.jsonl; TRL: timers around `GRPOTrainer` methods). The LAST line is the summary
(medians; ratio = TRL's s/step over rlhf's, above 1 means rlhf is faster):

    grpo: rlhf 12.3 s/step, trl 25.1 s/step, ratio 2.04x | peak RSS rlhf 1500 MiB, trl 2900 MiB

`python bench/grpo.py [--quick]`; bench/README.md says what is held equal, results/grpo.json has every step.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

PHASES = {"generate": "generate", "score": "score", "reference": "reference", "update": "update"}
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
    """n chat prompt rows {"prompt": [{"role": "user", ...}]}, all asking for a long answer, so
    completions tend to run to the token limit."""
    return [{"prompt": [{"role": "user", "content": TEMPLATES[(i + i // len(TOPICS)) % len(TEMPLATES)].format(
        topic=TOPICS[i % len(TOPICS)])}]} for i in range(n)]


def vowel_share(prompts, completions, **columns) -> list[float]:
    """Reward: the share of the completion's letters that are vowels (pure Python, microseconds);
    it varies within a group, so advantages are non-zero and the update does real work. Takes
    rlhf's string completions and TRL's lists of assistant messages."""
    out = []
    for c in completions:
        letters = [ch for ch in (c if isinstance(c, str) else "".join(m.get("content") or "" for m in c)).lower()
                   if ch.isalpha()]
        out.append(sum(ch in "aeiou" for ch in letters) / len(letters) if letters else 0.0)
    return out


def child_rlhf(a) -> None:
    import torch

    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.recipes.grpo import GRPOConfig, grpo

    tokenizer = load_tokenizer(a.model_dir)
    model = load_causal_lm(a.model_dir, dtype=torch.float32)
    # TRL loads no reference at beta 0; neither side should pay a second model load for nothing
    ref_model = load_causal_lm(a.model_dir, dtype=torch.float32) if a.beta > 0 else None
    cfg, ignored = common.rlhf_config(
        GRPOConfig, a, batch_size=a.batch_size, max_steps=a.warmup + a.timed_steps, beta=a.beta, kl_penalty="loss",
        num_generations=a.num_generations, max_new_tokens=a.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        estimator="grpo", scale_rewards=True, loss_aggregation=a.loss, clip_range=0.2, clip_range_high=None)
    clock = common.StepClock()
    # rlhf's loop picks each step's prompts itself (DataOrder), the order TRL is handed
    result = grpo(cfg, train_data=a.data, model=model, tokenizer=tokenizer, ref_model=ref_model, reward=vowel_share,
                  callbacks=[clock])
    steps = common.online_steps(common.read_metrics(result), clock)
    common.emit(a, clock.window(a.warmup), steps=steps, loss=[s["loss"] for s in steps], config_ignored=ignored)


def child_trl(a) -> None:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    g = a.num_generations
    phases: list[dict] = []  # one per step: _generate_and_score_completions runs once a step here
    prompts_seen: list[list[int]] = []

    def timed(key, fn, *args, **kw):
        t = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            phases[-1][key] += time.perf_counter() - t

    class TimedGRPOTrainer(GRPOTrainer):
        # Measurement only: each override times the parent method and calls straight through.
        def _generate_and_score_completions(self, inputs):
            phases.append(dict.fromkeys(("generate", "score", "ref_forward", "policy_forward", "prepare"), 0.0))
            return timed("prepare", super()._generate_and_score_completions, inputs)

        def _generate_single_turn(self, prompt_ids, *args, **kw):
            out = timed("generate", super()._generate_single_turn, prompt_ids, *args, **kw)
            completions, eos = out[0], self.eos_token_ids
            phases[-1].update(completion_length=common.mean(len(c) for c in completions),
                              truncated=common.mean(float(not c or c[-1] not in eos) for c in completions))
            prompts_seen.extend(list(p) for p in prompt_ids[::g])  # prompt-major, G copies of each
            return out

        def _calculate_rewards(self, *args, **kw):
            return timed("score", super()._calculate_rewards, *args, **kw)

        def _get_per_token_logps_and_entropies(self, model, *args, **kw):
            key = "ref_forward" if model is self.ref_model else "policy_forward"
            return timed(key, super()._get_per_token_logps_and_entropies, model, *args, **kw)

    # per_device_train_batch_size counts completions: 8 prompts x 4 = 32, one generation per step
    cfg = common.trl_config(
        GRPOConfig, a, per_device_train_batch_size=a.batch_size * g, num_generations=g,
        max_completion_length=a.max_new_tokens, max_steps=a.warmup + a.timed_steps, num_iterations=1, beta=a.beta,
        epsilon=0.2, loss_type=a.loss, scale_rewards="group", temperature=1.0, top_p=1.0, top_k=0,
        mask_truncated_completions=False, shuffle_dataset=False, log_completions=False)
    if (cfg.generation_batch_size, cfg.steps_per_generation) != (a.batch_size * g, 1):
        raise SystemExit(f"TRL would generate {cfg.generation_batch_size} completions every "
                         f"{cfg.steps_per_generation} steps; expected {a.batch_size * g} every step")
    clock = common.StepClock()
    trainer = TimedGRPOTrainer(model=a.model_dir, reward_funcs=[vowel_share], args=cfg,
                               train_dataset=Dataset.from_list([a.data[i] for i in a.order]),
                               callbacks=[clock.trl_callback()])
    done = common.trl_train(trainer, clock, a.out)
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    steps = [{"step": i + 1, "wall_s": wall, "completion_length": ph.get("completion_length"),
              "truncated": ph.get("truncated"), "reward": log.get("reward"), "loss": log.get("loss"),
              "generate": ph["generate"], "score": ph["score"], "ref_forward": ph["ref_forward"],
              # as rlhf's time/reference: the rest of the rollout preparation (reference forward,
              # advantages, padding, TRL's per-batch metrics)
              "reference": ph["prepare"] - ph["generate"] - ph["score"],
              "update": wall - ph["prepare"]}  # loss forward + backward + optimiser + Trainer bookkeeping
             for i, (ph, wall, log) in enumerate(zip(phases, clock.walls(), logs))]
    differ = sum(x != y for x, y in zip(a.ids, prompts_seen)) + abs(len(a.ids) - len(prompts_seen))
    common.emit(a, clock.window(a.warmup), **done, steps=steps, prompts_tokenised_differently=differ,
                prompts_seen=len(prompts_seen))


def main(argv=None) -> None:
    p = common.parser(__doc__, sides=("rlhf", "trl"), quick_help="smoke test: 1 warm-up + 1 timed step, 1 repeat")
    common.online_args(p, timed_steps=4, batch_help="prompts per optimiser step, both sides", beta=0.04,
                       beta_help="KL coefficient, k3 in the loss")
    p.add_argument("--num-generations", type=int, default=4, help="completions per prompt (default 4)")
    p.add_argument("--loss", choices=("dapo", "grpo", "dr_grpo"), default="dapo",
                   help="loss aggregation, both sides: TRL loss_type = rlhf loss_aggregation (default dapo)")
    a, model_dir, tokenizer, work = common.parse(p, argv, quick={"timed_steps": 1, "repeats": 1},
                                                 children={"rlhf": child_rlhf, "trl": child_trl},
                                                 check=common.online_check)

    from rlhf.data.io import load_rows
    from rlhf.data.prompts import tokenize_prompts

    n_steps, per_step = a.warmup + a.timed_steps, a.batch_size * a.num_generations
    rows = make_prompt_rows(n_steps * a.batch_size)  # one epoch: no prompt is seen twice
    examples, _ = tokenize_prompts(load_rows(rows), tokenizer, max_length=512)
    order = common.rlhf_order(len(rows), a.batch_size, a.seed, n_steps)
    lens = [len(e["prompt_ids"]) for e in examples]
    print(f"[bench] {len(rows)} chat prompts ({min(lens)}..{max(lens)} tokens with the chat template), {a.batch_size} "
          f"prompts x {a.num_generations} completions x <= {a.max_new_tokens} new tokens = {per_step} completions per "
          f"step; {a.warmup} warm-up + {a.timed_steps} timed steps; lr {a.lr}, beta {a.beta} (k3 in the loss), loss "
          f"aggregation {a.loss}, threads {a.threads}, repeats {a.repeats}, sides {','.join(a.sides)}", flush=True)

    job = {"model_dir": model_dir, "data": rows, "order": order, "ids": [examples[i]["prompt_ids"] for i in order]}
    runs = common.run_sides(a, work, job, common.online_line(a, PHASES))

    if "trl" in runs:
        res = runs["trl"][0]
        print(f"[bench] prompts TRL tokenised differently from rlhf (step by step, {res['prompts_seen']} seen): "
              f"{res['prompts_tokenised_differently']}", flush=True)
    summary = common.online_summary(a, runs, PHASES, per_step)
    common.finish(a, runs, summary, "s_per_step", "s/step", nd=1, trl_over_rlhf=True, model=model_dir,
                  ratio_is="trl s/step over rlhf s/step")


if __name__ == "__main__":
    main()
