"""`metassl tune`: an Optuna study over a YAML search space, each trial a child MLflow run under one parent.

Several processes (on several machines) given the same `--storage` and study name share the study: Optuna hands
out the trials, and the parent MLflow run is claimed once in the same database (runner/studies/claims.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from runner.studies.claims import claim_parent_run, database_url, holder, redact, sqlite_url
from runner.studies.search_space import SearchSpace, load_space, trial_recipe
from runner.studies.sweep_plan import ROLE_TAG
from runner.tracking import MlflowTracker, Tracker
from schemas import Recipe, UserError, dump_recipe, set_override, validate_recipe
from schemas.recipe import read_recipe_document
from schemas.training import Tracking

console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

OBJECTIVE = "val/accuracy"
STUDY_TAG = "metassl.tune.study"
STORAGE_TAG = "metassl.tune.storage"
TRIAL_TAG = "metassl.tune.trial"
TRIAL_STATE_TAG = "metassl.tune.state"
BEST_RECIPE = "best/recipe.yaml"
MAX_FAILURES = 3  # in a row: a space whose trials keep failing stops rather than spinning
GRACE_BEATS = 3  # a trial whose heartbeat is this many intervals old belongs to a dead worker


@dataclass
class TunePlan:
    recipe_path: Path
    overrides: list[str]
    document: dict[str, Any]  # the recipe with the -o overrides applied
    recipe: Recipe
    space: SearchSpace
    study_name: str
    storage: str
    trials: int

    @property
    def tracking(self) -> Tracking:
        return self.recipe.tracking


def default_storage(tracking: Tracking) -> str:
    """Next to a local sqlite tracking store (so one folder holds a project), else ./mlruns/optuna.db."""
    uri = tracking.tracking_uri
    folder = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else Path("mlruns")
    return sqlite_url(folder / "optuna.db")


def check_objective(objective: str) -> None:
    if "test" in objective:
        raise UserError(
            f"--objective {objective}: tuning on the test split fits the test set; "
            "tune on val/accuracy (a holdout split: data.validation.source=holdout)"
        )
    if objective != OBJECTIVE:
        raise UserError(f"--objective {objective}: the objective is {OBJECTIVE} (the holdout validation accuracy)")


def plan_tune(
    recipe_path: Path,
    space_path: Path,
    overrides: list[str],
    name: str | None,
    storage: str | None,
    trials: int,
    objective: str,
) -> TunePlan:
    """Check everything a study needs before any trial runs; a one-line UserError otherwise."""
    from runner.registry import load_plugins

    load_plugins()
    check_objective(objective)
    document = read_recipe_document(recipe_path)
    for assignment in overrides:
        set_override(document, assignment)
    recipe = validate_recipe(document, str(recipe_path))
    if recipe.data.validation.source != "holdout":
        raise UserError(
            f"{recipe_path}: data.validation.source is '{recipe.data.validation.source}'; tuning needs a holdout "
            "split: -o data.validation.source=holdout -o data.validation.per_class=N"
        )
    space = load_space(space_path, document)
    identity = hashlib.sha256(
        json.dumps({"recipe": document, "space": space.digest}, sort_keys=True, default=str).encode()
    ).hexdigest()[:8]
    study_name = name or f"{recipe.name}-{identity}"
    return TunePlan(
        recipe_path, overrides, document, recipe, space, study_name, storage or default_storage(recipe.tracking), trials
    )


def open_storage(url: str, heartbeat: float | None = None, on_stale: Any = None, patience: Any = None) -> Any:
    """Optuna's RDB storage; several workers may create its tables at once, so a failed first try is retried.

    With `heartbeat` (seconds), each running trial's worker renews its heartbeat; a trial silent for
    GRACE_BEATS heartbeats is failed by the next worker that looks, and `on_stale` is called with it. With
    `patience` (runner/studies/outage.py), an unreachable database is waited for rather than an error."""
    import optuna
    import sqlalchemy

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    url = database_url(url)
    beats: dict[str, Any] = {}
    if heartbeat is not None:
        beats = {
            "heartbeat_interval": max(1, round(heartbeat)),
            "grace_period": max(2, round(heartbeat * GRACE_BEATS)),
            "heartbeat_stale_trial_callback": on_stale,
        }
    if patience is not None:
        return patience.call(optuna.storages.RDBStorage, url, engine_kwargs=kwargs, **beats)
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, **beats)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(1 + attempt)
        except sqlalchemy.exc.OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc).splitlines()[0]
            raise UserError(f"--storage: cannot open {redact(url)} ({reason})") from None
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, **beats)


def open_study(plan: TunePlan, storage: Any) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for _ in range(3):
        try:
            return optuna.create_study(
                study_name=plan.study_name,
                storage=storage,
                direction="maximize",
                load_if_exists=True,
                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
            )
        except optuna.exceptions.DuplicatedStudyError:  # created by another worker in between
            continue
    return optuna.load_study(study_name=plan.study_name, storage=storage)


def _parent_run(plan: TunePlan) -> str:
    """The study's parent run: whoever claims it first in the storage database creates it; the others use it."""
    tags = {
        ROLE_TAG: "parent",
        STUDY_TAG: plan.study_name,
        STORAGE_TAG: redact(plan.storage),
        "mlflow.note.content": f"Optuna study `{plan.study_name}` of `{plan.recipe_path}` over `{plan.space.path}`.",
    }
    parent, created = claim_parent_run(plan.storage, _parent_key(plan), plan.tracking, f"tune {plan.study_name}", tags)
    if not created:
        return parent
    tracker = MlflowTracker.attach(plan.tracking, parent)
    tracker.log_params(
        {
            "tune.recipe": str(plan.recipe_path),
            "tune.overrides": " ".join(plan.overrides) or "-",
            "tune.trials": plan.trials,
            "tune.objective": OBJECTIVE,
            **{f"space.{key}": json.dumps(spec.model_dump()) for key, spec in plan.space.parameters.items()},
        }
    )
    tracker.log_text(plan.space.text, "tune/space.yaml")
    tracker.log_text(yaml.safe_dump(dict(plan.document), sort_keys=False), "tune/base_recipe.yaml")
    return parent


def _states(study: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def _counted(study: Any, below: int | None = None) -> int:
    """Trials that use up the budget (done or running), optionally only those numbered below `below`."""
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(t.state in live and (below is None or t.number < below) for t in study.get_trials(deepcopy=False))


def progress_line(study: Any, total: int) -> str:
    """Trials done, the best value so far, and an ETA from the mean trial time and the workers running now."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    running = sum(t.state == TrialState.RUNNING for t in trials)
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    best_text = f"best {best.value:.4f} (trial {best.number})" if best else "best -"
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done if t.datetime_start]
    remaining = max(0, total - len(done))
    eta = "-"
    if durations and remaining:
        workers = running + 1 if remaining > running else max(1, running)  # this worker goes on to the next
        seconds = remaining * sum(durations) / len(durations) / workers
        eta = f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    elif not remaining:
        eta = "0s"
    return f"{len(done)}/{total} trials done ({running} running), {best_text}, ETA {eta}"


def _log_best(plan: TunePlan, study: Any, tracker: Tracker) -> None:
    """The best trial's fully resolved recipe on the parent run: `metassl run` takes it as is."""
    from optuna.trial import TrialState

    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return
    best = study.best_trial
    values = plan.space.values(best.params)
    recipe = trial_recipe(plan.document, values, f"best trial {best.number}")
    header = f"# Best trial {best.number} of study {plan.study_name}: {OBJECTIVE} {best.value:.4f}\n"
    tracker.log_text(header + dump_recipe(recipe), BEST_RECIPE)
    tracker.log_dict(
        {"number": best.number, "value": best.value, "params": values, "run_id": best.user_attrs.get("run_id")},
        "best/trial.json",
    )
    tracker.log_metrics({"best/val_accuracy": best.value}, step=best.number)


def summary(plan: TunePlan, study: Any, parent_id: str | None = None) -> str:
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        return f"study {plan.study_name}: no complete trial yet"
    best = study.best_trial
    lines = [
        f"study {plan.study_name}: {progress_line(study, plan.trials)}",
        f"best trial {best.number}: {OBJECTIVE} {best.value:.4f} "
        + " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in plan.space.values(best.params).items()),
    ]
    if parent_id:
        lines.append(
            f"its recipe: mlflow artifacts download -r {parent_id} -a {BEST_RECIPE} "
            f"(MLFLOW_TRACKING_URI={plan.tracking.tracking_uri}), then metassl run recipe.yaml"
        )
    return "\n".join(lines)


def _parent_key(plan: TunePlan) -> str:
    return f"tune/{plan.study_name}/parent"


def parent_of(plan: TunePlan) -> str | None:
    return holder(plan.storage, _parent_key(plan))
