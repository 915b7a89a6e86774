"""One run over two processes started by torchrun, as a user starts it (gloo on the CPU): it ends as one MLflow run
with one latent bank; SIGTERM to torchrun saves it, and `--resume` continues it exactly; two "nodes" on one machine
finish one run; a rank killed under `--max-restarts 1` is restarted into the same run, each metric step logged once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import RECIPES, ROOT, metassl, result_metrics, tracking_overrides
from tests.method_toys import store_client, write_tiny_metassl_recipe

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_metassl_recipe(tmp_path_factory.mktemp("torchrun"), "metassl_torchrun", batch_size=8)


def only_run(store: Path):  # type: ignore[no-untyped-def]
    runs = store_client(store).search_runs(experiment_ids=["1", "0"], max_results=10)
    assert len(runs) == 1, [run.info.run_id for run in runs]
    return runs[0]


def start(command: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(store: Path, process: subprocess.Popen[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not list((store / "mlruns").rglob("checkpoints/last.pt")):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def two_rank_run(recipe: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An uninterrupted 2-process run, started as a user would: `metassl run RECIPE --nproc 2`."""
    store = tmp_path_factory.mktemp("uninterrupted")
    result = metassl("run", str(recipe), "--nproc", "2", *tracking_overrides(store), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return store, result.stdout.strip().splitlines()[-1].split()[1]


def test_two_ranks_finish_one_run_with_one_latent_bank(two_rank_run: tuple[Path, str]) -> None:
    store, run_id = two_rank_run
    run = only_run(store)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.params["distributed.world_size"] == "2" and run.data.tags["metassl.world_size"] == "2"
    assert run.data.params["distributed.global_batch_size"] == "16"  # 8 per rank
    assert run.data.tags["metassl.replicas_identical"] == "true"  # weights and latent bank, bit for bit
    assert {"meta/loss", "loss/unsup", "final/test_accuracy"} <= run.data.metrics.keys()


def test_sigterm_to_torchrun_saves_the_run_and_resume_continues_it_exactly(
    recipe: Path, two_rank_run: tuple[Path, str], tmp_path: Path
) -> None:
    process = start(
        [sys.executable, "-m", "runner.cli", "run", str(recipe), "--nproc", "2", *tracking_overrides(tmp_path)]
    )
    wait_for_checkpoint(tmp_path, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-3000:]
    run = only_run(tmp_path)
    assert run.info.status == "KILLED"
    assert f"metassl run --resume {run.info.run_id} --nproc 2" in stderr

    uri = f"sqlite:///{tmp_path / 'mlruns'}/mlflow.db"
    refused = metassl("run", "--resume", run.info.run_id, "--tracking-uri", uri, timeout=600)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "written by 2 process(es)" in refused.stderr

    resumed = metassl("run", "--resume", run.info.run_id, "--nproc", "2", "--tracking-uri", uri, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert only_run(tmp_path).info.status == "FINISHED"
    reference_store, reference_id = two_rank_run
    reference = result_metrics(store_client(reference_store), reference_id)
    assert result_metrics(store_client(tmp_path), run.info.run_id) == reference


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_on_one_machine_finish_one_run(tmp_path: Path) -> None:
    rendezvous = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
    rendezvous += ["--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "two-nodes"]
    run = ["-m", "runner.cli", "run", str(RECIPES / "digits_tiny.yaml"), *tracking_overrides(tmp_path)]
    run += ["-o", "schedule.iterations=10", "-o", "schedule.eval_every=5", "-o", "runtime.threads=1"]
    nodes = [start([*TORCHRUN, *rendezvous, *run]) for _ in range(2)]
    for node in nodes:
        _, stderr = node.communicate(timeout=900)
        assert node.returncode == 0, stderr[-3000:]
    run_info = only_run(tmp_path)
    assert run_info.info.status == "FINISHED" and run_info.data.params["distributed.world_size"] == "2"


def worker_pid(agent: int, rank: int) -> int:
    """The pid of torchrun's worker process of `rank` (a child of the agent, RANK in its environment)."""
    children = [
        int(pid) for task in Path(f"/proc/{agent}/task").iterdir() for pid in (task / "children").read_text().split()
    ]
    for child in children:
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return child
    raise AssertionError(f"no worker of rank {rank} under pid {agent}")


def test_a_killed_rank_is_restarted_into_the_same_run(
    recipe: Path, two_rank_run: tuple[Path, str], tmp_path: Path
) -> None:
    command = [*TORCHRUN, "--nproc-per-node", "2", "--max-restarts", "1"]
    process = start([*command, "-m", "runner.cli", "run", str(recipe), *tracking_overrides(tmp_path)])
    wait_for_checkpoint(tmp_path, process)
    os.kill(worker_pid(process.pid, 1), signal.SIGKILL)
    _, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]
    assert "torchrun restarted the workers: continuing run" in stderr  # the restart happened, into the old run
    run = only_run(tmp_path)
    assert run.info.status == "FINISHED"
    client = store_client(tmp_path)
    for key in run.data.metrics:
        steps = [point.step for point in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {sorted(steps)}"
    reference_store, reference_id = two_rank_run
    reference = result_metrics(store_client(reference_store), reference_id)
    assert result_metrics(store_client(tmp_path), run.info.run_id) == reference
