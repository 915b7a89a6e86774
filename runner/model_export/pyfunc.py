"""The loader module MLflow imports for a metassl classifier (`mlflow.pyfunc.load_model`, `mlflow models serve`).

`predict(images)` takes a batch as an array `N x H x W x C` (or `N x H x W` for one channel), uint8 in [0, 255] or
float in [0, 1], and applies the run's preprocessing: resizing to the size it trained at (as its data loader did),
scaling to [0, 1]; the classifier normalizes inside, as in training. It returns the class indices and probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from runner.model_export.verify import DATA_DIR, read_json, verify_model_dir

WEIGHTS_FILE = "classifier.safetensors"
RECIPE_FILE = "recipe.yaml"
INPUT_FILE = "input.json"  # channels, image_size, class names: what the data loader knew


class ImageClassifier:
    """A trained metassl classifier on the CPU, with its run's preprocessing."""

    def __init__(self, classifier: torch.nn.Module, channels: int, image_size: int, classes: list[str]) -> None:
        self.classifier = classifier.eval()
        self.channels = channels
        self.image_size = image_size
        self.classes = classes

    def preprocess(self, images: Any) -> torch.Tensor:
        """The batch as float NCHW in [0, 1] at the trained size, as the run's data loader served its images."""
        from runner.data.datasets.common import resize_images
        from runner.data.device_data import to_float

        array = np.asarray(images)
        if array.dtype == object:  # a served JSON batch under the any-dtype signature: Python ints or floats
            array = np.array(array.tolist())
        if array.ndim == 3 and self.channels == 1:
            array = array[..., None]
        if array.ndim != 4 or array.shape[-1] != self.channels:
            raise ValueError(
                f"images: expected a batch N x H x W x {self.channels} (channels last), got shape {array.shape}"
            )
        batch = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
        if array.dtype.kind in "ui":  # integer pixels: [0, 255], the data loader's uint8 path exactly
            if array.size and (array.min() < 0 or array.max() > 255):
                raise ValueError("images: integer pixels must lie in [0, 255]; pass floats in [0, 1] otherwise")
            return to_float(resize_images(batch.to(torch.uint8).contiguous(), self.image_size))
        if array.dtype.kind != "f":
            raise ValueError(f"images: expected uint8 or float pixels, got {array.dtype}")
        batch = batch.float()
        if batch.shape[-1] != self.image_size or batch.shape[-2] != self.image_size:
            batch = torch.nn.functional.interpolate(
                batch, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
        return batch.contiguous()

    @torch.no_grad()
    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        logits, _ = self.classifier(self.preprocess(model_input))
        probabilities = torch.softmax(logits.float(), dim=1)
        return {"class": probabilities.argmax(1).numpy(), "probabilities": probabilities.numpy()}


def load(model_dir: Path) -> ImageClassifier:
    """Build the classifier a verified model folder describes and load its weights (safetensors: no code)."""
    from runner.registry import CLASSIFIERS
    from runner.run.evaluation_job import load_weights
    from schemas import validate_recipe

    verify_model_dir(model_dir)  # before any file of the folder is parsed
    data = model_dir / DATA_DIR
    recipe = validate_recipe(yaml.safe_load((data / RECIPE_FILE).read_text()), f"{data / RECIPE_FILE}")
    described = read_json(data / INPUT_FILE)
    classes, channels, image_size = described["classes"], described["channels"], described["image_size"]
    classifier = CLASSIFIERS.build(recipe.classifier, len(classes), channels, image_size)
    load_weights(classifier, data / WEIGHTS_FILE, torch.device("cpu"), f"{data / WEIGHTS_FILE}")
    return ImageClassifier(classifier, channels, image_size, classes)


def _load_pyfunc(data_path: str) -> ImageClassifier:
    """MLflow's entry point: `data_path` is the model folder's `data/classifier`."""
    return load(Path(data_path).parent.parent)
