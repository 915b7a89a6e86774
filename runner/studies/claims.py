"""First-writer-wins claims in a shared SQL database (PostgreSQL across machines, sqlite on one).

Workers that share a study or a sweep agree through small tables: `INSERT ... ON CONFLICT DO NOTHING` lets
exactly one of them own a key, whichever machine they run on. A claim (the parent MLflow run) is for good; a
lease (a sweep's grid point) lasts while its worker renews it, and is taken over once its holder is gone: the
lease expired, or the holder's pid is dead on this host. Lease times are the workers' clocks (keep them in sync).
"""

from __future__ import annotations

import functools
import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.tracking import create_run, delete_run
from schemas import UserError
from schemas.training import Tracking

TABLE = "metassl_claims"
LEASES = "metassl_leases"
KEPT = math.inf  # the lease of a finished grid point: never expires


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def database_url(url: str) -> str:
    """`postgresql://` names a driver per SQLAlchemy version (psycopg 3 from 2.1); the team extra ships psycopg2."""
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None:
            return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


@functools.cache
def _engine(url: str) -> Any:
    import sqlalchemy

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = sqlalchemy.create_engine(url, connect_args={"timeout": 60})
    else:
        engine = sqlalchemy.create_engine(database_url(url), pool_pre_ping=True)
    try:
        with engine.begin() as connection:
            connection.execute(
                sqlalchemy.text(f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, owner TEXT NOT NULL)")
            )
            connection.execute(
                sqlalchemy.text(
                    f"CREATE TABLE IF NOT EXISTS {LEASES} "
                    "(key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires DOUBLE PRECISION NOT NULL)"
                )
            )
    except sqlalchemy.exc.OperationalError as exc:
        raise UserError(f"--storage: cannot reach {redact(url)} ({str(exc.orig).strip().splitlines()[0]})") from None
    except sqlalchemy.exc.IntegrityError:  # two workers created the table at once; it exists now
        pass
    return engine


def claim(url: str, key: str, owner: str) -> str:
    """Claim `key` for `owner` unless someone holds it already; return whoever holds it now."""
    import sqlalchemy

    with _engine(url).begin() as connection:
        connection.execute(
            sqlalchemy.text(f"INSERT INTO {TABLE} (key, owner) VALUES (:key, :owner) ON CONFLICT (key) DO NOTHING"),
            {"key": key, "owner": owner},
        )
        return connection.execute(
            sqlalchemy.text(f"SELECT owner FROM {TABLE} WHERE key = :key"), {"key": key}
        ).scalar_one()


def holder(url: str, key: str) -> str | None:
    import sqlalchemy

    with _engine(url).begin() as connection:
        return connection.execute(sqlalchemy.text(f"SELECT owner FROM {TABLE} WHERE key = :key"), {"key": key}).scalar()


def release(url: str, key: str, owner: str) -> None:
    """Give a claim back (a failed or interrupted grid point), so that a later invocation runs it again."""
    import sqlalchemy

    with _engine(url).begin() as connection:
        connection.execute(
            sqlalchemy.text(f"DELETE FROM {TABLE} WHERE key = :key AND owner = :owner"), {"key": key, "owner": owner}
        )


def _direct(function: Callable[..., Any], *args: Any) -> Any:
    return function(*args)


def claim_parent_run(
    url: str,
    key: str,
    tracking: Tracking,
    run_name: str,
    tags: dict[str, str],
    call: Callable[..., Any] = _direct,
) -> tuple[str, bool]:
    """The parent run of a shared study or sweep: (its run id, whether this worker created it).

    Each worker that finds `key` unclaimed creates a candidate run and claims `key` for it; the first claim wins and
    the losers delete their candidates, so the parent run exists exactly once. `call(function, *args)` runs each
    database call (a sweep's retries through an outage)."""
    existing = call(holder, url, key)
    if existing is not None:
        return existing, False
    candidate = create_run(tracking, run_name, tags)
    winner = call(claim, url, key, candidate)
    if winner != candidate:
        delete_run(tracking, candidate)
    return winner, winner == candidate


def worker_name(tag: str) -> str:
    """`host:pid:tag`: whoever reads it on the same host can tell whether the worker still lives."""
    return f"{socket.gethostname()}:{os.getpid()}:{tag}"


def is_gone(owner: str, expires: float, now: float | None = None) -> bool:
    """A lease's holder is gone: its lease expired, or it ran on this host and its pid is dead."""
    if expires < (time.time() if now is None else now):
        return True
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def take_lease(url: str, key: str, owner: str, seconds: float) -> tuple[bool, str | None]:
    """(whether `owner` holds `key` now, the gone holder it took over from, if any)."""
    import sqlalchemy

    expires = time.time() + seconds
    with _engine(url).begin() as connection:
        connection.execute(
            sqlalchemy.text(
                f"INSERT INTO {LEASES} (key, owner, expires) VALUES (:key, :owner, :expires) "
                "ON CONFLICT (key) DO NOTHING"
            ),
            {"key": key, "owner": owner, "expires": expires},
        )
        held, until = connection.execute(
            sqlalchemy.text(f"SELECT owner, expires FROM {LEASES} WHERE key = :key"), {"key": key}
        ).one()
        if held == owner:
            return True, None
        if not is_gone(held, until):
            return False, None
        taken = connection.execute(
            sqlalchemy.text(
                f"UPDATE {LEASES} SET owner = :owner, expires = :expires WHERE key = :key AND owner = :held"
            ),
            {"key": key, "owner": owner, "expires": expires, "held": held},
        )
        return taken.rowcount == 1, held if taken.rowcount == 1 else None


def renew_leases(url: str, keys: list[str], owner: str, seconds: float) -> None:
    import sqlalchemy

    with _engine(url).begin() as connection:
        for key in keys:
            connection.execute(
                sqlalchemy.text(
                    f"UPDATE {LEASES} SET expires = :expires WHERE key = :key AND owner = :owner AND expires < :kept"
                ),
                {"key": key, "owner": owner, "expires": time.time() + seconds, "kept": KEPT},
            )


def keep_lease(url: str, key: str, owner: str) -> None:
    """A finished grid point stays with its worker for good."""
    renew_leases(url, [key], owner, KEPT)


def drop_lease(url: str, key: str, owner: str) -> None:
    """Give a lease back (a failed or interrupted grid point), so that another worker or a later run takes it."""
    import sqlalchemy

    with _engine(url).begin() as connection:
        connection.execute(
            sqlalchemy.text(f"DELETE FROM {LEASES} WHERE key = :key AND owner = :owner"), {"key": key, "owner": owner}
        )


def redact(url: str) -> str:
    """The URL without its password, fit for logs and run tags."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
