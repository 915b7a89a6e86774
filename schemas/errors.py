"""User-facing errors: one line, naming the field and the fix."""


class UserError(Exception):
    """Bad input from the user. The CLI prints it as one line and exits with code 2."""


class RecipeError(UserError):
    """The recipe cannot be read or does not validate."""
