"""Is a RUNNING run's process still alive? Its host and pid tags answer on the same host."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from runner.tracking.names import HOST_TAG, PID_START_TAG, PID_TAG
from schemas import UserError


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_tags() -> dict[str, str]:
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_START_TAG: _process_start(pid) or ""}


def is_dead(run: Any) -> bool:
    """A RUNNING run whose process (on this host) is gone. Runs of other hosts cannot be checked: not dead."""
    tags = run.data.tags
    if run.info.status != "RUNNING" or tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG):
        return False
    pid = int(tags[PID_TAG])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, owned by another user
    started = _process_start(pid)
    return bool(tags.get(PID_START_TAG)) and started is not None and started != tags[PID_START_TAG]


def shown_status(run: Any) -> str:
    return "DEAD" if is_dead(run) else run.info.status


def refuse_live_run(run: Any) -> None:
    """Resuming a run whose process still runs would have two processes write one run."""
    tags = run.data.tags
    alive_here = tags.get(HOST_TAG) == socket.gethostname() and not is_dead(run)
    if run.info.status == "RUNNING" and tags.get(PID_TAG) and alive_here:
        raise UserError(
            f"run {run.info.run_id} is still running (pid {tags[PID_TAG]}); stop it first (Ctrl-C or kill"
            f" {tags[PID_TAG]}), then resume"
        )
