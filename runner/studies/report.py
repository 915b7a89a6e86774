"""`metassl report`: mean ± std over seeds per method and label budget, from a sweep or a whole experiment."""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.studies.curves import curves_markdown, mean_curve
from runner.studies.paired import Reference, paired_markdown, paired_rows
from runner.studies.publish import publish
from runner.studies.sweep_plan import CHILD_TAG, ROLE_TAG
from runner.tracking import MlflowTracker, child_runs, experiment_runs, metric_histories, tracking_of_run
from schemas import UserError
from schemas.training import Tracking

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
METHOD_ORDER = ["supervised", "fixmatch", "generative", "metassl"]
# Grid keys already shown as the method and labels columns, or averaged over.
NOT_GROUPED = {"seed", "name", "method.name", "data.labels_per_class", "data.total_labels"}


@dataclass
class Source:
    title: str
    tracking: Tracking
    runs: list[Any]
    group_keys: list[str]
    parent_run_id: str | None = None


@dataclass
class Row:
    group: dict[str, str]
    values: list[float] = field(default_factory=list)
    seeds: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def mean_seconds(self) -> float:
        """Mean wall time per run, NaN if no run has both its start and end times."""
        return statistics.fmean(self.seconds) if self.seconds else math.nan

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (n - 1); NaN for a single seed."""
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan


def varying_params(runs: list[Any]) -> list[str]:
    """Params with two or more values among the runs that have them (tracking.* and seed aside)."""
    seen: dict[str, set[str]] = {}
    for run in runs:
        for key, value in run.data.params.items():
            seen.setdefault(key, set()).add(value)
    return sorted(k for k, v in seen.items() if len(v) > 1 and not k.startswith("tracking.") and k not in NOT_GROUPED)


def _newest_per(runs: list[Any], key_of: Any) -> list[Any]:
    """Runs come newest first: keep the first per key, so a repeated config counts once."""
    kept: dict[str, Any] = {}
    for run in runs:
        kept.setdefault(key_of(run), run)
    return list(kept.values())


def load_source(source: str, store: Tracking) -> Source:
    if RUN_ID.match(source):
        tracking, parent = tracking_of_run(store, source)
        children = child_runs(tracking, source)
        if not children:
            raise UserError(f"run {source} has no child runs; give a sweep's parent run id or an experiment name")
        finished = [run for run in children if run.info.status == "FINISHED"]
        runs = _newest_per(finished, lambda run: run.data.tags.get(CHILD_TAG, run.info.run_id))
        # Varying params rather than grid keys: a grid over whole blocks (method={...},{...}) has no param of its own.
        title = f"{parent.info.run_name} (parent run {source})"
        return Source(title, tracking, runs, varying_params(runs), parent_run_id=source)
    tracking = store.model_copy(update={"experiment": source})
    everything = [run for run in experiment_runs(tracking) if run.data.tags.get(ROLE_TAG) != "parent"]
    finished = [run for run in everything if run.info.status == "FINISHED"]
    runs = _newest_per(finished, lambda run: run.data.tags.get("metassl.recipe_hash", run.info.run_id))
    return Source(f"experiment {source}", tracking, runs, varying_params(runs))


def _labels_order(labels: str) -> tuple[int, str]:
    number = re.match(r"\d+", labels)
    return (int(number.group()) if number else 10**9, labels)


def _method_order(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def summarise(source: Source, metric: str) -> tuple[list[str], list[Row], int]:
    """(columns, rows sorted by labels then method, runs without the metric)."""
    columns = ["method", "labels", *source.group_keys]
    rows: dict[tuple[str, ...], Row] = {}
    missing = 0
    for run in source.runs:
        value = run.data.metrics.get(metric)
        if value is None:
            missing += 1
            continue
        tags, params = run.data.tags, run.data.params
        group = {
            "method": tags.get("method", params.get("method.name", "?")),
            "labels": tags.get("labels", "?"),
            **{key: params.get(key, "-") for key in source.group_keys},
        }
        row = rows.setdefault(tuple(group.values()), Row(group))
        row.values.append(float(value))
        row.seeds.append(tags.get("seed", params.get("seed", "?")))
        row.run_ids.append(run.info.run_id)
        start, end = getattr(run.info, "start_time", None), getattr(run.info, "end_time", None)
        if start and end:
            row.seconds.append((end - start) / 1000)
    ordered = sorted(
        rows.values(),
        key=lambda r: (_labels_order(r.group["labels"]), _method_order(r.group["method"]), list(r.group.values())),
    )
    return columns, ordered, missing


def _scale(metric: str) -> tuple[float, str]:
    return (100.0, f"{metric} (%)") if "accuracy" in metric else (1.0, metric)


def markdown(columns: list[str], rows: list[Row], metric: str) -> str:
    factor, header = _scale(metric)
    lines = [
        "| " + " | ".join([*columns, "seeds", f"{header}, mean ± std", "s / run"]) + " |",
        "| " + " | ".join(["---"] * len(columns) + ["---:", "---:", "---:"]) + " |",
    ]
    for row in rows:
        std = "n/a" if math.isnan(row.std) else f"{row.std * factor:.2f}"
        seconds = "n/a" if math.isnan(row.mean_seconds) else f"{row.mean_seconds:.0f}"
        cells = [row.group[c] for c in columns] + [str(len(row.values)), f"{row.mean * factor:.2f} ± {std}", seconds]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(columns: list[str], rows: list[Row], metric: str) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*columns, "n", "seeds", f"{metric}_mean", f"{metric}_std", "seconds_mean", "run_ids"])
    for row in rows:
        std = "" if math.isnan(row.std) else f"{row.std:.6f}"
        seconds = "" if math.isnan(row.mean_seconds) else f"{row.mean_seconds:.1f}"
        seeds, run_ids = " ".join(row.seeds), " ".join(row.run_ids)
        cells = [*(row.group[c] for c in columns), len(row.values), seeds, f"{row.mean:.6f}", std, seconds, run_ids]
        writer.writerow(cells)
    return buffer.getvalue()


def figure(columns: list[str], rows: list[Row], metric: str, title: str) -> Any:
    """Grouped bars: one group per label budget, one bar per method (and other grid keys), std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factor, header = _scale(metric)
    budgets = list(dict.fromkeys(row.group["labels"] for row in rows))
    label_of = _series_labels(rows, columns)
    series = list(dict.fromkeys(label_of[id(row)] for row in rows))
    width = 0.8 / max(1, len(series))
    fig, axes = plt.subplots(figsize=(max(5.0, 1.2 + 0.45 * len(rows)), 4.0))
    for i, name in enumerate(series):
        xs, means, stds = [], [], []
        for row in rows:
            if label_of[id(row)] == name:
                xs.append(budgets.index(row.group["labels"]) + (i - (len(series) - 1) / 2) * width)
                means.append(row.mean * factor)
                stds.append(0.0 if math.isnan(row.std) else row.std * factor)
        axes.bar(xs, means, width, yerr=stds, capsize=3, label=name)
    axes.set_xticks(range(len(budgets)), [f"labels: {b}" for b in budgets])
    axes.set_ylabel(f"{header}, mean ± std over seeds")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axes.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _series_labels(rows: list[Row], columns: list[str], full: bool = False) -> dict[int, str]:
    """A legend label per row: the method, plus only the settings that differ between that method's rows.

    `full` keeps the whole key paths (for tables, where `--reference` selects rows by them)."""
    keys = [c for c in columns if c not in ("method", "labels")]
    by_method: dict[str, list[Row]] = {}
    for row in rows:
        by_method.setdefault(row.group["method"], []).append(row)
    labels = {}
    for method, method_rows in by_method.items():
        differing = [k for k in keys if len({r.group[k] for r in method_rows}) > 1]
        for row in method_rows:
            details = ", ".join(f"{k if full else k.rsplit('.', 1)[-1]}={row.group[k]}" for k in differing)
            labels[id(row)] = f"{method} ({details})" if details else method
    return labels


def make_report(
    source_name: str,
    store: Tracking,
    metric: str,
    output: Path | None,
    references: list[str] | None = None,
    curve: str | None = None,
) -> str:
    """Build the table and plot; log them to the parent run (if any) and write them to `output` (if given).

    With `references`, also a table of each row's paired difference (same seeds) against each reference row; with
    `curve`, a table of that metric's mean over each row's seeds at every logged step.
    """
    import matplotlib.pyplot as plt

    parsed = [Reference.parse(text) for text in references or []]
    source = load_source(source_name, store)
    columns, rows, missing = summarise(source, metric)
    if not rows:
        raise UserError(f"{source.title}: no finished run has the metric '{metric}'")
    table = markdown(columns, rows, metric)
    note = f"{source.title}: {sum(len(r.values) for r in rows)} finished runs"
    if missing:
        note += f" ({missing} without {metric} left out)"
    text = f"{note}; mean ± sample std over seeds\n\n{table}"
    if parsed:
        factor, _ = _scale(metric)
        differences = paired_rows(rows, parsed, _series_labels(rows, columns, full=True))
        unit = "points" if factor == 100.0 else metric
        text += "\nPaired differences (the same seeds: same label split, initialization and labeled-data order):\n\n"
        text += paired_markdown(differences, factor, unit)
    if curve is not None:
        labels = _series_labels(rows, columns)
        every_run = metric_histories(source.tracking, [run_id for row in rows for run_id in row.run_ids], curve)
        curves, start = {}, 0
        for row in rows:  # one store query for all rows, split back per row
            histories, start = every_run[start : start + len(row.run_ids)], start + len(row.run_ids)
            curves[f"{labels[id(row)]}, {row.group['labels']}"] = mean_curve(histories)
        if not any(curves.values()):
            raise UserError(f"{source.title}: no run logged the metric '{curve}' (--curve); e.g. test/accuracy")
        text += "\n" + curves_markdown(curves, curve, _scale(curve)[0])
    fig = figure(columns, rows, metric, source.title)
    tracker = None if source.parent_run_id is None else MlflowTracker.attach(source.tracking, source.parent_run_id)
    publish(tracker, output, {"results.md": text, "results.csv": csv_text(columns, rows, metric)}, {"results.png": fig})
    plt.close(fig)
    return text
