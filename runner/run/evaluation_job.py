"""`metassl eval RUN_ID`: rebuild a run's test split and classifier, load its weights, evaluate."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from runner.common.device import select_device
from runner.data.device_data import DeviceData
from runner.registry import CLASSIFIERS
from runner.run.build import prepare_data
from runner.run.evaluate import evaluate
from runner.run.runtime import autocast_factory, configure
from runner.run.session import LEGACY_WEIGHTS_ARTIFACT, WEIGHTS_ARTIFACT
from runner.tracking import FINAL_ACCURACY, recipe_of_run
from schemas import UserError
from schemas.training import Tracking


def load_weights(classifier: torch.nn.Module, path: Path, device: torch.device, label: str | None = None) -> None:
    """Load safetensors weights into `classifier`; an unreadable or mismatched file is one UserError line.

    `label` names the file in that line (an artifact of a run, rather than the temp file it was fetched to)."""
    name = label or str(path)
    remedy = "re-download or re-log the run's weights, or re-run its recipe with `metassl run`"
    try:
        weights = load_file(str(path), device=str(device))
    except Exception as exc:  # SafetensorError, a truncated header, an unknown dtype
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UserError(f"weights {name} are unreadable ({reason}); {remedy}") from None
    expected = classifier.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(key for key in set(expected) & set(weights) if weights[key].shape != expected[key].shape)
    if missing or unexpected or wrong:
        problems = [
            f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        ]
        raise UserError(f"weights {name} do not fit the run's classifier ({'; '.join(problems)}); {remedy}")
    classifier.load_state_dict(weights)


def evaluate_logged_run(run_id: str, tracking: Tracking) -> str:
    logged_run = recipe_of_run(run_id, tracking)
    recipe, run = logged_run.recipe, logged_run.run
    with tempfile.TemporaryDirectory(prefix="metassl-eval-") as tmp:
        artifact = WEIGHTS_ARTIFACT
        weights_path = logged_run.download(artifact, Path(tmp))
        if weights_path is None:
            artifact = LEGACY_WEIGHTS_ARTIFACT
            weights_path = logged_run.download(artifact, Path(tmp))
        if weights_path is None:
            raise UserError(
                f"run {run_id} has no {WEIGHTS_ARTIFACT}; only finished runs with tracking.log_model have weights"
            )
        device = select_device(recipe.runtime)
        configure(recipe.runtime, recipe.seed, device)
        prepared = prepare_data(recipe)
        data = DeviceData(prepared.splits, prepared.label_split, recipe.data, device)
        classifier = CLASSIFIERS.build(recipe.classifier, data.num_classes, data.channels, data.image_size)
        load_weights(classifier.to(device), weights_path, device, f"{artifact} of run {run_id}")
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
