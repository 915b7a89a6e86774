"""From one machine to many: a real `mlflow server` on a real PostgreSQL, tune and sweep workers sharing one study.

The servers come from tests/servers.py (started once per session, stopped afterwards); nothing is mocked.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from runner.studies.claims import claim, drop_lease, holder, release, sqlite_url, take_lease
from runner.studies.search_space import load_space
from runner.studies.tune import plan_tune
from schemas import UserError
from schemas.recipe import read_recipe_document
from tests.helpers import RECIPES, ROOT, devices_in_progress, devices_of, metassl, start_cli, tracking_overrides
from tests.servers import Server, free_port, mlflow_server, postgres  # noqa: F401 (fixtures)

DIGITS = str(RECIPES / "digits_tiny.yaml")
SPACE = str(RECIPES / "spaces" / "digits_tiny.yaml")
HOLDOUT = ["-o", "data.validation.source=holdout", "-o", "data.validation.per_class=10"]
FAST = ["-o", "runtime.threads=1", "-o", "schedule.iterations=40", "-o", "schedule.eval_every=20"]
PARENT_TAG = "mlflow.parentRunId"


def on_server(server: Server, experiment: str) -> list[str]:
    return ["-o", f"tracking.tracking_uri={server.uri}", "-o", f"tracking.experiment={experiment}"]


def finish(process: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def run_id_of(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("run ") and "finished: test accuracy" in last, result.stdout
    return last.split()[1]


# --- without servers -------------------------------------------------------------------------------------------


def test_an_unreachable_server_is_one_line_within_seconds(tmp_path: Path):
    started = time.monotonic()
    result = metassl("run", DIGITS, "-o", f"tracking.tracking_uri=http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert time.monotonic() - started < 30
    assert result.stderr.startswith("error: tracking.tracking_uri: no MLflow server answers at http://127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1
    listing = metassl("runs", "--tracking-uri", f"http://127.0.0.1:{free_port()}")
    assert listing.returncode == 2 and "no MLflow server answers" in listing.stderr


def test_a_claim_has_one_owner_until_given_back(tmp_path: Path):
    url = sqlite_url(tmp_path / "claims.db")
    assert claim(url, "sweep/x/seed=0", "worker-a") == "worker-a"
    assert claim(url, "sweep/x/seed=0", "worker-b") == "worker-a"
    release(url, "sweep/x/seed=0", "worker-b")  # only the owner can give it back
    assert holder(url, "sweep/x/seed=0") == "worker-a"
    release(url, "sweep/x/seed=0", "worker-a")
    assert claim(url, "sweep/x/seed=0", "worker-b") == "worker-b"


def test_a_lease_is_taken_over_once_its_holder_is_gone(tmp_path: Path):
    url = sqlite_url(tmp_path / "claims.db")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here = __import__("socket").gethostname()
    gone, alive = f"{here}:{dead.stdout.strip()}:a", f"{here}:{__import__('os').getpid()}:b"
    assert take_lease(url, "p", gone, 60) == (True, None)
    assert take_lease(url, "p", f"{here}:1:c", 60) == (True, gone)  # its pid is dead on this host: taken over
    assert take_lease(url, "q", "elsewhere:1:d", 60) == (True, None)
    assert take_lease(url, "q", alive, 60) == (False, None)  # another host's lease, still running
    assert take_lease(url, "r", "elsewhere:1:d", -1) == (True, None)
    assert take_lease(url, "r", alive, 60) == (True, "elsewhere:1:d")  # expired: taken over
    drop_lease(url, "r", alive)
    assert take_lease(url, "r", "elsewhere:1:d", 60) == (True, None)  # given back: free for anyone


@pytest.mark.parametrize(
    ("space", "fragment"),
    [
        ({"parameters": {"optim.classifier.nope": {"type": "float", "low": 0.1, "high": 0.2}}}, "optim.classifier"),
        ({"parameters": {"optim.classifier.lr": {"type": "float", "low": 0.2, "high": 0.1}}}, "must be below high"),
        ({"parameters": {"optim.classifier.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}}, "log"),
        ({"parameters": {"optim.classifier.lr": {"type": "normal", "low": 0.0, "high": 0.1}}}, "type"),
        ({"parameters": {"optim.classifier.lr": {"type": "float", "low": -1.0, "high": 0.1}}}, "lr"),
        ({"parameters": {"classifier.width": {"type": "choice", "values": []}}}, "values"),
        ({"parameters": {"tracking.experiment": {"type": "choice", "values": ["a", "b"]}}}, "one store"),
        ({"lr": {"type": "float", "low": 0.1, "high": 0.2}}, "'parameters' block"),
    ],
)
def test_a_bad_search_space_is_refused_before_any_trial(tmp_path: Path, space: dict, fragment: str):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    document = read_recipe_document(Path(DIGITS))
    with pytest.raises(UserError, match=fragment):
        load_space(path, document)


def test_the_example_spaces_load_against_their_recipes():
    for recipe, space in [("digits_tiny", "digits_tiny"), ("fashion_mnist_40labels", "fashion_mnist_metassl")]:
        loaded = load_space(RECIPES / "spaces" / f"{space}.yaml", read_recipe_document(RECIPES / f"{recipe}.yaml"))
        assert loaded.parameters


def test_tuning_on_the_test_split_or_without_a_holdout_is_refused(tmp_path: Path):
    result = metassl("tune", DIGITS, "--space", SPACE, *HOLDOUT, "--objective", "test/accuracy")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --objective test/accuracy: tuning on the test split fits the test set; "
        "tune on val/accuracy (a holdout split: data.validation.source=holdout)"
    ]
    with pytest.raises(UserError, match=r"data\.validation\.source is 'labeled'; tuning needs a holdout"):
        plan_tune(Path(DIGITS), Path(SPACE), [], None, None, 2, "val/accuracy")


@pytest.mark.slow
def test_tune_on_a_local_store_continues_the_same_study(tmp_path: Path):
    command = ["tune", DIGITS, "--space", SPACE, *HOLDOUT, *FAST, *tracking_overrides(tmp_path)]
    first = metassl(*command, "--trials", "2", "--jobs", "2", "--devices", "2,3")
    assert first.returncode == 0, first.stderr[-3000:]
    # Each trial is a child process on its own device, as the trial's run recorded it.
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    shown = devices_in_progress(first.stderr)  # two trials at once, on different devices
    trials = [r for r in client.search_runs(["0", "1"]) if "metassl.tune.trial" in r.data.tags]
    recorded = {r.data.tags["metassl.tune.trial"].rsplit("/", 1)[1]: devices_of(client, r.info.run_id) for r in trials}
    assert recorded == {number: shown[f"[trial {number}]"] for number in recorded} and len(recorded) == 2
    assert sorted(recorded.values()) == ["2", "3"]
    again = metassl(*command, "--trials", "3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2/3 trials done" in again.stderr  # picked up where the first invocation stopped
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path}/mlruns/optuna.db")
    assert len(study.trials) == 3
    best_line = next(line for line in again.stdout.splitlines() if line.startswith("its recipe:"))
    parent = best_line.split("-r ", 1)[1].split()[0]
    best = Path(client.download_artifacts(parent, "best/recipe.yaml", str(tmp_path)))
    rerun = metassl("run", str(best), "-o", "runtime.threads=1")
    assert rerun.returncode == 0, rerun.stderr[-3000:]  # the best recipe runs as is


# --- against a real mlflow server on a real PostgreSQL ------------------------------------------------------------


@pytest.mark.slow
def test_run_resume_eval_runs_report_through_the_server(mlflow_server: Server, tmp_path: Path):  # noqa: F811
    experiment = "through-the-server"
    longer = ["-o", "runtime.threads=1", "-o", "schedule.iterations=400", "-o", "schedule.checkpoint_every=40"]
    process = start_cli("run", DIGITS, *longer, *on_server(mlflow_server, experiment))
    client = MlflowClient(mlflow_server.uri)
    deadline, run_id = time.monotonic() + 180, None
    while time.monotonic() < deadline and process.poll() is None:
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found else []
        if runs and client.list_artifacts(runs[0].info.run_id, "checkpoints"):
            run_id = runs[0].info.run_id
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert run_id, "no checkpoint reached the server before the run ended"
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    # The artifacts live on the server, not under the client's working directory.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert list(mlflow_server.artifacts.rglob("checkpoints/last.pt"))
    assert not list(Path(ROOT / "mlruns").rglob(f"{run_id}*"))

    resumed = metassl("run", "--resume", run_id, "--tracking-uri", mlflow_server.uri)
    assert run_id_of(resumed) == run_id
    assert "resuming run" in resumed.stderr and "at iteration 0" not in resumed.stderr
    assert client.get_run(run_id).info.status == "FINISHED"

    evaluated = metassl("eval", run_id, "--tracking-uri", mlflow_server.uri)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "matches" in evaluated.stdout

    listed = metassl("runs", "--experiment", experiment, "--tracking-uri", mlflow_server.uri)
    assert run_id in listed.stdout and "FINISHED" in listed.stdout

    reported = metassl("report", experiment, "--tracking-uri", mlflow_server.uri, "--output", str(tmp_path / "r"))
    assert reported.returncode == 0, reported.stderr[-3000:]
    assert "| supervised | 4/class |" in reported.stdout
    assert (tmp_path / "r" / "results.png").stat().st_size > 0

    ui = metassl("ui", "--tracking-uri", mlflow_server.uri)
    assert ui.returncode == 0 and "is an MLflow server: its UI is at http://127.0.0.1:" in ui.stdout


@pytest.mark.slow
def test_two_tune_workers_and_two_sweep_workers_share_the_work(mlflow_server: Server, postgres: str):  # noqa: F811
    storage = f"{postgres}/optuna"
    tune = ["tune", DIGITS, "--space", SPACE, *HOLDOUT, *FAST, *on_server(mlflow_server, "team-tune")]
    tune += ["--storage", storage, "--name", "digits-team", "--trials", "4"]
    sweep = ["sweep", DIGITS, "--grid", "seed=0,1,2", *FAST, *on_server(mlflow_server, "team-sweep")]
    sweep += ["--storage", storage, "--name", "digits-grid"]
    workers = [start_cli(*tune), start_cli(*tune), start_cli(*sweep), start_cli(*sweep)]
    outcomes = [finish(worker) for worker in workers]
    for code, _, err in outcomes:
        assert code == 0, err[-3000:]
    client = MlflowClient(mlflow_server.uri)

    # Tune: every trial that ran did so exactly once, under the one parent run of the study.
    study = optuna.load_study(study_name="digits-team", storage=storage)
    ran = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(ran) == 4
    experiment = client.get_experiment_by_name("team-tune").experiment_id
    runs = client.search_runs([experiment])
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    per_trial = Counter(r.data.tags["metassl.tune.trial"] for r in children)
    assert per_trial == Counter({f"digits-team/{t.number}": 1 for t in ran})
    assert {t.user_attrs["run_id"] for t in ran} == {r.info.run_id for r in children}
    assert all(t.number in [int(k.rsplit("/", 1)[1]) for k in per_trial] for t in ran)
    workers_seen = [err for _, _, err in outcomes[:2] if "[trial" in err]
    assert len(workers_seen) == 2  # both tune workers ran trials

    # Sweep: each grid point ran exactly once, under the one parent.
    experiment = client.get_experiment_by_name("team-sweep").experiment_id
    runs = client.search_runs([experiment])
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parents[0].info.run_id]
    assert Counter(r.data.tags["metassl.sweep.child"] for r in children) == Counter(
        {"seed=0": 1, "seed=1": 1, "seed=2": 1}
    )
    assert all(r.info.status == "FINISHED" for r in children)

    # The study's report, through the server.
    report = metassl("report", parents_of(client, "team-tune"), "--tracking-uri", mlflow_server.uri)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "study digits-team" in report.stdout and "parameter importances" in report.stdout
    parent = parents_of(client, "team-tune")
    assert {Path(f.path).name for f in client.list_artifacts(parent, "report")} >= {"study.md", "history.png"}
    best = yaml.safe_load(Path(client.download_artifacts(parent, "best/recipe.yaml")).read_text())
    assert best["data"]["validation"]["source"] == "holdout"


def parents_of(client: MlflowClient, experiment: str) -> str:
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return next(r.info.run_id for r in runs if PARENT_TAG not in r.data.tags)
