"""SIGINT and SIGTERM: stop at once during start-up; inside a run, finish the iteration and save first."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested: list[int] = []


class Interrupted(KeyboardInterrupt):
    """A stop by signal. Its message says what was saved and how to continue; the CLI exits 130."""


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    # A second signal must not break the clean-up (ending the run as KILLED) that the first one started.
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def _note(signum: int, frame: FrameType | None) -> None:
    _requested.append(signum)


def install() -> None:
    """SIGTERM stops the process like Ctrl-C does (KeyboardInterrupt), so `finally` blocks and run status hold."""
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


@contextmanager
def deferred() -> Iterator[None]:
    """Inside the block a stop signal only sets `requested()`; the training loop checks it between iterations."""
    previous = {stop: signal.getsignal(stop) for stop in STOP_SIGNALS}
    _requested.clear()
    for stop in STOP_SIGNALS:
        signal.signal(stop, _note)
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)


def requested() -> bool:
    return bool(_requested)
