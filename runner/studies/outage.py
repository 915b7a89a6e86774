"""Riding out a database outage: a storage call is retried with backoff for up to a set time, said in one line.

Shared by tune workers, their trial children and sweep workers. Past the limit the worker stops with one line;
its trials are left to Optuna's heartbeat (another worker, or the next invocation, fails and re-queues them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from rich.console import Console

from schemas import UserError

DEFAULT_WAIT = 300.0  # seconds a worker waits for its database before it gives up
T = TypeVar("T")
console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


class StorageOutage(UserError):
    """The database stayed unreachable past the limit."""


def is_outage(exc: BaseException) -> bool:
    """A lost connection (the server stopped, restarted or is unreachable), not a bad query."""
    import sqlalchemy

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reason(exc: BaseException) -> str:
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, __import__("sqlalchemy").exc.DBAPIError):
        seen = seen.__cause__ or seen.__context__
    text = str(getattr(seen, "orig", None) or seen or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Patience:
    """Calls through the database, each retried while it is down, for up to `limit` seconds per outage."""

    def __init__(self, what: str, limit: float = DEFAULT_WAIT, longest_pause: float = 10.0) -> None:
        self.what = what
        self.limit = limit
        self.longest_pause = longest_pause
        self.up_since = time.monotonic()  # when the database last came back (or the worker started)

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        down_since: float | None = None
        pause = 0.5
        while True:
            try:
                result = function(*args, **kwargs)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                    console.print(
                        f"{self.what}: the database is unreachable ({_reason(exc)}); retrying for up to "
                        f"{self.limit:.0f} s"
                    )
                if now - down_since >= self.limit:
                    raise StorageOutage(
                        f"{self.what}: the database stayed unreachable for {self.limit:.0f} s ({_reason(exc)}); "
                        "stopped. Its running trials or grid points are handed back once their heartbeat expires: "
                        "run the same command again when the database is back"
                    ) from None
                time.sleep(min(pause, self.longest_pause, self.limit - (now - down_since)))
                pause *= 2
                continue
            if down_since is not None:
                self.up_since = time.monotonic()
                console.print(f"{self.what}: the database is back after {self.up_since - down_since:.0f} s")
            return result

    def settled(self, seconds: float) -> bool:
        """Whether the database has answered for `seconds` since the last outage: only then may this worker judge
        another's heartbeat stale (it too was cut off, and may not have renewed it yet)."""
        return time.monotonic() - self.up_since >= seconds
