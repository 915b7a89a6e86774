"""Dataset inputs logged by runs that start together: MLflow looks a dataset up, then inserts it, so two runs of one
experiment logging the same test split at once race for its unique key. Real MLflow on a real SQLite store."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import torch
from mlflow.tracking import MlflowClient

from runner.data.types import ImageSet
from runner.run.lineage import log_datasets

RUNS = 6
ROUNDS = 8


def images(round_index: int) -> ImageSet:
    generator = torch.Generator().manual_seed(round_index)  # a new digest each round: every round inserts anew
    return ImageSet(torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8, generator=generator), torch.arange(4))


def test_runs_logging_one_dataset_at_once_all_succeed_and_share_it(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    setup = MlflowClient(uri)
    experiment = setup.create_experiment("race", artifact_location=str(tmp_path / "artifacts"))
    failures: list[BaseException] = []
    for round_index in range(ROUNDS):
        shared = images(round_index)
        data = SimpleNamespace(labeled=shared, validation=None, unlabeled=None, test=shared)
        run_ids = [setup.create_run(experiment).info.run_id for _ in range(RUNS)]
        barrier = threading.Barrier(RUNS)

        def log(run_id: str, data: SimpleNamespace = data, barrier: threading.Barrier = barrier) -> None:
            client = MlflowClient(uri)
            barrier.wait()
            try:
                log_datasets(client, run_id, data, "digits", seed=0)  # type: ignore[arg-type]
            except BaseException as error:  # collected and asserted below
                failures.append(error)

        threads = [threading.Thread(target=log, args=(run_id,)) for run_id in run_ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        digests = {
            frozenset((i.dataset.name, i.dataset.digest) for i in setup.get_run(run_id).inputs.dataset_inputs)
            for run_id in run_ids
        }
        assert len(digests) == 1 and len(next(iter(digests))) == 2  # every run has both splits, the same rows
