"""What a feature family is: its catalogue entries, its requests to the engine, its formulas."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from cxpredict.config import FeaturesConfig
from cxpredict.features.engine import Availability, Block, Request
from cxpredict.features.vocabulary import Vocabulary


@dataclass(frozen=True)
class FeatureDef:
    """One feature as the catalogue shows it.

    Parameters
    ----------
    name
        The column name (snake_case, stable).
    family
        The family computing it.
    description
        What it measures, in words a marketer understands.
    unit
        ``days``, ``orders``, ``currency``, ``share``, ``flag``, ...
    reason
        A sentence formatted with the customer's feature row, e.g.
        ``"no order for {days_since_last_order:.0f} days"``.
    available
        Whether the project's data allow it.
    why_not
        Why it is unavailable (the missing table or column), or ``""``.
    """

    name: str
    family: str
    description: str
    unit: str
    reason: str
    available: bool = True
    why_not: str = ""


@dataclass(frozen=True)
class Context:
    """What every family needs to know: settings, vocabulary and the available data."""

    settings: FeaturesConfig
    vocabulary: Vocabulary
    available: Availability

    @property
    def windows(self) -> tuple[int, ...]:
        return tuple(self.settings.windows)


@dataclass(frozen=True)
class Family:
    """A feature family: catalogue entries, engine requests and the formulas on the results.

    ``compute`` yields ``(name, array)`` pairs for one :class:`~cxpredict.features.engine.Block`
    of customers, one ``(cutoffs, customers)`` array for each available feature; the caller
    copies each array into the output as it comes, so that only the arrays still needed are
    kept in memory.
    """

    name: str
    summary: str
    definitions: Callable[[Context], Sequence[FeatureDef]]
    requests: Callable[[Context], Sequence[Request]]
    compute: Callable[[Context, Block], Iterable[tuple[str, np.ndarray]]]


def feature(
    family: str,
    name: str,
    description: str,
    unit: str,
    reason: str,
    why_not: str = "",
) -> FeatureDef:
    """A :class:`FeatureDef`, unavailable when ``why_not`` is given."""
    return FeatureDef(name, family, description, unit, reason, not why_not, why_not)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` as float64, NaN where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast_shapes(numerator.shape, denominator.shape), np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def shares_and_entropy(counts: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Shares of each count in their total, and the entropy of those shares in bits.

    Both are NaN where the total is 0.
    """
    total = np.zeros_like(counts[0]) if counts else np.zeros((0, 0))
    for count in counts:
        total = total + count
    shares = [ratio(count, total) for count in counts]
    entropy = np.zeros(total.shape, dtype=np.float64)
    for count, share in zip(counts, shares, strict=True):
        # log2 of the positive shares only; a zero share adds 0 (NaN where the total is 0)
        logs = np.log2(share, where=count > 0, out=np.zeros(total.shape, dtype=np.float64))
        entropy -= np.multiply(share, logs, out=logs)
    entropy[total == 0] = np.nan
    return shares, entropy


def trend(recent: np.ndarray, prior: np.ndarray, ratio_of_lengths: float) -> np.ndarray:
    """``(recent + 1) / (prior / ratio_of_lengths + 1)``: above 1 rising, below 1 falling.

    The ``+ 1`` keeps it defined (and 1) for customers with no activity in either period.
    """
    return (recent.astype(np.float64) + 1.0) / (prior.astype(np.float64) / ratio_of_lengths + 1.0)
