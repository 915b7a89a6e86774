"""`metassl pretrain`: train the project's own generator on its source split and cache it at `generator.path`.

A conditional GAN (hinge loss, spectral-norm projection discriminator) conditioned on the generator's own k-means
clusters of the source images, never on target labels. The checkpoint is written to a temporary directory and
renamed into place, so an interrupted run never leaves half a checkpoint behind.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError

from runner.generators.discriminator import ProjectionDiscriminator
from runner.generators.local_gan import PRETRAIN_RECORD, has_checkpoint
from runner.generators.local_gan_model import ConditionalGenerator
from runner.generators.source import SourceSet, build_source
from runner.runtime import select_device
from schemas.errors import RecipeError, UserError
from schemas.generators import LocalGAN, Pretrain
from schemas.pretrain import PretrainRecipe
from schemas.recipe import describe_errors, read_recipe_document, set_override, validate_recipe
from schemas.training import Runtime, Tracking

GRID_PER_CLUSTER = 8


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Small convolutions on a shared CPU run fastest single-threaded; restore the count afterwards."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def grid_latents(clusters: int, seed: int, noise_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed noise, one row of `GRID_PER_CLUSTER` samples per cluster (one-hot classes)."""
    rng = torch.Generator().manual_seed(seed + 1)
    noise = torch.randn(clusters * GRID_PER_CLUSTER, noise_dim, generator=rng)
    labels = torch.arange(clusters).repeat_interleave(GRID_PER_CLUSTER)
    return noise, F.one_hot(labels, clusters).float()


def train_gan(
    generator: ConditionalGenerator, source: SourceSet, pretrain: Pretrain, device: torch.device, tracker: Any
) -> tuple[ConditionalGenerator, dict[str, float]]:
    """The GAN loop; logs losses and sample grids. Returns the EMA of the generator and the last losses."""
    rng = torch.Generator().manual_seed(pretrain.seed)
    torch.manual_seed(pretrain.seed)
    channels, size = source.images.shape[1], source.images.shape[-1]
    discriminator = ProjectionDiscriminator(pretrain.clusters, channels, size, pretrain.base_channels).to(device)
    optim_g = torch.optim.Adam(generator.parameters(), lr=pretrain.lr, betas=(0.0, 0.9))
    optim_d = torch.optim.Adam(discriminator.parameters(), lr=2 * pretrain.lr, betas=(0.0, 0.9))
    images = source.images.to(device) * 2.0 - 1.0
    clusters = source.clusters.to(device)
    grid_noise, grid_classes = grid_latents(pretrain.clusters, pretrain.seed, pretrain.noise_dim)
    losses: dict[str, float] = {}
    # An exponential moving average of G's weights gives visibly cleaner samples than G itself after few steps.
    average = copy.deepcopy(generator).eval().requires_grad_(False)
    generator.train()
    for step in range(1, pretrain.iterations + 1):
        rows = torch.randint(len(images), (pretrain.batch_size,), generator=rng).to(device)
        real, labels = images[rows], clusters[rows]
        noise = torch.randn(pretrain.batch_size, pretrain.noise_dim, generator=rng).to(device)
        fake = generator(noise, F.one_hot(labels, pretrain.clusters).float()) * 2.0 - 1.0

        d_real, d_fake = discriminator(real, labels), discriminator(fake.detach(), labels)
        loss_d = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
        optim_d.zero_grad(set_to_none=True)
        loss_d.backward()
        optim_d.step()

        loss_g = -discriminator(fake, labels).mean()
        optim_g.zero_grad(set_to_none=True)
        loss_g.backward()
        optim_g.step()
        with torch.no_grad():
            decay = min(pretrain.ema_decay, (1.0 + step) / (10.0 + step))
            for mine, theirs in zip(average.parameters(), generator.parameters(), strict=True):
                mine.lerp_(theirs, 1.0 - decay)
            for mine, theirs in zip(average.buffers(), generator.buffers(), strict=True):
                mine.copy_(theirs)

        if step % 50 == 0 or step == pretrain.iterations:
            losses = {"loss/d": loss_d.item(), "loss/g": loss_g.item(), "d/real": d_real.mean().item()}
            losses["d/fake"] = d_fake.mean().item()
            tracker.log_metrics(losses, step=step)
        if step % pretrain.grid_every == 0 or step == pretrain.iterations:
            log_grid(average, grid_noise, grid_classes, tracker, f"samples/step_{step:06d}.png")
    return average, losses


def log_grid(generator: ConditionalGenerator, noise: torch.Tensor, classes: torch.Tensor, tracker: Any, name: str):
    was_training = generator.training
    generator.eval()
    device = generator.centroids.device
    with torch.no_grad():
        samples = generator(noise.to(device), classes.to(device))
    tracker.log_image_grid(samples, name, nrow=GRID_PER_CLUSTER)
    generator.train(was_training)
    return samples


def save_atomically(generator: ConditionalGenerator, path: Path, pretrain: Pretrain | None = None) -> None:
    """Save into a staging folder, then rename it into place; `pretrain.json` records how it was trained."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    generator.save_pretrained(staging, safe_serialization=True)
    if pretrain is not None:
        (staging / PRETRAIN_RECORD).write_text(json.dumps(pretrain.model_dump(mode="json"), indent=2))
    if path.exists():
        retired = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, retired)
        os.replace(staging, path)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, path)


def pretrain_generator(config: LocalGAN, *, tracking: Tracking, runtime: Runtime, force: bool = False) -> Path:
    """Train `config`'s generator on its source split and save it at `config.path`; skip if it exists."""
    from runner.tracking import Tracker

    path = Path(config.path)
    if has_checkpoint(path) and not force:
        return path
    if config.pretrain is None:
        raise UserError("generator.pretrain: missing; add a pretrain block to say how to train this generator")
    pretrain = config.pretrain
    device = select_device(runtime)
    started = time.perf_counter()
    # Pretraining on first use happens inside a training run, after the run has seeded the global RNGs; forking
    # them keeps that run's random stream the same whether the checkpoint was already cached or not.
    cuda_devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    threads = pretrain.threads or runtime.threads or (None if device.type == "cuda" else 1)
    with cpu_threads(threads), torch.random.fork_rng(devices=cuda_devices):
        source = build_source(pretrain)
        generator = ConditionalGenerator(
            noise_dim=pretrain.noise_dim,
            num_classes=pretrain.clusters,
            base_channels=pretrain.base_channels,
            image_size=source.images.shape[-1],
            channels=source.images.shape[1],
            source=source.record,
        )
        generator.centroids.copy_(source.centroids)
        generator.centroid_scale.fill_(source.centroid_scale)
        generator.to(device)
        tags = {"metassl.kind": "pretrain", "metassl.generator": config.name}
        with Tracker.open(tracking, run_name=f"pretrain-{path.name}", tags=tags) as tracker:
            tracker.log_params({"generator": config.model_dump(mode="json"), "source": source.record})
            tracker.log_dict(source.record, "source.yaml")
            real = source.images[torch.randperm(len(source.images), generator=torch.Generator().manual_seed(0))[:64]]
            tracker.log_image_grid(real, "samples/source_real.png", nrow=GRID_PER_CLUSTER)
            generator, losses = train_gan(generator, source, pretrain, device, tracker)
            generator.to("cpu")
            save_atomically(generator, path, pretrain)
            seconds = time.perf_counter() - started
            tracker.log_metrics({"pretrain_seconds": seconds, **losses}, step=pretrain.iterations)
            for file in sorted(path.iterdir()):
                tracker.log_artifact(file, artifact_path="generator")
    return path


def load_pretrain_recipe(recipe_path: Path, overrides: list[str]) -> PretrainRecipe:
    """A generator recipe, or a full training recipe whose generator is a `local_gan` block."""
    document = read_recipe_document(recipe_path)
    for assignment in overrides:
        set_override(document, assignment)
    if isinstance(document, dict) and ({"data", "classifier", "method"} & document.keys()):
        recipe = validate_recipe(document, str(recipe_path))
        if not isinstance(recipe.generator, LocalGAN):
            raise RecipeError(
                f"{recipe_path}: generator.name is '{recipe.generator.name}'; only 'local_gan' can be pretrained"
            )
        return PretrainRecipe(
            name=recipe.name, generator=recipe.generator, tracking=recipe.tracking, runtime=recipe.runtime
        )
    try:
        return PretrainRecipe.model_validate(document)
    except ValidationError as exc:
        raise RecipeError(describe_errors(exc, str(recipe_path))) from None


def pretrain_from_file(recipe_path: Path, overrides: list[str], force: bool = False) -> Path:
    recipe = load_pretrain_recipe(Path(recipe_path), overrides)
    return pretrain_generator(recipe.generator, tracking=recipe.tracking, runtime=recipe.runtime, force=force)
