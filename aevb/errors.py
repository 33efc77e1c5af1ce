"""Exceptions raised by aevb. Each message says what was expected and what was found.

One family per kind of mistake or fault; the ``aevb`` command prints the message (never a
traceback) and exits with :attr:`AevbError.exit_code`: 2 for a user's mistake (the
convention of ``argparse``), 1 when runs of a grid failed, 128 + the signal's number for an
interrupted run.
"""

import signal


class AevbError(Exception):
    """Base class of every error aevb raises on purpose."""

    #: the ``aevb`` command's exit status for this error
    exit_code = 2


class DataError(AevbError, ValueError):
    """Input data of the wrong shape, type, range or provenance (e.g. a failed checksum), or
    a data file that is not what it claims to be (the message names the file)."""


class ConfigError(AevbError, ValueError):
    """An unknown name, a value out of its range, or an inconsistent combination of settings
    (run specs, command-line options, grid configs: the message names the setting)."""


class ObjectiveError(AevbError, ValueError):
    """A (model, guide, objective) combination whose estimate would be silently wrong."""


class RunDirError(AevbError, OSError):
    """A run directory with a file missing, corrupt or unwritable; the message names the file
    and what is still intact."""


class RunLocked(RunDirError):
    """Another process (named by its pid and host) is training in the same run directory."""


class RunsFailed(AevbError):
    """Some runs of a grid failed: each is recorded with its error (``results.csv``, the
    report), the others finished; the ``aevb`` command exits with status 1."""

    exit_code = 1


class TrainingDiverged(AevbError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunInterrupted(AevbError):
    """Training was stopped by SIGINT or SIGTERM after finishing its step and writing a
    checkpoint; ``--resume`` continues it exactly."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        """130 for SIGINT, 143 for SIGTERM (the shell's 128 + signal number)."""
        return 128 + self.signum
