"""The one training loop. It never knows which algorithm it runs: a recipe hands it
examples, a collate function and a step function that returns a LossOutput of sums.

Per optimiser step: take the step's global batch (a fixed permutation per epoch, so the
data position is a function of the step number), give this rank its strided share, cut
it into micro-batches, count the loss units (e.g. tokens) over the whole window on every
rank, and scale each micro-batch's summed loss by world_size / global_units. That makes
`batch 8 x accum 1 == batch 1 x accum 8` and `2 ranks == 1 rank` hold exactly up to float
rounding (DDP averages gradients over ranks, hence the world_size factor).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from rlhf.config import diff_configs, to_dict
from rlhf.losses.types import LossOutput
from rlhf.train import checkpoint
from rlhf.train.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    no_sync,
    shard_rows,
    wrap_model,
)
from rlhf.train.loggers import MetricsWriter
from rlhf.train.optim import build_optimizer, build_scheduler

logger = logging.getLogger(__name__)

# Keys that may change between a run and its resumption without changing the maths.
RESUME_FREE_KEYS = {"resume", "progress", "log_every", "report_to", "threads"}

StepFn = Callable[[torch.nn.Module, dict], LossOutput]


class NonFiniteError(RuntimeError):
    """Too many consecutive steps produced a non-finite loss or gradient."""


class StopTraining(Exception):
    """Raised by a callback to end a run early (the last checkpoint stays resumable)."""


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    final_dir: Path | None
    last_metrics: dict = field(default_factory=dict)

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / "metrics.jsonl"


@dataclass
class LoopParts:
    """What a recipe hands the loop."""

    model: torch.nn.Module
    examples: Sequence  # tokenised training examples
    collate: Callable[[list], dict]  # examples -> batch of tensors
    step_fn: StepFn  # (model, batch) -> LossOutput of sums
    count_units: Callable[[dict], int]  # the loss's normaliser in one batch (tokens, pairs, ...)
    save_final: Callable[[torch.nn.Module, Path], None]  # writes final/
    evaluate: Callable[[torch.nn.Module], dict] | None = None
    callbacks: list[Callable[[int, dict], None]] = field(default_factory=list)
    # Online methods build each micro-batch's training tensors first (sample, score, compute
    # advantages) with (model, batch, step, micro_index) -> batch, before units are counted.
    # A prepared batch may carry "stats": {name: (sum, count)}, logged as sum / count; a name
    # starting with "time/" is seconds, logged as the step's total (mean over processes).
    prepare: Callable[[torch.nn.Module, dict, int, int], dict] | None = None
    # Recipe state that must survive a resume (e.g. a KL controller): name -> object with
    # state_dict() / load_state_dict(), saved as JSON in the checkpoint.
    stateful: dict = field(default_factory=dict)
    # Several optimiser updates per step (PPO epochs x minibatches over one batch of rollouts):
    # (prepared micro-batches, step) -> one list of micro-batches per update. Metrics are averaged
    # over the updates; `updates_per_step` must match, for the learning-rate schedule.
    plan_updates: Callable[[list[dict], int], list[list[dict]]] | None = None
    updates_per_step: int = 1
    # Recipe bookkeeping after each step, from the step's global metrics (e.g. the adaptive KL
    # controller); runs before logging and checkpointing, and may add metrics to the dict.
    after_step: Callable[[int, dict], None] | None = None


def count_tokens(batch: dict) -> int:
    """Non-pad tokens in a batch (what throughput counts)."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


class DataOrder:
    """Which example indices make up each global batch; a pure function of (seed, step)."""

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        if num_examples < batch_size:
            raise ValueError(f"batch_size {batch_size} is larger than the {num_examples} training examples")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        # An incomplete last batch is left out: each epoch reshuffles, so no row is lost for good.
        self.steps_per_epoch = num_examples // batch_size
        self._cache: tuple[int, list[int]] | None = None

    def _permutation(self, epoch: int) -> list[int]:
        if self._cache is None or self._cache[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = (epoch, torch.randperm(self.num_examples, generator=generator).tolist())
        return self._cache[1]

    def batch(self, step: int) -> tuple[int, list[int]]:
        epoch, index = divmod(step, self.steps_per_epoch)
        perm = self._permutation(epoch)
        return epoch, perm[index * self.batch_size : (index + 1) * self.batch_size]


def micro_batches(rows: list[int], grad_accum: int) -> list[list[int]]:
    size = max(math.ceil(len(rows) / grad_accum), 1)
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def total_steps(config, steps_per_epoch: int) -> int:
    return config.max_steps if config.max_steps > 0 else config.epochs * steps_per_epoch


def _all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def check_resume(config) -> Path | None:
    """The checkpoint a run will resume from, refusing a changed config. Cheap: recipes call it
    before any data or model work so a mistake surfaces at once."""
    if not config.resume:
        return None
    ckpt_root = Path(config.output_dir) / "checkpoints"
    resume_from = checkpoint.newest_checkpoint(ckpt_root)
    if resume_from is None:
        logger.warning("resume=true but %s holds no complete checkpoint: starting from step 0", ckpt_root)
        return None
    saved = checkpoint.saved_config(resume_from)
    changed = [k for k in diff_configs(saved, to_dict(config)) if k.split(".")[0] not in RESUME_FREE_KEYS]
    if changed:
        raise ValueError(
            f"cannot resume from {resume_from}: the config differs in {', '.join(changed)} "
            "(start a new output_dir, or restore those values)"
        )
    return resume_from


def run(config, parts: LoopParts, ctx: DistContext) -> TrainResult:
    """Train `parts.model` per `config`; returns where everything was written."""
    output_dir = Path(config.output_dir)
    config_dict = to_dict(config)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    if config.batch_size < ctx.world_size:
        raise ValueError(f"batch_size {config.batch_size} is smaller than the {ctx.world_size} processes")

    order = DataOrder(len(parts.examples), config.batch_size, config.seed)
    n_steps = total_steps(config, order.steps_per_epoch)
    resume_from = check_resume(config)
    ckpt_root = output_dir / "checkpoints"
    if ctx.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(config_dict, sort_keys=False))

    checkpoint.seed_everything(config.seed + ctx.rank)  # dropout and sampling; a resumed run restores its own
    model = parts.model
    model.train()
    ddp_model = wrap_model(model, ctx)
    optimizer = build_optimizer(model.parameters(), config)
    scheduler = build_scheduler(optimizer, config, n_steps * parts.updates_per_step)

    start_step, nonfinite_in_row, nonfinite_total = 0, 0, 0
    if resume_from is not None:
        state = checkpoint.load(resume_from, model=model, optimizer=optimizer, scheduler=scheduler, rank=ctx.rank)
        start_step = state["step"]
        nonfinite_in_row, nonfinite_total = state["nonfinite_in_row"], state["nonfinite_total"]
        for name, obj in parts.stateful.items():
            obj.load_state_dict(state["recipe"][name])
        logger.info("resumed from %s at step %d", resume_from, start_step)
    barrier(ctx)

    writer = MetricsWriter(output_dir, resume_step=start_step, report_to=config.report_to, run_config=config_dict) if ctx.is_main else None
    bar = tqdm(total=n_steps, initial=start_step, desc=output_dir.name, disable=not (ctx.is_main and config.progress), dynamic_ncols=True)
    last: dict = {}
    trainable = [p for p in model.parameters() if p.requires_grad]

    def save(step: int) -> None:
        if not _all_finite(model):
            raise NonFiniteError(f"step {step}: weights are not finite; refusing to write a checkpoint")
        tmp = checkpoint.begin(ckpt_root, step) if ctx.is_main else ckpt_root / f".tmp-step-{step}"
        barrier(ctx)
        checkpoint.write_rank_files(tmp, ctx.rank)
        barrier(ctx)
        if ctx.is_main:
            state = {"step": step, "nonfinite_in_row": nonfinite_in_row, "nonfinite_total": nonfinite_total,
                     "world_size": ctx.world_size,
                     "recipe": {name: obj.state_dict() for name, obj in parts.stateful.items()}}
            checkpoint.write_main_files(tmp, model=model, optimizer=optimizer, scheduler=scheduler, state=state, config=config_dict)
            checkpoint.commit(tmp, step, config.keep_checkpoints)
        barrier(ctx)

    def _update(group: list[dict]) -> dict:
        """One optimiser update on micro-batches `group`; returns the update's loss and metrics."""
        nonlocal nonfinite_in_row, nonfinite_total
        counts = torch.tensor([sum(parts.count_units(b) for b in group)], dtype=torch.float64)
        global_units = float(all_reduce_sum(counts, ctx)[0])
        scale = ctx.world_size / max(global_units, 1.0)
        loss_sum = torch.zeros((), dtype=torch.float64)
        metric_sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(group):
            batch = {k: v.to(ctx.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            with no_sync(ddp_model, sync=i == len(group) - 1):
                out = parts.step_fn(ddp_model, batch)
                (out.loss * scale).backward()
            loss_sum += out.loss.detach().double().cpu()
            for k, v in out.metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + v.detach().double().cpu()
        names = sorted(metric_sums)
        flat = [loss_sum] + [torch.as_tensor(metric_sums[k], dtype=torch.float64) for k in names]
        reduced = all_reduce_sum(torch.stack(flat), ctx).tolist()
        loss_value = reduced[0] / max(global_units, 1.0)
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm if config.max_grad_norm > 0 else float("inf"))
        if math.isfinite(loss_value) and bool(torch.isfinite(grad_norm)):
            optimizer.step()
            nonfinite_in_row = 0
        else:
            nonfinite_in_row += 1
            nonfinite_total += 1
            logger.warning("step %d: non-finite %s; update skipped (%d in a row)", step + 1,
                           "loss" if not math.isfinite(loss_value) else "gradient", nonfinite_in_row)
            if nonfinite_in_row >= config.max_nonfinite_steps:
                raise NonFiniteError(
                    f"step {step + 1}: {nonfinite_in_row} consecutive steps had a non-finite loss or gradient; "
                    "aborting (lower lr, check the data, or raise max_nonfinite_steps)")
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": loss_value, "grad_norm": float(grad_norm), "loss_units": global_units,
                **{k: v / max(global_units, 1.0) for k, v in zip(names, reduced[1:])}}

    step = start_step
    try:
        for step in range(start_step, n_steps):
            t0 = time.perf_counter()
            lr = scheduler.get_last_lr()[0]
            epoch, global_rows = order.batch(step)
            batches = [parts.collate([parts.examples[i] for i in mb])
                       for mb in micro_batches(shard_rows(global_rows, ctx), config.grad_accum)]
            stat_sums: dict[str, list[float]] = {}
            if parts.prepare is not None:
                batches = [parts.prepare(model, b, step, i) for i, b in enumerate(batches)]
                for b in batches:
                    for name, (total, count) in b.pop("stats", {}).items():
                        acc = stat_sums.setdefault(name, [0.0, 0.0])
                        acc[0] += float(total)
                        acc[1] += float(count)
            updates = parts.plan_updates(batches, step) if parts.plan_updates is not None else [batches]
            if len(updates) != parts.updates_per_step:
                raise RuntimeError(f"plan_updates gave {len(updates)} updates, expected {parts.updates_per_step}")
            totals: dict[str, float] = {}
            t_update = time.perf_counter()
            for group in updates:
                result = _update(group)
                for k, v in result.items():
                    totals[k] = totals.get(k, 0.0) + v / len(updates)
            if parts.prepare is not None:  # online recipes: the split of a step's time
                stat_sums["time/update"] = [time.perf_counter() - t_update, 1.0]
            loss_value, grad_norm, global_units = totals.pop("loss"), totals.pop("grad_norm"), totals.pop("loss_units")
            global_tokens = sum(count_tokens(b) for b in batches)
            global_tokens = float(all_reduce_sum(torch.tensor(float(global_tokens), dtype=torch.float64), ctx))
            stat_names = sorted(stat_sums)
            stat_reduced = all_reduce_sum(torch.tensor([stat_sums[k][j] for j in (0, 1) for k in stat_names],
                                                       dtype=torch.float64), ctx).tolist() if stat_names else []
            elapsed = time.perf_counter() - t0
            last = {"step": step + 1, "epoch": epoch, "loss": loss_value, "grad_norm": grad_norm, "lr": lr,
                    "tokens": int(global_tokens), "loss_units": int(global_units), "time_s": elapsed,
                    "tokens_per_s": global_tokens / elapsed if elapsed > 0 else 0.0, "skipped_steps": nonfinite_total,
                    **totals}
            for j, k in enumerate(stat_names):
                divisor = ctx.world_size if k.startswith("time/") else max(stat_reduced[len(stat_names) + j], 1.0)
                last[k] = stat_reduced[j] / divisor
            done = step + 1
            if parts.evaluate is not None and (done == n_steps or (config.eval_every > 0 and done % config.eval_every == 0)):
                last.update(parts.evaluate(model))
            if parts.after_step is not None:
                parts.after_step(done, last)
            if ctx.is_main:
                writer.write(last)
                bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{last['tokens_per_s']:.0f}", refresh=False)
                bar.update(1)
            if config.save_every > 0 and done % config.save_every == 0 and done < n_steps:
                save(done)
            for callback in parts.callbacks:
                callback(done, last)
    except StopTraining:
        logger.info("stopped early by a callback")
        bar.close()
        if writer:
            writer.close()
        return TrainResult(output_dir=output_dir, steps=last.get("step", start_step), final_dir=None, last_metrics=last)
    bar.close()

    if writer:
        writer.close()
    if not _all_finite(model):
        raise NonFiniteError("training ended with non-finite weights; final/ not written")
    final_dir = output_dir / "final"
    if ctx.is_main:
        parts.save_final(model, final_dir)
        (output_dir / "last_metrics.json").write_text(json.dumps(last, indent=2))
    barrier(ctx)
    return TrainResult(output_dir=output_dir, steps=n_steps, final_dir=final_dir, last_metrics=last)


def evaluate_loss(model, examples: Sequence, collate, step_fn: StepFn, count_units, *, batch_size: int,
                  ctx: DistContext, prefix: str = "eval_") -> dict:
    """Loss and metrics averaged over the units of `examples` (each rank takes a strided share)."""
    model.eval()
    rows = shard_rows(list(range(len(examples))), ctx)
    sums: dict[str, torch.Tensor] = {}
    units = 0.0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = collate([examples[i] for i in rows[start : start + batch_size]])
            batch = {k: v.to(ctx.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            out = step_fn(model, batch)
            units += count_units(batch)
            for k, v in {"loss": out.loss, **out.metrics}.items():
                sums[k] = sums.get(k, 0.0) + v.double().cpu()
    model.train()
    names = sorted(sums)
    totals = all_reduce_sum(torch.tensor([units] + [float(sums[k]) for k in names], dtype=torch.float64), ctx)
    denom = max(float(totals[0]), 1.0)
    return {f"{prefix}{k}": float(v) / denom for k, v in zip(names, totals[1:].tolist())}
