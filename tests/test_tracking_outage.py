"""A tracking server that goes away mid-run: a real `mlflow server` on a real PostgreSQL, stopped with SIGTERM and
started again on the same port and store, or on another port (tests/servers.py). Nothing is mocked.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from runner.tracking.outbox import Outbox, TrackingOutage, Write, local_folder
from tests.helpers import RECIPES, metassl, start_cli
from tests.servers import create_database, free_port, postgres, start_mlflow, stop_mlflow  # noqa: F401 (fixture)

DIGITS = str(RECIPES / "digits_tiny.yaml")
ITERATIONS, LOG_EVERY = 600, 10
LONG = ["-o", "runtime.threads=1", "-o", f"schedule.iterations={ITERATIONS}", "-o", f"schedule.log_every={LOG_EVERY}"]
LONG += ["-o", "schedule.checkpoint_every=100", "-o", "schedule.eval_every=100"]


def on(uri: str, experiment: str, wait: int) -> list[str]:
    store = ["-o", f"tracking.tracking_uri={uri}", "-o", f"tracking.experiment={experiment}"]
    return [*store, "-o", f"tracking.server_wait={wait}"]


def pause_at_first_checkpoint(client: MlflowClient, runs: dict[str, subprocess.Popen[str]]) -> dict[str, str]:
    """SIGSTOP each run once its first checkpoint is on the server, so that it has training left; its run id."""
    found: dict[str, str] = {}
    deadline = time.monotonic() + 300
    while len(found) < len(runs) and time.monotonic() < deadline:
        for experiment, process in runs.items():
            assert process.poll() is None, process.communicate()[1][-3000:]
            known = client.get_experiment_by_name(experiment)
            listed = client.search_runs([known.experiment_id]) if known and experiment not in found else []
            if listed and client.list_artifacts(listed[0].info.run_id, "checkpoints"):
                process.send_signal(signal.SIGSTOP)
                found[experiment] = listed[0].info.run_id
        time.sleep(0.1)
    assert len(found) == len(runs), "no checkpoint reached the server in time"
    return found


def logged_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(point.step for point in client.get_metric_history(run_id, "loss/total"))


class Servers:
    """`mlflow server` processes on one store, stopped and started as an operator would."""

    def __init__(self, store: str, root: Path) -> None:
        self.store, self.root, self.live = store, root, []

    def start(self, port: int) -> str:
        self.live.append(start_mlflow(self.store, self.root / "artifacts", port, self.root / "server.log"))
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        while self.live:
            stop_mlflow(self.live.pop())


@pytest.mark.slow
def test_a_run_rides_out_a_tracking_outage_or_stops_and_resumes_through_another_server(postgres: str, tmp_path: Path):  # noqa: F811
    servers = Servers(create_database(postgres, "mlflow_outage"), tmp_path)
    port = free_port()
    uri = servers.start(port)
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}  # where runs keep their local checkpoints
    runs = {
        "outage-patient": start_cli("run", DIGITS, *LONG, *on(uri, "outage-patient", 600), env=env),
        "outage-hasty": start_cli("run", DIGITS, *LONG, *on(uri, "outage-hasty", 5), env=env),
    }
    try:
        check_outages(servers, port, runs, env, tmp_path)
    finally:
        for process in runs.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
        servers.stop()


def check_outages(
    servers: Servers, port: int, runs: dict[str, subprocess.Popen[str]], env: dict[str, str], tmp_path: Path
) -> None:
    uri = f"http://127.0.0.1:{port}"
    client = MlflowClient(uri)
    ids = pause_at_first_checkpoint(client, runs)
    servers.stop()  # SIGTERM: the server is gone while both runs still have training to do
    for process in runs.values():
        process.send_signal(signal.SIGCONT)

    # The hasty run waits 5 s, then stops in one line: where its checkpoint is, and the command that resumes it.
    hasty, hasty_id = runs["outage-hasty"], ids["outage-hasty"]
    _, err = hasty.communicate(timeout=300)
    assert hasty.returncode == 2, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: the tracking server {uri} did not answer for"), err[-3000:]
    assert f"continue with: metassl run --resume {hasty_id} --tracking-uri {uri}" in last
    checkpoint = tmp_path / "state" / "metassl" / "runs" / hasty_id / "checkpoints" / "last.pt"
    assert f"its last checkpoint is {checkpoint}" in last and checkpoint.exists(), last

    # The patient run trains on and waits; the server comes back on the same port and store; the run finishes,
    # every metric step logged once and every artifact there.
    patient, patient_id = runs["outage-patient"], ids["outage-patient"]
    assert patient.poll() is None
    servers.start(port)
    out, err = patient.communicate(timeout=600)
    assert patient.returncode == 0, err[-3000:]
    assert f"tracking server {uri} does not answer (connection refused): training goes on" in err
    assert f"tracking server {uri} answers again after" in err
    assert f"run {patient_id} finished" in out
    assert client.get_run(patient_id).info.status == "FINISHED"
    assert logged_steps(client, patient_id) == list(range(LOG_EVERY, ITERATIONS + 1, LOG_EVERY))
    files = {f.path for folder in ("checkpoints", "weights") for f in client.list_artifacts(patient_id, folder)}
    assert files == {"checkpoints/last.pt", "weights/classifier.safetensors"}
    assert not (tmp_path / "state" / "metassl" / "runs" / patient_id).exists()  # the server has it all

    # The hasty run's status was not set: the server shows it RUNNING, `metassl runs` shows it DEAD.
    assert client.get_run(hasty_id).info.status == "RUNNING"
    listed = metassl("runs", "--experiment", "outage-hasty", "--tracking-uri", uri)
    assert hasty_id in listed.stdout and "DEAD" in listed.stdout, listed.stderr[-2000:]

    # Resume through another server on the same store (the first one is gone): --tracking-uri is the one used.
    servers.stop()
    other_uri = servers.start(free_port())
    resumed = start_cli("run", "--resume", hasty_id, "--tracking-uri", other_uri, env=env)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert f"resuming run {hasty_id} at iteration" in err and "at iteration 0" not in err
    client = MlflowClient(other_uri)
    assert client.get_run(hasty_id).info.status == "FINISHED"
    assert logged_steps(client, hasty_id) == list(range(LOG_EVERY, ITERATIONS + 1, LOG_EVERY))
    assert not checkpoint.parent.parent.exists()


def test_writes_queue_while_the_server_is_down_and_outlive_the_process(tmp_path: Path, monkeypatch):
    """A real MLflow client on a port where nothing listens: each write queues instead of raising, a newer artifact
    replaces a queued one, and what was not sent is kept for the next process of the run."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    uri = f"http://127.0.0.1:{free_port()}"
    outbox = Outbox(MlflowClient(uri), "run0", uri, wait_seconds=60)
    outbox.send(Write("metrics", [["loss", 0.5, 1000, 10]]))
    assert outbox.is_down() and len(outbox.pending) == 1
    checkpoint = local_folder("run0") / "checkpoints" / "last.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    for _ in range(2):
        outbox.send(Write("artifact", [[str(checkpoint), "checkpoints"]], destination="checkpoints/last.pt"))
    assert [write.kind for write in outbox.pending] == ["metrics", "artifact"]

    outbox.down_since -= 61  # the outage has now lasted past the wait
    with pytest.raises(TrackingOutage) as stopped:
        outbox.flush()
    message = str(stopped.value)
    assert f"its last checkpoint is {checkpoint}, and 2 unsent logs wait in {local_folder('run0')}" in message
    assert f"continue with: metassl run --resume run0 --tracking-uri {uri}" in message
    outbox.close(ended=False)

    again = Outbox(MlflowClient(uri), "run0", uri, wait_seconds=60)
    assert [write.kind for write in again.pending] == ["metrics", "artifact"]
    assert not list(local_folder("run0").glob("pending-*.json")) and checkpoint.exists()
