"""Alarms during RL training: the policy drifting from its reference, the reward being gamed.

Two watchers, pure bookkeeping over numbers the loop already has, so they unit-test without a model:

- `KLAlarm` reads each step's global `kl` (mean KL(pi || ref) per completion, nats) and, after
  `patience` consecutive steps above `max_kl`, warns once naming the step and the KL; with
  `stop=True` it ends the run instead (`loop.StopTraining(message, save=True)`: a checkpoint of
  that step, no final/).
- `OverOptimisationWatch` reads each evaluation's training reward and held-out score on the same
  held-out prompts and warns when, over the last `window` evaluations, the training reward rose
  while the held-out score fell: the signature of reward over-optimisation (Gao et al. 2022,
  "Scaling Laws for Reward Model Overoptimization", arXiv 2210.10760, fig. 1). It compares the
  first and the last evaluation of the window, without a noise test (the evaluations sample the
  same prompts with the same seeds, so their differences are those of the policy); it warns
  again only after the pattern has gone away and come back.

Both keep their state in `state_dict()` (plain JSON) so that a resumed run warns and stops where
the uninterrupted one would; every rank holds the same state (they read global metrics), and
`log=False` keeps ranks other than the main one quiet.
"""

from __future__ import annotations

import logging
import math

from rlhf.train.loop import StopTraining

logger = logging.getLogger(__name__)


class KLAlarm:
    """`LoopParts.after_step`-shaped: call it with (step, metrics) after every step."""

    def __init__(self, max_kl: float, *, patience: int = 3, stop: bool = False, log: bool = True):
        if not max_kl > 0:
            raise ValueError(f"KLAlarm needs max_kl > 0, got {max_kl}")
        if patience < 1:
            raise ValueError(f"KLAlarm needs patience >= 1, got {patience}")
        self.max_kl, self.patience, self.stop, self.log = float(max_kl), int(patience), bool(stop), log
        self.over = 0  # consecutive steps above max_kl, up to the last one seen
        self.warned = False

    def __call__(self, step: int, metrics: dict) -> None:
        kl = metrics.get("kl")
        if kl is None:
            return
        # a non-finite KL counts as over the limit: it is no evidence that the policy stayed close
        self.over = self.over + 1 if not float(kl) <= self.max_kl else 0
        if self.over < self.patience:
            return
        what = (f"step {step}: KL to the reference {float(kl):.4g} nats per completion is above max_kl={self.max_kl:g} "
                f"for {self.over} consecutive step{'s' if self.over > 1 else ''}")
        if self.stop:  # the loop checkpoints this step and logs the message
            self.warned = True
            raise StopTraining(f"{what}; stop_on_kl=true: checkpoint of step {step} written, no final/", save=True)
        if not self.warned:
            self.warned = True
            if self.log:
                logger.warning("%s; training goes on (stop_on_kl=true would stop it): lower lr or raise beta to "
                               "keep the policy nearer its reference", what)

    def state_dict(self) -> dict:
        return {"over": self.over, "warned": self.warned}

    def load_state_dict(self, state: dict) -> None:
        self.over, self.warned = int(state["over"]), bool(state["warned"])


class OverOptimisationWatch:
    """Call `observe(step, reward, heldout)` after each evaluation; returns whether the last `window`
    evaluations show the training reward up and the held-out score down."""

    def __init__(self, window: int = 3, *, name: str = "heldout", log: bool = True):
        if window < 2:
            raise ValueError(f"OverOptimisationWatch needs window >= 2 evaluations, got {window}")
        self.window, self.name, self.log = int(window), name, log
        self.history: list[tuple[int, float, float]] = []  # (step, reward, heldout), the last `window` evaluations
        self.flagged = False  # the pattern held at the last evaluation

    def __call__(self, step: int, metrics: dict) -> None:
        """`LoopParts.after_step`-shaped: observes the step's `eval/reward` and `eval/<name>`, if it evaluated."""
        if "eval/reward" in metrics and f"eval/{self.name}" in metrics:
            self.observe(step, metrics["eval/reward"], metrics[f"eval/{self.name}"])

    def observe(self, step: int, reward: float | None, heldout: float | None) -> bool:
        if reward is None or heldout is None or not (math.isfinite(reward) and math.isfinite(heldout)):
            return self.flagged  # an evaluation with nothing scored is no point of the curve
        self.history = (self.history + [(int(step), float(reward), float(heldout))])[-self.window:]
        was = self.flagged
        self.flagged = len(self.history) == self.window and self._rising_and_falling()
        if self.flagged and not was and self.log:
            (s0, r0, h0), (s1, r1, h1) = self.history[0], self.history[-1]
            logger.warning(
                "step %d: possible reward over-optimisation: over the last %d evaluations (steps %d to %d) the "
                "training reward on eval_data rose from %.4g to %.4g while the held-out score (eval/%s) fell from "
                "%.4g to %.4g", step, self.window, s0, s1, r0, r1, self.name, h0, h1)
        return self.flagged

    def _rising_and_falling(self) -> bool:
        (_, r0, h0), (_, r1, h1) = self.history[0], self.history[-1]
        return r1 > r0 and h1 < h0

    def state_dict(self) -> dict:
        return {"history": [list(h) for h in self.history], "flagged": self.flagged}

    def load_state_dict(self, state: dict) -> None:
        self.history = [(int(s), float(r), float(h)) for s, r, h in state["history"]]
        self.flagged = bool(state["flagged"])
