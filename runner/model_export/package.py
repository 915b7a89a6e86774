"""Log a finished run's classifier as an MLflow Model (a LoggedModel of the run, in MLflow 3's Models view).

The model's folder is data only: the safetensors weights, the resolved recipe and `input.json`; its MLmodel names
`runner.model_export.pyfunc` (a module of the installed metassl) as the loader, and records each data file's SHA-256.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from runner.model_export.pyfunc import INPUT_FILE, RECIPE_FILE, WEIGHTS_FILE
from runner.model_export.verify import DATA_NAME, DIGEST_TAG, DIGESTS_KEY, LOADER_MODULE, data_digests
from runner.model_export.verify import digest_of_digests as digest_of_record

MODEL_NAME = "model"  # runs:/RUN_ID/model


def _signature(num_classes: int) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    # Any dtype in: uint8 pixels in [0, 255] or floats in [0, 1] (MLflow would refuse one or the other under a fixed
    # dtype); the layout, N x H x W x C, is in the docs and the input example.
    inputs = Schema([TensorSpec(np.dtype(object), (-1,))])
    outputs = Schema(
        [
            TensorSpec(np.dtype(np.int64), (-1,), "class"),
            TensorSpec(np.dtype(np.float32), (-1, num_classes), "probabilities"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("metassl", "torch", "safetensors", "mlflow"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def log_classifier_model(
    client: Any,
    tracking_uri: str,
    run_id: str,
    *,
    weights: Path,
    recipe: Mapping[str, Any],
    classes: list[str],
    channels: int,
    image_size: int,
    example: np.ndarray,
    step: int,
    params: Mapping[str, str],
    register_as: str | None = None,
) -> str:
    """Log the model under the run (its metrics at `step` linked to it); register it as `register_as`. Its id."""
    import mlflow
    from mlflow.models import Model
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with tempfile.TemporaryDirectory(prefix="metassl-model-") as tmp:
        data = Path(tmp) / DATA_NAME
        data.mkdir()
        shutil.copyfile(weights, data / WEIGHTS_FILE)
        (data / RECIPE_FILE).write_text(yaml.safe_dump(dict(recipe), sort_keys=False))
        described = {"classes": classes, "channels": channels, "image_size": image_size, "layout": "NHWC"}
        (data / INPUT_FILE).write_text(json.dumps(described, indent=2))
        digests = data_digests(data)
        experiment = client.get_run(run_id).info.experiment_id
        logged = client.create_logged_model(
            experiment,
            name=MODEL_NAME,
            source_run_id=run_id,
            tags={DIGEST_TAG: digest_of_record(digests)},
            params=dict(params),
            model_type="image-classifier",
        )
        # MLflow's model logging reads the process-wide tracking URI; point it at this run's store meanwhile.
        with _use_tracking_uri(tracking_uri):
            Model.log(
                artifact_path=None,
                name=MODEL_NAME,
                flavor=mlflow.pyfunc,
                run_id=run_id,
                model_id=logged.model_id,
                step=step,
                loader_module=LOADER_MODULE,
                data_path=str(data),
                signature=_signature(len(classes)),
                input_example=example,
                pip_requirements=_requirements(),
                metadata={DIGESTS_KEY: digests, "classes": classes},
            )
            if register_as:
                mlflow.register_model(f"models:/{logged.model_id}", register_as)
    return logged.model_id
