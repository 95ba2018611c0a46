"""Shared fixtures: a tiny shop whose features can be computed by hand.

The cutoff is 2024-03-01 00:00 UTC. Customers:

- ``c1`` signed up 2023-12-01 and ordered on 2023-12-20, 2024-01-01 and 2024-02-10 (an order of
  two lines), had a refund on 2024-02-20 and an order exactly at the cutoff; visited, read and
  clicked emails, wrote a message (answered in 6 hours) and a complaint (answered only at the
  cutoff), and left three reviews;
- ``c2`` signed up 2024-02-29 and ordered one microsecond before the cutoff; wrote one message
  that was never answered;
- ``c3`` signed up 2024-02-15, never ordered, visited once;
- ``c4`` signed up and ordered after the cutoff: not a customer yet.
"""

from __future__ import annotations

import pandas as pd
import pytest

from cxpredict.config import FeaturesConfig, SqlFeatureConfig
from cxpredict.features import Vocabulary, engine, rfm
from cxpredict.features import build as build_module
from cxpredict.schemas import Tables

CUTOFF = pd.Timestamp("2024-03-01", tz="UTC")

#: A feature added after a model was trained, as a cxpredict upgrade or a new SQL feature adds.
ADDED_FEATURE = SqlFeatureConfig(
    name="big_orders",
    table="orders",
    expression="count(*)",
    where="amount > 100",
    description="orders over 100",
)


def recorded_sql(patch: pytest.MonkeyPatch) -> list[str]:
    """The list the SQL of every later build (while ``patch`` holds) is appended to."""
    sql: list[str] = []
    run = engine.run
    patch.setattr(build_module, "run", lambda *a: run(*a, on_sql=sql.append))
    return sql


def order_grouping_forced(patch: pytest.MonkeyPatch) -> None:
    """Orders grouped by order id whatever the data, as for orders of several lines."""
    patch.setattr(rfm, "one_line_orders", lambda ctx: ("false",))


def instants(*values: str | None) -> pd.Series:
    """UTC instants in the canonical dtype (``None`` is missing)."""
    return pd.Series(pd.to_datetime(list(values), utc=True, format="ISO8601")).astype(
        "datetime64[us, UTC]"
    )


def tiny_orders() -> pd.DataFrame:
    rows = [
        # customer, order, timestamp, amount, category, channel
        ("c1", "o0", "2023-12-20T10:00", 40.0, "shoes", "web"),
        ("c1", "o1", "2024-01-01T10:00", 100.0, "shoes", "web"),
        ("c1", "o2", "2024-02-10T12:00", 50.0, "bags", "store"),
        ("c1", "o2", "2024-02-10T12:00", 30.0, "shoes", "store"),
        ("c1", "r1", "2024-02-20T09:00", -20.0, "shoes", "web"),
        ("c1", "o3", "2024-03-01T00:00", 999.0, "hats", "app"),
        ("c2", "o4", "2024-02-29T23:59:59.999999", 10.0, "hats", "app"),
        ("c4", "o5", "2024-03-02T00:00", 15.0, "bags", "web"),
    ]
    frame = pd.DataFrame(
        rows, columns=["customer_id", "order_id", "timestamp", "amount", "category", "channel"]
    )
    frame["timestamp"] = instants(*frame["timestamp"])
    return frame.astype(
        {"customer_id": "str", "order_id": "str", "category": "str", "channel": "str"}
    )


def tiny_interactions() -> pd.DataFrame:
    rows = [
        # customer, timestamp, channel, kind, responded_at, rating
        ("c1", "2023-11-01T00:00", "app", "review", None, 4.0),
        ("c1", "2024-01-15T00:00", "app", "review", None, 2.0),
        ("c1", "2024-02-20T00:00", "app", "review", None, 5.0),
        ("c1", "2024-02-25T09:00", "web", "visit", None, None),
        ("c1", "2024-02-25T15:00", "web", "visit", None, None),
        ("c1", "2024-02-26T08:00", "email", "email_open", None, None),
        ("c1", "2024-02-26T09:00", "email", "email_click", None, None),
        ("c1", "2024-02-27T00:00", "chat", "message", "2024-02-27T06:00", None),
        ("c1", "2024-02-28T12:00", "chat", "complaint", "2024-03-01T00:00", None),
        ("c2", "2024-01-10T00:00", "chat", "message", None, None),
        ("c3", "2024-02-20T00:00", "app", "visit", None, None),
        ("c1", "2024-03-01T00:00", "web", "visit", None, None),
    ]
    frame = pd.DataFrame(
        rows, columns=["customer_id", "timestamp", "channel", "kind", "responded_at", "rating"]
    )
    frame["timestamp"] = instants(*frame["timestamp"])
    frame["responded_at"] = instants(*frame["responded_at"])
    frame["rating"] = frame["rating"].astype("float64")
    return frame.astype({"customer_id": "str", "channel": "str", "kind": "str"})


def tiny_customers() -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "customer_id": ["c1", "c2", "c3", "c4"],
            "signup_at": instants(
                "2023-12-01T00:00", "2024-02-29T00:00", "2024-02-15T00:00", "2024-03-05T00:00"
            ),
            "segment": ["gold", "silver", "gold", "bronze"],
            "age": [30.0, None, 41.0, 20.0],
        }
    )
    return frame.astype({"customer_id": "str", "segment": "str", "age": "float64"})


@pytest.fixture
def cutoff() -> pd.Timestamp:
    """The cutoff of the tiny shop."""
    return CUTOFF


@pytest.fixture
def tiny() -> Tables:
    """The tiny shop: orders, interactions and customers."""
    return Tables(tiny_orders(), tiny_interactions(), tiny_customers())


@pytest.fixture
def tiny_vocabulary() -> Vocabulary:
    """A vocabulary fixed by hand for the tiny shop."""
    return Vocabulary(
        values=(
            ("orders.category", ("shoes", "bags")),
            ("orders.channel", ("web", "store")),
            ("interactions.channel", ("web", "email", "chat")),
            ("customers.segment", ("gold", "silver")),
        ),
        numeric=("age",),
    )


@pytest.fixture
def short_windows() -> FeaturesConfig:
    """Three windows, to keep expected frames small."""
    return FeaturesConfig(windows=(7, 30, 90))
