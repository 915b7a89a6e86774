"""The methods on real parts: DeviceData on sklearn digits, the registered small_cnn, and the loop's call pattern."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from method_toys import TinyGenerator, ToyData, one_thread, tiny_classifier, toy_components

from runner.data.device_data import DeviceData
from runner.data.split import make_label_split
from runner.generators.base import Generator
from runner.methods.meta_gradient import MetaProblem, exact_meta_loss, validation_forward
from runner.methods.metassl import MetaSSL
from runner.methods.semi_supervised import two_views
from runner.methods.virtual_step import scope_parameters
from runner.registry import CLASSIFIERS, DATASETS
from runner.run.build import Components, assemble
from runner.run.train_step import grad_scaler, train_step
from schemas import UserError, validate_recipe
from schemas.data import Digits

BATCH = 16


@pytest.fixture(scope="module")
def digits() -> tuple[Any, Any, Digits]:
    config = Digits(labels_per_class=4, batch_size=BATCH)
    splits = DATASETS.build(config)
    return splits, make_label_split(splits.train.labels, len(splits.classes), config, seed=0), config


GENERATIVE = ("generative", "metassl")


def digits_components(
    digits: tuple[Any, Any, Digits], method: dict[str, Any], seed: int = 0, generator: Generator | None = None
) -> Components:
    """The method on digits, assembled as the runner assembles it; generative methods get a TinyGenerator."""
    splits, split, config = digits
    if method["name"] == "metassl":  # phase (i) twice per iteration
        method = {**method, "meta": {"every": 1, "steps": 2, **method.get("meta", {})}}
    recipe = validate_recipe(
        {
            "name": "digits-methods",
            "seed": seed,
            "data": config.model_dump(),
            "classifier": {"name": "small_cnn", "width": 8},
            "method": method,
            "schedule": {"iterations": 100, "warmup": 1},
            "optim": {
                "classifier": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0},
                "lr_schedule": {"name": "constant"},
            },
            # The recipe must name a generator these methods can use; the test supplies a TinyGenerator.
            **({"generator": {"name": "local_gan", "path": "unused"}} if method["name"] in GENERATIVE else {}),
        }
    )
    torch.manual_seed(seed)
    data = DeviceData(splits, split, recipe.data, torch.device("cpu"))
    classifier = CLASSIFIERS.build(recipe.classifier, data.num_classes, data.channels, data.image_size)
    if generator is None and method["name"] in GENERATIVE:
        generator = TinyGenerator(seed=seed)
    return assemble(recipe, data, split, classifier, generator)


def train(components: Components, iterations: int) -> list[dict[str, Any]]:
    """The loop's own step: one warm-up iteration, then the meta phase (2 steps) and SSL every iteration."""
    scaler = grad_scaler(components)
    components.classifier.train()
    history = []
    for iteration in range(iterations):
        _, metrics = train_step(components, iteration, scaler)
        history.append({key: float(value) for key, value in metrics.items()})
    return history


METHOD_BLOCKS = {
    "supervised": {"name": "supervised"},
    "fixmatch": {"name": "fixmatch", "unlabeled_batch_size": 32, "threshold": 0.5},
    "flexmatch": {"name": "flexmatch", "unlabeled_batch_size": 32, "threshold": 0.5},
    "freematch": {"name": "freematch", "unlabeled_batch_size": 32, "fairness_weight": 0.01},
    "softmatch": {"name": "softmatch", "unlabeled_batch_size": 32},
    "generative_flexmatch": {
        "name": "generative",
        "unsup_loss": "flexmatch",
        "threshold": 0.5,
        "unlabeled_batch_size": 32,
        "latents": {"bank_size": 64, "classes": "uniform"},
    },
    "metassl_freematch": {
        "name": "metassl",
        "unsup_loss": "freematch",
        "fairness_weight": 0.01,
        "unlabeled_batch_size": 32,
        "latents": {"bank_size": 64},
        "meta": {"latent_batch_size": 16, "validation_batch_size": 16},
    },
    "generative_cosine": {"name": "generative", "unlabeled_batch_size": 32, "latents": {"bank_size": 64}},
    "generative_fixmatch": {
        "name": "generative",
        "unsup_loss": "fixmatch",
        "threshold": 0.0,
        "unlabeled_batch_size": 32,
        "latents": {"bank_size": 64, "classes": "uniform"},
    },
    "metassl_exact": {
        "name": "metassl",
        "unlabeled_batch_size": 32,
        "latents": {"bank_size": 64},
        "meta": {"gradient": "exact", "latent_batch_size": 16, "validation_batch_size": 16},
    },
    "metassl_fd_last_block": {
        "name": "metassl",
        "unlabeled_batch_size": 32,
        "views": "weak_weak",
        "latents": {"bank_size": 64},
        "meta": {
            "gradient": "finite_difference",
            "scope": "last_blocks",
            "scope_blocks": 2,
            "resemblance": "nearest_cosine",
            "latent_constraint": "clip",
            "latent_batch_size": 16,
            "validation_batch_size": 16,
        },
    },
}

EXPECTED_METRICS = {
    "supervised": {"loss/sup"},
    "fixmatch": {"loss/sup", "loss/unsup", "unsup/mask_rate"},
    "generative_cosine": {"loss/sup", "loss/unsup", "synthetic/generated"},
    "generative_fixmatch": {"loss/sup", "loss/unsup", "unsup/mask_rate", "synthetic/generated"},
    "metassl_exact": {
        "loss/sup",
        "loss/unsup",
        "synthetic/generated",
        "meta/loss",
        "meta/val_loss_before",
        "meta/val_loss_after",
        "meta/resemblance",
        "meta/unsup",
        "meta/latent_grad_norm",
        "latents/noise_norm",
        "latents/noise_shift",
        "latents/condition_entropy",
    },
}
EXPECTED_METRICS["metassl_fd_last_block"] = EXPECTED_METRICS["metassl_exact"]
POLICY_METRICS = {
    "flexmatch": {"unsup/mask_rate", "unsup/threshold_mean"},
    "freematch": {"unsup/mask_rate", "unsup/threshold_global", "unsup/regularizer"},
    "softmatch": {"unsup/mask_rate", "unsup/confidence_mean", "unsup/confidence_var"},
}
for _policy, _metrics in POLICY_METRICS.items():
    EXPECTED_METRICS[_policy] = {"loss/sup", "loss/unsup", *_metrics}
EXPECTED_METRICS["generative_flexmatch"] = {
    "loss/sup",
    "loss/unsup",
    "synthetic/generated",
    *POLICY_METRICS["flexmatch"],
}
EXPECTED_METRICS["metassl_freematch"] = EXPECTED_METRICS["metassl_exact"] | POLICY_METRICS["freematch"]


@pytest.mark.parametrize("variant", list(METHOD_BLOCKS))
def test_each_method_trains_on_digits(digits: tuple[Any, Any, Digits], variant: str) -> None:
    components = digits_components(digits, METHOD_BLOCKS[variant])
    method, classifier = components.method, components.classifier
    before = {name: p.detach().clone() for name, p in classifier.named_parameters()}
    bank_before = method.bank.noise.detach().clone() if hasattr(method, "bank") else None
    history = train(components, iterations=3)
    assert set(history[-1]) == EXPECTED_METRICS[variant]
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in history)
    assert any(not torch.equal(p, before[name]) for name, p in classifier.named_parameters())
    if bank_before is not None:
        moved = (method.bank.noise != bank_before).any(dim=1).sum()
        assert (moved > 0) == method.config.has_meta_phase  # only phase (i) moves latents, never the SSL step


def test_the_meta_phase_reads_the_confidence_policy_and_phase_ii_updates_it(digits: tuple[Any, Any, Digits]) -> None:
    method = digits_components(digits, METHOD_BLOCKS["metassl_freematch"]).method
    assert isinstance(method, MetaSSL) and method.policy is not None
    before = method.state_dict()["policy"]
    method.meta_phase(iteration=1, steps=1)
    assert all(torch.equal(value, method.state_dict()["policy"][name]) for name, value in before.items())
    images, labels = method.ctx.data.labeled_batch(BATCH)
    method.ssl_loss(1, images, labels)
    assert not torch.equal(before["global_threshold"], method.state_dict()["policy"]["global_threshold"])


def test_meta_phase_leaves_the_classifier_and_batchnorm_statistics_alone(digits: tuple[Any, Any, Digits]) -> None:
    components = digits_components(digits, METHOD_BLOCKS["metassl_exact"])
    method, ctx = components.method, components.ctx
    state = {key: value.clone() for key, value in ctx.classifier.state_dict().items()}
    bank_before = method.bank.noise.detach().clone()
    method.meta_phase(0, 1)
    assert all(torch.equal(value, state[key]) for key, value in ctx.classifier.state_dict().items())
    assert all(p.grad is None for p in ctx.classifier.parameters())
    moved_rows = (method.bank.noise != bank_before).any(dim=1).sum()
    assert int(moved_rows) == 16  # exactly one latent batch
    norms = method.bank.noise.norm(dim=1)
    assert torch.allclose(norms[(method.bank.noise != bank_before).any(dim=1)], torch.tensor(5**0.5))


def test_same_seed_same_result_on_cpu(digits: tuple[Any, Any, Digits]) -> None:
    def run(seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        components = digits_components(digits, METHOD_BLOCKS["metassl_exact"], seed=seed)
        train(components, iterations=3)
        return components.classifier.state_dict(), components.method.bank.noise.detach().clone()

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(value, again[0][key]) for key, value in first[0].items())
    assert torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


def toy_val_loss_after(method: MetaSSL) -> float:
    """L_val(theta'(Lam)) over the whole bank, with one fixed augmentation draw."""
    torch.manual_seed(7)
    x_v, y_v = method.ctx.data.validation_batch(0)
    _, real_features = validation_forward(method.ctx.classifier, x_v, y_v)
    rows = torch.arange(len(method.bank))
    views = two_views(method.ctx.data.augment, method.synthesize(method.bank.batch(rows)), method.config.views)
    problem = MetaProblem(
        classifier=method.ctx.classifier,
        scope=scope_parameters(method.ctx.classifier, "all"),
        unsup=method.meta_unsup,
        resemblance=None,
        eta=1.0,
        lambda_r=0.0,
        x_v=x_v,
        y_v=y_v,
        real_features=real_features,
    )
    return float(exact_meta_loss(problem, views).val_after.detach())


@pytest.mark.parametrize("gradient", ["exact", "finite_difference"])
def test_meta_steps_lower_the_validation_loss_after_the_virtual_step(gradient: str) -> None:
    torch.manual_seed(0)
    config = {
        "name": "metassl",
        "latents": {"bank_size": 16},
        "meta": {
            "latent_batch_size": 16,
            "virtual_lr": 1.0,
            "resemblance": "none",
            "lambda_r": 0.0,
            "gradient": gradient,
        },
    }
    method = toy_components(config, tiny_classifier(), ToyData(), TinyGenerator()).method
    assert isinstance(method, MetaSSL)
    with one_thread():
        before = toy_val_loss_after(method)
        history = [method.meta_phase(step, 1) for step in range(30)]
        after = toy_val_loss_after(method)
    assert after < before - 0.05, (before, after)
    assert float(history[-1]["meta/val_loss_after"]) < float(history[0]["meta/val_loss_after"])


@pytest.mark.slow
def test_sample_grids_show_the_bank_moving(digits: tuple[Any, Any, Digits], tmp_path: Path) -> None:
    from runner.tracking import MlflowTracker
    from schemas.training import Tracking

    tracking = Tracking(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "artifacts"))
    metassl_components = digits_components(digits, METHOD_BLOCKS["metassl_exact"])
    metassl = metassl_components.method
    fixed = digits_components(digits, METHOD_BLOCKS["generative_cosine"]).method
    with MlflowTracker.open(tracking, run_name="grids") as tracker:
        train(metassl_components, iterations=2)
        metassl.log_artifacts(10, tracker)
        metassl.log_artifacts(20, tracker)
        grids = sorted(Path(f.path).name for f in tracker.client.list_artifacts(tracker.run_id, "bank"))
    assert grids == ["step_000000.png", "step_000010.png", "step_000020.png"]
    assert metassl.bank_grid().shape == (64, 1, 8, 8)
    assert not torch.equal(metassl.bank_grid(), metassl.bank_grid(metassl.initial_grid_latents))
    with MlflowTracker.open(tracking, run_name="fixed") as tracker:
        fixed.log_artifacts(10, tracker)
        fixed.log_artifacts(20, tracker)  # a fixed bank does not change: one grid is enough
        assert [Path(f.path).name for f in tracker.client.list_artifacts(tracker.run_id, "bank")] == ["step_000000.png"]


def test_user_errors_name_the_field(digits: tuple[Any, Any, Digits]) -> None:
    # (a method that needs a generator without one is refused by the recipe's validation: test_capabilities.py)
    block = {**METHOD_BLOCKS["metassl_exact"], "meta": {"scope": "last_blocks", "scope_blocks": 9}}
    with pytest.raises(UserError, match=r"method\.meta\.scope_blocks: 9 exceeds the classifier's 4 feature blocks"):
        digits_components(digits, block)


def test_metassl_with_the_project_generator_and_pseudo_latents(digits: tuple[Any, Any, Digits], tmp_path: Path) -> None:
    """A tiny, randomly initialised local_gan saved and loaded like the real one; pseudo latents from its clusters."""
    from runner.generators.local_gan import load_local_gan
    from runner.pretraining.model import ConditionalGenerator

    torch.manual_seed(0)
    model = ConditionalGenerator(noise_dim=8, num_classes=4, embed_dim=4, base_channels=8, image_size=8)
    model.centroids.uniform_()
    model.save_pretrained(tmp_path / "gan")
    generator = load_local_gan(tmp_path / "gan")
    block = {**METHOD_BLOCKS["metassl_exact"], "latents": {"bank_size": 64, "classes": "pseudo", "temperature": 0.5}}
    components = digits_components(digits, block, generator=generator)
    method = components.method
    labeled = components.data.labeled_images()
    expected = generator.source_logits(labeled)[torch.arange(64) % len(labeled)]
    assert torch.allclose(method.bank.condition, expected)
    condition_before = method.bank.condition.detach().clone()
    history = train(components, iterations=2)
    assert float(history[-1]["meta/latent_grad_norm"]) > 0
    assert not torch.equal(method.bank.condition, condition_before)  # the class logits are meta-learned too
