"""`metassl check-model URI`: fetch a logged model's folder and check it is the one metassl logged, before anyone
loads it (a folder whose MLmodel names other code would run that code under `mlflow.pyfunc.load_model`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from runner.model_export.verify import DIGEST_TAG, verify_model_dir
from schemas import UserError
from schemas.training import Tracking


def _recorded_digest(tracking: Tracking, model_dir: Path) -> str | None:
    """The store's digest of the model the folder claims to be (None for a folder no store knows)."""
    from mlflow.exceptions import MlflowException

    from runner.tracking import client_for

    try:
        model_id = (yaml.safe_load((model_dir / "MLmodel").read_text()) or {}).get("model_id")
    except (OSError, yaml.YAMLError, AttributeError):
        return None  # verify_model_dir says what is wrong with it
    if not isinstance(model_id, str):
        return None
    try:
        return client_for(tracking).get_logged_model(model_id).tags.get(DIGEST_TAG)
    except MlflowException:
        return None


def check_model(model_uri: str, tracking: Tracking) -> str:
    """One line on a good model; a one-line UserError (TamperedModel) otherwise. Nothing from it is executed."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with tempfile.TemporaryDirectory(prefix="metassl-check-") as tmp:
        if Path(model_uri).is_dir():
            model_dir = Path(model_uri)
        else:
            try:
                # MLflow resolves a runs:/ model through a client on the process-wide URI, whatever is passed here.
                with _use_tracking_uri(tracking.tracking_uri):
                    local = mlflow.artifacts.download_artifacts(
                        artifact_uri=model_uri, dst_path=tmp, tracking_uri=tracking.tracking_uri
                    )
            except MlflowException as exc:
                reason = str(exc).splitlines()[0][:200]
                raise UserError(f"model {model_uri}: not found in {tracking.tracking_uri} ({reason})") from None
            model_dir = Path(local)
        expected = _recorded_digest(tracking, model_dir)
        digests = verify_model_dir(model_dir, expected)
    against = "MLmodel's record and the tracking store's" if expected else "MLmodel's record (no store record)"
    return f"model {model_uri}: {len(digests)} data files match {against}"
