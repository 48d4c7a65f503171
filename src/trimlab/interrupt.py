"""SIGTERM and SIGINT as an exception a run can record, at any stage.

Schedulers stop a job with SIGTERM (SLURM at its time limit, ``kill``), people
with Ctrl+C. Left alone, Lightning turns SIGTERM into ``SystemExit`` (exit
code 0) inside training and Ctrl+C into a silent exit 1, and outside training
the process dies with its record still saying ``running``. Raised as
:class:`RunInterrupted` instead, the run records ``interrupted`` with the
signal and the stage, and the command exits 128 + the signal's number, as a
shell expects. Lightning chains a handler installed before it and re-raises
what is not a ``KeyboardInterrupt``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HANDLED = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(BaseException):
    """A signal stopped the run (a ``BaseException``, so no ``except Exception`` swallows it)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.record_path: Path | None = None
        self.stage = ""
        super().__init__(f"interrupted by {self.signal_name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise :class:`RunInterrupted` once; a second signal during the clean-up is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if fired:
            return
        fired.append(signum)
        raise RunInterrupted(signum)

    # a signal the process was started ignoring (a background job's SIGINT) stays ignored
    previous = {s: signal.signal(s, handler) for s in HANDLED if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGTERM and SIGINT wait until the block ends: a step of several renames is never stopped halfway by them."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
