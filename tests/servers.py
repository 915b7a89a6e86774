"""Real servers for the team tests: a PostgreSQL cluster and an `mlflow server` on it, each on 127.0.0.1.

Started once per test session and stopped afterwards. No mocks: if PostgreSQL is not installed the tests fail
(scripts/install.sh installs it), they do not skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest


class Server(NamedTuple):
    uri: str  # http://127.0.0.1:PORT
    artifacts: Path  # the server's --artifacts-destination (to check where artifacts landed)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _postgres_bin() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not versions:
        pytest.fail("PostgreSQL is not installed (no initdb): apt-get install postgresql, as scripts/install.sh does")
    return versions[-1].parent


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class Cluster(NamedTuple):
    """A running PostgreSQL cluster that a test may really stop and start again (outages)."""

    url: str  # postgresql+psycopg2://postgres@127.0.0.1:PORT (+ `/db`)
    bindir: Path
    data: Path
    options: str
    log: Path

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.data), *args]
        return subprocess.run(_as_postgres(command), capture_output=True, text=True)

    def stop(self) -> None:
        stopped = self.pg_ctl("-m", "fast", "-w", "stop")
        assert stopped.returncode == 0, stopped.stderr

    def start(self) -> None:
        started = self.pg_ctl("-o", self.options, "-l", str(self.log), "-w", "start")
        if started.returncode != 0:
            pytest.fail(f"PostgreSQL did not start: {started.stderr}{self.log.read_text()[-3000:]}")


_clusters: dict[str, Cluster] = {}


def cluster_of(url: str) -> Cluster:
    """The cluster behind a `postgres` fixture's URL, to stop and start it (outages)."""
    return _clusters[url]


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A fresh PostgreSQL cluster with the databases `mlflow` and `optuna`; yields a URL prefix
    `postgresql+psycopg2://postgres@127.0.0.1:PORT` (+ `/db`)."""
    import sqlalchemy

    bindir = _postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="metassl-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"]),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    cluster = Cluster(f"postgresql+psycopg2://postgres@127.0.0.1:{port}", bindir, data, options, root / "log")
    cluster.start()
    engine = sqlalchemy.create_engine(f"{cluster.url}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        for name in ("mlflow", "optuna"):
            connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    _clusters[cluster.url] = cluster
    try:
        yield cluster.url
    finally:
        cluster.pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def start_mlflow(backend: str, artifacts: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`mlflow server --serve-artifacts` on `backend` at 127.0.0.1:`port`, answering `/health` when this returns."""
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend,
        "--serve-artifacts", "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent, start_new_session=True
        )
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_mlflow(process)
            pytest.fail(f"mlflow server did not start: {log.read_text()[-3000:]}")
        time.sleep(0.5)


def stop_mlflow(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as an operator stops it; SIGKILL if it does not go within 30 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def create_database(postgres: str, name: str) -> str:
    """A fresh database on the test cluster; its URL."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"{postgres}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{postgres}/{name}"


@pytest.fixture(scope="session")
def mlflow_server(postgres: str) -> Iterator[Server]:
    """`mlflow server --serve-artifacts` on the PostgreSQL `mlflow` database."""
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="metassl-mlflow-server-"))
    process = start_mlflow(f"{postgres}/mlflow", root / "artifacts", port, root / "server.log")
    try:
        yield Server(f"http://127.0.0.1:{port}", root / "artifacts")
    finally:
        stop_mlflow(process)
        shutil.rmtree(root, ignore_errors=True)
