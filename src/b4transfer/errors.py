"""The library's exception types for problems a user can fix (bad config, data, paths).

The command line prints these as one line and exits with status 2; any other exception is a bug and
keeps its traceback. Each type also derives from the builtin a caller would expect (``ValueError``,
``TypeError``, ``FileNotFoundError``, ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "MissingDependencyError",
    "NotSupportedError",
    "RunDirTakenError",
    "UserError",
    "UserFileExistsError",
    "UserFileNotFoundError",
    "UserTypeError",
]


class UserError(ValueError):
    """A problem with the configuration or the input that the message tells the user how to fix."""


class UserTypeError(UserError, TypeError):
    """A config value or argument of the wrong kind."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A path given in the config does not exist."""


class UserFileExistsError(UserError, FileExistsError):
    """Writing would overwrite something the user made."""


class RunDirTakenError(UserFileExistsError):
    """The run directory already holds an earlier run."""


class NotSupportedError(UserError):
    """A task does not support the asked mode, export format or fine-tuning schedule."""


class MissingDependencyError(UserError, ImportError):
    """An optional package needed by the asked feature is not installed."""
