"""Loading foundation-model weights from a local directory or a hub id, with one-line errors offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from schemas.errors import UserError

T = TypeVar("T")


def offline_error(model: str, field: str = "generator.model") -> UserError:
    return UserError(
        f"{field}: cannot load '{model}' offline (not a local directory and not in the Hugging Face cache);"
        f" allow the download with -o generator.local_files_only=false, or point {field} at a local copy"
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_pretrained(cls: type[T], model: str, *, subfolder: str | None, local_files_only: bool, **kwargs: Any) -> T:
    """`cls.from_pretrained(model, subfolder=...)`, turning every way it can fail into one UserError line."""
    local = Path(model).expanduser()
    if local.is_dir():
        source = str(local)
        where = local / subfolder if subfolder else local
        if not where.is_dir():
            raise UserError(f"generator.model: '{model}' has no '{subfolder}' folder (expected a diffusers layout)")
    else:
        source = model
    try:
        return cls.from_pretrained(  # type: ignore[attr-defined]
            source, subfolder=subfolder, local_files_only=local_files_only, **kwargs
        )
    except (OSError, ValueError) as exc:
        if local.is_dir():
            part = f"{subfolder}/ of " if subfolder else ""
            raise UserError(f"generator.model: cannot load {part}'{model}': {_reason(exc)}") from None
        if local_files_only:
            raise offline_error(model) from None
        raise UserError(f"generator.model: cannot download '{model}': {_reason(exc)}") from None
