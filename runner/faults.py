"""Failures of the machine rather than of the recipe: a full disk, a read-only file."""

from __future__ import annotations

import errno

FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FULL_DISK_TEXT = ("database or disk is full", "no space left on device", "disk quota exceeded")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def disk_full(exc: BaseException) -> bool:
    """True for a full disk however it surfaces: OSError(ENOSPC), or SQLite's message through SQLAlchemy and MLflow."""
    for link in _chain(exc):
        if isinstance(link, OSError) and link.errno in FULL_DISK_ERRNOS:
            return True
        if any(text in str(link).lower() for text in FULL_DISK_TEXT):
            return True
    return False


def full_disk_location(exc: BaseException) -> str:
    for link in _chain(exc):
        if isinstance(link, OSError) and link.filename:
            return f"writing {link.filename}"
    return "writing to the tracking store"


def describe_os_error(exc: BaseException) -> str | None:
    """One line for a full disk or a file that cannot be written; None for anything else."""
    if disk_full(exc):
        return f"no space left on the disk ({full_disk_location(exc)}); free some space and try again"
    if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno == errno.EROFS):
        where = exc.filename or "a file"
        return f"cannot write {where} ({exc.strerror}); choose a writable location or fix its permissions"
    return None
