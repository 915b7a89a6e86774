"""`metassl`, the method: phase (i) meta-learns the latent bank, phase (ii) is the generative SSL step."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from runner.common import portable
from runner.distributed import local_batchnorm
from runner.generators.base import Latents
from runner.methods.base import Method, TrainContext
from runner.methods.generative import Generative
from runner.methods.latent_finder import LatentFinder
from runner.methods.losses import make_unsup_loss
from runner.methods.meta_gradient import (
    MetaProblem,
    exact_view_grads,
    finite_difference_view_grads,
    validation_forward,
)
from runner.methods.resemblance import make_resemblance
from runner.methods.row_adam import RowAdam
from runner.methods.semi_supervised import two_views
from runner.methods.virtual_step import frozen_trunk_depth, scope_parameters, trunk_forward
from schemas.methods import MetaSSL as MetaSSLConfig


def latent_drift(generated: Latents, latents: Latents) -> torch.Tensor:
    """Mean squared move per coordinate from the bank's latents to the generated ones (the finder's anchor)."""
    moves = [(generated[key].float() - latents[key].float()).pow(2).flatten(1).mean(dim=1) for key in latents]
    return torch.stack(moves).sum(dim=0).mean()


class MetaSSL(Generative):
    config: MetaSSLConfig

    def __init__(self, config: MetaSSLConfig, ctx: TrainContext) -> None:
        super().__init__(config, ctx)
        self.bank_optimizer = RowAdam(self.bank.tensors(), config.meta.lr)
        self.resemblance = make_resemblance(config.meta.resemblance)
        # Phase (i) applies the stop-gradient to theta itself (MetaProblem.stop_grad), not to the target features.
        # Its virtual losses read the confidence policy's state and leave it to phase (ii) to update.
        self.meta_unsup = make_unsup_loss(config.unsup_loss, stop_grad=False, policy=self.policy, learn=False)
        scope_parameters(ctx.classifier, config.meta.scope, config.meta.scope_blocks)  # a bad scope fails at build
        self.finder: LatentFinder | None = None
        if config.meta.finder == "mlp":
            shapes = {key: tensor.shape[1:] for key, tensor in zip(self.bank.keys(), self.bank.tensors(), strict=True)}
            meta = config.meta
            with torch.random.fork_rng(devices=[]):  # its init must not shift the run's global RNG stream
                torch.manual_seed(ctx.seed)
                self.finder = LatentFinder(shapes, meta.finder_hidden, meta.latent_constraint, meta.clip)
            self.finder.to(self.bank.noise.device)
            self.finder_optimizer = portable.adam(self.finder.parameters(), lr=meta.finder_lr)

    def generated_latents(self, latents: Latents) -> Latents:
        return latents if self.finder is None else self.finder(latents)

    def meta_phase(self, iteration: int, steps: int) -> dict[str, Any]:
        classifier = self.ctx.classifier
        was_training = classifier.training
        classifier.train()
        collected: dict[str, list[torch.Tensor]] = defaultdict(list)
        try:
            with local_batchnorm(classifier):
                for _ in range(steps):
                    for key, value in self.meta_step().items():
                        collected[key].append(value)
        finally:
            classifier.train(was_training)
        metrics: dict[str, Any] = {key: torch.stack(values).mean() for key, values in collected.items()}
        metrics.update(self.latent_metrics())
        return metrics

    def meta_step(self) -> dict[str, torch.Tensor]:
        """One Adam update of a batch of latents on L_meta, then the latent constraint.

        Under torchrun the bank stays one bank: every rank takes rank 0's rows, computes the meta-gradient on its own
        validation batch and augmentations, and applies the gradients averaged over ranks, so every rank makes the
        same update."""
        meta, data, dist = self.config.meta, self.ctx.data, self.ctx.dist
        x_v, y_v = data.validation_batch(meta.validation_batch_size, meta.validation_source, meta.validation_augment)
        rows = dist.broadcast_(self.bank.sample_indices(min(meta.latent_batch_size, len(self.bank))))
        latents = self.bank.batch(rows, requires_grad=self.finder is None)
        classifier = self.ctx.classifier
        scope = scope_parameters(classifier, meta.scope, meta.scope_blocks)
        depth = frozen_trunk_depth(classifier, scope)
        with self.ctx.autocast():
            generated = self.generated_latents(latents)
            images = self.synthesize(generated).to(x_v.dtype)
            with torch.no_grad():
                x_v = trunk_forward(classifier, x_v, depth)
            val_before, real_features = validation_forward(classifier, x_v, y_v, depth)
            online, target = two_views(data.augment, images, self.config.views)
            views = (trunk_forward(classifier, online, depth), trunk_forward(classifier, target, depth))
            problem = MetaProblem(
                classifier=classifier,
                scope=scope,
                unsup=self.meta_unsup,
                resemblance=self.resemblance,
                eta=meta.virtual_lr if meta.virtual_lr is not None else self.ctx.current_lr(),
                lambda_r=meta.lambda_r,
                lambda_v=meta.lambda_v,
                x_v=x_v,
                y_v=y_v,
                real_features=real_features,
                stop_grad=self.config.stop_grad,
                start_block=depth,
            )
            if meta.gradient == "exact":
                view_grads, terms = exact_view_grads(problem, views)
            else:
                view_grads, terms = finite_difference_view_grads(problem, views, meta.fd_epsilon, meta.fd_scheme)
        # One backward through the frozen trunk, the augmentation and the generator, whichever meta-gradient made
        # the view grads.
        leaves = list(latents.values()) if self.finder is None else list(self.finder.parameters())
        outputs, grad_outputs = list(views), list(view_grads)
        metrics = {**terms.metrics(), "meta/val_loss_before": val_before.detach()}
        if self.finder is not None and meta.finder_anchor > 0:
            drift = latent_drift(generated, latents)
            outputs.append(meta.finder_anchor * drift)
            grad_outputs.append(torch.ones_like(drift))
            metrics["meta/finder_drift"] = drift.detach()
        grads = torch.autograd.grad(outputs, leaves, grad_outputs=grad_outputs, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves, strict=True)]
        dist.mean_(grads)
        if self.finder is None:
            self.bank.step(self.bank_optimizer, rows, dict(zip(latents, grads, strict=True)))
            self.bank.constrain(rows, meta.latent_constraint, meta.clip)
            grad_norm = portable.sqrt(sum(g.pow(2).sum() for g in grads) / len(rows))
        else:
            for parameter, grad in zip(leaves, grads, strict=True):
                parameter.grad = grad
            self.finder_optimizer.step()
            self.finder_optimizer.zero_grad(set_to_none=True)
            self.bank.revision += 1  # every row's generated latents moved
            grad_norm = portable.sqrt(sum(g.pow(2).sum() for g in grads))
        return {**metrics, "meta/latent_grad_norm": grad_norm}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["bank"]["optimizer"] = self.bank_optimizer.state_dict()  # where the bank kept it: old checkpoints load
        if self.finder is not None:
            state["finder"] = self.finder.state_dict()
            state["finder_optimizer"] = self.finder_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.bank_optimizer.load_state_dict(state["bank"]["optimizer"])
        if self.finder is not None:
            self.finder.load_state_dict(state["finder"])
            self.finder_optimizer.load_state_dict(state["finder_optimizer"])

    @torch.no_grad()
    def latent_metrics(self) -> dict[str, torch.Tensor]:
        """How far the generated latents are from where they started, their norm, and the classes' entropy."""
        latents = self.generated_latents(self.bank.batch(torch.arange(len(self.bank), device=self.bank.noise.device)))
        noise = latents["noise"].flatten(1).float()
        metrics = {
            "latents/noise_norm": noise.norm(dim=1).mean(),
            "latents/noise_shift": (noise - self.initial_noise.flatten(1).float()).norm(dim=1).mean(),
        }
        if "condition" in latents and self.generator.spec.condition == "class":
            probs = torch.softmax(latents["condition"].flatten(1).float() / self.config.latents.temperature, dim=1)
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1).mean()
            metrics["latents/condition_entropy"] = entropy
        return metrics


def build_metassl(config: MetaSSLConfig, ctx: TrainContext) -> Method:
    """The method: meta-optimized latents (phase i) plus generative SSL (phase ii)."""
    return MetaSSL(config, ctx)
