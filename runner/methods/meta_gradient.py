"""Phase (i)'s objective and its gradient with respect to the synthetic views.

    theta'(Lam_B) = theta - eta * grad_theta L_u(theta; Lam_B)          (virtual step)
    L_meta(Lam_B) = lambda_v * CE(h_theta'(x_v), y_v) + lambda_r * R(Lam_B)

Everything here sees the synthetic batch only as its two augmented views `(online,
target)`; the caller generates them from the latents and carries gradients back
through the augmentation and the generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from runner.common import portable
from runner.methods.losses import UnsupLoss, full
from runner.methods.resemblance import Resemblance
from runner.methods.virtual_step import Params, functional_forward, virtual_step

Views = tuple[torch.Tensor, torch.Tensor]


@dataclass
class MetaProblem:
    """The fixed pieces of one meta-step: the classifier at theta, the virtual step, and the validation batch."""

    classifier: nn.Module
    scope: Params  # the parameters the virtual step moves, at their current values theta
    unsup: UnsupLoss | None
    resemblance: Resemblance | None
    eta: float
    lambda_r: float
    x_v: torch.Tensor  # validation images, or their trunk output when start_block > 0
    y_v: torch.Tensor
    real_features: torch.Tensor  # f_theta(x_v), detached: R's "real labeled samples"
    stop_grad: bool = True  # `unsup` must then leave the target's features attached (see unsup_at)
    start_block: int = 0  # the views and x_v enter the classifier here (see virtual_step.frozen_trunk_depth)
    lambda_v: float = 1.0  # weight of the validation term; 0 leaves R alone (no virtual step needed)

    def forward(self, params: Params, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return functional_forward(self.classifier, params, inputs, self.start_block)


@dataclass
class MetaTerms:
    meta: torch.Tensor
    val_after: torch.Tensor
    resemblance: torch.Tensor
    unsup: torch.Tensor

    def metrics(self) -> dict[str, torch.Tensor]:
        return {
            "meta/loss": self.meta.detach(),
            "meta/val_loss_after": self.val_after.detach(),
            "meta/resemblance": self.resemblance.detach(),
            "meta/unsup": self.unsup.detach(),
        }


def validation_forward(
    classifier: nn.Module, x_v: torch.Tensor, y_v: torch.Tensor, start_block: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """CE(h_theta(x_v), y_v) and f_theta(x_v), without gradients (val_loss_before and R's real features)."""
    with torch.no_grad():
        logits, features = functional_forward(classifier, {}, x_v, start_block)
    return F.cross_entropy(full(logits), y_v), features.detach()


def unsup_at(
    problem: MetaProblem, params: Params, views: Views, target_params: Params | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_u(params; views) and the online view's features (for R).

    Stop-gradient acts on theta only: the target view goes through detached parameters
    (`target_params`, default: `params` detached), so it still depends on the latents and
    the meta-gradient follows that path too. The two views go through separate forwards.
    """
    assert problem.unsup is not None
    if target_params is None:
        target_params = {name: p.detach() for name, p in params.items()} if problem.stop_grad else params
    online = problem.forward(params, views[0])
    target = problem.forward(target_params, views[1])
    loss, _ = problem.unsup(online, target)
    return loss, online[1]


def resemblance_at(problem: MetaProblem, features: torch.Tensor) -> torch.Tensor:
    if problem.resemblance is None:
        return features.new_zeros(())
    return problem.resemblance(features, problem.real_features)


def val_loss_at(problem: MetaProblem, params: Params) -> torch.Tensor:
    logits, _ = problem.forward(params, problem.x_v)
    return F.cross_entropy(full(logits), problem.y_v)


def exact_meta_loss(problem: MetaProblem, views: Views) -> MetaTerms:
    """L_meta as a differentiable function of the views, through a second-order virtual step."""
    if problem.unsup is None or problem.lambda_v == 0:  # only R depends on the latents: no virtual step
        _, features = problem.forward({}, views[0])
        resemblance = resemblance_at(problem, features)
        val = val_loss_at(problem, {}).detach()
        return MetaTerms(problem.lambda_r * resemblance, val, resemblance, resemblance.new_zeros(()))
    unsup, features = unsup_at(problem, problem.scope, views)
    grads = torch.autograd.grad(unsup, list(problem.scope.values()), create_graph=True, allow_unused=True)
    val_after = val_loss_at(problem, virtual_step(problem.scope, grads, problem.eta))
    resemblance = resemblance_at(problem, features)
    return MetaTerms(problem.lambda_v * val_after + problem.lambda_r * resemblance, val_after, resemblance, unsup)


def exact_view_grads(problem: MetaProblem, views: Views) -> tuple[Views, MetaTerms]:
    """d L_meta / d views, exactly (the views must carry no graph the caller still needs)."""
    leaves = tuple(v.detach().requires_grad_() for v in views)
    terms = exact_meta_loss(problem, leaves)  # type: ignore[arg-type]
    grads = torch.autograd.grad(terms.meta, leaves, allow_unused=True)
    return _zeros_for_none(grads, leaves), terms


def finite_difference_view_grads(
    problem: MetaProblem, views: Views, epsilon: float, scheme: str = "central"
) -> tuple[Views, MetaTerms]:
    """d L_meta / d views with first-order gradients only (DARTS):

    d L_val(theta') / d Lam ~= -eta * (d L_u(theta+) / d Lam - d L_u(theta-) / d Lam) / (2 eps),
    theta+- = theta +- eps * v,  v = grad_theta' L_val(theta'),  eps = epsilon / |v|.

    The whole view gradient, R's term and both sides of the difference, comes from one backward. With
    stop-gradient the target branch runs at the unperturbed theta on every side, so it is computed once.
    The `forward` scheme differences theta+ against theta itself, whose pass has already run.
    """
    if problem.unsup is None or problem.lambda_v == 0:
        return exact_view_grads(problem, views)
    leaves = tuple(v.detach().requires_grad_() for v in views)
    names, theta = list(problem.scope), list(problem.scope.values())
    fixed = {name: p.detach() for name, p in zip(names, theta, strict=True)}
    shared_target = problem.forward(fixed, leaves[1]) if problem.stop_grad else None

    def unsup_with(params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        assert problem.unsup is not None
        online = problem.forward(params, leaves[0])
        target = shared_target if shared_target is not None else problem.forward(params, leaves[1])
        return problem.unsup(online, target)[0], online[1]

    unsup, features = unsup_with(problem.scope)
    grads = torch.autograd.grad(unsup, theta, retain_graph=True, allow_unused=True)
    theta_virtual = {
        name: (p if g is None else p - problem.eta * g).detach().requires_grad_()
        for name, p, g in zip(names, theta, grads, strict=True)
    }
    val_after = val_loss_at(problem, theta_virtual)
    v = torch.autograd.grad(val_after, list(theta_virtual.values()), allow_unused=True)
    v = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(theta, v, strict=True))
    eps = epsilon / portable.sqrt(sum(g.pow(2).sum() for g in v)).clamp_min(1e-12)

    def moved(sign: float) -> Params:
        return {name: p + sign * eps * g for (name, p), g in zip(fixed.items(), v, strict=True)}

    resemblance = resemblance_at(problem, features)
    if scheme == "central":
        difference = (unsup_with(moved(1.0))[0] - unsup_with(moved(-1.0))[0]) / (2 * eps)
    elif scheme == "forward":
        difference = (unsup_with(moved(1.0))[0] - unsup) / eps
    else:
        raise ValueError(f"unknown finite-difference scheme '{scheme}'")
    # The objective whose view gradient is the meta-gradient above (its value means nothing).
    surrogate = problem.lambda_r * resemblance - problem.lambda_v * problem.eta * difference
    view_grads = _zeros_for_none(torch.autograd.grad(surrogate, leaves, allow_unused=True), leaves)
    meta = problem.lambda_v * val_after.detach() + problem.lambda_r * resemblance.detach()
    terms = MetaTerms(meta, val_after, resemblance, unsup)
    return view_grads, terms


def _zeros_for_none(grads: tuple[torch.Tensor | None, ...], like: tuple[torch.Tensor, ...]) -> Views:
    return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, like, strict=True))  # type: ignore[return-value]
