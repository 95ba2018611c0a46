"""Purchase rhythm: how regularly a customer buys, and whether they are late.

Definitions (over the purchase days strictly before the cutoff; a *purchase day* is a UTC
calendar day with at least one order line of non-negative amount; gaps are whole days
between consecutive purchase days):

- ``gap_mean_days``: mean gap (NaN with fewer than two purchase days).
- ``gap_std_days``: sample standard deviation of the gaps (NaN with fewer than two gaps).
- ``gap_last_days``: the gap before the latest purchase day (NaN with one purchase day).
- ``overdue_ratio``: ``days_since_last_order / gap_mean_days``; above 1 the customer is later
  than usual (NaN without a gap).
- ``orders_trend_30d_vs_90d``: ``(orders in the last 30 days + 1) / (orders in the 90 days
  before those / 3 + 1)``: the monthly order rate of the last month against that of the three
  months before, smoothed by one order so that it is always defined (1: steady or inactive,
  above 1: accelerating, below 1: slowing down).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cxpredict.features.engine import Aggregate, Block, Request, last_code
from cxpredict.features.family import Context, Family, FeatureDef, feature, ratio, trend
from cxpredict.features.rfm import order_count, order_level, order_lines

NAME = "rhythm"


def _definitions(ctx: Context) -> list[FeatureDef]:
    return [
        feature(
            NAME,
            "gap_mean_days",
            "Usual number of days between two purchase days.",
            "days",
            "usually orders every {gap_mean_days:.0f} days",
        ),
        feature(
            NAME,
            "gap_std_days",
            "How irregular the time between purchases is (standard deviation, days).",
            "days",
            "time between orders varies by about {gap_std_days:.0f} days",
        ),
        feature(
            NAME,
            "gap_last_days",
            "Days between the last two purchase days.",
            "days",
            "the last two orders were {gap_last_days:.0f} days apart",
        ),
        feature(
            NAME,
            "overdue_ratio",
            "Days since the last order divided by the usual gap; above 1 means later than usual.",
            "ratio",
            "no order for {days_since_last_order:.0f} days; usually orders every "
            "{gap_mean_days:.0f} days",
        ),
        feature(
            NAME,
            "orders_trend_30d_vs_90d",
            "Orders of the last 30 days against the monthly average of the 90 days before "
            "(1 steady, above 1 buying more, below 1 buying less).",
            "ratio",
            "order pace {orders_trend_30d_vs_90d:.1f}x that of the previous three months",
        ),
    ]


def _requests(ctx: Context) -> list[Request]:
    return [
        order_level(ctx),
        order_lines(ctx),
        order_count(ctx, (30, 120)),
        Aggregate("order_lines", "last_purchase_us", "max", "CASE WHEN amount >= 0 THEN us END"),
        Aggregate("order_lines", "gap_count", "count", "purchase_gap IS NOT NULL"),
        Aggregate("order_lines", "gap_sum", "sum", "COALESCE(purchase_gap, 0)"),
        Aggregate("order_lines", "gap_sq_sum", "sum", "COALESCE(purchase_gap * purchase_gap, 0)"),
        # one gap per purchase day, so the day orders them; gaps are under 2^31 days
        last_code("order_lines", "gap_last", "purchase_gap", 2**31 - 1, key="purchase_day"),
    ]


def _compute(ctx: Context, res: Block) -> Iterator[tuple[str, np.ndarray]]:
    n = res.total("gap_count")
    total = res.total("gap_sum")
    squares = res.total("gap_sq_sum")
    mean = ratio(total, n)
    spread = n * squares - total * total  # exact in integers: n^2 times the population variance
    variance = ratio(spread, n * (n - 1))
    since = res.days_since(res.value("last_purchase_us"))
    recent = res.window("orders", 30)
    prior = res.window("orders", 120) - recent
    yield from {
        "gap_mean_days": mean,
        "gap_std_days": np.sqrt(np.maximum(variance, 0.0)),
        "gap_last_days": res.value("gap_last"),
        "overdue_ratio": since / np.where(mean > 0, mean, np.nan),
        "orders_trend_30d_vs_90d": trend(recent, prior, 3.0),
    }.items()


FAMILY = Family(
    NAME,
    "How regularly the customer buys and whether they are later than usual.",
    _definitions,
    _requests,
    _compute,
)
