"""A `metassl tune` worker: trials as `metassl run` children, each on its own devices, under Optuna's heartbeats.

The worker renews the heartbeat of each trial it runs. A trial whose worker died (its heartbeat expired) is failed
by whichever worker looks next, and Optuna's RetryHeartbeatStaleTrialCallback (RetryFailedTrialCallback before 4.9)
queues it again, so `--trials N` ends with N finished trials as long as one worker lives. A database outage is
ridden out (runner/studies/outage.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.studies.admit import record, tune_content
from runner.studies.claims import redact
from runner.studies.launch import Devices, Launched, WorkerOptions, error_line, launch, run_command, shown
from runner.studies.outage import Patience
from runner.studies.search_space import trial_recipe
from runner.studies.tune import (
    GRACE_BEATS,
    MAX_FAILURES,
    STUDY_TAG,
    TRIAL_TAG,
    TunePlan,
    _log_best,
    _parent_run,
    _states,
    console,
    open_storage,
    open_study,
    progress_line,
)
from runner.tracking import MlflowTracker, Tracker, mark_failed, runs_with_tag
from schemas import UserError, dump_recipe

MAX_RETRIES = 3  # a trial whose workers keep dying is queued again at most this often


@dataclass
class LiveTrial:
    number: int
    trial_id: int
    child: Launched


def _orphans_failed(plan: TunePlan) -> Any:
    """Optuna's retry of a dead worker's trial, and its MLflow run (left RUNNING by the dead child) ended FAILED."""
    import optuna

    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)

    def on_stale(study: Any, trial: Any) -> None:
        retry(study, trial)
        for run in runs_with_tag(plan.tracking, TRIAL_TAG, f"{plan.study_name}/{trial.number}"):
            if run.info.status == "RUNNING":
                mark_failed(plan.tracking, run.info.run_id)
        console.print(f"[trial {trial.number}] its worker is gone (no heartbeat): failed and queued again")

    return on_stale


class TuneWorker:
    def __init__(self, plan: TunePlan, options: WorkerOptions) -> None:
        import optuna

        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats are
        # Optuna renews heartbeats itself only inside Study.optimize; this worker renews them for its children.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        self.plan = plan
        self.options = options
        self.devices = options.devices or Devices(None)
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.patience = Patience(f"worker {self.name}", options.wait, longest_pause=options.heartbeat)
        self.storage = open_storage(plan.storage, options.heartbeat, _orphans_failed(plan))
        self.study = self.patience.call(open_study, plan, self.storage)
        self.live: list[LiveTrial] = []
        self.failures = 0
        self.waiting_said = False
        self.optuna = optuna

    def progress(self) -> str:
        return self.patience.call(progress_line, self.study, self.plan.trials)

    def run(self) -> Any:
        plan = self.plan
        parent_id = self.patience.call(_parent_run, plan)
        self.patience.call(record, plan.tracking, parent_id, tune_content(plan), self.study)
        console.print(
            f"study {plan.study_name} ({redact(plan.storage)}), parent run {parent_id}, worker {self.name}: "
            + self.progress()
        )
        with (
            MlflowTracker.open(plan.tracking, resume_run_id=parent_id) as tracker,
            tempfile.TemporaryDirectory(prefix="metassl-tune-") as tmp,
        ):
            try:
                while self.step(parent_id, Path(tmp), tracker):
                    time.sleep(0.5)
            except BaseException:
                for live in self.live:
                    live.child.stop()
                raise
            self.patience.call(_log_best, plan, self.study, tracker)
            states = self.patience.call(_states, self.study)
            tracker.set_tags(
                {"metassl.tune.trials": plan.trials, **{f"metassl.tune.{k.lower()}": v for k, v in states.items()}}
            )
        if self.failures >= MAX_FAILURES:
            raise UserError(f"study {plan.study_name}: {MAX_FAILURES} trials in a row failed; see the errors above")
        return self.study

    def step(self, parent_id: str, log_dir: Path, tracker: Tracker) -> bool:
        """Renew heartbeats, collect ended trials, fail stale ones, start new ones; False when the study is done."""
        from optuna.trial import TrialState

        for live in self.live:
            self.patience.call(self.storage.record_heartbeat, live.trial_id)
        for live in list(self.live):
            code = live.child.process.poll()
            if code is not None:
                self.live.remove(live)
                self.devices.give_back(live.child.devices)
                self.ended(live, code, tracker)
        if self.patience.settled(self.options.heartbeat * GRACE_BEATS):
            self.patience.call(self.optuna.storages.fail_stale_trials, self.study)
        trials = self.patience.call(self.study.get_trials, deepcopy=False)
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        counted = done + sum(t.state == TrialState.RUNNING for t in trials)
        giving_up = self.failures >= MAX_FAILURES
        if not self.live and (done >= self.plan.trials or giving_up):
            return False
        while not giving_up and len(self.live) < self.options.jobs and counted < self.plan.trials:
            devices = self.devices.take()
            if devices is None:
                break
            started = self.start(parent_id, log_dir, devices)
            if started is None:
                self.devices.give_back(devices)
                break
            self.live.append(started)
            counted += 1
        if not self.live and counted >= self.plan.trials and not self.waiting_said:
            console.print(f"waiting for {counted - done} trial(s) running on other workers")
            self.waiting_said = True
        return True

    def start(self, parent_id: str, log_dir: Path, devices: list[str]) -> LiveTrial | None:
        from optuna.trial import TrialState

        from runner.studies.trial import link

        plan, patience = self.plan, self.patience
        trial = patience.call(self.study.ask, plan.space.distributions())
        patience.call(self.storage.record_heartbeat, trial._trial_id)
        # Two workers may ask at the same moment for the last slot: the trial numbered later gives way.
        live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        earlier = patience.call(self.study.get_trials, deepcopy=False)
        if sum(t.state in live and t.number < trial.number for t in earlier) >= plan.trials:
            patience.call(trial.set_user_attr, "surplus", True)
            patience.call(self.study.tell, trial, state=TrialState.FAIL)
            return None
        values = plan.space.values(trial.params)
        shown_values = " ".join(f"{key}={json.dumps(value, default=str)}" for key, value in values.items())
        try:
            recipe = trial_recipe(
                plan.document,
                {**values, "tracking.run_name": f"{plan.study_name} trial {trial.number}"},
                f"trial {trial.number} ({shown_values})",
            )
            if recipe.data.validation.source != "holdout":
                raise UserError("the space switched data.validation.source away from holdout")
        except UserError as exc:
            patience.call(trial.set_user_attr, "error", str(exc))
            patience.call(self.study.tell, trial, state=TrialState.FAIL)
            self.failures += 1
            console.print(f"[trial {trial.number}] FAILED (invalid recipe): {exc}")
            return None
        path = log_dir / f"trial-{trial.number}.yaml"
        path.write_text(dump_recipe(recipe))
        tags = {TRIAL_TAG: f"{plan.study_name}/{trial.number}", STUDY_TAG: plan.study_name}
        command = [*run_command(path, [], self.options.nproc), "--parent-run-id", parent_id]
        for key, value in tags.items():
            command += ["--tag", f"{key}={value}"]
        env = link(plan.storage, plan.study_name, trial._trial_id, trial.number, self.options.wait)
        child = launch(command, devices, log_dir, f"trial-{trial.number}", env)
        console.print(f"[trial {trial.number}] started {shown(devices)}: {shown_values}")
        return LiveTrial(trial.number, trial._trial_id, child)

    def ended(self, live: LiveTrial, code: int, tracker: Tracker) -> None:
        """The child told the study how its trial went; a child that could not (it crashed) is failed here."""
        from optuna.trial import TrialState

        stdout, log = live.child.output()
        state = self.patience.call(self.storage.get_trial, live.trial_id).state
        if code == 0 and state in (TrialState.COMPLETE, TrialState.PRUNED):
            outcome = stdout.strip().splitlines()[-1] if stdout.strip() else state.name
        else:
            outcome = f"FAILED after {time.time() - live.child.started:.0f} s: {error_line(code, log)}"
            if state == TrialState.RUNNING:
                self.patience.call(self.storage.set_trial_user_attr, live.trial_id, "error", outcome[:500])
                self.patience.call(self.study.tell, live.number, state=TrialState.FAIL, skip_if_finished=True)
            for run in runs_with_tag(self.plan.tracking, TRIAL_TAG, f"{self.plan.study_name}/{live.number}"):
                if run.info.status == "RUNNING":  # died without ending its run (SIGKILL, out of memory)
                    mark_failed(self.plan.tracking, run.info.run_id)
            tracker.log_text(log[-20000:], f"tune/logs/trial-{live.number}.log")
        self.failures = self.failures + 1 if outcome.startswith("FAILED") else 0
        console.print(f"[trial {live.number}] {outcome} | {self.progress()}")
        with contextlib.suppress(ValueError):
            self.patience.call(_log_best, self.plan, self.study, tracker)
        self.waiting_said = False


def run_tune(plan: TunePlan, options: WorkerOptions | None = None) -> Any:
    """Run trials until the study has `plan.trials` finished; other workers may be running some of them."""
    return TuneWorker(plan, options or WorkerOptions()).run()
