"""Build every component a recipe names, through the registries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from runner.classifiers.base import Classifier
from runner.common.device import select_device
from runner.common.ema import EMA
from runner.data.classes import restrict_classes
from runner.data.device_data import DeviceData
from runner.data.split import LabelSplit, make_label_split
from runner.data.types import DatasetSplits
from runner.distributed import SINGLE, Distributed, rank_seed, wrap
from runner.generators.base import Generator
from runner.methods.base import Method, TrainContext
from runner.registry import CLASSIFIERS, DATASETS, GENERATORS, METHODS
from runner.run.optim import build_optimizer, build_scheduler
from runner.run.runtime import autocast_factory, configure, seed_everything
from schemas import Recipe, UserError


@dataclass
class PreparedData:
    splits: DatasetSplits
    label_split: LabelSplit


@dataclass
class Components:
    recipe: Recipe
    device: torch.device
    data: DeviceData
    label_split: LabelSplit
    classifier: Classifier
    generator: Any
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMA | None
    ctx: TrainContext

    @property
    def dist(self) -> Distributed:
        return self.ctx.dist

    def eval_model(self) -> torch.nn.Module:
        if self.ema is not None and self.recipe.optim.ema.evaluate_with_ema:
            return self.ema.model
        return self.classifier


def prepare_data(recipe: Recipe) -> PreparedData:
    """Load the dataset and draw the label split (cheap failures first: a missing dataset is a UserError)."""
    splits = restrict_classes(DATASETS.build(recipe.data), recipe.data.classes)
    label_split = make_label_split(splits.train.labels, len(splits.classes), recipe.data, recipe.seed)
    return PreparedData(splits, label_split)


def check_source_disjoint(recipe: Recipe, generator: Generator | None) -> None:
    """A generator trained on this dataset must have used the same source split the recipe keeps unlabeled."""
    source = None if generator is None else generator.source
    if not source or source.get("dataset") != recipe.data.name:
        return
    expected = recipe.data.reserved_source_fraction()
    if expected is not None and abs(source["source_fraction"] - expected) > 1e-9:
        raise UserError(
            f"data.source_fraction: {expected} differs from the {source['source_fraction']} generator"
            f" '{recipe.generator.name}' was trained with, so labeled images could be in its training set; set them"
            " equal"
        )


def build_components(recipe: Recipe, prepared: PreparedData, dist: Distributed = SINGLE) -> Components:
    device = select_device(recipe.runtime)
    configure(recipe.runtime, recipe.seed, device)
    data = DeviceData(prepared.splits, prepared.label_split, recipe.data, device, seed=recipe.seed)
    classifier = CLASSIFIERS.build(recipe.classifier, data.num_classes, data.channels, data.image_size).to(device)
    generator = GENERATORS.build(recipe.generator, class_names=data.classes, device=device)
    check_source_disjoint(recipe, generator)
    return assemble(recipe, data, prepared.label_split, classifier, generator, dist)


def assemble(
    recipe: Recipe,
    data: DeviceData,
    label_split: LabelSplit,
    classifier: Classifier,
    generator: Any,
    dist: Distributed = SINGLE,
) -> Components:
    """Optimizer, schedule, EMA and the method around an already built classifier and generator.

    Every rank builds the same components from the recipe's seed; then each rank other than 0 switches to its own
    RNG streams (labeled, unlabeled and synthetic draws, augmentations), while rank 0 goes on as a single process.
    """
    device = data.device
    model = wrap(classifier, device, dist, recipe.runtime.sync_batchnorm)
    optimizer = build_optimizer(recipe.optim.classifier, classifier)
    scheduler = build_scheduler(recipe.optim.lr_schedule, optimizer, recipe.schedule.iterations)
    ema = EMA(classifier, recipe.optim.ema.decay) if recipe.optim.ema.enabled else None
    ctx = TrainContext(
        classifier=classifier,
        data=data,
        generator=generator,
        autocast=autocast_factory(recipe.runtime, device),
        current_lr=lambda: optimizer.param_groups[0]["lr"],
        seed=recipe.seed,
        dist=dist,
        model=model,
    )
    method = METHODS.build(recipe.method, ctx)
    if dist.rank > 0:
        own_seed = rank_seed(recipe.seed, dist.rank)
        seed_everything(own_seed)
        labeled_order = getattr(data, "labeled_order", None)
        if labeled_order is not None:
            labeled_order.manual_seed(own_seed)
    return Components(recipe, device, data, label_split, classifier, generator, method, optimizer, scheduler, ema, ctx)
