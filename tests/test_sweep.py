"""`metassl sweep`: grid expansion, nested child runs, skipping finished children, failed children recorded."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from runner.studies.launch import error_line
from runner.studies.sweep_grid import as_overrides, child_key, expand, parse_grid, sweep_identity
from schemas import UserError
from tests.helpers import RECIPES, devices_in_progress, devices_of, metassl, tracking_overrides

DIGITS = str(RECIPES / "digits_tiny.yaml")
# labels_per_class=500 exceeds digits' ~131 train images per class: those children are invalid (caught before they
# start) and recorded FAILED, without an MLflow run, while the sweep goes on.
GRID = ["--grid", "seed=0,1", "--grid", "data.labels_per_class=1,500"]
FAST = ["-o", "schedule.iterations=20", "-o", "schedule.eval_every=20", "-o", "runtime.threads=1"]
PARENT_TAG = "mlflow.parentRunId"


def test_grid_is_the_cross_product_with_yaml_values():
    grid = parse_grid(["seed=0,1,2", "method.name=supervised,fixmatch", "x=0.5,true,null,'1',[1,2]"])
    assert grid == {"seed": [0, 1, 2], "method.name": ["supervised", "fixmatch"], "x": [0.5, True, None, "1", [1, 2]]}
    children = expand(grid)
    assert len(children) == 3 * 2 * 5
    assert children[0] == {"seed": 0, "method.name": "supervised", "x": 0.5}
    assert children[1] == {"seed": 0, "method.name": "supervised", "x": True}
    assert len({child_key(child) for child in children}) == len(children)


def test_child_overrides_parse_back_to_the_same_values():
    child = {"seed": 1, "x": "1", "y": [1, 2], "z": None, "method.name": "fixmatch"}
    assert as_overrides(child) == ["seed=1", "x='1'", "y=[1, 2]", "z=null", "method.name=fixmatch"]
    assert parse_grid(as_overrides(child)) == {key: [value] for key, value in child.items()}
    assert child_key(child) == "method.name=fixmatch seed=1 x='1' y=[1, 2] z=null"  # sorted by key


def test_sweep_identity_ignores_grid_key_order_but_not_values():
    recipe = {"name": "r", "seed": 0}
    a = sweep_identity(recipe, parse_grid(["seed=0,1", "data.labels_per_class=1,4"]))
    b = sweep_identity(recipe, parse_grid(["data.labels_per_class=1,4", "seed=0,1"]))
    c = sweep_identity(recipe, parse_grid(["data.labels_per_class=1,4", "seed=0,2"]))
    assert a == b != c
    assert sweep_identity({"name": "other", "seed": 0}, parse_grid(["seed=0,1"])) != sweep_identity(
        recipe, parse_grid(["seed=0,1"])
    )


@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        ("seed", "write it as key.path=v1,v2"),
        ("=1,2", "write it as key.path=v1,v2"),
        ("seed=", "empty value"),
        ("seed=0,,1", "empty value"),
        ("data..x=1", "not a key path"),
        ("seed=[1,2", "not valid YAML"),
        ("seed=1,1", "repeated"),
    ],
)
def test_bad_grid_syntax_is_a_user_error(option: str, fragment: str):
    with pytest.raises(UserError, match=fragment.replace(".", r"\.").replace("[", r"\[")):
        parse_grid([option])


def test_a_key_given_twice_is_a_user_error():
    with pytest.raises(UserError, match="given twice"):
        parse_grid(["seed=0", "seed=1"])


def test_error_line_names_the_signal_or_the_error():
    assert error_line(-9, "") == "killed by SIGKILL (out of memory?)"
    assert error_line(2, "progress\nerror: data.labels_per_class: too many\n") == "data.labels_per_class: too many"
    assert error_line(1, "Traceback ...\nRuntimeError: boom\n") == "RuntimeError: boom"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--grid", "seed"], "write it as key.path=v1,v2"),
        ([], "at least one --grid"),
        (["--grid", "tracking.experiment=a,b"], "one store"),
        (["--grid", "seed=0,1", "-o", "seed=3"], "also given with -o"),
        (["--grid", "sed=0,1"], "no child of the sweep is a valid recipe"),
    ],
)
def test_bad_sweep_is_one_line_exit_2_and_creates_nothing(tmp_path: Path, args: list[str], fragment: str):
    result = metassl("sweep", DIGITS, *args, *tracking_overrides(tmp_path))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def client_for(store: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{store / 'mlruns'}/mlflow.db")


def all_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("metassl")
    return client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    store = tmp_path_factory.mktemp("sweep")
    result = metassl("sweep", DIGITS, *GRID, *FAST, *tracking_overrides(store), "--jobs", "2", "--devices", "0,1")
    return store, result


def test_sweep_nests_children_under_one_parent_and_records_the_failed_ones(sweep):
    store, result = sweep
    assert result.returncode == 1, result.stderr[-3000:]  # two children failed; the sweep still finished the rest
    assert "2 of 4 children failed (2 finished, 2 failed, 0 held by other workers)" in result.stderr
    client = client_for(store)
    runs = all_runs(client)
    parents = [run for run in runs if PARENT_TAG not in run.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FAILED"
    assert parent.data.params["grid.seed"] == "0,1"
    assert parent.data.params["grid.data.labels_per_class"] == "1,500"
    children = [run for run in runs if run.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(children) == 2 == len(runs) - 1
    assert {run.data.tags["metassl.sweep.child"] for run in children} == {
        "data.labels_per_class=1 seed=0",
        "data.labels_per_class=1 seed=1",
    }
    assert all(run.info.status == "FINISHED" for run in children)
    assert {run.data.params["seed"] for run in children} == {"0", "1"}
    assert all(run.data.params["schedule.iterations"] == "20" for run in children)

    artifacts = Path(parent.info.artifact_uri.removeprefix("file://"))
    summary = json.loads((artifacts / "sweep" / "children.json").read_text())
    failed = [child for child in summary if child["status"] == "FAILED"]
    assert [child["overrides"] for child in failed] == [
        "data.labels_per_class=500 seed=0",
        "data.labels_per_class=500 seed=1",
    ]
    assert all("data.labels_per_class" in child["error"] and child["run_id"] is None for child in failed)
    assert (artifacts / "sweep" / "base_recipe.yaml").exists()
    assert parent.data.metrics["sweep/failed"] == 2 and parent.data.metrics["sweep/finished"] == 2
    assert "FAILED" in result.stdout and "FINISHED" in result.stdout  # the summary table


def test_each_live_child_has_its_own_device(sweep):
    store, result = sweep
    shown = devices_in_progress(result.stderr)  # two children at once, on different devices
    client = client_for(store)
    children = [run for run in all_runs(client) if PARENT_TAG in run.data.tags]
    recorded = [devices_of(client, run.info.run_id) for run in children]  # what each child's process saw
    assert sorted(recorded) == sorted(shown.values()) == ["0", "1"]


def test_reinvoking_the_sweep_skips_finished_children(sweep):
    store, _ = sweep
    client = client_for(store)
    before = {run.info.run_id for run in all_runs(client)}
    again = metassl("sweep", DIGITS, *GRID, *FAST, *tracking_overrides(store))
    assert again.returncode == 1, again.stderr[-3000:]  # the 500-label children fail again
    assert again.stderr.count("already finished, skipped") == 2
    assert {run.info.run_id for run in all_runs(client)} == before  # same parent, no new child run
