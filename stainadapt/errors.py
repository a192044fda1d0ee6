"""The project's own exception types.

Every error a user can cause or act on is one of these, so the CLI can print a single
line (``error: ...``) and pick the exit code without a traceback:

* :class:`InputError` (exit code 2): bad input or usage -- a file that cannot be read,
  an unknown plugin, a bad option. The message names the file or plugin and what to do.
* :class:`RunFailure` (exit code 1): the input was fine but the work failed or was
  partial (some files in a folder could not be predicted, a run diverged).
"""

from __future__ import annotations

__all__ = ["StainadaptError", "InputError", "PluginError", "RunFailure", "ReportedInterrupt"]


class StainadaptError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1


class InputError(StainadaptError, ValueError):
    """Bad input or usage: the user can fix it. Exit code 2."""

    exit_code = 2


class PluginError(InputError):
    """Unknown plugin, bad spec option, or a plugin that failed to load."""


class RunFailure(StainadaptError):
    """The work itself failed or was only partly done. Exit code 1."""

    exit_code = 1


class ReportedInterrupt(KeyboardInterrupt):
    """Ctrl-C or SIGTERM that the engine has already explained (e.g. how to resume).

    The CLI exits with 130 without printing a second, vaguer "interrupted" line.
    """
