"""Where a report goes: the parent run's `report/` artifacts, and a folder when the user names one."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.tracking import Tracker


def publish(tracker: Tracker | None, output: Path | None, texts: Mapping[str, str], figures: Mapping[str, Any]) -> None:
    """Log each text and figure as `report/<name>` to the run, and write it to `output/<name>`."""
    if tracker is not None:
        for name, text in texts.items():
            tracker.log_text(text, f"report/{name}")
        for name, figure in figures.items():
            tracker.log_figure(figure, f"report/{name}")
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            (output / name).write_text(text)
        for name, figure in figures.items():
            figure.savefig(output / name, dpi=120)
