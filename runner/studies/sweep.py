"""`metassl sweep`: a grid of child runs, each a `metassl run` subprocess, nested under one parent MLflow run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from runner.studies.admit import record, sweep_content
from runner.studies.claims import claim, holder, release
from runner.studies.sweep_grid import canonical_value
from runner.studies.sweep_plan import CHILD_TAG, ROLE_TAG, SWEEP_TAG, Child, SweepPlan
from runner.tracking import (
    FINAL_ACCURACY,
    PARENT_TAG,
    MlflowTracker,
    Tracker,
    child_runs,
    create_run,
    delete_run,
    mark_failed,
    runs_with_tag,
)

console = Console(stderr=True, highlight=False, soft_wrap=True)


class SweepFailed(Exception):
    """Raised inside the parent run's block so that it ends FAILED; the CLI turns it into exit code 1."""


@dataclass
class Outcome:
    child: Child
    returncode: int
    stdout: str
    log: str
    seconds: float
    started: float


def child_command(plan: SweepPlan, child: Child, parent_run_id: str) -> list[str]:
    command = [sys.executable, "-m", "runner.cli", "run", str(plan.recipe_path)]
    for override in [*plan.child_overrides(child), f"tracking.run_name={json.dumps(plan.child_run_name(child))}"]:
        command += ["-o", override]
    command += ["--parent-run-id", parent_run_id]
    command += ["--tag", f"{SWEEP_TAG}={plan.identity}", "--tag", f"{CHILD_TAG}={child.key}"]
    return command


def error_line(returncode: int, log: str) -> str:
    """The line that says why a child failed: its `error:` line, the exception line, or the signal."""
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line.removeprefix("error:").strip()
    return lines[-1] if lines else f"exit code {returncode}"


@dataclass
class Launched:
    child: Child
    process: subprocess.Popen[bytes]
    started: float
    stdout: Path
    log: Path


class Claims:
    """Grid points claimed in a database shared by several sweep workers: each runs on the first to claim it."""

    def __init__(self, storage: str, plan: SweepPlan) -> None:
        self.storage = storage
        self.prefix = f"sweep/{plan.name}/{plan.identity}"
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    def take(self, child: Child) -> bool:
        return claim(self.storage, f"{self.prefix}/{child.key}", self.worker) == self.worker

    def give_back(self, child: Child) -> None:
        """A failed or interrupted child is released, so that a later invocation runs it again."""
        release(self.storage, f"{self.prefix}/{child.key}", self.worker)

    def parent(self, plan: SweepPlan, tags: dict[str, str]) -> tuple[str, bool]:
        """(the parent run id, whether this worker created it): the first worker to claim it creates it."""
        key = f"{self.prefix}/parent"
        existing = holder(self.storage, key)
        if existing is not None:
            return existing, False
        candidate = create_run(plan.tracking, plan.name, tags)
        winner = claim(self.storage, key, candidate)
        if winner != candidate:
            delete_run(plan.tracking, candidate)
        return winner, winner == candidate


class Runner:
    """Launches children as subprocesses, at most `jobs` at a time, and stops them all on Ctrl-C."""

    def __init__(
        self, plan: SweepPlan, parent_run_id: str, jobs: int, log_dir: Path, claims: Claims | None = None
    ) -> None:
        self.plan = plan
        self.parent_run_id = parent_run_id
        self.jobs = jobs
        self.log_dir = log_dir
        self.claims = claims
        self.live: list[Launched] = []

    def launch(self, child: Child) -> Launched:
        stdout, log = self.log_dir / f"child-{child.index}.out", self.log_dir / f"child-{child.index}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(stdout, "wb") as out, open(log, "wb") as err:
            command = child_command(self.plan, child, self.parent_run_id)
            process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        console.print(f"[{child.index + 1}/{len(self.plan.children)}] {child.key}: started", markup=False)
        return Launched(child, process, time.time(), stdout, log)

    @staticmethod
    def outcome(launched: Launched, returncode: int) -> Outcome:
        return Outcome(
            launched.child,
            returncode,
            launched.stdout.read_text(errors="replace"),
            launched.log.read_text(errors="replace"),
            time.time() - launched.started,
            launched.started,
        )

    def stop(self) -> None:
        """SIGTERM every live child: its run ends KILLED, as after Ctrl-C."""
        for launched in self.live:
            launched.process.terminate()
        for launched in self.live:
            try:
                launched.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                launched.process.kill()
            if self.claims is not None:
                self.claims.give_back(launched.child)

    def _next(self, queue: list[Child]) -> Child | None:
        """The next child this worker may run (claimed at launch time, so that workers interleave)."""
        while queue:
            child = queue.pop(0)
            if self.claims is None or self.claims.take(child):
                return child
            child.status = "ELSEWHERE"
            console.print(f"[{child.index + 1}/{len(self.plan.children)}] {child.key}: claimed by another worker")
        return None

    def run(self, children: list[Child], on_done: Callable[[Outcome], None]) -> None:
        queue = list(children)
        try:
            while queue or self.live:
                while queue and len(self.live) < self.jobs:
                    child = self._next(queue)
                    if child is not None:
                        self.live.append(self.launch(child))
                for launched in list(self.live):
                    returncode = launched.process.poll()
                    if returncode is not None:
                        self.live.remove(launched)
                        on_done(self.outcome(launched, returncode))
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise


def _finished_keys(plan: SweepPlan, parent_run_id: str) -> dict[str, Any]:
    """child key -> its newest FINISHED run under this parent."""
    finished: dict[str, Any] = {}
    for run in child_runs(plan.tracking, parent_run_id):
        key = run.data.tags.get(CHILD_TAG)
        if key and run.info.status == "FINISHED" and key not in finished:
            finished[key] = run
    return finished


def _record(plan: SweepPlan, parent_run_id: str, outcome: Outcome) -> None:
    """Fill in a child's result from its exit code and, where it got one, its MLflow run."""
    child = outcome.child
    child.seconds = outcome.seconds
    child.log = outcome.log
    runs = [
        run
        for run in child_runs(plan.tracking, parent_run_id)
        if run.data.tags.get(CHILD_TAG) == child.key and run.info.start_time >= int(outcome.started * 1000) - 1000
    ]
    run = runs[0] if runs else None
    child.run_id = run.info.run_id if run else None
    if outcome.returncode == 0 and run is not None and run.info.status == "FINISHED":
        child.status = "FINISHED"
        child.accuracy = run.data.metrics.get(FINAL_ACCURACY)
        return
    child.status = "FAILED"
    child.error = error_line(outcome.returncode, outcome.log)
    if run is not None and run.info.status == "RUNNING":  # died without ending its run (SIGKILL, OOM)
        mark_failed(plan.tracking, run.info.run_id)


def _open_parent(plan: SweepPlan) -> tuple[str | None, dict[str, str]]:
    tagged = runs_with_tag(plan.tracking, SWEEP_TAG, plan.identity)
    existing = [run for run in tagged if PARENT_TAG not in run.data.tags]  # children carry the sweep tag too
    if existing:
        return existing[0].info.run_id, {}
    return None, _parent_tags(plan)


def _parent_tags(plan: SweepPlan) -> dict[str, str]:
    description = (
        f"Sweep of `{plan.recipe_path}` over "
        + ", ".join(f"`{key}` in {[canonical_value(v) for v in values]}" for key, values in plan.grid.items())
        + f" ({len(plan.children)} children)."
    )
    return {SWEEP_TAG: plan.identity, ROLE_TAG: "parent", "mlflow.note.content": description}


def _fill_in_elsewhere(plan: SweepPlan, parent_run_id: str) -> None:
    """Children another worker ran: their status and accuracy as far as they got."""
    finished = _finished_keys(plan, parent_run_id)
    for child in plan.children:
        if child.status == "ELSEWHERE" and child.key in finished:
            run = finished[child.key]
            child.run_id, child.accuracy = run.info.run_id, run.data.metrics.get(FINAL_ACCURACY)


def _log_parent_inputs(tracker: Tracker, plan: SweepPlan) -> None:
    params = {f"grid.{key}": ",".join(canonical_value(v) for v in values) for key, values in plan.grid.items()}
    params["sweep.recipe"] = str(plan.recipe_path)
    params["sweep.overrides"] = " ".join(plan.overrides) or "-"
    params["sweep.children"] = len(plan.children)
    tracker.log_params(params)
    tracker.log_text(yaml.safe_dump(plan.document, sort_keys=False), "sweep/base_recipe.yaml")
    tracker.log_dict(
        {"recipe": str(plan.recipe_path), "overrides": plan.overrides, "grid": plan.grid}, "sweep/grid.json"
    )


def _log_parent_progress(tracker: Tracker, plan: SweepPlan) -> None:
    children = plan.children
    tracker.log_dict([child.summary() for child in children], "sweep/children.json")
    counts = {
        status: sum(c.status == status for c in children) for status in ("FINISHED", "SKIPPED", "FAILED", "ELSEWHERE")
    }
    tracker.log_metrics({f"sweep/{status.lower()}": n for status, n in counts.items()}, step=0)


def run_sweep(plan: SweepPlan, jobs: int = 1, storage: str | None = None) -> list[Child]:
    """Run every child not finished yet; raise SweepFailed at the end if any failed.

    With `storage` (a database URL), several workers share the sweep: each child runs on the first to claim it."""
    from runner.pretraining.pretrain import ensure_generator  # imports torch, which planning a sweep does not need

    claims = Claims(storage, plan) if storage else None
    if claims is not None:
        (parent_id, created), new_tags = claims.parent(plan, _parent_tags(plan)), {}
    else:
        (parent_id, new_tags), created = _open_parent(plan), False
    with MlflowTracker.open(plan.tracking, run_name=plan.name, tags=new_tags, resume_run_id=parent_id) as tracker:
        if parent_id is None or created:
            _log_parent_inputs(tracker, plan)
        record(plan.tracking, tracker.run_id, sweep_content(plan))
        console.print(
            f"sweep {plan.identity}: parent run {tracker.run_id} ({len(plan.children)} children)", markup=False
        )
        finished = _finished_keys(plan, tracker.run_id)
        todo = []
        for child in plan.children:
            if child.key in finished:
                run = finished[child.key]
                child.status, child.run_id = "SKIPPED", run.info.run_id
                child.accuracy = run.data.metrics.get(FINAL_ACCURACY)
            elif child.recipe is not None:
                todo.append(child)
        for child in plan.children:
            if child.status == "FAILED":
                console.print(
                    f"[{child.index + 1}/{len(plan.children)}] {child.key}: invalid: {child.error}", markup=False
                )
            elif child.status == "SKIPPED":
                console.print(
                    f"[{child.index + 1}/{len(plan.children)}] {child.key}: already finished, skipped", markup=False
                )

        def on_done(outcome: Outcome) -> None:
            _record(plan, tracker.run_id, outcome)
            child = outcome.child
            if child.status == "FAILED":
                if claims is not None:
                    claims.give_back(child)
                tracker.log_text(child.log[-20000:], f"sweep/logs/child-{child.index}.log")
                shown = f"FAILED: {child.error}"
            else:
                shown = f"finished: test accuracy {child.accuracy:.4f}" if child.accuracy is not None else "finished"
            console.print(
                f"[{child.index + 1}/{len(plan.children)}] {child.key}: {shown} ({child.seconds:.1f} s)", markup=False
            )
            _log_parent_progress(tracker, plan)

        for child in todo:  # here, once, rather than in every child at the same time
            recipe = child.recipe
            ensure_generator(recipe.generator, tracking=recipe.tracking, runtime=recipe.runtime)  # type: ignore[union-attr]
        with tempfile.TemporaryDirectory(prefix="metassl-sweep-") as tmp:
            Runner(plan, tracker.run_id, jobs, Path(tmp), claims).run(todo, on_done)
        if claims is not None:
            _fill_in_elsewhere(plan, tracker.run_id)
        _log_parent_progress(tracker, plan)
        failed = [child for child in plan.children if child.status == "FAILED"]
        tracker.set_tags({"metassl.sweep.failed": len(failed)})
        print_summary(plan, tracker.run_id)
        if failed:
            raise SweepFailed(f"{len(failed)} of {len(plan.children)} children failed")
    return plan.children


def print_summary(plan: SweepPlan, parent_run_id: str) -> None:
    table = Table(title=f"{plan.name} (parent run {parent_run_id})")
    for column in ("#", "overrides", "status", "test accuracy", "seconds", "run / error"):
        table.add_column(column, justify="right" if column in ("#", "test accuracy", "seconds") else "left")
    for child in plan.children:
        accuracy = "-" if child.accuracy is None else f"{child.accuracy:.4f}"
        seconds = "-" if child.seconds is None else f"{child.seconds:.1f}"
        detail = child.run_id or "-"
        if child.status == "FAILED":
            detail = f"{child.run_id + ': ' if child.run_id else ''}{child.error}"
        table.add_row(str(child.index + 1), child.key, child.status, accuracy, seconds, detail)
    Console(width=max(120, Console().width)).print(table)
