"""Cutoff arithmetic, written once: the (customer_id, cutoff) grid of training sets.

A *cutoff* is an instant (a UTC ``pd.Timestamp``) that splits time in two:

- features see the events strictly before it: ``timestamp < cutoff``;
- labels see the events of the horizon after it: ``cutoff <= timestamp < cutoff + horizon``.

The customers of a cutoff (its *population*) are those whose first order or signup is
strictly before it. No function here defaults a cutoff to the current time or to the last
date in the data: every cutoff is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cxpredict.schemas import Tables, to_utc

INDEX_NAMES: tuple[str, str] = ("customer_id", "cutoff")


def training_cutoffs(
    as_of: object, *, n: int, step_days: int, horizon_days: int = 0
) -> list[pd.Timestamp]:
    """``n`` cutoffs ``step_days`` apart, ascending, whose labels are complete by ``as_of``.

    The latest cutoff is ``as_of - horizon_days``, so that its label window
    ``[cutoff, cutoff + horizon)`` ends at ``as_of``; the earlier ones step back from it:
    ``as_of - horizon_days - k * step_days`` for ``k = n - 1, ..., 0``.

    Parameters
    ----------
    as_of
        The instant the data are complete up to (exclusive); a naive value is read as UTC.
    n
        Number of cutoffs (at least 1).
    step_days
        Days between consecutive cutoffs (at least 1).
    horizon_days
        Label horizon to keep clear before ``as_of``; 0 for feature-only grids.

    Examples
    --------
    >>> [c.date().isoformat() for c in training_cutoffs("2025-07-01", n=3, step_days=30)]
    ['2025-05-02', '2025-06-01', '2025-07-01']
    """
    if n < 1 or step_days < 1 or horizon_days < 0:
        raise ValueError(
            f"training_cutoffs needs n >= 1 and step_days >= 1 and horizon_days >= 0; got n={n}, "
            f"step_days={step_days}, horizon_days={horizon_days}"
        )
    latest = to_utc(as_of) - pd.Timedelta(days=horizon_days)
    return [latest - pd.Timedelta(days=k * step_days) for k in range(n - 1, -1, -1)]


def label_window(cutoff: object, horizon_days: int) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The label window of ``cutoff``: ``[cutoff, cutoff + horizon_days)``, as (start, end).

    Events with ``start <= timestamp < end`` belong to the label; ``end`` is excluded.
    """
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    start = to_utc(cutoff)
    return start, start + pd.Timedelta(days=horizon_days)


def feature_window(
    cutoff: object, days: int | None = None
) -> tuple[pd.Timestamp | None, pd.Timestamp]:
    """The span a ``days``-day feature sees: ``[cutoff - days, cutoff)``; ``None``: all before."""
    end = to_utc(cutoff)
    return (None if days is None else end - pd.Timedelta(days=days)), end


def entry_instants(tables: Tables) -> pd.Series:
    """When each customer became known: the earlier of their first order and their signup.

    An order is a purchase line (a non-negative amount): a customer with refunds only is not
    known from them. A signup counts from the later of its ``signup_at`` and the
    ``updated_at`` of its row, when the customers table is a history: a correction recorded
    later is not known earlier.

    Returns
    -------
    pandas.Series
        Indexed by the string ``customer_id`` (sorted), UTC instants.
    """
    orders = tables.orders
    if "amount" in orders.columns:
        orders = orders[orders["amount"] >= 0]
    parts = [orders[["customer_id", "timestamp"]].rename(columns={"timestamp": "at"})]
    customers = tables.customers
    if customers is not None and "signup_at" in customers.columns:
        signup = customers[["customer_id", "signup_at"]].rename(columns={"signup_at": "at"})
        if "updated_at" in customers.columns:
            recorded = customers["updated_at"].fillna(customers["signup_at"])
            signup["at"] = signup["at"].where(signup["at"] >= recorded, recorded)
            signup.loc[customers["signup_at"].isna().to_numpy(), "at"] = pd.NaT
        parts.append(signup)
    events = pd.concat(parts, ignore_index=True).dropna(subset=["at"])
    events["customer_id"] = events["customer_id"].astype("str")
    entry = events.groupby("customer_id", sort=True)["at"].min()
    entry.index.name = "customer_id"
    return entry


def population(tables: Tables | Mapping[str, pd.DataFrame | None], cutoff: object) -> pd.Index:
    """Customers known strictly before ``cutoff`` (first order or signup before it).

    Window: orders and signups with an instant ``< cutoff``, both read to the microsecond as
    the feature engine reads them (the customers of :func:`spine` at that cutoff).
    """
    known = spine(tables, [cutoff]).get_level_values("customer_id")
    return pd.Index(known, dtype="str", name="customer_id")


def spine(
    tables: Tables | Mapping[str, pd.DataFrame | None], cutoffs: Sequence[object]
) -> pd.MultiIndex:
    """The (customer_id, cutoff) grid: each cutoff's population, ordered by cutoff then customer.

    Window: for each cutoff, the orders and signups strictly before it. Duplicate cutoffs
    are dropped. This is the row order of :func:`cxpredict.features.build_training_features`.
    """
    instants = sorted({to_utc(c) for c in cutoffs})
    if not instants:
        raise ValueError("no cutoff given; pass at least one instant")
    entry = entry_instants(Tables.of(tables).in_utc())
    stamps = pd.DatetimeIndex(instants).as_unit("us")
    known = (
        entry.to_numpy(dtype="datetime64[us]")[:, None]
        < stamps.to_numpy(dtype="datetime64[us]")[None, :]
    )
    jj, ii = np.nonzero(known.T)
    ids = pd.Index(entry.index, dtype="str")
    return pd.MultiIndex(
        levels=[ids, pd.DatetimeIndex(stamps, name="cutoff")],
        codes=[ii, jj],
        names=list(INDEX_NAMES),
    )


def feed_gap(
    tables: Tables, as_of: object, *, max_gap_days: float
) -> tuple[pd.Timestamp, float] | None:
    """The latest order or interaction and the days from it to ``as_of``, when those days
    exceed ``max_gap_days`` (a feed that stopped); ``None`` otherwise or without events."""
    latest = tables.latest_event()
    if latest is None:
        return None
    gap = (to_utc(as_of) - latest) / pd.Timedelta(days=1)
    return (latest, gap) if gap > max_gap_days else None
