"""`metassl report PARENT_RUN_ID` for a study: the best trials, parameter importances, the optimization history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner.studies.publish import publish
from runner.studies.tune import OBJECTIVE, STORAGE_TAG, STUDY_TAG, open_storage
from runner.tracking import MlflowTracker
from schemas import UserError
from schemas.training import Tracking

TOP = 5


def is_study_parent(run: Any) -> bool:
    return STUDY_TAG in run.data.tags and "mlflow.parentRunId" not in run.data.tags


def _load_study(run: Any, storage: str | None) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage or run.data.tags.get(STORAGE_TAG, "")
    if "***" in url or not url:
        raise UserError(f"run {run.info.run_id}: give the study's database with --storage (its password is not logged)")
    try:
        return optuna.load_study(study_name=run.data.tags[STUDY_TAG], storage=open_storage(url))
    except KeyError:
        raise UserError(f"--storage: no study '{run.data.tags[STUDY_TAG]}' in that database") from None


def _importances(study: Any) -> dict[str, float]:
    import optuna

    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # fewer than two complete trials, or a parameter that never varied
        return {}


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value, default=str)


def _shown_value(trial: Any) -> float | None:
    """A complete trial's value, or the last validation accuracy a pruned one reported."""
    if trial.value is not None:
        return trial.value
    return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None


def history_figure(study: Any, title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    fig, axes = plt.subplots(figsize=(6.0, 3.6))
    for state, marker, label in ((TrialState.COMPLETE, "o", "complete"), (TrialState.PRUNED, "x", "pruned")):
        trials = [t for t in study.get_trials(deepcopy=False) if t.state == state]
        points = [(t.number, _shown_value(t)) for t in trials if _shown_value(t) is not None]
        axes.scatter([n for n, _ in points], [v for _, v in points], marker=marker, label=label)
    best, xs, ys = None, [], []
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if trial.state == TrialState.COMPLETE:
            best = trial.value if best is None else max(best, trial.value)
        if best is not None:
            xs.append(trial.number)
            ys.append(best)
    axes.step(xs, ys, where="post", color="black", label="best so far")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("trial")
    axes.set_ylabel(OBJECTIVE)
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def study_report(run: Any, tracking: Tracking, storage: str | None, output: Path | None) -> str:
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    study = _load_study(run, storage)
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    if not complete:
        raise UserError(f"study {study.study_name}: no complete trial yet")
    keys = sorted(complete[0].params)
    lines = [
        f"study {study.study_name} (parent run {run.info.run_id}): "
        + ", ".join(f"{n} {state}" for state, n in counts.items() if n),
        "",
        f"| trial | {OBJECTIVE} | " + " | ".join(keys) + " | run |",
        "| ---: | ---: | " + " | ".join("---" for _ in keys) + " | --- |",
    ]
    for trial in complete[:TOP]:
        cells = [_cell(trial.params.get(key)) for key in keys]
        lines.append(
            f"| {trial.number} | {trial.value:.4f} | "
            + " | ".join(cells)
            + f" | {trial.user_attrs.get('run_id', '-')} |"
        )
    importances = _importances(study)
    lines += [
        "",
        "parameter importances (fANOVA): "
        + (
            ", ".join(f"{key} {value:.2f}" for key, value in importances.items())
            if importances
            else "n/a (too few trials)"
        ),
    ]
    text = "\n".join(lines) + "\n"
    fig = history_figure(study, f"study {study.study_name}")
    texts = {"study.md": text, "importances.json": json.dumps(importances, indent=2)}
    publish(MlflowTracker.attach(tracking, run.info.run_id), output, texts, {"history.png": fig})
    plt.close(fig)
    return text
