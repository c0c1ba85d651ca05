"""Errors the CLI turns into a one-line message and exit code 2 (no traceback).

Anything a user can fix (a name, a flag, a file) raises :class:`UserError`; the message
must say what is wrong *and* how to fix it. Everything else is a bug or a failed trial.
"""


class UserError(Exception):
    """A problem with the user's input or environment, fixable without touching code."""


class UnknownNameError(UserError):
    """A plugin, model or preset name that is not registered."""


class DataNotFoundError(UserError):
    """A test set or weights file that is not where we looked."""


class ChecksumError(UserError):
    """A file whose checksum does not match the pinned value."""


def first_validation_error(exc: Exception) -> str:
    """The first problem of a pydantic ValidationError as "where: what" (a one-line message part)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    err = errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "value"
    return f"{where}: {err['msg'].removeprefix('Value error, ')}"
