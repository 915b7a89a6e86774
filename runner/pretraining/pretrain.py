"""Train the project's own generator on its source split and cache it at `generator.path`.

A conditional GAN (hinge loss, spectral-norm projection discriminator) conditioned on the generator's own k-means
clusters of the source images, never on target labels. The checkpoint is written to a temporary directory and
renamed into place, so an interrupted run never leaves half a checkpoint behind.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from runner import cpu_isa
from runner.common.device import select_device
from runner.pretraining.checkpoint import check_pretrain_matches, save_atomically
from runner.pretraining.gan import GRID_PER_CLUSTER, train_gan
from runner.pretraining.model import ConditionalGenerator
from runner.pretraining.runs import GENERATOR_PATH_TAG, pretraining_tracking
from runner.pretraining.source import build_source
from runner.progress import StageProgress, console
from schemas.errors import UserError
from schemas.generators import LocalGAN, has_checkpoint
from schemas.training import Runtime, Tracking


def _flushes_denormals() -> bool:
    return (torch.tensor([1e-40], dtype=torch.float32) * 1.0).item() == 0.0


@contextmanager
def pretraining_numerics(threads: int, device: torch.device) -> Iterator[None]:
    """The same CPU numerics on every path (thread count, deterministic kernels, denormals flushed), restored after.

    The global RNGs are forked: a run that pretrains on first use continues with the random stream it would have
    had with a cached checkpoint, so a cold run and a warm run of the same recipe give the same result.
    """
    before = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        _flushes_denormals(),
    )
    cuda_devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.set_flush_denormal(True)
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])
        torch.set_flush_denormal(before[3])


def pretrain_generator(config: LocalGAN, *, tracking: Tracking, runtime: Runtime, force: bool = False) -> Path:
    """Train `config`'s generator on its source split and save it at `config.path`; skip if it exists."""
    from runner.tracking import MlflowTracker

    path = Path(config.path)
    if has_checkpoint(path) and not force:
        check_pretrain_matches(config)
        return path
    if config.pretrain is None:
        raise UserError("generator.pretrain: missing; add a pretrain block to say how to train this generator")
    pretrain = config.pretrain
    cpu_isa.pin(runtime.cpu_isa)  # checked: the CLI set it before torch started
    device = select_device(runtime)
    started = time.perf_counter()
    console.print(
        f"pretraining the generator {path}: {pretrain.iterations} iterations on the {pretrain.dataset} source split,"
        f" {device.type}, {pretrain.threads} thread(s)"
    )
    with pretraining_numerics(pretrain.threads, device):
        console.print(f"pretrain: clustering the source images into {pretrain.clusters} classes")
        source = build_source(pretrain)
        torch.manual_seed(pretrain.seed)  # the initial weights must not depend on the caller's random stream
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
        tags = {
            "metassl.kind": "pretrain",
            "metassl.generator": config.name,
            "metassl.threads": str(pretrain.threads),
            GENERATOR_PATH_TAG: str(config.pretrained_here()),
        }
        with (
            MlflowTracker.open(pretraining_tracking(tracking), run_name=f"pretrain-{path.name}", tags=tags) as tracker,
            StageProgress("pretrain", pretrain.iterations) as progress,
        ):
            tracker.log_params({"generator": config.model_dump(mode="json"), "source": source.record})
            tracker.log_dict(source.record, "source.yaml")
            real = source.images[torch.randperm(len(source.images), generator=torch.Generator().manual_seed(0))[:64]]
            tracker.log_image_grid(real, "samples/source_real.png", nrow=GRID_PER_CLUSTER)
            generator, losses = train_gan(generator, source, pretrain, device, tracker, progress)
            generator.to("cpu")
            save_atomically(generator, path, pretrain)
            seconds = time.perf_counter() - started
            tracker.log_metrics({"pretrain_seconds": seconds, **losses}, step=pretrain.iterations)
            for file in sorted(path.iterdir()):
                tracker.log_artifact(file, artifact_path="generator")
    console.print(f"pretrain: generator saved to {path} in {seconds:.1f} s")
    return path


def ensure_generator(config: LocalGAN, *, tracking: Tracking, runtime: Runtime) -> None:
    """`local_gan`'s step before a run builds it (its `preparer`): a checkpoint that is missing is pretrained now
    (once, then cached); a cached one must have been trained with the recipe's pretrain block."""
    if config.pretrain is None:
        return
    if not has_checkpoint(Path(config.path)):
        console.print(f"no generator at {config.path} yet: pretraining it first (generator.pretrain)")
    pretrain_generator(config, tracking=tracking, runtime=runtime)
