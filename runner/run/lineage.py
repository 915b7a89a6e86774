"""The images a run saw, logged as MLflow dataset inputs with a content digest: two runs show in the UI (the run's
Datasets, the runs table's Dataset column) whether they trained on the same labels, unlabeled pool and test set."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from runner.data.device_data import DeviceData
from runner.data.types import ImageSet

SOURCE_TYPE = "metassl"
CONTEXT_TAG = "mlflow.data.context"  # MLflow's tag for the role a dataset played: shown next to its name


def content_digest(images: ImageSet) -> str:
    """SHA-256 of the pixels and labels, in order (what a run actually trained or tested on)."""
    sha = hashlib.sha256()
    for tensor in (images.images, images.labels):
        sha.update(str(tuple(tensor.shape)).encode())
        sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def _dataset_input(name: str, role: str, images: ImageSet, source: dict[str, Any]) -> Any:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    digest = content_digest(images)
    shape = list(images.images.shape[1:])
    dataset = Dataset(
        name=f"{name}/{role}",
        digest=digest[:36],  # MLflow's digest column holds 36 characters
        source_type=SOURCE_TYPE,
        source=json.dumps(source),
        schema=json.dumps({"images": {"dtype": "uint8", "shape": ["N", *shape]}, "labels": {"dtype": "int64"}}),
        profile=json.dumps({"num_images": len(images), "sha256": digest}),
    )
    return DatasetInput(dataset=dataset, tags=[InputTag(CONTEXT_TAG, role)])


def dataset_inputs(data: DeviceData, dataset: str, seed: int) -> list[Any]:
    """The labeled split, the validation holdout (if any), the real unlabeled pool (if any) and the test split."""
    parts = {"labeled": data.labeled, "validation": data.validation, "unlabeled": data.unlabeled, "test": data.test}
    source = {"dataset": dataset, "seed": seed, "indices": "split/label_split.json"}
    return [
        _dataset_input(dataset, role, images, {**source, "role": role})
        for role, images in parts.items()
        if images is not None
    ]


def _lost_insert_race(error: Exception) -> bool:
    """MLflow's log_inputs looks a dataset up, then inserts it if missing: two runs of one experiment logging the
    same dataset at the same moment both insert, and one fails on the unique key (SQLite or PostgreSQL wording)."""
    text = str(error)
    return "UNIQUE constraint failed" in text or "duplicate key value violates unique constraint" in text


def log_datasets(client: Any, run_id: str, data: DeviceData, dataset: str, seed: int, attempts: int = 3) -> None:
    from mlflow.exceptions import MlflowException

    inputs = dataset_inputs(data, dataset, seed)
    for attempt in range(attempts):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as error:  # rolled back whole: a retry reuses the winner's rows
            if attempt == attempts - 1 or not _lost_insert_race(error):
                raise
