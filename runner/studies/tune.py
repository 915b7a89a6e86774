"""`metassl tune`: an Optuna study over a YAML search space, each trial a child MLflow run under one parent.

Several processes (on several machines) given the same `--storage` and study name share the study: Optuna hands
out the trials, and the parent MLflow run is claimed once in the same database (runner/studies/claims.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from runner.studies.admit import record, tune_content
from runner.studies.claims import claim, database_url, holder, redact, sqlite_url
from runner.studies.search_space import SearchSpace, load_space, trial_recipe
from runner.tracking import MlflowTracker, Tracker, create_run, delete_run, runs_with_tag, set_status
from schemas import Recipe, UserError, dump_recipe, set_override, validate_recipe
from schemas.recipe import read_recipe_document
from schemas.training import Tracking

console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

OBJECTIVE = "val/accuracy"
ROLE_TAG = "metassl.sweep.role"  # shared with sweeps, so `metassl report EXPERIMENT` leaves parents out
STUDY_TAG = "metassl.tune.study"
STORAGE_TAG = "metassl.tune.storage"
TRIAL_TAG = "metassl.tune.trial"
TRIAL_STATE_TAG = "metassl.tune.state"
BEST_RECIPE = "best/recipe.yaml"
MAX_FAILURES = 3  # in a row: a space whose trials keep failing stops rather than spinning


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


def _storage(url: str) -> Any:
    """Optuna's RDB storage; several workers may create its tables at once, so a failed first try is retried."""
    import optuna
    import sqlalchemy

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    url = database_url(url)
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(1 + attempt)
        except sqlalchemy.exc.OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc).splitlines()[0]
            raise UserError(f"--storage: cannot open {redact(url)} ({reason})") from None
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def open_study(plan: TunePlan) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _storage(plan.storage)
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
    key = f"tune/{plan.study_name}/parent"
    existing = holder(plan.storage, key)
    if existing is not None:
        return existing
    tags = {
        ROLE_TAG: "parent",
        STUDY_TAG: plan.study_name,
        STORAGE_TAG: redact(plan.storage),
        "mlflow.note.content": f"Optuna study `{plan.study_name}` of `{plan.recipe_path}` over `{plan.space.path}`.",
    }
    candidate = create_run(plan.tracking, f"tune {plan.study_name}", tags)
    winner = claim(plan.storage, key, candidate)
    if winner != candidate:
        delete_run(plan.tracking, candidate)
        return winner
    tracker = MlflowTracker.attach(plan.tracking, candidate)
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
    tracker.log_text(yaml.safe_dump(plan.document, sort_keys=False), "tune/base_recipe.yaml")
    return candidate


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


def _trial_run_id(plan: TunePlan, trial_key: str) -> str | None:
    runs = runs_with_tag(plan.tracking, TRIAL_TAG, trial_key)
    return runs[0].info.run_id if runs else None


def _run_trial(plan: TunePlan, study: Any, trial: Any, parent_id: str) -> str:
    """Run one trial in this process; tell Optuna how it went; return a one-line outcome."""
    import optuna

    from runner.run import session

    values = plan.space.values(trial.params)
    trial_key = f"{plan.study_name}/{trial.number}"
    shown = " ".join(f"{key}={json.dumps(value, default=str)}" for key, value in values.items())
    console.print(f"[trial {trial.number}] {shown}")
    try:
        recipe = trial_recipe(
            plan.document,
            {**values, "tracking.run_name": f"{plan.study_name} trial {trial.number}"},
            f"trial {trial.number} ({shown})",
        )
        if recipe.data.validation.source != "holdout":
            raise UserError("the space switched data.validation.source away from holdout")
    except UserError as exc:
        trial.set_user_attr("error", str(exc))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return f"FAILED (invalid recipe): {exc}"

    last: list[float] = []
    total = recipe.schedule.iterations

    def on_validation(iteration: int, accuracy: float) -> None:
        last.append(accuracy)
        if iteration < total:  # the last evaluation is the result, not a reason to stop
            trial.report(accuracy, iteration)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at iteration {iteration}")

    tags = {TRIAL_TAG: trial_key, STUDY_TAG: plan.study_name}
    try:
        result = session.execute(recipe, parent_run_id=parent_id, extra_tags=tags, on_validation=on_validation)
    except optuna.TrialPruned as exc:
        run_id = _trial_run_id(plan, trial_key)
        if run_id:
            trial.set_user_attr("run_id", run_id)
            MlflowTracker.attach(plan.tracking, run_id).set_tags({TRIAL_STATE_TAG: "PRUNED"})
            set_status(plan.tracking, run_id, "KILLED")
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return f"pruned ({exc}; {OBJECTIVE} {last[-1]:.4f})"
    except KeyboardInterrupt:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    except Exception as exc:
        trial.set_user_attr("error", str(exc)[:500])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    trial.set_user_attr("run_id", result.run_id)
    value = last[-1]
    MlflowTracker.attach(plan.tracking, result.run_id).set_tags({TRIAL_STATE_TAG: "COMPLETE"})
    MlflowTracker.attach(plan.tracking, result.run_id).log_metrics({"tune/objective": value}, step=total)
    study.tell(trial, value)
    return f"{OBJECTIVE} {value:.4f} (test {result.accuracy:.4f}, run {result.run_id}, {result.wall_seconds:.0f} s)"


def run_tune(plan: TunePlan) -> Any:
    """Run trials until the study has `plan.trials` done or running; other workers may be running some of them."""
    import optuna

    study = open_study(plan)
    parent_id = _parent_run(plan)
    record(plan.tracking, parent_id, tune_content(plan), study)
    worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    console.print(
        f"study {plan.study_name} ({redact(plan.storage)}), parent run {parent_id}, worker {worker}: "
        + progress_line(study, plan.trials)
    )
    failures = 0
    with MlflowTracker.open(plan.tracking, resume_run_id=parent_id) as tracker:
        while _counted(study) < plan.trials and failures < MAX_FAILURES:
            trial = study.ask(plan.space.distributions())
            # Two workers may ask at the same moment for the last slot: the trial numbered later gives way.
            if _counted(study, below=trial.number) >= plan.trials:
                trial.set_user_attr("surplus", True)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                break
            outcome = _run_trial(plan, study, trial, parent_id)
            failures = failures + 1 if outcome.startswith("FAILED") else 0
            console.print(f"[trial {trial.number}] {outcome} | {progress_line(study, plan.trials)}")
            with contextlib.suppress(ValueError):
                _log_best(plan, study, tracker)
        _log_best(plan, study, tracker)
        tracker.set_tags(
            {"metassl.tune.trials": plan.trials, **{f"metassl.tune.{k.lower()}": v for k, v in _states(study).items()}}
        )
    if failures >= MAX_FAILURES:
        raise UserError(f"study {plan.study_name}: {MAX_FAILURES} trials in a row failed; see the errors above")
    return study


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


def parent_of(plan: TunePlan) -> str | None:
    return holder(plan.storage, f"tune/{plan.study_name}/parent")
