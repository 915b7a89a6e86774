"""A `metassl` method run (warm-up, then a meta phase every other iteration), and a run of each real-data method with
a stateful confidence policy, killed and resumed through the real CLI and loop, end with exactly the metrics of an
uninterrupted run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from runner.run.checkpoint import load_checkpoint
from tests.helpers import kill_after_first_checkpoint, metassl, result_metrics, tracking_overrides
from tests.method_toys import store_client, write_tiny_metassl_recipe

pytestmark = pytest.mark.slow

ITERATIONS = 24
WARMUP = 3  # the tiny recipe's


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_metassl_recipe(tmp_path_factory.mktemp("metassl_resume"), "metassl_resume", batch_size=16)


def run_id_of(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1].split()[1]


def test_killed_metassl_run_resumes_to_the_same_final_metrics(recipe: Path, tmp_path: Path) -> None:
    reference_store = tmp_path / "reference"
    uninterrupted = run_id_of(metassl("run", str(recipe), *tracking_overrides(reference_store)))
    expected = result_metrics(store_client(reference_store), uninterrupted)
    assert {"meta/loss", "loss/unsup", "final/test_accuracy"} <= expected.keys()  # the meta and SSL phases ran

    store = tmp_path / "killed"
    checkpoint = kill_after_first_checkpoint(store, "run", str(recipe), *tracking_overrides(store))
    killed = checkpoint.parents[2].name
    client = store_client(store)
    assert client.get_run(killed).info.status == "RUNNING"  # killed mid-run, not finished
    stopped_at = load_checkpoint(checkpoint)["iteration"]  # type: ignore[index]
    assert WARMUP < stopped_at < ITERATIONS  # after meta-steps and cached renders

    resumed = metassl("run", "--resume", str(recipe), *tracking_overrides(store))
    assert run_id_of(resumed) == killed
    assert f"resuming run {killed} at iteration {stopped_at}" in resumed.stderr
    assert client.get_run(killed).info.status == "FINISHED"
    assert result_metrics(client, killed) == expected


@pytest.mark.parametrize("method", ["flexmatch", "freematch", "softmatch"])
def test_killed_real_data_ssl_run_resumes_its_confidence_policy_exactly(method: str, tmp_path: Path) -> None:
    """The policy's state (per-image records, EMAs) is in the checkpoint: the resumed run weighs as the uninterrupted
    one did, so every logged metric, the policy's own among them, ends the same."""
    document = {
        "name": f"{method}_resume",
        "data": {"name": "digits", "labels_per_class": 4, "batch_size": 16},
        "classifier": {"name": "small_cnn", "width": 8},
        "method": {"name": method, "unlabeled_batch_size": 16, "lambda_u": 1.0},
        "schedule": {"iterations": 16, "eval_every": 8, "checkpoint_every": 4, "log_every": 2},
        "runtime": {"device": "cpu", "threads": 1},
    }
    if method == "flexmatch":
        document["method"]["threshold"] = 0.12  # so that images have records early: 10 classes, an untrained model
    recipe = tmp_path / f"{method}_resume.yaml"
    recipe.write_text(yaml.safe_dump(document))

    reference_store = tmp_path / "reference"
    uninterrupted = run_id_of(metassl("run", str(recipe), *tracking_overrides(reference_store)))
    expected = result_metrics(store_client(reference_store), uninterrupted)
    assert {"loss/unsup", "unsup/mask_rate", "final/test_accuracy"} <= expected.keys()

    store = tmp_path / "killed"
    checkpoint = kill_after_first_checkpoint(store, "run", str(recipe), *tracking_overrides(store))
    killed = checkpoint.parents[2].name
    saved = load_checkpoint(checkpoint)
    assert saved["iteration"] < 16  # type: ignore[index]
    policy = saved["method"]["policy"]  # type: ignore[index]
    learned = {  # the state at the kill is not the initial one, so a resume that lost it would show
        "flexmatch": lambda: bool((policy["selected"] >= 0).any()),
        "freematch": lambda: float(policy["global_threshold"]) != 0.1,
        "softmatch": lambda: int(policy["aligned_batches"]) > 0,
    }
    assert learned[method]()
    resumed = metassl("run", "--resume", str(recipe), *tracking_overrides(store))
    assert run_id_of(resumed) == killed
    assert result_metrics(store_client(store), killed) == expected
