"""Point-in-time customer features: tables and a cutoff in, one row per customer out.

A cutoff is an instant (UTC). Features see only the events strictly before it
(``timestamp < cutoff``); labels, elsewhere, see ``cutoff <= timestamp < cutoff + horizon``.
No function here defaults a cutoff to the current time or to the last date in the data.
See ``docs/features.md`` for the catalogue and how to add a feature.
"""

from __future__ import annotations

from cxpredict.features.build import (
    FAMILIES,
    build_features,
    build_training_features,
)
from cxpredict.features.catalogue import (
    catalogue_version,
    check_trained_features,
    feature_catalogue,
    feature_fingerprints,
)
from cxpredict.features.engine import Availability
from cxpredict.features.extensions import PythonFeature, SqlFeature
from cxpredict.features.vocabulary import Vocabulary, learn_vocabulary

__all__ = [
    "FAMILIES",
    "Availability",
    "PythonFeature",
    "SqlFeature",
    "Vocabulary",
    "build_features",
    "build_training_features",
    "catalogue_version",
    "check_trained_features",
    "feature_catalogue",
    "feature_fingerprints",
    "learn_vocabulary",
]
