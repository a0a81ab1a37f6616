"""RLAIF: LLM judges, pairs judged by them, and the judge cache (`rlhf label`, `rlhf online-dpo`,
`judge:<model>` rewards).

    from rlhf.feedback import JudgeOptions, build_judge, judge_pairs, JudgeCache
    judge = build_judge(JudgeOptions(judge_kind="pairwise"))
    verdicts = judge_pairs(judge, prompts, a, b, cache=JudgeCache("judge_cache.jsonl"))
    verdicts[0].p_first      # P(a[0] better than b[0]), both orders averaged

Modules: `templates` (what the judge reads), `judge` (LM judges, `judge_pairs`), `cache`
(persistent answers), `pairs` (which pairs to judge), `quality` (how good the labels are).
"""

from .cache import JudgeCache
from .judge import (Judge, JudgeOptions, LMJudge, LMPairwiseJudge, LMPointwiseJudge, PairVerdict, RewardJudge,
                    build_judge, check_judge_options, judge_items, judge_pairs, verdict_token_ids)
from .templates import DEFAULT_CRITERIA, JudgePrompt, as_text, default_template, judge_prompt, load_examples

__all__ = [
    "DEFAULT_CRITERIA",
    "Judge",
    "JudgeCache",
    "JudgeOptions",
    "JudgePrompt",
    "LMJudge",
    "LMPairwiseJudge",
    "LMPointwiseJudge",
    "PairVerdict",
    "RewardJudge",
    "as_text",
    "build_judge",
    "check_judge_options",
    "default_template",
    "judge_items",
    "judge_pairs",
    "judge_prompt",
    "load_examples",
    "verdict_token_ids",
]
