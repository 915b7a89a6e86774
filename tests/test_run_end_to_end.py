"""`metassl run` end to end on real data: what it logs, reproducibility, kill-and-resume, eval."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import RECIPES, kill_after_first_checkpoint, metassl, tracking_overrides

DIGITS = str(RECIPES / "digits_tiny.yaml")
# Long enough that a SIGKILL lands between the first checkpoint and the end.
LONGER = ["-o", "schedule.iterations=600", "-o", "schedule.checkpoint_every=50", "-o", "schedule.eval_every=200"]


def client_for(store: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{store / 'mlruns'}/mlflow.db")


def run_id_of(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("run ") and "finished: test accuracy" in last, result.stdout
    return last.split()[1]


def final_metrics(client: MlflowClient, run_id: str) -> dict[str, float]:
    metrics = client.get_run(run_id).data.metrics
    return {key: metrics[key] for key in ("final/test_accuracy", "test/loss", "test/accuracy")}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    store = tmp_path_factory.mktemp("store")
    return store, run_id_of(metassl("run", DIGITS, *LONGER, *tracking_overrides(store)))


def test_run_logs_params_metrics_artifacts_and_tags(finished_run: tuple[Path, str]):
    store, run_id = finished_run
    client = client_for(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["method.name"] == "supervised"
    assert run.data.params["schedule.iterations"] == "600"
    assert run.data.tags["dataset"] == "digits" and run.data.tags["seed"] == "0"
    assert run.data.tags["method"] == "supervised" and run.data.tags["labels"] == "4/class"
    accuracy = run.data.metrics["final/test_accuracy"]
    assert 0.5 < accuracy <= 1.0  # 40 labels on digits: far above the 0.1 of chance
    history = client.get_metric_history(run_id, "test/accuracy")
    assert [point.step for point in history] == [200, 400, 600]
    assert len(client.get_metric_history(run_id, "loss/total")) >= 10
    artifacts = {
        path.relative_to(Path(run.info.artifact_uri.removeprefix("file://"))).as_posix()
        for path in Path(run.info.artifact_uri.removeprefix("file://")).rglob("*")
        if path.is_file()
    }
    for expected in (
        "recipe.yaml",
        "split/label_split.json",
        "environment/environment.json",
        "environment/pip_freeze.txt",
        "weights/classifier.safetensors",
        "plots/confusion_matrix.png",
        "plots/learning_curves.png",
        "metrics/final.json",
        "checkpoints/last.pt",
    ):
        assert expected in artifacts, sorted(artifacts)
    split = yaml.safe_load((Path(run.info.artifact_uri.removeprefix("file://")) / "split/label_split.json").read_text())
    assert len(split["labeled"]) == 40


def test_rerunning_the_logged_recipe_gives_the_same_accuracy(finished_run: tuple[Path, str], tmp_path: Path):
    store, run_id = finished_run
    client = client_for(store)
    logged_recipe = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "recipe.yaml"
    copy = tmp_path / "shared_recipe.yaml"
    copy.write_text(logged_recipe.read_text())
    again = run_id_of(metassl("run", str(copy)))  # the store named in the recipe itself
    assert again != run_id
    assert final_metrics(client, again) == final_metrics(client, run_id)


def test_killed_run_resumes_to_the_same_final_metrics(finished_run: tuple[Path, str], tmp_path: Path):
    store, uninterrupted = finished_run
    checkpoint = kill_after_first_checkpoint(tmp_path, "run", DIGITS, *LONGER, *tracking_overrides(tmp_path))
    client = client_for(tmp_path)
    killed = checkpoint.parents[2].name
    assert client.get_run(killed).info.status == "RUNNING"  # killed mid-run, not finished

    # `--resume RECIPE` (with the same overrides) finds the newest unfinished run of that exact recipe.
    resumed = metassl("run", "--resume", DIGITS, *LONGER, *tracking_overrides(tmp_path))
    assert run_id_of(resumed) == killed
    assert "resuming run" in resumed.stderr
    assert client.get_run(killed).info.status == "FINISHED"
    assert final_metrics(client, killed) == final_metrics(client_for(store), uninterrupted)


def test_resuming_a_finished_run_is_refused(finished_run: tuple[Path, str]):
    store, run_id = finished_run
    result = metassl("run", "--resume", run_id, "--tracking-uri", f"sqlite:///{store / 'mlruns'}/mlflow.db")
    assert result.returncode == 2
    assert "already finished" in result.stderr


def test_eval_reproduces_the_logged_accuracy(finished_run: tuple[Path, str]):
    store, run_id = finished_run
    result = metassl("eval", run_id, "--tracking-uri", f"sqlite:///{store / 'mlruns'}/mlflow.db")
    assert result.returncode == 0, result.stderr
    assert "matches" in result.stdout


def test_resume_by_recipe_without_an_unfinished_run(tmp_path: Path):
    result = metassl("run", "--resume", DIGITS, *tracking_overrides(tmp_path))
    assert result.returncode == 2
    assert "no unfinished run of recipe 'digits_tiny'" in result.stderr


def test_runs_lists_the_run_with_its_accuracy(finished_run: tuple[Path, str]):
    store, run_id = finished_run
    result = metassl("runs", "--tracking-uri", f"sqlite:///{store / 'mlruns'}/mlflow.db")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith(run_id))
    accuracy = client_for(store).get_run(run_id).data.metrics["final/test_accuracy"]
    assert "FINISHED" in line and f"{accuracy:.4f}" in line
