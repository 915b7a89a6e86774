"""User-facing errors: one line, naming the field and the fix."""

from pathlib import Path


class UserError(Exception):
    """Bad input from the user. The CLI prints it as one line and exits with code 2."""


class RecipeError(UserError):
    """The recipe cannot be read or does not validate."""


def display(path: Path) -> str:
    """A path as the user would write it, with the home directory folded back to ~."""
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home) :] if text == home or text.startswith(home + "/") else text
