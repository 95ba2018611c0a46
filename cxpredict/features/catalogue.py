"""The feature catalogue: every feature's name, meaning, unit, availability and reason text.

The catalogue is what a marketer reads to understand a score, and what a model stores to
check that it is scored with the features it was trained on: the version of the whole
catalogue (:func:`catalogue_version`) and a fingerprint of each feature it uses
(:func:`feature_fingerprints`), so that features added later do not stop it from scoring
(:func:`check_trained_features`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import pandas as pd

from cxpredict.config import FeaturesConfig
from cxpredict.errors import FeatureMismatch
from cxpredict.features.build import TablesLike, available_definitions
from cxpredict.features.engine import Availability, cutoff_micros, session
from cxpredict.features.extensions import Extension, resolve_extensions
from cxpredict.features.family import Context
from cxpredict.features.vocabulary import Vocabulary, learn_in_session
from cxpredict.schemas import YEARS

#: Bumped whenever a feature's computation changes while its name and description do not.
DEFINITIONS_REVISION = "1"

#: What defines a feature's meaning: the catalogue columns its fingerprint and the catalogue
#: version hash (the reason sentence is wording and may change without either changing).
DEFINING_COLUMNS: tuple[str, ...] = ("name", "family", "description", "unit")

CATALOGUE_COLUMNS: tuple[str, ...] = (
    "name",
    "family",
    "description",
    "unit",
    "available",
    "why_not",
    "reason",
)

#: An instant after every row the engine reads (the end of the last supported year).
AFTER_ALL_US = int(cutoff_micros([f"{YEARS[1]}-12-31T23:59:59.999999"])[0])


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
        The tables (their columns, and their values when no vocabulary is given) or an
        :class:`Availability`.
    vocabulary
        The vocabulary the features are built with. Without it, the vocabulary is learnt
        from every row of the tables, as a build at a cutoff after them all would learn it
        (a build at an earlier cutoff may know fewer values: pass its vocabulary, or a
        model's, to list exactly its columns); given an :class:`Availability` instead of
        tables, the customer attributes are left out and the order and interaction
        categories are listed with their ``other`` column only.

    Returns
    -------
    pandas.DataFrame
        Columns ``name``, ``family``, ``description``, ``unit``, ``available`` (bool),
        ``why_not`` (the missing table or column) and ``reason`` (a sentence to fill with
        the customer's feature row: :func:`cxpredict.explain.fill_reason`, ``str.format``
        plus ``:hours`` and ``:spread`` specs).
    """
    if isinstance(tables_or_available, Availability):
        available = tables_or_available
    else:
        with session(tables_or_available) as s:
            available = s.availability()
            if vocabulary is None:
                vocabulary = learn_in_session(
                    s,
                    available,
                    AFTER_ALL_US,
                    max_values=settings.vocabulary_max_values,
                    min_customers=settings.vocabulary_min_customers,
                )
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


def _available(catalogue: pd.DataFrame | Mapping[str, Sequence[str]]) -> pd.DataFrame:
    frame = pd.DataFrame(catalogue)
    if "available" in frame.columns:
        frame = frame[frame["available"].astype(bool)]
    return frame


def _definition(row: Sequence[object]) -> bytes:
    return "\x1f".join(map(str, row)).encode() + b"\x1e"


def catalogue_version(catalogue: pd.DataFrame | Mapping[str, Sequence[str]]) -> str:
    """A short hash of the available features' names and definitions.

    Two builds with the same version have the same columns, in the same order, with the
    same meaning.
    """
    digest = hashlib.sha256(DEFINITIONS_REVISION.encode())
    for row in _available(catalogue)[list(DEFINING_COLUMNS)].itertuples(index=False):
        digest.update(_definition(row))
    return f"features-{DEFINITIONS_REVISION}-{digest.hexdigest()[:12]}"


def feature_fingerprints(catalogue: pd.DataFrame | Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Each available feature's name mapped to a short hash of its definition.

    A feature keeps its fingerprint while its name, family, description, unit and
    :data:`DEFINITIONS_REVISION` stay the same, whatever other features are added or removed:
    a model stores the fingerprints of the features it uses, and still scores after a
    cxpredict version adds features.
    """
    out = {}
    for row in _available(catalogue)[list(DEFINING_COLUMNS)].itertuples(index=False):
        digest = hashlib.sha256(DEFINITIONS_REVISION.encode() + b"\x1e" + _definition(row))
        out[str(row[0])] = digest.hexdigest()[:12]
    return out


def _listed(names: Sequence[str]) -> str:
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(names[:5]) + more


def what_changed(
    features: Sequence[str],
    *,
    version: str,
    fingerprints: Mapping[str, str] | None,
    built_version: str,
    built: Mapping[str, str],
) -> str | None:
    """Why features built as ``built`` cannot score a model trained on ``features``, or None.

    The model's features were built with catalogue ``version`` and had ``fingerprints``;
    today's catalogue has version ``built_version`` and fingerprints ``built`` (see
    :func:`feature_fingerprints`). The model can be scored when the versions are equal, or
    when each of its features is still built with the same fingerprint (features were only
    added, or others removed). A model without fingerprints needs the same version.
    """
    if built_version == version:
        return None
    gone = [f for f in features if f not in built]
    if gone:
        return f"features the model uses are no longer built: {_listed(gone)}"
    if not fingerprints:
        return (
            "features were added or redefined, and the model stores no fingerprint of each "
            "feature to tell which"
        )
    changed = [f for f in features if fingerprints.get(f) != built[f]]
    if changed:
        return f"features the model uses were redefined: {_listed(changed)}"
    return None


def check_trained_features(
    catalogue: pd.DataFrame,
    *,
    features: Sequence[str],
    version: str,
    fingerprints: Mapping[str, str] | None,
    model: str = "the model",
) -> None:
    """Refuse to score a model with features of ``catalogue`` that differ from its training.

    The model was trained on ``features``, built with catalogue ``version`` whose features
    had ``fingerprints``; see :func:`what_changed` for when it can be scored.

    Raises
    ------
    FeatureMismatch
        Naming the features no longer built or redefined, both versions, and the fix.
    """
    now = catalogue_version(catalogue)
    what = what_changed(
        features,
        version=version,
        fingerprints=fingerprints,
        built_version=now,
        built=feature_fingerprints(catalogue),
    )
    if what is not None:
        raise FeatureMismatch(
            f"{model} was trained with feature catalogue {version!r} but today's features are "
            f"{now!r}: {what} (the data's columns, the feature settings or the cxpredict "
            "version changed); retrain the task"
        )
