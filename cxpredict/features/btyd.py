"""Buy-till-you-die summary in the convention of the customer-base literature.

Transactions are customer-days: a UTC calendar day with at least one order line of
non-negative amount is one transaction (Fader, Hardie & Lee 2005), counted strictly before
the cutoff. These match :func:`cxpredict.baselines.btyd_summary` on the purchase lines.

- ``btyd_frequency``: repeat purchase days (purchase days - 1).
- ``btyd_recency_weeks``: weeks from the first to the latest purchase day.
- ``btyd_t_weeks``: weeks from the first purchase day (its midnight UTC) to the cutoff.

All three are NaN for a customer without a purchase (known from signup only).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cxpredict.features.engine import DAY_US, Aggregate, Block, Request
from cxpredict.features.family import Context, Family, FeatureDef, feature
from cxpredict.features.rfm import order_lines

NAME = "btyd"


def _definitions(ctx: Context) -> list[FeatureDef]:
    return [
        feature(
            NAME,
            "btyd_frequency",
            "Number of repeat purchase days (days with an order, minus the first).",
            "days",
            "repeat purchases on {btyd_frequency:.0f} days",
        ),
        feature(
            NAME,
            "btyd_recency_weeks",
            "Weeks between the first and the latest purchase day.",
            "weeks",
            "bought over a span of {btyd_recency_weeks:.0f} weeks",
        ),
        feature(
            NAME,
            "btyd_t_weeks",
            "Weeks since the first purchase day.",
            "weeks",
            "customer for {btyd_t_weeks:.0f} weeks",
        ),
    ]


def _requests(ctx: Context) -> list[Request]:
    return [
        order_lines(ctx),
        Aggregate("order_lines", "purchase_day_count", "count", "starts_purchase_day"),
        Aggregate("order_lines", "first_purchase_day", "min", "purchase_day"),
        Aggregate("order_lines", "last_purchase_day", "max", "purchase_day"),
    ]


def _compute(ctx: Context, res: Block) -> Iterator[tuple[str, np.ndarray]]:
    days = res.total("purchase_day_count").astype(np.float64)
    first = res.value("first_purchase_day")
    last = res.value("last_purchase_day")
    yield from {
        "btyd_frequency": np.where(days > 0, days - 1.0, np.nan),
        "btyd_recency_weeks": (last - first) / 7.0,
        "btyd_t_weeks": (res.cutoff_grid - first * DAY_US) / (7.0 * DAY_US),
    }.items()


FAMILY = Family(
    NAME,
    "Frequency, recency and age of the customer as buy-till-you-die models count them.",
    _definitions,
    _requests,
    _compute,
)
