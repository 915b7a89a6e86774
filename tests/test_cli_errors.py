"""Bad input gets one precise line on stderr, exit code 2, no traceback, and no run left RUNNING."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.helpers import RECIPES, ROOT, metassl, tracking_overrides

DIGITS = str(RECIPES / "digits_tiny.yaml")


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def run_statuses(store: Path) -> list[str]:
    database = store / "mlruns" / "mlflow.db"
    if not database.exists():
        return []
    with sqlite3.connect(database) as connection:
        return [row[0] for row in connection.execute("select status from runs")]


def test_nonexistent_recipe_path(tmp_path: Path):
    result = metassl("validate", str(tmp_path / "nope.yaml"))
    assert_one_line_error(result, "recipe file not found", "nope.yaml")


def test_malformed_yaml(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\ndata: [digits\n")
    assert_one_line_error(metassl("run", str(path)), "malformed YAML at line")


def test_wrong_type(tmp_path: Path):
    result = metassl("run", DIGITS, "-o", "schedule.iterations=lots", *tracking_overrides(tmp_path))
    assert_one_line_error(result, "schedule.iterations", "valid integer", "'lots'")
    assert run_statuses(tmp_path) == []


def test_unknown_component_name(tmp_path: Path):
    result = metassl("validate", DIGITS, "-o", "classifier.name=resnet81")
    assert_one_line_error(result, "classifier.name: unknown classifier 'resnet81'", "did you mean 'resnet18'?")


def test_missing_dataset_with_downloads_off_leaves_no_run(tmp_path: Path):
    missing = tmp_path / "no_data_here"
    missing.mkdir()
    result = metassl(
        "run", DIGITS, "-o", "data.name=fashion_mnist", "-o", f"data.root={missing}", *tracking_overrides(tmp_path)
    )
    assert_one_line_error(result, "data.root", "data.download")
    assert run_statuses(tmp_path) == []


def test_bad_override_syntax():
    assert_one_line_error(metassl("validate", DIGITS, "-o", "seed"), "key.path=value")


def test_resume_unknown_run(tmp_path: Path):
    store = tmp_path / "mlruns"
    result = metassl("run", "--resume", "0123456789abcdef", "--tracking-uri", f"sqlite:///{store}/mlflow.db")
    assert_one_line_error(result, "run '0123456789abcdef' not found")


def test_list_unknown_kind():
    assert_one_line_error(metassl("list", "widgets"), "unknown kind 'widgets'")


@pytest.mark.parametrize("command", ["run", "validate", "show", "schema", "list", "ui", "eval", "pretrain"])
def test_every_command_has_help(command: str):
    result = metassl(command, "--help")
    assert result.returncode == 0
    assert "Usage" in result.stdout and len(result.stdout.splitlines()) > 5


def test_validate_does_no_torch_work():
    code = (
        "import sys; from typer.testing import CliRunner; from runner.cli import app; "
        f"r = CliRunner().invoke(app, ['validate', {DIGITS!r}]); "
        "print(r.exit_code, 'torch' in sys.modules)"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "False"]


def test_runs_imports_no_torch(tmp_path: Path):
    code = (
        "import sys; from typer.testing import CliRunner; from runner.cli import app; "
        f"r = CliRunner().invoke(app, ['runs', '--tracking-uri', 'sqlite:///{tmp_path}/mlflow.db']); "
        "print(r.exit_code, 'torch' in sys.modules)"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["0", "False"]


def test_show_prints_the_resolved_recipe():
    result = metassl("show", DIGITS, "-o", "seed=5")
    assert result.returncode == 0
    assert "seed: 5" in result.stdout and "tracking_uri: sqlite:///mlruns/mlflow.db" in result.stdout


def test_schema_is_json(tmp_path: Path):
    import json

    target = tmp_path / "schema.json"
    assert metassl("schema", "--output", str(target)).returncode == 0
    assert json.loads(target.read_text())["title"] == "Recipe"
