"""Spreading a sweep's or a study's children over a node's devices: slots of --nproc devices, never shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.studies.launch import Devices, parse_devices, plan_devices, run_command
from schemas import UserError


def test_children_get_disjoint_sets_of_nproc_devices_and_give_them_back():
    devices = plan_devices("0,1,2,3", jobs=2, nproc=2)
    first, second = devices.take(), devices.take()
    assert first == ["0", "1"] and second == ["2", "3"]
    assert devices.take() is None  # every device is held
    devices.give_back(first)
    assert devices.take() == ["0", "1"]  # a child that ended frees its devices for the next


def test_one_device_per_child_by_default_and_a_device_listed_twice_is_two_slots():
    devices = plan_devices("0,0,1", jobs=3, nproc=1)
    assert [devices.take(), devices.take(), devices.take(), devices.take()] == [["0"], ["0"], ["1"], None]


def test_without_devices_children_get_no_assignment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    devices = plan_devices(None, jobs=4, nproc=1)
    assert devices.devices is None and devices.take() == [] and devices.take() == []


def test_the_default_is_the_devices_this_process_may_use(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert plan_devices(None, jobs=2, nproc=1).devices == ["2", "3"]


@pytest.mark.parametrize(
    ("option", "jobs", "nproc", "fragment"),
    [
        ("0,,1", 1, 1, "give device ids separated by commas"),
        ("", 1, 1, "give device ids separated by commas"),
        ("0,1", 3, 1, "--jobs 3: only 2 children fit"),
        ("0,1,2", 2, 2, "--jobs 2: only 1 children fit"),
        ("0", 1, 2, "--nproc 2: each child needs 2 devices"),
    ],
)
def test_devices_that_cannot_hold_the_children_are_refused(option: str, jobs: int, nproc: int, fragment: str):
    with pytest.raises(UserError, match=fragment.replace("-", r"\-")):
        plan_devices(option, jobs, nproc)


def test_a_multi_process_child_is_asked_for_its_processes():
    assert run_command(Path("r.yaml"), ["seed=1"], 2)[-4:] == ["-o", "seed=1", "--nproc", "2"]
    assert "--nproc" not in run_command(Path("r.yaml"), [], 1)
    assert parse_devices(" 0, 1 ") == ["0", "1"]
    assert Devices(["0", "1"], 2).slots == 1


def test_too_many_jobs_for_the_devices_is_one_line_exit_2_and_creates_nothing(tmp_path: Path):
    from tests.helpers import RECIPES, metassl, tracking_overrides

    command = ["sweep", str(RECIPES / "digits_tiny.yaml"), "--grid", "seed=0,1,2", *tracking_overrides(tmp_path)]
    result = metassl(*command, "--jobs", "3", "--devices", "0,1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --jobs 3: only 2 children fit on the devices 0,1 at 1 each; lower --jobs, or list a device twice "
        "to share it (e.g. --devices 0,0,1,1)"
    ]
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()
