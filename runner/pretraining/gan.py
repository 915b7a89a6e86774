"""The GAN training loop: hinge loss, a spectral-norm projection discriminator, an EMA of the generator."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from runner.common import portable
from runner.common.ema import EMA
from runner.pretraining.discriminator import ProjectionDiscriminator
from runner.pretraining.model import ConditionalGenerator
from runner.pretraining.source import SourceSet
from runner.progress import StageProgress
from schemas.generators import Pretrain

GRID_PER_CLUSTER = 8
LOG_EVERY = 50
PROGRESS_EVERY = 10


def grid_latents(clusters: int, seed: int, noise_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed noise, one row of `GRID_PER_CLUSTER` samples per cluster (one-hot classes)."""
    rng = torch.Generator().manual_seed(seed + 1)
    noise = torch.randn(clusters * GRID_PER_CLUSTER, noise_dim, generator=rng)
    labels = torch.arange(clusters).repeat_interleave(GRID_PER_CLUSTER)
    return noise, F.one_hot(labels, clusters).float()


def train_gan(
    generator: ConditionalGenerator,
    source: SourceSet,
    pretrain: Pretrain,
    device: torch.device,
    tracker: Any,
    progress: StageProgress,
) -> tuple[ConditionalGenerator, dict[str, float]]:
    """The GAN loop; logs losses and sample grids. Returns the EMA of the generator and the last losses."""
    rng = torch.Generator().manual_seed(pretrain.seed)
    torch.manual_seed(pretrain.seed)
    channels, size = source.images.shape[1], source.images.shape[-1]
    discriminator = ProjectionDiscriminator(pretrain.clusters, channels, size, pretrain.base_channels).to(device)
    optim_g = portable.adam(generator.parameters(), lr=pretrain.lr, betas=(0.0, 0.9))
    optim_d = portable.adam(discriminator.parameters(), lr=2 * pretrain.lr, betas=(0.0, 0.9))
    images = source.images.to(device) * 2.0 - 1.0
    clusters = source.clusters.to(device)
    grid_noise, grid_classes = grid_latents(pretrain.clusters, pretrain.seed, pretrain.noise_dim)
    losses: dict[str, float] = {}
    # An exponential moving average of G's weights gives visibly cleaner samples than G itself after few steps.
    average = EMA(generator, pretrain.ema_decay)
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
        average.update(generator, decay=min(pretrain.ema_decay, (1.0 + step) / (10.0 + step)))

        last = step == pretrain.iterations
        if step % LOG_EVERY == 0 or last:
            losses = {"loss/d": loss_d.item(), "loss/g": loss_g.item(), "d/real": d_real.mean().item()}
            losses["d/fake"] = d_fake.mean().item()
            tracker.log_metrics(losses, step=step)
        if step % pretrain.grid_every == 0 or last:
            log_grid(average.model, grid_noise, grid_classes, tracker, f"samples/step_{step:06d}.png")
        if step % PROGRESS_EVERY == 0 or last:
            progress.update(step, loss_d=f"{loss_d.item():.3f}", loss_g=f"{loss_g.item():.3f}")
    return average.model, losses


def log_grid(generator: ConditionalGenerator, noise: torch.Tensor, classes: torch.Tensor, tracker: Any, name: str):
    was_training = generator.training
    generator.eval()
    device = generator.centroids.device
    with torch.no_grad():
        samples = generator(noise.to(device), classes.to(device))
    tracker.log_image_grid(samples, name, nrow=GRID_PER_CLUSTER)
    generator.train(was_training)
    return samples
