"""Ctrl-C during training, taken at a step boundary.

A SIGINT raises KeyboardInterrupt wherever Python is, usually inside a training step: BatchNorm
has then updated its running statistics for a step the checkpoint says is not done, and the
resumed run would do that step's update twice (weights no longer those of an uninterrupted run).
`StepBoundary` defers the first Ctrl-C to the next step boundary (`check`); a second one stops at
once. In one process only: under torchrun the ranks would stop at different steps and wait on
each other's collectives, so there a Ctrl-C stops as before.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class StepBoundary:
    """with StepBoundary(active) as stop: ... stop.check() between steps."""

    def __init__(self, active: bool = True) -> None:
        self.active = active and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StepBoundary:
        if self.active:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # pressed twice: stop now
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        """Raise the deferred KeyboardInterrupt, at a step boundary."""
        if self.requested:
            raise KeyboardInterrupt
