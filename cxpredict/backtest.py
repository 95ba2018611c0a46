"""Rolling-cutoff evaluation: models and baselines side by side on later, unseen cutoffs.

A *fold* is a list of training cutoffs, one validation cutoff and (for a backtest) one test
cutoff, laid out in time so that nothing leaks (``h`` is the label horizon)::

    test cutoff       t   = as_of - h - k * step  (its window [t, t + h) ends by the as-of date)
    validation cutoff v   = t - h                 (its window ends at the test cutoff)
    training cutoffs  c_j = v - h - j * step      (their windows end by the validation cutoff)

The model of a fold sees only the events before its test cutoff (before the as-of date for
the final model): features, labels and the buy-till-you-die fits alike. Validation rows stop
boosting early and fit the calibration; test rows only ever score. No rows are split at
random anywhere: every comparison is a later cutoff scored by a model that could have existed
then, next to the baselines a sceptical analyst would try first.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxpredict import metrics
from cxpredict.baselines import (
    BaselineFitError,
    BetaGeometricNBD,
    FrequentValueBaseline,
    ParetoNBD,
    RecencyBaseline,
    RFMBaseline,
    btyd_summary,
)
from cxpredict.config import ChurnTask, PreferenceTask, RepurchaseTask, TrainingConfig, ValueTask
from cxpredict.errors import IneligibleTask
from cxpredict.labels import (
    LABEL,
    Task,
    check_class_balance,
    check_history,
    make_labels,
    preference_history,
)
from cxpredict.models import (
    Calibrator,
    LightGBMClassifier,
    LightGBMRegressor,
    PreferenceModel,
    booster_from_dict,
    booster_to_dict,
    split_overrides,
)
from cxpredict.schemas import Tables, to_utc

#: ``features(tables, cutoffs, as_of)`` -> features indexed by ``(customer_id, cutoff)``,
#: built from ``tables`` (already cut at ``as_of``) with what was known before ``as_of``.
FeatureFunction = Callable[[Tables, Sequence[pd.Timestamp], pd.Timestamp], pd.DataFrame]

#: Buy-till-you-die outputs offered to the models as features, fitted before each cutoff.
BTYD_FEATURES: tuple[str, ...] = (
    "btyd_expected_purchases",
    "btyd_p_alive",
    "btyd_p_purchase",
)
#: The engine's per-customer summary the BTYD outputs are computed from (in weeks).
BTYD_INPUTS: tuple[str, str, str] = ("btyd_frequency", "btyd_recency_weeks", "btyd_t_weeks")
#: The time unit of the buy-till-you-die fits, in days (weeks, as in the literature).
BTYD_UNIT_DAYS = 7.0
METRIC_COLUMNS: tuple[str, ...] = ("cutoff", "model", "metric", "value")
RECENCY_COLUMN = "days_since_last_order"
FREQUENCY_COLUMN = "orders_lifetime"
MONETARY_COLUMN = "spend_lifetime"
#: Past use is served instead of a preference model when it ranks first more often by this
#: many standard errors of the paired difference on the validation cutoff.
SERVE_PAST_USE_FROM = 2.0
#: Per-value feature columns of the engine for the attributes it describes value by value.
VALUE_COLUMN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "orders.category": ("share_category_{slug}", "last_category_is_{slug}"),
    "orders.channel": ("share_order_channel_{slug}", "last_order_channel_is_{slug}"),
    "interactions.channel": (
        "share_interaction_channel_{slug}",
        "days_since_last_interaction_{slug}",
    ),
}


# ------------------------------------------------------------------------------ time layout


@dataclass(frozen=True)
class Fold:
    """Training cutoffs, the validation cutoff and the test cutoff (``None`` when final).

    ``as_of`` is the instant before which the fold's model sees data: the test cutoff for a
    backtest fold, the run's as-of date for the final model.
    """

    train: tuple[pd.Timestamp, ...]
    valid: pd.Timestamp
    test: pd.Timestamp | None
    as_of: pd.Timestamp


def plan_fold(
    as_of: pd.Timestamp, *, horizon_days: int, n_cutoffs: int, step_days: int, test: bool
) -> Fold:
    """The fold of a model trained as of ``as_of``, with or without a test cutoff.

    Without a test cutoff the validation window ``[v, v + h)`` ends at ``as_of``; with one,
    the test window ends at ``as_of`` and the validation window at the test cutoff. The
    training windows end by the validation cutoff.
    """
    as_of = to_utc(as_of)
    horizon = pd.Timedelta(days=horizon_days)
    test_cutoff = as_of - horizon if test else None
    model_as_of = test_cutoff if test_cutoff is not None else as_of
    valid = model_as_of - horizon
    train = tuple(
        valid - horizon - pd.Timedelta(days=j * step_days) for j in reversed(range(n_cutoffs))
    )
    return Fold(train=train, valid=valid, test=test_cutoff, as_of=model_as_of)


#: The origin of the calendar grid the backtest cutoffs lie on.
GRID_ORIGIN = pd.Timestamp("1970-01-01", tz="UTC")


def plan_backtest(
    as_of: pd.Timestamp, *, horizon_days: int, training: TrainingConfig, on_grid: bool = True
) -> list[Fold]:
    """Backtest folds, latest first, their test cutoffs ``step_days`` apart.

    ``on_grid``: the cutoffs lie on one grid, every ``step_days``-th day from 1970-01-01
    (midnight UTC); the latest test cutoff is the last grid day whose test window
    ``[t, t + h)`` ends by ``as_of``. Trainings at different as-of dates (a monthly schedule,
    say) thus share the cutoffs their backtests have in common, on which promotion compares
    them. Otherwise the latest test window ends at ``as_of`` itself.
    """
    step = training.step_days
    latest = to_utc(as_of) - pd.Timedelta(days=horizon_days)
    if on_grid:
        latest = GRID_ORIGIN + pd.Timedelta(days=((latest - GRID_ORIGIN).days // step) * step)
    return [
        plan_fold(
            latest + pd.Timedelta(days=horizon_days - k * step),
            horizon_days=horizon_days,
            n_cutoffs=training.n_cutoffs,
            step_days=training.step_days,
            test=True,
        )
        for k in range(training.n_backtest_cutoffs)
    ]


def min_history_days(horizon_days: int) -> int:
    """History required before the first training cutoff: the horizon, at most 90 days."""
    return min(horizon_days, 90)


def check_fold(
    task_name: str, task: Task, fold: Fold, *, first_event: pd.Timestamp, horizon_days: int
) -> None:
    """Refuse a fold whose training windows are still open or whose first cutoff lacks history.

    Raises
    ------
    IneligibleTask
        Naming the offending cutoff and what to change.
    """
    labelled = task.model_copy(update={"horizon_days": horizon_days})
    check_history(
        task_name,
        labelled,
        cutoffs=fold.train,
        as_of=fold.valid,
        first_event=first_event,
        min_history_days=min_history_days(horizon_days),
    )
    check_history(
        task_name,
        labelled,
        cutoffs=[fold.valid],
        as_of=fold.as_of,
        first_event=first_event,
        min_history_days=0,
    )


# ------------------------------------------------------------------------------ BTYD inputs


def _btyd_model(name: str) -> BetaGeometricNBD | ParetoNBD:
    if name == "bgnbd":
        return BetaGeometricNBD()
    if name == "pareto":
        return ParetoNBD()
    raise ValueError(f"unknown buy-till-you-die model {name!r}; use 'bgnbd' or 'pareto'")


def btyd_from_params(name: str, params: Mapping[str, float]) -> BetaGeometricNBD | ParetoNBD:
    """A fitted BG/NBD (``"bgnbd"``) or Pareto/NBD (``"pareto"``) from stored parameters."""
    model = _btyd_model(name)
    model.params_ = {k: float(v) for k, v in params.items()}
    return model


@dataclass
class BtydCache:
    """BG/NBD and Pareto/NBD fits per cutoff, each on the purchases strictly before it.

    Fitting is the slow part of the buy-till-you-die models, and a cutoff recurs across folds
    (a training cutoff of one fold is a validation cutoff of another), so fits are kept for
    the length of one run.
    """

    orders: pd.DataFrame
    fits: dict[tuple[str, pd.Timestamp], Any] = field(default_factory=dict)
    _summaries: dict[pd.Timestamp, pd.DataFrame] = field(default_factory=dict)

    def summary(self, cutoff: pd.Timestamp) -> pd.DataFrame:
        """(frequency, recency, T) in weeks of every customer with a purchase before ``cutoff``."""
        if cutoff not in self._summaries:
            purchases = self.orders[
                (self.orders["timestamp"] < cutoff) & (self.orders["amount"] >= 0)
            ]
            summary = btyd_summary(purchases, cutoff, time_unit_days=BTYD_UNIT_DAYS)
            self._summaries[cutoff] = summary.set_axis(summary.index.astype(str))
        return self._summaries[cutoff]

    def model(self, name: str, cutoff: pd.Timestamp) -> BetaGeometricNBD | ParetoNBD | None:
        """The ``"bgnbd"`` or ``"pareto"`` fit before ``cutoff``; ``None`` when it fails."""
        key = (name, cutoff)
        if key not in self.fits:
            summary = self.summary(cutoff)
            model: Any = _btyd_model(name)
            try:
                with warnings.catch_warnings():
                    # A fit that stops short is still a usable baseline; how good it is shows
                    # in the metrics next to it.
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    warnings.simplefilter("ignore", RuntimeWarning)
                    model.fit(summary["frequency"], summary["recency"], summary["T"])
            except (BaselineFitError, ValueError):
                model = None
            self.fits[key] = model
        return self.fits[key]

    def predictions(self, name: str, cutoff: pd.Timestamp, horizon_days: float) -> pd.DataFrame:
        """The model's outputs over ``horizon_days`` for each customer known before ``cutoff``."""
        summary = self.summary(cutoff)
        return btyd_outputs(
            self.model(name, cutoff),
            summary["frequency"],
            summary["recency"],
            summary["T"],
            horizon_days=horizon_days,
            index=summary.index,
        )


def _readable(
    frequency: Any, recency: Any, T: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The summary as floats, and which rows the BTYD models can read: a summary with a
    fractional count, a recency after T or a missing value is unknown."""
    f, r, t = (np.asarray(v, dtype=float) for v in (frequency, recency, T))
    known = np.isfinite(f) & np.isfinite(r) & np.isfinite(t) & (t >= r) & (r >= 0) & (f >= 0)
    known &= np.floor(np.where(known, f, 0)) == np.where(known, f, 0)
    known &= ~((f == 0) & (r > 0)) & ~((f > 0) & (r == 0))
    return f, r, t, known


def btyd_outputs(
    model: BetaGeometricNBD | ParetoNBD | None,
    frequency: Any,
    recency: Any,
    T: Any,
    *,
    horizon_days: float,
    index: pd.Index,
) -> pd.DataFrame:
    """Expected purchases, P(alive) and P(at least one purchase) in the horizon.

    Rows with a missing summary (customers without a purchase) get missing outputs, as do all
    rows when ``model`` is ``None``.
    """
    out = pd.DataFrame(np.nan, index=index, columns=list(BTYD_FEATURES))
    f, r, t, known = _readable(frequency, recency, T)
    if model is None or not known.any():
        return out
    horizon = horizon_days / BTYD_UNIT_DAYS
    args = (f[known], r[known], t[known])
    with np.errstate(all="ignore"):
        out.loc[known, "btyd_expected_purchases"] = model.expected_purchases(horizon, *args)
        out.loc[known, "btyd_p_alive"] = model.probability_alive(*args)
        out.loc[known, "btyd_p_purchase"] = model.probability_of_purchase(horizon, *args)
    return out


#: The next order's date is the day by which its chance reaches this (the median).
NEXT_ORDER_PROBABILITY = 0.5


def next_order(
    model: BetaGeometricNBD | None, summary: pd.DataFrame, *, horizon_days: float
) -> pd.DataFrame:
    """Days from the cutoff to each customer's next order, where they can be estimated.

    Window: the purchases before the cutoff (``summary``: the engine's BTYD summary columns,
    one row per customer), looking ``horizon_days`` ahead. ``next_order_days`` is the median
    time to the next order by BG/NBD (the day by which its chance reaches
    :data:`NEXT_ORDER_PROBABILITY`); it is missing, and ``next_order_note`` says why, when the
    customer has no purchase, is more likely gone than not, or has less than an even chance
    of an order within ``horizon_days``.
    """
    index = summary.index
    days = np.full(len(index), np.nan)
    notes = np.full(len(index), "no purchase before the cutoff", dtype=object)
    f, r, t, known = _readable(*(summary[c] for c in BTYD_INPUTS))
    if model is None:
        notes[:] = "no purchase-rhythm model (BG/NBD) in the model bundle"
        known[:] = False
    if known.any():
        args = (f[known], r[known], t[known])
        with np.errstate(all="ignore"):
            median = model.time_to_purchase(NEXT_ORDER_PROBABILITY, *args) * BTYD_UNIT_DAYS
            alive = model.probability_alive(*args)
            chance = model.probability_of_purchase(horizon_days / BTYD_UNIT_DAYS, *args)
        within = median <= horizon_days
        gone = [
            f"more likely lapsed than not (BG/NBD: {_share(a)} chance still active)" for a in alive
        ]
        later = [
            f"not expected within {horizon_days:g} days (BG/NBD: {_share(c)} chance of an order)"
            for c in chance
        ]
        days[known] = np.where(within, median, np.nan)
        notes[known] = np.where(within, "", np.where(np.isnan(median), gone, later))
    return pd.DataFrame({"next_order_days": days, "next_order_note": notes}, index=index)


def _share(p: float) -> str:
    """A probability in words that never rounds across the even chance or down to nothing."""
    if p < 0.005:
        return "under 1%"
    if 0.495 <= p < NEXT_ORDER_PROBABILITY:
        return "just under 50%"
    return f"{p:.0%}"


def add_btyd(
    features: pd.DataFrame,
    models: Mapping[pd.Timestamp, BetaGeometricNBD | ParetoNBD | None]
    | BetaGeometricNBD
    | ParetoNBD
    | None,
    *,
    horizon_days: float,
) -> pd.DataFrame:
    """``features`` with the BTYD outputs appended, from the engine's ``btyd_*`` summary.

    ``models`` is either one fitted model (scoring) or one per cutoff of the
    ``(customer_id, cutoff)`` index (training: each fitted on the purchases before its cutoff).
    """
    missing = [c for c in BTYD_INPUTS if c not in features.columns]
    if missing:
        raise ValueError(
            f"the features lack {missing}, the buy-till-you-die summary; build them with the "
            "btyd feature family, or train without BTYD features"
        )
    parts = []
    if isinstance(models, Mapping):
        cutoffs = features.index.get_level_values("cutoff")
        for cutoff in cutoffs.unique():
            rows = features[cutoffs == cutoff]
            parts.append(_btyd_block(rows, models.get(cutoff), horizon_days))
    else:
        parts.append(_btyd_block(features, models, horizon_days))
    btyd = pd.concat(parts).reindex(features.index)
    return pd.concat([features.drop(columns=list(BTYD_FEATURES), errors="ignore"), btyd], axis=1)


def _btyd_block(rows: pd.DataFrame, model: Any, horizon_days: float) -> pd.DataFrame:
    return btyd_outputs(
        model,
        rows[BTYD_INPUTS[0]],
        rows[BTYD_INPUTS[1]],
        rows[BTYD_INPUTS[2]],
        horizon_days=horizon_days,
        index=rows.index,
    )


# ------------------------------------------------------------------------------ BTYD start

#: The buy-till-you-die model a LightGBM model starts from when the horizon is extended.
START_MODEL = "pareto"
#: What a started model predicts: P(order), P(no order), expected orders, expected spend.
START_TARGETS: tuple[str, ...] = ("purchase", "no_purchase", "orders", "spend")
BASKET_COLUMN = "order_value_mean"
_START_CLIP = 1e-6


def btyd_start(
    model: BetaGeometricNBD | ParetoNBD,
    features: pd.DataFrame,
    *,
    horizon_days: float,
    target: str,
    basket: float = 1.0,
) -> np.ndarray:
    """The buy-till-you-die prediction over ``horizon_days`` for each row, in natural units.

    ``purchase``: the probability of at least one purchase of a Poisson count with the
    model's expected purchases ``E``, ``1 - exp(-E)``; ``no_purchase``: one minus it;
    ``orders``: expected purchases; ``spend``: expected purchases times the row's mean order
    value (``basket`` where it is missing or not positive). Rows whose summary the model
    cannot read get the prediction for a customer with one purchase and no repeat.

    The probabilities follow the expected count rather than the model's own probability of
    at least one purchase: over horizons beyond the labelled window the expected count ranked
    customers better, on their own and as the start of a corrected classifier
    (``docs/models.md``, CDNOW).
    """
    outputs = _btyd_block(features, model, horizon_days)
    if outputs.isna().to_numpy().any():
        zero = np.zeros(1)
        fallback = btyd_outputs(
            model, zero, zero, zero, horizon_days=horizon_days, index=pd.RangeIndex(1)
        ).iloc[0]
        outputs = outputs.fillna(fallback)
    expected = outputs["btyd_expected_purchases"].to_numpy(dtype=float)
    if target in ("purchase", "no_purchase"):
        none = np.exp(-np.maximum(expected, 0.0))
        p = 1.0 - none if target == "purchase" else none
        return np.clip(p, _START_CLIP, 1.0 - _START_CLIP)
    if target == "spend":
        values = (
            features[BASKET_COLUMN].to_numpy(dtype=float)
            if BASKET_COLUMN in features.columns
            else np.full(len(features), np.nan)
        )
        expected = expected * np.where(values > 0, values, basket)
    return np.clip(expected, _START_CLIP, None)


#: The contribution of a started model's buy-till-you-die start, among the features'.
START_CONTRIBUTION = "btyd_start"


class BtydStart(BaseEstimator):
    """A LightGBM model that learns a correction to a buy-till-you-die prediction.

    Each training row starts from the Pareto/NBD prediction over its label window, fitted on
    the purchases before its cutoff (log-odds for probabilities, log for expected orders and
    spend); the trees learn what the features add to it. Predictions start from the
    prediction of the model fitted before the as-of date, over any horizon: this is how a
    horizon longer than the labelled windows is reached, with the shape of the
    buy-till-you-die model and the correction learned on the windows the history allows.

    Parameters
    ----------
    estimator
        An unfitted :class:`LightGBMClassifier` (targets ``purchase``, ``no_purchase``) or
        :class:`LightGBMRegressor` (``orders``, ``spend``).
    target
        One of :data:`START_TARGETS`.
    horizon_days
        The horizon predictions are for unless told otherwise (the task's horizon).
    """

    def __init__(self, estimator: Any, *, target: str, horizon_days: int) -> None:
        self.estimator = estimator
        self.target = target
        self.horizon_days = horizon_days

    def _start(self, frame: pd.DataFrame, model: Any, horizon_days: float) -> np.ndarray:
        return btyd_start(
            model, frame, horizon_days=horizon_days, target=self.target, basket=self.basket_
        )

    def _starts(
        self, frame: pd.DataFrame, models: Mapping[pd.Timestamp, Any], horizon_days: float
    ) -> np.ndarray:
        out = np.empty(len(frame))
        cutoffs = frame.index.get_level_values("cutoff")
        for cutoff in cutoffs.unique():
            rows = np.asarray(cutoffs == cutoff)
            out[rows] = self._start(frame[rows], models[cutoff], horizon_days)
        return out

    def _raw(self, start: np.ndarray) -> np.ndarray:
        return np.log(start / (1.0 - start)) if self._classifier else start

    @property
    def _classifier(self) -> bool:
        return self.target in ("purchase", "no_purchase")

    def fit(
        self,
        X: pd.DataFrame,
        y: Any,
        *,
        X_valid: pd.DataFrame,
        y_valid: Any,
        models: Mapping[pd.Timestamp, BetaGeometricNBD | ParetoNBD],
        final: BetaGeometricNBD | ParetoNBD,
        label_horizon_days: int,
    ) -> BtydStart:
        """Fit the correction on rows indexed by ``(customer_id, cutoff)``.

        Parameters
        ----------
        X, y, X_valid, y_valid
            Training and validation rows and labels over ``label_horizon_days``.
        models
            The buy-till-you-die fit before each cutoff of ``X`` and ``X_valid``.
        final
            The fit before the as-of date, which predictions start from.
        """
        if self.target not in START_TARGETS:
            raise ValueError(f"target must be one of {START_TARGETS}, got {self.target!r}")
        values = X[BASKET_COLUMN] if BASKET_COLUMN in X.columns else pd.Series(dtype=float)
        positive = values[values > 0]
        self.basket_ = float(positive.median()) if len(positive) else 1.0
        start = self._raw(self._starts(X, models, label_horizon_days))
        start_valid = self._raw(self._starts(X_valid, models, label_horizon_days))
        estimator = self.estimator
        if self._classifier:
            estimator.fit(
                X, y, X_valid=X_valid, y_valid=y_valid, offset=start, offset_valid=start_valid
            )
        else:
            estimator.fit(
                X, y, X_valid=X_valid, y_valid=y_valid, exposure=start, exposure_valid=start_valid
            )
        self.estimator_ = estimator
        self.btyd_params_ = dict(final.params_)
        self.model_name_ = "bgnbd" if isinstance(final, BetaGeometricNBD) else "pareto"
        # the start of a typical recent customer, which a customer's own start is told
        # against when explaining a score
        self.start_reference_ = float(np.mean(self.start_raw(X_valid))) if len(X_valid) else None
        return self

    def start(self, X: pd.DataFrame, *, horizon_days: float | None = None) -> np.ndarray:
        """The buy-till-you-die prediction the model starts from, over the horizon."""
        model = btyd_from_params(self.model_name_, self.btyd_params_)
        return self._start(X, model, self.horizon_days if horizon_days is None else horizon_days)

    def start_raw(self, X: pd.DataFrame, *, horizon_days: float | None = None) -> np.ndarray:
        """:meth:`start` on the scale of the raw score (log-odds or log-amount)."""
        start = self.start(X, horizon_days=horizon_days)
        return self._raw(start) if self._classifier else np.log(start)

    def raw_score(self, X: pd.DataFrame, *, horizon_days: float | None = None) -> np.ndarray:
        """The start plus the correction, before calibration (log-odds or log-amount)."""
        return self.estimator_.raw_score(X) + self.start_raw(X, horizon_days=horizon_days)

    def predict_proba(self, X: pd.DataFrame, *, horizon_days: float | None = None) -> np.ndarray:
        """Probabilities over the horizon (``horizon_days``, the task's by default)."""
        if not self._classifier:
            raise ValueError(f"a {self.target!r} model predicts amounts; use predict")
        start = self._raw(self.start(X, horizon_days=horizon_days))
        return self.estimator_.predict_proba(X, offset=start)

    def predict(self, X: pd.DataFrame, *, horizon_days: float | None = None) -> np.ndarray:
        """Expected orders or spend over the horizon (classifiers: the 0/1 class)."""
        if self._classifier:
            return (self.predict_proba(X, horizon_days=horizon_days)[:, 1] >= 0.5).astype(int)
        return self.estimator_.predict(X, exposure=self.start(X, horizon_days=horizon_days))

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        """Per-feature contributions to the correction, and :data:`START_CONTRIBUTION`: how far
        the customer's own start (over the horizon) is above that of a typical recent
        customer (the validation rows' mean), on the same scale.

        With the correction's ``bias``, the columns add up to the raw score less the typical
        start.
        """
        frame = self.estimator_.contributions(X)
        reference = getattr(self, "start_reference_", None)
        if reference is None:  # saved before the reference was kept
            return frame
        frame.insert(0, START_CONTRIBUTION, self.start_raw(X) - reference)
        return frame

    def feature_importance(self) -> pd.Series:
        """Total gain per feature of the correction, largest first."""
        return self.estimator_.feature_importance()

    @property
    def best_iteration_(self) -> int:
        """Trees kept by early stopping."""
        return int(self.estimator_.best_iteration_)

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as JSON types plus the booster as text."""
        return {
            "target": self.target,
            "horizon_days": int(self.horizon_days),
            "btyd_model": self.model_name_,
            "btyd_params": self.btyd_params_,
            "basket": self.basket_,
            "start_reference": getattr(self, "start_reference_", None),
            "model": booster_to_dict(self.estimator_),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> BtydStart:
        """Rebuild a model saved with :meth:`to_dict`."""
        estimator = booster_from_dict(state["model"])
        model = cls(estimator, target=state["target"], horizon_days=int(state["horizon_days"]))
        model.estimator_ = estimator
        model.btyd_params_ = {k: float(v) for k, v in state["btyd_params"].items()}
        model.model_name_ = str(state["btyd_model"])
        model.basket_ = float(state["basket"])
        reference = state.get("start_reference")
        model.start_reference_ = None if reference is None else float(reference)
        return model


# ------------------------------------------------------------------------------ design


def numeric_frame(features: pd.DataFrame) -> pd.DataFrame:
    """Features as float columns: booleans become 0/1, other non-numbers are refused."""
    out = {}
    for column in features.columns:
        values = features[column]
        if pd.api.types.is_bool_dtype(values.dtype) or pd.api.types.is_numeric_dtype(values.dtype):
            out[column] = values.astype(float)
        else:
            raise ValueError(
                f"feature {column!r} is not numeric ({values.dtype}); encode it as numbers "
                "in the feature function"
            )
    return pd.DataFrame(out, index=features.index)


def value_columns(
    columns: Sequence[str], values: Sequence[str], *, key: str
) -> dict[str, dict[str, str]]:
    """For each value, the engine's per-value columns, under a name common to all values.

    For ``orders.category`` and the value ``"Home & Garden"``, ``share_category_home_garden``
    becomes ``share_category``. Attributes the engine does not describe value by value get
    no columns (the preference model then ranks by the customer's features alone).
    """
    from cxpredict.features.vocabulary import slugify

    present = set(columns)
    out: dict[str, dict[str, str]] = {}
    for value in values:
        slug = slugify(value)
        found = {}
        for template in VALUE_COLUMN_TEMPLATES.get(key, ()):
            column = template.format(slug=slug)
            if column in present:
                generic = re.sub(r"_+$", "", template.replace("{slug}", "")).replace("_is", "")
                found[generic] = column
        out[str(value)] = found
    return out


def _logistic() -> Any:
    """Logistic regression with its imputer and scaler, all fitted on training rows only."""
    return make_pipeline(
        SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(C=1.0, max_iter=2000),
    )


# ------------------------------------------------------------------------------ fitting


@dataclass
class FoldData:
    """The rows of one fold: model inputs and labels for training, validation and test."""

    X_train: pd.DataFrame
    y_train: pd.DataFrame
    X_valid: pd.DataFrame
    y_valid: pd.DataFrame
    X_test: pd.DataFrame | None = None
    y_test: pd.DataFrame | None = None
    history: pd.DataFrame | None = None


@dataclass
class FittedTask:
    """A task's fitted model(s) and what is needed to score with them.

    ``inputs`` are the columns the feature engine provides; ``features`` the model's own
    (the inputs plus the BTYD outputs when used).
    """

    kind: str
    estimators: dict[str, Any]
    inputs: list[str]
    features: list[str]
    fold: Fold
    label_horizon_days: int
    btyd: dict[str, float] | None
    details: dict[str, Any] = field(default_factory=dict)


def fold_data(
    task: Task,
    tables: Tables,
    fold: Fold,
    *,
    features: FeatureFunction,
    cache: BtydCache,
    label_horizon_days: int,
    use_btyd: bool,
) -> FoldData:
    """Model inputs and labels of a fold, each computed from what was known at the time.

    Training and validation labels come from the events before the fold's as-of instant
    (their windows end by then); test labels from ``tables`` (their window ends by the run's
    as-of date). Features at every cutoff see only the events before that cutoff, and the
    BTYD outputs at a cutoff come from a fit on the purchases before it.
    """
    known = tables.before(fold.as_of)
    labelled = task.model_copy(update={"horizon_days": label_horizon_days})
    fit_cutoffs = [*fold.train, fold.valid]
    labels = make_labels(labelled, known, fit_cutoffs)
    score_cutoffs = fit_cutoffs + ([fold.test] if fold.test is not None else [])
    engine = numeric_frame(features(known, score_cutoffs, fold.as_of))
    if use_btyd:
        models = {c: cache.model("bgnbd", c) for c in score_cutoffs}
        engine = add_btyd(engine, models, horizon_days=label_horizon_days)
    test_labels = make_labels(labelled, tables, [fold.test]) if fold.test is not None else None
    valid_rows = labels.index.get_level_values("cutoff") == fold.valid
    data = FoldData(
        X_train=engine.reindex(labels.index[~valid_rows]),
        y_train=labels[~valid_rows],
        X_valid=engine.reindex(labels.index[valid_rows]),
        y_valid=labels[valid_rows],
    )
    if test_labels is not None:
        data.X_test = engine.reindex(test_labels.index)
        data.y_test = test_labels
    if isinstance(task, PreferenceTask):
        data.history = preference_history(
            known, score_cutoffs, attribute=task.attribute, table=task.table
        )
    return data


def fit_task(
    task_name: str,
    task: Task,
    data: FoldData,
    fold: Fold,
    *,
    training: TrainingConfig,
    label_horizon_days: int,
    cache: BtydCache | None,
    preference_strategy: str = "pairs",
    start_horizon_days: int | None = None,
    calibration: str = "auto",
) -> FittedTask:
    """Fit the task's LightGBM model(s) on a fold's training rows, validated on its later rows.

    With ``start_horizon_days`` (churn, repurchase and value tasks whose horizon is longer
    than the labelled windows), each model learns a correction to the Pareto/NBD prediction
    (:class:`BtydStart`) and predicts over ``start_horizon_days``; without a Pareto/NBD fit
    at every cutoff, the plain models are fitted (``details["start"]`` says which).

    ``calibration`` is the classifiers' (``"auto"``: chosen on the validation rows alone,
    see :func:`cxpredict.models.choose_calibration`).

    Raises
    ------
    IneligibleTask
        When the training rows hold too few positives or negatives, or the validation rows
        a single class.
    """
    labelled = task.model_copy(update={"horizon_days": label_horizon_days})
    check_class_balance(
        task_name, labelled, data.y_train, training=training, configured_days=task.horizon_days
    )
    params, boosting = split_overrides(training.lightgbm)
    common: dict[str, Any] = {"params": params, "seed": training.seed, **boosting}
    estimators: dict[str, Any] = {}
    details: dict[str, Any] = {}
    start = None
    if start_horizon_days is not None and not isinstance(task, PreferenceTask):
        start = _start_models(cache, data, fold)
    details["start"] = None if start is None else START_MODEL

    def fitted(estimator: Any, target: str, y: pd.Series, y_valid: pd.Series) -> Any:
        if start is None:
            return estimator.fit(data.X_train, y, X_valid=data.X_valid, y_valid=y_valid)
        assert start_horizon_days is not None
        return BtydStart(estimator, target=target, horizon_days=start_horizon_days).fit(
            data.X_train,
            y,
            X_valid=data.X_valid,
            y_valid=y_valid,
            models=start[0],
            final=start[1],
            label_horizon_days=label_horizon_days,
        )

    if isinstance(task, ChurnTask | RepurchaseTask):
        _require_both_classes(task_name, data.y_valid[LABEL], fold.valid)
        target = "no_purchase" if isinstance(task, ChurnTask) else "purchase"
        model = fitted(
            LightGBMClassifier(calibration=calibration, **common),  # type: ignore[arg-type]
            target,
            data.y_train[LABEL],
            data.y_valid[LABEL],
        )
        estimators["score"] = model
        classifier = model.estimator_ if isinstance(model, BtydStart) else model
        details["calibration"] = classifier.calibration_method_
        details["calibration_brier"] = classifier.calibration_scores_
        details["trees"] = model.best_iteration_
    elif isinstance(task, ValueTask):
        for target, objective in (("spend", "tweedie"), ("orders", "poisson")):
            estimators[target] = fitted(
                LightGBMRegressor(objective=objective, **common),  # type: ignore[arg-type]
                target,
                data.y_train[target],
                data.y_valid[target],
            )
        details["objectives"] = {"spend": "tweedie", "orders": "poisson"}
    elif isinstance(task, PreferenceTask):
        key = f"{task.table}.{task.attribute}"
        Y_valid = data.y_valid.reindex(columns=data.y_train.columns, fill_value=0)
        model = PreferenceModel(
            strategy=preference_strategy,  # type: ignore[arg-type]
            min_positives=training.min_positives,
            **common,
        )
        mapping = value_columns(list(data.X_train.columns), list(data.y_train.columns), key=key)
        model.fit(
            data.X_train, data.y_train, X_valid=data.X_valid, Y_valid=Y_valid, value_columns=mapping
        )
        details["strategy"] = preference_strategy
        details["values"] = list(model.values_)
        served, details["validation_hit@1"] = _serve_preference(model, data, Y_valid, mapping)
        details["served"] = "lightgbm" if served is model else "most_frequent"
        estimators["score"] = served
        if served is not model:
            estimators["lightgbm"] = model
    btyd = None
    if cache is not None and all(c in data.X_train.columns for c in BTYD_FEATURES):
        fitted = cache.model("bgnbd", fold.as_of)
        btyd = None if fitted is None else dict(fitted.params_)
    features = [str(c) for c in data.X_train.columns]
    return FittedTask(
        kind=task.kind,
        estimators=estimators,
        inputs=[c for c in features if c not in BTYD_FEATURES],
        features=features,
        fold=fold,
        label_horizon_days=label_horizon_days,
        btyd=btyd,
        details=details,
    )


def _serve_preference(
    model: PreferenceModel,
    data: FoldData,
    Y_valid: pd.DataFrame,
    mapping: Mapping[str, Mapping[str, str]],
) -> tuple[PreferenceModel | FrequentValueBaseline, dict[str, float]]:
    """The model, unless past use ranks clearly better at hit@1 on the validation cutoff.

    The baseline is the customer's most used value read from the per-value features
    (:class:`FrequentValueBaseline`). It is served only when its hit@1 beats the model's by
    more than :data:`SERVE_PAST_USE_FROM` standard errors of the paired difference (customer
    by customer): the model gives calibrated probabilities, past use does not, and a
    difference within the noise of one validation cutoff is no reason to give them up.
    """
    values = [str(v) for v in model.values_]
    baseline = FrequentValueBaseline(value_columns=mapping).fit(
        data.X_train, data.y_train, values=values
    )
    actual = Y_valid.reindex(columns=values, fill_value=0).to_numpy()
    per_customer = {
        name: metrics.customer_hits(actual, ranker.predict_scores(data.X_valid).to_numpy(), k=1)
        for name, ranker in (("lightgbm", model), ("most_frequent", baseline))
    }
    hits = {name: float(h.mean()) if len(h) else float("nan") for name, h in per_customer.items()}
    gain = per_customer["most_frequent"] - per_customer["lightgbm"]
    noise = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else 0.0
    clearly = len(gain) > 0 and float(gain.mean()) > SERVE_PAST_USE_FROM * noise
    return (baseline if clearly else model), hits


def _start_models(
    cache: BtydCache | None, data: FoldData, fold: Fold
) -> tuple[dict[pd.Timestamp, Any], Any] | None:
    """The Pareto/NBD fits a started model needs, or ``None`` when one is missing."""
    if cache is None or not all(c in data.X_train.columns for c in BTYD_INPUTS):
        return None
    cutoffs = [*fold.train, fold.valid]
    models = {c: cache.model(START_MODEL, c) for c in cutoffs}
    final = cache.model(START_MODEL, fold.as_of)
    if final is None or any(m is None for m in models.values()):
        return None
    return models, final


def _require_both_classes(task_name: str, y: pd.Series, cutoff: pd.Timestamp) -> None:
    if len(y) == 0 or y.min() == y.max():
        raise IneligibleTask(
            f"task {task_name!r}: the validation cutoff {cutoff:%Y-%m-%d} has {len(y)} labelled "
            "customers, all of one class; early stopping and calibration need both outcomes; "
            "use a later as-of date or a different horizon"
        )


# ------------------------------------------------------------------------------ evaluation


def _rows(cutoff: pd.Timestamp, model: str, values: Mapping[str, float]) -> list[dict[str, Any]]:
    return [
        {"cutoff": cutoff, "model": model, "metric": name, "value": float(value)}
        for name, value in values.items()
    ]


def _btyd_at(
    cache: BtydCache,
    customers: pd.Index,
    cutoff: pd.Timestamp,
    horizon_days: float,
    names: Sequence[str],
    notes: list[dict[str, Any]] | None = None,
) -> dict[str, pd.DataFrame]:
    """The BTYD baselines' predictions for ``customers``; a baseline that cannot predict every
    customer is left out of the comparison, and ``notes`` says so (see :func:`left_out_text`)."""
    out = {}
    for name in names:
        frame = cache.predictions(name, cutoff, horizon_days).reindex(customers)
        finite = np.isfinite(frame.to_numpy(dtype=float)).all(axis=1)
        if finite.all():
            out[name] = frame
        elif notes is not None:
            notes.append(
                {
                    "baseline": name,
                    "test_cutoff": f"{cutoff:%Y-%m-%d}",
                    "customers_without": int((~finite).sum()),
                    "customers": len(finite),
                }
            )
    return out


def left_out_text(folds: Sequence[Mapping[str, Any]]) -> list[str]:
    """One sentence per BTYD baseline left out of some fold of a backtest (its details)."""
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for fold in folds:
        for note in fold.get("baselines_left_out", []):
            by_name.setdefault(note["baseline"], []).append(note)
    sentences = []
    for name, notes in by_name.items():
        cutoffs = ", ".join(n["test_cutoff"] for n in notes)
        counts = ", ".join(f"{n['customers_without']:,} of {n['customers']:,}" for n in notes)
        plural = "s" if len(notes) > 1 else ""
        sentences.append(
            f"{name} is left out of the comparison at the test cutoff{plural} {cutoffs}: its "
            f"fit on the purchases before {'each' if plural else 'it'} gives no prediction for "
            f"{counts} customers"
        )
    return sentences


def _all_equal(predictions: np.ndarray) -> bool:
    """Whether a model gave every customer the same prediction (none: no)."""
    return bool(len(predictions)) and bool(np.ptp(predictions) == 0)


def _over(estimator: Any, X: pd.DataFrame, horizon_days: int) -> np.ndarray:
    """Predictions over the labelled window (a started model predicts any horizon)."""
    if isinstance(estimator, BtydStart):
        if estimator.target in ("purchase", "no_purchase"):
            return estimator.predict_proba(X, horizon_days=horizon_days)[:, 1]
        return estimator.predict(X, horizon_days=horizon_days)
    if isinstance(estimator, LightGBMClassifier):
        return estimator.predict_proba(X)[:, 1]
    return estimator.predict(X)


def _raw_over(estimator: Any, X: pd.DataFrame, horizon_days: int) -> np.ndarray:
    """A classifier's log-odds before calibration over the labelled window."""
    if isinstance(estimator, BtydStart):
        return estimator.raw_score(X, horizon_days=horizon_days)
    return estimator.raw_score(X)


def calibration_on_test(fitted: FittedTask, data: FoldData) -> dict[str, float]:
    """Brier score on the test cutoff of each calibration fitted on the validation cutoff.

    Time-ordered: every calibrator is fitted on the validation rows (which stopped the
    boosting) and scored on the later test rows, the way the kept model is used.
    Isotonic regression is tried from 1,000 validation rows.
    """
    assert data.X_test is not None and data.y_test is not None
    estimator = fitted.estimators["score"]
    h = fitted.label_horizon_days
    raw_valid = _raw_over(estimator, data.X_valid, h)
    raw_test = _raw_over(estimator, data.X_test, h)
    y_valid = data.y_valid[LABEL].to_numpy(dtype=float)
    y_test = data.y_test[LABEL].to_numpy(dtype=float)
    methods = ["none", "platt"] + (["isotonic"] if len(y_valid) >= 1000 else [])
    return {
        method: metrics.brier(
            y_test,
            Calibrator(method).fit(raw_valid, y_valid).transform(raw_test),  # type: ignore[arg-type]
        )
        for method in methods
    }


def evaluate_binary(
    task: ChurnTask | RepurchaseTask,
    fitted: FittedTask,
    data: FoldData,
    *,
    cache: BtydCache,
    btyd_baselines: Sequence[str] = ("bgnbd", "pareto"),
    notes: list[dict[str, Any]] | None = None,
    flat: list[bool] | None = None,
) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Model and baseline metrics on a fold's test cutoff, and the model's calibration table.

    Baselines: days since the last order; the RFM quintile score (edges from the training
    rows); a logistic regression on the same features (imputer and scaler fitted on the
    training rows); BG/NBD and Pareto/NBD fitted on the purchases before the test cutoff,
    scoring ``P(at least one purchase in the horizon)`` (churn: one minus it). A BTYD
    baseline without a prediction for every customer is left out, with a line in ``notes``.
    ``flat`` is told whether the model gave every customer the same prediction.
    """
    assert data.X_test is not None and data.y_test is not None and fitted.fold.test is not None
    cutoff = fitted.fold.test
    y = data.y_test[LABEL].to_numpy()
    target = "churn" if isinstance(task, ChurnTask) else "repurchase"
    probability = _over(fitted.estimators["score"], data.X_test, fitted.label_horizon_days)
    if flat is not None:
        flat.append(_all_equal(probability))
    rows = _rows(cutoff, "lightgbm", metrics.binary_metrics(y, probability))
    calibration = metrics.calibration_table(y, probability).assign(cutoff=cutoff)
    if RECENCY_COLUMN in data.X_test.columns:
        recency = RecencyBaseline(recency_column=RECENCY_COLUMN, target=target)
        recency.fit(data.X_train.dropna(subset=[RECENCY_COLUMN]))
        score = recency.predict_score(data.X_test.dropna(subset=[RECENCY_COLUMN]))
        score = score.reindex(data.X_test.index).fillna(
            score.max() if target == "churn" else score.min()
        )
        rows += _rows(cutoff, "recency", metrics.binary_metrics(y, score, probabilities=False))
    rfm_columns = [RECENCY_COLUMN, FREQUENCY_COLUMN, MONETARY_COLUMN]
    if all(c in data.X_test.columns for c in rfm_columns):
        train = data.X_train[rfm_columns].dropna()
        rfm = RFMBaseline(target=target).fit(train)
        score = rfm.predict_score(data.X_test[rfm_columns].fillna(train.median()))
        rows += _rows(
            cutoff, "rfm_quintiles", metrics.binary_metrics(y, score, probabilities=False)
        )
    logistic = _logistic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        logistic.fit(data.X_train, data.y_train[LABEL])
    rows += _rows(
        cutoff, "logistic", metrics.binary_metrics(y, logistic.predict_proba(data.X_test)[:, 1])
    )
    customers = data.X_test.index.get_level_values("customer_id")
    h = fitted.label_horizon_days
    for name, frame in _btyd_at(cache, customers, cutoff, h, btyd_baselines, notes).items():
        p_buy = frame["btyd_p_purchase"].to_numpy(dtype=float)
        score = 1.0 - p_buy if target == "churn" else p_buy
        rows += _rows(cutoff, name, metrics.binary_metrics(y, score))
    return rows, calibration


def _mean_order_value(orders: pd.DataFrame, cutoff: pd.Timestamp) -> pd.Series:
    """Mean amount of each customer's purchases before ``cutoff`` (refunds left out)."""
    before = orders[(orders["timestamp"] < cutoff) & (orders["amount"] >= 0)]
    return before.groupby(before["customer_id"].astype(str))["amount"].mean()


def _last_period(orders: pd.DataFrame, cutoff: pd.Timestamp, horizon_days: int) -> pd.DataFrame:
    """Net spend and number of orders in ``[cutoff - horizon, cutoff)``, per customer."""
    start = cutoff - pd.Timedelta(days=horizon_days)
    window = orders[(orders["timestamp"] >= start) & (orders["timestamp"] < cutoff)]
    customer = window["customer_id"].astype(str)
    ids = window["order_id"] if "order_id" in window.columns else window.index.to_series()
    purchases = window["amount"] >= 0
    return pd.DataFrame(
        {
            "spend": window.groupby(customer)["amount"].sum(),
            "orders": ids[purchases].astype(str).groupby(customer[purchases]).nunique(),
        }
    ).fillna(0.0)


def evaluate_value(
    fitted: FittedTask,
    data: FoldData,
    *,
    cache: BtydCache,
    btyd_baselines: Sequence[str] = ("bgnbd", "pareto"),
    notes: list[dict[str, Any]] | None = None,
    flat: list[bool] | None = None,
) -> list[dict[str, Any]]:
    """Spend and order-count metrics of the model and the baselines on the test cutoff.

    Baselines: BTYD expected purchases (times the customer's mean order value for spend),
    and the spend and orders of the last period of the same length. A BTYD baseline without
    a prediction for every customer is left out, with a line in ``notes``. ``flat`` is told
    whether the model gave every customer the same spend.
    """
    assert data.X_test is not None and data.y_test is not None and fitted.fold.test is not None
    cutoff = fitted.fold.test
    h = fitted.label_horizon_days
    customers = data.X_test.index.get_level_values("customer_id")
    actual = {t: data.y_test[t].to_numpy(dtype=float) for t in ("spend", "orders")}
    predictions: dict[str, dict[str, np.ndarray]] = {
        "lightgbm": {t: _over(fitted.estimators[t], data.X_test, h) for t in ("spend", "orders")}
    }
    if flat is not None:
        flat.append(_all_equal(predictions["lightgbm"]["spend"]))
    basket = _mean_order_value(cache.orders, cutoff).reindex(customers).fillna(0.0).to_numpy()
    for name, frame in _btyd_at(cache, customers, cutoff, h, btyd_baselines, notes).items():
        expected = frame["btyd_expected_purchases"].to_numpy(dtype=float)
        predictions[name] = {"orders": expected, "spend": expected * basket}
    last = _last_period(cache.orders, cutoff, h).reindex(customers).fillna(0.0)
    predictions["last_period"] = {t: last[t].to_numpy(dtype=float) for t in ("spend", "orders")}
    rows = []
    for model, by_target in predictions.items():
        for target, predicted in by_target.items():
            values = metrics.value_metrics(actual[target], predicted)
            rows += _rows(cutoff, model, {f"{target}/{k}": v for k, v in values.items()})
    # the next-order dates come from the same BG/NBD fit: left out with it
    if "bgnbd" in predictions and all(c in data.X_test.columns for c in BTYD_INPUTS):
        dated = next_order_check(cache.model("bgnbd", cutoff), data.X_test, data.y_test, h)
        rows += _rows(cutoff, "bgnbd", dated)
    return rows


def next_order_check(
    model: BetaGeometricNBD | None, X: pd.DataFrame, y: pd.DataFrame, horizon_days: int
) -> dict[str, float]:
    """How the next-order dates of :func:`next_order` at a cutoff held over its window.

    ``next_order/estimated``: the share of customers given a date; ``next_order/ordered_by_date``:
    the share of those whose next order came by their date (a median: 0.5 when the dates are
    right); ``next_order/median_error_days``: the median absolute error, in days, of those
    whose next order came within the window.
    """
    dated = next_order(model, X, horizon_days=horizon_days)["next_order_days"]
    dated = dated.to_numpy(dtype=float)
    given = np.isfinite(dated)
    came = y["next_observed"].to_numpy(dtype=bool)
    actual = y["days_to_next"].to_numpy(dtype=float)
    by_date = came & (actual <= dated)
    seen = given & came
    return {
        "next_order/estimated": float(given.mean()) if len(given) else np.nan,
        "next_order/ordered_by_date": float(by_date[given].mean()) if given.any() else np.nan,
        "next_order/median_error_days": (
            float(np.median(np.abs(actual[seen] - dated[seen]))) if seen.any() else np.nan
        ),
    }


def evaluate_preference(fitted: FittedTask, data: FoldData) -> list[dict[str, Any]]:
    """Hit rates and NDCG of the model, the most frequent past value and popularity.

    Only values the model ranks count; customers whose choices in the window all fall
    outside them are left out (they have no relevant value to find).
    """
    assert data.X_test is not None and data.y_test is not None and data.history is not None
    cutoff = fitted.fold.test
    assert cutoff is not None
    served = fitted.estimators["score"]
    model = fitted.estimators.get("lightgbm", served)
    values = [str(v) for v in model.values_]
    actual = data.y_test.reindex(columns=values, fill_value=0).to_numpy()
    at = data.history[data.history["cutoff"] == cutoff]
    shares = at.groupby("value")["count"].sum()
    popularity = (shares / shares.sum()).reindex(values).fillna(0.0).to_numpy()
    counts = at.pivot_table(index="customer_id", columns="value", values="count", aggfunc="sum")
    customers = data.X_test.index.get_level_values("customer_id")
    counts = counts.reindex(index=customers, columns=values).fillna(0.0).to_numpy()
    scores = {
        "lightgbm": model.predict_scores(data.X_test).to_numpy(),
        # the customer's most frequent past value; ties and new customers by popularity
        "most_frequent": counts + 1e-6 * popularity,
        "popularity": np.tile(popularity, (len(customers), 1)),
    }
    # what the fold serves, chosen on its validation cutoff: the model, or past use read from
    # the features; always reported, so that its mean covers the same folds as the others
    scores["served"] = (
        scores["lightgbm"] if served is model else served.predict_scores(data.X_test).to_numpy()
    )
    rows = []
    for name, score in scores.items():
        rows += _rows(cutoff, name, metrics.preference_metrics(actual, score))
    return rows


# ------------------------------------------------------------------------------ the backtest


@dataclass
class BacktestResult:
    """The tidy metrics frame of a backtest, its folds, and what each fold chose."""

    metrics: pd.DataFrame
    folds: list[Fold]
    details: list[dict[str, Any]]
    calibration: pd.DataFrame | None = None

    def calibration_method(self) -> str | None:
        """The calibration with the lowest mean Brier score on the test cutoffs, if measured.

        Each fold fits every calibration on its validation cutoff and scores it on its test
        cutoff (:func:`calibration_on_test`); methods not tried in every fold are left out.
        """
        scores = [
            d["calibration_brier_on_test"] for d in self.details if "calibration_brier_on_test" in d
        ]
        if not scores:
            return None
        common = set.intersection(*(set(s) for s in scores))
        means = {m: float(np.mean([s[m] for s in scores])) for m in sorted(common)}
        finite = {m: v for m, v in means.items() if np.isfinite(v)}
        return min(finite, key=finite.__getitem__) if finite else None

    def summary(self) -> pd.DataFrame:
        """Mean of each metric over the test cutoffs: metrics as rows, models as columns."""
        table = self.metrics.pivot_table(
            index="metric", columns="model", values="value", aggfunc="mean", sort=False
        )
        first = [m for m in ("lightgbm",) if m in table.columns]
        return table[first + [c for c in table.columns if c not in first]]


def run_backtest(
    task_name: str,
    task: Task,
    tables: Tables,
    *,
    as_of: pd.Timestamp,
    training: TrainingConfig,
    features: FeatureFunction,
    label_horizon_days: int | None = None,
    use_btyd: bool = True,
    preference_strategy: str = "pairs",
    btyd_baselines: Sequence[str] = ("bgnbd", "pareto"),
    cache: BtydCache | None = None,
    start_horizon_days: int | None = None,
) -> BacktestResult:
    """Evaluate the task's model and its baselines on ``training.n_backtest_cutoffs`` cutoffs.

    Each fold trains a fresh model exactly as the final model is trained, but as of its test
    cutoff: on ``training.n_cutoffs`` cutoffs ``training.step_days`` apart, stopped early
    and calibrated on its validation cutoff. It is scored on the test window
    ``[test, test + h)``, which ends by ``as_of``; nothing at or after ``as_of`` is read.

    Parameters
    ----------
    label_horizon_days
        Train and test on windows of this many days instead of the task's horizon (when the
        history is too short for it).
    use_btyd
        Offer the BG/NBD outputs (fitted before each cutoff) to the model as features.
    btyd_baselines
        Buy-till-you-die baselines fitted at each test cutoff: ``"bgnbd"``, ``"pareto"``.
    start_horizon_days
        Fit models that start from the Pareto/NBD prediction (see :func:`fit_task`); the
        backtest scores them over the labelled window.

    Returns
    -------
    BacktestResult
        ``metrics`` has the columns ``cutoff`` (the test cutoff), ``model``, ``metric`` and
        ``value``.

    Raises
    ------
    IneligibleTask
        When a fold lacks history or examples, saying what to change.
    """
    known = tables.before(to_utc(as_of))
    horizon = label_horizon_days or task.horizon_days
    cache = cache or BtydCache(known.orders)
    first_event = known.orders["timestamp"].min()

    def checked(on_grid: bool) -> list[Fold]:
        folds = plan_backtest(as_of, horizon_days=horizon, training=training, on_grid=on_grid)
        for fold in folds:
            check_fold(task_name, task, fold, first_event=first_event, horizon_days=horizon)
        return folds

    try:
        folds = checked(on_grid=True)
    except IneligibleTask:
        # the grid moves the folds up to step_days earlier: with just enough history, the
        # folds end at the as-of date instead (and compare only with trainings of the same
        # as-of date, or one a multiple of step_days away)
        folds = checked(on_grid=False)
    rows: list[dict[str, Any]] = []
    details = []
    calibrations = []
    for fold in folds:
        data = fold_data(
            task,
            known,
            fold,
            features=features,
            cache=cache,
            label_horizon_days=horizon,
            use_btyd=use_btyd,
        )
        fitted = fit_task(
            task_name,
            task,
            data,
            fold,
            training=training,
            label_horizon_days=horizon,
            cache=cache if use_btyd else None,
            preference_strategy=preference_strategy,
            start_horizon_days=start_horizon_days,
        )
        notes: list[dict[str, Any]] = []
        flat: list[bool] = []
        if isinstance(task, ChurnTask | RepurchaseTask):
            fold_rows, calibration = evaluate_binary(
                task,
                fitted,
                data,
                cache=cache,
                btyd_baselines=btyd_baselines,
                notes=notes,
                flat=flat,
            )
            rows += fold_rows
            calibrations.append(calibration)
            fitted.details["calibration_brier_on_test"] = calibration_on_test(fitted, data)
        elif isinstance(task, ValueTask):
            rows += evaluate_value(
                fitted, data, cache=cache, btyd_baselines=btyd_baselines, notes=notes, flat=flat
            )
        else:
            rows += evaluate_preference(fitted, data)
        details.append(
            {
                "test_cutoff": fold.test,
                "validation_cutoff": fold.valid,
                "training_cutoffs": list(fold.train),
                "rows": {
                    "train": len(data.y_train),
                    "validation": len(data.y_valid),
                    "test": 0 if data.y_test is None else len(data.y_test),
                },
                **fitted.details,
                "baselines_left_out": notes,
                "constant_predictions": any(flat),
            }
        )
    frame = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    calibration = pd.concat(calibrations, ignore_index=True) if calibrations else None
    return BacktestResult(metrics=frame, folds=folds, details=details, calibration=calibration)
