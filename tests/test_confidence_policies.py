"""Each confidence policy against its paper's equations, on small hand-computed tensors; their recipe fields."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from runner.methods.confidence import ConfidencePolicy, FlexMatchPolicy, FreeMatchPolicy, SoftMatchPolicy
from runner.methods.losses import PseudoLabelLoss
from schemas import RecipeError, validate_recipe
from tests.helpers import RECIPES, metassl

CPU = torch.device("cpu")


def probs(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def flexmatch(warmup: bool = True, mapping: str = "convex", pool: int = 6) -> FlexMatchPolicy:
    return FlexMatchPolicy(0.9, warmup, mapping, num_classes=3, pool_size=pool, device=CPU)


def test_fixmatch_keeps_exactly_the_confident_pseudo_labels() -> None:
    weight = ConfidencePolicy(0.9).weigh(probs([0.95, 0.05, 0.0], [0.5, 0.3, 0.2], [0.0, 0.1, 0.9]), None, True)
    assert weight.tolist() == [1.0, 0.0, 1.0]


def flexmatch_after_one_batch(**options: object) -> FlexMatchPolicy:
    """Images 0, 1 confidently class 0, image 2 confidently class 1, image 3 unconfident; images 4, 5 unseen."""
    policy = flexmatch(**options)  # type: ignore[arg-type]
    first = probs([0.95, 0.03, 0.02], [0.92, 0.04, 0.04], [0.01, 0.97, 0.02], [0.3, 0.2, 0.5])
    # Before any confident prediction every beta is 0, so every threshold is 0 and every pseudo-label counts.
    assert policy.thresholds().tolist() == [0.0, 0.0, 0.0]
    assert policy.weigh(first, torch.tensor([0, 1, 2, 3]), learn=True).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert policy.selected.tolist() == [0, 0, 1, -1, -1, -1]
    return policy


def test_flexmatch_thresholds_after_a_known_history() -> None:
    # sigma = (2, 1, 0) and 3 images unused: with the warm-up beta = sigma / max(2, 3) = (2/3, 1/3, 0).
    policy = flexmatch_after_one_batch()
    assert policy.learning_effect().tolist() == pytest.approx([2 / 3, 1 / 3, 0.0])
    # Convex M(x) = x / (2 - x): M(2/3) = 1/2, M(1/3) = 1/5; T = 0.9 * M(beta).
    assert policy.thresholds().tolist() == pytest.approx([0.45, 0.18, 0.0])
    weight = policy.weigh(probs([0.5, 0.3, 0.2], [0.4, 0.35, 0.25], [0.3, 0.4, 0.3]), None, learn=False)
    assert weight.tolist() == [1.0, 0.0, 1.0]  # 0.5 >= 0.45, 0.4 < 0.45, 0.4 >= 0.18

    # Without the warm-up beta = sigma / max sigma = (1, 1/2, 0): T = 0.9 * (1, 1/3, 0).
    assert flexmatch_after_one_batch(warmup=False).thresholds().tolist() == pytest.approx([0.9, 0.3, 0.0])
    # The other mappings: linear M(x) = x, concave M(x) = ln(x + 1) / ln 2.
    assert flexmatch_after_one_batch(mapping="linear").thresholds().tolist() == pytest.approx([0.6, 0.3, 0.0])
    concave = flexmatch_after_one_batch(mapping="concave").thresholds().tolist()
    assert concave == pytest.approx([0.9 * math.log(5 / 3) / math.log(2), 0.9 * math.log(4 / 3) / math.log(2), 0.0])


def test_flexmatch_records_the_latest_confident_prediction_of_each_image() -> None:
    policy = flexmatch_after_one_batch()
    # Image 1 is now confidently class 2, image 0 unconfident (its record stays), image 4 drawn twice: the last counts.
    second = probs([0.5, 0.2, 0.3], [0.02, 0.03, 0.95], [0.96, 0.02, 0.02], [0.02, 0.96, 0.02])
    policy.weigh(second, torch.tensor([0, 1, 4, 4]), learn=True)
    assert policy.selected.tolist() == [0, 2, 1, -1, 1, -1]
    # sigma = (1, 2, 1), 2 unused: beta = sigma / 2.
    assert policy.learning_effect().tolist() == pytest.approx([0.5, 1.0, 0.5])
    with pytest.raises(ValueError, match="pool indices"):
        policy.weigh(second, None, learn=True)


def freematch(fairness_weight: float = 1.0) -> FreeMatchPolicy:
    return FreeMatchPolicy(ema_decay=0.5, fairness_weight=fairness_weight, num_classes=3, device=CPU)


WEAK = probs([0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.25, 0.15, 0.6], [0.4, 0.35, 0.25])


def test_freematch_global_and_local_thresholds() -> None:
    policy = freematch()
    assert policy.thresholds().tolist() == pytest.approx([1 / 3] * 3)  # tau_0 = 1/C, p~_0 uniform
    weight = policy.weigh(WEAK, None, learn=True)
    # tau_1 = 0.5 / 3 + 0.5 * mean confidence (0.7 + 0.5 + 0.6 + 0.4) / 4.
    assert float(policy.global_threshold) == pytest.approx(1 / 6 + 0.55 / 2)
    # p~_1 = 0.5 / 3 + 0.5 * the batch's mean probabilities; h~_1 from the pseudo-label histogram (2, 1, 1) / 4.
    expected_probs = [1 / 6 + 1.55 / 8, 1 / 6 + 1.2 / 8, 1 / 6 + 1.25 / 8]
    assert policy.class_probs.tolist() == pytest.approx(expected_probs)
    assert policy.class_histogram.tolist() == pytest.approx([1 / 6 + 2 / 8, 1 / 6 + 1 / 8, 1 / 6 + 1 / 8])
    # tau_1(c) = MaxNorm(p~_1)(c) * tau_1.
    local = [p / max(expected_probs) * (1 / 6 + 0.55 / 2) for p in expected_probs]
    assert policy.thresholds().tolist() == pytest.approx(local)
    assert weight.tolist() == [1.0, 1.0, 1.0, 0.0]  # the last image: 0.4 < tau_1(0) = 0.4417
    frozen = policy.state_dict()
    policy.weigh(WEAK, None, learn=False)
    assert all(torch.equal(value, policy.state_dict()[name]) for name, value in frozen.items())


def test_freematch_fairness_term() -> None:
    policy = freematch(fairness_weight=0.5)
    weight = policy.weigh(WEAK, None, learn=True)
    # The kept images' online predictions, one per class (the 4th image is not kept, whatever it predicts).
    online = probs([0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.9, 0.05, 0.05]).log()
    # h_bar = (1, 1, 1) / 3, so SumNorm(p_bar / h_bar) = p_bar = (0.3, 0.4, 0.3).
    p_tilde = [1 / 6 + 1.55 / 8, 1 / 6 + 1.2 / 8, 1 / 6 + 1.25 / 8]
    h_tilde = [1 / 6 + 2 / 8, 1 / 6 + 1 / 8, 1 / 6 + 1 / 8]
    ratio = [p / h for p, h in zip(p_tilde, h_tilde, strict=True)]
    target = [r / sum(ratio) for r in ratio]
    fairness = sum(t * math.log(p) for t, p in zip(target, [0.3, 0.4, 0.3], strict=True))  # -H(target, p_bar)
    regularizer = policy.regularizer(online, weight)
    assert regularizer is not None and float(regularizer) == pytest.approx(0.5 * fairness, rel=1e-6)
    assert float(policy.regularizer(online, torch.zeros(4))) == 0.0  # nothing kept: no term
    assert freematch(fairness_weight=0.0).regularizer(online, weight) is None


def softmatch(n_sigma: float = 1.0, alignment: bool = False) -> SoftMatchPolicy:
    return SoftMatchPolicy(ema_decay=0.5, n_sigma=n_sigma, uniform_alignment=alignment, num_classes=3, device=CPU)


def test_softmatch_weights_at_a_known_mean_and_variance() -> None:
    policy = softmatch()
    state = policy.state_dict()
    policy.load_state_dict(
        {
            **state,
            "confidence_mean": torch.tensor(0.6, dtype=torch.float64),
            "confidence_var": torch.tensor(0.01, dtype=torch.float64),
        }
    )
    confidence = torch.tensor([0.4, 0.5, 0.6, 0.9], dtype=torch.float64)
    # exp(-(p - mu)^2 / (2 sigma^2)) below mu = 0.6, 1 at or above it.
    assert policy.weights_at(confidence).tolist() == pytest.approx([math.exp(-2), math.exp(-0.5), 1.0, 1.0])
    policy.n_sigma = 2.0  # sigma / 2: the exponent four times as large
    assert policy.weights_at(confidence).tolist() == pytest.approx([math.exp(-8), math.exp(-2), 1.0, 1.0])


def test_softmatch_mean_and_variance_are_emas_of_the_confidence() -> None:
    policy = softmatch()
    weight = policy.weigh(probs([0.5, 0.3, 0.2], [0.7, 0.2, 0.1], [0.05, 0.05, 0.9]), None, learn=True)
    # Batch mean 0.7, unbiased variance (0.04 + 0 + 0.04) / 2 = 0.04; mu_0 = 1/3, sigma_0^2 = 1; decay 0.5.
    mu, var = 1 / 6 + 0.35, 0.5 + 0.02
    assert float(policy.confidence_mean) == pytest.approx(mu) and float(policy.confidence_var) == pytest.approx(var)
    assert weight.tolist() == pytest.approx([math.exp(-((0.5 - mu) ** 2) / (2 * var)), 1.0, 1.0])


def test_softmatch_uniform_alignment() -> None:
    policy = softmatch(alignment=True)
    first = probs([0.6, 0.3, 0.1], [0.2, 0.6, 0.2])
    # p^ starts at the first batch's mean (0.4, 0.45, 0.15); aligned = Normalize(p / p^).
    aligned = policy.align(first, learn=True)
    row = [0.6 / 0.4, 0.3 / 0.45, 0.1 / 0.15]
    assert aligned[0].tolist() == pytest.approx([x / sum(row) for x in row])
    policy.align(probs([0.1, 0.1, 0.8]), learn=True)  # then an EMA: p^ = 0.5 p^ + 0.5 (0.1, 0.1, 0.8)
    assert policy.mean_probs.tolist() == pytest.approx([0.25, 0.275, 0.475])
    policy.align(first, learn=False)
    assert policy.mean_probs.tolist() == pytest.approx([0.25, 0.275, 0.475])


def test_pseudo_label_loss_is_the_weighted_cross_entropy_plus_the_policy_term() -> None:
    online = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    loss, metrics = PseudoLabelLoss(freematch(fairness_weight=0.5))((online, online), (WEAK.log(), WEAK.log()))
    weight = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)  # as in test_freematch_global_and_local_...
    cross_entropy = (F.cross_entropy(online, torch.tensor([0, 1, 2, 0]), reduction="none") * weight).mean()
    reference = freematch(fairness_weight=0.5)
    reference.weigh(WEAK, None, learn=True)
    fairness = reference.regularizer(online, weight)
    assert fairness is not None and float(metrics["unsup/regularizer"]) == pytest.approx(float(fairness))
    assert float(loss) == pytest.approx(float(cross_entropy + fairness))
    assert float(metrics["unsup/mask_rate"]) == pytest.approx(0.75)


@pytest.mark.parametrize(
    "make", [lambda: FlexMatchPolicy(0.5, True, "convex", 3, 6, CPU), freematch, lambda: softmatch(alignment=True)]
)
def test_every_policy_state_round_trips(make: object) -> None:
    policy, fresh = make(), make()  # type: ignore[operator]
    policy.weigh(policy.align(WEAK, True), torch.tensor([0, 1, 2, 5]), learn=True)
    state = policy.state_dict()
    assert any(not torch.equal(value, fresh.state_dict()[name]) for name, value in state.items())
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.state_dict()[name], value) for name, value in state.items())


def recipe_with(method: dict[str, object]) -> dict[str, object]:
    return {
        "name": "policies",
        "data": {"name": "digits"},
        "classifier": {"name": "small_cnn"},
        "method": method,
        **({"generator": {"name": "local_gan", "path": "unused"}} if method["name"] == "generative" else {}),
    }


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ({"name": "flexmatch", "threshold": 1.5}, "method.threshold"),
        ({"name": "freematch", "ema_decay": 1.0}, "method.ema_decay"),
        ({"name": "freematch", "fairness_weight": -0.1}, "method.fairness_weight"),
        ({"name": "softmatch", "n_sigma": 0}, "method.n_sigma"),
        ({"name": "fixmatch", "ema_decay": 0.9}, "ema_decay is an option of the freematch or softmatch confidence"),
        (
            {"name": "softmatch", "threshold": 0.9},
            "method 'softmatch' has none; remove it or set method.name",
        ),
        ({"name": "generative", "fairness_weight": 0.1}, "freematch confidence policy, and unsup_loss 'feature"),
        ({"name": "generative", "unsup_loss": "softmatch", "mapping": "linear"}, "set method.unsup_loss: flexmatch"),
    ],
)
def test_policy_fields_out_of_range_or_on_the_wrong_method_are_one_line_errors(
    method: dict[str, object], message: str
) -> None:
    with pytest.raises(RecipeError, match=message) as error:
        validate_recipe(recipe_with(method))
    assert "\n" not in str(error.value)


def test_generative_takes_a_policy_and_its_options_in_one_field() -> None:
    recipe = validate_recipe(recipe_with({"name": "generative", "unsup_loss": "freematch", "fairness_weight": 0.01}))
    assert recipe.method.unsup_loss == "freematch" and recipe.method.fairness_weight == 0.01


def test_cli_refuses_a_policy_option_the_method_has_not() -> None:
    result = metassl("validate", str(RECIPES / "fashion_mnist_40labels_freematch.yaml"), "-o", "method.threshold=0.9")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "method: threshold is an option of the fixmatch or flexmatch confidence policy" in result.stderr
