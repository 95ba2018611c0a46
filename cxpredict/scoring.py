"""Batch scoring: champions score every eligible customer; ranked lists for marketing.

One run reads and validates the tables, builds every customer's features once at the as-of
instant (events strictly before it), loads each task's champion, scores, checks drift against
the training reference stored with each model, and writes, into one output folder:

``<task>.csv`` / ``<task>.parquet``
    One ranked list per task (:data:`LIST_COLUMNS`, plus :data:`PREFERENCE_COLUMNS` for
    preference tasks and ``expected_orders`` for value tasks).
``customers.csv`` / ``customers.parquet``
    One row per customer combining the tasks (:data:`CUSTOMER_COLUMNS`): value at risk,
    lifecycle stage, reasons, preferences and a suggested action.
``drift.csv``
    The population stability index of every feature and score against the training reference.
``report.html``
    The self-contained report (:mod:`cxpredict.report`).
``manifest.json``
    What the run used (as-of, model versions) and the SHA-256 of every file above; written last.

Guarantees
----------
Idempotent
    The same tables, as-of instant and model versions give byte-identical files: nothing
    about the moment of the run is written into them, floats are rounded to
    :data:`DECIMALS` decimals before ranking and writing, and every sort breaks ties by
    ``customer_id``. (``validation/validation_report.json`` records the moment of the run and
    is the one exception.)
Atomic
    Every file is written beside its target and renamed over it (:func:`cxpredict.io.atomic_path`);
    a killed run leaves each previous file whole.
Exclusive
    A run holds an exclusive ``flock`` on ``<out>/.cxpredict.lock`` (:class:`OutputLock`);
    a second run on the same folder fails with :class:`~cxpredict.errors.OutputLocked`
    naming the holder's pid. The kernel releases the lock when its holder dies, so a lock file
    left by a dead run is simply taken over.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cxpredict.config import ProjectConfig, ScoringConfig, task_changes
from cxpredict.errors import (
    ConfigError,
    DriftFailed,
    IneligibleTask,
    OutputLocked,
    TaskMismatch,
)
from cxpredict.features import (
    Vocabulary,
    build_features,
    feature_catalogue,
)
from cxpredict.features.season import SEASON_FEATURES
from cxpredict.io import (
    LoadResult,
    atomic_path,
    check_inputs_kept,
    check_rejects,
    load_tables,
    write_validation,
)
from cxpredict.labels import eligible
from cxpredict.schemas import Tables, to_utc
from cxpredict.spine import feed_gap

#: Decimals kept for every float written (scores, probabilities, values, percentiles).
DECIMALS = 6
#: Name of the lock file inside the output folder.
LOCK_NAME = ".cxpredict.lock"
#: Number of reasons and preferences written per customer.
N_REASONS = 3
N_PREFERENCES = 3
TIERS: tuple[str, str, str] = ("high", "medium", "low")
STAGES: tuple[str, ...] = ("new", "active", "at risk", "lapsed")

LIST_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "rank",
    "score",
    "percentile",
    "tier",
    *(f"reason_{k}" for k in range(1, N_REASONS + 1)),
    "model_version",
    "as_of",
)
PREFERENCE_COLUMNS: tuple[str, ...] = tuple(
    column for k in range(1, N_PREFERENCES + 1) for column in (f"pref_{k}", f"pref_{k}_probability")
)
CUSTOMER_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "priority_rank",
    "tier",
    "lifecycle_stage",
    "churn_probability",
    "repurchase_probability",
    "expected_value",
    "value_at_risk",
    "value_at_risk_rank",
    "days_since_last_order",
    "usual_gap_days",
    "next_order_date",
    *(f"reason_{k}" for k in range(1, N_REASONS + 1)),
    *(f"preferred_category_{k}" for k in range(1, N_PREFERENCES + 1)),
    "best_channel",
    "action",
    "offer",
    "contact_channel",
    "as_of",
)
DRIFT_COLUMNS: tuple[str, ...] = ("task", "variable", "kind", "psi", "status")
#: Time since a fixed past event (signup, first order): every customer's value grows with the
#: calendar between the training reference and today, so their drift warns but never fails.
AGE_FEATURES: frozenset[str] = frozenset(
    {"tenure_days", "days_since_signup", "days_since_first_order", "btyd_t_weeks"}
)


# ------------------------------------------------------------------------------ drift


@dataclass(frozen=True)
class Reference:
    """A variable's distribution at training time: bins and the share of rows in each.

    Bins are closed on the right: bin 0 is ``x <= edges[0]``, bin ``i`` is
    ``edges[i-1] < x <= edges[i]`` and the last bin is ``x > edges[-1]``; missing values
    have their own share. ``proportions`` has ``len(edges) + 1`` entries; together with
    ``missing`` they sum to 1.

    The JSON form (:meth:`to_dict`) is
    ``{"edges": [...], "proportions": [...], "missing": 0.0}``.
    """

    edges: tuple[float, ...]
    proportions: tuple[float, ...]
    missing: float = 0.0

    def __post_init__(self) -> None:
        if len(self.proportions) != len(self.edges) + 1:
            raise ValueError(
                f"a reference with {len(self.edges)} edges needs {len(self.edges) + 1} "
                f"proportions; got {len(self.proportions)}"
            )
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"reference edges must increase strictly; got {self.edges}")
        total = sum(self.proportions) + self.missing
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"reference proportions and missing share sum to {total}, not 1")

    def to_dict(self) -> dict[str, Any]:
        """The reference as plain JSON types."""
        return {
            "edges": list(self.edges),
            "proportions": list(self.proportions),
            "missing": self.missing,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reference:
        """Read :meth:`to_dict`'s form."""
        return cls(
            tuple(float(e) for e in data["edges"]),
            tuple(float(p) for p in data["proportions"]),
            float(data.get("missing", 0.0)),
        )


def bin_shares(edges: Sequence[float], values: np.ndarray) -> tuple[np.ndarray, float]:
    """Share of ``values`` in each right-closed bin of ``edges``, and the missing share."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return np.zeros(len(edges) + 1), 0.0
    missing = int(np.count_nonzero(np.isnan(values)))
    # A count at or below each edge (NaN is never below): one comparison per edge, which is
    # several times faster than placing every value among at most nine edges.
    at_most = [np.count_nonzero(values <= edge) for edge in edges]
    counts = np.diff(np.array([0, *at_most, len(values) - missing], dtype=np.int64))
    return counts / len(values), missing / len(values)


def reference_from_values(values: np.ndarray, *, n_bins: int = 10) -> Reference:
    """The :class:`Reference` of ``values``: quantile edges, at most ``n_bins`` bins.

    Edges are the distinct inner quantiles of the non-missing values (observed values, not
    interpolated), so a discrete variable (a count, a flag) gets one bin per value rather
    than empty duplicates.
    """
    values = np.asarray(values, dtype=np.float64)
    present = values[~np.isnan(values)]
    if len(present) == 0:
        edges: tuple[float, ...] = ()
    else:
        quantiles = np.quantile(present, np.linspace(0, 1, n_bins + 1)[1:-1], method="lower")
        edges = tuple(float(q) for q in np.unique(quantiles))
    shares, missing = bin_shares(edges, values)
    return Reference(edges, tuple(float(s) for s in shares), missing)


def psi(reference: Reference, values: np.ndarray, *, floor: float = 1e-4) -> float:
    """Population stability index of ``values`` against a training ``reference``.

    ``PSI = sum_b (actual_b - expected_b) * ln(actual_b / expected_b)`` over the reference's
    bins plus the missing bin; shares below ``floor`` are raised to it so that an empty bin
    counts as a large but finite shift. 0 means the same distribution; above 0.1 is usually
    read as a moderate shift, above 0.25 as a large one.
    """
    actual, missing = bin_shares(reference.edges, values)
    expected = np.append(np.asarray(reference.proportions, dtype=np.float64), reference.missing)
    actual = np.append(actual, missing)
    used = (expected > 0) | (actual > 0)
    e = np.maximum(expected[used], floor)
    a = np.maximum(actual[used], floor)
    return float(np.sum((a - e) * np.log(a / e)))


def drift_status(value: float, *, warn: float, fail: float) -> str:
    """``ok``, ``warn`` (above ``warn``) or ``fail`` (above ``fail``); ``not checked`` for NaN."""
    if not np.isfinite(value):
        return "not checked"
    if value > fail:
        return "fail"
    if value > warn:
        return "warn"
    return "ok"


def drift_report(
    task: str,
    references: Mapping[str, Reference],
    current: Mapping[str, np.ndarray],
    *,
    kinds: Mapping[str, str] | None = None,
    warn: float,
    fail: float,
) -> pd.DataFrame:
    """PSI of every variable of ``current`` against its reference, with its status.

    A variable without a reference gets a NaN PSI and the status ``not checked``. The
    customer-age features (:data:`AGE_FEATURES`) are at most a warning: they grow with the
    calendar, so they differ from any earlier reference by construction. The season
    features (:data:`~cxpredict.features.season.SEASON_FEATURES`, the same for every
    customer) are not checked: they follow the calendar and nothing else.

    Returns
    -------
    DataFrame
        Columns :data:`DRIFT_COLUMNS`, one row per variable, in the order of ``current``.
    """
    rows = []
    for name, values in current.items():
        reference = None if name in SEASON_FEATURES else references.get(name)
        value = psi(reference, values) if reference is not None else float("nan")
        default = "age" if name in AGE_FEATURES else "feature"
        kind = (kinds or {}).get(name, "season" if name in SEASON_FEATURES else default)
        status = drift_status(value, warn=warn, fail=fail)
        rows.append(
            {
                "task": task,
                "variable": name,
                "kind": kind,
                "psi": round(value, DECIMALS) if np.isfinite(value) else value,
                "status": "warn" if kind == "age" and status == "fail" else status,
            }
        )
    return pd.DataFrame(rows, columns=list(DRIFT_COLUMNS))


def check_drift(report: pd.DataFrame, *, fail: float, stale: Sequence[str] = ()) -> None:
    """Raise :class:`DriftFailed` naming the variables whose PSI is above ``fail``.

    ``stale``: the warning of a feed that stopped before the as-of date, which comes first in
    the message (a silent feed makes every customer look silent: the likeliest cause).
    """
    failed = report[report["status"] == "fail"].sort_values(["psi", "variable"], ascending=False)
    if failed.empty:
        return
    listed = ", ".join(
        f"{r.task}/{r.variable} ({r.psi:.2f})" for r in failed.head(8).itertuples(index=False)
    )
    first = "".join(f"{note[0].upper()}{note[1:]}. " for note in stale)
    raise DriftFailed(
        f"{first}{len(failed)} variable(s) drifted beyond scoring.drift_fail_psi = {fail:g} "
        f"from the training reference: {listed}. Check the input data for a broken feed or a "
        "changed definition; if the shift is real, retrain and promote a new champion, or "
        "raise scoring.drift_fail_psi in the config. See drift.csv in the output folder."
    )


# ------------------------------------------------------------------------------ text columns
# A million-row list holds a dozen text columns; building them from Python strings costs
# seconds each, so they are built as Arrow arrays (from codes and a small dictionary, or by
# taking rows of another Arrow array) and handed to pandas as its ``str`` dtype.

_STR = pd.StringDtype("pyarrow", na_value=np.nan)


def _arrow_text(values: Any) -> pa.Array:
    """Text values as one Arrow string array (zero-copy for pandas ``str`` columns)."""
    if isinstance(values, pd.Index):
        values = values.to_series()
    if isinstance(values, pd.Series) and not (
        pd.api.types.is_string_dtype(values.dtype) or pd.api.types.is_object_dtype(values.dtype)
    ):
        values = values.astype("str")
    array = pa.array(values, type=pa.string(), from_pandas=True)
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _text_series(array: pa.Array | pa.ChunkedArray) -> pd.Series:
    """An Arrow string array as a pandas ``str`` Series, missing values as ``""``."""
    filled = pc.fill_null(array.cast(pa.string()), "")
    return filled.to_pandas(types_mapper={pa.string(): _STR}.get).reset_index(drop=True)


def _from_codes(codes: np.ndarray, labels: Sequence[str]) -> pd.Series:
    """``labels[codes]`` as a ``str`` Series; a negative code gives ``""``."""
    codes = np.asarray(codes)
    indices = pa.array(codes.astype(np.int32), mask=codes < 0)
    dictionary = pa.DictionaryArray.from_arrays(indices, pa.array(list(labels), pa.string()))
    return _text_series(dictionary)


def _constant(text: str, n: int) -> pd.Series:
    return _from_codes(np.zeros(n, dtype=np.int32), [text])


def _rows_in(ids: pa.Array, of: pa.Array) -> np.ndarray:
    """For each id of ``ids``, its row in ``of`` (-1 when absent)."""
    where = pc.index_in(ids, value_set=of)
    return where.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _take_text(values: Any, rows: np.ndarray) -> pd.Series:
    """``values[rows]`` as a ``str`` Series; ``rows == -1`` gives ``""``."""
    array = _arrow_text(values)
    indices = pa.array(np.maximum(rows, 0), mask=rows < 0)
    return _text_series(array.take(indices) if len(array) else pa.nulls(len(rows), pa.string()))


# ------------------------------------------------------------------------------ ranking


def ranked(scores: pd.DataFrame, *, score: str = "score") -> pd.DataFrame:
    """Rows sorted by ``score`` (rounded to :data:`DECIMALS`), highest first, ties by id.

    Adds ``rank`` (1 = contact first) and ``percentile``: ``1 - (r - 1) / n`` where ``r`` is
    the best rank among customers with the same score and ``n`` the customers with a score,
    so that equal scores share a percentile (the top customer has 1, the last ``1/n`` unless
    tied). Missing scores come last, with a missing percentile: a tier is a share of the
    customers scored.
    """
    values = scores[score].to_numpy(dtype=np.float64, na_value=np.nan).round(DECIMALS)
    keys = pa.table(
        {"score": pa.array(values, from_pandas=True), "id": _arrow_text(scores["customer_id"])}
    )
    order = pc.sort_indices(
        keys, sort_keys=[("score", "descending", "at_end"), ("id", "ascending", "at_end")]
    ).to_numpy()
    frame = scores.iloc[order].reset_index(drop=True)
    sorted_values = values[order]
    frame[score] = sorted_values
    n = len(frame)
    rank = np.arange(1, n + 1, dtype=np.int64)
    same = np.zeros(n, dtype=bool)
    if n > 1:
        a, b = sorted_values[1:], sorted_values[:-1]
        same[1:] = (a == b) | (np.isnan(a) & np.isnan(b))
    best = np.maximum.accumulate(np.where(same, 0, rank))
    known = np.isfinite(sorted_values)
    frame["rank"] = rank
    percentile = (1.0 - (best - 1) / max(int(known.sum()), 1)).round(DECIMALS)
    frame["percentile"] = np.where(known, percentile, np.nan)
    return frame


def check_tier_cuts(cuts: Sequence[float]) -> tuple[float, float]:
    """The ``(high, medium)`` percentile cut points, or a :class:`ConfigError`."""
    if len(cuts) != 2 or not 0 < cuts[1] < cuts[0] < 1:
        raise ConfigError(
            f"scoring.tier_cuts must be two percentile cut points, high first, both strictly "
            f"between 0 and 1 (e.g. [0.8, 0.5]); got {list(cuts)}"
        )
    return float(cuts[0]), float(cuts[1])


def assign_tiers(percentile: pd.Series | np.ndarray, cuts: Sequence[float]) -> np.ndarray:
    """``high`` above the first cut, ``medium`` above the second, ``low`` otherwise.

    The cuts apply to the percentile of :func:`ranked`, not to the score: with the default
    ``(0.8, 0.5)`` the top 20% of a list are ``high`` and the next 30% ``medium``, whatever
    the scale of the score (a probability or an amount).
    """
    return np.asarray(TIERS, dtype=object)[_tier_codes(percentile, cuts)]


def _tier_codes(percentile: pd.Series | np.ndarray, cuts: Sequence[float]) -> np.ndarray:
    high, medium = check_tier_cuts(cuts)
    p = np.asarray(percentile, dtype=np.float64)
    return np.where(p > high, 0, np.where(p > medium, 1, 2))


# ------------------------------------------------------------------------------ lifecycle


@dataclass(frozen=True)
class LifecycleRules:
    """How a customer's lifecycle stage is read from their own buying rhythm.

    The *usual gap* is the customer's mean number of days between purchase days
    (``gap_mean_days``), at least ``min_gap_days``; a customer with fewer than two purchase
    days gets the median usual gap of the customers who have one (``fallback_gap_days``
    when nobody has). *Overdue* is ``days_since_last_order / usual gap``. Then, first match:

    ========  ===============================================================================
    new       first order less than ``new_days`` ago, or no order yet and signed up less than
              ``new_days`` ago
    lapsed    no order at all (and not new)
    active    overdue at most ``at_risk_ratio`` (ordered within 1.5 usual gaps by default)
    at risk   overdue at most ``lapsed_ratio`` (within 3 usual gaps)
    lapsed    overdue beyond ``lapsed_ratio``
    ========  ===============================================================================
    """

    new_days: float = 60.0
    min_gap_days: float = 14.0
    fallback_gap_days: float = 60.0
    at_risk_ratio: float = 1.5
    lapsed_ratio: float = 3.0


def _column(frame: pd.DataFrame, name: str, *, missing: float = np.nan) -> np.ndarray:
    """Column ``name`` of ``frame`` as floats, ``missing`` where it or a value is absent."""
    if name not in frame.columns:
        return np.full(len(frame), missing)
    values = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
    return values if np.isnan(missing) else np.where(np.isnan(values), missing, values)


def usual_gap_days(features: pd.DataFrame, rules: LifecycleRules = LifecycleRules()) -> np.ndarray:
    """Each customer's usual days between purchases (see :class:`LifecycleRules`)."""
    gap = _column(features, "gap_mean_days")
    known = gap[np.isfinite(gap)]
    fallback = float(np.median(known)) if len(known) else rules.fallback_gap_days
    return np.maximum(np.where(np.isfinite(gap), gap, fallback), rules.min_gap_days)


def lifecycle_stages(features: pd.DataFrame, rules: LifecycleRules = LifecycleRules()) -> pd.Series:
    """The lifecycle stage of every customer as of the features' cutoff.

    Window: the features' (events strictly before the cutoff); the rules are those of
    :class:`LifecycleRules`.

    Parameters
    ----------
    features
        Indexed by ``customer_id``; uses ``days_since_first_order``, ``days_since_last_order``,
        ``gap_mean_days`` and ``days_since_signup`` (missing columns count as unknown).

    Returns
    -------
    Series
        ``new``, ``active``, ``at risk`` or ``lapsed``, indexed like ``features``.
    """
    stage = np.asarray(STAGES, dtype=object)[_stage_codes(features, rules)]
    return pd.Series(stage, index=features.index, name="lifecycle_stage")


def _stage_codes(features: pd.DataFrame, rules: LifecycleRules) -> np.ndarray:
    """Positions in :data:`STAGES` of each customer's stage."""
    first = _column(features, "days_since_first_order")
    last = _column(features, "days_since_last_order")
    signup = _column(features, "days_since_signup")
    overdue = last / usual_gap_days(features, rules)
    ordered = np.isfinite(last)
    new = np.where(ordered, first < rules.new_days, signup < rules.new_days)
    new_, active, at_risk, lapsed = (
        STAGES.index(s) for s in ("new", "active", "at risk", "lapsed")
    )
    return np.select(
        [new, ~ordered, overdue <= rules.at_risk_ratio, overdue <= rules.lapsed_ratio],
        [new_, lapsed, active, at_risk],
        default=lapsed,
    )


# ------------------------------------------------------------------------------ actions


@dataclass(frozen=True)
class ActionRule:
    """One row of the action table: who it applies to and what to offer them."""

    name: str
    who: str
    offer: str
    channel: str


#: The suggested action of a customer is the first rule that applies. ``{category}`` and
#: ``{channel}`` are the customer's preferred category and best channel.
ACTION_RULES: tuple[ActionRule, ...] = (
    ActionRule(
        "care call",
        "high value, with a complaint in the last 90 days or a message still unanswered "
        "(whatever the stage: an offer to a customer waiting for an answer reads as not "
        "listening)",
        "personal call from customer care to resolve the open issue; no discount first",
        "phone",
    ),
    ActionRule(
        "retention offer",
        "at risk, high value",
        "personal retention offer in {category}",
        "{channel}",
    ),
    ActionRule(
        "first order",
        "signed up but never ordered",
        "first-order incentive on bestsellers",
        "{channel}",
    ),
    ActionRule(
        "win-back",
        "lapsed, and not likely to order again (repurchase probability under 50%)",
        "win-back offer in {category}",
        "{channel}",
    ),
    ActionRule(
        "reminder",
        "at risk, or lapsed but likely to order again (no discount for a customer the "
        "repurchase model expects back)",
        "reminder with new arrivals in {category}",
        "{channel}",
    ),
    ActionRule(
        "welcome",
        "new, one order so far",
        "welcome journey with a second-order incentive in {category}",
        "{channel}",
    ),
    ActionRule(
        "loyalty",
        "active (or new with repeat orders), high value",
        "loyalty recognition (early access in {category}); no discount",
        "{channel}",
    ),
    ActionRule(
        "nurture",
        "active (or new with repeat orders)",
        "regular newsletter featuring {category}; no incentive",
        "{channel}",
    ),
)
DEFAULT_CATEGORY = "their usual categories"
DEFAULT_CHANNEL = "email"


def suggest_actions(customers: pd.DataFrame) -> pd.DataFrame:
    """The first :data:`ACTION_RULES` rule that applies to each customer.

    Parameters
    ----------
    customers
        Columns ``lifecycle_stage``, ``value_tier`` (tier of the expected value),
        ``open_issues`` (complaints of the last 90 days plus messages still unanswered),
        ``preferred_category_1`` and ``best_channel`` (missing values allowed), and
        optionally ``ever_ordered`` (everyone has when the column is absent),
        ``repeat_buyer`` (two orders or more; nobody when absent) and
        ``repurchase_probability`` (missing or absent: not likely to order again).

    Returns
    -------
    DataFrame
        ``action``, ``offer`` and ``contact_channel``, indexed like ``customers``.
    """
    stage = customers["lifecycle_stage"].to_numpy(dtype=object)
    high = (customers["value_tier"] == TIERS[0]).to_numpy()
    issues = customers["open_issues"].fillna(0).to_numpy(dtype=np.float64) > 0
    ordered = _column(customers, "ever_ordered", missing=1.0) > 0
    repeat = _column(customers, "repeat_buyer", missing=0.0) > 0
    back = _column(customers, "repurchase_probability", missing=0.0) >= 0.5
    # a new customer who has ordered again is past the second-order incentive
    settled = (stage == "active") | ((stage == "new") & repeat)
    conditions = [
        high & issues,
        (stage == "at risk") & high,
        ~ordered,
        (stage == "lapsed") & ~back,
        (stage == "at risk") | (stage == "lapsed"),
        (stage == "new") & ~repeat,
        settled & high,
        settled,
    ]
    which = np.select(conditions, list(range(len(ACTION_RULES))), default=len(ACTION_RULES) - 1)
    category = customers["preferred_category_1"].astype(object).fillna(DEFAULT_CATEGORY)
    channel = customers["best_channel"].astype(object).fillna(DEFAULT_CHANNEL)
    out = pd.DataFrame(
        {
            "action": _from_codes(which, [r.name for r in ACTION_RULES]),
            "offer": _fill(which, category.to_numpy(), [r.offer for r in ACTION_RULES], "category"),
            "contact_channel": _fill(
                which, channel.to_numpy(), [r.channel for r in ACTION_RULES], "channel"
            ),
        }
    )
    return out.set_axis(customers.index)


def _fill(which: np.ndarray, values: np.ndarray, templates: list[str], key: str) -> pd.Series:
    """``templates[which[i]].format(key=values[i])``, formatting each distinct pair once."""
    codes, uniques = pd.factorize(values)
    width = max(len(uniques), 1)
    distinct, inverse = np.unique(which.astype(np.int64) * width + codes, return_inverse=True)
    texts = [templates[int(p) // width].format(**{key: uniques[int(p) % width]}) for p in distinct]
    return _from_codes(inverse.reshape(-1), texts)


# ------------------------------------------------------------------------------ locking


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class OutputLock:
    """An exclusive lock on an output folder, held for the length of one run.

    The lock is an ``flock`` on ``<folder>/.cxpredict.lock``, whose text names the holder
    (``pid``, host, as-of). ``flock`` is released by the kernel when the holder exits or is
    killed, so a lock file left behind by a dead run is taken over by the next one; the file
    itself is never removed (removing it would let two runs lock two different files).

    Raises
    ------
    OutputLocked
        On entry, when another live process holds the lock.
    """

    def __init__(self, folder: str | Path, *, label: str = "") -> None:
        self.path = Path(folder) / LOCK_NAME
        self.label = label
        self._fd: int | None = None
        self.took_over: int | None = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise OutputLocked(
                f"output folder {str(self.path.parent)!r} is locked by another scoring run "
                f"({holder}); wait for it to finish, or write to another folder with --out. "
                f"The lock is released when that process ends (lock file: {self.path.name})"
            ) from None
        previous = _holder_pid(_read_holder(fd))
        if previous is not None and previous != os.getpid() and not _pid_alive(previous):
            self.took_over = previous
        text = f"pid={os.getpid()} host={socket.gethostname()} {self.label}".strip() + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 512, 0).decode(errors="replace").strip()
    return text or "holder unknown"


def _holder_pid(text: str) -> int | None:
    for part in text.split():
        if part.startswith("pid=") and part[4:].isdigit():
            return int(part[4:])
    return None


# ------------------------------------------------------------------------------ lists


def as_of_text(as_of: pd.Timestamp) -> str:
    """The as-of instant as written in the lists: a date when it is midnight UTC."""
    if as_of == as_of.normalize():
        return f"{as_of:%Y-%m-%d}"
    return as_of.strftime("%Y-%m-%dT%H:%M:%SZ")


def task_list(
    scored: pd.DataFrame,
    *,
    kind: str,
    model_version: str,
    as_of: pd.Timestamp,
    tier_cuts: Sequence[float],
    reasons: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One task's ranked list, highest priority first.

    Parameters
    ----------
    scored
        ``customer_id`` and ``score`` (a calibrated probability; for a value task the
        expected spend over the horizon; for a preference task the probability of the top
        value), plus ``pref_k`` / ``pref_k_probability`` columns for preference tasks and
        ``expected_orders`` for value tasks. Already :func:`ranked` if it has a ``rank``.
    kind
        The task's kind (``churn``, ``repurchase``, ``preference``, ``value``).
    model_version
        The registered model version that scored.
    as_of
        The instant scored at.
    tier_cuts
        ``scoring.tier_cuts`` (percentile cut points, see :func:`assign_tiers`).
    reasons
        Indexed by ``customer_id``, columns ``reason_1`` .. ``reason_3``; customers without a
        row get empty reasons.

    Returns
    -------
    DataFrame
        :data:`LIST_COLUMNS`, then :data:`PREFERENCE_COLUMNS` (preference) or
        ``expected_orders`` and, when ``scored`` has them, ``next_order_date``,
        ``next_order_days`` and ``next_order_note`` (value); floats rounded to
        :data:`DECIMALS`.
    """
    frame = scored if "rank" in scored.columns else ranked(scored)
    n = len(frame)
    ids = _arrow_text(frame["customer_id"])
    out: dict[str, Any] = {
        "customer_id": _text_series(ids),
        "rank": frame["rank"].to_numpy(dtype=np.int64),
        "score": frame["score"].to_numpy(dtype=np.float64),
        "percentile": frame["percentile"].to_numpy(dtype=np.float64),
        "tier": _from_codes(_tier_codes(frame["percentile"], tier_cuts), TIERS),
    }
    rows = None
    if reasons is not None and len(reasons):
        rows = _rows_in(ids, _arrow_text(reasons.index))
    for k in range(1, N_REASONS + 1):
        column = f"reason_{k}"
        if rows is None or reasons is None or column not in reasons.columns:
            out[column] = _constant("", n)
        else:
            out[column] = _take_text(reasons[column], rows)
    out["model_version"] = _constant(str(model_version), n)
    out["as_of"] = _constant(as_of_text(as_of), n)
    if kind == "preference":
        for k in range(1, N_PREFERENCES + 1):
            label, probability = f"pref_{k}", f"pref_{k}_probability"
            out[label] = _text(frame[label]) if label in frame.columns else _constant("", n)
            out[probability] = (
                frame[probability].to_numpy(dtype=np.float64).round(DECIMALS)
                if probability in frame.columns
                else np.full(n, np.nan)
            )
    elif kind == "value" and "expected_orders" in frame.columns:
        orders = frame["expected_orders"].to_numpy(dtype=np.float64)
        out["expected_orders"] = orders.round(DECIMALS)
    if kind == "value" and "next_order_days" in frame.columns:
        days = frame["next_order_days"].to_numpy(dtype=np.float64)
        # the (UTC) day the median falls on, as the rounded days say
        days = days.round(1)
        dates = pd.Timestamp(as_of) + pd.to_timedelta(days, unit="D")
        out["next_order_date"] = np.where(np.isfinite(days), dates.strftime("%Y-%m-%d"), "")
        out["next_order_days"] = days
        out["next_order_note"] = _text(frame["next_order_note"])
    return pd.DataFrame(out)


def _text(values: pd.Series) -> pd.Series:
    """Text with missing values as ``""`` (``str`` dtype)."""
    codes, uniques = pd.factorize(values.to_numpy(dtype=object), use_na_sentinel=True)
    return _from_codes(codes, [str(u) for u in uniques])


# ------------------------------------------------------------------------------ customers


def _first_task(tasks: Mapping[str, Any], kind: str, **match: str) -> str | None:
    """The first configured task of ``kind`` (whose attributes equal ``match``), or ``None``."""
    for name, task in tasks.items():
        if task.kind == kind and all(getattr(task, k, None) == v for k, v in match.items()):
            return name
    return None


def role_of_tasks(tasks: Mapping[str, Any]) -> dict[str, str | None]:
    """Which configured task feeds each column of the customer table.

    ``churn``, ``repurchase`` and ``value``: the first task of that kind; ``category``: the
    first preference task on ``category``; ``channel``: the first preference task on
    ``channel``, preferring the interactions table (where the brand reaches the customer)
    over order channels.
    """
    channel = _first_task(tasks, "preference", attribute="channel", table="interactions")
    return {
        "churn": _first_task(tasks, "churn"),
        "repurchase": _first_task(tasks, "repurchase"),
        "value": _first_task(tasks, "value"),
        "category": _first_task(tasks, "preference", attribute="category"),
        "channel": channel or _first_task(tasks, "preference", attribute="channel"),
    }


#: What the customer table ranks by, best first: value at risk needs a churn and a value task;
#: without them the priority falls back on the tasks that were scored.
PRIORITY_BASES: tuple[str, ...] = (
    "value at risk",
    "churn probability",
    "chance of no repurchase",
    "expected value",
)


def priority_basis(lists: Mapping[str, pd.DataFrame], tasks: Mapping[str, Any]) -> str | None:
    """What the customer table's ``priority_rank`` ranks by, given the lists scored (see
    :data:`PRIORITY_BASES`); ``None`` when no churn, repurchase or value task was scored."""
    roles = role_of_tasks(tasks)

    def scored(role: str) -> bool:
        return roles[role] is not None and roles[role] in lists

    if scored("churn") and scored("value"):
        return PRIORITY_BASES[0]
    if scored("churn"):
        return PRIORITY_BASES[1]
    if scored("repurchase"):
        return PRIORITY_BASES[2]
    if scored("value"):
        return PRIORITY_BASES[3]
    return None


def _open_issues(features: pd.DataFrame) -> np.ndarray:
    """Complaints of the last 90 days plus messages still unanswered, however old: a message
    stays open until it is answered."""
    unanswered = next(
        (
            name
            for name in ("unanswered_messages_lifetime", "unanswered_messages_90d")
            if name in features.columns
        ),
        "unanswered_messages_lifetime",
    )
    total = np.zeros(len(features))
    for name in ("complaints_90d", unanswered):
        total += np.nan_to_num(_column(features, name))
    return total


def customer_table(
    features: pd.DataFrame,
    lists: Mapping[str, pd.DataFrame],
    tasks: Mapping[str, Any],
    *,
    as_of: pd.Timestamp,
    tier_cuts: Sequence[float],
    rules: LifecycleRules = LifecycleRules(),
) -> pd.DataFrame:
    """One row per customer known before ``as_of``, ordered by value at risk.

    ``value_at_risk`` is ``churn_probability * expected_value`` (the value task's expected
    spend over its horizon); customers a task does not score (for instance churn scores only
    customers active in its ``active_days``) have no value there. ``priority_rank`` and
    ``tier`` follow the value at risk (missing last, ties by ``customer_id``), with the
    percentile cut points of ``scoring.tier_cuts``; without a churn and a value list they
    follow what was scored (:func:`priority_basis`). Reasons are the churn list's (else the
    repurchase list's); preferred categories and the best channel come from the preference
    tasks (see :func:`role_of_tasks`); the action from :data:`ACTION_RULES`.

    Returns
    -------
    DataFrame
        :data:`CUSTOMER_COLUMNS`; floats rounded to :data:`DECIMALS`.
    """
    roles = role_of_tasks(tasks)
    ids = _arrow_text(features.index)
    n = len(ids)
    rows: dict[str, np.ndarray] = {}  # per list: the list's row of each customer, -1 if none

    def where(role: str, column: str) -> tuple[pd.DataFrame, np.ndarray] | None:
        name = roles[role]
        if name is None or name not in lists or column not in lists[name].columns:
            return None
        if name not in rows:
            rows[name] = _rows_in(ids, _arrow_text(lists[name]["customer_id"]))
        return lists[name], rows[name]

    def number(role: str, column: str) -> np.ndarray:
        found = where(role, column)
        if found is None:
            return np.full(n, np.nan)
        table, row = found
        values = table[column].to_numpy(dtype=np.float64, na_value=np.nan)
        picked = values[np.maximum(row, 0)] if len(values) else np.full(n, np.nan)
        return np.where(row >= 0, picked, np.nan)

    def text(role: str, column: str) -> pd.Series:
        found = where(role, column)
        return _constant("", n) if found is None else _take_text(found[0][column], found[1])

    churn = number("churn", "score")
    value = number("value", "score")
    risk = (churn * value).round(DECIMALS)
    stage = _stage_codes(features, rules)
    reason_role = "churn" if roles["churn"] in lists else "repurchase"
    out: dict[str, Any] = {"customer_id": _text_series(ids)}
    out["churn_probability"] = churn
    out["repurchase_probability"] = number("repurchase", "score")
    out["expected_value"] = value
    out["value_at_risk"] = risk
    last_order = _column(features, "days_since_last_order")
    ordered = np.isfinite(last_order)
    out["days_since_last_order"] = last_order.round(DECIMALS)
    # a customer who never ordered has no rhythm to show (the stage reads the signup)
    gap = usual_gap_days(features, rules).round(DECIMALS)
    out["usual_gap_days"] = np.where(ordered, gap, np.nan)
    out["next_order_date"] = text("value", "next_order_date")
    out["lifecycle_stage"] = _from_codes(stage, STAGES)
    # why to contact: the churn model's reasons, else (a churn score below the model's
    # typical one) the value model's, which say why the expected value is high
    risk_reasons = [text(reason_role, f"reason_{k}") for k in range(1, N_REASONS + 1)]
    value_reasons = [text("value", f"reason_{k}") for k in range(1, N_REASONS + 1)]
    told = (risk_reasons[0] != "").to_numpy()
    for k in range(N_REASONS):
        chosen = np.where(
            told, risk_reasons[k].to_numpy(dtype=object), value_reasons[k].to_numpy(dtype=object)
        )
        out[f"reason_{k + 1}"] = _text_series(pa.array(chosen, pa.string()))
    for k in range(1, N_PREFERENCES + 1):
        out[f"preferred_category_{k}"] = text("category", f"pref_{k}")
    out["best_channel"] = text("channel", "pref_1")

    basis = priority_basis(lists, tasks)
    urgency = {
        PRIORITY_BASES[0]: risk,
        PRIORITY_BASES[1]: churn,
        PRIORITY_BASES[2]: 1.0 - out["repurchase_probability"],
        PRIORITY_BASES[3]: value,
    }.get(basis or "", np.full(n, np.nan))
    ranking = pd.DataFrame({"customer_id": out["customer_id"], "score": urgency})
    by_urgency = ranked(ranking)
    position = _rows_in(ids, _arrow_text(by_urgency["customer_id"]))
    priority = by_urgency["rank"].to_numpy()[position]
    missing = np.isnan(urgency)
    out["priority_rank"] = priority
    out["value_at_risk_rank"] = pd.array(np.where(missing, 0, priority), dtype="Int64")
    out["value_at_risk_rank"][np.isnan(risk)] = pd.NA
    tier = _tier_codes(by_urgency["percentile"].to_numpy()[position], tier_cuts)
    out["tier"] = _from_codes(np.where(missing, 2, tier), TIERS)

    by_value = ranked(ranking.assign(score=value))
    value_position = _rows_in(ids, _arrow_text(by_value["customer_id"]))
    value_tier = _tier_codes(by_value["percentile"].to_numpy()[value_position], tier_cuts)
    stages = np.asarray(STAGES, dtype=object)
    actions = suggest_actions(
        pd.DataFrame(
            {
                "lifecycle_stage": stages[stage],
                "value_tier": np.asarray(TIERS, dtype=object)[
                    np.where(np.isnan(value), 2, value_tier)
                ],
                "open_issues": _open_issues(features),
                "ever_ordered": ordered,
                "repeat_buyer": _column(features, "orders_lifetime") >= 2,
                "repurchase_probability": out["repurchase_probability"],
                "preferred_category_1": out["preferred_category_1"]
                .replace("", None)
                .to_numpy(dtype=object, na_value=None),
                "best_channel": out["best_channel"]
                .replace("", None)
                .to_numpy(dtype=object, na_value=None),
            }
        )
    )
    for column in actions.columns:
        out[column] = actions[column].reset_index(drop=True)
    out["as_of"] = _constant(as_of_text(as_of), n)
    table = pd.DataFrame(out).iloc[np.argsort(priority, kind="stable")]
    return table[list(CUSTOMER_COLUMNS)].reset_index(drop=True)


# ------------------------------------------------------------------------------ writing


def write_list(frame: pd.DataFrame, path: Path) -> Path:
    """Write a list as CSV (``.csv``) or Parquet (``.parquet``), atomically and reproducibly.

    CSV floats have exactly :data:`DECIMALS` decimals, lines end with ``\\n``, text is quoted
    only when it must be, missing values and empty text are empty fields. Parquet holds the
    same rounded values. The CSV is written by DuckDB, several times faster than pandas on
    a million rows, in the frame's row order.
    """
    with atomic_path(path) as temporary:
        if path.suffix == ".csv":
            _write_csv(frame, temporary)
        else:
            frame.to_parquet(temporary, index=False, engine="pyarrow", compression="zstd")
    return path


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    columns = []
    for name in frame.columns:
        quoted = '"' + str(name).replace('"', '""') + '"'
        dtype = frame[name].dtype
        if pd.api.types.is_float_dtype(dtype):
            columns.append(
                f"CAST(round({quoted}, {DECIMALS}) AS DECIMAL(38, {DECIMALS})) AS {quoted}"
            )
        elif pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
            columns.append(f"nullif({quoted}, '') AS {quoted}")
        else:
            columns.append(quoted)
    finite = frame.copy(deep=False)
    for name in frame.columns:
        if pd.api.types.is_float_dtype(frame[name].dtype):
            values = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
            finite[name] = np.where(np.isfinite(values), values, np.nan)
    target = str(path).replace("'", "''")
    with duckdb.connect() as connection:
        connection.register("frame", finite)
        connection.execute(
            f"COPY (SELECT {', '.join(columns)} FROM frame) TO '{target}' "
            "(FORMAT csv, HEADER, DELIMITER ',')"
        )


def write_document(text: str, path: Path) -> Path:
    """Write UTF-8 text atomically, readable like any new file."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8", newline="\n")
    return path


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(
    paths: Sequence[Path], *, as_of: pd.Timestamp, versions: Mapping[str, str], root: Path
) -> str:
    """The run's manifest as JSON text: as-of, model versions and every file's SHA-256."""
    data = {
        "as_of": as_of_text(as_of),
        "models": dict(sorted(versions.items())),
        "files": {
            str(p.relative_to(root)): file_digest(p) for p in sorted(paths, key=lambda p: p.name)
        },
    }
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _manifest_files(out: Path) -> list[str]:
    """The files the folder's current manifest lists (none when it has no readable one)."""
    try:
        return list(json.loads((out / "manifest.json").read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _remove_stale(out: Path, previous: Sequence[str], written: Sequence[Path]) -> None:
    """Remove the files a previous run listed that this run did not write (a task scored
    then and not now), so that the folder holds one run's outputs, as its manifest says."""
    kept = {str(p.relative_to(out)) for p in written}
    root = out.resolve()
    for name in previous:
        path = (out / name).resolve()
        if name not in kept and path.parent == root and path.is_file():
            path.unlink()


# ------------------------------------------------------------------------------ predictions

_SCORE_NAMES: dict[str, tuple[str, ...]] = {
    "churn": ("score", "probability", "churn_probability"),
    "repurchase": ("score", "probability", "repurchase_probability"),
    "value": ("score", "expected_spend", "spend", "expected_value"),
}


def normalise_predictions(
    predictions: pd.DataFrame, ids: pd.Index, *, kind: str, top_k: int = N_PREFERENCES
) -> pd.DataFrame:
    """A model's output as ``customer_id``, ``score`` and the kind's extra columns.

    Parameters
    ----------
    predictions
        One row per customer, in the order of ``ids``: a probability (churn, repurchase), an
        expected spend and order count (value), or for a preference either ``pref_k`` /
        ``pref_k_probability`` columns or one probability column per value.
    ids
        The customers, in the order of the rows.
    """
    out = pd.DataFrame({"customer_id": np.asarray(ids, dtype=object).astype(str)})
    columns = [str(c) for c in predictions.columns if str(c) != "customer_id"]
    values = predictions.reset_index(drop=True)
    if kind in _SCORE_NAMES:
        name = next((c for c in _SCORE_NAMES[kind] if c in columns), None)
        if name is None:
            numeric = [c for c in columns if pd.api.types.is_numeric_dtype(values[c].dtype)]
            if not numeric:
                raise ValueError(f"the {kind} model returned no numeric column: {columns}")
            name = numeric[0]
        out["score"] = values[name].to_numpy(dtype=np.float64)
        if kind == "value":
            orders = next((c for c in ("expected_orders", "orders") if c in columns), None)
            if orders is not None:
                out["expected_orders"] = values[orders].to_numpy(dtype=np.float64)
        return out
    if "pref_1" in columns or "top_1" in columns:
        prefix = "pref" if "pref_1" in columns else "top"
        for k in range(1, top_k + 1):
            label, probability = f"{prefix}_{k}", f"{prefix}_{k}_probability"
            if label in columns:
                out[f"pref_{k}"] = values[label].astype(object).to_numpy()
                out[f"pref_{k}_probability"] = values[probability].to_numpy(dtype=np.float64)
    else:
        matrix = values[columns].to_numpy(dtype=np.float64)
        # Highest probability first; equal probabilities in the column order (value names).
        order = np.argsort(-matrix, axis=1, kind="stable")[:, :top_k]
        names = np.asarray(columns, dtype=object)
        for k in range(min(top_k, len(columns))):
            out[f"pref_{k + 1}"] = names[order[:, k]]
            out[f"pref_{k + 1}_probability"] = np.take_along_axis(matrix, order[:, [k]], 1)[:, 0]
    out["score"] = out.get("pref_1_probability", pd.Series(np.nan, index=out.index))
    return out


# ------------------------------------------------------------------------------ the job


class LoadedModel(Protocol):
    """What the job needs of a task's champion (:class:`cxpredict.registry.Champion`)."""

    name: str
    version: str
    features: tuple[str, ...]

    @property
    def bundle(self) -> Any: ...

    def check_features(self, features: pd.DataFrame, *, catalogue: pd.DataFrame) -> None: ...


ModelLoader = Callable[..., LoadedModel]


@dataclass(frozen=True)
class TaskResult:
    """One task's scores and what the report and the run log need about them."""

    name: str
    kind: str
    version: str
    frame: pd.DataFrame
    drift: pd.DataFrame
    calibration: pd.DataFrame | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoringRun:
    """What a scoring run wrote and measured.

    ``timings`` are seconds per stage (``scoring: <step>`` break the scoring stage down over
    all tasks); ``warnings`` are sentences also shown in the report.
    """

    out_dir: Path
    as_of: pd.Timestamp
    files: tuple[Path, ...]
    versions: dict[str, str]
    rows_in: dict[str, int]
    rows_out: dict[str, int]
    drift: pd.DataFrame
    warnings: tuple[str, ...]
    timings: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None


class _Stopwatch:
    """Seconds spent per stage (durations only: no moment of the run is recorded)."""

    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.timings: dict[str, float] = {}
        self._progress = progress
        self._start = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self._progress is not None:
            self._progress(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return time.perf_counter() - self._start


def resolve_tasks(config: ProjectConfig, tasks: Sequence[str] | None) -> list[str]:
    """The tasks to score: ``tasks`` in config order, or every configured task."""
    names = config.task_names()
    if not tasks:
        return names
    for name in tasks:
        config.task(name)  # a ConfigError naming the configured tasks
    wanted = set(tasks)
    return [name for name in names if name in wanted]


def check_task_definition(name: str, task: Any, model: LoadedModel) -> None:
    """Raise :class:`TaskMismatch` when ``model`` was trained for another definition of the
    task than the config's ``task`` (a changed horizon, activity window or attribute)."""
    trained = getattr(model.bundle, "task", None) or {}
    changed = task_changes(trained, task.model_dump(mode="json"))
    if changed:
        which = f"champion v{model.version}"
        raise TaskMismatch(
            f"task {name!r}: the config now says {', '.join(changed)}, so {which} answers "
            "another question; retrain the task (cxpredict train, or retrain_monthly.sh), or "
            "restore its definition in the config"
        )


def _vocabulary(model: LoadedModel) -> Vocabulary | None:
    vocabulary = getattr(model.bundle, "vocabulary", None)
    if vocabulary is None or isinstance(vocabulary, Vocabulary):
        return vocabulary
    return Vocabulary.from_dict(vocabulary)


def _references(model: LoadedModel) -> dict[str, Reference]:
    """The training reference stored with the model: per feature and ``score``."""
    stored = getattr(model.bundle, "reference", None) or getattr(
        model.bundle, "drift_reference", None
    )
    if not stored:
        return {}
    out = {name: Reference.from_dict(r) for name, r in (stored.get("features") or {}).items()}
    if stored.get("score"):
        out["score"] = Reference.from_dict(stored["score"])
    return out


def _calibration(model: LoadedModel) -> pd.DataFrame | None:
    table = getattr(model.bundle, "calibration", None)
    if table is None:
        return None
    frame = pd.DataFrame(table)
    needed = {"bin", "n", "mean_score", "actual_rate"}
    if not needed <= set(frame.columns):
        return None
    columns = ["bin", "n", "mean_score", "actual_rate"]
    if "cutoff" in frame.columns:  # several backtest cutoffs: the latest one
        frame = frame[frame["cutoff"].astype(str) == frame["cutoff"].astype(str).max()]
        frame = frame.assign(cutoff=frame["cutoff"].astype(str).str.slice(0, 10))
        columns.append("cutoff")
    return frame[columns].reset_index(drop=True)


#: Customers predicted per call: a preference model crosses every customer with every value,
#: so one call over a million customers would hold several copies of the features.
PREDICT_CHUNK = 100_000
#: Customers explained per call: the memory of one call grows with its rows, and chunks keep
#: it flat at a million customers; contributions are computed once per distinct way through
#: each tree, so a larger chunk costs less per customer (100,000: 40% less than 50,000).
EXPLAIN_CHUNK = 100_000


def _reasons(
    model: LoadedModel, X: pd.DataFrame, customers: np.ndarray, catalogue: pd.DataFrame
) -> pd.DataFrame | None:
    """``reason_1`` .. ``reason_3`` for ``customers``, rows of ``X`` (indexed by customer).

    The rows are taken chunk by chunk, never all at once: with reasons for everyone, a copy
    of ``X`` in the customers' order would add the size of the features to the peak.
    """
    explain = getattr(model.bundle, "explain", None)
    if explain is None:
        return None
    rows = X.index.get_indexer(customers)
    parts = [
        explain(X.iloc[rows[start : start + EXPLAIN_CHUNK]], catalogue=catalogue, top=N_REASONS)
        for start in range(0, len(rows), EXPLAIN_CHUNK)
    ]
    return pd.concat(parts) if parts else None


def rank_task(
    name: str,
    task: Any,
    model: LoadedModel,
    features: pd.DataFrame,
    *,
    catalogue: pd.DataFrame,
    as_of: pd.Timestamp,
    settings: ScoringConfig,
    reasons_for: str,
) -> TaskResult:
    """Score one task's eligible customers; rank them, explain the top ones, measure drift.

    Window: the features' (events strictly before ``as_of``).
    """
    model.check_features(features, catalogue=catalogue)
    # The model's inputs, plus the engine's BTYD summary a model may use to reach its horizon.
    columns = list(model.features)
    columns += [c for c in features.columns if c.startswith("btyd_") and c not in columns]
    X = features.loc[eligible(features, task), columns]
    timings: dict[str, float] = {}
    with _timed(timings, "predicting"):
        predictions = pd.concat(
            [
                model.bundle.predict(X.iloc[start : start + PREDICT_CHUNK])
                for start in range(0, max(len(X), 1), PREDICT_CHUNK)
            ]
        )
        scored = normalise_predictions(
            predictions, X.index, kind=task.kind, top_k=min(getattr(task, "top_k", 3), 3)
        )
        dating = getattr(model.bundle, "next_order", None)  # every ModelBundle has it
        if task.kind == "value" and dating is not None:
            dated = dating(X)
            scored["next_order_days"] = dated["next_order_days"].to_numpy(dtype=np.float64)
            scored["next_order_note"] = dated["next_order_note"].to_numpy(dtype=object)
        frame = ranked(scored)
    explained = frame["customer_id"]
    if reasons_for == "top":
        explained = explained.head(math.ceil(len(frame) * settings.reasons_top_fraction))
    reasons = None
    with _timed(timings, "explaining"):
        if task.kind != "preference" and len(explained):
            reasons = _reasons(model, X, explained.to_numpy(), catalogue)
    with _timed(timings, "listing"):
        listed = task_list(
            frame,
            kind=task.kind,
            model_version=model.version,
            as_of=as_of,
            tier_cuts=settings.tier_cuts,
            reasons=reasons,
        )
    with _timed(timings, "checking drift"):
        references = _references(model)
        current = {f: X[f].to_numpy(dtype=np.float64, na_value=np.nan) for f in model.features}
        # ``score`` is compared with the training scores (not stored for preference models).
        current["score"] = scored["score"].to_numpy(dtype=np.float64)
        drift = drift_report(
            name,
            references,
            current,
            kinds={"score": "score"},
            warn=settings.drift_warn_psi,
            fail=settings.drift_fail_psi,
        )
    return TaskResult(name, task.kind, model.version, listed, drift, _calibration(model), timings)


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


def run_scoring(
    config: ProjectConfig,
    *,
    as_of: pd.Timestamp,
    out_dir: str | Path,
    run_at: pd.Timestamp,
    tasks: Sequence[str] | None = None,
    tracking_uri: str | None = None,
    load_model: ModelLoader | None = None,
    log_run: bool = True,
    reasons_for: str | None = None,
    progress: Callable[[str], None] | None = None,
    on_loaded: Callable[[LoadResult], None] | None = None,
) -> ScoringRun:
    """Score every eligible customer with each task's champion and write the outputs.

    Window: features see the events strictly before ``as_of``; nothing at or after it is
    read.

    Parameters
    ----------
    config
        The project.
    as_of
        The instant scored at.
    out_dir
        The output folder (locked for the length of the run; see the module docstring).
    run_at
        The moment of the run: timestamps after it are bad rows. Recorded in the MLflow run
        and the validation report only, never in the lists.
    tasks
        Task names to score; every configured task when ``None``.
    tracking_uri
        The MLflow store of the champions and of this run's log.
    load_model
        ``load_model(config, task, tracking_uri=...)``; :func:`cxpredict.registry.load_champion`
        by default.
    log_run
        Whether to log the run to MLflow.
    reasons_for
        ``"all"`` or ``"top"``; ``scoring.reasons_for`` when ``None``.
    progress
        Called with the name of each stage as it starts.
    on_loaded
        Called with the tables as read and validated (their row counts), before the
        threshold of rejected rows is enforced.

    Raises
    ------
    ConfigError, DataError, ValidationFailed, ModelNotFound, FeatureMismatch, DriftFailed,
    OutputLocked
        Each with its own exit code; outputs of an earlier run stay as they were, except
        ``drift.csv`` on a drift failure.
    """
    from cxpredict import registry

    settings = config.scoring
    check_tier_cuts(settings.tier_cuts)
    names = resolve_tasks(config, tasks)
    reasons_for = reasons_for or settings.reasons_for
    if reasons_for not in ("all", "top"):
        raise ConfigError(f"reasons_for must be 'all' or 'top'; got {reasons_for!r}")
    load = load_model or registry.load_champion
    as_of = to_utc(as_of)
    out = Path(out_dir)
    written = [
        "drift.csv",
        "customers.csv",
        "customers.parquet",
        "report.html",
        "manifest.json",
        "validation",
    ]
    written += [f"{name}{suffix}" for name in names for suffix in (".csv", ".parquet")]
    check_inputs_kept(config, [out / name for name in written])
    watch = _Stopwatch(progress)
    with OutputLock(out, label=f"as_of={as_of_text(as_of)}"):
        with watch.stage("loading champions"):  # first: a missing model fails fast
            models = {name: load(config, name, tracking_uri=tracking_uri) for name in names}
            for name in names:
                check_task_definition(name, config.task(name), models[name])
        with watch.stage("reading and validating tables"):
            loaded = load_tables(config, run_at=run_at, as_of=as_of)
            write_validation(loaded, out / "validation")
            if on_loaded is not None:
                on_loaded(loaded)
            check_rejects(loaded, max_reject_fraction=config.validation.max_reject_fraction)
        if not (loaded.tables.orders["amount"] >= 0).any():
            raise IneligibleTask(
                f"no order before the as-of date {as_of_text(as_of)}: no customer is known to "
                "score; is --as-of before the data start? Score a later date"
            )
        rows_in = {name: r.rows_accepted for name, r in loaded.reports.items()}
        stale = _stale_feed(loaded.tables, as_of, max_gap_days=config.training.max_feed_gap_days)
        tables: Tables | None = loaded.tables
        del loaded
        results: dict[str, TaskResult] = {}
        features: pd.DataFrame | None = None
        groups = _by_vocabulary(models)
        for position, group in enumerate(groups):
            vocabulary = _vocabulary(models[group[0]])
            assert tables is not None
            with watch.stage("building features"):
                features = build_features(
                    tables, as_of, settings=config.features, vocabulary=vocabulary
                )
                catalogue = feature_catalogue(
                    tables, settings=config.features, vocabulary=vocabulary
                )
            if position == len(groups) - 1:
                tables = None  # the events are not needed any more: free them before scoring
            for name in group:
                with watch.stage("scoring and explaining"):
                    results[name] = rank_task(
                        name,
                        config.task(name),
                        models[name],
                        features,
                        catalogue=catalogue,
                        as_of=as_of,
                        settings=settings,
                        reasons_for=reasons_for,
                    )
                for step, seconds in results[name].timings.items():
                    key = f"scoring: {step}"
                    watch.timings[key] = watch.timings.get(key, 0.0) + seconds
        assert features is not None  # at least one task was resolved
        results = {name: results[name] for name in names}
        drift = pd.concat([r.drift for r in results.values()], ignore_index=True)
        versions = {name: r.version for name, r in results.items()}
        rows_out = {name: len(r.frame) for name, r in results.items()}
        files: list[Path] = []

        def log(status: str) -> str:
            """This run in MLflow as it stands: the files written so far, the time so far."""
            return _log_run(
                config,
                as_of=as_of,
                run_at=run_at,
                tracking_uri=tracking_uri,
                results=results,
                drift=drift,
                rows_in=rows_in,
                files=files,
                timings=watch.timings,
                total=watch.total,
                status=status,
            )

        with watch.stage("writing lists"):
            files.append(write_list(drift, out / "drift.csv"))
            try:
                check_drift(drift, fail=settings.drift_fail_psi, stale=stale)
            except DriftFailed:
                if log_run:
                    log("FAILED")
                raise
            lists = {name: r.frame for name, r in results.items()}
            for name, frame in lists.items():
                files.append(write_list(frame, out / f"{name}.csv"))
                files.append(write_list(frame, out / f"{name}.parquet"))
            customers = customer_table(
                features, lists, config.tasks, as_of=as_of, tier_cuts=settings.tier_cuts
            )
            files.append(write_list(customers, out / "customers.csv"))
            files.append(write_list(customers, out / "customers.parquet"))
        warnings = _warnings(drift, results, settings) + stale
        with watch.stage("writing the report"):
            from cxpredict.report import ReportData, write_report

            report = ReportData(
                priority_basis=priority_basis(lists, config.tasks),
                project=config.project,
                as_of=as_of_text(as_of),
                lists=lists,
                kinds={name: r.kind for name, r in results.items()},
                customers=customers,
                drift=drift,
                model_versions=versions,
                calibration={
                    n: r.calibration for n, r in results.items() if r.calibration is not None
                },
                tier_cuts=tuple(settings.tier_cuts),  # type: ignore[arg-type]
                drift_warn=settings.drift_warn_psi,
                drift_fail=settings.drift_fail_psi,
                notes=warnings,
            )
            files.append(write_report(report, out / "report.html"))
            previous = _manifest_files(out)
            files.append(
                write_document(
                    manifest(files, as_of=as_of, versions=versions, root=out),
                    out / "manifest.json",
                )
            )
            _remove_stale(out, previous, files)
        run_id = None
        if log_run:
            with watch.stage("logging the run"):
                run_id = log("FINISHED")
    return ScoringRun(
        out_dir=out,
        as_of=as_of,
        files=tuple(files),
        versions=versions,
        rows_in=rows_in,
        rows_out=rows_out,
        drift=drift,
        warnings=warnings,
        timings=dict(watch.timings),
        mlflow_run_id=run_id,
    )


def _by_vocabulary(models: Mapping[str, LoadedModel]) -> list[list[str]]:
    """Tasks grouped by the vocabulary their features are built with: one build per group.

    Models trained with different catalogue versions but the same vocabulary (one trained
    before a cxpredict version added features, one after) share a build.
    """
    groups: dict[str, list[str]] = {}
    for name, model in models.items():
        vocabulary = _vocabulary(model)
        key = "" if vocabulary is None else json.dumps(vocabulary.to_dict(), sort_keys=True)
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def _stale_feed(tables: Tables, as_of: pd.Timestamp, *, max_gap_days: int) -> tuple[str, ...]:
    """A warning when the data end more than ``max_gap_days`` before ``as_of``."""
    stopped = feed_gap(tables, as_of, max_gap_days=max_gap_days)
    if stopped is None:
        return ()
    latest, gap = stopped
    return (
        f"the latest order or interaction is on {latest:%Y-%m-%d}, {gap:.0f} days before the "
        "as-of date: is the feed up to date? Every customer looks that much longer silent",
    )


def _warnings(
    drift: pd.DataFrame, results: Mapping[str, TaskResult], settings: ScoringConfig
) -> tuple[str, ...]:
    notes = []
    unchecked = [
        str(task)
        for task, part in drift.groupby("task", sort=False)
        if (part["status"] == "not checked").all()
    ]
    if unchecked:
        notes.append(
            f"drift not checked for {', '.join(unchecked)}: "
            + ("its model stores" if len(unchecked) == 1 else "their models store")
            + " no training reference distribution"
        )
    for task, part in drift.groupby("task", sort=False):
        flagged = part[part["status"] == "warn"].sort_values("psi", ascending=False)
        if len(flagged):
            top = ", ".join(f"{r.variable} ({r.psi:.2f})" for r in flagged.head(5).itertuples())
            more = f" and {len(flagged) - 5} more (drift.csv)" if len(flagged) > 5 else ""
            notes.append(
                f"{task}: {len(flagged)} variable(s) drifted above "
                f"PSI {settings.drift_warn_psi:g}: {top}{more}"
            )
    return tuple(notes)


def _metric_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-/ " else "_" for c in text).replace(" ", "_")


def _log_run(
    config: ProjectConfig,
    *,
    as_of: pd.Timestamp,
    run_at: pd.Timestamp,
    tracking_uri: str | None,
    results: Mapping[str, TaskResult],
    drift: pd.DataFrame,
    rows_in: Mapping[str, int],
    files: Sequence[Path],
    timings: Mapping[str, float],
    total: float,
    status: str,
) -> str:
    """Log the scoring run to MLflow: versions, row counts, score distribution, drift, runtime.

    Only aggregates are logged (counts, quantiles, PSI per variable): no customer row.
    """
    import mlflow

    from cxpredict import registry

    uri = tracking_uri or registry.default_tracking_uri(config)
    params: dict[str, Any] = {
        "job": "scoring",
        "as_of": as_of.isoformat(),
        "run_at": to_utc(run_at).isoformat(),
        "tasks": ",".join(results),
        "tier_cuts": ",".join(f"{c:g}" for c in config.scoring.tier_cuts),
        "drift_warn_psi": config.scoring.drift_warn_psi,
        "drift_fail_psi": config.scoring.drift_fail_psi,
    }
    metrics: dict[str, float] = {f"rows_in.{t}": float(n) for t, n in rows_in.items()}
    for name, result in results.items():
        params[f"model.{name}"] = f"{registry.model_name(config, name)} v{result.version}"
        score = result.frame["score"].to_numpy(dtype=np.float64)
        score = score[np.isfinite(score)]
        metrics[f"rows_out.{name}"] = float(len(result.frame))
        if len(score):
            for q in (0.1, 0.5, 0.9):
                metrics[f"score.{name}.p{int(q * 100)}"] = float(np.quantile(score, q))
            metrics[f"score.{name}.mean"] = float(score.mean())
        for tier, n in result.frame["tier"].value_counts().items():
            metrics[f"tier.{name}.{tier}"] = float(n)
        part = drift[(drift["task"] == name) & drift["psi"].notna()]
        if len(part):
            metrics[f"drift.{name}.max_psi"] = float(part["psi"].max())
            metrics[f"drift.{name}.score_psi"] = float(
                part.loc[part["variable"] == "score", "psi"].max()
            )
    metrics["drift.warnings"] = float((drift["status"] == "warn").sum())
    metrics["drift.failures"] = float((drift["status"] == "fail").sum())
    metrics["runtime.total_seconds"] = total
    for stage, seconds in timings.items():
        metrics[f"runtime.{_metric_name(stage)}_seconds"] = seconds
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
    with registry.tracking(uri) as client:
        experiment_id = registry.ensure_experiment(client, registry.experiment_name(config), uri)
        run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=f"score as of {as_of_text(as_of)}",
            tags={"job": "scoring", "project": config.project},
        )
        try:
            mlflow.log_params({k: str(v) for k, v in params.items()})
            mlflow.log_metrics(metrics)
            mlflow.log_text(drift.to_csv(index=False), "scoring/drift.csv")
            for path in files:
                if path.name in ("manifest.json", "validation_report.json"):
                    mlflow.log_artifact(str(path), "scoring")
            report = files[0].parent / "validation" / "validation_report.json"
            if report.is_file():
                mlflow.log_artifact(str(report), "scoring")
        finally:
            mlflow.end_run(status=status)
    return str(run.info.run_id)
