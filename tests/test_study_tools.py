"""What the phase (i) study needs: class subsets, paired labeled order, the meta-step's validation options,
the R-only meta objective, and paired differences with confidence intervals."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from runner.data.classes import restrict_classes
from runner.data.device_data import DeviceData
from runner.data.split import make_label_split
from runner.data.types import DatasetSplits, ImageSet
from runner.studies.paired import Reference, paired_difference, paired_rows
from runner.studies.report import Row
from schemas import RecipeError, UserError, validate_recipe
from schemas.data import Digits


def toy_splits(num_classes: int = 4, per_class: int = 10) -> DatasetSplits:
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = (labels.view(-1, 1, 1, 1) * 10 + torch.arange(len(labels)).view(-1, 1, 1, 1) % 7).to(torch.uint8)
    images = images.expand(-1, 1, 4, 4).contiguous()
    train = ImageSet(images, labels)
    return DatasetSplits(train=train, test=ImageSet(images.clone(), labels.clone()), classes=list("abcd"))


def test_restrict_classes_keeps_and_relabels_in_the_given_order():
    splits = toy_splits()
    kept = restrict_classes(splits, [3, 1])
    assert kept.classes == ["d", "b"]
    assert sorted(set(kept.train.labels.tolist())) == [0, 1] and len(kept.train) == 20
    # class 3's images are now label 0, class 1's label 1
    assert torch.equal(kept.train.images[kept.train.labels == 0], splits.train.images[splits.train.labels == 3])
    assert torch.equal(kept.test.images[kept.test.labels == 1], splits.test.images[splits.test.labels == 1])


def test_restrict_classes_out_of_range_is_one_line():
    with pytest.raises(UserError, match=r"data.classes: \[7\] out of range; this dataset has classes 0..3"):
        restrict_classes(toy_splits(), [0, 7])


@pytest.mark.parametrize(
    ("classes", "message"),
    [([1, 1], "each class may appear once"), ([3], "at least 2 items"), ([-1, 2], "class indices start at 0")],
)
def test_bad_class_lists_are_refused_by_the_schema(classes: list[int], message: str):
    document = {"name": "x", "data": {"name": "digits", "classes": classes}, "classifier": {"name": "small_cnn"}}
    document["method"] = {"name": "supervised"}
    with pytest.raises(RecipeError, match=message):
        validate_recipe(document)


def test_labeled_order_is_paired_across_methods_that_draw_differently():
    splits = toy_splits()
    config = Digits(labels_per_class=3)
    split = make_label_split(splits.train.labels, 4, config, seed=0)
    one = DeviceData(splits, split, config, torch.device("cpu"), seed=5)
    two = DeviceData(splits, split, config, torch.device("cpu"), seed=5)
    torch.manual_seed(0)
    first = [one.labeled_batch(8)[1] for _ in range(3)]
    torch.manual_seed(0)
    second = []
    for _ in range(3):
        two.unlabeled_batch(16)  # another method draws unlabeled images in between
        second.append(two.labeled_batch(8)[1])
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    state = one.state_dict()
    after = one.labeled_batch(8)[1]
    one.load_state_dict(state)
    assert torch.equal(one.labeled_batch(8)[1], after)


def test_meta_validation_source_and_augment():
    labels = torch.arange(4).repeat_interleave(10)
    images = torch.arange(40, dtype=torch.uint8).mul(5).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous()
    splits = DatasetSplits(ImageSet(images, labels), ImageSet(images.clone(), labels.clone()), list("abcd"))
    config = Digits(labels_per_class=2, validation={"source": "holdout", "per_class": 3})
    data = DeviceData(splits, make_label_split(labels, 4, config, seed=0), config, torch.device("cpu"), seed=0)

    def drawn_from(source: str) -> set[int]:  # each image is one constant value; the weak crop keeps the centre
        x, _ = data.validation_batch(64, source, "weak")
        return {int(v) for v in (x[:, 0, 4, 4] * 255).round()}

    assert drawn_from("labeled") <= {int(v) for v in data.labeled.images[:, 0, 0, 0]}
    assert drawn_from("holdout") <= {int(v) for v in data.validation.images[:, 0, 0, 0]}
    torch.manual_seed(0)
    weak, _ = data.validation_batch(16, "labeled", "weak")
    torch.manual_seed(0)
    strong, _ = data.validation_batch(16, "labeled", "strong")
    assert not torch.equal(weak, strong)
    no_holdout = Digits(labels_per_class=2)
    plain = DeviceData(splits, make_label_split(labels, 4, no_holdout, seed=0), no_holdout, torch.device("cpu"))
    with pytest.raises(ValueError, match="no held-out validation set"):
        plain.validation_batch(4, "holdout")


def test_paired_difference_uses_only_shared_seeds_and_a_t_interval():
    pairs, mean, low, high = paired_difference({"0": 0.60, "1": 0.70, "2": 0.65}, {"0": 0.50, "1": 0.62, "3": 0.9})
    assert pairs == 2 and mean == pytest.approx(0.09)
    # differences 0.10 and 0.08: sd = 0.01414, t(0.975, 1) = 12.706
    assert high - mean == pytest.approx(12.706 * 0.014142 / math.sqrt(2), rel=1e-3)
    assert low == pytest.approx(2 * mean - high)


def test_paired_rows_against_a_reference_with_settings():
    def row(method: str, values: list[float], **group: str) -> Row:
        return Row({"method": method, "labels": "1/class", **group}, values, ["0", "1", "2"], ["r"] * 3)

    method = row("metassl", [0.5, 0.6, 0.7], **{"method.latents.classes": "pseudo"})
    random = row("generative", [0.4, 0.5, 0.6], **{"method.latents.classes": "random"})
    pseudo = row("generative", [0.5, 0.5, 0.5], **{"method.latents.classes": "pseudo"})
    labels = {id(method): "metassl", id(random): "generative (random)", id(pseudo): "generative (pseudo)"}
    reference = Reference.parse("generative, method.latents.classes=pseudo")
    differences = paired_rows([method, random, pseudo], [reference], labels)
    by_row = {d.row_label: d for d in differences}
    assert set(by_row) == {"metassl", "generative (random)"}
    assert by_row["metassl"].mean == pytest.approx(0.1) and by_row["generative (random)"].mean == pytest.approx(0.0)
    with pytest.raises(UserError, match="no row of the report matches it"):
        paired_rows([method], [Reference.parse("fixmatch")], labels)


def test_meta_objective_without_the_validation_term_is_r_alone():
    from runner.methods.losses import make_unsup_loss
    from runner.methods.meta_gradient import MetaProblem, exact_view_grads
    from runner.methods.resemblance import make_resemblance

    torch.manual_seed(0)

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(6, 6)])
            self.head = torch.nn.Linear(6, 3)

        def forward(self, x: torch.Tensor, start_block: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
            features = self.blocks[0](x)
            return self.head(features), features

    classifier = Tiny()
    views = (torch.randn(8, 6), torch.randn(8, 6))
    common = dict(
        classifier=classifier,
        scope=dict(classifier.named_parameters()),
        unsup=make_unsup_loss("feature_cosine", stop_grad=False),
        resemblance=make_resemblance("mean_feature_l2"),
        eta=0.5,
        lambda_r=1.0,
        x_v=torch.randn(8, 6),
        y_v=torch.randint(3, (8,)),
        real_features=torch.randn(8, 6),
    )
    r_only, terms = exact_view_grads(MetaProblem(**common, lambda_v=0.0), views)
    full, _ = exact_view_grads(MetaProblem(**common), views)
    weight = classifier.blocks[0].weight
    features = classifier.blocks[0](views[0])
    expected = (2 * (features.mean(0) - common["real_features"].mean(0)) / 8) @ weight
    assert torch.allclose(r_only[0], expected.detach().expand(8, -1), atol=1e-6)
    assert torch.count_nonzero(r_only[1]) == 0  # only the online view feeds R
    assert not torch.allclose(full[0], r_only[0])
    assert SimpleNamespace(**terms.metrics())  # logged terms stay available
