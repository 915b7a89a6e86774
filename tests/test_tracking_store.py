"""The tracking package: one client per store, the loop without MLflow, and where a SQLite URI points."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.run.build import build_components, prepare_data
from runner.run.loop import LoopState, train
from runner.tracking import NullTracker, Tracker, client_for, describe_store, sqlite_file
from schemas import load_recipe
from schemas.training import Tracking
from tests.helpers import RECIPES


def test_one_client_per_store(tmp_path: Path) -> None:
    first = Tracking(tracking_uri=f"sqlite:///{tmp_path}/a.db", artifact_root=str(tmp_path))
    again = Tracking(tracking_uri=first.tracking_uri, experiment="other", artifact_root=str(tmp_path))
    other = Tracking(tracking_uri=f"sqlite:///{tmp_path}/b.db", artifact_root=str(tmp_path))
    assert client_for(first) is client_for(again)
    assert client_for(first) is not client_for(other)


def test_the_loop_runs_without_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NullTracker takes the loop's logging: the run trains and evaluates, and no store is touched."""
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(
        RECIPES / "digits_tiny.yaml",
        [
            "schedule.iterations=20",
            "schedule.eval_every=10",
            "runtime.threads=1",
            "tracking.tracking_uri=sqlite:///x.db",
        ],
    )
    components = build_components(recipe, prepare_data(recipe))
    tracker: Tracker = NullTracker()
    state = LoopState()
    evaluation = train(components, tracker, tmp_path / "last.pt", state, None)
    assert state.iteration == 20
    assert 0.0 <= evaluation.accuracy <= 1.0 and evaluation.confusion.sum() > 0
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "mlruns").exists()


def test_a_sqlite_uri_says_which_file_it_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_file("sqlite:////tmp/x.db") == Path("/tmp/x.db")
    assert sqlite_file("http://host:5000") is None
    relative = describe_store("sqlite:///mlruns/mlflow.db")
    assert relative == f"store sqlite:///mlruns/mlflow.db (the file {tmp_path}/mlruns/mlflow.db)"
    looks_absolute = describe_store("sqlite:///tmp/x.db")  # /tmp exists: the user most likely meant it
    assert f"(the file {tmp_path}/tmp/x.db)" in looks_absolute
    assert "write sqlite:////tmp/x.db (four slashes) for /tmp/x.db" in looks_absolute
    assert "four slashes" not in describe_store(f"sqlite:///{os.path.relpath('/', tmp_path)}tmp/x.db")
