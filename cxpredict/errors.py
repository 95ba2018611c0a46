"""The failures cxpredict reports, one class per kind, each with its own exit code.

Every message says what was wrong, what was received and how to fix it. The command line
turns these exceptions into a message and the class's ``exit_code``; nothing else in the
package exits the process.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CxpredictError(Exception):
    """Base class of every failure the package reports on purpose."""

    exit_code: int = 1


class ConfigError(CxpredictError):
    """The config file is missing, unreadable, or describes an impossible project."""

    exit_code = 3


class ExtensionError(ConfigError, ValueError):
    """A feature extension (SQL or Python) that cannot be computed as written: the message
    names the feature and what to change."""

    exit_code = 3


class DataError(CxpredictError):
    """A table cannot be read as the contract requires (missing file or column, bad format).

    Parameters
    ----------
    message
        What was wrong, what was found and the fix.
    table
        The canonical table name (``orders``, ``interactions``, ``customers``).
    column
        The canonical column concerned, if any.
    """

    exit_code = 4

    def __init__(self, message: str, *, table: str | None = None, column: str | None = None):
        super().__init__(message)
        self.table = table
        self.column = column


class ValidationFailed(CxpredictError):
    """Too many rows of a table were rejected; the report and rejects were still written."""

    exit_code = 5

    def __init__(self, message: str, *, table: str, rejected: int, read: int):
        super().__init__(message)
        self.table = table
        self.rejected = rejected
        self.read = read


class ModelNotFound(CxpredictError):
    """No trained or registered model exists for a task."""

    exit_code = 6


class IneligibleTask(CxpredictError):
    """A task cannot be trained on the data as of the requested date (too few examples)."""

    exit_code = 7


class FeatureMismatch(CxpredictError):
    """A model was trained on other features than the ones built for scoring."""

    exit_code = 8


class TaskMismatch(CxpredictError):
    """A model was trained for another definition of its task than the config's."""

    exit_code = 8


class DriftFailed(CxpredictError):
    """Scoring input drifted beyond the configured threshold from the training reference."""

    exit_code = 9


class OutputLocked(CxpredictError):
    """Another run is writing to the same output directory."""

    exit_code = 10


class PromotionRefused(CxpredictError):
    """The challenger is not better than the champion on the same backtest cutoffs and data."""

    exit_code = 11


class OutOfMemory(CxpredictError):
    """A result would need more memory than the machine has available."""

    exit_code = 12


class RegistryUnavailable(CxpredictError):
    """The MLflow tracking store cannot be reached or read (server down, wrong address)."""

    exit_code = 14


class OutputError(CxpredictError):
    """An output cannot be written where it was asked for (a folder, no permission, full)."""

    exit_code = 13


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """Return the candidate closest to ``name`` (case-insensitive), or ``None``."""
    pool = list(candidates)
    lowered = {c.lower(): c for c in pool}
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)
    return lowered[match[0]] if match else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A ``"; did you mean 'x'?"`` suffix for an error message, or an empty string."""
    match = closest(name, candidates)
    return f"; did you mean {match!r}?" if match else ""
