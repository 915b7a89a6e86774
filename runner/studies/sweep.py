"""`metassl sweep`: a grid of child runs, each a `metassl run` subprocess, nested under one parent MLflow run."""

from __future__ import annotations

import json
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

from runner.registry import GENERATORS
from runner.studies.admit import record, sweep_content
from runner.studies.claims import (
    claim_parent_run,
    drop_lease,
    keep_lease,
    renew_leases,
    take_lease,
    worker_name,
)
from runner.studies.launch import Devices, Launched, WorkerOptions, error_line, launch, run_command, shown
from runner.studies.outage import Patience
from runner.studies.sweep_grid import canonical_value
from runner.studies.sweep_plan import CHILD_TAG, ROLE_TAG, SWEEP_TAG, Child, SweepPlan
from runner.tracking import (
    FINAL_ACCURACY,
    PARENT_TAG,
    MlflowTracker,
    Tracker,
    child_runs,
    mark_failed,
    runs_with_tag,
)

console = Console(stderr=True, highlight=False, soft_wrap=True)


LEASE_BEATS = 6  # a grid point's lease lasts this many heartbeats unless its worker renews it


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


def child_command(plan: SweepPlan, child: Child, parent_run_id: str, nproc: int = 1) -> list[str]:
    overrides = [*plan.child_overrides(child), f"tracking.run_name={json.dumps(plan.child_run_name(child))}"]
    command = [*run_command(plan.recipe_path, overrides, nproc), "--parent-run-id", parent_run_id]
    return [*command, "--tag", f"{SWEEP_TAG}={plan.identity}", "--tag", f"{CHILD_TAG}={child.key}"]


class Claims:
    """Grid points leased in a database shared by several sweep workers: each runs on the first to take it, and
    is taken over when its worker is gone (lease expired, or a dead pid on this host)."""

    def __init__(self, storage: str, plan: SweepPlan, options: WorkerOptions) -> None:
        self.storage = storage
        self.prefix = f"sweep/{plan.name}/{plan.identity}"
        self.worker = worker_name(uuid.uuid4().hex[:6])
        self.lease = options.heartbeat * LEASE_BEATS
        self.patience = Patience(f"sweep worker {self.worker}", options.wait, longest_pause=options.heartbeat)

    def key(self, child: Child) -> str:
        return f"{self.prefix}/{child.key}"

    def take(self, child: Child) -> tuple[bool, str | None]:
        """(taken, the gone worker it was taken over from)."""
        return self.patience.call(take_lease, self.storage, self.key(child), self.worker, self.lease)

    def renew(self, children: list[Child]) -> None:
        self.patience.call(renew_leases, self.storage, [self.key(c) for c in children], self.worker, self.lease)

    def keep(self, child: Child) -> None:
        self.patience.call(keep_lease, self.storage, self.key(child), self.worker)

    def give_back(self, child: Child) -> None:
        """A failed or interrupted child is released, so that another worker or a later invocation runs it."""
        self.patience.call(drop_lease, self.storage, self.key(child), self.worker)

    def parent(self, plan: SweepPlan, tags: dict[str, str]) -> tuple[str, bool]:
        """(the parent run id, whether this worker created it): the first worker to claim it creates it."""
        key = f"{self.prefix}/parent"
        return claim_parent_run(self.storage, key, plan.tracking, plan.name, tags, call=self.patience.call)


@dataclass
class Running:
    child: Child
    launched: Launched


class Runner:
    """Launches children as subprocesses, at most `jobs` at a time, each on its own devices; stops them all on
    Ctrl-C. With claims, it also waits for the points other workers hold, and takes over those of a gone one."""

    def __init__(
        self,
        plan: SweepPlan,
        parent_run_id: str,
        options: WorkerOptions,
        log_dir: Path,
        claims: Claims | None = None,
        finished_elsewhere: Callable[[], set[str]] = set,
    ) -> None:
        self.plan = plan
        self.parent_run_id = parent_run_id
        self.options = options
        self.devices = options.devices or Devices(None)
        self.log_dir = log_dir
        self.claims = claims
        self.finished_elsewhere = finished_elsewhere
        self.live: list[Running] = []

    def say(self, child: Child, text: str) -> None:
        console.print(f"[{child.index + 1}/{len(self.plan.children)}] {child.key}: {text}", markup=False)

    def launch(self, child: Child, devices: list[str]) -> Running:
        command = child_command(self.plan, child, self.parent_run_id, self.options.nproc)
        launched = launch(command, devices, self.log_dir, f"child-{child.index}")
        self.say(child, f"started {shown(devices)}")
        return Running(child, launched)

    @staticmethod
    def outcome(running: Running, returncode: int) -> Outcome:
        stdout, log = running.launched.output()
        started = running.launched.started
        return Outcome(running.child, returncode, stdout, log, time.time() - started, started)

    def stop(self) -> None:
        """SIGTERM every live child: its run ends KILLED, as after Ctrl-C."""
        for running in self.live:
            running.launched.process.terminate()
        for running in self.live:
            running.launched.stop()
            if self.claims is not None:
                self.claims.give_back(running.child)

    def _next(self, queue: list[Child], elsewhere: list[Child]) -> Child | None:
        """The next child this worker may run (claimed at launch time, so that workers interleave)."""
        while queue:
            child = queue.pop(0)
            if self.claims is None:
                return child
            taken, gone = self.claims.take(child)
            if taken:
                if gone is not None:
                    orphans = [
                        run
                        for run in child_runs(self.plan.tracking, self.parent_run_id)
                        if run.data.tags.get(CHILD_TAG) == child.key and run.info.status == "RUNNING"
                    ]
                    for run in orphans:
                        mark_failed(self.plan.tracking, run.info.run_id)
                    marked = f"; its run {orphans[0].info.run_id} marked FAILED" if orphans else ""
                    self.say(child, f"its worker {gone} is gone: taken over{marked}")
                return child
            if child.status != "ELSEWHERE":
                child.status = "ELSEWHERE"
                self.say(child, "claimed by another worker")
            elsewhere.append(child)
        return None

    def _look_elsewhere(self, queue: list[Child], elsewhere: list[Child]) -> None:
        """Points held by other workers: done once finished; back in the queue (to take over) when their worker
        is gone or gave them back."""
        finished = self.finished_elsewhere()
        for child in list(elsewhere):
            elsewhere.remove(child)
            if child.key not in finished:
                queue.append(child)

    def run(self, children: list[Child], on_done: Callable[[Outcome], None]) -> None:
        queue, elsewhere = list(children), []
        renewed = looked = time.monotonic()
        waiting_said = False
        try:
            while queue or self.live or elsewhere:
                now = time.monotonic()
                if self.claims is not None and now - renewed >= self.options.heartbeat:
                    self.claims.renew([running.child for running in self.live])
                    renewed = now
                if elsewhere and now - looked >= self.options.heartbeat:
                    self._look_elsewhere(queue, elsewhere)
                    looked = now
                while queue and len(self.live) < self.options.jobs:
                    devices = self.devices.take()
                    if devices is None:
                        break
                    child = self._next(queue, elsewhere)
                    if child is None:
                        self.devices.give_back(devices)
                        break
                    self.live.append(self.launch(child, devices))
                for running in list(self.live):
                    returncode = running.launched.process.poll()
                    if returncode is not None:
                        self.live.remove(running)
                        self.devices.give_back(running.launched.devices)
                        on_done(self.outcome(running, returncode))
                        waiting_said = False
                if not self.live and not queue and elsewhere and not waiting_said:
                    console.print(f"waiting for {len(elsewhere)} grid point(s) held by other workers", markup=False)
                    waiting_said = True
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
    tracker.log_text(yaml.safe_dump(dict(plan.document), sort_keys=False), "sweep/base_recipe.yaml")
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


def run_sweep(plan: SweepPlan, options: WorkerOptions | None = None, storage: str | None = None) -> list[Child]:
    """Run every child not finished yet; raise SweepFailed at the end unless every grid point finished.

    With `storage` (a database URL), several workers share the sweep: each child runs on the first to claim it,
    and a worker waits for the points others hold (taking over those of a worker that is gone)."""
    options = options or WorkerOptions()
    claims = Claims(storage, plan, options) if storage else None
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
            if claims is not None:
                (claims.give_back if child.status == "FAILED" else claims.keep)(child)
            if child.status == "FAILED":
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
            GENERATORS.prepare(recipe.generator, tracking=recipe.tracking, runtime=recipe.runtime)  # type: ignore[union-attr]
        with tempfile.TemporaryDirectory(prefix="metassl-sweep-") as tmp:
            finished_elsewhere = lambda: set(_finished_keys(plan, tracker.run_id))  # noqa: E731
            Runner(plan, tracker.run_id, options, Path(tmp), claims, finished_elsewhere).run(todo, on_done)
        if claims is not None:
            _fill_in_elsewhere(plan, tracker.run_id)
        _log_parent_progress(tracker, plan)
        failed = [child for child in plan.children if child.status == "FAILED"]
        held = [child for child in plan.children if child.status == "ELSEWHERE" and child.run_id is None]
        tracker.set_tags({"metassl.sweep.failed": len(failed), "metassl.sweep.held_elsewhere": len(held)})
        print_summary(plan, tracker.run_id)
        if failed or held:
            done = len(plan.children) - len(failed) - len(held)
            raise SweepFailed(
                f"{len(failed)} of {len(plan.children)} children failed ({done} finished, {len(failed)} failed, "
                f"{len(held)} held by other workers)"
            )
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
