"""A team's setup under faults, against a real PostgreSQL that the tests really stop (`pg_ctl stop`) and workers
that the tests really kill (SIGKILL, with their children). Nothing is mocked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import RECIPES, ROOT, start_cli, tracking_overrides
from tests.servers import cluster_of, postgres  # noqa: F401 (fixtures)

DIGITS = str(RECIPES / "digits_tiny.yaml")
SPACE = str(RECIPES / "spaces" / "digits_tiny.yaml")
HOLDOUT = ["-o", "data.validation.source=holdout", "-o", "data.validation.per_class=10"]
FAST = ["-o", "runtime.threads=1", "-o", "schedule.iterations=60", "-o", "schedule.eval_every=5"]
PARENT_TAG = "mlflow.parentRunId"


def wait_for(condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def running_children(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("metassl")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return [run for run in runs if PARENT_TAG in run.data.tags and run.info.status == "RUNNING"]


@pytest.mark.slow
def test_tune_workers_ride_out_a_20_second_database_outage(postgres: str, tmp_path: Path):  # noqa: F811
    cluster = cluster_of(postgres)
    storage = f"{postgres}/optuna"
    command = ["tune", DIGITS, "--space", SPACE, *HOLDOUT, *FAST, *tracking_overrides(tmp_path)]
    command += ["--storage", storage, "--name", "outage", "--trials", "3", "--heartbeat", "2"]
    workers = [start_cli(*command, own_group=True), start_cli(*command, own_group=True)]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    wait_for(lambda: running_children(client))  # trials are training, reporting every 5 iterations
    cluster.stop()
    time.sleep(20)
    cluster.start()
    outcomes = [worker.communicate(timeout=900) for worker in workers]
    for worker, (_, err) in zip(workers, outcomes, strict=True):
        assert worker.returncode == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
    assert any("the database is unreachable" in err and "the database is back" in err for _, err in outcomes)
    study = optuna.load_study(study_name="outage", storage=storage)
    states = Counter(trial.state.name for trial in study.trials)
    assert states["COMPLETE"] + states["PRUNED"] == 3 and states["RUNNING"] == 0, states
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    runs = [r for r in client.search_runs(["0", "1"]) if "metassl.tune.trial" in r.data.tags]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    per_trial = Counter(r.data.tags["metassl.tune.trial"] for r in runs if r.info.status != "FAILED")
    assert per_trial == Counter({f"outage/{t.number}": 1 for t in finished})  # every trial ran once


@pytest.mark.slow
def test_past_its_wait_a_worker_stops_in_one_line_and_its_trial_is_run_again(
    postgres: str,  # noqa: F811
    tmp_path: Path,
):
    cluster = cluster_of(postgres)
    storage = f"{postgres}/optuna"
    command = ["tune", DIGITS, "--space", SPACE, *HOLDOUT, *FAST, *tracking_overrides(tmp_path)]
    command += ["--storage", storage, "--name", "gave-up", "--trials", "2", "--heartbeat", "2"]
    worker = start_cli(*command, "--storage-wait", "5", own_group=True)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    wait_for(lambda: running_children(client))
    cluster.stop()
    try:
        _, err = worker.communicate(timeout=300)
    finally:
        cluster.start()
    assert worker.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: worker ") and "the database stayed unreachable for 5 s" in last, err[-3000:]
    assert not running_children(client)  # its trial's run ended (KILLED), not left RUNNING
    again = start_cli(*command, own_group=True)
    _, err = again.communicate(timeout=900)
    assert again.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="gave-up", storage=storage)
    states = Counter(trial.state.name for trial in study.trials)
    assert states["COMPLETE"] + states["PRUNED"] == 2 and states["RUNNING"] == 0, states
    assert any(t.system_attrs.get("failed_trial") is not None for t in study.trials)  # handed back, run again


@pytest.mark.slow
def test_a_killed_tune_worker_s_trial_is_queued_again(postgres: str, tmp_path: Path):  # noqa: F811
    storage = f"{postgres}/optuna"
    command = ["tune", DIGITS, "--space", SPACE, *HOLDOUT, *FAST, *tracking_overrides(tmp_path)]
    command += ["--storage", storage, "--name", "killed-worker", "--trials", "2", "--heartbeat", "2"]
    doomed = start_cli(*command, own_group=True)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    wait_for(lambda: running_children(client))
    os.killpg(doomed.pid, signal.SIGKILL)  # the worker and its trial's child, at once
    doomed.communicate()
    survivor = start_cli(*command, own_group=True)
    _, err = survivor.communicate(timeout=900)
    assert survivor.returncode == 0, err[-3000:]
    assert "its worker is gone (no heartbeat): failed and queued again" in err
    study = optuna.load_study(study_name="killed-worker", storage=storage)
    states = Counter(trial.state.name for trial in study.trials)
    assert states["COMPLETE"] + states["PRUNED"] == 2 and states["RUNNING"] == 0, states
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") is not None]
    assert retried and retried[0].state.name in ("COMPLETE", "PRUNED")  # the dead worker's trial, run again
    runs = [r for r in client.search_runs(["0", "1"]) if "metassl.tune.trial" in r.data.tags]
    assert not [r for r in runs if r.info.status == "RUNNING"]  # the orphan was marked FAILED


@pytest.mark.slow
def test_a_killed_sweep_worker_s_grid_point_is_taken_over(postgres: str, tmp_path: Path):  # noqa: F811
    storage = f"{postgres}/optuna"
    command = ["sweep", DIGITS, "--grid", "seed=0,1", *FAST, *tracking_overrides(tmp_path)]
    command += ["--storage", storage, "--name", "killed-sweep", "--heartbeat", "2"]
    doomed = start_cli(*command, own_group=True)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    wait_for(lambda: running_children(client))
    orphan = running_children(client)[0]
    os.killpg(doomed.pid, signal.SIGKILL)  # the worker and its child, at once: nobody ends the child's run
    doomed.communicate()
    survivor = start_cli(*command, own_group=True)
    _, err = survivor.communicate(timeout=900)
    assert survivor.returncode == 0, err[-3000:]
    assert f"is gone: taken over; its run {orphan.info.run_id} marked FAILED" in err
    assert client.get_run(orphan.info.run_id).info.status == "FAILED"
    parent = client.get_run(orphan.data.tags[PARENT_TAG])
    assert parent.info.status == "FINISHED"
    children = [r for r in client.search_runs(["0", "1"]) if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    finished = Counter(r.data.tags["metassl.sweep.child"] for r in children if r.info.status == "FINISHED")
    assert finished == Counter({"seed=0": 1, "seed=1": 1})
    again = subprocess.run([sys.executable, "-m", "runner.cli", *command], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0 and again.stderr.count("already finished, skipped") == 2, again.stderr[-3000:]
