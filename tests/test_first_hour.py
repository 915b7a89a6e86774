"""A new user's first hour: options that do what they say, listings that explain themselves, helpful examples."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torchvision

from runner.pretraining.recipe import load_pretrain_recipe
from runner.registry import DATASETS
from schemas import UserError
from schemas.data import CIFAR10
from tests.helpers import RECIPES, ROOT, metassl

DIGITS = str(RECIPES / "digits_tiny.yaml")


@pytest.fixture(scope="module")
def run_in_other_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    store = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{store}/elsewhere.db"
    result = metassl(
        "run", DIGITS, "--tracking-uri", uri, "-o", "runtime.threads=1", "-o", f"tracking.artifact_root={store}"
    )
    assert result.returncode == 0, result.stderr
    run_id = re.search(r"run ([0-9a-f]{32}) finished", result.stdout).group(1)
    return store, run_id


@pytest.mark.slow
def test_tracking_uri_chooses_the_store_of_a_new_run(run_in_other_store: tuple[Path, str]) -> None:
    from mlflow.tracking import MlflowClient

    store, run_id = run_in_other_store
    assert (store / "elsewhere.db").is_file()
    run = MlflowClient(f"sqlite:///{store}/elsewhere.db").get_run(run_id)
    assert run.data.params["tracking.tracking_uri"] == f"sqlite:///{store}/elsewhere.db"


@pytest.mark.slow
def test_runs_prints_a_header(run_in_other_store: tuple[Path, str]) -> None:
    store, run_id = run_in_other_store
    result = metassl("runs", "--tracking-uri", f"sqlite:///{store}/elsewhere.db")
    assert result.returncode == 0, result.stderr
    header, first, *_ = result.stdout.splitlines()
    assert header.split() == ["RUN", "ID", "STATUS", "TEST", "ACC", "NAME"]
    assert first.startswith(run_id) and "FINISHED" in first
    assert first.index("FINISHED") == header.index("STATUS")


def test_runs_on_an_empty_store_says_so(tmp_path: Path) -> None:
    result = metassl("runs", "--tracking-uri", f"sqlite:///{tmp_path}/empty.db")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"no runs in experiment 'metassl' of sqlite:///{tmp_path}/empty.db"


def test_run_help_says_what_tracking_uri_does() -> None:
    result = metassl("run", "--help")
    text = " ".join(result.stdout.split())
    assert "replaces its tracking.tracking_uri" in text and "--resume RUN_ID" in text


def test_list_generators_names_the_extras() -> None:
    result = metassl("list", "generators")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "pip install 'metassl[sd]'" in lines["sd_turbo"]
    assert "pip install 'metassl[biggan]'" in lines["biggan"]


def test_pretrain_help_example_is_a_generator_recipe() -> None:
    result = metassl("pretrain", "--help")
    examples = set(re.findall(r"recipes/\S+\.yaml", result.stdout))
    assert examples == {"recipes/generators/fashion_mnist_gan.yaml"}
    recipe = load_pretrain_recipe(ROOT / "recipes" / "generators" / "fashion_mnist_gan.yaml", [])
    assert recipe.generator.pretrain is not None


def test_failed_download_leaves_no_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing listens on port 9: the download fails at once, as it does offline.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    root = tmp_path / "cache" / "cifar10"
    with pytest.raises(UserError, match=r"data\.download: could not download CIFAR-10"):
        DATASETS.build(CIFAR10(root=root, download=True))
    assert not root.exists()
