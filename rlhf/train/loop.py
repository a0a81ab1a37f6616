"""The one training loop. It never knows which algorithm it runs: a recipe hands it
examples, a collate function and a step function that returns a LossOutput of sums.

Per optimiser step: take the step's global batch (a fixed permutation per epoch, so the
data position is a function of the step number), give this rank its strided share, and plan
the step (`StepPlan`): by default its micro-batches and one update; an online recipe samples,
scores and computes advantages for the whole share first and lists its updates. For each
update, count the loss units (e.g. tokens) over all its micro-batches on every rank and scale
each micro-batch's summed loss by world_size / global_units. That makes `batch 8 x accum 1 ==
batch 1 x accum 8` and `2 ranks == 1 rank` hold exactly up to float rounding (DDP averages
gradients over ranks, hence the world_size factor).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from rlhf.config import ConfigError, diff_configs, to_dict
from rlhf.losses.types import LossOutput
from rlhf.models import disable_dropout
from rlhf.train import checkpoint
from rlhf.train.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    no_sync,
    shard_rows,
    to_device,
    wrap_model,
)
from rlhf.train.loggers import MetricsWriter
from rlhf.train.optim import build_optimizer, build_scheduler
from rlhf.train.preemption import Preempted, SignalGuard

logger = logging.getLogger(__name__)

# Keys that may change between a run and its resumption without changing the maths.
# (where the run lives and how it reports itself, not what it computes).
# The training alarms only watch: a run stopped by max_kl may resume with a higher one.
RESUME_FREE_KEYS = {"resume", "resume_from", "progress", "report_to", "threads", "output_dir",
                    "max_kl", "kl_patience", "stop_on_kl", "eval_window"}

StepFn = Callable[[torch.nn.Module, dict], LossOutput]


class NonFiniteError(RuntimeError):
    """Too many consecutive steps produced a non-finite loss or gradient."""


class StopTraining(Exception):
    """Raised by a callback or `after_step` to end a run early.

    With save=True the loop first checkpoints the step just completed (every rank must raise at the
    same step: raise it from global metrics), and the result's `stopped` carries the message.
    Without it, the last checkpoint written stays the one to resume from.
    """

    def __init__(self, message: str = "", *, save: bool = False):
        super().__init__(message)
        self.message, self.save = message, save


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    final_dir: Path | None
    last_metrics: dict = field(default_factory=dict)
    stopped: str | None = None  # why the run ended early (StopTraining), None when it ran to the end

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / "metrics.jsonl"


@dataclass
class StepPlan:
    """One optimiser step's work on this rank, laid out before any update.

    Offline recipes get the default plan (the step's micro-batches, one update). Online recipes
    build their own (`LoopParts.plan_step`): sample every micro-batch, score, compute advantages
    over the whole global batch, then list the updates (PPO: epochs x minibatches).
    """

    updates: list[list[dict]]  # the micro-batches of each optimiser update, in order; one may be empty
    tokens: int  # tokens processed on this rank (for throughput)
    # name -> (sum, count) on this rank, logged as the global sum / global count
    stats: dict[str, tuple] = field(default_factory=dict)
    # phase -> seconds on this rank (e.g. "generate"), logged as "time/<phase>", mean over ranks
    timings: dict[str, float] = field(default_factory=dict)


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
    # Online recipes: (step, this rank's examples of the step, their positions in the global batch)
    # -> StepPlan. None: collate micro-batches of the examples, one update.
    plan_step: Callable[[int, list, list[int]], StepPlan] | None = None
    updates_per_step: int = 1  # optimiser updates in every plan (the schedule counts updates)
    # Recipe state that must survive a resume (e.g. a KL controller): name -> object with
    # state_dict() / load_state_dict(), saved as JSON in the checkpoint.
    stateful: dict = field(default_factory=dict)
    # Recipe bookkeeping after each step, from the step's global metrics (e.g. the adaptive KL
    # controller); runs before logging and checkpointing, and may add metrics to the dict.
    after_step: Callable[[int, dict], None] | None = None
    # Optimiser parameter groups (e.g. a critic with its own "lr"); None: every trainable parameter.
    param_groups: list[dict] | None = None
    # step -> parameters that get no update at that step (e.g. the policy during a critic warm-up).
    frozen_at: Callable[[int], list[torch.nn.Parameter]] | None = None


@dataclass
class LoopState:
    """The loop's own counters: what a checkpoint saves besides weights, optimiser and RNG."""

    step: int = 0  # optimiser steps completed
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0


def count_tokens(batch: dict) -> int:
    """Non-pad tokens in a batch (what throughput counts)."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


class DataOrder:
    """Which example indices make up each global batch; a pure function of (seed, step)."""

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        if num_examples < batch_size:
            raise ConfigError(f"batch_size {batch_size} is larger than the {num_examples} training examples")
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


def micro_batches(rows: list, grad_accum: int) -> list[list]:
    """`rows` cut into at most `grad_accum` consecutive micro-batches of equal size (the last may be
    shorter); never an empty one."""
    size = max(math.ceil(len(rows) / grad_accum), 1)
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def total_steps(config, steps_per_epoch: int) -> int:
    return config.max_steps if config.max_steps > 0 else config.epochs * steps_per_epoch


def _all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def _stop_from(hook, step: int, metrics: dict) -> StopTraining | None:
    """Run an after-step hook or callback; the StopTraining it raises, if any, is returned so that
    the step's metrics are still written and its checkpoint taken before the run ends."""
    if hook is None:
        return None
    try:
        hook(step, metrics)
    except StopTraining as stop:
        return stop
    return None


def check_train_config(config) -> None:
    """Settings that would fail, or silently train nothing, refused at start-up naming the key."""
    positive = {"batch_size": config.batch_size, "grad_accum": config.grad_accum, "epochs": config.epochs,
                "keep_checkpoints": config.keep_checkpoints, "max_nonfinite_steps": config.max_nonfinite_steps}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {value}")
    if config.max_steps == 0 or config.max_steps < -1:
        raise ConfigError(f"config key 'max_steps' must be >= 1, or -1 for `epochs` passes, got {config.max_steps}")
    for key in ("save_every", "eval_every", "lr", "warmup_ratio", "max_grad_norm"):
        if getattr(config, key) < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {getattr(config, key)}")
    if config.warmup_ratio >= 1:
        raise ConfigError(f"config key 'warmup_ratio' must be below 1 (a fraction of the steps), got {config.warmup_ratio}")


def check_resume(config) -> Path | None:
    """The checkpoint a run will resume from, verified against its manifest, refusing a changed config.

    `resume_from=PATH` names one; `resume=true` takes the newest complete one in output_dir. Cheap
    enough for recipes to call before any data or model work, so a mistake surfaces at once (the
    checksums of a checkpoint are computed once per process)."""
    if config.resume_from:
        resume_from = Path(config.resume_from)
        if not (resume_from / checkpoint.MARKER).is_file():
            raise ConfigError(f"resume_from={config.resume_from}: not a complete checkpoint directory "
                              f"(it has no {checkpoint.MARKER})")
    elif config.resume:
        ckpt_root = Path(config.output_dir) / "checkpoints"
        resume_from = checkpoint.newest_checkpoint(ckpt_root)
        if resume_from is None:
            logger.warning("resume=true but %s holds no complete checkpoint: starting from step 0", ckpt_root)
            return None
    else:
        return None
    _verify_once(resume_from)
    saved = checkpoint.saved_config(resume_from)
    changed = [k for k in diff_configs(saved, to_dict(config)) if k.split(".")[0] not in RESUME_FREE_KEYS]
    if changed:
        raise ConfigError(
            f"cannot resume from {resume_from}: the config differs in {', '.join(changed)} "
            "(start a new output_dir, or restore those values)"
        )
    return resume_from


_verified: dict[tuple, bool] = {}


def _verify_once(path: Path) -> None:
    """checkpoint.verify, skipped when this process already verified the same, unchanged checkpoint."""
    manifest = path / checkpoint.MANIFEST
    key = (str(path.resolve()), manifest.stat().st_mtime_ns if manifest.is_file() else None)
    if key not in _verified:
        checkpoint.verify(path)
        _verified[key] = True


def run(config, parts: LoopParts, ctx: DistContext) -> TrainResult:
    """Train `parts.model` per `config`; returns where everything was written."""
    return _Trainer(config, parts, ctx).run()


class _Trainer:
    """One run of the loop: set-up, then per step plan -> updates -> metrics -> checkpoint."""

    def __init__(self, config, parts: LoopParts, ctx: DistContext):
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        if config.batch_size < ctx.world_size:
            raise ConfigError(f"batch_size {config.batch_size} is smaller than the {ctx.world_size} processes")
        check_train_config(config)
        self.config, self.parts, self.ctx = config, parts, ctx
        self.output_dir = Path(config.output_dir)
        self.order = DataOrder(len(parts.examples), config.batch_size, config.seed)
        self.n_steps = total_steps(config, self.order.steps_per_epoch)
        resume_from = check_resume(config)
        if ctx.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

        checkpoint.seed_everything(config.seed + ctx.rank)  # sampling and dropout; a resumed run restores its own
        self.model = parts.model
        if config.disable_dropout:
            disable_dropout(self.model)
        self.model.train()
        self.ddp_model = wrap_model(self.model, ctx)
        self.optimizer = build_optimizer(parts.param_groups or self.model.parameters(), config)
        self.scheduler = build_scheduler(self.optimizer, config, self.n_steps * parts.updates_per_step)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.state = LoopState()
        if resume_from is not None:
            saved = checkpoint.load(resume_from, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                    rank=ctx.rank)
            self.state = LoopState(**saved["loop"])
            for name, obj in parts.stateful.items():
                if name in saved["recipe"]:
                    obj.load_state_dict(saved["recipe"][name])
                else:  # e.g. an alarm switched on at resume (max_kl is free to change)
                    logger.warning("%s holds no state for '%s': it starts fresh", resume_from, name)
            logger.info("resumed from %s at step %d", resume_from, self.state.step)
        barrier(ctx)

    # -- one step ---------------------------------------------------------------------------

    def plan(self, step: int) -> StepPlan:
        """This rank's share of the step's global batch, as the recipe's plan or plain micro-batches."""
        _, global_rows = self.order.batch(step)
        positions = shard_rows(list(range(len(global_rows))), self.ctx)
        examples = [self.parts.examples[global_rows[p]] for p in positions]
        if self.parts.plan_step is not None:
            plan = self.parts.plan_step(step, examples, positions)
            if len(plan.updates) != self.parts.updates_per_step:
                raise RuntimeError(f"the step plan has {len(plan.updates)} updates, expected {self.parts.updates_per_step}")
            return plan
        batches = [self.parts.collate(mb) for mb in micro_batches(examples, self.config.grad_accum)]
        return StepPlan(updates=[batches], tokens=sum(count_tokens(b) for b in batches))

    def update(self, group: list[dict], spare: dict, step: int) -> dict:
        """One optimiser update on micro-batches `group`; returns the update's loss and metrics.

        The loss is scaled by world_size / global units, so the result does not depend on how the
        units are split over micro-batches and ranks. A rank with nothing in this update (a PPO
        minibatch may hold no row of it) runs `spare` at weight 0: DDP needs every rank's backward.
        """
        ctx, parts = self.ctx, self.parts
        weight = 1.0 if group else 0.0
        group = group or [spare]
        units = torch.tensor([weight * sum(parts.count_units(b) for b in group)], dtype=torch.float64)
        global_units = max(float(all_reduce_sum(units, ctx)[0]), 1.0)
        scale = weight * ctx.world_size / global_units
        sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(group):
            batch = to_device(batch, ctx)
            with no_sync(self.ddp_model, sync=i == len(group) - 1):
                out = parts.step_fn(self.ddp_model, batch)
                (out.loss * scale).backward()
            for k, v in {"loss": out.loss, **out.metrics}.items():
                sums[k] = sums.get(k, 0.0) + weight * v.detach().double()
        names = sorted(sums)
        reduced = all_reduce_sum(torch.stack([torch.as_tensor(sums[k], device=ctx.device) for k in names]), ctx)
        result = {k: v / global_units for k, v in zip(names, reduced.tolist())}
        if parts.frozen_at is not None:
            for p in parts.frozen_at(step):
                p.grad = None  # no gradient: AdamW leaves the parameter and its moments as they are
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_([p for p in self.trainable if p.grad is not None], max_norm))
        if math.isfinite(result["loss"]) and math.isfinite(grad_norm):
            self.optimizer.step()
            self.state.nonfinite_in_row = 0
        else:
            self._count_nonfinite(step, "loss" if not math.isfinite(result["loss"]) else "gradient")
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {**result, "grad_norm": grad_norm, "loss_units": global_units}

    def _count_nonfinite(self, step: int, what: str) -> None:
        self.state.nonfinite_in_row += 1
        self.state.nonfinite_total += 1
        logger.warning("step %d: non-finite %s; update skipped (%d in a row)", step + 1, what, self.state.nonfinite_in_row)
        if self.state.nonfinite_in_row >= self.config.max_nonfinite_steps:
            raise NonFiniteError(
                f"step {step + 1}: {self.state.nonfinite_in_row} consecutive steps had a non-finite loss or gradient; "
                "aborting (lower lr, check the data, or raise max_nonfinite_steps)")

    def step_metrics(self, step: int, lr: float, plan: StepPlan, updates: list[dict], seconds: float) -> dict:
        """The step's metrics line: update results averaged, plan stats and timings reduced over ranks."""
        ctx = self.ctx
        metrics = {k: sum(u[k] for u in updates) / len(updates) for k in updates[0]}
        stat_names, time_names = sorted(plan.stats), sorted(plan.timings)
        # one stack on the device and one reduction: stats may be device tensors (no sync per value)
        local = [plan.tokens] + [plan.stats[k][0] for k in stat_names] + [plan.stats[k][1] for k in stat_names]
        local += [plan.timings[k] for k in time_names]
        local = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=ctx.device) for v in local])
        reduced = all_reduce_sum(local, ctx).tolist()
        tokens, reduced = reduced[0], reduced[1:]
        n = len(stat_names)
        for j, k in enumerate(stat_names):
            metrics[k] = reduced[j] / max(reduced[n + j], 1.0)
        for j, k in enumerate(time_names):
            metrics[f"time/{k}"] = reduced[2 * n + j] / ctx.world_size
        return {"step": step + 1, "epoch": self.order.batch(step)[0], "lr": lr,
                "tokens": int(tokens), "time_s": seconds, "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
                "skipped_steps": self.state.nonfinite_total, **metrics, "loss_units": int(metrics["loss_units"])}

    def train_step(self, step: int) -> dict:
        """Plan, update and evaluate step `step`; returns its metrics line (state.step is then step + 1)."""
        config, parts = self.config, self.parts
        t0 = time.perf_counter()
        lr = self.scheduler.get_last_lr()[0]  # the rate this step's (first) update uses
        plan = self.plan(step)
        spare = next(b for group in plan.updates for b in group)
        t_update = time.perf_counter()
        updates = [self.update(group, spare, step) for group in plan.updates]
        if parts.plan_step is not None:  # online recipes: the split of a step's time
            plan.timings["update"] = time.perf_counter() - t_update
        metrics = self.step_metrics(step, lr, plan, updates, time.perf_counter() - t0)
        self.state.step = done = step + 1
        if parts.evaluate is not None and (done == self.n_steps or (config.eval_every > 0 and done % config.eval_every == 0)):
            metrics.update(parts.evaluate(self.model))
        return metrics

    def save(self, step: int) -> None:
        """Write checkpoint `step` atomically. A full disk on any rank ends the run on every rank
        (each rank's failure is all-reduced, so none waits in a barrier) with a CheckpointError."""
        ctx = self.ctx
        if not _all_finite(self.model):
            raise NonFiniteError(f"step {step}: weights are not finite; refusing to write a checkpoint")
        ckpt_root = self.output_dir / "checkpoints"
        tmp = checkpoint.begin(ckpt_root, step) if ctx.is_main else ckpt_root / f".tmp-step-{step}"
        barrier(ctx)
        self._write_or_flag(lambda: checkpoint.write_rank_files(tmp, ctx.rank), tmp, step)
        if ctx.is_main:
            state = {"loop": asdict(self.state), "world_size": ctx.world_size,
                     "recipe": {name: obj.state_dict() for name, obj in self.parts.stateful.items()}}

            def write():
                checkpoint.write_main_files(tmp, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                            state=state, config=to_dict(self.config))
                checkpoint.commit(tmp, step, self.config.keep_checkpoints)
        else:
            write = lambda: None  # noqa: E731
        self._write_or_flag(write, tmp, step)

    def _write_or_flag(self, write, tmp: Path, step: int) -> None:
        """Run `write`; if the disk filled up on any rank, remove the partial checkpoint and raise on all."""
        full = 0.0
        try:
            write()
        except Exception as error:
            if not checkpoint.disk_full(error):
                raise
            full = 1.0
        if float(all_reduce_sum(torch.tensor([full]), self.ctx)[0]) > 0:  # also the ranks' barrier
            raise checkpoint.disk_full_error(tmp, step, checkpoint.estimated_bytes(self.model, self.optimizer))

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> TrainResult:
        config, parts, ctx = self.config, self.parts, self.ctx
        writer = (MetricsWriter(self.output_dir, resume_step=self.state.step, report_to=config.report_to,
                                run_config=to_dict(config)) if ctx.is_main else None)
        bar = tqdm(total=self.n_steps, initial=self.state.step, desc=self.output_dir.name,
                   disable=not (ctx.is_main and config.progress), dynamic_ncols=True)
        last: dict = {}
        saved_at = self.state.step  # a resumed run's step is its checkpoint's
        try:
            with SignalGuard() as signals:
                for step in range(self.state.step, self.n_steps):
                    last = self.train_step(step)
                    done = self.state.step
                    stop = _stop_from(parts.after_step, done, last)
                    if writer is not None:
                        writer.write(last)
                        bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_s']:.0f}", refresh=False)
                        bar.update(1)
                    if config.save_every > 0 and done % config.save_every == 0 and done < self.n_steps:
                        self.save(done)
                        saved_at = done
                    for callback in parts.callbacks:
                        stop = stop or _stop_from(callback, done, last)
                    signum = signals.agreed_signal(ctx)  # every step, on every rank: one collective
                    if (signum is not None or (stop is not None and stop.save)) and saved_at != done:
                        self.save(done)
                        saved_at = done
                    if signum is not None:
                        raise Preempted(signum, done, self.output_dir / "checkpoints" / f"step-{done}")
                    if stop is not None:
                        raise stop
        except StopTraining as stop:
            if stop.message:
                logger.warning("stopped early at step %d: %s", self.state.step, stop.message)
            else:
                logger.info("stopped early by a callback")
            return TrainResult(output_dir=self.output_dir, steps=self.state.step, final_dir=None, last_metrics=last,
                               stopped=stop.message or "stopped by a callback")
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        if not _all_finite(self.model):
            raise NonFiniteError("training ended with non-finite weights; final/ not written")
        final_dir = self.output_dir / "final"
        if ctx.is_main:
            parts.save_final(self.model, final_dir)
            (self.output_dir / "last_metrics.json").write_text(json.dumps(last, indent=2))
        barrier(ctx)
        return TrainResult(output_dir=self.output_dir, steps=self.n_steps, final_dir=final_dir, last_metrics=last)


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
            batch = to_device(batch, ctx)
            out = step_fn(model, batch)
            units += count_units(batch)
            for k, v in {"loss": out.loss, **out.metrics}.items():
                sums[k] = sums.get(k, 0.0) + v.double().cpu()
    model.train()
    names = sorted(sums)
    totals = all_reduce_sum(torch.tensor([units] + [float(sums[k]) for k in names], dtype=torch.float64), ctx)
    denom = max(float(totals[0]), 1.0)
    return {f"{prefix}{k}": float(v) / denom for k, v in zip(names, totals[1:].tolist())}
