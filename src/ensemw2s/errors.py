"""Every user-facing error of the project, and its exit code: the one place that maps one to the other.

A user-facing error is printed as one ``error: ...`` line and the process exits non-zero; anything else is a
bug and keeps its traceback. The CLI (``ensemw2s ...``), every step (``python -m ensemw2s.steps.<step>``)
and asset setup all go through :func:`user_error_code`.

- exit 2: the command line or the config (:class:`ConfigError`), before any compute starts;
- exit 130: interrupted (Ctrl-C);
- exit 1: data, models, assets, training that diverged, object storage, a stored artifact, the KFP server or Docker.

This module imports nothing of the project, so every other module can import it.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional

EXIT_CONFIG = 2
EXIT_OTHER = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd command


class UserError(Exception):
    """Base of the errors a user can fix; ``exit_code`` is what the process exits with."""

    exit_code = EXIT_OTHER


class ConfigError(UserError, ValueError):
    """A bad config key or value, or a bad command-line flag; the message names the key and the allowed values."""

    exit_code = EXIT_CONFIG


class DataError(UserError, ValueError):
    """Bad data: the message names the file and the row id (or line number)."""


class AssetError(UserError, RuntimeError):
    """A problem with the models/data assets (missing, corrupt, unknown name)."""


class ModelError(UserError, RuntimeError):
    """A model folder that cannot be loaded (missing or truncated weights, unknown name)."""


class TrainingError(UserError, RuntimeError):
    """Training that cannot give a usable model (a non-finite loss: the learning rate or the data); the step
    stops and saves nothing."""


class StorageError(UserError, RuntimeError):
    """The object store cannot be reached or refused a request; the message names the URI."""


class MissingObjectError(StorageError):
    """An artifact that is not in the object store; the message names the run, step and URI."""


class CorruptArtifactError(StorageError):
    """An artifact whose bytes do not match its manifest (size or checksum)."""


class S3ServerError(StorageError):
    """The embedded S3 server (SeaweedFS) could not be found, started or stopped; the message says why."""


class ClusterError(UserError, RuntimeError):
    """A problem with the KFP server, Docker or a stored run, in one line."""


def user_error_code(exc: BaseException) -> Optional[int]:
    """Exit code of a user-facing error (the caller prints one ``error:`` line), None for a bug (traceback).

    A missing local file (FileNotFoundError) is a user-facing error too (exit 1)."""
    if isinstance(exc, UserError):
        return exc.exit_code
    if isinstance(exc, FileNotFoundError):
        return EXIT_OTHER
    return None


def call_reporting_user_errors(fn: Callable[[], Optional[int]]) -> int:
    """Run ``fn``; its return value (None = 0) is the exit code. A user-facing error prints one ``error:`` line
    on stderr and gives its exit code; any other exception (a bug) propagates with its traceback."""
    try:
        return fn() or 0
    except KeyboardInterrupt:  # Ctrl-C: one line and 130, not a traceback (`ensemw2s run` says how to resume)
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - user-facing errors become one line; anything else is re-raised
        code = user_error_code(exc)
        if code is None:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return code
