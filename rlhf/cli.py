"""`rlhf <command> --config FILE.yaml key=value ...`: a thin layer over the Python calls."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import sys
import textwrap

from rlhf.config import field_docs, load_config
from rlhf.errors import UserError
from rlhf.train.preemption import Preempted

# command -> (module, config class, function, one-line summary)
COMMANDS = {
    "sft": ("rlhf.recipes.sft", "SFTConfig", "sft",
            "supervised fine-tuning on prompt/completion or chat rows, or causal-LM pretraining on text rows"),
    "reward": ("rlhf.recipes.reward", "RewardConfig", "reward",
               "train a reward model (scalar head, Bradley-Terry) on preference pairs"),
    "dpo": ("rlhf.recipes.dpo", "DPOConfig", "dpo",
            "direct preference optimisation on pairs: DPO, cDPO, robust, IPO, hinge, SimPO, ORPO"),
    "kto": ("rlhf.recipes.kto", "KTOConfig", "kto",
            "Kahneman-Tversky optimisation on unpaired thumbs-up / thumbs-down feedback"),
    "ppo": ("rlhf.recipes.ppo", "PPOConfig", "ppo",
            "PPO with a critic, GAE and an adaptive KL penalty to the reference (InstructGPT-style RLHF)"),
    "grpo": ("rlhf.recipes.grpo", "GRPOConfig", "grpo",
             "critic-free online RL on prompts: GRPO, RLOO, REINFORCE++ with a KL penalty to the reference"),
    "online-dpo": ("rlhf.recipes.online_dpo", "OnlineDPOConfig", "online_dpo",
                   "online DPO with AI feedback: sample a pair per prompt, a judge or reward source picks, DPO-family step"),
    "label": ("rlhf.recipes.label", "LabelConfig", "label",
              "RLAIF: an LLM judge labels preference pairs (prompts in, labels.jsonl + a quality report out)"),
    "eval": ("rlhf.eval.evaluate", "EvalConfig", "evaluate",
             "evaluate policies against a reference: scores, win rates, KL, length, diversity; eval.json + report.html"),
    "demo": ("rlhf.demo.pipeline", "DemoConfig", "demo",
             "RLHF and RLAIF end to end on the embedded model (positive movie reviews): label, reward model, PPO, "
             "GRPO, DPO, eval, report.html"),
}

REPORT_SUMMARY = "one self-contained report.html from training runs, eval outputs and RLAIF label reports"

# Mistakes in the input print one line and exit 2; anything else is a bug and keeps its traceback.
USER_ERRORS = (UserError, FileNotFoundError)


def _options_help(config_cls) -> str:
    lines = ["options (key=value, or keys of the --config YAML file; dotted for nested keys):"]
    for name, type_name, default, doc in field_docs(config_cls):
        lines.append(f"  {name} ({type_name}, default {default!r})")
        lines.extend(textwrap.wrap(doc, width=88, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf", description="Align language models with human and AI feedback.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (module, cls_name, _, summary) in COMMANDS.items():
        config_cls = getattr(importlib.import_module(module), cls_name)
        p = sub.add_parser(name, help=summary, description=summary, epilog=_options_help(config_cls),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", metavar="FILE.yaml", help="YAML file of options; key=value arguments override it")
        p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint (same as resume=true)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="option overrides, e.g. lr=1e-5 lora.enabled=true")
        if name == "demo":
            p.add_argument("--quick", action="store_true", help="the quick settings (same as quick=true)")
            p.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun from this stage on (same as from_stage=STAGE)")
    # `rlhf report` takes paths, not key=value options
    p = sub.add_parser("report", help=REPORT_SUMMARY, description=REPORT_SUMMARY)
    p.add_argument("paths", nargs="+", metavar="RUN_DIR", help="training run (metrics.jsonl), eval output (eval.json) or label output (label_report.json) directories")
    p.add_argument("--output", metavar="FILE.html", default="report.html", help="the HTML file to write (default: report.html)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.command == "report":
        return _report(args)
    module, cls_name, fn_name, _ = COMMANDS[args.command]
    recipe = importlib.import_module(module)
    is_main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 talks
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        overrides = list(args.overrides) + (["resume=true"] if args.resume else [])
        if args.command == "demo":
            overrides += (["quick=true"] if args.quick else []) + ([f"from_stage={args.from_stage}"] if args.from_stage else [])
        config = load_config(getattr(recipe, cls_name), args.config, overrides)
        result = getattr(recipe, fn_name)(config)
    except USER_ERRORS as e:
        print(f"rlhf {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:
        if is_main:
            print(f"rlhf {args.command}: {e}. Resume with: {resume_command(argv)}", file=sys.stderr, flush=True)
        return e.exit_code
    if getattr(result, "stopped", None):  # e.g. stop_on_kl: no final/ was written, so not a success
        if is_main:
            print(f"rlhf {args.command}: stopped early after step {result.steps}: {result.stopped}. "
                  f"The checkpoint resumes with: {resume_command(argv)}", file=sys.stderr)
        return 1
    if is_main and result is not None and getattr(result, "final_dir", None) is not None:
        print(f"rlhf {args.command}: done, {result.steps} steps; model in {result.final_dir}")
    return 0


def resume_command(argv: list[str]) -> str:
    """The command line that continues this run: the same arguments plus --resume.

    Under torchrun, put the same torchrun options in front of it."""
    resuming = "--resume" in argv or any(a.replace(" ", "").lower() == "resume=true" for a in argv)
    return shlex.join(["rlhf", *argv, *([] if resuming else ["--resume"])])


def _report(args) -> int:
    from rlhf.eval.report import ReportConfig, report

    try:
        path = report(ReportConfig(paths=args.paths, output=args.output))
    except USER_ERRORS as e:
        print(f"rlhf report: error: {e}", file=sys.stderr)
        return 2
    print(f"rlhf report: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
