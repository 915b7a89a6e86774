"""Every method's iteration on a CUDA device with bf16 autocast (skipped without CUDA)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from runner.run.build import build_components, prepare_data
from runner.run.train_step import grad_scaler, train_step
from schemas import validate_recipe

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

METHODS = {
    "supervised": {"name": "supervised"},
    "fixmatch": {"name": "fixmatch", "unlabeled_batch_size": 32},
    "generative": {"name": "generative", "unlabeled_batch_size": 32, "latents": {"bank_size": 64}},
    "metassl_exact": {
        "name": "metassl",
        "unlabeled_batch_size": 32,
        "latents": {"bank_size": 64, "classes": "pseudo"},
        "meta": {"gradient": "exact", "latent_batch_size": 16, "validation_batch_size": 16, "virtual_lr": 0.3},
    },
    "metassl_finite_difference": {
        "name": "metassl",
        "unlabeled_batch_size": 32,
        "latents": {"bank_size": 64},
        "meta": {"gradient": "finite_difference", "latent_batch_size": 16, "validation_batch_size": 16},
    },
}


@pytest.fixture(scope="module")
def tiny_gan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from runner.pretraining.model import ConditionalGenerator

    torch.manual_seed(0)
    model = ConditionalGenerator(noise_dim=16, num_classes=4, embed_dim=8, base_channels=16, image_size=8)
    model.centroids.uniform_()
    path = tmp_path_factory.mktemp("gan") / "tiny_gan"
    model.save_pretrained(path)
    return path


def components_for(method: dict[str, Any], gan: Path) -> Any:
    generator = (
        {"name": "local_gan", "path": str(gan)} if method["name"] in ("generative", "metassl") else {"name": "none"}
    )
    recipe = validate_recipe(
        {
            "name": "cuda-check",
            "data": {"name": "digits", "labels_per_class": 4, "batch_size": 16},
            "generator": generator,
            "classifier": {"name": "small_cnn", "width": 16},
            "method": method,
            "runtime": {"device": "cuda", "precision": "bf16", "deterministic": False},
        }
    )
    return build_components(recipe, prepare_data(recipe))


@pytest.mark.parametrize("variant", sorted(METHODS))
def test_method_iterations_run_on_cuda_in_bf16(variant: str, tiny_gan: Path) -> None:
    components = components_for(METHODS[variant], tiny_gan)
    method, classifier = components.method, components.classifier
    assert next(classifier.parameters()).device.type == "cuda"
    before = [p.detach().clone() for p in classifier.parameters()]
    bank_before = method.bank.noise.detach().clone() if hasattr(method, "bank") else None
    scaler = grad_scaler(components)
    for iteration in range(4):
        loss, metrics = train_step(components, iteration, scaler)
        assert torch.isfinite(loss).item()
        if method.config.has_meta_phase:
            assert torch.isfinite(metrics["meta/loss"]).item()
    images, _ = components.data.labeled_batch(16)
    assert images.device.type == "cuda"
    with components.ctx.autocast():
        logits, _ = classifier(images)
    assert logits.dtype == torch.bfloat16  # autocast is really on
    assert any(not torch.equal(a, b) for a, b in zip(before, classifier.parameters(), strict=True))
    if bank_before is not None:
        moved = not torch.equal(bank_before, method.bank.noise.detach())
        assert moved == method.config.has_meta_phase  # only the method moves its latents
