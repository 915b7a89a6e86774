"""Learning curves for `metassl report --curve`: a metric's mean over a row's seeds at each logged step."""

from __future__ import annotations

import statistics


def mean_curve(histories: list[dict[int, float]]) -> dict[int, float]:
    """Step -> mean over the runs' histories, at the steps every run logged (a run without the metric: empty)."""
    steps = set.intersection(*(set(history) for history in histories)) if histories else set()
    return {step: statistics.fmean(history[step] for history in histories) for step in sorted(steps)}


def curves_markdown(curves: dict[str, dict[int, float]], key: str, factor: float) -> str:
    """One line per row, one column per step that any row logged ('-' where a row did not)."""
    steps = sorted({step for curve in curves.values() for step in curve})
    lines = [
        f"| row | {' | '.join(str(step) for step in steps)} |",
        "| --- | " + " | ".join("---:" for _ in steps) + " |",
    ]
    for label, curve in curves.items():
        cells = [f"{curve[step] * factor:.2f}" if step in curve else "-" for step in steps]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return f"Learning curves: mean {key} over the seeds at each logged step\n\n" + "\n".join(lines) + "\n"
