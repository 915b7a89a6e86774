"""First-writer-wins claims in a shared SQL database (PostgreSQL across machines, sqlite on one).

Workers that share a study or a sweep agree through one small table: `INSERT ... ON CONFLICT DO NOTHING` lets
exactly one of them own a key (a grid point, the parent MLflow run), whichever machine they run on.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from runner.tracking import create_run, delete_run
from schemas import UserError
from schemas.training import Tracking

TABLE = "metassl_claims"


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


def claim_parent_run(url: str, key: str, tracking: Tracking, run_name: str, tags: dict[str, str]) -> tuple[str, bool]:
    """The parent run of a shared study or sweep: (its run id, whether this worker created it).

    Each worker that finds `key` unclaimed creates a candidate run and claims `key` for it; the first claim wins and
    the losers delete their candidates, so the parent run exists exactly once."""
    existing = holder(url, key)
    if existing is not None:
        return existing, False
    candidate = create_run(tracking, run_name, tags)
    winner = claim(url, key, candidate)
    if winner != candidate:
        delete_run(tracking, candidate)
    return winner, winner == candidate


def redact(url: str) -> str:
    """The URL without its password, fit for logs and run tags."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
