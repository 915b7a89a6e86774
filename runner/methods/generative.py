"""`generative`: the baseline without phase (i): synthetic unlabeled samples from a *fixed* latent bank."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from runner.generators.base import Generator, Latents
from runner.methods.base import Method, TrainContext
from runner.methods.confidence import ConfidencePolicy, make_policy
from runner.methods.latent_bank import LatentBank, initial_latents
from runner.methods.losses import POLICIES, make_unsup_loss
from runner.methods.sample_cache import SampleCache
from runner.methods.semi_supervised import ssl_objective, two_views
from schemas.methods import Generative as GenerativeConfig

if TYPE_CHECKING:
    from runner.tracking import Tracker


class Generative(Method):
    """Phase (ii) with x~_j = G(z_j, c_j) from the bank; the bank moves only in subclasses with a meta phase."""

    config: GenerativeConfig

    def __init__(self, config: GenerativeConfig, ctx: TrainContext) -> None:
        super().__init__(config, ctx)
        assert ctx.generator is not None, "the recipe's validation refuses a method that needs a generator without one"
        self.generator: Generator = ctx.generator
        latents = initial_latents(self.generator, config.latents, ctx.seed, ctx.data.labeled_images)
        self.bank = LatentBank(latents)
        self.policy: ConfidencePolicy | None = None
        if config.unsup_loss in POLICIES:  # a pseudo-label loss on the synthetic batch; the bank rows are its pool
            data = ctx.data
            self.policy = make_policy(
                config.unsup_loss, config, data.num_classes, len(self.bank), data.device, ctx.dist.gather_batches
            )
        self.unsup = make_unsup_loss(config.unsup_loss, config.stop_grad, self.policy)
        self.initial_noise = self.bank.noise.detach().clone()
        self.cache = SampleCache(self.bank, self.render, config.render_batch) if config.cache_samples else None
        self.grid_rows = torch.arange(min(config.grid_size, len(self.bank)), device=self.bank.noise.device)
        self.initial_grid_latents = self.bank.batch(self.grid_rows)
        self._initial_grid_logged = False

    def synthesize(self, latents: Latents) -> torch.Tensor:
        """x~ = G(z, c) at the classifier's image size and channels, with c = softmax(a / tau)."""
        if "condition" in latents and self.generator.spec.condition == "class":
            # The generator applies softmax to the condition; scaling by 1 / tau makes that softmax(a / tau).
            scale = 1.0 / self.config.latents.temperature
            latents = {**latents, "condition": latents["condition"] * scale}
        return self.generator(latents, size=self.ctx.data.image_size, channels=self.ctx.data.channels)

    def generated_latents(self, latents: Latents) -> Latents:
        """The latents the generator receives for bank rows: the rows themselves (a finder maps them)."""
        return latents

    @torch.no_grad()
    def render(self, latents: Latents) -> torch.Tensor:
        return self.synthesize(self.generated_latents(latents))

    def synthetic_batch(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The images of the bank's `rows`."""
        if self.cache is not None:
            return self.cache.get(rows).to(dtype)
        return self.render(self.bank.batch(rows)).to(dtype)

    def ssl_loss(
        self, iteration: int, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.unsup is None:
            return self.supervised_loss(images, labels)
        rows = self.bank.sample_indices(self.config.unlabeled_batch_size)
        synthetic = self.synthetic_batch(rows, images.dtype)
        views = two_views(self.ctx.data.augment, synthetic, self.config.views)
        loss, metrics = ssl_objective(self.ctx.model, images, labels, views, self.unsup, self.config.lambda_u, rows)
        if self.cache is not None:
            metrics["synthetic/generated"] = self.cache.last_rendered
        return loss, metrics

    @torch.no_grad()
    def bank_grid(self, latents: Latents | None = None) -> torch.Tensor:
        """The grid rows as images now, or the given (initial) latents as the generator received them."""
        if latents is None:
            return self.render(self.bank.batch(self.grid_rows)).float()
        return self.synthesize(latents).float()

    def log_artifacts(self, iteration: int, tracker: Tracker) -> None:
        """The first `grid_size` latents of the bank as images: at the start, and (with a meta phase) now."""
        if not self._initial_grid_logged:
            tracker.log_image_grid(self.bank_grid(self.initial_grid_latents), "bank/step_000000.png")
            self._initial_grid_logged = True
        if self.config.has_meta_phase:
            tracker.log_image_grid(self.bank_grid(), f"bank/step_{iteration:06d}.png")

    def state_dict(self) -> dict[str, Any]:
        state = {"bank": self.bank.state_dict()}
        if self.policy is not None:
            state["policy"] = self.policy.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bank.load_state_dict(state["bank"])
        if self.policy is not None:
            self.policy.load_state_dict(state.get("policy", {}))  # a checkpoint from before policies: fixmatch's none


def build_generative(config: GenerativeConfig, ctx: TrainContext) -> Method:
    """Synthetic unlabeled samples from fixed latents (no phase (i))."""
    return Generative(config, ctx)
