"""Progress and cancel plumbing shared by the library, the CLI and the Slicer runner.

The library never prints: long operations take a ``Reporter`` and call ``reporter.update(stage, fraction)``.
A GUI or CLI supplies the ``progress`` callback (what to show) and the ``cancel`` callback (whether to stop).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from .errors import Cancelled

ProgressCallback = Callable[[str, float, str], None]
"""Called as ``progress(stage, fraction, message)``; ``fraction`` is the overall fraction in [0, 1]."""
CancelCallback = Callable[[], bool]

# Share of the total run each stage takes, measured on CPU runs of the benchmark: the network dominates.
STAGE_WEIGHTS = {
    "read": 0.03,
    "preprocess": 0.04,
    "inference": 0.80,
    "invert": 0.06,
    "postprocess": 0.04,
    "write": 0.03,
}


_pending_interrupt = None


def note_interrupt(exc_type) -> None:
    """Called by the CLI's SIGINT/SIGTERM handlers before they raise ``exc_type``: if that exception is lost (a
    signal landing inside an object's ``__del__`` makes Python print "Exception ignored" and carry on), the next
    ``Reporter.check_cancel`` raises it again, so a Ctrl-C can never be swallowed by a finalizer."""
    global _pending_interrupt
    _pending_interrupt = exc_type


def clear_interrupt() -> None:
    """The interrupt was delivered and handled (the CLI and the batch call this where they catch it)."""
    global _pending_interrupt
    _pending_interrupt = None


@dataclass
class Reporter:
    progress: Optional[ProgressCallback] = None
    cancel: Optional[CancelCallback] = None
    stages: dict = field(default_factory=lambda: dict(STAGE_WEIGHTS))
    started: float = field(default_factory=time.monotonic)

    def _offset(self, stage: str) -> float:
        total = sum(self.stages.values())
        done = 0.0
        for name, weight in self.stages.items():
            if name == stage:
                return done / total
            done += weight
        return done / total

    def update(self, stage: str, fraction: float = 0.0, message: str = "") -> None:
        """Report ``fraction`` (0..1) of ``stage`` done; raises ``Cancelled`` when the user asked to stop."""
        self.check_cancel()
        if self.progress is None:
            return
        total = sum(self.stages.values())
        weight = self.stages.get(stage, 0.0) / total
        overall = min(1.0, self._offset(stage) + weight * max(0.0, min(1.0, fraction)))
        self.progress(stage, overall, message)

    def check_cancel(self) -> None:
        pending = _pending_interrupt
        if pending is not None:  # a Ctrl-C/SIGTERM whose exception was swallowed: raise it (once) here
            clear_interrupt()
            raise pending()
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled by the user; nothing was written")

    def elapsed(self) -> float:
        return time.monotonic() - self.started
