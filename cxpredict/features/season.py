"""The season: when in the year the prediction is made.

- ``cutoff_day_of_year``: the cutoff's day of the year in UTC (1 on 1 January, 365 or 366 on
  31 December), the same for every customer at one cutoff.

Why: a training set stacks cutoffs from different times of the year, and what follows a
cutoff depends on the season (more orders after a cutoff in October, ahead of the year-end
peak, than after one in February). Without it a model predicts the average season for every
cutoff. With it, the trees can tell the training cutoffs of each season apart, and a
prediction at an October cutoff follows the October cutoffs of the year before, provided the
training cutoffs reach back that far (at least a year of cutoffs before the validation
cutoff); otherwise the model uses the nearest season it saw.

It is never a reason (it says nothing about the customer) and its drift is not checked: it
changes with the calendar by design.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from cxpredict.features.engine import Block, Request
from cxpredict.features.family import Context, Family, FeatureDef, feature

NAME = "season"

#: Features that are the same for every customer at a cutoff and follow the calendar.
SEASON_FEATURES: frozenset[str] = frozenset({"cutoff_day_of_year"})


def _definitions(ctx: Context) -> list[FeatureDef]:
    return [
        feature(
            NAME,
            "cutoff_day_of_year",
            "Day of the year of the prediction (1 = 1 January), the same for every customer: "
            "lets the models learn the season.",
            "day",
            "",
        )
    ]


def _requests(ctx: Context) -> list[Request]:
    return []


def day_of_year(micros: np.ndarray) -> np.ndarray:
    """The UTC day of the year (1-366) of instants in microseconds, as float64."""
    stamps = pd.to_datetime(np.asarray(micros, dtype=np.int64).reshape(-1), unit="us", utc=True)
    return np.asarray(stamps.day_of_year, dtype=np.float64).reshape(np.shape(micros))


def _compute(ctx: Context, res: Block) -> Iterator[tuple[str, np.ndarray]]:
    yield "cutoff_day_of_year", day_of_year(res.cutoff_grid)


FAMILY = Family(
    NAME,
    "When in the year the prediction is made, so that models can learn the season.",
    _definitions,
    _requests,
    _compute,
)
