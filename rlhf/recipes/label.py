"""AI-labelled preferences (RLAIF): `rlhf label`, prompts in, preference pairs out.

Lee et al. 2023 (RLAIF, arXiv 2309.00267) replace the human labeller with an LLM judge. Per prompt:
take the candidates (a `completions` list, a chosen/rejected pair to re-label, or `num_candidates`
samples of a `policy`), form pairs by the `pairing` rule (`rlhf.feedback.pairs`), and let the judge
give each pair p = P(first is better) (`rlhf.feedback.judge_pairs`: both orders averaged for a
pairwise judge, a Bradley-Terry probability of the score difference for a pointwise one). The
pair is labelled chosen = the winner, with confidence c = max(p, 1 - p).

Writes to output_dir:
- labels.jsonl: {prompt, chosen, rejected, confidence, judge, template_sha, ...the row's other
  columns}, preference rows that `rlhf reward` and `rlhf dpo` read as they are;
- label_report.json: counts and judge quality (`rlhf.feedback.quality`), with agreement next to
  the "always the longer" and "always the first" baselines when a gold labeller is given;
- judge_cache.jsonl: every judge call, keyed by judge weights + template + texts, so a rerun, or a
  killed run started again, asks the judge only what it has not answered yet.

What is not labelled, and counted in the report: a pair of identical (or, sampled, empty)
completions is not judged (n_skipped); an unparseable verdict (rationale mode) is never turned
into a label (n_unparsed); a verdict under `min_confidence`, or an exact tie (p = 1/2, which
prefers nothing), is dropped (n_dropped).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import yaml
from tqdm.auto import tqdm

from rlhf.config import ConfigError, option, to_dict
from rlhf.data.prompts import tokenize_prompts
from rlhf.feedback import JudgeCache, JudgeOptions, RewardJudge, build_judge, check_judge_options, judge_pairs
from rlhf.feedback import quality
from rlhf.feedback.pairs import PAIRINGS, Item, Pairing, best_worst, pair_rng, plan_pairs, read_items, valid_pair
from rlhf.recipes._online import SamplingOptions, generation_config, prompt_seed
from rlhf.recipes._shared import read_rows
from rlhf.rewards import resolve_reward
from rlhf.rollout import HFRollout
from rlhf.train.checkpoint import seed_everything
from rlhf.train.distributed import init_distributed

logger = logging.getLogger(__name__)

LABELS = "labels.jsonl"
REPORT = "label_report.json"
CACHE = "judge_cache.jsonl"


@dataclass
class LabelConfig(SamplingOptions, JudgeOptions):
    """The judge's keys (JudgeOptions), policy sampling's (SamplingOptions: with policy=; temperature 0
    gives identical candidates), and what to label, how to pair, and where the labels go."""

    data: str | None = option(None, "prompt rows: a JSONL / Parquet file or a `datasets` directory; candidates in a "
                                    "`completions` list or chosen/rejected, unless policy samples them")
    output_dir: str = option("runs/label", "where labels.jsonl, label_report.json and judge_cache.jsonl are written")
    policy: str | None = option(None, "model spec that samples num_candidates completions per prompt (the data then "
                                      "holds prompts only)")
    num_candidates: int = option(2, "completions sampled per prompt with policy")
    reward: str | None = option(None, "annotator: a reward source spec instead of the LLM judge (the higher score "
                                      "wins, p = sigmoid(r_a - r_b)); e.g. a programmatic 'human' labeller")
    pairing: Pairing = option("random", "which pairs to judge: random (disjoint random pairs), all (every pair) or "
                                        "best_worst (judge all, label the best against the worst)")
    debias: bool = option(True, "pairwise judges: judge both orders and average (false: one order, a random one)")
    min_confidence: float = option(0.5, "drop pairs whose confidence max(p, 1 - p) is below this (0.5 keeps every "
                                        "decided pair)")
    gold_reward: str | None = option(None, "gold labeller for the report: a reward source spec (the higher score wins)")
    gold_column: str | None = option(None, "gold labeller for the report: a column with one score per candidate; on "
                                           "chosen/rejected rows, 'chosen' takes the data's own label")
    sample_batch_size: int = option(8, "policy sampling: prompts per batch")
    seed: int = option(0, "random seed for pairing, pair order and sampling")
    dtype: Literal["float32", "bfloat16", "float16"] = option(
        "float32", "dtype of the policy and judge weights (float32 is the fast one on CPU)")
    trust_remote_code: bool = option(False, "allow model code from the model directories to run")
    threads: int = option(0, "torch intra-op threads on CPU (0: leave torch's default)")
    progress: bool = option(True, "show progress bars and print the report table")
    resume: bool = option(True, "reuse output_dir/judge_cache.jsonl, so a rerun or a killed run judges only what is "
                                "left; false deletes it first (e.g. to time the judge)")

    @property
    def num_generations(self) -> int:  # what the RL commands' sampling settings call it
        return self.num_candidates


@dataclass
class LabelResult:
    labels_path: Path
    report_path: Path
    report: dict
    rows: list[dict]


@dataclass
class _Judged:
    """One judged pair: the item, the pair (first, second) and the judge's verdict."""

    item: int
    pair: tuple[int, int]
    verdict: object  # a PairVerdict


def check_config(config: LabelConfig) -> None:
    if config.pairing not in PAIRINGS:
        raise ConfigError(f"config key 'pairing': expected one of {', '.join(PAIRINGS)}, got {config.pairing!r}")
    if config.num_candidates < 2:
        raise ConfigError(f"config key 'num_candidates': a pair needs at least 2, got {config.num_candidates}")
    if not 0.5 <= config.min_confidence <= 1.0:
        raise ConfigError(f"config key 'min_confidence': expected a number in [0.5, 1], got {config.min_confidence}")
    if config.gold_reward is not None and config.gold_column is not None:
        raise ConfigError("set at most one of gold_reward and gold_column")
    if config.sample_batch_size < 1:
        raise ConfigError(f"config key 'sample_batch_size': expected a positive integer, "
                          f"got {config.sample_batch_size}")
    try:
        generation_config(config)
    except ValueError as e:
        raise ConfigError(str(e).replace("GenerationConfig.", "config key ")) from None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("rlhf label runs in one process; start it without torchrun")


def sample_candidates(items: list[Item], examples: list[dict], config: LabelConfig, *, model, tokenizer) -> None:
    """num_candidates completions of every prompt (`examples`: its token ids), in batches; prompt i
    draws from its own seeded stream (`prompt_seed(seed, 0, i)`), so its candidates do not depend on
    the batch it is in."""
    backend = HFRollout(model, tokenizer)
    generation = generation_config(config)
    group = config.num_candidates
    size = config.sample_batch_size
    with tqdm(total=len(items), desc="sampling candidates", unit="prompt", disable=not config.progress,
              dynamic_ncols=True) as bar:
        for start in range(0, len(items), size):
            chunk = examples[start : start + size]
            seeds = [prompt_seed(config.seed, 0, start + i) for i in range(len(chunk))]
            rollout = backend.generate([e["prompt_ids"] for e in chunk], generation, seeds=seeds)
            for i in range(len(chunk)):
                items[start + i].candidates = rollout.completions[i * group : (i + 1) * group]
            bar.update(len(chunk))


def gold_scores(reward_fn, items: list[Item], needed: dict[int, set[int]]) -> None:
    """Fill item.gold with the gold reward of the candidates in `needed` (item -> candidate indices), one call."""
    places = [(i, c) for i in sorted(needed) for c in sorted(needed[i])]
    if not places:
        return
    names = sorted({k for i in needed for k in items[i].columns})
    scores = reward_fn([items[i].prompt for i, _ in places], [items[i].candidates[c] for i, c in places],
                       **{k: [items[i].columns.get(k) for i, _ in places] for k in names})
    for item in items:
        item.gold = [None] * len(item.candidates)
    for (i, c), score in zip(places, scores):
        items[i].gold[c] = score


def label_row(item: Item, pair: tuple[int, int], p: float, judge) -> dict:
    """The preference row of a judged pair: the winner is chosen; the item's other columns follow."""
    first, second = (item.candidates[k] for k in pair)
    row = {"prompt": item.prompt, "chosen": first if p > 0.5 else second, "rejected": second if p > 0.5 else first,
           "confidence": quality.confidence(p), "judge": judge.name, "template_sha": judge.template_sha}
    row.update({k: v for k, v in item.columns.items() if k not in row})
    return row


def write_atomically(path: Path, text: str) -> None:
    """Write to a temp file beside `path`, then rename: a reader, or a killed run, never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def label(config: LabelConfig, *, data=None, judge=None, policy=None, tokenizer=None) -> LabelResult:
    """Label preference pairs per `config`. `data` (rows or a path) replaces config.data; `judge` (an
    object with the Judge interface, e.g. a scripted test judge) is used instead of building one;
    `policy` (a model spec or an in-memory causal LM, with its `tokenizer`) replaces config.policy."""
    check_config(config)
    policy = policy if policy is not None else config.policy
    sampled = policy is not None
    if sampled and not isinstance(policy, (str, os.PathLike)) and tokenizer is None:
        raise ConfigError("an in-memory policy needs its tokenizer (label(..., policy=model, tokenizer=tok))")
    if sampled and config.gold_column is not None:
        raise ConfigError("gold_column needs candidates in the data; with policy, use gold_reward")

    # step 1. every row and the judge's files, checked before any model loads
    if data is None and config.data is None:
        raise ConfigError("no data: set data=PATH (prompt rows, with candidates unless policy samples them)")
    rows = read_rows(data if data is not None else config.data, "prompt")
    items = read_items(rows, sampled=sampled, gold_column=config.gold_column)
    if judge is None and config.reward is None:
        check_judge_options(config)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    device = init_distributed().device
    dtype = getattr(torch, config.dtype)
    seed_everything(config.seed)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

    # step 2. the gold labeller (a reward spec is checked, then built), then the policy's samples
    gold_fn = None
    if config.gold_reward is not None:
        columns = sorted({k for item in items for k in item.columns})
        gold_fn = resolve_reward(config.gold_reward, columns=columns, device=str(device))
    if judge is None and config.reward is not None:
        judge = RewardJudge(resolve_reward(config.reward, device=str(device)), config.reward)
    if sampled:
        from rlhf.models import load_causal_lm, load_tokenizer

        if tokenizer is None:
            tokenizer = load_tokenizer(policy, trust_remote_code=config.trust_remote_code)
        # a prompt over max_prompt_length is a DataError before the policy loads
        examples, _ = tokenize_prompts(rows, tokenizer, max_length=config.max_prompt_length, truncation="error")
        model = policy if isinstance(policy, torch.nn.Module) else load_causal_lm(
            policy, dtype=dtype, trust_remote_code=config.trust_remote_code)
        sample_candidates(items, examples, config, model=model.to(device), tokenizer=tokenizer)
        del model  # the judge needs the memory
        policy = None

    # step 3. pairs per prompt; identical (or empty) texts are not judged
    planned: list[tuple[int, tuple[int, int]]] = []
    n_skipped = 0
    for index, item in enumerate(items):
        for pair in plan_pairs(len(item.candidates), config.pairing, pair_rng(config.seed, index)):
            if valid_pair(item.candidates, pair):
                planned.append((index, pair))
            else:
                n_skipped += 1

    # step 4. judge them all, through the persistent cache
    if judge is None:
        judge = build_judge(config, device=device, dtype=dtype, trust_remote_code=config.trust_remote_code)
    if not config.resume:
        (out / CACHE).unlink(missing_ok=True)
    cache = JudgeCache(out / CACHE)
    start = time.perf_counter()
    verdicts = judge_pairs(judge, [items[i].prompt for i, _ in planned],
                           [items[i].candidates[p[0]] for i, p in planned],
                           [items[i].candidates[p[1]] for i, p in planned],
                           debias=config.debias, cache=cache, progress=config.progress) if planned else []
    seconds = time.perf_counter() - start
    judged = [_Judged(i, pair, v) for (i, pair), v in zip(planned, verdicts)]

    # step 5. the pairs to label: every judged one, or each prompt's best against its worst
    labelled, n_dropped = choose_labels(judged, items, config)
    rows_out = [label_row(items[j.item], j.pair, j.verdict.p_first, judge) for j in labelled]

    # step 6. the report: counts, judge quality, and agreement with gold next to the baselines
    report = build_report(judged, labelled, n_dropped, items, config, judge=judge, cache=cache, seconds=seconds,
                          n_skipped=n_skipped, sampled=sampled)
    if gold_fn is not None:
        needed: dict[int, set[int]] = {}
        for j in judged:
            if j.verdict.p_first is not None:
                needed.setdefault(j.item, set()).update(j.pair)
        gold_scores(gold_fn, items, needed)
    if gold_fn is not None or config.gold_column is not None:
        report["gold"] = config.gold_reward if gold_fn is not None else f"column:{config.gold_column}"
        report.update(_agreement([j for j in judged if j.verdict.p_first is not None], items))
        report["agreement_labelled"] = _agreement(labelled, items)["agreement"]

    # step 7. write labels and report atomically; print the table
    labels_path, report_path = out / LABELS, out / REPORT
    write_atomically(labels_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows_out))
    write_atomically(report_path, json.dumps(report, indent=2) + "\n")
    if config.progress:
        print(f"rlhf label: {len(rows_out)} pairs -> {labels_path}\n{quality.format_report(report)}", flush=True)
    logger.info("labelled %d pairs (%d dropped, %d unparsed) -> %s", len(rows_out), n_dropped,
                report["n_unparsed"], labels_path)
    return LabelResult(labels_path=labels_path, report_path=report_path, report=report, rows=rows_out)


def choose_labels(judged: list[_Judged], items: list[Item], config: LabelConfig) -> tuple[list[_Judged], int]:
    """(the pairs to label, how many were dropped): every judged pair, or with pairing=best_worst each
    prompt's best against its worst; an unparsed verdict is left out (counted by the report), and a
    verdict under min_confidence or an exact tie is dropped."""
    if config.pairing == "best_worst":
        by_item: dict[int, list[_Judged]] = {}
        for j in judged:
            by_item.setdefault(j.item, []).append(j)
        proposals = []
        for index, item in enumerate(items):
            mine = by_item.get(index, [])
            chosen = best_worst(len(item.candidates), [j.pair for j in mine], [j.verdict.p_first for j in mine])
            if chosen is not None:
                proposals.append(mine[chosen])
    else:
        proposals = judged
    labelled, n_dropped = [], 0
    for j in proposals:
        p = j.verdict.p_first
        if p is None:
            continue
        if p == 0.5 or quality.confidence(p) < config.min_confidence:
            n_dropped += 1
        else:
            labelled.append(j)
    return labelled, n_dropped


def build_report(judged: list[_Judged], labelled: list[_Judged], n_dropped: int, items: list[Item],
                 config: LabelConfig, *, judge, cache, seconds: float, n_skipped: int, sampled: bool) -> dict:
    """label_report.json without the gold part: counts over all judged pairs, quality over the parsed ones."""
    parsed = [j for j in judged if j.verdict.p_first is not None]
    confidences = [quality.confidence(j.verdict.p_first) for j in parsed]
    n_pairs = len(labelled)
    return {
        "n_prompts": len(items), "n_candidates": sum(len(item.candidates) for item in items),
        "n_judged": len(judged), "n_unparsed": len(judged) - len(parsed), "n_skipped": n_skipped,
        "n_pairs": n_pairs, "n_dropped": n_dropped,
        "dropped_share": n_dropped / (n_pairs + n_dropped) if n_pairs + n_dropped else 0.0,
        "position_consistency": quality.position_consistency([j.verdict.consistent for j in parsed]),
        "tie_rate": quality.tie_rate(confidences), "mean_confidence": quality.mean(confidences),
        "verdict_mass": quality.verdict_mass([j.verdict.details for j in judged]),
        "items_per_s": len(judged) / seconds if judged and seconds > 0 else None, "judge_seconds": seconds,
        "judge": judge.name, "judge_kind": judge.kind, "template_sha": judge.template_sha,
        "pairing": config.pairing, "debias": config.debias, "min_confidence": config.min_confidence,
        "sampled": sampled, "cache_hits": cache.hits, "cache_misses": cache.misses,
    }


def _agreement(judged: list[_Judged], items: list[Item]) -> dict:
    firsts = [items[j.item].candidates[j.pair[0]] for j in judged]
    seconds = [items[j.item].candidates[j.pair[1]] for j in judged]
    return quality.gold_agreement([j.verdict.p_first for j in judged],
                                  [items[j.item].gold[j.pair[0]] for j in judged],
                                  [items[j.item].gold[j.pair[1]] for j in judged], firsts, seconds)
