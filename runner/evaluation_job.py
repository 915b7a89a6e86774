"""`metassl eval RUN_ID`: rebuild a run's test split and classifier, load its weights, evaluate."""

from __future__ import annotations

import tempfile
from pathlib import Path

from safetensors.torch import load_file

from runner.build import prepare_data
from runner.data.device_data import DeviceData
from runner.evaluate import evaluate
from runner.registry import CLASSIFIERS
from runner.runtime import autocast_factory, configure, select_device
from runner.session import WEIGHTS_ARTIFACT
from runner.tracking import FINAL_ACCURACY, recipe_of_run
from schemas import UserError
from schemas.training import Tracking


def evaluate_logged_run(run_id: str, tracking: Tracking) -> str:
    logged_run = recipe_of_run(run_id, tracking)
    recipe, run = logged_run.recipe, logged_run.run
    with tempfile.TemporaryDirectory(prefix="metassl-eval-") as tmp:
        weights_path = logged_run.download(WEIGHTS_ARTIFACT, Path(tmp))
        if weights_path is None:
            raise UserError(
                f"run {run_id} has no {WEIGHTS_ARTIFACT}; only finished runs with tracking.log_model have weights"
            )
        weights = load_file(str(weights_path), device="cpu")
    device = select_device(recipe.runtime)
    configure(recipe.runtime, recipe.seed, device)
    prepared = prepare_data(recipe)
    data = DeviceData(prepared.splits, prepared.label_split, recipe.data, device)
    classifier = CLASSIFIERS.build(recipe.classifier, data.num_classes, data.channels, data.image_size).to(device)
    classifier.load_state_dict(weights)
    result = evaluate(
        classifier,
        data.test_batches(recipe.data.eval_batch_size),
        data.num_classes,
        autocast_factory(recipe.runtime, device),
    )
    logged = run.data.metrics.get(FINAL_ACCURACY)
    lines = [f"run {run_id} ({recipe.name}): test accuracy {result.accuracy:.4f}, loss {result.loss:.4f}"]
    if logged is not None:
        lines.append(
            f"logged final accuracy {logged:.4f} ({'matches' if abs(logged - result.accuracy) < 1e-6 else 'differs'})"
        )
    lines += [f"  {name:<16} {value:.3f}" for name, value in zip(data.classes, result.per_class_accuracy, strict=True)]
    return "\n".join(lines)
