"""Phase (i)'s meta-gradient against numerical differences, and the first-order option against the exact one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from method_toys import TinyGenerator, ToyData, one_thread, tiny_classifier

from runner.generators.base import Latents
from runner.methods.confidence import ConfidencePolicy
from runner.methods.losses import make_unsup_loss
from runner.methods.meta_gradient import (
    MetaProblem,
    exact_meta_loss,
    exact_view_grads,
    finite_difference_view_grads,
    unsup_at,
    validation_forward,
)
from runner.methods.resemblance import make_resemblance
from runner.methods.semi_supervised import two_views
from runner.methods.virtual_step import frozen_trunk_depth, scope_parameters, trunk_forward, virtual_step

DTYPE = torch.float64
AUGMENT_SEED = 123


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def setup(resemblance: str = "mmd", unsup: str = "feature_cosine", scope: str = "all", lambda_r: float = 0.3):
    torch.manual_seed(0)
    generator = TinyGenerator(dtype=DTYPE)
    classifier = tiny_classifier(DTYPE)
    data = ToyData(dtype=DTYPE)
    x_v, y_v = data.validation_batch(0)
    _, real_features = validation_forward(classifier, x_v, y_v)
    problem = MetaProblem(
        classifier=classifier,
        scope=scope_parameters(classifier, scope, 1),
        unsup=make_unsup_loss(unsup, stop_grad=False, policy=ConfidencePolicy(threshold=0.0)),
        resemblance=make_resemblance(resemblance),
        eta=0.5,
        lambda_r=lambda_r,
        x_v=x_v,
        y_v=y_v,
        real_features=real_features,
    )
    rng = torch.Generator().manual_seed(1)
    latents = {
        "noise": torch.randn(6, 5, generator=rng, dtype=DTYPE, requires_grad=True),
        "condition": torch.randn(6, 3, generator=rng, dtype=DTYPE, requires_grad=True),
    }
    return generator, data, problem, latents


def views_of(generator: TinyGenerator, data: ToyData, latents: Latents):
    torch.manual_seed(AUGMENT_SEED)  # the same augmentation draw for every evaluation
    return two_views(data.augment, generator(latents), "strong_weak")


def meta_loss_value(generator, data, problem, latents) -> float:
    return float(exact_meta_loss(problem, views_of(generator, data, latents)).meta.detach())


def latent_grads(
    generator, data, problem, latents, gradient: str = "exact", scheme: str = "central"
) -> list[torch.Tensor]:
    views = views_of(generator, data, latents)
    if gradient == "exact":
        view_grads, _ = exact_view_grads(problem, views)
    else:
        view_grads, _ = finite_difference_view_grads(problem, views, epsilon=0.01, scheme=scheme)
    return list(torch.autograd.grad(views, list(latents.values()), grad_outputs=view_grads))


@pytest.mark.parametrize(
    ("resemblance", "unsup", "scope"),
    [
        ("mmd", "feature_cosine", "all"),
        ("mean_feature_l2", "feature_cosine", "last_blocks"),
        ("nearest_cosine", "fixmatch", "all"),
        ("none", "feature_cosine", "all"),
    ],
)
def test_exact_meta_gradient_matches_central_differences(resemblance: str, unsup: str, scope: str) -> None:
    generator, data, problem, latents = setup(resemblance, unsup, scope)
    analytic = latent_grads(generator, data, problem, latents)
    h = 1e-6
    checked = 0
    for key, grad in zip(latents, analytic, strict=True):
        for row, col in [(0, 0), (2, 1), (5, 2)]:
            shifted = {k: v.detach().clone() for k, v in latents.items()}
            shifted[key][row, col] += h
            up = meta_loss_value(generator, data, problem, shifted)
            shifted[key][row, col] -= 2 * h
            down = meta_loss_value(generator, data, problem, shifted)
            numeric = (up - down) / (2 * h)
            assert grad[row, col].item() == pytest.approx(numeric, rel=1e-5, abs=1e-9), (key, row, col)
            checked += abs(numeric) > 1e-7
    assert checked >= 4  # the check is not vacuous: the meta loss really depends on the latents


def test_meta_gradient_flows_through_the_virtual_step() -> None:
    """Without R, the whole gradient comes from the second-order path theta'(Lam)."""
    generator, data, problem, latents = setup("none", lambda_r=0.0)
    grads = latent_grads(generator, data, problem, latents)
    assert torch.cat([g.flatten() for g in grads]).abs().max() > 1e-6


def test_virtual_step_is_one_sgd_step_on_the_unsup_loss() -> None:
    generator, data, problem, latents = setup()
    views = views_of(generator, data, latents)
    names = list(problem.scope)
    before = {name: p.detach().clone() for name, p in problem.scope.items()}
    loss, _ = unsup_at(problem, problem.scope, views)
    grads = torch.autograd.grad(loss, list(problem.scope.values()), allow_unused=True)
    stepped = virtual_step(problem.scope, grads, 0.5)
    head_grad = grads[names.index("head.weight")]
    assert head_grad is None  # feature_cosine regularizes the feature extractor only
    for name, grad in zip(names, grads, strict=True):
        expected = before[name] if grad is None else before[name] - 0.5 * grad
        assert torch.allclose(stepped[name], expected)
    # the module itself is untouched, and so are BatchNorm's running statistics
    assert all(torch.equal(p, before[n]) for n, p in problem.scope.items())
    batch_norm = problem.classifier.blocks[0][2]
    assert torch.equal(batch_norm.running_mean, torch.zeros(12, dtype=DTYPE))
    assert int(batch_norm.num_batches_tracked) == 0


@pytest.mark.parametrize(
    ("lambda_r", "stop_grad", "scheme"),
    [
        (0.0, True, "central"),
        (0.3, True, "central"),
        (0.3, False, "central"),
        (0.0, True, "forward"),
        (0.3, False, "forward"),
    ],
)
def test_finite_difference_agrees_with_exact_in_direction(lambda_r: float, stop_grad: bool, scheme: str) -> None:
    generator, data, problem, latents = setup("mmd", lambda_r=lambda_r)
    problem.stop_grad = stop_grad
    exact = torch.cat([g.flatten() for g in latent_grads(generator, data, problem, latents, "exact")])
    approx = torch.cat(
        [g.flatten() for g in latent_grads(generator, data, problem, latents, "finite_difference", scheme)]
    )
    cosine = F.cosine_similarity(exact, approx, dim=0)
    assert cosine > 0.999, float(cosine)
    assert approx.norm() == pytest.approx(float(exact.norm()), rel=0.05)


@pytest.mark.parametrize("gradient", ["exact", "finite_difference"])
def test_a_shared_frozen_trunk_gives_the_same_meta_gradient(gradient: str) -> None:
    """With a last-blocks scope the blocks before it run once per input; the latents' gradient must not change."""
    generator, data, problem, latents = setup("mmd", scope="last_blocks")
    depth = frozen_trunk_depth(problem.classifier, problem.scope)
    assert depth == len(problem.classifier.feature_blocks()) - 1 > 0
    full = latent_grads(generator, data, problem, latents, gradient)

    views = views_of(generator, data, latents)
    trunk_views = tuple(trunk_forward(problem.classifier, view, depth) for view in views)
    problem.x_v = trunk_forward(problem.classifier, problem.x_v, depth).detach()
    problem.start_block = depth
    if gradient == "exact":
        view_grads, _ = exact_view_grads(problem, trunk_views)
    else:
        view_grads, _ = finite_difference_view_grads(problem, trunk_views, epsilon=0.01)
    shared = torch.autograd.grad(trunk_views, list(latents.values()), grad_outputs=view_grads)
    for ours, reference in zip(shared, full, strict=True):
        assert reference.abs().max() > 1e-6
        assert torch.allclose(ours, reference, rtol=1e-9, atol=1e-12)


def test_the_frozen_trunk_is_empty_when_every_block_moves() -> None:
    classifier = tiny_classifier(DTYPE)
    assert frozen_trunk_depth(classifier, scope_parameters(classifier, "all")) == 0
    blocks = len(classifier.feature_blocks())
    assert frozen_trunk_depth(classifier, scope_parameters(classifier, "last_blocks", 2)) == blocks - 2
