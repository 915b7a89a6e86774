"""Pretraining the project's own generator: a few iterations on the real Fashion-MNIST source split."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError

from runner.generators.local_gan import LocalGANGenerator, load_local_gan
from runner.pretraining import pretrain as pretrain_module
from runner.pretraining.pretrain import ensure_generator, pretrain_generator
from runner.pretraining.recipe import load_pretrain_recipe, pretrain_from_file
from runner.pretraining.runs import GENERATOR_PATH_TAG, GENERATOR_RUN_TAG, pretraining_tracking
from runner.registry import DATASETS, GENERATORS
from schemas import RecipeError, UserError
from schemas.data import FashionMNIST
from schemas.generators import Consistency, LocalGAN, Pretrain
from schemas.training import Runtime, Tracking
from tests.helpers import ROOT, metassl

RECIPE = ROOT / "recipes" / "generators" / "fashion_mnist_gan.yaml"
TINY = {"iterations": 3, "batch_size": 8, "grid_every": 2, "base_channels": 8, "noise_dim": 8, "clusters": 4}


@pytest.fixture(scope="module")
def fashion_mnist() -> None:
    try:
        DATASETS.build(FashionMNIST())
    except UserError as error:
        pytest.skip(f"Fashion-MNIST is not available: {error}")


def tracking(root: Path) -> Tracking:
    return Tracking(experiment="pretrain-test", tracking_uri=f"sqlite:///{root}/mlflow.db", artifact_root=str(root))


def tiny_config(path: Path) -> LocalGAN:
    return LocalGAN(path=path, pretrain=Pretrain(**TINY))


@pytest.fixture(scope="module")
def trained(fashion_mnist: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalGAN, Tracking]:
    root = tmp_path_factory.mktemp("pretrain")
    config, track = tiny_config(root / "gan"), tracking(root / "mlruns")
    assert pretrain_generator(config, tracking=track, runtime=Runtime(device="cpu")) == root / "gan"
    return config, track


def test_checkpoint_loads_through_the_registry(trained: tuple[LocalGAN, Tracking]) -> None:
    config, _ = trained
    generator = GENERATORS.build(LocalGAN(path=config.path), class_names=[], device=torch.device("cpu"))
    assert isinstance(generator, LocalGANGenerator)
    assert generator.spec.noise_shape == (8,) and generator.spec.condition_shape == (4,)
    images = generator(generator.sample_latents(5), size=32, channels=3)
    assert images.shape == (5, 3, 32, 32)
    assert not any(name.startswith(".") for name in map(lambda p: p.name, config.path.parent.iterdir()))


def test_source_split_is_recorded(trained: tuple[LocalGAN, Tracking]) -> None:
    config, track = trained
    source = load_local_gan(config.path).model.config.source
    splits = DATASETS.build(FashionMNIST())
    assert source["source_count"] == len(splits.source) == 30000
    assert source["train_count"] == len(splits.train) and source["test_count"] == len(splits.test)
    assert sum(source["cluster_sizes"]) == source["source_count"] and len(source["cluster_sizes"]) == 4

    from mlflow.tracking import MlflowClient

    client = MlflowClient(track.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(pretraining_tracking(track).experiment).experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["source.source_sha256"] == source["source_sha256"]
    assert "loss/d" in run.data.metrics and "loss/g" in run.data.metrics
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert (artifacts / "samples" / "step_000003.png").is_file()
    assert (artifacts / "generator" / "config.json").is_file()


def test_second_call_uses_the_cache(trained: tuple[LocalGAN, Tracking], monkeypatch: pytest.MonkeyPatch) -> None:
    config, track = trained

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("retrained although the checkpoint exists")

    monkeypatch.setattr(pretrain_module, "train_gan", fail)
    before = (config.path / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert pretrain_generator(config, tracking=track, runtime=Runtime(device="cpu")) == config.path
    GENERATORS.build(config, class_names=[], device=torch.device("cpu"))
    assert (config.path / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == before


def test_ensure_generator_pretrains_on_first_use(fashion_mnist: None, tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "first_use")
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ensure_generator(config, tracking=tracking(tmp_path / "mlruns"), runtime=Runtime(device="cpu", threads=2))
        # The pretraining step runs on the recipe's own thread count and gives the run its thread count back.
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads_before)
    assert isinstance(GENERATORS.build(config, class_names=[], device=torch.device("cpu")), LocalGANGenerator)
    assert json.loads((tmp_path / "first_use" / "pretrain.json").read_text())["threads"] == 1
    # The run that pretrained on first use continues with the random stream it would have had with a cached
    # checkpoint, so a cold run and a warm run of the same recipe give the same result.
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_preparing_leaves_other_generators_and_local_gan_without_pretrain_alone(tmp_path: Path) -> None:
    GENERATORS.prepare(Consistency(), tracking=tracking(tmp_path), runtime=Runtime())
    GENERATORS.prepare(LocalGAN(path=tmp_path / "none"), tracking=tracking(tmp_path), runtime=Runtime())
    assert list(tmp_path.iterdir()) == []


def test_builders_only_build() -> None:
    """No generator builder takes tracking or runtime (pretraining is the session's step, not a builder's)."""
    for name in GENERATORS.names():
        parameters = inspect.signature(GENERATORS.get(name)).parameters
        assert {"tracking", "runtime"}.isdisjoint(parameters), name
        assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in parameters.values()), name


def test_pretraining_does_not_import_the_generator_adapters() -> None:
    """runner.pretraining is below runner.generators: no import circle between the two."""
    for module in (ROOT / "runner" / "pretraining").glob("*.py"):
        assert "runner.generators" not in module.read_text(), module.name


def test_force_retrains_in_place(fashion_mnist: None, tmp_path: Path) -> None:
    config, track = tiny_config(tmp_path / "gan"), tracking(tmp_path / "mlruns")
    pretrain_generator(config, tracking=track, runtime=Runtime(device="cpu"))
    first = load_local_gan(config.path).model.state_dict()
    forced = config.model_copy(update={"pretrain": config.pretrain.model_copy(update={"seed": 1})})
    pretrain_generator(forced, tracking=track, runtime=Runtime(device="cpu"), force=True)
    second = load_local_gan(config.path).model.state_dict()
    assert not torch.equal(first["class_embedding.weight"], second["class_embedding.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gan", "mlruns"]


def test_generator_recipe_and_overrides() -> None:
    recipe = load_pretrain_recipe(RECIPE, ["generator.pretrain.iterations=7", "generator.path=/tmp/x"])
    assert recipe.name == "fashion_mnist_gan"
    assert recipe.generator.pretrain.iterations == 7 and recipe.generator.path == Path("/tmp/x")


def test_full_training_recipe_uses_its_generator_block(tmp_path: Path) -> None:
    document = {
        "name": "fmnist_method",
        "data": {"name": "fashion_mnist"},
        "generator": {"name": "local_gan", "path": "gan", "pretrain": {"iterations": 5}},
        "classifier": {"name": "small_cnn"},
        "method": {"name": "supervised"},
        "tracking": {"experiment": "elsewhere"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(document))
    recipe = load_pretrain_recipe(path, [])
    assert recipe.generator.pretrain.iterations == 5 and recipe.tracking.experiment == "elsewhere"
    document["generator"] = {"name": "none"}
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(RecipeError, match="only 'local_gan' can be pretrained"):
        load_pretrain_recipe(path, [])


def test_bad_pretrain_recipe_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ngenerator: {name: local_gan, path: p, pretrain: {iteratons: 5}}\n")
    with pytest.raises(RecipeError) as error:
        pretrain_from_file(path, [])
    assert "generator.pretrain.iteratons: unknown field" in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_pretrain_block(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"generator\.pretrain: missing"):
        pretrain_generator(LocalGAN(path=tmp_path / "g"), tracking=tracking(tmp_path), runtime=Runtime())


def test_cached_checkpoint_trained_differently_is_refused(trained: tuple[LocalGAN, Tracking]) -> None:
    config, track = trained
    ensure_generator(config, tracking=track, runtime=Runtime(device="cpu"))
    for change in ({"iterations": 999}, {"threads": 2}):
        different = config.model_copy(update={"pretrain": config.pretrain.model_copy(update=change)})
        (field, value), *_ = change.items()
        with pytest.raises(UserError, match=rf"generator\.pretrain: .*{field}=.*\(recipe: {value}\)"):
            ensure_generator(different, tracking=track, runtime=Runtime(device="cpu"))


def test_source_dataset_comes_from_the_registered_datasets() -> None:
    assert Pretrain(dataset="fashion_mnist").dataset == "fashion_mnist"
    with pytest.raises(ValidationError, match="'digits' has no source split; use one of: fashion_mnist"):
        Pretrain(dataset="digits")


def tiny_documents(gan: Path, store: Path) -> tuple[dict, dict]:
    """A generator recipe and a training recipe with the same tiny pretrain block; the run uses 2 threads."""
    generator = {"name": "local_gan", "path": str(gan), "pretrain": {**TINY, "source_fraction": 0.05}}
    store_block = {"tracking_uri": f"sqlite:///{store}/mlflow.db", "artifact_root": str(store)}
    gan_recipe = {"name": "tiny_gan", "generator": generator, "tracking": store_block, "runtime": {"device": "cpu"}}
    run_recipe = {
        "name": "tiny_run",
        "data": {"name": "fashion_mnist", "source_fraction": 0.05, "labels_per_class": 1, "batch_size": 8},
        "generator": generator,
        "classifier": {"name": "small_cnn", "width": 8},
        "method": {"name": "generative", "unlabeled_batch_size": 8, "latents": {"bank_size": 16}},
        "schedule": {"iterations": 2, "eval_every": 2, "checkpoint_every": 2, "log_every": 1},
        "tracking": store_block,
        "runtime": {"device": "cpu", "threads": 2},
    }
    return gan_recipe, run_recipe


@pytest.mark.slow
def test_one_recipe_gives_one_generator_whichever_path_trains_it(fashion_mnist: None, tmp_path: Path) -> None:
    """`metassl pretrain` and first use inside `metassl run` (2 run threads) give bit-identical weights."""
    gan_recipe, _ = tiny_documents(tmp_path / "pretrained", tmp_path / "mlruns")
    _, run_recipe = tiny_documents(tmp_path / "first_use", tmp_path / "mlruns")
    (tmp_path / "gan.yaml").write_text(yaml.safe_dump(gan_recipe))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run_recipe))

    pretrained = metassl("pretrain", str(tmp_path / "gan.yaml"))
    assert pretrained.returncode == 0, pretrained.stderr
    assert "generator saved to" in pretrained.stdout
    first_use = metassl("run", str(tmp_path / "run.yaml"))
    assert first_use.returncode == 0, first_use.stderr

    weights = "diffusion_pytorch_model.safetensors"
    assert (tmp_path / "pretrained" / weights).read_bytes() == (tmp_path / "first_use" / weights).read_bytes()
    # Piped output shows the pretraining stage: a start line, then iterations with losses and an ETA.
    for result in (pretrained, first_use):
        assert re.search(
            r"^pretrain 3/3  loss_d [0-9.]+  loss_g -?[0-9.]+  elapsed \S+  ETA 0:00:00$", result.stderr, re.M
        )
    assert "no generator at" in first_use.stderr
    # Pretraining runs have their own experiment; the training run links to the one that made its generator.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(run_recipe["tracking"]["tracking_uri"])
    (trained,) = client.search_runs([client.get_experiment_by_name("metassl").experiment_id])
    pretraining = client.get_experiment_by_name("metassl-pretraining").experiment_id
    (maker,) = client.search_runs([pretraining], f"tags.`{GENERATOR_PATH_TAG}` = '{tmp_path / 'first_use'}'")
    assert trained.data.tags[GENERATOR_RUN_TAG] == maker.info.run_id
    assert first_use.stderr.index("pretrain 3/3") < first_use.stderr.index("test accuracy")

    again = metassl("pretrain", str(tmp_path / "gan.yaml"))
    assert again.returncode == 0 and "already at" in again.stdout, again.stderr
