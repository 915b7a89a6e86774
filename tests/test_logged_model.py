"""A run's classifier as an MLflow Model, its datasets as inputs, its system metrics, the UI link: real MLflow
throughout (a SQLite store, `mlflow models serve`, a real `mlflow server`), one trained digits run shared."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from runner.model_export.verify import DATA_DIR
from runner.run.plots import learning_curves_figure
from tests.helpers import RECIPES, ROOT, metassl
from tests.servers import Server, free_port, mlflow_server, postgres  # noqa: F401 (fixtures)

DIGITS = str(RECIPES / "digits_tiny.yaml")
REGISTERED = "digits-tiny"
QUICK = ["-o", "schedule.iterations=2", "-o", "schedule.eval_every=2", "-o", "schedule.checkpoint_every=2"]


def store_of(root: Path) -> list[str]:
    return ["-o", f"tracking.tracking_uri=sqlite:///{root}/mlflow.db", "-o", f"tracking.artifact_root={root}"]


def run_id_of(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return re.findall(r"^run (\w+) finished", result.stdout, re.M)[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(tracking URI, run id) of one digits run: system metrics every second, its model registered."""
    root = tmp_path_factory.mktemp("store")
    overrides = ["-o", "tracking.system_metrics_interval=1", "-o", f"tracking.register_model={REGISTERED}"]
    result = metassl("run", DIGITS, *overrides, *store_of(root))
    return f"sqlite:///{root}/mlflow.db", run_id_of(result)


def python(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`script` in a fresh Python process, as a user of MLflow would run it."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


# The digits test split as a user holds it: uint8 N x H x W x C.
PREDICT = """
import json, sys
import mlflow, numpy as np
from runner.registry import DATASETS
from schemas.data import Digits

mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
test = DATASETS.build(Digits()).test
images = test.images.permute(0, 2, 3, 1).numpy()
as_uint8 = model.predict(images)
as_float = model.predict(images.astype(np.float32) / 255)
labels = test.labels.numpy()
print(json.dumps({
    "accuracy": float((as_uint8["class"] == labels).mean()),
    "classes": as_uint8["class"].tolist(),
    "float_classes": as_float["class"].tolist(),
    "probability_sums": as_uint8["probabilities"].sum(1).tolist(),
}))
"""


def predictions(tracking_uri: str, model_uri: str) -> dict:
    result = python(PREDICT, tracking_uri, model_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_pyfunc_in_a_fresh_process_predicts_what_eval_measures(trained: tuple[str, str]) -> None:
    uri, run_id = trained
    predicted = predictions(uri, f"runs:/{run_id}/model")
    evaluated = metassl("eval", run_id, "--tracking-uri", uri)
    assert evaluated.returncode == 0, evaluated.stderr
    eval_accuracy = float(re.search(r"test accuracy ([0-9.]+)", evaluated.stdout).group(1))
    logged = MlflowClient(uri).get_run(run_id).data.metrics["final/test_accuracy"]
    assert predicted["accuracy"] == pytest.approx(logged, abs=1e-9)
    assert f"{predicted['accuracy']:.4f}" == f"{eval_accuracy:.4f}"
    assert predicted["float_classes"] == predicted["classes"]  # floats in [0, 1] are the same images
    assert np.allclose(predicted["probability_sums"], 1.0, atol=1e-5)
    # The registered version is the same model.
    assert predictions(uri, f"models:/{REGISTERED}/1")["classes"] == predicted["classes"]


@pytest.mark.slow
def test_the_run_shows_its_model_datasets_and_system_metrics(trained: tuple[str, str], tmp_path: Path) -> None:
    uri, run_id = trained
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    (model,) = client.search_logged_models([run.info.experiment_id])
    assert model.source_run_id == run_id and str(model.status) == "READY" and model.name == "model"
    assert {metric.key for metric in model.metrics} >= {"final/test_accuracy", "test/accuracy"}
    assert [output.model_id for output in run.outputs.model_outputs] == [model.model_id]
    (version,) = client.search_model_versions(f"name='{REGISTERED}'")
    assert version.run_id == run_id and version.source == f"models:/{model.model_id}"
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    roles = {inp.dataset.name: inp for inp in run.inputs.dataset_inputs}
    assert set(roles) == {"digits/labeled", "digits/unlabeled", "digits/test"}
    assert [tag.value for tag in roles["digits/labeled"].tags] == ["labeled"]

    # Lineage: the same seed draws the same labels, another seed others; the test split is the same.
    quiet = ["-o", "tracking.system_metrics=false", "-o", "tracking.log_model=false", *QUICK, *store_of(tmp_path)]
    same = run_id_of(metassl("run", DIGITS, *quiet))
    other = run_id_of(metassl("run", DIGITS, "-o", "seed=1", *quiet))
    quick_store = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    digests = {
        run: {inp.dataset.name: inp.dataset.digest for inp in quick_store.get_run(run).inputs.dataset_inputs}
        for run in (same, other)
    }
    ours = {name: inp.dataset.digest for name, inp in roles.items()}
    assert digests[same]["digits/labeled"] == ours["digits/labeled"]
    assert digests[other]["digits/labeled"] != ours["digits/labeled"]
    assert digests[same]["digits/test"] == digests[other]["digits/test"] == ours["digits/test"]
    off = quick_store.get_run(same)
    assert not [key for key in off.data.metrics if key.startswith("system/")]  # tracking.system_metrics=false


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_same_classes(trained: tuple[str, str]) -> None:
    uri, run_id = trained
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{run_id}/model",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        from runner.registry import DATASETS
        from schemas.data import Digits

        images = DATASETS.build(Digits()).test.images[:32].permute(0, 2, 3, 1).numpy()
        body = json.dumps({"inputs": images.tolist()}).encode()
        deadline = time.monotonic() + 300
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=60) as response:
                    answer = json.loads(response.read())
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow models serve did not answer: {server.stdout.read().decode()[-3000:]}")
                time.sleep(1)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
    assert answer["predictions"]["class"] == predictions(uri, f"runs:/{run_id}/model")["classes"][:32]


TAMPERED = """
import sys, mlflow
try:
    mlflow.pyfunc.load_model(sys.argv[1])
except Exception as exc:
    print(type(exc).__name__, exc)
"""


@pytest.mark.slow
def test_a_tampered_model_folder_is_refused_in_one_line_with_nothing_executed(
    trained: tuple[str, str], tmp_path: Path
) -> None:
    uri, run_id = trained
    client = MlflowClient(uri)
    (model,) = client.search_logged_models([client.get_run(run_id).info.experiment_id])
    folder = tmp_path / "model"  # a copy of the folder in the store
    shutil.copytree(model.artifact_location.removeprefix("file://"), folder)
    logged = metassl("check-model", f"runs:/{run_id}/model", "--tracking-uri", uri, cwd=tmp_path)
    assert logged.returncode == 0 and "the tracking store's" in logged.stdout, logged.stderr
    assert not (tmp_path / "mlflow.db").exists()  # no store of MLflow's default URI was opened on the way
    good = metassl("check-model", str(folder), "--tracking-uri", uri)
    assert good.returncode == 0 and "3 data files match MLmodel's record and the tracking store's" in good.stdout

    # 1. Other weights: refused by `check-model` and by MLflow's own load, before safetensors reads them.
    weights = folder / DATA_DIR / "classifier.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-4] + b"\0\0\0\0")
    refused = metassl("check-model", str(folder), "--tracking-uri", uri)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "classifier.safetensors differs" in refused.stderr
    loaded = python(TAMPERED, str(folder))
    assert "TamperedModel" in loaded.stdout and "classifier.safetensors differs" in loaded.stdout, loaded.stderr

    # 2. Other weights with MLmodel's record rewritten to match: the tracking store's record still differs.
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    from runner.model_export.verify import file_digest

    mlmodel["metadata"]["metassl_sha256"]["classifier.safetensors"] = file_digest(weights)
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    forged = metassl("check-model", str(folder), "--tracking-uri", uri)
    assert forged.returncode == 2 and "differs from the tracking store's" in forged.stderr

    # 3. MLmodel pointing at code planted in the folder: refused, and the code never ran.
    weights.write_bytes(original)
    marker = tmp_path / "executed"
    (folder / "code").mkdir()
    (folder / "code" / "planted.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    mlmodel["flavors"]["python_function"].update(loader_module="planted", code="code")
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    redirected = metassl("check-model", str(folder), "--tracking-uri", uri)
    assert redirected.returncode == 2 and len(redirected.stderr.strip().splitlines()) == 1
    assert "names loader 'planted'" in redirected.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_registry_and_ui_link_on_a_real_mlflow_server(mlflow_server: Server, tmp_path: Path) -> None:  # noqa: F811
    on_server = ["-o", f"tracking.tracking_uri={mlflow_server.uri}", "-o", "tracking.experiment=served-models"]
    registered = "served-digits"
    run_id = run_id_of(metassl("run", DIGITS, *QUICK, *on_server, "-o", f"tracking.register_model={registered}"))
    client = MlflowClient(mlflow_server.uri)
    (version,) = client.search_model_versions(f"name='{registered}'")
    assert version.run_id == run_id and version.version == "1"
    served = predictions(mlflow_server.uri, f"models:/{registered}/1")
    assert served["classes"] == predictions(mlflow_server.uri, f"runs:/{run_id}/model")["classes"]

    shown = metassl("ui", "--experiment", "served-models", "--tracking-uri", mlflow_server.uri)
    experiment = client.get_experiment_by_name("served-models").experiment_id
    assert f"{mlflow_server.uri}/#/experiments/{experiment}/runs?workflowType=machine_learning" in shown.stdout
    assert 'click "Model training" at the top left once' in shown.stdout


def test_learning_curves_are_titled_with_the_logged_metric_names() -> None:
    history = {"loss/total": [(1, 2.0), (2, 1.0)], "loss/sup": [(1, 1.5), (2, 0.8)], "test/accuracy": [(2, 0.5)]}
    figure = learning_curves_figure(history)
    assert [axes.get_title() for axes in figure.axes] == ["loss/total, loss/sup", "test/accuracy"]
    assert [line.get_label() for line in figure.axes[0].get_lines()] == ["loss/total", "loss/sup"]
