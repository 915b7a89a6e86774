"""Where pretraining runs go (their own experiment, so a training experiment charts training alone) and how a
training run links to the pretraining run that made its generator."""

from __future__ import annotations

from schemas.generators import GeneratorBase
from schemas.training import Tracking

PRETRAINING_SUFFIX = "-pretraining"
GENERATOR_PATH_TAG = "metassl.generator_path"  # on a pretraining run: the folder it saved the generator to
GENERATOR_RUN_TAG = "metassl.generator_run"  # on a training run: the pretraining run of its generator


def pretraining_tracking(tracking: Tracking) -> Tracking:
    """The same store, in the experiment `<experiment>-pretraining`."""
    return tracking.model_copy(update={"experiment": f"{tracking.experiment}{PRETRAINING_SUFFIX}"})


def generator_link_tags(config: GeneratorBase, tracking: Tracking) -> dict[str, str]:
    """Tags linking a training run to the newest finished pretraining run of its generator (none if not found)."""
    from runner.tracking import client_for, runs_with_tag

    folder = config.pretrained_here()
    if folder is None:
        return {}
    pretraining = pretraining_tracking(tracking)
    runs = [run for run in runs_with_tag(pretraining, GENERATOR_PATH_TAG, str(folder)) if run.info.status == "FINISHED"]
    if not runs:
        return {}
    run = runs[0]
    name = run.info.run_name or run.info.run_id
    experiment = client_for(pretraining).get_experiment(run.info.experiment_id).experiment_id
    link = f"#/experiments/{experiment}/runs/{run.info.run_id}"
    return {GENERATOR_RUN_TAG: run.info.run_id, "mlflow.note.content": f"Generator: pretraining run [{name}]({link})"}
