"""Progress of a long stage: a live bar on a terminal, a line every few seconds on stderr when piped."""

from __future__ import annotations

import datetime
import sys
import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, soft_wrap=True)  # piped lines stay whole, never wrapped at 80 columns


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class SilentProgress:
    """A StageProgress that shows nothing (the ranks of a torchrun job other than 0)."""

    def __enter__(self) -> SilentProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, completed: int, **fields: str) -> None:
        pass


class StageProgress:
    """`with StageProgress("pretrain", total) as progress: progress.update(step, loss="...")`.

    Piped output (a log file, CI) gets a line at the start, every `every_s` seconds and at the end, with the
    iteration, the fields, the elapsed time and the ETA, so a long stage never looks hung.
    """

    def __init__(self, title: str, total: int, every_s: float = 10.0, start: int = 0) -> None:
        """`start`: iterations already done (a resumed run), which the ETA must not count as this process's."""
        self.title, self.total, self.every_s, self.start = title, total, every_s, start
        self.live = console.is_terminal
        self._bar: Progress | None = None
        self._task = 0
        self._started = self._last_line = 0.0
        self._completed = start

    def __enter__(self) -> StageProgress:
        self._started = time.perf_counter()
        if self.live:
            self._bar = Progress(
                TextColumn(f"[bold]{self.title}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.title, total=self.total, completed=self.start, status="")
        else:
            self._line("")
        return self

    def update(self, completed: int, **fields: str) -> None:
        self._completed = completed
        status = "  ".join(f"{key} {value}" for key, value in fields.items())
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, status=status)
        elif completed == self.total or time.perf_counter() - self._last_line >= self.every_s:
            self._line(status)

    def _line(self, status: str) -> None:
        now = time.perf_counter()
        self._last_line = now
        elapsed = now - self._started
        eta = "-"
        if self.start < self._completed < self.total:
            eta = _clock(elapsed / (self._completed - self.start) * (self.total - self._completed))
        elif self._completed == self.total:
            eta = "0:00:00"
        parts = [f"{self.title} {self._completed}/{self.total}", status, f"elapsed {_clock(elapsed)}", f"ETA {eta}"]
        print("  ".join(part for part in parts if part), file=sys.stderr, flush=True)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, error, trace)
