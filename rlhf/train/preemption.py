"""SIGTERM / SIGINT during training: finish the step, checkpoint, exit with the signal's status.

Clusters stop jobs with SIGTERM (SLURM sends it before SIGKILL) and a user stops one with Ctrl-C
(SIGINT). While `SignalGuard` is active the first of these signals only sets a flag; the loop
looks at it after each optimiser step, all ranks agree on it in one collective (a rank that got
no signal stops at the same step as one that did, so no rank waits forever in a collective),
and the loop writes a checkpoint and raises `Preempted`. The CLI turns that into one line with
the command that resumes the run and exit status 128 + signal (143 for SIGTERM, 130 for SIGINT).

A second signal stops the process at once with the signal's default action. That is safe at any
instant, during a checkpoint write too: a checkpoint only becomes visible by an atomic rename
after its files are complete, so the previous one survives (rlhf/train/checkpoint.py).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import torch

from rlhf.train.distributed import DistContext, all_reduce_sum

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """A SIGTERM or SIGINT ended the run after a completed step, whose checkpoint was written."""

    def __init__(self, signum: int, step: int, checkpoint_dir):
        self.signum, self.step, self.checkpoint_dir = signum, step, checkpoint_dir
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; "
                         f"checkpoint {checkpoint_dir} (resume=true continues from it)")

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


class SignalGuard:
    """Within `with SignalGuard():`, record SIGTERM / SIGINT instead of dying; the second one kills.

    Outside the main thread Python cannot install handlers: the guard then does nothing and the
    signals keep their default action.
    """

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "SignalGuard":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # the second signal: the user means now
            for sig in SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        # stderr directly: logging from a signal handler can deadlock on the handler's lock
        os.write(2, f"rlhf: received {signal.Signals(signum).name}: finishing this step, then writing a checkpoint "
                    "(send it again to stop at once)\n".encode())

    def agreed_signal(self, ctx: DistContext) -> int | None:
        """The signal every rank acts on after this step (SIGTERM before SIGINT), or None; one
        collective on every rank, so call it at the same point of every step on all of them."""
        local = torch.tensor([float(self.received == s) for s in SIGNALS], dtype=torch.float64)
        seen = all_reduce_sum(local, ctx).tolist() if ctx.enabled else local.tolist()
        return next((s for s, count in zip(SIGNALS, seen) if count > 0), None)
