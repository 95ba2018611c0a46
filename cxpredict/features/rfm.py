"""Recency, frequency and monetary value: how recently, how often and how much a customer buys.

Definitions (every count and sum is over the orders strictly before the cutoff):

- An *order* is one ``order_id`` with at least one line of non-negative amount; it counts at
  the instant of its first such line. Without ``order_id`` every non-negative line is an
  order. Lines with a negative amount are refunds: they are not orders, and they are
  subtracted from spend.
- ``orders_<w>d``: orders in the last ``w`` days, ``[cutoff - w days, cutoff)``.
- ``orders_lifetime``: all orders before the cutoff.
- ``spend_<w>d``, ``spend_lifetime``: net amount (purchases minus refunds) over the same spans.
- ``refunds_lifetime``: number of refund lines; ``refund_amount_lifetime``: their total, as a
  positive number.
- ``order_value_mean``: purchase amount (non-negative lines) divided by ``orders_lifetime``.
- ``order_value_max``: the largest order, each order worth its lines before the cutoff (a
  line placed later cannot be known yet).
- ``days_since_first_order``, ``days_since_last_order``: days from the first and the latest
  purchase line to the cutoff (fractional; NaN without a purchase).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cxpredict.features.engine import (
    ENTRY,
    MONEY_SCALE,
    Aggregate,
    Block,
    Request,
    Shortcut,
    Source,
    code_sql,
    floor_day_sql,
)
from cxpredict.features.family import Context, Family, FeatureDef, feature, ratio
from cxpredict.features.vocabulary import ORDER_CATEGORY, ORDER_CHANNEL

NAME = "rfm"
#: An order line's amount in whole 1/MONEY_SCALE units, as every family sums it.
MONEY_UNITS = f"round(amount * {MONEY_SCALE})::BIGINT"


def order_lines(ctx: Context) -> Source:
    """``order_lines``: the order lines with vocabulary codes and their purchase days marked.

    Besides the order columns: ``category_code`` and ``channel_code`` (the vocabulary codes),
    and, from one window over each customer's lines in time order, the purchase days (UTC
    days with a purchase line, non-negative amount) that the rhythm, btyd and basket families
    read:

    - ``purchase_day``: the line's UTC day number (missing on refund lines);
    - ``starts_purchase_day``: the line is the first purchase line of its day (lines at one
      instant share their day, so which of them is first does not matter);
    - ``purchase_gap``: on the first purchase line of a day, whole days since the previous
      purchase day (missing on the customer's first day and on every other line);
    - ``first_purchase_line``: the line is a purchase line at the customer's first purchase
      instant.

    A day's first purchase line is its earliest, so a purchase day is before a cutoff exactly
    when that line is: aggregates over the lines that start a day are over purchase days.
    """
    # only the columns the families read: other columns of the table, which SQL extensions
    # may use, cannot collide with the ones added here
    columns = ", quantity" if ctx.available.has("orders", "quantity") else ""
    for key, column in ((ORDER_CATEGORY, "category"), (ORDER_CHANNEL, "channel")):
        if ctx.available.has("orders", column):
            columns += f", {code_sql(column, ctx.vocabulary.get(key))} AS {column}_code"
    previous = "lag(purchase_day IGNORE NULLS) OVER w"
    first = "first_value(CASE WHEN amount >= 0 THEN us END IGNORE NULLS) OVER w"
    return Source(
        "order_lines",
        f"SELECT *, CASE WHEN {previous} < purchase_day THEN purchase_day - {previous} END "
        f"AS purchase_gap, purchase_day IS NOT NULL AND {previous} IS DISTINCT FROM "
        f"purchase_day AS starts_purchase_day, amount >= 0 AND us = {first} "
        f"AS first_purchase_line FROM (SELECT customer_id, us, amount{columns}, "
        f"CASE WHEN amount >= 0 THEN {floor_day_sql('us')} END AS purchase_day FROM orders) "
        "WINDOW w AS (PARTITION BY customer_id ORDER BY us)",
    )


def order_level(ctx: Context) -> Source:
    """``order_level``: one row per order at its first purchase line (also used by rhythm),
    with ``value_units``, the total of its purchase lines in money units (each line rounded
    to units first, as every money sum is, so that a total does not depend on row order)."""
    if ctx.available.has("orders", "order_id"):
        sql = (
            f"SELECT customer_id, min(us) AS us, sum({MONEY_UNITS})::BIGINT AS value_units "
            "FROM orders WHERE amount >= 0 GROUP BY customer_id, order_id"
        )
    else:
        sql = f"SELECT customer_id, us, {MONEY_UNITS} AS value_units FROM orders WHERE amount >= 0"
    return Source("order_level", sql, materialize=True)


def one_line_orders(ctx: Context) -> tuple[str, ...]:
    """SQL tests, asked in order: every order has one purchase line (before the latest
    cutoff), so that the lines are the orders. Always so without ``order_id``; with it, no
    order id of a purchase line is repeated (a test over all customers, so one order id on
    the lines of two customers is repeated too, and so are two missing ids; one line without
    an id is an order of its own either way).

    Many order tables hold one row per order. Where this holds, the order counts and values
    are read off the order lines (with their other aggregates) instead of from
    ``order_level`` and ``order_steps``, which group the lines by order: the same values
    for less work. The exact test costs about what one grouping of the lines by order does;
    an estimate of the distinct ids asked first spares it where lines clearly share orders
    (the estimate is within a few percent; it only decides whether to ask the exact test).
    """
    if not ctx.available.has("orders", "order_id"):
        return ()
    return (
        "SELECT approx_count_distinct(order_id) >= 0.75 * count(*) FROM orders WHERE amount >= 0",
        "NOT EXISTS (SELECT 1 FROM orders WHERE amount >= 0 GROUP BY order_id HAVING count(*) > 1)",
    )


def order_count(ctx: Context, windows: tuple[int, ...] = ()) -> Aggregate:
    """``orders``: the number of orders (over ``windows`` too), each counted at its first
    purchase line."""
    return Aggregate(
        "order_level",
        "orders",
        "count",
        "true",
        windows,
        shortcut=Shortcut(one_line_orders(ctx), "order_lines", "amount >= 0"),
    )


def order_steps(ctx: Context) -> Source | None:
    """``order_steps``: an order's value so far at each instant one of its purchase lines
    adds to it (``None`` without order ids, when every line is an order of its own).

    Before a cutoff, an order is worth the lines placed before it: a line placed later
    cannot be known yet. As purchase lines are not negative, the order's value so far is
    the largest of these running totals before the cutoff.
    """
    if not ctx.available.has("orders", "order_id"):
        return None
    return Source(
        "order_steps",
        "SELECT customer_id, us, sum(value_units) OVER (PARTITION BY customer_id, order_id "
        "ORDER BY us ROWS UNBOUNDED PRECEDING)::BIGINT AS value_units FROM (SELECT "
        f"customer_id, order_id, us, sum({MONEY_UNITS})::BIGINT AS value_units FROM orders "
        "WHERE amount >= 0 GROUP BY customer_id, order_id, us)",
    )


def _definitions(ctx: Context) -> list[FeatureDef]:
    out: list[FeatureDef] = []
    for w in ctx.windows:
        out.append(
            feature(
                NAME,
                f"orders_{w}d",
                f"Number of orders placed in the last {w} days.",
                "orders",
                f"{{orders_{w}d:.0f}} orders in the last {w} days",
            )
        )
    out.append(
        feature(
            NAME,
            "orders_lifetime",
            "Number of orders placed since the customer's first order.",
            "orders",
            "{orders_lifetime:.0f} orders so far",
        )
    )
    for w in ctx.windows:
        out.append(
            feature(
                NAME,
                f"spend_{w}d",
                f"Money spent in the last {w} days, refunds subtracted.",
                "currency",
                f"spent {{spend_{w}d:,.2f}} in the last {w} days",
            )
        )
    out += [
        feature(
            NAME,
            "spend_lifetime",
            "Money spent since the first order, refunds subtracted.",
            "currency",
            "spent {spend_lifetime:,.2f} so far",
        ),
        feature(
            NAME,
            "refunds_lifetime",
            "Number of refunded or returned order lines.",
            "lines",
            "returned or refunded items {refunds_lifetime:.0f} times so far",
        ),
        feature(
            NAME,
            "refund_amount_lifetime",
            "Money refunded, as a positive amount.",
            "currency",
            "{refund_amount_lifetime:,.2f} refunded so far",
        ),
        feature(
            NAME,
            "order_value_mean",
            "Average amount of an order (refunds not subtracted).",
            "currency",
            "spends {order_value_mean:,.2f} per order on average",
        ),
        feature(
            NAME,
            "order_value_max",
            "Amount of the customer's largest order.",
            "currency",
            "largest order {order_value_max:,.2f}",
        ),
        feature(
            NAME,
            "days_since_first_order",
            "Days since the customer's first purchase.",
            "days",
            "first order {days_since_first_order:.0f} days ago",
        ),
        feature(
            NAME,
            "days_since_last_order",
            "Days since the customer's latest purchase.",
            "days",
            "no order for {days_since_last_order:.0f} days",
        ),
    ]
    return out


def _requests(ctx: Context) -> list[Request]:
    windows = ctx.windows
    steps = order_steps(ctx)
    return [
        order_level(ctx),
        *([steps] if steps is not None else []),
        order_lines(ctx),
        # customers become known with their first purchase: refunds are not orders
        Aggregate("order_lines", ENTRY, "min", "CASE WHEN amount >= 0 THEN us END"),
        order_count(ctx, windows),
        # an order is worth its lines before the cutoff; at one cutoff, all of them
        Aggregate(
            "order_steps" if steps is not None else "order_level",
            "order_value_max_units",
            "max",
            "value_units",
            one_cutoff="order_level" if steps is not None else None,
            shortcut=Shortcut(
                one_line_orders(ctx),
                "order_lines",
                f"CASE WHEN amount >= 0 THEN {MONEY_UNITS} END",
            ),
        ),
        Aggregate("order_lines", "spend_units", "sum", MONEY_UNITS, windows),
        Aggregate(
            "order_lines",
            "purchase_units",
            "sum",
            f"CASE WHEN amount >= 0 THEN {MONEY_UNITS} ELSE 0 END",
        ),
        Aggregate("order_lines", "refund_lines", "count", "amount < 0"),
        Aggregate(
            "order_lines",
            "refund_units",
            "sum",
            f"CASE WHEN amount < 0 THEN -{MONEY_UNITS} ELSE 0 END",
        ),
        Aggregate("order_lines", "first_purchase_us", "min", "CASE WHEN amount >= 0 THEN us END"),
        Aggregate("order_lines", "last_purchase_us", "max", "CASE WHEN amount >= 0 THEN us END"),
    ]


def _compute(ctx: Context, res: Block) -> Iterator[tuple[str, np.ndarray]]:
    for w in ctx.windows:
        yield f"orders_{w}d", res.window("orders", w)
    orders = res.total("orders")
    yield "orders_lifetime", orders
    for w in ctx.windows:
        yield f"spend_{w}d", res.window("spend_units", w) / MONEY_SCALE
    yield "spend_lifetime", res.total("spend_units") / MONEY_SCALE
    yield "refunds_lifetime", res.total("refund_lines")
    yield "refund_amount_lifetime", res.total("refund_units") / MONEY_SCALE
    yield "order_value_mean", ratio(res.total("purchase_units"), orders) / MONEY_SCALE
    yield "order_value_max", res.value("order_value_max_units") / MONEY_SCALE
    yield "days_since_first_order", res.days_since(res.value("first_purchase_us"))
    yield "days_since_last_order", res.days_since(res.value("last_purchase_us"))


FAMILY = Family(
    NAME,
    "How recently, how often and how much the customer buys.",
    _definitions,
    _requests,
    _compute,
)
