"""The runner's MLflow experiments open in MLflow 3's model-training view, not its GenAI view."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from runner.tracking import EXPERIMENT_KIND_TAG, MlflowTracker
from schemas.training import Tracking


def store(root: Path, experiment: str) -> Tracking:
    return Tracking(experiment=experiment, tracking_uri=f"sqlite:///{root}/mlflow.db", artifact_root=str(root))


def test_created_experiment_is_a_model_training_experiment(tmp_path: Path) -> None:
    tracking = store(tmp_path, "fresh")
    with MlflowTracker.open(tracking, run_name="r"):
        pass
    experiment = MlflowClient(tracking.tracking_uri).get_experiment_by_name("fresh")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert dict([EXPERIMENT_KIND_TAG]) == {"mlflow.experimentKind": "custom_model_development"}


def test_existing_experiment_without_the_kind_gets_it(tmp_path: Path) -> None:
    tracking = store(tmp_path, "older")
    client = MlflowClient(tracking.tracking_uri)
    (tmp_path / "older").mkdir()
    client.create_experiment("older", artifact_location=(tmp_path / "older").as_uri())
    assert "mlflow.experimentKind" not in client.get_experiment_by_name("older").tags
    with MlflowTracker.open(tracking, run_name="r"):
        pass
    assert client.get_experiment_by_name("older").tags["mlflow.experimentKind"] == "custom_model_development"
