"""The session's step that turns a finished run's weights into an MLflow Model of the run (and a registry version)."""

from __future__ import annotations

from pathlib import Path

from runner.model_export.package import log_classifier_model
from runner.run.build import Components
from runner.tracking import MlflowTracker
from schemas import recipe_to_dict

EXAMPLE_IMAGES = 2


def log_model(tracker: MlflowTracker, components: Components, weights: Path, step: int, params: dict[str, str]) -> str:
    data, tracking = components.data, components.recipe.tracking
    example = data.test.images[:EXAMPLE_IMAGES].cpu().permute(0, 2, 3, 1).numpy()  # uint8 N x H x W x C
    return log_classifier_model(
        tracker.client,
        tracking.tracking_uri,
        tracker.run_id,
        weights=weights,
        recipe=recipe_to_dict(components.recipe),
        classes=data.classes,
        channels=data.channels,
        image_size=data.image_size,
        example=example,
        step=step,
        params=params,
        register_as=tracking.register_model,
    )
