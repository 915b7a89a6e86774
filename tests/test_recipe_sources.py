"""A logged run as a recipe source (`runs:/RUN_ID`) for run, show and validate; `metassl diff`; the CPU record."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from runner.recipe_source import run_id_of
from schemas import UserError, dump_recipe, load_recipe
from tests.helpers import RECIPES, metassl
from tests.servers import Server, mlflow_server, postgres  # noqa: F401 (fixtures)

FINISHED = re.compile(r"run (\w+) finished: test accuracy (\d\.\d+)")


def finished(process: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    assert process.returncode == 0, process.stderr[-3000:]
    match = FINISHED.search(process.stdout)
    assert match, process.stdout[-2000:]
    return match.group(1), match.group(2)


def artifact(store: Path, run_id: str, name: str) -> Path:
    (found,) = store.rglob(f"{run_id}/artifacts/{name}")
    return found


@pytest.mark.parametrize(
    ("source", "run_id"),
    [("runs:/abc123", "abc123"), ("runs:/abc123/", "abc123"), ("runs:abc123", "abc123"), ("recipes/x.yaml", None)],
)
def test_a_run_source_is_recognised(source: str, run_id: str | None):
    assert run_id_of(source) == run_id
    assert run_id_of(Path(source)) == run_id  # as typer hands it over


@pytest.mark.parametrize("source", ["runs:/", "runs:/a/b"])
def test_a_malformed_run_source_is_one_line(source: str):
    with pytest.raises(UserError, match="write a run as runs:/RUN_ID"):
        run_id_of(source)


def test_an_unknown_run_is_one_line(tmp_path: Path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    process = metassl("show", "runs:/0123456789abcdef0123456789abcdef", "--tracking-uri", store)
    assert process.returncode == 2
    assert process.stderr.splitlines() == [
        f"error: run '0123456789abcdef0123456789abcdef' not found in {store}; list runs with `metassl runs` or"
        " open `metassl ui`"
    ]


@pytest.mark.slow
def test_a_logged_run_reruns_to_the_same_accuracy_and_diffs(tmp_path: Path):
    """A recipe with a base runs; its logged recipe is the merged one; `runs:/` re-runs it to the same accuracy;
    `diff` names what differs; the environment records the CPU and the kernels' instruction set."""
    store = tmp_path / "mlruns"
    uri = f"sqlite:///{store}/mlflow.db"
    child = tmp_path / "recipes" / "child.yaml"
    child.parent.mkdir()
    child.write_text(
        f"base: {RECIPES / 'digits_tiny.yaml'}\nname: child\nschedule: {{iterations: 30}}\n"
        f"tracking: {{tracking_uri: '{uri}', artifact_root: '{store}'}}\n"
    )
    first, accuracy = finished(metassl("run", str(child), "-o", "runtime.threads=1"))
    logged = yaml.safe_load(artifact(store, first, "recipe.yaml").read_text())
    assert "base" not in logged and logged["schedule"]["iterations"] == 30
    merged = load_recipe(child, ["runtime.threads=1"])
    assert logged == yaml.safe_load(dump_recipe(merged))

    shown = metassl("show", f"runs:/{first}", "--tracking-uri", uri)
    assert shown.returncode == 0 and yaml.safe_load(shown.stdout) == logged
    checked = metassl("validate", f"runs:/{first}", "--tracking-uri", uri, "-o", "seed=4")
    assert checked.stdout == f"ok: runs:/{first} is a valid recipe (supervised on digits, 30 iterations)\n"

    again, same = finished(metassl("run", f"runs:/{first}", "--tracking-uri", uri))
    assert same == accuracy and again != first
    portable, _ = finished(metassl("run", f"runs:/{first}", "--tracking-uri", uri, "-o", "runtime.cpu_isa=avx2"))

    environment = json.loads(artifact(store, portable, "environment/environment.json").read_text())
    cpu = environment["cpu"]
    assert cpu["torch_capability"] == "AVX2" and cpu["pinned"]["ATEN_CPU_CAPABILITY"] == "avx2"
    assert "avx2" in cpu["vector_extensions"] and cpu["model"]

    same_runs = metassl("diff", f"runs:/{first}", f"runs:/{again}", "--tracking-uri", uri)
    assert same_runs.returncode == 0, same_runs.stderr
    lines = same_runs.stdout.splitlines()
    assert "recipe: the same" in lines
    assert not [line for line in lines if line.startswith(("  cpu.", "  package."))]  # one machine, one install
    (row,) = [line.split() for line in lines if line.startswith("  final/test_accuracy ")]
    assert row[1] == row[2] and f"{float(row[1]):.4f}" == accuracy

    other = metassl("diff", f"runs:/{first}", f"runs:/{portable}", "--tracking-uri", uri)
    assert other.returncode == 0, other.stderr
    assert re.search(r"^  runtime\.cpu_isa\s+native\s+avx2$", other.stdout, re.M)
    assert re.search(r"^  cpu\.pinned\.ATEN_CPU_CAPABILITY\s+-\s+avx2$", other.stdout, re.M)

    against_file = metassl("diff", str(child), f"runs:/{first}", "--tracking-uri", uri)
    assert re.search(r"^  runtime\.threads\s+2\s+1$", against_file.stdout, re.M), against_file.stdout


@pytest.mark.slow
def test_a_run_on_a_server_is_a_recipe_source(mlflow_server: Server, tmp_path: Path):  # noqa: F811
    recipe = load_recipe(RECIPES / "digits_tiny.yaml", [f"tracking.tracking_uri={mlflow_server.uri}"])
    client = MlflowClient(mlflow_server.uri)
    experiment = client.create_experiment("recipe-sources")
    run_id = client.create_run(experiment).info.run_id
    client.log_text(run_id, dump_recipe(recipe), "recipe.yaml")

    shown = metassl("show", f"runs:/{run_id}", "--tracking-uri", mlflow_server.uri, "-o", "seed=9")
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout) == yaml.safe_load(dump_recipe(recipe.model_copy(update={"seed": 9})))
    checked = metassl("validate", f"runs:/{run_id}", "--tracking-uri", mlflow_server.uri)
    assert checked.returncode == 0, checked.stderr

    client.log_text(
        run_id,
        "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
        + "".join(
            f"{level}: &{level} [{', '.join([f'*{below}'] * 10)}]\n"
            for below, level in zip("abcde", "bcdef", strict=True)
        )
        + "name: *f\n",
        "recipe.yaml",
    )  # a shared store is not trusted either
    bomb = metassl("show", f"runs:/{run_id}", "--tracking-uri", mlflow_server.uri)
    assert bomb.returncode == 2
    assert bomb.stderr.startswith(f"error: run {run_id} recipe.yaml: more than 100,000 values after expanding")
