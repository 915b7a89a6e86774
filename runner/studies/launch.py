"""One way to launch a `metassl run` child for sweeps and tuning: its own devices, its own logs, dies with us.

A node's GPUs are handed out as slots of `nproc` devices each; a child holds its slot while it lives and gives it
back when it exits (or dies), so no two live children share a device. On a machine without CUDA devices (and
without `--devices`) children get no device assignment at all.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from schemas import UserError

VISIBLE = "CUDA_VISIBLE_DEVICES"
PR_SET_PDEATHSIG = 1


def parse_devices(text: str) -> list[str]:
    """`0,1,2,3` (CUDA_VISIBLE_DEVICES ids or GPU UUIDs; an id given twice is two slots on one GPU)."""
    devices = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not device for device in devices):
        raise UserError(f"--devices '{text}': give device ids separated by commas, e.g. --devices 0,1,2,3")
    return devices


def visible_devices() -> list[str]:
    """The devices this process may use: its CUDA_VISIBLE_DEVICES if set, else every CUDA device torch sees."""
    inherited = os.environ.get(VISIBLE)
    if inherited is not None:
        return [part.strip() for part in inherited.split(",") if part.strip() and part.strip() != "-1"]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


@dataclass
class Devices:
    """Disjoint sets of `per_child` devices for the live children; None when children get no assignment."""

    devices: list[str] | None
    per_child: int = 1
    taken: set[int] = field(default_factory=set)  # indices into `devices`

    @property
    def slots(self) -> int | None:
        return None if self.devices is None else len(self.devices) // self.per_child

    def take(self) -> list[str] | None:
        """A free set of devices ([] without assignment); None when every device is in use."""
        if self.devices is None:
            return []
        free = [index for index in range(len(self.devices)) if index not in self.taken]
        if len(free) < self.per_child:
            return None
        chosen = free[: self.per_child]
        self.taken.update(chosen)
        return [self.devices[index] for index in chosen]

    def give_back(self, devices: list[str]) -> None:
        for device in devices:
            index = next(i for i in sorted(self.taken) if self.devices and self.devices[i] == device)
            self.taken.discard(index)


def plan_devices(option: str | None, jobs: int, nproc: int) -> Devices:
    """`--devices` (default: all visible) split into slots of `--nproc`; `--jobs` may not exceed the slots."""
    devices = parse_devices(option) if option is not None else visible_devices() or None
    if devices is None:
        if nproc > 1:
            raise UserError(f"--nproc {nproc}: no CUDA device is visible; give the devices with --devices 0,1,...")
        return Devices(None)
    if len(devices) < nproc:
        raise UserError(f"--nproc {nproc}: each child needs {nproc} devices and only {len(devices)} are given")
    allocator = Devices(devices, nproc)
    if jobs > (allocator.slots or 0):
        raise UserError(
            f"--jobs {jobs}: only {allocator.slots} children fit on the devices {','.join(devices)} at {nproc} "
            "each; lower --jobs, or list a device twice to share it (e.g. --devices 0,0,1,1)"
        )
    return allocator


@dataclass
class WorkerOptions:
    """How a sweep or tune worker runs its children, and how long it waits out faults."""

    jobs: int = 1
    devices: Devices | None = None
    nproc: int = 1
    wait: float = 300.0  # seconds a database outage is ridden out
    heartbeat: float = 10.0  # seconds between heartbeats (trials) or lease renewals (grid points)


def shown(devices: list[str]) -> str:
    return f"on device {','.join(devices)}" if devices else "on this machine's default device"


def run_command(recipe: Path, overrides: list[str], nproc: int) -> list[str]:
    """`metassl run RECIPE -o ...`, spanning `nproc` processes when asked (`metassl run --nproc`)."""
    command = [sys.executable, "-m", "runner.cli", "run", str(recipe)]
    for override in overrides:
        command += ["-o", override]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    return command


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the launching process dies (a killed worker takes its runs along;
    the runs end KILLED rather than running on unseen)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: children outlive a killed worker, as before
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Launched:
    """A live child: its process, the devices it holds, and where its output goes."""

    process: subprocess.Popen[bytes]
    devices: list[str]
    started: float
    stdout: Path
    log: Path

    def output(self) -> tuple[str, str]:
        return self.stdout.read_text(errors="replace"), self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM, then SIGKILL if it does not end: its run ends KILLED, as after Ctrl-C."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def launch(
    command: list[str], devices: list[str], log_dir: Path, name: str, env: dict[str, str] | None = None
) -> Launched:
    """Start a child on `devices` (none: this process's own devices), its output in LOG_DIR/NAME.{out,log}."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if devices:
        environment[VISIBLE] = ",".join(devices)
    stdout, log = log_dir / f"{name}.out", log_dir / f"{name}.log"
    with open(stdout, "wb") as out, open(log, "wb") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=environment, preexec_fn=_die_with_parent)
    return Launched(process, devices, time.time(), stdout, log)


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
