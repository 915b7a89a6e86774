"""A run's writes to a tracking server, kept through the server's outages.

Each write is tried at once, with one short HTTP try (MLflow's own client would retry a dead server for minutes and
then raise). While the server does not answer, writes queue in order, artifacts as files in the run's local folder,
and training goes on; the queue is sent when the server answers again. Each metric point keeps its timestamp, so a
write that reached the server before its answer was lost is stored once: MLflow drops exact duplicates.

MLflow's own asynchronous logging (`log_batch(..., synchronous=False)`) is no help here: a batch whose HTTP retries
run out is dropped with an error in the log, and only metrics, params and tags go through it, not artifacts.

Past `tracking.server_wait` seconds of outage the run stops with `TrackingOutage`: its unsent writes are saved in
the local folder, next to its checkpoint, and `metassl run --resume RUN_ID` sends them before it goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from runner.tracking.store import quick_http_requests
from schemas import UserError

console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

PENDING_GLOB = "pending-*.json"  # one file per process that stopped with writes unsent
WRITE_TIMEOUT_SECONDS = 30  # per socket operation: a large checkpoint uploads for longer, but never stalls this long
FIRST_RETRY_SECONDS, LAST_RETRY_SECONDS = 2.0, 30.0  # the backoff between tries while the server is down
NOTE_EVERY_SECONDS = 60.0  # how often a still-waiting run says so


def local_folder(run_id: str) -> Path:
    """Where a run on a tracking server keeps its checkpoint and its unsent writes, on this machine."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
    return Path(state) / "metassl" / "runs" / run_id


class TrackingOutage(UserError):
    """The tracking server stayed down past `tracking.server_wait`; the run's work is safe in its local folder."""


@dataclass
class Write:
    """One call to the server: `items` are [key, value, timestamp, step] metrics, [key, value] params or tags, or
    one [file, artifact_path] artifact. `owned` artifacts are copies in the spool folder, deleted once sent."""

    kind: Literal["metrics", "params", "tags", "artifact"]
    items: list[list[Any]]
    owned: bool = False
    destination: str = field(default="")  # an artifact's path in the run: a newer write to it replaces a queued one


def perform(client: Any, run_id: str, write: Write) -> None:
    from mlflow.entities import Metric, Param, RunTag

    if write.kind == "metrics":
        client.log_batch(run_id, metrics=[Metric(*item) for item in write.items])
    elif write.kind == "params":
        client.log_batch(run_id, params=[Param(*item) for item in write.items])
    elif write.kind == "tags":
        client.log_batch(run_id, tags=[RunTag(*item) for item in write.items])
    else:
        [(path, artifact_path)] = write.items
        client.log_artifact(run_id, path, artifact_path)


def is_outage(exc: BaseException) -> bool:
    """The server did not answer, or answered that it cannot serve now (5xx: its database is down, say)."""
    import requests
    from mlflow.exceptions import RestException

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.exceptions.RequestException):
            return True
        if isinstance(seen, RestException) and seen.get_http_status_code() >= 500:
            return True
        if "API request to" in str(seen) and "failed with exception" in str(seen):  # MLflow's wrapper of the above
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "timed out", "Read timed out", "Remote end closed"):
        if marker in text:
            return marker.lower()
    return (text.splitlines()[0] if text else type(exc).__name__)[:120]


class Outbox:
    """The queue of one run's writes to a tracking server, and the outage it is riding out (if any)."""

    def __init__(self, client: Any, run_id: str, uri: str, wait_seconds: float) -> None:
        self.client, self.run_id, self.uri, self.wait_seconds = client, run_id, uri, wait_seconds
        self.folder = local_folder(run_id)
        self.spool_root = self.folder / "spool" / str(os.getpid())  # workers sharing a parent run spool apart
        self.pending: deque[Write] = deque(self._saved())
        self.local_files: dict[str, Path] = {}  # files of the run kept in its folder (its checkpoint), by destination
        self.down_since: float | None = None
        self.next_try = 0.0
        self.retry_seconds = FIRST_RETRY_SECONDS
        self.noted_at = 0.0

    def _saved(self) -> list[Write]:
        """Writes earlier processes of this run could not send (they stopped during an outage)."""
        writes: list[Write] = []
        for saved in sorted(self.folder.glob(PENDING_GLOB)):
            with contextlib.suppress(FileNotFoundError):  # another worker of a shared parent run took it
                text = saved.read_text()
                saved.unlink()
                writes += [Write(**entry) for entry in json.loads(text)]
        return writes

    # --- queueing --------------------------------------------------------------------------------------------------

    def send(self, write: Write) -> None:
        if write.kind == "artifact" and not write.owned:
            self.local_files[write.destination] = Path(write.items[0][0])
        if write.destination:
            for queued in [w for w in self.pending if w.destination == write.destination]:
                self.pending.remove(queued)
                self._discard(queued)
        self.pending.append(write)
        self.flush()

    def spool(self, name: str) -> Path:
        """A fresh file path in the run's folder for an artifact's content, kept until it is sent."""
        folder = self.spool_root / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    def _discard(self, write: Write) -> None:
        if write.kind == "artifact" and write.owned:
            shutil.rmtree(Path(write.items[0][0]).parent, ignore_errors=True)

    # --- sending ---------------------------------------------------------------------------------------------------

    def flush(self) -> None:
        """Send what is queued, in order; during an outage only when the next try is due. Past the wait, stop."""
        if self.down_since is not None and time.monotonic() < self.next_try:
            self._check_wait()
            return
        while self.pending:
            try:
                with quick_http_requests(WRITE_TIMEOUT_SECONDS):
                    perform(self.client, self.run_id, self.pending[0])
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self._still_down(exc)
                return
            self._discard(self.pending.popleft())
        if self.down_since is not None:
            console.print(f"tracking server {self.uri} answers again after {self._down_for():.0f} s: queued logs sent")
            self.down_since, self.retry_seconds = None, FIRST_RETRY_SECONDS

    def drain(self) -> None:
        """Wait until everything queued is sent (the end of a run), or stop with `TrackingOutage` past the wait."""
        from runner.run import interrupts

        self.flush()
        while self.pending:
            if interrupts.requested():
                raise interrupts.Interrupted(f"stopped while waiting for the tracking server {self.uri}")
            time.sleep(max(0.0, min(self.next_try - time.monotonic(), 1.0)))
            self.flush()

    def is_down(self) -> bool:
        return self.down_since is not None

    def _down_for(self) -> float:
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    def _still_down(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = self.noted_at = now
            console.print(
                f"tracking server {self.uri} does not answer ({_reason(exc)}): training goes on and its logs are"
                f" queued; waiting up to {self.wait_seconds:.0f} s (tracking.server_wait) for the server"
            )
        elif now - self.noted_at >= NOTE_EVERY_SECONDS:
            self.noted_at = now
            console.print(
                f"tracking server {self.uri} still down after {self._down_for():.0f} s: {len(self.pending)} writes"
                f" queued; giving up at {self.wait_seconds:.0f} s"
            )
        self.next_try = now + self.retry_seconds
        self.retry_seconds = min(self.retry_seconds * 2, LAST_RETRY_SECONDS)
        self._check_wait()

    def _check_wait(self) -> None:
        if self._down_for() > self.wait_seconds:
            raise TrackingOutage(self._gave_up())

    def _gave_up(self) -> str:
        checkpoint = next((path for path in self.local_files.values() if path.suffix == ".pt"), None)
        saved = f"its last checkpoint is {checkpoint}" if checkpoint else "it had no checkpoint yet"
        return (
            f"the tracking server {self.uri} did not answer for {self._down_for():.0f} s (tracking.server_wait"
            f" {self.wait_seconds:.0f}): run {self.run_id} stopped; {saved}, and {len(self.pending)} unsent logs wait"
            f" in {self.folder}; once the server answers, continue with: metassl run --resume {self.run_id}"
            f" --tracking-uri {self.uri} (until then the server shows the run RUNNING, and `metassl runs` DEAD)"
        )

    # --- the end ---------------------------------------------------------------------------------------------------

    def close(self, ended: bool) -> None:
        """Keep what was not sent for `--resume`. With nothing left, the spooled files go; once the run has `ended`
        (its final status is stored), its local checkpoint goes too: the server holds it all."""
        if self.pending:
            self.folder.mkdir(parents=True, exist_ok=True)
            saved = self.folder / PENDING_GLOB.replace("*", str(os.getpid()))
            saved.write_text(json.dumps([asdict(write) for write in self.pending]))
            return
        shutil.rmtree(self.spool_root, ignore_errors=True)
        if ended and self.folder.exists():
            for entry in self.folder.iterdir():
                if entry.name != "spool" and not entry.match(PENDING_GLOB):
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        spool = self.spool_root.parent  # with the spool folders of earlier processes, emptied as their writes went
        for empty in [*(spool.iterdir() if spool.exists() else []), spool, self.folder]:
            with contextlib.suppress(OSError):
                empty.rmdir()
