"""The feature catalogue: every feature's name, meaning, unit, availability and reason text.

The catalogue is what a marketer reads to understand a score, and what a model stores to
check that it is scored with the features it was trained on (:func:`catalogue_version`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import pandas as pd

from cxpredict.config import FeaturesConfig
from cxpredict.features.build import TablesLike, available_definitions
from cxpredict.features.engine import Availability, session
from cxpredict.features.extensions import Extension, resolve_extensions
from cxpredict.features.family import Context
from cxpredict.features.vocabulary import Vocabulary

#: Bumped whenever a feature's computation changes while its name and description do not.
DEFINITIONS_REVISION = "1"

CATALOGUE_COLUMNS: tuple[str, ...] = (
    "name",
    "family",
    "description",
    "unit",
    "available",
    "why_not",
    "reason",
)


def feature_catalogue(
    tables_or_available: TablesLike | Availability,
    *,
    settings: FeaturesConfig = FeaturesConfig(),
    vocabulary: Vocabulary | None = None,
    extensions: Sequence[Extension] = (),
) -> pd.DataFrame:
    """One row per feature, in the column order of the feature frames.

    Parameters
    ----------
    tables_or_available
        The tables (only their columns are looked at) or an :class:`Availability`.
    vocabulary
        The vocabulary the features are built with; without it the categorical features are
        listed with their ``other`` column only.

    Returns
    -------
    pandas.DataFrame
        Columns ``name``, ``family``, ``description``, ``unit``, ``available`` (bool),
        ``why_not`` (the missing table or column) and ``reason`` (a sentence to format with
        the customer's feature row: ``reason.format(**row)``).
    """
    if isinstance(tables_or_available, Availability):
        available = tables_or_available
    else:
        with session(tables_or_available) as s:
            available = s.availability()
    ctx = Context(settings, vocabulary or Vocabulary(), available)
    defs = available_definitions(ctx, resolve_extensions(settings, extensions))
    frame = pd.DataFrame(
        [
            {
                "name": d.name,
                "family": d.family,
                "description": d.description,
                "unit": d.unit,
                "available": d.available,
                "why_not": d.why_not,
                "reason": d.reason,
            }
            for d in defs
        ],
        columns=list(CATALOGUE_COLUMNS),
    )
    return frame.astype({"available": bool})


def catalogue_version(catalogue: pd.DataFrame | Mapping[str, Sequence[str]]) -> str:
    """A short hash of the available features' names and definitions.

    Two builds with the same version have the same columns, in the same order, with the
    same meaning; a model checks it before scoring.
    """
    frame = pd.DataFrame(catalogue)
    if "available" in frame.columns:
        frame = frame[frame["available"].astype(bool)]
    digest = hashlib.sha256(DEFINITIONS_REVISION.encode())
    for row in frame[["name", "family", "description", "unit"]].itertuples(index=False):
        digest.update("\x1f".join(map(str, row)).encode() + b"\x1e")
    return f"features-{DEFINITIONS_REVISION}-{digest.hexdigest()[:12]}"
