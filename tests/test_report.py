"""`metassl report`: mean ± std over seeds per method and label budget, from a sweep or an experiment."""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from runner.studies.report import Source, csv_text, markdown, summarise
from schemas.training import Tracking
from tests.helpers import RECIPES, metassl, tracking_overrides

DIGITS = str(RECIPES / "digits_tiny.yaml")
FAST = ["-o", "schedule.iterations=20", "-o", "schedule.eval_every=20", "-o", "runtime.threads=1"]


def fake_run(method: str, labels: str, seed: int, accuracy: float, **params: str) -> SimpleNamespace:
    return SimpleNamespace(
        info=SimpleNamespace(run_id=f"{method}-{labels}-{seed}-{params}"),
        data=SimpleNamespace(
            tags={"method": method, "labels": labels, "seed": str(seed)},
            params={"method.name": method, "seed": str(seed), **params},
            metrics={"final/test_accuracy": accuracy},
        ),
    )


def test_summarise_groups_by_method_labels_and_other_grid_keys():
    runs = [
        fake_run("metassl", "4/class", 0, 0.70, **{"method.meta.gradient": "exact"}),
        fake_run("metassl", "4/class", 1, 0.74, **{"method.meta.gradient": "exact"}),
        fake_run("metassl", "4/class", 0, 0.60, **{"method.meta.gradient": "finite_difference"}),
        fake_run("supervised", "4/class", 0, 0.50),
        fake_run("supervised", "4/class", 1, 0.54),
        fake_run("supervised", "1/class", 0, 0.30),
    ]
    source = Source("test", Tracking(), runs, ["method.meta.gradient"])
    columns, rows, missing = summarise(source, "final/test_accuracy")
    assert missing == 0
    assert columns == ["method", "labels", "method.meta.gradient"]
    assert [(r.group["method"], r.group["labels"], r.group["method.meta.gradient"]) for r in rows] == [
        ("supervised", "1/class", "-"),
        ("supervised", "4/class", "-"),
        ("metassl", "4/class", "exact"),
        ("metassl", "4/class", "finite_difference"),
    ]
    assert rows[2].mean == pytest.approx(0.72) and rows[2].std == pytest.approx(statistics.stdev([0.70, 0.74]))
    table = markdown(columns, rows, "final/test_accuracy")
    assert "| metassl | 4/class | exact | 2 | 72.00 ± 2.83 |" in table
    assert "| supervised | 1/class | - | 1 | 30.00 ± n/a |" in table
    sheet = list(csv.DictReader(io.StringIO(csv_text(columns, rows, "final/test_accuracy"))))
    assert sheet[2]["final/test_accuracy_mean"] == "0.720000" and sheet[0]["final/test_accuracy_std"] == ""


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    store = tmp_path_factory.mktemp("report")
    result = metassl("sweep", DIGITS, "--grid", "seed=0,1", *FAST, *tracking_overrides(store))
    assert result.returncode == 0, result.stderr[-3000:]
    parent = result.stderr.split("parent run ")[1].split()[0]
    return store, parent


def test_report_on_a_sweep_writes_and_logs_markdown_csv_and_plot(swept, tmp_path: Path):
    store, parent = swept
    uri = f"sqlite:///{store / 'mlruns'}/mlflow.db"
    result = metassl("report", parent, "--tracking-uri", uri, "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    client = MlflowClient(tracking_uri=uri)
    children = client.search_runs(
        [client.get_run(parent).info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    accuracies = [run.data.metrics["final/test_accuracy"] for run in children]
    assert len(accuracies) == 2
    mean, std = statistics.fmean(accuracies) * 100, statistics.stdev(accuracies) * 100
    assert f"| supervised | 4/class | 2 | {mean:.2f} ± {std:.2f} |" in result.stdout
    for name in ("results.md", "results.csv", "results.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "results.csv").read_text())))
    assert len(rows) == 1 and rows[0]["n"] == "2" and rows[0]["seeds"] in ("0 1", "1 0")
    logged = Path(client.get_run(parent).info.artifact_uri.removeprefix("file://")) / "report"
    assert sorted(path.name for path in logged.iterdir()) == ["results.csv", "results.md", "results.png"]

    by_experiment = metassl("report", "metassl", "--tracking-uri", uri)
    assert by_experiment.returncode == 0, by_experiment.stderr
    assert f"| supervised | 4/class | 2 | {mean:.2f} ± {std:.2f} |" in by_experiment.stdout


def test_report_on_an_unknown_experiment_is_one_line_exit_2(swept):
    store, _ = swept
    result = metassl("report", "nope", "--tracking-uri", f"sqlite:///{store / 'mlruns'}/mlflow.db")
    assert result.returncode == 2 and "no experiment or run 'nope'" in result.stderr


def test_report_curve_and_cost_per_run(swept):
    store, parent = swept
    uri = f"sqlite:///{store / 'mlruns'}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    children = client.search_runs(
        [client.get_run(parent).info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    at_20 = statistics.fmean(
        point.value
        for run in children
        for point in client.get_metric_history(run.info.run_id, "test/accuracy")
        if point.step == 20
    )
    seconds = statistics.fmean((run.info.end_time - run.info.start_time) / 1000 for run in children)
    result = metassl("report", parent, "--tracking-uri", uri, "--curve", "test/accuracy")
    assert result.returncode == 0, result.stderr
    assert "| row | 20 |" in result.stdout
    assert f"| supervised, 4/class | {at_20 * 100:.2f} |" in result.stdout
    assert f" | {seconds:.0f} |" in result.stdout  # the mean wall time per run, after mean ± std

    missing = metassl("report", parent, "--tracking-uri", uri, "--curve", "val/nope")
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "no run logged the metric 'val/nope'" in missing.stderr
