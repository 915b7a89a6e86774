"""The classifier as a function of (part of) its parameters, and the virtual step theta' = theta - eta * g.

BatchNorm: every functional forward runs the module in its current mode (train mode
during training, so batch statistics are used, as in the SSL step the virtual step
imitates) on *copies* of the buffers, so the meta phase never moves the running
statistics the evaluation uses.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from runner.classifiers.base import Classifier
from schemas import UserError

Params = dict[str, torch.Tensor]


def raw_module(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (phase (i) needs its own parameters and blocks: DDP has
    no double backward, and a wrapper is not a `Classifier`); any other module as is."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def scope_parameters(classifier: nn.Module, scope: str, blocks: int = 1) -> Params:
    """The parameters the virtual step moves: `all`, or the last `blocks` feature blocks plus the head.

    The head is always in scope because it is free: `feature_cosine` gives it no gradient,
    and `fixmatch` as L_u needs it.
    """
    classifier = raw_module(classifier)
    named = {name: p for name, p in classifier.named_parameters() if p.requires_grad}
    if scope == "all":
        return named
    if scope != "last_blocks":
        raise ValueError(f"unknown virtual-step scope '{scope}'")
    if not isinstance(classifier, Classifier):
        raise UserError("method.meta.scope: 'last_blocks' needs a Classifier with feature blocks; use 'all'")
    feature_blocks = classifier.feature_blocks()
    if blocks > len(feature_blocks):
        raise UserError(
            f"method.meta.scope_blocks: {blocks} exceeds the classifier's {len(feature_blocks)} feature blocks"
        )
    chosen = {id(p) for block in feature_blocks[-blocks:] for p in block.parameters()}
    chosen |= {id(p) for p in classifier.head.parameters()}
    return {name: p for name, p in named.items() if id(p) in chosen}


def functional_forward(
    classifier: nn.Module, params: Params, images: torch.Tensor, start_block: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(logits, features)` with `params` in place of those parameters and copied buffers (see module docstring).

    With `start_block` = k > 0, `images` is what `trunk_forward(classifier, images, k)` returned.
    """
    classifier = raw_module(classifier)
    buffers = {name: b.clone() for name, b in classifier.named_buffers()}
    kwargs = {"start_block": start_block} if start_block else None
    return functional_call(classifier, {**params, **buffers}, (images,), kwargs, strict=False)


def frozen_trunk_depth(classifier: nn.Module, scope: Params) -> int:
    """How many leading feature blocks hold no parameter of the scope.

    The virtual step never moves them, so every pass of a meta-step (at theta, theta', theta +- eps v) sees
    the same output from them, and it is computed once per input.
    """
    classifier = raw_module(classifier)
    if not isinstance(classifier, Classifier):
        return 0
    in_scope = {id(p) for p in scope.values()}
    depth = 0
    for block in classifier.feature_blocks():
        if any(id(p) in in_scope for p in block.parameters()):
            break
        depth += 1
    return depth


def trunk_forward(classifier: nn.Module, images: torch.Tensor, depth: int) -> torch.Tensor:
    """The output of the first `depth` feature blocks at the current parameters, on copied buffers."""
    if depth == 0:
        return images
    trunk = nn.Sequential(*raw_module(classifier).feature_blocks()[:depth])
    buffers = {name: b.clone() for name, b in trunk.named_buffers()}
    return functional_call(trunk, buffers, (images,), strict=False)


def virtual_step(params: Params, grads: tuple[torch.Tensor | None, ...], eta: float) -> Params:
    """theta' = theta - eta * grad; a parameter without a gradient stays where it is."""
    return {name: p if g is None else p - eta * g for (name, p), g in zip(params.items(), grads, strict=True)}
