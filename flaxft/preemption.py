"""Preemption: SIGTERM asks the run to stop at a step every process agrees on.

One process: a SIGTERM handler sets a flag, checked after each step. Several processes
(jax.distributed): JAX's preemption sync manager catches the signal and
`reached_preemption_sync_point` turns true on the same step on every process.
"""

import signal

import jax
from jax.experimental import multihost_utils


class Preemption:
    """Use as a context manager around the loop; `stop_at(step)` after each step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> "Preemption":
        if jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_sigterm(self, signum, frame) -> None:
        self.requested = True

    def stop_at(self, step: int) -> bool:
        """True when the run should save and stop after `step` (the same on every process)."""
        if jax.process_count() == 1:
            return self.requested
        return multihost_utils.reached_preemption_sync_point(step)
