"""Basket size: how many items and how much money the customer's orders hold, the first one too.

Definitions (over the purchase lines, non-negative amount, strictly before the cutoff; orders
as in the rfm family):

- ``first_order_value``: amount of the purchase lines at the customer's first purchase
  instant (all its lines, however many orders they belong to).
- ``first_order_items``: the ``quantity`` of those lines (lines without one count as 0).
- ``items_lifetime``: ``quantity`` summed over all purchase lines (missing as 0).
- ``items_per_order_mean``: ``items_lifetime / orders_lifetime``.
- ``value_per_item``: amount of the purchase lines with a positive ``quantity``, divided by
  their items (NaN without such a line).
- ``first_repeat_gap_days``: whole days between the first and the second purchase day (UTC
  calendar days with a purchase line); NaN before the second purchase day.

The item features need ``orders.quantity``; the other two are always available. The first
purchase instant is before the cutoff as a whole or not at all, so no line at or after the
cutoff is read.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cxpredict.features.engine import MONEY_SCALE, Aggregate, Block, Request
from cxpredict.features.family import Context, Family, FeatureDef, feature, ratio
from cxpredict.features.rfm import MONEY_UNITS, order_count, order_level, order_lines

NAME = "basket"


def _definitions(ctx: Context) -> list[FeatureDef]:
    why = ctx.available.why_not("orders", "quantity")
    return [
        feature(
            NAME,
            "first_order_value",
            "Amount of the customer's first purchase.",
            "currency",
            "first order worth {first_order_value:,.2f}",
        ),
        feature(
            NAME,
            "first_order_items",
            "Number of items in the customer's first purchase.",
            "items",
            "{first_order_items:.0f} items in the first order",
            why,
        ),
        feature(
            NAME,
            "items_lifetime",
            "Number of items bought since the first order.",
            "items",
            "{items_lifetime:.0f} items bought so far",
            why,
        ),
        feature(
            NAME,
            "items_per_order_mean",
            "Average number of items in an order.",
            "items",
            "{items_per_order_mean:.1f} items per order on average",
            why,
        ),
        feature(
            NAME,
            "value_per_item",
            "Average amount paid per item.",
            "currency",
            "pays {value_per_item:,.2f} per item on average",
            why,
        ),
        feature(
            NAME,
            "first_repeat_gap_days",
            "Days between the first and the second purchase day.",
            "days",
            "came back {first_repeat_gap_days:.0f} days after the first order",
        ),
    ]


def _requests(ctx: Context) -> list[Request]:
    items = ctx.available.has("orders", "quantity")
    out: list[Request] = [
        order_lines(ctx),
        # the first purchase's lines are before a cutoff all together or not at all
        Aggregate(
            "order_lines",
            "first_value_units",
            "sum",
            f"CASE WHEN first_purchase_line THEN {MONEY_UNITS} ELSE 0 END",
        ),
        # every purchase day but the first has a gap: the second is the first with one
        Aggregate("order_lines", "first_purchase_day", "min", "purchase_day"),
        Aggregate(
            "order_lines",
            "second_purchase_day",
            "min",
            "CASE WHEN purchase_gap IS NOT NULL THEN purchase_day END",
        ),
    ]
    if items:
        out += [
            order_level(ctx),
            order_count(ctx),
            Aggregate(
                "order_lines",
                "first_items",
                "sum",
                "CASE WHEN first_purchase_line THEN COALESCE(quantity, 0) ELSE 0 END",
            ),
            Aggregate(
                "order_lines",
                "item_count",
                "sum",
                "CASE WHEN amount >= 0 THEN COALESCE(quantity, 0) ELSE 0 END",
            ),
            Aggregate(
                "order_lines",
                "itemised_units",
                "sum",
                f"CASE WHEN amount >= 0 AND quantity > 0 THEN {MONEY_UNITS} ELSE 0 END",
            ),
        ]
    return out


def _compute(ctx: Context, res: Block) -> Iterator[tuple[str, np.ndarray]]:
    first_day = res.value("first_purchase_day")
    bought = ~np.isnan(first_day)  # the sums below are 0, not missing, before a first purchase

    def first(total: np.ndarray) -> np.ndarray:
        return np.where(bought, total, np.nan)

    yield "first_order_value", first(res.total("first_value_units") / MONEY_SCALE)
    if ctx.available.has("orders", "quantity"):
        items = res.total("item_count")
        yield "first_order_items", first(res.total("first_items").astype(np.float64))
        yield "items_lifetime", items
        yield "items_per_order_mean", ratio(items, res.total("orders"))
        yield "value_per_item", ratio(res.total("itemised_units"), items) / MONEY_SCALE
    yield "first_repeat_gap_days", res.value("second_purchase_day") - first_day


FAMILY = Family(
    NAME,
    "How big the customer's orders are, in items and money, starting with the first one.",
    _definitions,
    _requests,
    _compute,
)
