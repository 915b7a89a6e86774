"""Dataset adapters, the label split, augmentation and DeviceData."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from runner.data.augment import Augmenter
from runner.data.datasets.fashion_mnist import DEBIAN_ROOT, source_split
from runner.data.device_data import DeviceData
from runner.data.split import make_label_split
from runner.data.types import DatasetSplits, ImageSet
from runner.registry import DATASETS
from schemas.data import CIFAR10, STL10, Augment, Digits, FashionMNIST, ImageFolder
from schemas.errors import UserError


def needs_fashion_mnist() -> None:
    """Skip without Debian's Fashion-MNIST, except on CI, where its absence is a failure."""
    if not (DEBIAN_ROOT / "train-images-idx3-ubyte.gz").is_file():
        message = f"Fashion-MNIST is not installed in {DEBIAN_ROOT} (apt install dataset-fashion-mnist)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def fashion() -> DatasetSplits:
    needs_fashion_mnist()
    return DATASETS.build(FashionMNIST())


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return DATASETS.build(Digits())


def toy_splits(per_class: int = 20, num_classes: int = 3, size: int = 8) -> DatasetSplits:
    labels = torch.arange(num_classes).repeat(per_class)
    images = torch.randint(0, 256, (len(labels), 1, size, size), dtype=torch.uint8)
    test = ImageSet(images[:6].clone(), labels[:6].clone())
    return DatasetSplits(train=ImageSet(images, labels), test=test, classes=[f"c{i}" for i in range(num_classes)])


# --- adapters ---------------------------------------------------------------------------------------------------


def test_digits_shapes_and_stratified_split(digits: DatasetSplits):
    assert digits.train.images.dtype == torch.uint8 and digits.train.labels.dtype == torch.int64
    assert digits.train.images.shape[1:] == (1, 8, 8) and digits.test.images.shape[1:] == (1, 8, 8)
    assert len(digits.train) + len(digits.test) == 1797
    assert len(digits.test) == pytest.approx(0.25 * 1797, abs=2)
    assert digits.classes == [str(d) for d in range(10)]
    assert int(digits.train.images.max()) == 255 and int(digits.train.images.min()) == 0
    assert torch.bincount(digits.test.labels, minlength=10).min() >= 40  # stratified: every class in test
    again = DATASETS.build(Digits())
    assert torch.equal(again.test.images, digits.test.images)


def test_digits_resize():
    resized = DATASETS.build(Digits(image_size=16))
    assert resized.train.images.shape[1:] == (1, 16, 16) and resized.test.images.shape[1:] == (1, 16, 16)


def test_fashion_mnist_shapes(fashion: DatasetSplits):
    assert fashion.train.images.shape == (30000, 1, 28, 28) and fashion.train.images.dtype == torch.uint8
    assert fashion.test.images.shape == (10000, 1, 28, 28) and fashion.test.labels.dtype == torch.int64
    assert fashion.source is not None and len(fashion.source) == 30000
    assert len(fashion.classes) == 10 and fashion.classes[0] == "T-shirt/top"
    assert torch.bincount(fashion.train.labels, minlength=10).min() > 2500


def test_fashion_mnist_source_is_fixed_and_disjoint(fashion: DatasetSplits):
    source, train = source_split(60000, 0.5)
    assert len(set(source.tolist()) | set(train.tolist())) == 60000
    assert not set(source.tolist()) & set(train.tolist())
    # Another recipe seed, another fraction of the same permutation: the source comes from the same fixed order.
    again, _ = source_split(60000, 0.5)
    assert torch.equal(source, again)
    other = DATASETS.build(FashionMNIST(labels_per_class=10))
    assert other.source is not None and fashion.source is not None
    assert torch.equal(other.source.images, fashion.source.images)
    assert torch.equal(other.train.labels, fashion.train.labels)


def test_fashion_mnist_splits_match_index_bookkeeping(fashion: DatasetSplits):
    from runner.data.datasets.fashion_mnist import find_files, read_idx

    files = find_files(DEBIAN_ROOT)
    assert files is not None
    everything = read_idx(files["train_images"])
    source, train = source_split(60000, 0.5)
    assert fashion.source is not None
    assert torch.equal(fashion.source.images[:, 0], everything[source])
    assert torch.equal(fashion.train.images[:, 0], everything[train])


def test_fashion_mnist_resize_and_torchvision_layout(tmp_path: Path):
    needs_fashion_mnist()
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in DEBIAN_ROOT.glob("*.gz"):
        (raw / path.name).symlink_to(path)
    splits = DATASETS.build(FashionMNIST(root=tmp_path, image_size=32, source_fraction=0.25))
    assert splits.train.images.shape == (45000, 1, 32, 32)
    assert splits.source is not None and splits.source.images.shape == (15000, 1, 32, 32)
    assert splits.test.images.shape == (10000, 1, 32, 32)


@pytest.mark.parametrize(
    "config",
    [
        lambda root: FashionMNIST(root=root),
        lambda root: CIFAR10(root=root),
        lambda root: STL10(root=root),
    ],
    ids=["fashion_mnist", "cifar10", "stl10"],
)
def test_missing_dataset_is_one_line_user_error(tmp_path: Path, config):
    with pytest.raises(UserError) as error:
        DATASETS.build(config(tmp_path))
    message = str(error.value)
    assert message.startswith("data.root:") and "\n" not in message
    assert str(tmp_path) in message and "data.download: true" in message


def test_nonexistent_root_is_user_error(tmp_path: Path):
    with pytest.raises(UserError, match=r"^data\.root: .*no_such_dir is not a directory"):
        DATASETS.build(FashionMNIST(root=tmp_path / "no_such_dir"))


def test_image_folder(tmp_path: Path):
    from PIL import Image

    for part, count in (("train", 3), ("test", 2)):
        for name, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            folder = tmp_path / part / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (20, 12), colour).save(folder / f"{i}.png")
    splits = DATASETS.build(ImageFolder(root=tmp_path, image_size=16))
    assert splits.classes == ["cat", "dog"]
    assert splits.train.images.shape == (6, 3, 16, 16) and splits.test.images.shape == (4, 3, 16, 16)
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert int(splits.train.images[0, 0].min()) == 255 and int(splits.train.images[3, 2].min()) == 255
    gray = DATASETS.build(ImageFolder(root=tmp_path, image_size=8, grayscale=True))
    assert gray.train.images.shape == (6, 1, 8, 8)
    with pytest.raises(UserError, match=r"^data\.root: .* has no train/ folder"):
        DATASETS.build(ImageFolder(root=tmp_path / "train"))


# --- label split --------------------------------------------------------------------------------------------------


def test_label_split_counts_and_disjoint(digits: DatasetSplits):
    config = Digits(labels_per_class=4, validation={"source": "holdout", "per_class": 3})
    split = make_label_split(digits.train.labels, 10, config, seed=1)
    labels = digits.train.labels
    assert torch.bincount(labels[split.labeled], minlength=10).tolist() == [4] * 10
    assert torch.bincount(labels[split.validation], minlength=10).tolist() == [3] * 10
    labeled, validation, unlabeled = (set(t.tolist()) for t in (split.labeled, split.validation, split.unlabeled))
    assert not labeled & validation and not labeled & unlabeled and not validation & unlabeled
    assert len(labeled | validation | unlabeled) == len(labels)
    assert all(t.dtype == torch.int64 for t in (split.labeled, split.validation, split.unlabeled))


def test_label_split_seeded(digits: DatasetSplits):
    config = Digits(labels_per_class=2)
    first = make_label_split(digits.train.labels, 10, config, seed=3)
    same = make_label_split(digits.train.labels, 10, config, seed=3)
    other = make_label_split(digits.train.labels, 10, config, seed=4)
    assert torch.equal(first.labeled, same.labeled) and torch.equal(first.unlabeled, same.unlabeled)
    assert not torch.equal(first.labeled, other.labeled)
    assert len(first.validation) == 0  # validation batches come from the labeled set by default
    assert first.to_dict()["labeled"] == first.labeled.tolist()
    assert all(isinstance(i, int) for i in first.to_dict()["unlabeled"])


def test_total_labels_spread_with_remainder_first(digits: DatasetSplits):
    split = make_label_split(digits.train.labels, 10, Digits(total_labels=23), seed=0)
    assert torch.bincount(digits.train.labels[split.labeled], minlength=10).tolist() == [3, 3, 3] + [2] * 7
    # The schema rejects this for digits (10 known classes); the split still guards datasets of unknown size.
    too_few = Digits.model_construct(total_labels=5, labels_per_class=None)
    with pytest.raises(UserError, match=r"^data\.total_labels:"):
        make_label_split(digits.train.labels, 10, too_few, seed=0)


def test_unlabeled_limit(digits: DatasetSplits):
    config = Digits(labels_per_class=1, unlabeled_limit=100)
    split = make_label_split(digits.train.labels, 10, config, seed=0)
    assert len(split.unlabeled) == 100 and not set(split.unlabeled.tolist()) & set(split.labeled.tolist())
    other = make_label_split(digits.train.labels, 10, config, seed=1)
    assert not torch.equal(split.unlabeled, other.unlabeled)


def test_too_few_images_in_a_class():
    splits = toy_splits(per_class=5)
    with pytest.raises(UserError, match=r"^data\.labels_per_class: class 0 has 5 train images"):
        make_label_split(
            splits.train.labels, 3, Digits(labels_per_class=4, validation={"source": "holdout", "per_class": 2}), 0
        )


# --- augmentation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_augment_shapes_ranges_and_change(channels: int):
    torch.manual_seed(0)
    x = torch.rand(32, channels, 16, 16)
    augment = Augmenter(Augment())
    for view in (augment.weak(x), augment.strong(x)):
        assert view.shape == x.shape and view.dtype == x.dtype
        assert float(view.min()) >= 0.0 and float(view.max()) <= 1.0
    changed = (augment.weak(x) - x).abs().flatten(1).amax(1) > 1e-6
    assert 0 < int(changed.sum()) <= 32
    assert (augment.strong(x) - augment.weak(x)).abs().mean() > 0.01


def test_augment_is_deterministic_under_the_global_seed():
    x = torch.rand(16, 3, 12, 12)
    augment = Augmenter(Augment(strong_ops=3))
    torch.manual_seed(7)
    first = augment.strong(x), augment.weak(x)
    torch.manual_seed(7)
    second = augment.strong(x), augment.weak(x)
    torch.manual_seed(8)
    third = augment.strong(x)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], third)


def test_weak_translation_keeps_content():
    """Without flips, every weak view of a constant-row image is a shifted copy, never a distortion."""
    x = torch.linspace(0, 1, 8).view(1, 1, 8, 1).expand(4, 1, 8, 8).contiguous()
    weak = Augmenter(Augment(flip=False, crop_padding=0.25)).weak(x)
    assert torch.equal(weak[:, :, :, :1].expand_as(weak), weak)  # rows stay constant
    assert set(weak.flatten().tolist()) <= set(x.flatten().tolist())


def test_strong_passes_gradients():
    x = torch.rand(8, 3, 16, 16, requires_grad=True)
    Augmenter(Augment()).strong(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


# --- DeviceData ---------------------------------------------------------------------------------------------------


def test_device_data_batches(digits: DatasetSplits):
    config = Digits(labels_per_class=3, validation={"source": "holdout", "per_class": 2})
    split = make_label_split(digits.train.labels, 10, config, seed=0)
    data = DeviceData(digits, split, config, torch.device("cpu"))
    assert (data.num_classes, data.channels, data.image_size) == (10, 1, 8)
    assert len(data.labeled) == 30 and data.has_unlabeled
    images, labels = data.labeled_batch(16)
    assert images.shape == (16, 1, 8, 8) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert set(labels.tolist()) <= set(digits.train.labels[split.labeled].tolist())
    val_images, val_labels = data.validation_batch(7)
    assert val_images.shape == (7, 1, 8, 8) and val_labels.shape == (7,)
    assert data.unlabeled_batch(5).shape == (5, 1, 8, 8)
    assert torch.equal(data.labeled_images(), digits.train.images[split.labeled].float() / 255)
    batches = list(data.test_batches(100))
    assert [len(b[0]) for b in batches] == [100, 100, 100, 100, 50]
    assert torch.equal(torch.cat([b[1] for b in batches]), digits.test.labels)


def test_device_data_is_deterministic_and_cpu_storage_works(digits: DatasetSplits):
    config = Digits(labels_per_class=4, device_resident=False)
    split = make_label_split(digits.train.labels, 10, config, seed=0)
    data = DeviceData(digits, split, config, torch.device("cpu"))
    assert data.validation is None  # validation draws come from the labeled set

    def draw() -> list[torch.Tensor]:
        return [*data.labeled_batch(8), *data.validation_batch(8), data.unlabeled_batch(8)]

    torch.manual_seed(0)
    first = draw()
    torch.manual_seed(0)
    second = draw()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], first[2])


def test_device_data_without_unlabeled():
    splits = toy_splits(per_class=4)
    config = Digits(labels_per_class=4)
    data = DeviceData(splits, make_label_split(splits.train.labels, 3, config, seed=0), config, torch.device("cpu"))
    assert not data.has_unlabeled
    with pytest.raises(RuntimeError):
        data.unlabeled_batch(2)


def test_dataset_unlabeled_split_is_used_and_capped():
    splits = toy_splits(per_class=10)
    extra = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)
    splits.unlabeled = ImageSet(extra, torch.full((50,), -1))
    config = Digits(labels_per_class=2, unlabeled_limit=20)
    data = DeviceData(splits, make_label_split(splits.train.labels, 3, config, seed=0), config, torch.device("cpu"))
    assert data.unlabeled is not None and len(data.unlabeled) == 20
    rows = {tuple(img.flatten().tolist()) for img in extra}
    assert all(tuple(img.flatten().tolist()) in rows for img in data.unlabeled.images)
