"""Ctrl-C during training, one implementation for ``sanakit train``, the demo and library use.

The first SIGINT only sets a flag: :class:`~sanakit.train.trainer.Trainer` checks it at the end
of every step, saves a checkpoint of that step and raises :class:`TrainingInterrupted` (a
``KeyboardInterrupt``, so the CLI exits 130). A second SIGINT raises ``KeyboardInterrupt`` at
once (checkpoints are atomic, so the last complete one stays ``latest``).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped cleanly on Ctrl-C after ``step``; ``checkpoint`` holds that step."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted at step {step}")
        self.step = step
        self.checkpoint = checkpoint


class StopRequest:
    """Context manager installing the SIGINT handler (main thread only; elsewhere Python does
    not deliver signals, so it does nothing) and restoring the previous one on exit."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nsanakit: stopping after this step to save a checkpoint (Ctrl-C again to quit now)",
            file=sys.stderr,
        )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            # None: the previous handler was not set from Python; the default is the safe choice
            previous = signal.SIG_DFL if self._previous is None else self._previous
            signal.signal(signal.SIGINT, previous)
            self._installed = False
