"""`rlhf eval`: did alignment work, at what KL, and is the reward being gamed?

    rlhf eval policies=[runs/grpo] checkpoints=true data=prompts.jsonl scorers.gold=rules.py:correct \\
              proxy=runs/reward/final num_samples=4

For the reference (first, named "reference") and then every policy, on the same prompts and the
same per-prompt seeds:

1. sample `num_samples` completions of each prompt (sample g of prompt i draws the same random
   numbers for every policy: common random numbers make the comparisons less noisy);
2. score them with every scorer (`scorers`, plus `proxy` under the name "proxy"); a None is
   counted (`n_none`), never averaged in;
3. KL(pi || ref) per completion: sum_t log pi(y_t) - log ref(y_t) over the policy's own samples,
   both log-probs from one forward each at the sampling temperature (`metrics.sequence_kl`); the
   reference against itself reuses the very same log-probs, so its KL is exactly 0;
4. win rate against the reference's completion of the same prompt and sample index, per scorer,
   ties half, with a 95% Wilson interval (`metrics.win_rate`);
5. length, share truncated, distinct-1/2, and over-optimisation flags along each run's curve
   (`metrics.overoptimisation`: proxy up while gold down, Gao et al. 2022, arXiv 2210.10760).

Best-of-N, the classic baseline (Stiennon et al. 2020, arXiv 2009.01325; Gao et al. 2022): the
policy spec `bon:N` (it needs `proxy`) draws N completions from the reference for each prompt and
sample index and keeps the one the proxy scores highest (the first on a tie), which every scorer
then scores like any policy's sample. Candidate 0 is the reference's own sample (the same seed),
so `bon:1` is the reference; candidates 1..N-1 have their own seeds (`sample_seed`) and are shared
by every `bon:` point of a call, so `bon:4` costs 3 more reference samplings of the prompts and
`bon:16` after it 12 more. Its KL is not estimated but the analytic log N - (N-1)/N
(`metrics.best_of_n_kl`; exact for distinct samples, an upper bound when they repeat, e.g. at
temperature 0), in eval.json as {"mean", "se": 0.0, "analytic": true}; its samples' own "kl" is
None. The `bon:` points come after the other policies, by N, as one curve for the
over-optimisation flags.

Output: `output_dir/eval.json` (DESIGN.md "Labelling, evaluation and the demo"), one
`output_dir/policies/<name>.json` per policy (a rerun with the same settings skips the policies
already done), a printed table, and `output_dir/report.html`.

Departures / choices:
- standard errors are clustered by prompt (`metrics.mean_se`): the num_samples completions of one
  prompt are not independent;
- with top_k / top_p the log-probs are those of the tempered distribution before truncation (as in
  training, see `rlhf.rollout.Rollout`), so the KL is the training-time estimate; at temperature 0
  (greedy) it is the log-ratio of the greedy completions, not a KL;
- prompts are rendered and tokenised once, with the reference's tokenizer, for every policy (a
  policy with another vocabulary is refused: its KL would be meaningless);
- a checkpoint (`checkpoints/step-N/`) stores the trainable weights only: it is loaded into the
  run's starting model (`model` of its config.yaml), with its LoRA adapters merged when it has any.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Literal, Sequence

import torch
import yaml
from tqdm.auto import tqdm

from rlhf.config import ConfigError, from_dict, option
from rlhf.data.errors import DataError
from rlhf.data.prompts import tokenize_prompts
from rlhf.eval import metrics
from rlhf.models import (DEFAULT_MODEL, LoraConfig, ModelError, apply_lora, is_peft_model, load_causal_lm,
                         eval_mode, load_tokenizer, resolve_model_dir, supports_branches)
from rlhf.models.forward import CausalLMLogprobs
from rlhf.models.reference import weights_fingerprint
from rlhf.recipes._online import OnlineConfig, forward_rows, generation_config, prompt_seed, token_logprobs
from rlhf.recipes._shared import read_rows
from rlhf.rewards import RewardError, resolve_reward
from rlhf.rewards import spec as reward_spec
from rlhf.rewards.base import source_name
from rlhf.rollout import GenerationConfig, HFRollout, Rollout, sampling_temperature

logger = logging.getLogger(__name__)

SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "stop_strings", "max_prompt_length")
PROXY = "proxy"
REFERENCE = "reference"


@dataclass
class EvalConfig:
    """What `rlhf eval` takes: policies, a reference, prompts, scorers, sampling settings."""

    policies: list[str] = option([], "model specs or run directories (a run: its final/, and with checkpoints=true every checkpoints/step-N/), or bon:N, the best of N reference samples by the proxy (needs proxy=)")
    checkpoints: bool = option(False, "also evaluate every complete checkpoints/step-N/ of each run directory, as '<run>@step-N'")
    ref_model: str | None = option(None, "reference model spec; default: the first run's own reference (its config.yaml ref_model, else model), else smollm2-135m-instruct")
    data: str | None = option(None, "held-out prompt rows {'prompt': P, ...} (JSONL / Parquet / datasets dir); extra columns reach the scorers")
    max_prompts: int = option(0, "evaluate on the first N prompt rows only (0: all)")
    scorers: dict[str, str] = option({}, "name -> reward source spec, e.g. scorers.gold=rules.py:correct (reward model dir, module:fn, judge:<model>, URL)")
    proxy: str | None = option(None, "the reward optimised in training (reward spec), scored as 'proxy' to flag over-optimisation against gold")
    num_samples: int = option(1, "completions per prompt and policy")
    max_new_tokens: int | None = option(None, "longest completion in tokens; default: the first run's, else 64")
    temperature: float | None = option(None, "sampling temperature; default: the first run's, else 1.0")
    top_p: float | None = option(None, "nucleus sampling threshold; default: the first run's, else 1.0")
    top_k: int | None = option(None, "sample from the k most likely tokens (0 disables); default: the first run's, else 0")
    stop_strings: list[str] | None = option(None, "a completion also ends at any of these; default: the first run's, else none")
    max_prompt_length: int | None = option(None, "longest prompt in tokens; default: the first run's, else 512")
    prompt_truncation: Literal["error", "drop"] = option("error", "a longer prompt is an error, or dropped (counted)")
    seed: int = option(0, "sampling seed: prompt i's samples use the same seed for every policy")
    batch_size: int = option(8, "prompts sampled per batch")
    resume: bool = option(True, "skip the policies that output_dir/policies/ holds for the same settings (false: recompute all)")
    output_dir: str = option("runs/eval", "where eval.json, report.html and policies/<name>.json are written")
    dtype: Literal["float32", "bfloat16", "float16"] = option("float32", "parameter dtype of the policies and the reference")
    progress: bool = option(True, "show a progress bar")
    trust_remote_code: bool = option(False, "allow model code from the model directory to run")


@dataclass
class _Policy:
    """One point to evaluate; `load` builds its model (None: the reference model itself)."""

    name: str
    model: str  # what eval.json's "model" says: a directory, a spec, or "<memory>"
    load: Callable[[], torch.nn.Module] | None
    tokenizer_dir: Path | None  # whose vocabulary must equal the reference's (None: in memory, checked by the caller)
    stamp: object  # identity of its weights, for the resume check
    curve: str  # points of one curve (a run's checkpoints, then its final) are compared in order
    best_of: int = 0  # N of a bon:N point (the reference's samples, the proxy's favourite of N); 0: a model


# ---------------------------------------------------------------------------------------------
# The call


def evaluate(config: EvalConfig, *, data=None, policies: dict[str, torch.nn.Module] | None = None,
             ref_model: torch.nn.Module | None = None, tokenizer=None, scorers: dict | None = None) -> dict:
    """Evaluate the policies against the reference; write eval.json and report.html; return eval.json's dict.

    In-memory objects replace their config keys: `data` (rows or a `datasets.Dataset`) for
    config.data, `policies` ({name: model}) for config.policies, `ref_model` (with `tokenizer`, else
    config.ref_model's tokenizer) for config.ref_model, `scorers` ({name: spec or callable}; the key
    "proxy" is the proxy) for config.scorers and config.proxy.
    """
    _check_numbers(config)
    out_dir = Path(config.output_dir)

    # step 1. everything that can be wrong in the input, before any model loads
    scorer_specs = _scorer_specs(config, scorers)
    rows = _prompt_rows(config, data)
    columns = sorted({k for row in rows for k in row.data if k != "prompt"})
    for name, spec in scorer_specs.items():
        _check_reward_spec(name, spec, columns)
    runs, points = _resolve_policies(config, policies, proxy=scorer_specs.get(PROXY))
    sampling = _sampling_settings(config, [run_config for _, run_config in runs])
    if sampling["temperature"] == 0 and any(p.best_of > 1 for p in points):
        logger.warning("temperature=0: best-of-N's candidates are all the greedy completion; its analytic KL "
                       "log N - (N-1)/N is an upper bound there, the true KL is 0")
    generation = _generation_config(sampling, config.num_samples)
    ref_spec, ref_dir = _reference_spec(config, runs, ref_model)
    if tokenizer is None:
        if ref_dir is None:
            raise ConfigError("ref_model is in memory: pass tokenizer= as well, or set ref_model=SPEC for its tokenizer")
        tokenizer = load_tokenizer(ref_dir, trust_remote_code=config.trust_remote_code)
    _check_tokenizers(points, tokenizer, ref_spec, config.trust_remote_code)
    examples, stats = tokenize_prompts(rows, tokenizer, max_length=sampling["max_prompt_length"],
                                       truncation=config.prompt_truncation)
    if not examples:
        raise DataError(f"{config.data or '<memory>'}: every prompt is longer than max_prompt_length "
                        f"{sampling['max_prompt_length']}; nothing to evaluate")
    if stats.dropped:
        logger.info("prompts: %s", stats)

    settings = {"ref_model": ref_spec, "data": str(config.data) if data is None else "<memory>",
                "n_prompts": len(examples), "num_samples": config.num_samples, **sampling,
                "prompt_truncation": config.prompt_truncation, "seed": config.seed,
                "scorers": {k: v if isinstance(v, str) else source_name(v) for k, v in scorer_specs.items()},
                "checkpoints": config.checkpoints, "dtype": config.dtype}
    reference = _Policy(REFERENCE, ref_spec, None, None,
                        weights_fingerprint(ref_model) if ref_model is not None else _dir_stamp(ref_dir), REFERENCE)
    everything = [reference] + points
    base = {"settings": settings, "prompts": _examples_digest(examples), "reference": reference.stamp,
            "scorer_files": {k: _spec_stamp(v) for k, v in scorer_specs.items()}}
    fingerprints = {p.name: _fingerprint({**base, "policy": p.stamp, "name": p.name}) for p in everything}
    done = {p.name: record for p in everything if config.resume
            and (record := _read_record(out_dir, p.name, fingerprints[p.name])) is not None}
    todo = [p for p in everything if p.name not in done]
    for name in done:
        logger.info("%s: already evaluated with these settings (%s); skipped", name, _record_path(out_dir, name))

    # step 2. sample, score and measure each policy not done yet (the reference model loads once; a bon:N
    # point keeps the proxy's favourite of N samples of it, the candidates shared by every bon: point)
    if todo:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        dtype = getattr(torch, config.dtype)
        sources = {name: resolve_reward(spec, columns=columns, device=str(device)) for name, spec in scorer_specs.items()}
        ref = ref_model if ref_model is not None else load_causal_lm(ref_dir, dtype=dtype,
                                                                    trust_remote_code=config.trust_remote_code)
        ref = ref.to(device)
        ref_logprobs = CausalLMLogprobs(ref, temperature=sampling_temperature(sampling["temperature"]))
        bar = tqdm(total=_planned_batches(todo, len(examples), config.batch_size), desc="eval",
                   disable=not config.progress, dynamic_ncols=True)
        measure = partial(sample_and_measure, ref_logprobs=ref_logprobs, tokenizer=tokenizer, examples=examples,
                          generation=generation, seed=config.seed, batch_size=config.batch_size,
                          on_batch=lambda: bar.update(1))
        pool: dict[int, list[dict]] = {}  # best-of-N candidate k >= 1 -> its samples, shared by every bon:N
        try:
            for point in todo:
                bar.set_postfix_str(point.name)
                if point.best_of:
                    candidates = _candidate_sets(point.best_of, done[REFERENCE]["samples"], pool,
                                                 lambda ks: measure(ref, candidates=ks),
                                                 lambda xs: _score(xs, examples, {PROXY: sources[PROXY]}))
                    samples = best_of_n(candidates)
                    _score(samples, examples, sources, known=(PROXY,))
                    extra = {"method": "best-of-n", "best_of": point.best_of}
                    kl = {"mean": metrics.best_of_n_kl(point.best_of), "se": 0.0, "analytic": True}
                else:
                    model = ref if point.load is None else point.load().to(device)
                    samples = measure(model)
                    _score(samples, examples, sources)
                    extra, kl = {}, None
                    del model
                record = {"fingerprint": fingerprints[point.name], "name": point.name, "model": point.model,
                          **extra, **policy_summary(samples, list(scorer_specs), kl=kl), "samples": samples}
                _write_json(_record_path(out_dir, point.name), record)
                done[point.name] = record
        finally:
            bar.close()

    # step 3. compare with the reference: win rates, over-optimisation along each curve
    results = {"settings": settings,
               "policies": compare([done[p.name] for p in everything], [p.curve for p in everything],
                                   list(scorer_specs))}
    agreement = proxy_agreement(results["policies"], list(scorer_specs))
    if agreement is not None:
        results["proxy_agreement"] = agreement
    _write_json(out_dir / "eval.json", results)
    print(format_table(results))
    if agreement is not None and agreement["agreement"] is not None:
        print(f"proxy agreement with {agreement['gold']}: {agreement['agreement']:.3f} of {agreement['pairs']} pairs "
              "of samples ordered alike (0.5: none of gold's order)")
    from rlhf.eval.report import write_report

    report = write_report(out_dir / "report.html", eval_results=results,
                          run_dirs=[run for run, _ in runs if (run / "metrics.jsonl").is_file()], label_reports=[])
    print(f"rlhf eval: wrote {out_dir / 'eval.json'} and {report}")
    return results


# ---------------------------------------------------------------------------------------------
# Sampling, log-probs, scores


def sample_seed(seed: int, position: int, candidate: int = 0) -> int:
    """The sampling seed of prompt `position` (its place in the examples): `prompt_seed(seed, 0,
    position)` for every policy and for best-of-N's candidate 0, so that candidate is the
    reference's own sample; best-of-N's candidates 1..N-1 hash (seed, position, candidate), a
    stream no other prompt or candidate shares."""
    if candidate == 0:
        return prompt_seed(seed, 0, position)
    digest = hashlib.sha256(f"best-of-n/{seed}/{position}/{candidate}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**63


@torch.no_grad()
def sample_and_measure(model: torch.nn.Module, ref_logprobs: CausalLMLogprobs, tokenizer, examples: list[dict],
                       generation: GenerationConfig, *, seed: int, batch_size: int, candidates: Sequence[int] = (0,),
                       on_batch: Callable[[], None] = lambda: None) -> list[dict]:
    """Sample `generation.num_generations` completions of every example from `model` and measure each.

    Prompt i (its place in `examples`) samples with seed `sample_seed(seed, i, k)` for each k in
    `candidates` (0 alone for a policy; best-of-N's further candidates 1..N-1), whatever the batch;
    the (candidate, prompt) pairs are sampled `batch_size` at a time, candidate-major. Returns one
    dict per completion, candidate-major then prompt-major: prompt_index, sample_index, prompt,
    completion, length (tokens), truncated, kl (`metrics.sequence_kl` of the policy's log-probs,
    those the sampler drew with, and the reference's, from a forward pass; both at the sampling
    temperature). When `model` is the reference's own model the KL is exactly 0 and no forward
    pass runs. The sampler's log-probs spare one forward pass per policy; they equal a forward
    pass's to rounding (tests/eval: under 1e-4 nats per completion for the same weights).
    """
    is_reference = model is ref_logprobs.model
    device = next(model.parameters()).device
    items = [(i, k) for k in candidates for i in range(len(examples))]  # (prompt position, candidate)
    samples = []
    with eval_mode(model, ref_logprobs.model):  # dropout off; the caller's modes come back after
        pack = Rollout.packed_groups if supports_branches(ref_logprobs.model) else Rollout.packed_sequences
        backend = HFRollout(model, tokenizer, generator=torch.Generator(device=device).manual_seed(seed))
        for start in range(0, len(items), batch_size):
            samples.extend(_measure_batch(backend, ref_logprobs, examples, items[start:start + batch_size],
                                          generation, seed=seed, pack=pack, is_reference=is_reference))
            on_batch()
    return samples


def _measure_batch(backend: HFRollout, ref_logprobs: CausalLMLogprobs, examples: list[dict],
                   items: list[tuple[int, int]], generation: GenerationConfig, *, seed: int, pack,
                   is_reference: bool) -> list[dict]:
    """The samples of `items`, (prompt position, candidate) pairs (see `sample_and_measure`)."""
    samples = []
    seeds = [sample_seed(seed, i, k) for i, k in items]
    rollout = backend.generate([examples[i]["prompt_ids"] for i, _ in items], generation, seeds=seeds)
    mask = rollout.response_mask.bool()
    if is_reference:
        kl = [0.0] * mask.shape[0]
    else:
        every = [list(range(len(items)))]
        ref = forward_rows(partial(token_logprobs, ref_logprobs), rollout, every, pack)  # (B, T)
        kl = [metrics.sequence_kl(rollout.logprobs[b][mask[b]].double().tolist(), ref[b][mask[b]].double().tolist())
              for b in range(mask.shape[0])]
    for b in range(mask.shape[0]):
        index, g = divmod(b, generation.num_generations)
        position = items[index][0]
        samples.append({
            "prompt_index": position, "sample_index": g, "prompt": examples[position]["prompt"],
            "completion": rollout.completions[b], "length": int(mask[b].sum()),
            "truncated": bool(rollout.truncated[b]), "kl": kl[b],
        })
    return samples


def _planned_batches(todo: list[_Policy], n_examples: int, batch_size: int) -> int:
    """The sampling batches `evaluate` will run for `todo` (its progress bar's total): one pass over
    the prompts per model, and per bon:N the candidates no earlier bon: point drew."""
    batches, have = 0, 1  # candidate 0 is the reference's own sample
    for point in todo:
        if point.best_of:
            batches += math.ceil(max(0, point.best_of - have) * n_examples / batch_size)
            have = max(have, point.best_of)
        else:
            batches += math.ceil(n_examples / batch_size)
    return batches


def _candidate_sets(n: int, reference_samples: list[dict], pool: dict[int, list[dict]],
                    sample: Callable[[list[int]], list[dict]],
                    score_proxy: Callable[[list[dict]], None]) -> list[list[dict]]:
    """Best-of-n's n candidate sets, each one sample per (prompt, sample index) in the reference's
    order: set 0 the reference's own samples (drawn with candidate 0's seeds, already scored), sets
    1..n-1 from `pool`; those not there yet are sampled (`sample(candidates)`, one call for all),
    proxy-scored (`score_proxy`, one call) and added to it, for the next bon: point to reuse."""
    missing = [k for k in range(1, n) if k not in pool]
    if missing:
        drawn = sample(missing)
        score_proxy(drawn)
        size = len(reference_samples)
        if len(drawn) != size * len(missing):
            raise ValueError(f"best-of-{n}: {len(drawn)} candidate samples, expected {size} x {len(missing)}")
        for j, k in enumerate(missing):
            pool[k] = drawn[j * size:(j + 1) * size]
    return [reference_samples] + [pool[k] for k in range(1, n)]


def best_of_n(candidates: list[list[dict]]) -> list[dict]:
    """Best-of-N's samples from N candidate sets (`sample_and_measure`'s dicts with proxy scores,
    all in the same (prompt, sample index) order): at each position, the candidate with the highest
    "proxy" score, the first on a tie; a None or non-finite score loses to any number (and if all
    are None, candidate 0 is kept). Each is a copy with "candidate" (which k won), its proxy score
    alone in "scores", and "kl" None: only the policy's KL is known (`metrics.best_of_n_kl`)."""
    def rank(sample: dict) -> tuple[bool, float]:
        value = metrics.finite_or_none(sample["scores"].get(PROXY))
        return (value is not None, value if value is not None else 0.0)

    out = []
    for group in zip(*candidates, strict=True):
        if len({(x["prompt_index"], x["sample_index"]) for x in group}) != 1:
            raise ValueError("best_of_n: the candidate sets are not in the same (prompt, sample index) order")
        k = max(range(len(group)), key=lambda k: rank(group[k]))  # max keeps the first of equals
        out.append({**group[k], "kl": None, "candidate": k, "scores": {PROXY: group[k]["scores"].get(PROXY)}})
    return out


def _score(samples: list[dict], examples: list[dict], sources: dict, *, known: tuple[str, ...] = ()) -> None:
    """samples[j]["scores"] = {scorer: float | None}, every scorer called once on all samples, but
    those named in `known`: the samples already hold those scores (best-of-N's proxy scores, the
    ones it chose by), kept as they are."""
    kept = [{name: (sample.get("scores") or {}).get(name) for name in known} for sample in samples]
    for sample in samples:
        sample["scores"] = {}
    if not samples:
        return
    prompts = [s["prompt"] for s in samples]
    completions = [s["completion"] for s in samples]
    names = sorted({k for e in examples for k in e["columns"]})
    columns = {k: [examples[s["prompt_index"]]["columns"].get(k) for s in samples] for k in names}
    for name, source in sources.items():
        values = [own[name] for own in kept] if name in known else source(prompts, completions, **columns)
        for sample, value in zip(samples, values):
            sample["scores"][name] = value


def policy_summary(samples: list[dict], scorers: list[str], *, kl: dict | None = None) -> dict:
    """The per-policy numbers of eval.json that need no other policy: scores, KL, length, diversity.

    kl: the policy's KL when it is known otherwise (best-of-N's analytic value); else the mean
    (and clustered se) of its samples' estimates."""
    groups = [s["prompt_index"] for s in samples]
    scores = {}
    for name in scorers:
        kept = [(s["scores"][name], s["prompt_index"]) for s in samples if s["scores"].get(name) is not None]
        mean, se = metrics.mean_se([v for v, _ in kept], [g for _, g in kept])
        scores[name] = {"mean": mean, "se": se, "n": len(kept), "n_none": len(samples) - len(kept)}
    if kl is None:
        kl_mean, kl_se = metrics.mean_se([s["kl"] for s in samples], groups)
        kl = {"mean": kl_mean, "se": kl_se}
    length_mean, length_se = metrics.mean_se([s["length"] for s in samples], groups)
    completions = [s["completion"] for s in samples]
    return {"scores": scores, "kl": kl,
            "length": {"mean": length_mean, "se": length_se},
            "truncated": sum(s["truncated"] for s in samples) / len(samples) if samples else None,
            "distinct_1": metrics.distinct_n(completions, 1), "distinct_2": metrics.distinct_n(completions, 2),
            "n_samples": len(samples)}


def compare(records: list[dict], curves: list[str], scorers: list[str]) -> list[dict]:
    """eval.json's "policies": each record with its win rates against the first (the reference)
    and, with a proxy scorer, its over-optimisation flag against the point before it on its curve."""
    reference = records[0]
    golds = [s for s in scorers if s != PROXY]
    gold = "gold" if "gold" in golds else (golds[0] if golds else None)
    flags: dict[int, dict | None] = {}
    mean_se = lambda i, s: (records[i]["scores"][s]["mean"], records[i]["scores"][s]["se"])  # noqa: E731
    if PROXY in scorers and gold is not None:
        for curve in dict.fromkeys(curves[1:]):
            path = [0] + [i for i in range(1, len(records)) if curves[i] == curve]
            marks = metrics.overoptimisation([mean_se(i, PROXY) for i in path], [mean_se(i, gold) for i in path])
            for previous, i, mark in zip(path, path[1:], marks[1:]):
                flags[i] = None if mark is None else {**mark, "vs": records[previous]["name"], "gold": gold}
    out = []
    for i, record in enumerate(records):
        if len(record["samples"]) != len(reference["samples"]):
            raise ValueError(f"{record['name']}: {len(record['samples'])} samples, the reference has "
                             f"{len(reference['samples'])}")
        win = {s: metrics.win_rate([x["scores"].get(s) for x in record["samples"]],
                                   [x["scores"].get(s) for x in reference["samples"]]).as_dict() for s in scorers}
        entry = {k: v for k, v in record.items() if k not in ("fingerprint", "samples")}
        out.append({**entry, "win_rate": win, "overoptimisation": flags.get(i), "samples": record["samples"]})
    return out


def proxy_agreement(policies: list[dict], scorers: list[str]) -> dict | None:
    """How well the proxy orders the samples of every policy as the gold scorer does
    (`metrics.pairwise_agreement` over all of them): {"gold", "agreement", "pairs"}; None
    without both a proxy and a gold scorer."""
    golds = [s for s in scorers if s != PROXY]
    if PROXY not in scorers or not golds:
        return None
    gold = "gold" if "gold" in golds else golds[0]
    samples = [x for p in policies for x in p["samples"]]
    rate, pairs = metrics.pairwise_agreement([x["scores"].get(gold) for x in samples],
                                             [x["scores"].get(PROXY) for x in samples])
    return {"gold": gold, "agreement": rate, "pairs": pairs}


def format_table(results: dict) -> str:
    """policy | each scorer mean ± se | win rate [low, high] per scorer | KL ± se | length | truncated."""
    policies = results["policies"]
    scorers = list(results["settings"]["scorers"])
    fmt = lambda x, d=3: "-" if x is None else f"{x:.{d}f}"  # noqa: E731
    pm = lambda v: f"{fmt(v['mean'])} ± {fmt(v['se'])}"  # noqa: E731
    header = ["policy"] + scorers + [f"win({s})" for s in scorers] + ["KL", "length", "truncated", "flag"]
    rows = []
    for p in policies:
        win = [p["win_rate"][s] for s in scorers]
        flag = "over-opt" if (p.get("overoptimisation") or {}).get("flagged") else ""
        rows.append([p["name"]] + [pm(p["scores"][s]) for s in scorers]
                    + [f"{fmt(w['rate'], 2)} [{fmt(w['low'], 2)}, {fmt(w['high'], 2)}]" for w in win]
                    + [f"{fmt(p['kl']['mean'])} analytic" if p["kl"].get("analytic") else pm(p["kl"]),
                       fmt(p["length"]["mean"], 1),
                       "-" if p["truncated"] is None else f"{100 * p['truncated']:.0f}%", flag])
    widths = [max(len(str(r[c])) for r in [header] + rows) for c in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


# ---------------------------------------------------------------------------------------------
# Inputs: checks before any model loads


def _check_numbers(config: EvalConfig) -> None:
    for key in ("num_samples", "batch_size"):
        if getattr(config, key) < 1:
            raise ConfigError(f"config key '{key}': expected a positive integer, got {getattr(config, key)}")
    if config.max_prompts < 0:
        raise ConfigError(f"config key 'max_prompts': expected 0 (all) or a positive integer, got {config.max_prompts}")


def _scorer_specs(config: EvalConfig, scorers: dict | None) -> dict:
    specs = dict(config.scorers if scorers is None else scorers)
    if config.proxy is not None and (scorers is None or PROXY not in scorers):
        if PROXY in specs:
            raise ConfigError("a scorer is named 'proxy' and proxy= is set too; 'proxy' is the name proxy= scores under")
        specs[PROXY] = config.proxy
    for name in specs:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"scorer name {name!r}: use letters, digits, '_', '-' or '.'")
    return specs


def _spec_parts(spec) -> list:
    """The single specs a (possibly weighted) reward spec sums, as resolve_reward splits it.

    Uses rlhf.rewards.spec's private parsers (_list_items, _weighted_string, _WEIGHTED): the
    spec module has no public "split without building" entry point."""
    if isinstance(spec, (list, tuple)):
        return [part for part, _ in reward_spec._list_items(spec)]
    if isinstance(spec, str) and reward_spec._WEIGHTED.match(spec):
        return [part for part, _ in reward_spec._weighted_string(spec)]
    return [spec]


def _check_reward_spec(name: str, spec, columns: list[str]) -> None:
    """resolve_reward's cheap first pass (form, paths, imports, columns), for every part of `spec`,
    without building anything: a bad scorer fails before any reward model or policy loads."""
    if callable(spec) and not isinstance(spec, (str, Path)):
        return
    try:
        for part in _spec_parts(spec):
            reward_spec._plan_single(part, columns, "cpu")
    except RewardError as error:
        raise RewardError(f"scorer {name!r}: {error}") from None


def _prompt_rows(config: EvalConfig, data) -> list:
    source = data if data is not None else config.data
    if source is None:
        raise ConfigError("no prompts: set data=PATH (prompt rows {'prompt': P, ...}) or pass data=")
    rows = read_rows(source, "prompt")
    return rows[: config.max_prompts] if config.max_prompts else rows


def _is_run_dir(path: Path) -> bool:
    """A training output directory (not a model directory): config.yaml, final/, checkpoints/ or metrics.jsonl."""
    return path.is_dir() and not (path / "config.json").is_file() and any(
        (path / name).exists() for name in ("config.yaml", "final", "checkpoints", "metrics.jsonl"))


def _read_run_config(run: Path) -> dict:
    file = run / "config.yaml"
    if not file.is_file():
        return {}
    try:
        loaded = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{file}: not valid YAML: {error}") from None
    return loaded if isinstance(loaded, dict) else {}


def _resolve_policies(config: EvalConfig, in_memory: dict | None, *,
                      proxy=None) -> tuple[list[tuple[Path, dict]], list[_Policy]]:
    """(run directories with their config.yaml, the points to evaluate after the reference).

    `proxy`: the proxy's reward spec (or callable), which bon:N points select by and need."""
    dtype = getattr(torch, config.dtype)
    load_dir = lambda model_dir: partial(load_causal_lm, model_dir, dtype=dtype,  # noqa: E731
                                         trust_remote_code=config.trust_remote_code)
    runs, points, best = [], [], []
    if in_memory is not None:
        for name, model in in_memory.items():
            points.append(_Policy(str(name), "<memory>", lambda m=model: m, None, weights_fingerprint(model), str(name)))
        specs = []
    else:
        specs = config.policies
    if in_memory is None and not specs:
        raise ConfigError("no policies: set policies=[SPEC_OR_RUN_DIR, ...]")
    for spec in specs:
        n = _best_of(spec)
        if n is not None:
            if proxy is None:
                raise ConfigError(f"policy {spec!r}: best-of-N keeps the proxy's favourite of N reference samples; "
                                  "set proxy=SPEC (the reward to select by)")
            stamp = ["best-of-n", n, proxy if isinstance(proxy, str) else source_name(proxy), _spec_stamp(proxy)]
            best.append(_Policy(f"bon:{n}", f"bon:{n}", None, None, stamp, "best-of-n", best_of=n))
            continue
        path = Path(spec).expanduser()
        if _is_run_dir(path):
            final = path / "final"
            if not (final / "config.json").is_file():
                raise ConfigError(f"policy {spec!r} is a run directory with no final/ model (the run has not finished, "
                                  "or was stopped); point at a model directory instead")
            run_config = _read_run_config(path)
            runs.append((path, run_config))
            run_name = path.resolve().name
            if config.checkpoints:
                from rlhf.train.checkpoint import list_checkpoints

                for step, step_dir in list_checkpoints(path / "checkpoints"):
                    load = partial(load_checkpoint, step_dir, run_config, dtype=dtype,
                                   trust_remote_code=config.trust_remote_code)
                    points.append(_Policy(f"{run_name}@step-{step}", str(step_dir), load, final,
                                          [_file_stamp(step_dir / "model.safetensors"), run_config.get("model"),
                                           run_config.get("lora")], str(path)))
            points.append(_Policy(run_name, str(final), load_dir(final), final,
                                  _dir_stamp(final), str(path)))
        else:
            model_dir = resolve_model_dir(spec)
            name = model_dir.parent.name if model_dir.name == "final" else (
                model_dir.name if path.is_dir() else str(spec))
            points.append(_Policy(name, str(spec), load_dir(model_dir), model_dir,
                                  _dir_stamp(model_dir), str(model_dir)))
    points += sorted(best, key=lambda p: p.best_of)  # last, by N: one curve for the over-optimisation flags
    taken = {REFERENCE}
    for point in points:  # unique names: they key the resume files and the report
        base, n = point.name, 1
        while point.name in taken:
            n += 1
            point.name = f"{base}-{n}"
        taken.add(point.name)
    return runs, points


def _best_of(spec) -> int | None:
    """N of a policy spec bon:N; None for any other spec."""
    if not isinstance(spec, str) or not spec.startswith("bon:"):
        return None
    text = spec[len("bon:"):].strip()
    if not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        raise ConfigError(f"policy {spec!r}: expected bon:N with N a whole number >= 1 (the reference samples "
                          "best-of-N draws per completion), e.g. bon:4")
    return int(text)


def load_checkpoint(step_dir: Path, run_config: dict, *, dtype: torch.dtype = torch.float32,
                    trust_remote_code: bool = False) -> torch.nn.Module:
    """The policy of a training checkpoint (`checkpoints/step-N/`) as a plain causal LM.

    A checkpoint's model.safetensors holds the trainable weights of the training module (the
    policy wrapper `model.`, inside PPO's actor-critic `policy.model.`): all of them, or only the
    LoRA adapters. They are loaded into the run's starting model (its config.yaml `model`), with
    adapters applied as its `lora` section says and then merged.
    """
    from safetensors.torch import load_file

    from rlhf.train.checkpoint import load_trainable_state, verify

    verify(step_dir)  # a corrupt checkpoint is named, never evaluated
    model = load_causal_lm(run_config.get("model") or DEFAULT_MODEL, dtype=dtype, trust_remote_code=trust_remote_code)
    state = load_file(str(step_dir / "model.safetensors"))
    prefix = "policy.model." if any(k.startswith("policy.model.") for k in state) else "model."
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not state:
        raise ModelError(f"{step_dir}: model.safetensors holds no policy weights (no '{prefix}' tensors)")
    lora = from_dict(LoraConfig, run_config.get("lora") or {}, prefix="lora.")
    if lora.enabled:
        model = apply_lora(model, lora)
    try:
        load_trainable_state(model, state)
    except ValueError as error:
        raise ModelError(f"{step_dir}: the checkpoint does not fit the run's model "
                         f"{run_config.get('model')!r}: {error}") from None
    return model.merge_and_unload() if is_peft_model(model) else model


def _sampling_settings(config: EvalConfig, run_configs: list[dict]) -> dict:
    """Each sampling key: set in the eval config, else the first run that has it, else the RL default."""
    defaults = OnlineConfig()
    settings = {}
    for key in SAMPLING_KEYS:
        value = getattr(config, key)
        if value is None:
            value = next((c[key] for c in run_configs if c.get(key) is not None), getattr(defaults, key))
            others = {json.dumps(c[key]) for c in run_configs if c.get(key) is not None}
            if len(others) > 1:
                logger.warning("the runs were sampled with different %s; evaluating all with %r (set %s= to choose)",
                               key, value, key)
        settings[key] = list(value) if key == "stop_strings" else value
    if settings["temperature"] == 0:
        logger.warning("temperature=0 (greedy): 'KL' is the log-ratio of the greedy completions, not a KL estimate")
    return settings


def _generation_config(sampling: dict, num_samples: int) -> GenerationConfig:
    """The sampling settings as the recipes' GenerationConfig; an invalid value is a ConfigError."""
    try:
        return generation_config(SimpleNamespace(**sampling, num_generations=num_samples))
    except ValueError as error:
        raise ConfigError(str(error).replace("GenerationConfig.", "config key ")) from None


def _reference_spec(config: EvalConfig, runs: list[tuple[Path, dict]], ref_model) -> tuple[str, Path | None]:
    """(the reference's name in eval.json, its model directory; None when in memory without a spec)."""
    spec = config.ref_model
    if spec is None and ref_model is None:
        first = next((c for _, c in runs if c.get("ref_model") or c.get("model")), {})
        spec = first.get("ref_model") or first.get("model") or DEFAULT_MODEL
    if spec is None:
        return "<memory>", None
    return str(spec), resolve_model_dir(spec)


def _check_tokenizers(points: list[_Policy], tokenizer, ref_spec: str, trust_remote_code: bool) -> None:
    """Every policy's tokenizer has the reference's vocabulary (same tokens, same ids): KL compares
    log-probs of the same token ids, which means nothing across vocabularies."""
    vocab = tokenizer.get_vocab()
    checked: set[Path] = set()
    for point in points:
        if point.tokenizer_dir is None or point.tokenizer_dir in checked:
            continue
        checked.add(point.tokenizer_dir)
        other = load_tokenizer(point.tokenizer_dir, trust_remote_code=trust_remote_code).get_vocab()
        if other != vocab:
            differ = sorted(set(other.items()) ^ set(vocab.items()), key=str)[:3]
            raise ModelError(
                f"policy {point.name!r}: its tokenizer ({point.tokenizer_dir}) differs from the reference's "
                f"({ref_spec}): {len(other)} vs {len(vocab)} tokens, e.g. {differ}; KL to the reference would "
                "be meaningless. Evaluate it against a reference with the same tokenizer (ref_model=...)")


# ---------------------------------------------------------------------------------------------
# Resume files


def _file_stamp(path: Path) -> list:
    stat = path.stat()
    return [path.name, stat.st_size, stat.st_mtime_ns]


def _dir_stamp(path: Path) -> list:
    """Names, sizes and modification times of a model directory's weight and config files."""
    path = Path(path).resolve()
    files = sorted(f for f in path.iterdir() if f.is_file() and (f.suffix in (".safetensors", ".bin") or f.name == "config.json"))
    return [str(path)] + [_file_stamp(f) for f in files]


def _spec_stamp(spec) -> list | None:
    """What a scorer spec reads from disk (a Python file, a model directory), so an edit recomputes."""
    if not isinstance(spec, (str, list, tuple)):
        return None
    stamps = []
    for part in _spec_parts(spec):
        if not isinstance(part, str):
            continue
        part = part.strip()
        target = Path(part.rsplit(":", 1)[0] if ":" in part and not part.startswith(("http", "judge:")) else part)
        if target.is_file():
            stamps.append(_file_stamp(target))
        elif target.is_dir():
            stamps.append(_dir_stamp(target))
    return stamps


def _examples_digest(examples: list[dict]) -> str:
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([e["prompt_ids"], e["columns"]], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _fingerprint(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _record_path(out_dir: Path, name: str) -> Path:
    return out_dir / "policies" / (re.sub(r"[^A-Za-z0-9._@-]", "_", name) + ".json")


def _read_record(out_dir: Path, name: str, fingerprint: str) -> dict | None:
    path = _record_path(out_dir, name)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("fingerprint") == fingerprint else None


def _write_json(path: Path, value: dict) -> None:
    """Write to a private temp file and rename it into place: a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=1, ensure_ascii=False, default=_plain) + "\n")
    os.replace(tmp, path)


def _plain(value):
    """JSON for what prompts and columns may hold beyond JSON types (numpy scalars, dates)."""
    return value.item() if hasattr(value, "item") else str(value)
