"""What a tune or sweep worker checks before it creates anything: the storage URL, the tracking server, and that
its study or sweep name stands for the same content as the name's other workers.

A name is keyed by its content: a digest of the resolved recipe (or every grid point's) and of the search space (or
grid). The first worker to use a name claims it for its content in the storage database; a worker whose content
differs is refused in one line, so two studies can never share one name by accident. The digest is recorded on the
parent run (tag `metassl.content`) and in the Optuna study's user attributes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from typing import TYPE_CHECKING, Any

from runner.studies.claims import claim, redact
from runner.tracking import MlflowTracker, check_store
from schemas import Recipe, UserError, recipe_to_dict
from schemas.training import Tracking

if TYPE_CHECKING:
    from runner.studies.sweep_plan import SweepPlan
    from runner.studies.tune import TunePlan

CONTENT_TAG = "metassl.content"
SUPPORTED = "sqlite:///path/to/optuna.db, postgresql://user:password@host:port/database (or postgresql+psycopg2://)"


def _hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def check_storage_url(url: str) -> None:
    """A URL Optuna and the claims table can open, or one line naming the supported schemes; nothing is created."""
    from sqlalchemy.engine import make_url

    shown = _hide_password(url)
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 (a port that is not a number fails here)
    except Exception as exc:
        reason = "its port is not a number" if isinstance(exc, ValueError) else "not a database URL"
        raise UserError(f"--storage {shown}: {reason}; use {SUPPORTED}") from None
    drivers = {"sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg2"}
    if importlib.util.find_spec("psycopg") is not None:
        drivers.add("postgresql+psycopg")
    if parsed.drivername not in drivers:
        raise UserError(f"--storage {shown}: {parsed.drivername} is not supported; use {SUPPORTED}")
    if parsed.get_backend_name() == "sqlite" and not parsed.database:
        raise UserError(f"--storage {shown}: names no database file (a study in memory is lost); use {SUPPORTED}")
    if parsed.get_backend_name() == "postgresql" and not (parsed.host and parsed.database):
        raise UserError(f"--storage {shown}: names no host or no database; use {SUPPORTED}")


def content_digest(recipes: list[Recipe], over: Any) -> str:
    """What a study or sweep computes: its resolved recipes and its space or grid. The tracking block is left out:
    it says where results go, and each machine may spell the same server differently."""
    resolved = [{k: v for k, v in recipe_to_dict(recipe).items() if k != "tracking"} for recipe in recipes]
    text = json.dumps({"recipes": resolved, "over": over}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _hold(storage: str, kind: str, name: str, content: str, over: str) -> None:
    holder = claim(storage, f"{kind}/{name}/content", content)
    if holder != content:
        raise UserError(
            f"--name {name}: the {kind} '{name}' in {redact(storage)} is another recipe or {over} (content {holder});"
            f" this command's content is {content}; give it another --name, or the same recipe, -o overrides and"
            f" {over}"
        )


def tune_content(plan: TunePlan) -> str:
    return content_digest([plan.recipe], plan.space.digest)


def sweep_content(plan: SweepPlan) -> str:
    grid = {key: [json.dumps(value, default=str) for value in values] for key, values in plan.grid.items()}
    return content_digest([child.recipe for child in plan.children if child.recipe is not None], grid)


def admit_tune(plan: TunePlan) -> None:
    """Before the study exists: a usable storage URL, a tracking store that answers, and the name's content."""
    check_storage_url(plan.storage)
    check_store(plan.tracking)
    _hold(plan.storage, "study", plan.study_name, tune_content(plan), "search space")


def admit_sweep(plan: SweepPlan, storage: str | None, named: bool) -> None:
    """Before the parent run exists. Only a name given with --name is held to its content: the default one is the
    recipe's, so that a grid can grow under it."""
    if storage is not None:
        check_storage_url(storage)
    check_store(plan.tracking)
    if storage is not None and named:
        _hold(storage, "sweep", plan.name, sweep_content(plan), "grid")


def record(tracking: Tracking, parent_run_id: str, content: str, study: Any = None) -> None:
    """The content on the parent run and in the Optuna study, for whoever reads them later."""
    MlflowTracker.attach(tracking, parent_run_id).set_tags({CONTENT_TAG: content})
    if study is not None:
        study.set_user_attr(CONTENT_TAG, content)
