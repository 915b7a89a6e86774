"""`biggan`: BigGAN-deep through the optional `pytorch-pretrained-biggan` package.

Its class input is already a vector over ImageNet's classes (a linear embedding), so the soft class vector goes
straight in. Weights: a directory with config.json + pytorch_model.bin, or a pretrained name from the package's
own cache (~/.pytorch_pretrained_biggan), downloaded only when `local_files_only` is false.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from runner.generators.base import Generator, Latents, LatentSpec
from runner.generators.loading import offline_error
from schemas.errors import UserError
from schemas.generators import BigGAN


def _package() -> Any:
    try:
        import pytorch_pretrained_biggan
    except ImportError:
        raise UserError(
            "generator 'biggan' needs the optional package pytorch-pretrained-biggan: pip install 'metassl[biggan]'"
        ) from None
    return pytorch_pretrained_biggan


def resolve_files(model: str, local_files_only: bool) -> tuple[Path, Path]:
    """(weights, config) files for a directory or a pretrained name."""
    package = _package()
    from pytorch_pretrained_biggan import file_utils
    from pytorch_pretrained_biggan.model import CONFIG_NAME, PRETRAINED_CONFIG_ARCHIVE_MAP, WEIGHTS_NAME

    local = Path(model).expanduser()
    if local.is_dir():
        weights, config = local / WEIGHTS_NAME, local / CONFIG_NAME
        if not (weights.is_file() and config.is_file()):
            raise UserError(f"generator.model: '{model}' needs {WEIGHTS_NAME} and {CONFIG_NAME} (a BigGAN directory)")
        return weights, config
    archive = package.model.PRETRAINED_MODEL_ARCHIVE_MAP
    if model not in archive:
        raise UserError(f"generator.model: '{model}' is neither a directory nor one of {', '.join(sorted(archive))}")
    urls = archive[model], PRETRAINED_CONFIG_ARCHIVE_MAP[model]
    cache = Path(file_utils.PYTORCH_PRETRAINED_BIGGAN_CACHE)
    found = []
    for url in urls:  # cached names are sha256(url) + "." + sha256(etag); the etag needs the network
        hits = sorted(p for p in cache.glob(f"{file_utils.url_to_filename(url)}*") if p.suffix != ".json")
        found.append(hits[-1] if hits else None)
    if all(found):
        return found[0], found[1]
    if local_files_only:
        raise offline_error(model)
    try:
        return tuple(Path(file_utils.cached_path(url)) for url in urls)  # type: ignore[return-value]
    except Exception as exc:
        raise UserError(f"generator.model: cannot download '{model}': {exc}") from None


class BigGANGenerator(Generator):
    def __init__(self, model: Any, truncation: float) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.spec = LatentSpec((config.z_dim,), "class", (config.num_classes,))
        self.native_size = config.output_dim
        self.channels = 3
        self.truncation = truncation
        self.freeze()

    def generate(self, latents: Latents) -> torch.Tensor:
        class_probs = self.class_probabilities(latents)
        images = self.model(latents["noise"].float(), class_probs, self.truncation)
        return self.to_unit_range(images)


def build_biggan(config: BigGAN, *, class_names: list[str], device: torch.device) -> Generator:
    """BigGAN-deep (pytorch-pretrained-biggan), noise plus a soft class vector over ImageNet classes."""
    package = _package()
    weights, config_file = resolve_files(config.model, config.local_files_only)
    model = package.BigGAN(package.BigGANConfig.from_json_file(str(config_file)))
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=False)
    return BigGANGenerator(model, config.truncation).to(device)
