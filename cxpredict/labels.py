"""Label definitions (churn, repurchase, preference, value) and the eligibility of a task.

Every label looks only at its window: the events with ``cutoff <= timestamp < cutoff +
horizon``. Who is labelled (the population) is decided by events strictly before the cutoff,
the same events features see. All functions take many cutoffs at once and compute every
window in one DuckDB range join, and return frames indexed by ``(customer_id, cutoff)``, the
index of the stacked training features.

An *order* is an order row with a non-negative amount (refunds are not purchases); several
rows sharing an ``order_id`` are one order. Spend is the net amount, refunds included.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import duckdb
import numpy as np
import pandas as pd

from cxpredict.config import (
    ChurnTask,
    PreferenceTask,
    RepurchaseTask,
    TrainingConfig,
    ValueTask,
)
from cxpredict.errors import FeatureMismatch, IneligibleTask
from cxpredict.schemas import Tables, to_utc
from cxpredict.spine import feature_window, label_window

Task = ChurnTask | RepurchaseTask | PreferenceTask | ValueTask
INDEX: tuple[str, str] = ("customer_id", "cutoff")
#: Binary label column of churn and repurchase frames.
LABEL = "label"
_US_PER_DAY = 86_400_000_000


def _micros(stamps: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """UTC instants as int64 microseconds since the epoch (DuckDB joins on plain integers)."""
    values = pd.DatetimeIndex(stamps).tz_convert("UTC").as_unit("us")
    return values.asi8


def _cutoff_frame(cutoffs: Iterable[object], horizon_days: int) -> pd.DataFrame:
    instants = sorted({to_utc(c) for c in cutoffs})
    if not instants:
        raise ValueError("no cutoffs given; pass at least one cutoff instant")
    windows = [label_window(c, horizon_days) for c in instants]
    return pd.DataFrame(
        {
            "cutoff": pd.DatetimeIndex(instants).as_unit("us"),
            "start_us": _micros(pd.DatetimeIndex([w[0] for w in windows])),
            "end_us": _micros(pd.DatetimeIndex([w[1] for w in windows])),
        }
    )


def _order_events(tables: Tables) -> pd.DataFrame:
    orders = tables.orders
    ids = (
        orders["order_id"]
        if "order_id" in orders.columns
        else pd.Series(np.arange(len(orders)).astype(str), index=orders.index)
    )
    return pd.DataFrame(
        {
            "customer_id": orders["customer_id"].astype(str).to_numpy(),
            "order_id": ids.astype(str).to_numpy(),
            "ts": _micros(orders["timestamp"]),
            "amount": orders["amount"].astype(float).to_numpy(),
        }
    )


def _query(sql: str, **frames: pd.DataFrame) -> pd.DataFrame:
    with duckdb.connect() as con:
        con.execute("SET threads TO 2")
        for name, frame in frames.items():
            con.register(name, frame)
        return con.execute(sql).df()


def _indexed(frame: pd.DataFrame, cutoffs: pd.DataFrame) -> pd.DataFrame:
    """Attach the cutoff instants back by position and index by (customer_id, cutoff)."""
    frame = frame.merge(cutoffs[["cutoff"]].reset_index(names="k"), on="k").drop(columns="k")
    frame["customer_id"] = frame["customer_id"].astype(str)
    return frame.set_index(list(INDEX)).sort_index()


def _window_activity(tables: Tables, cutoffs: pd.DataFrame) -> pd.DataFrame:
    """Per (customer, cutoff k): orders, net spend and first order instant in the window."""
    return _query(
        """
        SELECT c.k, o.customer_id,
               count(DISTINCT o.order_id) FILTER (WHERE o.amount >= 0) AS orders,
               sum(o.amount) AS spend,
               min(o.ts) FILTER (WHERE o.amount >= 0) AS first_ts
        FROM events o JOIN cuts c ON o.ts >= c.start_us AND o.ts < c.end_us
        GROUP BY c.k, o.customer_id
        """,
        events=_order_events(tables),
        cuts=cutoffs.reset_index(names="k"),
    )


def _population(
    tables: Tables, cutoffs: pd.DataFrame, *, lookback_days: int | None
) -> pd.DataFrame:
    """Customers with at least one order strictly before each cutoff (within the lookback).

    Window: ``cutoff - lookback_days <= timestamp < cutoff``, or every order before the
    cutoff when ``lookback_days`` is ``None``.
    """
    cuts = cutoffs.reset_index(names="k")
    if lookback_days is None:
        cuts["from_us"] = np.iinfo(np.int64).min
    else:
        starts = [feature_window(c, lookback_days)[0] for c in cuts["cutoff"]]
        cuts["from_us"] = _micros(pd.DatetimeIndex(starts))
    return _query(
        """
        SELECT DISTINCT c.k, o.customer_id
        FROM events o JOIN cuts c ON o.ts < c.start_us AND o.ts >= c.from_us
        WHERE o.amount >= 0
        """,
        events=_order_events(tables),
        cuts=cuts,
    )


def churn_labels(
    tables: Tables, cutoffs: Sequence[object], *, horizon_days: int, active_days: int
) -> pd.DataFrame:
    """Churn: 1 when an active customer places no order in the label window.

    Population: customers with at least one order in ``[cutoff - active_days, cutoff)``.
    Label: 1 if the customer has no order in ``[cutoff, cutoff + horizon_days)``, else 0.

    Returns
    -------
    DataFrame
        Indexed by ``(customer_id, cutoff)``, one column ``label`` (int8).
    """
    cuts = _cutoff_frame(cutoffs, horizon_days)
    population = _population(tables, cuts, lookback_days=active_days)
    activity = _window_activity(tables, cuts)
    frame = population.merge(activity[["k", "customer_id", "orders"]], how="left")
    frame[LABEL] = (frame["orders"].fillna(0) == 0).astype("int8")
    return _indexed(frame[["k", "customer_id", LABEL]], cuts)


def repurchase_labels(
    tables: Tables, cutoffs: Sequence[object], *, horizon_days: int
) -> pd.DataFrame:
    """Repurchase: 1 when a past customer orders again in the label window.

    Population: customers with at least one order before the cutoff.
    Label: 1 if the customer has at least one order in ``[cutoff, cutoff + horizon_days)``.

    Returns
    -------
    DataFrame
        Indexed by ``(customer_id, cutoff)``, one column ``label`` (int8).
    """
    cuts = _cutoff_frame(cutoffs, horizon_days)
    population = _population(tables, cuts, lookback_days=None)
    activity = _window_activity(tables, cuts)
    frame = population.merge(activity[["k", "customer_id", "orders"]], how="left")
    frame[LABEL] = (frame["orders"].fillna(0) > 0).astype("int8")
    return _indexed(frame[["k", "customer_id", LABEL]], cuts)


def value_labels(tables: Tables, cutoffs: Sequence[object], *, horizon_days: int) -> pd.DataFrame:
    """Value: spend and number of orders in the label window, and days to the next order.

    Population: customers with at least one order before the cutoff.
    Window: ``[cutoff, cutoff + horizon_days)``.

    Returns
    -------
    DataFrame
        Indexed by ``(customer_id, cutoff)``: ``spend`` (net amount, float), ``orders``
        (int64), ``days_to_next`` (days from the cutoff to the first order in the window) and
        ``next_observed``. A customer with no order in the window is *censored*: all we know
        is that the next order comes after the horizon, so ``days_to_next`` holds the horizon
        and ``next_observed`` is False. Averages of ``days_to_next`` are then lower bounds;
        see :func:`median_days_to_next` for a summary that respects the censoring.
    """
    cuts = _cutoff_frame(cutoffs, horizon_days)
    population = _population(tables, cuts, lookback_days=None)
    activity = _window_activity(tables, cuts)
    frame = population.merge(activity, how="left")
    frame["spend"] = frame["spend"].fillna(0.0).astype(float)
    frame["orders"] = frame["orders"].fillna(0).astype("int64")
    starts = cuts["start_us"].to_numpy()[frame["k"].to_numpy()]
    days = (frame["first_ts"].to_numpy(dtype=float) - starts) / _US_PER_DAY
    frame["next_observed"] = np.isfinite(days)
    frame["days_to_next"] = np.where(frame["next_observed"], days, float(horizon_days))
    columns = ["k", "customer_id", "spend", "orders", "days_to_next", "next_observed"]
    return _indexed(frame[columns], cuts)


def median_days_to_next(labels: pd.DataFrame, *, horizon_days: int) -> float | None:
    """Kaplan-Meier median days to the next order, or ``None`` when it cannot be estimated.

    With a common horizon, every censored customer is censored at the horizon, so the
    survival curve is the empirical one up to the horizon. The median exists only when more
    than half of the population orders within the horizon; otherwise it is beyond the
    horizon and cannot be estimated from these labels (``None``): use a longer horizon.
    """
    observed = labels["next_observed"].to_numpy(dtype=bool)
    if not len(observed) or observed.mean() <= 0.5:
        return None
    days = np.sort(labels["days_to_next"].to_numpy(dtype=float)[observed])
    position = int(np.ceil(0.5 * len(labels))) - 1
    return float(min(days[position], horizon_days))


def _attribute_events(tables: Tables, *, table: str, attribute: str) -> pd.DataFrame:
    frame = tables.get(table)
    if frame is None or attribute not in frame.columns:
        have = [] if frame is None else list(frame.columns)
        raise IneligibleTask(
            f"preference on {table}.{attribute}: the {table} table "
            + ("is absent" if frame is None else f"has no column {attribute!r} (it has {have})")
            + "; set the task's 'table' and 'attribute' to a column the data has"
        )
    keep = frame[attribute].notna()
    if table == "orders":
        keep &= frame["amount"] >= 0
    return pd.DataFrame(
        {
            "customer_id": frame.loc[keep, "customer_id"].astype(str).to_numpy(),
            "ts": _micros(frame.loc[keep, "timestamp"]),
            "value": frame.loc[keep, attribute].astype(str).to_numpy(),
        }
    )


def preference_labels(
    tables: Tables,
    cutoffs: Sequence[object],
    *,
    horizon_days: int,
    attribute: str = "category",
    table: str = "orders",
) -> pd.DataFrame:
    """Preference: which values of an attribute each customer buys (or uses) in the window.

    Population: customers with at least one order before the cutoff *and* at least one event
    with a known ``attribute`` in ``[cutoff, cutoff + horizon_days)``: the label says what
    they choose given that they come back, not whether they come back (that is repurchase).

    Returns
    -------
    DataFrame
        Indexed by ``(customer_id, cutoff)``, one 0/1 (int8) column per value seen in any
        window, columns sorted by name.
    """
    cuts = _cutoff_frame(cutoffs, horizon_days)
    events = _attribute_events(tables, table=table, attribute=attribute)
    chosen = _query(
        """
        SELECT DISTINCT c.k, e.customer_id, e.value
        FROM events e JOIN cuts c ON e.ts >= c.start_us AND e.ts < c.end_us
        """,
        events=events,
        cuts=cuts.reset_index(names="k"),
    )
    population = _population(tables, cuts, lookback_days=None)
    chosen = chosen.merge(population, on=["k", "customer_id"])
    chosen["one"] = np.int8(1)
    wide = chosen.pivot_table(
        index=["k", "customer_id"], columns="value", values="one", fill_value=0, aggfunc="max"
    )
    wide = wide.astype("int8").reindex(sorted(wide.columns), axis=1)
    wide.columns = wide.columns.astype(str)
    wide.columns.name = None
    return _indexed(wide.reset_index(), cuts)


def preference_history(
    tables: Tables,
    cutoffs: Sequence[object],
    *,
    attribute: str = "category",
    table: str = "orders",
) -> pd.DataFrame:
    """Per (customer, cutoff, value): events with that value strictly before the cutoff.

    Window: ``timestamp < cutoff``. Returns a long frame with ``customer_id``, ``cutoff``,
    ``value``, ``count`` and ``days_since`` (days from the last such event to the cutoff).
    """
    cuts = _cutoff_frame(cutoffs, 1)
    events = _attribute_events(tables, table=table, attribute=attribute)
    frame = _query(
        """
        SELECT c.k, e.customer_id, e.value, count(*) AS count,
               (max(c.start_us) - max(e.ts)) / 86400000000.0 AS days_since
        FROM events e JOIN cuts c ON e.ts < c.start_us
        GROUP BY c.k, e.customer_id, e.value
        """,
        events=events,
        cuts=cuts.reset_index(names="k"),
    )
    frame = frame.merge(cuts[["cutoff"]].reset_index(names="k"), on="k").drop(columns="k")
    frame["customer_id"] = frame["customer_id"].astype(str)
    return frame[["customer_id", "cutoff", "value", "count", "days_since"]]


def make_labels(task: Task, tables: Tables, cutoffs: Sequence[object]) -> pd.DataFrame:
    """The labels of ``task`` at every cutoff (dispatch on the task's kind)."""
    if isinstance(task, ChurnTask):
        return churn_labels(
            tables, cutoffs, horizon_days=task.horizon_days, active_days=task.active_days
        )
    if isinstance(task, RepurchaseTask):
        return repurchase_labels(tables, cutoffs, horizon_days=task.horizon_days)
    if isinstance(task, PreferenceTask):
        return preference_labels(
            tables,
            cutoffs,
            horizon_days=task.horizon_days,
            attribute=task.attribute,
            table=task.table,
        )
    if isinstance(task, ValueTask):
        return value_labels(tables, cutoffs, horizon_days=task.horizon_days)
    raise TypeError(f"unknown task type {type(task).__name__}")


# ------------------------------------------------------------------------------ eligibility

_POSITIVE_WORDS = {
    "churn": ("churned customers (no order in the window)", "customers who ordered again"),
    "repurchase": ("customers who ordered again", "customers with no order in the window"),
    "value": ("customers with an order in the window", "customers without one"),
    "preference": (
        "choices of the second most chosen value (a ranking needs two)",
        "customers choosing another value",
    ),
}


def _positive_rows(task: Task, labels: pd.DataFrame) -> np.ndarray:
    """Which rows of a stacked label frame are positives.

    For a preference, the positives are the choices of the second most chosen value: a
    ranking needs two values chosen often enough.
    """
    if isinstance(task, ChurnTask | RepurchaseTask):
        return labels[LABEL].to_numpy() == 1
    if isinstance(task, ValueTask):
        return labels["orders"].to_numpy() > 0
    counts = labels.sum(axis=0).sort_values(ascending=False)
    if len(counts) < 2:
        return np.zeros(len(labels), dtype=bool)
    return labels[counts.index[1]].to_numpy() > 0


def class_counts(task: Task, labels: pd.DataFrame) -> tuple[int, int]:
    """Positives and negatives of a stacked label frame (see :func:`_positive_rows`)."""
    positives = int(_positive_rows(task, labels).sum())
    return positives, len(labels) - positives


def class_customers(task: Task, labels: pd.DataFrame) -> tuple[int, int]:
    """Distinct customers behind the positives and the negatives of :func:`class_counts`."""
    if labels.empty:
        return 0, 0
    positive = _positive_rows(task, labels)
    ids = labels.index.get_level_values("customer_id")
    return ids[positive].nunique(), ids[~positive].nunique()


def check_class_balance(
    task_name: str,
    task: Task,
    labels: pd.DataFrame,
    *,
    training: TrainingConfig,
    configured_days: int | None = None,
) -> None:
    """Refuse to train on too few positive or negative examples.

    Raises
    ------
    IneligibleTask
        Saying how many examples of each class the training cutoffs hold, how many the config
        asks for (``training.min_positives`` / ``min_negatives``) and what to change.
    """
    positives, negatives = class_counts(task, labels)
    cutoffs = labels.index.get_level_values("cutoff") if len(labels) else pd.DatetimeIndex([])
    n_cutoffs = cutoffs.nunique()
    span = f"{cutoffs.min():%Y-%m-%d}..{cutoffs.max():%Y-%m-%d}" if n_cutoffs else "no cutoffs"
    pos_word, neg_word = _POSITIVE_WORDS[task.kind]
    shortened = configured_days is not None and configured_days != task.horizon_days
    windows = (
        f"labels over {task.horizon_days}-day windows, the longest the history allows for the "
        f"configured {configured_days} days"
        if shortened
        else f"horizon {task.horizon_days} days"
    )
    population = (
        f", a longer active_days than {task.active_days} (more customers count as active)"
        if isinstance(task, ChurnTask)
        else ""
    )
    others = (
        f"more training cutoffs (training.n_cutoffs){population} or a later as-of date with "
        "more customers, or lower training.min_positives / training.min_negatives"
    )

    def fix(few_positives: bool) -> str:
        if shortened:
            return (
                "use a later as-of date (more history: longer windows and more customers), "
                "more training cutoffs (training.n_cutoffs), or lower training.min_positives / "
                "training.min_negatives"
            )
        # a longer window holds more orders: more buyers, fewer churners
        longer = few_positives != (task.kind == "churn")
        side = "longer" if longer else "shorter"
        return f"use a {side} horizon than {task.horizon_days} days, {others}"

    if isinstance(task, PreferenceTask) and len(labels.columns) < 2 and len(labels):
        only = f" ({labels.columns[0]!r})" if len(labels.columns) else ""
        raise IneligibleTask(
            f"task {task_name!r} (preference for {task.table}.{task.attribute}): the training "
            f"windows hold one value of {task.attribute}{only}; a preference ranks two values "
            "or more: choose an attribute whose values differ"
        )
    if positives < training.min_positives:
        raise IneligibleTask(
            f"task {task_name!r} ({task.kind}, {windows}): the "
            f"{n_cutoffs} training cutoffs ({span}) hold {positives} {pos_word}; at least "
            f"{training.min_positives} are needed (training.min_positives); {fix(True)}"
        )
    if negatives < training.min_negatives:
        raise IneligibleTask(
            f"task {task_name!r} ({task.kind}, {windows}): the "
            f"{n_cutoffs} training cutoffs ({span}) hold {negatives} {neg_word}; at least "
            f"{training.min_negatives} are needed (training.min_negatives); {fix(False)}"
        )
    # the same customers at many cutoffs are not many examples
    for count, word in zip(class_customers(task, labels), (pos_word, neg_word), strict=True):
        if count < training.min_customers:
            raise IneligibleTask(
                f"task {task_name!r} ({task.kind}, {windows}): the {n_cutoffs} training "
                f"cutoffs ({span}) hold {word} from {count} distinct customer(s); at least "
                f"{training.min_customers} are needed (training.min_customers); use data with "
                "more customers or a later as-of date, or lower training.min_customers"
            )


def check_history(
    task_name: str,
    task: Task,
    *,
    cutoffs: Sequence[pd.Timestamp],
    as_of: pd.Timestamp,
    first_event: pd.Timestamp,
    min_history_days: int,
) -> None:
    """Refuse training cutoffs whose label windows are not over by ``as_of`` or lack history.

    Every training label window ``[cutoff, cutoff + horizon)`` must end by the as-of date (a
    window still open has labels that are not known yet), and the first cutoff needs at
    least ``min_history_days`` of history before it (features of an empty past say nothing).

    Raises
    ------
    IneligibleTask
        Naming the offending cutoff, the dates involved and what to change.
    """
    as_of = to_utc(as_of)
    first_event = to_utc(first_event)
    ordered = sorted(to_utc(c) for c in cutoffs)
    if not ordered:
        raise IneligibleTask(f"task {task_name!r}: no training cutoffs; set training.n_cutoffs")
    last_end = label_window(ordered[-1], task.horizon_days)[1]
    if last_end > as_of:
        raise IneligibleTask(
            f"task {task_name!r}: the label window of the last training cutoff "
            f"{ordered[-1]:%Y-%m-%d} ends {last_end:%Y-%m-%d}, after the as-of date "
            f"{as_of:%Y-%m-%d}, so its labels are not known yet; use a shorter horizon than "
            f"{task.horizon_days} days or a later as-of date"
        )
    history = (ordered[0] - first_event) / pd.Timedelta(days=1)
    if history < min_history_days:
        needed = first_event + pd.Timedelta(days=min_history_days)
        raise IneligibleTask(
            f"task {task_name!r}: the first training cutoff {ordered[0]:%Y-%m-%d} has "
            f"{max(history, 0):.0f} days of history (the data starts {first_event:%Y-%m-%d}); "
            f"at least {min_history_days} are needed, i.e. a first cutoff on or after "
            f"{needed:%Y-%m-%d}; use fewer training cutoffs (training.n_cutoffs, now "
            f"{len(ordered)}), a shorter step (training.step_days), a shorter horizon than "
            f"{task.horizon_days} days, or a later as-of date"
        )


# ------------------------------------------------------------------------------ scored population


def eligible(features: pd.DataFrame, task: Task) -> np.ndarray:
    """Which customers of ``features`` a task scores: the population its labels were defined on.

    Window: events strictly before the cutoff. Every task needs an order (non-negative
    amount) before the cutoff; churn also needs one within its ``active_days``
    (``days_since_last_order <= active_days``, the label's ``[cutoff - active_days, cutoff)``).

    Raises
    ------
    FeatureMismatch
        When the features lack ``days_since_last_order`` (the rfm family), which decides.
    """
    if "days_since_last_order" not in features.columns:
        raise FeatureMismatch(
            "the features lack 'days_since_last_order', which decides who is scored; build "
            "them with the rfm feature family"
        )
    last = features["days_since_last_order"].to_numpy(dtype=np.float64, na_value=np.nan)
    mask = np.isfinite(last)
    if task.kind == "churn":
        mask &= last <= float(task.active_days)
    return mask
