"""Stopping a run cleanly: SIGTERM (preemption) or Ctrl-C (SIGINT) asks the run to finish
its step, save and stop, at a step every process agrees on; a second Ctrl-C stops at once.

One process: a handler sets a flag, checked after each step. Several processes
(jax.distributed): JAX's preemption sync manager catches SIGTERM and
`reached_preemption_sync_point` turns true on the same step on every process; Ctrl-C is
handed to it as a SIGTERM to this process.
"""

import os
import signal
import sys

import jax
from jax.experimental import multihost_utils

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


class Interrupted(Exception):
    """The run stopped after Ctrl-C, its last step saved; the message says where."""


class Preemption:
    """Use as a context manager around the loop; `stop_at(step)` after each step.
    `interrupted` says whether the stop came from Ctrl-C (else from SIGTERM)."""

    def __init__(self):
        self.requested = False
        self.interrupted = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "Preemption":
        signals = (signal.SIGTERM, signal.SIGINT) if jax.process_count() == 1 else (signal.SIGINT,)
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            if self.interrupted:
                sys.stdout.flush()
                os.write(2, b"interrupted again: stopping now, without saving this step\n")
                os._exit(EXIT_INTERRUPTED)
            self.interrupted = True
            os.write(1, b"\ninterrupted: finishing this step and saving (Ctrl-C again stops at once)\n")
            if jax.process_count() > 1:
                os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption sync manager
                return
        self.requested = True

    def stop_at(self, step: int) -> bool:
        """True when the run should save and stop after `step` (the same on every process)."""
        if jax.process_count() == 1:
            return self.requested
        return multihost_utils.reached_preemption_sync_point(step)
