"""`rlhf demo`: RLHF and RLAIF end to end on the embedded model, in one command.

The task is the DPO paper's controlled sentiment generation (Rafailov et al. 2023, arXiv
2305.18290, sec. 6.1): a policy writes short movie reviews, and the "human" labeller and gold
reward is VADER's compound sentiment score (`rlhf.demo.sentiment`), which nobody here wrote.
The AI labeller is the embedded model itself, as a judge. Every stage is a real CLI command,
printed before it runs, with its output in its own subdirectory of `output_dir`:

    data/           the prompts (train / test) and the gold pairs split for the reward model
    gold_labels/    rlhf label: sample 4 reviews per train prompt from the reference policy, VADER ranks
                    them, the best and the worst make the pair
    ai_labels/      rlhf label: the same pairs, labelled by the embedded model as a judge
    reward_model/   rlhf reward on the gold pairs (held-out accuracy printed)
    ppo/ grpo/      rlhf ppo / rlhf grpo against the reward model
    dpo_gold/       rlhf dpo on the gold pairs (RLHF without a reward model)
    dpo_ai/         rlhf dpo on the judge's pairs (RLAIF)
    online_dpo/     rlhf online-dpo with the judge (only with online_dpo=true: it does not fit the budget)
    eval/           rlhf eval of the reference and every policy on the held-out prompts,
                    scorers gold (VADER) and proxy (the reward model); report.html next to it

A stage whose outputs are complete is skipped on a rerun; `from_stage=NAME` reruns from it.
"""

from __future__ import annotations

import json
import logging
import random
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rlhf.config import ConfigError, option
from rlhf.demo.prompts import splits

logger = logging.getLogger(__name__)

GOLD = "rlhf.demo.sentiment:vader_reward"
JUDGE = "smollm2-135m-instruct"


@dataclass
class DemoConfig:
    output_dir: str = option("runs/demo", "where every stage writes its subdirectory, eval/eval.json and report.html")
    quick: bool = option(False, "the quick settings (about 5 minutes on 2 CPU cores) instead of the full ones (about 20)")
    from_stage: str | None = option(None, "rerun from this stage on (deleting its outputs and those of later stages)")
    model: str = option("smollm2-135m-instruct", "the reference policy and starting point of every method")
    seed: int = option(0, "seed of every stage")
    resume: bool = option(True, "skip the stages whose outputs are complete; false starts the whole demo over")
    online_dpo: bool = option(False, "add online DPO with the judge (full settings only; about 2 more minutes, "
                                     "beyond the 20-minute budget)")


@dataclass(frozen=True)
class Settings:
    """The sizes that trade the demo's run time against the strength of its evidence."""

    train_prompts: int      # prompts whose sampled pairs are labelled
    test_prompts: int       # held-out prompts for the evaluation
    heldout_pairs: int      # gold pairs kept out of the reward model's training, for its accuracy
    max_new_tokens: int
    reward_epochs: int
    rl_steps: int           # PPO and GRPO optimiser steps
    rl_batch: int           # prompts per RL step
    dpo_epochs: int
    online_dpo_steps: int   # 0: no online DPO stage even with online_dpo=true


QUICK = Settings(train_prompts=32, test_prompts=24, heldout_pairs=8, max_new_tokens=24, reward_epochs=1,
                 rl_steps=2, rl_batch=8, dpo_epochs=1, online_dpo_steps=0)
FULL = Settings(train_prompts=160, test_prompts=120, heldout_pairs=30, max_new_tokens=32, reward_epochs=2,
                rl_steps=10, rl_batch=8, dpo_epochs=1, online_dpo_steps=8)


@dataclass(frozen=True)
class Stage:
    name: str
    title: str                                   # the banner: what this stage shows
    command: str                                 # the rlhf command it runs
    overrides: Callable[[Path, Settings, DemoConfig], list[str]]   # the runner adds output_dir and seed
    outputs: Callable[[Path], list[Path]]        # complete when all of these exist
    prepare: Callable[[Path, Settings, DemoConfig], None] | None = None   # runs just before the command


def _done(*names: str) -> Callable[[Path], list[Path]]:
    return lambda stage_dir: [stage_dir / name for name in names]


def _trained(stage_dir: Path) -> list[Path]:
    return [stage_dir / "final" / "config.json"]


def _judge(root: Path) -> list[str]:
    """The AI labeller: the embedded model, pointwise (as a pairwise judge a 135M model picks the same
    position whatever the order), continuing plain text "Movie review: ... The sentiment of this
    review is" with " positive" or " negative", no examples: the best of the settings measured
    (README, "The demo"; a chat question, or few-shot examples, agreed less with VADER)."""
    return [f"judge={JUDGE}", "judge_kind=pointwise", f"template={root / 'data' / 'judge_template.txt'}",
            "judge_chat=false", "verdict_words=[positive, negative]"]


def _sampling(s: Settings) -> list[str]:
    return [f"max_new_tokens={s.max_new_tokens}", "temperature=1.0"]


def _gold_labels(root: Path, s: Settings, c: DemoConfig) -> list[str]:
    # best against worst of 4: clearer pairs than 2 random samples. confidence = sigmoid(VADER gap):
    # 0.6 keeps the pairs whose compound scores differ by 0.4 or more
    return [f"data={root / 'data' / 'train.jsonl'}", f"policy={c.model}", "num_candidates=4", "pairing=best_worst",
            f"reward={GOLD}", "min_confidence=0.6", "sample_batch_size=32", *_sampling(s)]


def _ai_labels(root: Path, s: Settings, c: DemoConfig) -> list[str]:
    return [f"data={root / 'gold_labels' / 'labels.jsonl'}",
            *_judge(root), f"gold_reward={GOLD}"]


def _reward_model(root: Path, s: Settings, c: DemoConfig) -> list[str]:
    return [f"model={c.model}", f"data={root / 'data' / 'rm_train.jsonl'}",
            f"eval_data={root / 'data' / 'rm_heldout.jsonl'}", f"epochs={s.reward_epochs}", "batch_size=8",
            "lr=3e-5"]


def _rl(command: str) -> Callable[[Path, Settings, DemoConfig], list[str]]:
    def overrides(root: Path, s: Settings, c: DemoConfig) -> list[str]:
        common = [f"model={c.model}", f"data={root / 'data' / 'train.jsonl'}",
                  f"reward={root / 'reward_model' / 'final'}", f"max_steps={s.rl_steps}", f"batch_size={s.rl_batch}",
                  *_sampling(s)]
        if command == "ppo":
            # a value head on the policy's trunk, 4 samples per prompt as GRPO: a separate critic (from the
            # reward model or the policy) never learned in 10 steps (explained variance -1 to -9) and
            # 8 samples a step left the reward flat (README, "The demo")
            return common + ["critic=shared", "num_generations=4", "lr=2e-5", "critic_lr=1e-4", "ppo_epochs=1",
                             "beta=0.05"]
        return common + ["lr=2e-5", "num_generations=4", "beta=0.04"]
    return overrides


def _dpo(labels: str) -> Callable[[Path, Settings, DemoConfig], list[str]]:
    def overrides(root: Path, s: Settings, c: DemoConfig) -> list[str]:
        return [f"model={c.model}", f"data={root / labels / 'labels.jsonl'}", f"epochs={s.dpo_epochs}",
                "batch_size=8", "lr=1e-5", "beta=0.1"]
    return overrides


def _online_dpo(root: Path, s: Settings, c: DemoConfig) -> list[str]:
    return [f"model={c.model}", f"data={root / 'data' / 'train.jsonl'}", *_judge(root), f"max_steps={s.online_dpo_steps}",
            f"batch_size={s.rl_batch}", "lr=5e-6", *_sampling(s)]


def split_gold_pairs(root: Path, settings: Settings, config: DemoConfig) -> None:
    """Gold pairs -> rm_train.jsonl and rm_heldout.jsonl (a seeded shuffle; the last heldout_pairs held out)."""
    rows = (root / "gold_labels" / "labels.jsonl").read_text().splitlines(keepends=True)
    random.Random(config.seed).shuffle(rows)
    cut = len(rows) - settings.heldout_pairs
    (root / "data" / "rm_train.jsonl").write_text("".join(rows[:cut]))
    (root / "data" / "rm_heldout.jsonl").write_text("".join(rows[cut:]))


POLICY_STAGES = ("ppo", "grpo", "dpo_gold", "dpo_ai", "online_dpo")


def _eval(root: Path, s: Settings, c: DemoConfig) -> list[str]:
    policies = [str(root / name) for name in POLICY_STAGES if (root / name / "final").is_dir()]
    return [f"policies=[{', '.join(policies)}]", f"ref_model={c.model}", f"data={root / 'data' / 'test.jsonl'}",
            # all test prompts in one sampling batch: a wide batch costs little more per decoding step
            # (measured: 35 s a policy at batch 64 against 47 s at batch 16)
            f"scorers.gold={GOLD}", f"proxy={root / 'reward_model' / 'final'}", "num_samples=1",
            f"batch_size={s.test_prompts}",
            *_sampling(s)]


def _report(root: Path, s: Settings, c: DemoConfig) -> list[str]:
    sources = [name for name in ("eval", *POLICY_STAGES, "gold_labels", "ai_labels") if (root / name).is_dir()]
    return [str(root / name) for name in sources] + ["--output", str(root / "report.html")]


STAGES = [
    Stage("gold_labels", "sample four reviews per train prompt from the reference policy; VADER (the 'human') "
          "ranks them and the best and worst make a pair", "label", _gold_labels,
          _done("labels.jsonl", "label_report.json")),
    Stage("ai_labels", "the same pairs labelled by the embedded model as a judge (RLAIF); its agreement with VADER",
          "label", _ai_labels, _done("labels.jsonl", "label_report.json")),
    Stage("reward_model", "a reward model trained on the gold pairs; its held-out accuracy", "reward", _reward_model,
          _trained, prepare=split_gold_pairs),
    Stage("ppo", "PPO against the reward model (critic, GAE, adaptive KL)", "ppo", _rl("ppo"), _trained),
    Stage("grpo", "GRPO against the reward model (group baseline, no critic)", "grpo", _rl("grpo"), _trained),
    Stage("dpo_gold", "DPO on the gold pairs (RLHF without a reward model)", "dpo", _dpo("gold_labels"), _trained),
    Stage("dpo_ai", "DPO on the judge's pairs (RLAIF)", "dpo", _dpo("ai_labels"), _trained),
    Stage("online_dpo", "online DPO: the policy samples pairs each step and the judge picks", "online-dpo",
          _online_dpo, _trained),
    Stage("eval", "every policy and the reference on the held-out prompts: gold (VADER) and proxy (the reward model)",
          "eval", _eval, _done("eval.json", "report.html")),
    Stage("report", "report.html: the reward-vs-KL frontier, training curves, label quality, samples", "report",
          _report, lambda stage_dir: [stage_dir.parent / "report.html"]),
]

STAGE_NAMES = [stage.name for stage in STAGES]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "sentiment"


def prepare_data(root: Path, settings: Settings, config: DemoConfig) -> None:
    """The prompts (the first train_prompts / test_prompts of the shipped splits) and the judge's
    template, copied into root/data so the run is self-contained."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    rows = splits()
    for name, count in (("train", settings.train_prompts), ("test", settings.test_prompts)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[name][:count]))
    source = EXAMPLES / "judge_template.txt"
    if not source.is_file():
        raise ConfigError(f"the demo needs {source} (run it from a checkout of the repository)")
    shutil.copyfile(source, data / source.name)


def _complete(stage: Stage, root: Path) -> bool:
    return all(path.exists() for path in stage.outputs(root / stage.name))


def _banner(index: int, stage: Stage) -> None:
    line = f"[{index}/{len(STAGES)}] {stage.name}: {stage.title}"
    print("\n" + "=" * min(len(line), 100) + "\n" + line + "\n" + "=" * min(len(line), 100), flush=True)


def _run_command(command: str, overrides: list[str]) -> None:
    from rlhf.cli import main

    print("$ rlhf " + command + " " + " ".join(shlex.quote(o) for o in overrides), flush=True)
    code = main([command, *overrides])
    if code != 0:
        raise RuntimeError(f"rlhf {command} exited with status {code}; fix the error above and rerun "
                           "`rlhf demo` (finished stages are kept)")


def demo(config: DemoConfig) -> dict:
    """Run every stage that is not complete yet; returns {stage: seconds} for the stages run."""
    settings = QUICK if config.quick else FULL
    root = Path(config.output_dir)
    if config.from_stage is not None and config.from_stage not in STAGE_NAMES:
        raise ConfigError(f"from_stage={config.from_stage!r}: expected one of {', '.join(STAGE_NAMES)}")
    settings_file = root / "demo.json"
    wanted = {"quick": config.quick, "model": config.model, "seed": config.seed}
    if config.online_dpo:  # absent otherwise, so demo.json files written before this option still match
        wanted["online_dpo"] = True
    if settings_file.is_file() and json.loads(settings_file.read_text()) != wanted and config.from_stage is None \
            and config.resume:
        raise ConfigError(f"{root} holds a demo run with other settings ({settings_file}); pass another "
                          "output_dir, or from_stage=gold_labels to start it over")
    if config.from_stage is not None or not config.resume:  # clear the outputs of the stages to rerun
        first = STAGE_NAMES.index(config.from_stage) if config.from_stage is not None else 0
        for stage in STAGES[first:]:
            shutil.rmtree(root / stage.name, ignore_errors=True)
            for path in stage.outputs(root / stage.name):
                path.unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(wanted))
    prepare_data(root, settings, config)
    print(f"rlhf demo ({'quick' if config.quick else 'full'}): {settings}", flush=True)

    times: dict[str, float] = {}
    start = time.perf_counter()
    for index, stage in enumerate(STAGES, 1):
        if stage.name == "online_dpo" and not (config.online_dpo and settings.online_dpo_steps):
            continue
        if _complete(stage, root):
            print(f"[{index}/{len(STAGES)}] {stage.name}: complete, skipped ({root / stage.name})", flush=True)
            continue
        _banner(index, stage)
        began = time.perf_counter()
        if stage.prepare is not None:
            stage.prepare(root, settings, config)
        overrides = stage.overrides(root, settings, config)
        if stage.command != "report":  # the key=value commands
            overrides += [f"seed={config.seed}", f"output_dir={root / stage.name}"]
        # a training stage killed midway continues from its newest checkpoint
        if (root / stage.name / "checkpoints").is_dir():
            overrides.append("resume=true")
        _run_command(stage.command, overrides)
        times[stage.name] = time.perf_counter() - began
        print(f"[{index}/{len(STAGES)}] {stage.name}: {times[stage.name]:.0f} s", flush=True)
    times["total"] = time.perf_counter() - start
    (root / "times.json").write_text(json.dumps(times, indent=2))
    _summary(root, times)
    return times


def _summary(root: Path, times: dict[str, float]) -> None:
    from rlhf.eval.report import summary_text, verdicts

    print("\nwall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    report = root / "ai_labels" / "label_report.json"
    if report.is_file():
        r = json.loads(report.read_text())
        number = lambda key: "-" if r.get(key) is None else f"{r[key]:.3f}"  # noqa: E731
        print(f"AI judge agreement with VADER: {number('agreement')} (always the longer {number('baseline_longer')}, "
              f"always the first {number('baseline_first')})")
    accuracy = _last_metric(root / "reward_model" / "metrics.jsonl", "eval_accuracy")
    if accuracy is not None:
        print(f"reward model held-out accuracy on gold pairs: {accuracy:.3f}")
    results = json.loads((root / "eval" / "eval.json").read_text())
    agreement = (results.get("proxy_agreement") or {}).get("agreement")
    if agreement is not None:
        print(f"reward model (proxy) agreement with VADER on pairs of test samples: {agreement:.3f} "
              f"({results['proxy_agreement']['pairs']} pairs; 0.5 is chance)")
    print("\ndid it work? (the gold win rate's 95% interval against 0.5; why, where it did not)")
    runs = [root / name for name in POLICY_STAGES if (root / name / "metrics.jsonl").is_file()]
    for v in verdicts(results, runs):
        if "@step-" in v.name:  # the checkpoints are points of the frontier; the verdicts judge final models
            continue
        print(f"  {v.name}: {v.headline}: {v.summary}")
        for reason in [*v.reasons, *v.warnings]:
            print(f"      - {reason}")
    # as the report opens: the short table, then one prompt answered by the reference and each method
    print("\n" + summary_text(results))
    print(f"\nreport (the reward-vs-KL frontier, every prompt side by side): {(root / 'report.html').resolve()}")


def _last_metric(path: Path, key: str) -> float | None:
    if not path.is_file():
        return None
    values = [row[key] for row in map(json.loads, path.read_text().splitlines()) if row.get(key) is not None]
    return values[-1] if values else None
