"""A study's or a sweep's name stands for its content, and a storage URL is checked before anything is created.

Against a real PostgreSQL (tests/servers.py); the commands run as a user runs them, in subprocesses.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from runner.studies.admit import CONTENT_TAG, check_storage_url
from schemas import UserError
from tests.helpers import RECIPES, metassl, tracking_overrides
from tests.servers import create_database, free_port, postgres  # noqa: F401 (fixture)

DIGITS = str(RECIPES / "digits_tiny.yaml")
SPACE = str(RECIPES / "spaces" / "digits_tiny.yaml")
HOLDOUT = ["-o", "data.validation.source=holdout", "-o", "data.validation.per_class=10"]
FAST = ["-o", "runtime.threads=1", "-o", "schedule.iterations=20", "-o", "schedule.eval_every=10"]
SCHEMES = "use sqlite:///path/to/optuna.db, postgresql://user:password@host:port/database"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://u:secret@127.0.0.1:notaport/db", "its port is not a number"),
        ("postgresql//u@127.0.0.1/db", "not a database URL"),
        ("not a url", "not a database URL"),
        ("mysql://u@127.0.0.1/db", "mysql is not supported"),
        ("sqlite://", "names no database file"),
        ("postgresql://u@127.0.0.1", "names no host or no database"),
    ],
)
def test_a_malformed_storage_url_is_one_line_naming_the_schemes(url: str, reason: str):
    with pytest.raises(UserError) as caught:
        check_storage_url(url)
    message = str(caught.value)
    assert reason in message and SCHEMES in message
    assert "secret" not in message


@pytest.mark.slow
def test_tune_and_sweep_refuse_a_bad_storage_or_a_silent_server_before_creating_anything(tmp_path: Path):
    bad = metassl("tune", DIGITS, "--space", SPACE, *HOLDOUT, "--storage", "postgresql://u@127.0.0.1:notaport/db")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"error: --storage postgresql://u@127.0.0.1:notaport/db: its port is not a number; {SCHEMES}"
        " (or postgresql+psycopg2://)"
    ]
    bad = metassl("sweep", DIGITS, "--grid", "seed=0,1", "--storage", "mysql://u@127.0.0.1/db")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "mysql is not supported" in bad.stderr

    # A tracking server that does not answer: one line, and no Optuna study is left behind.
    storage = f"sqlite:///{tmp_path}/optuna.db"
    silent = ["-o", f"tracking.tracking_uri=http://127.0.0.1:{free_port()}"]
    result = metassl("tune", DIGITS, "--space", SPACE, *HOLDOUT, *silent, "--storage", storage, "--name", "lonely")
    assert result.returncode == 2
    assert result.stderr.startswith("error: tracking.tracking_uri: no MLflow server answers at")
    assert not optuna.get_all_study_summaries(storage)


@pytest.mark.slow
def test_two_tunes_under_one_name_with_different_spaces(postgres: str, tmp_path: Path):  # noqa: F811
    storage = create_database(postgres, "optuna_tune_names")
    command = ["tune", DIGITS, *HOLDOUT, *FAST, *tracking_overrides(tmp_path), "--storage", storage]
    command += ["--name", "clash", "--trials", "1"]
    first = metassl(*command, "--space", SPACE)
    assert first.returncode == 0, first.stderr[-3000:]
    narrower = tmp_path / "space.yaml"
    only_lr = {"optim.classifier.lr": {"type": "float", "low": 0.01, "high": 0.1}}
    narrower.write_text(yaml.safe_dump({"parameters": only_lr}))
    second = metassl(*command, "--space", str(narrower))
    assert second.returncode == 2
    [line] = second.stderr.strip().splitlines()
    assert line.startswith("error: --name clash: the study 'clash' in postgresql+psycopg2://postgres@127.0.0.1:")
    study = optuna.load_study(study_name="clash", storage=storage)
    held = study.user_attrs[CONTENT_TAG]
    assert f"(content {held}); this command's content is " in line
    assert line.split("this command's content is ")[1].split(";")[0] != held
    assert len(study.trials) == 1  # the refused worker added nothing
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    [parent] = client.search_runs(
        [client.get_experiment_by_name("metassl").experiment_id], "tags.`metassl.sweep.role` = 'parent'"
    )
    assert parent.data.tags[CONTENT_TAG] == held


@pytest.mark.slow
def test_three_sweeps_under_one_name_with_different_grids(postgres: str, tmp_path: Path):  # noqa: F811
    storage = create_database(postgres, "optuna_sweep_names")
    command = ["sweep", DIGITS, *FAST, *tracking_overrides(tmp_path), "--storage", storage, "--name", "grid-clash"]
    first = metassl(*command, "--grid", "seed=0")
    assert first.returncode == 0, first.stderr[-3000:]
    for grid in ("seed=1", "seed=0,1"):
        refused = metassl(*command, "--grid", grid)
        assert refused.returncode == 2, refused.stderr[-3000:]
        [line] = refused.stderr.strip().splitlines()
        assert line.startswith("error: --name grid-clash: the sweep 'grid-clash' in ")
        assert "this command's content is" in line
    again = metassl(*command, "--grid", "seed=0")  # the same content is the same sweep: nothing left to run
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished, skipped" in again.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("metassl").experiment_id])
    parents = [run for run in runs if run.data.tags.get("metassl.sweep.role") == "parent"]
    assert len(parents) == 1 and CONTENT_TAG in parents[0].data.tags
    assert len(runs) == 2  # one parent, one child: no grid point trained twice
