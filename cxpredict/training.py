"""Training and scoring one task: what the ``train`` and ``score`` commands call.

:func:`train_task` backtests the task's model against its baselines on rolling cutoffs before
the as-of date, then fits the model that is kept; :func:`score_task` scores customers with
it. Neither reads anything at or after its as-of date: both start from
``tables.before(as_of)``.

A trained model travels as a :class:`ModelBundle`, a directory with each LightGBM booster as
text and one JSON file of metadata (features, vocabulary, catalogue version, calibration,
BTYD parameters, training cutoffs, aggregate statistics). No training row is stored.

When the task's horizon is longer than the history can label (the label windows of the
training cutoffs must end by the as-of date, and the first cutoff needs history before it),
the model is trained on the longest window the history allows and extended to the horizon
with the buy-till-you-die model's shape (``horizon_method = "btyd_extrapolation"``): the
machine-learned part covers the labelled window, the BG/NBD ratio the rest. The result and the
bundle say so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxpredict.backtest import (
    BTYD_FEATURES,
    BTYD_INPUTS,
    START_CONTRIBUTION,
    BacktestResult,
    BtydCache,
    BtydStart,
    FeatureFunction,
    FittedTask,
    add_btyd,
    btyd_from_params,
    check_fold,
    fit_task,
    fold_data,
    min_history_days,
    next_order,
    numeric_frame,
    plan_fold,
    run_backtest,
)
from cxpredict.baselines import FrequentValueBaseline
from cxpredict.config import (
    ChurnTask,
    FeaturesConfig,
    PreferenceTask,
    ProjectConfig,
    RepurchaseTask,
    TrainingConfig,
    ValueTask,
)
from cxpredict.errors import FeatureMismatch, IneligibleTask, ModelNotFound
from cxpredict.explain import explain, one_hot_groups
from cxpredict.features import (
    Vocabulary,
    build_features,
    build_training_features,
    catalogue_version,
    check_trained_features,
    feature_catalogue,
    feature_fingerprints,
    learn_vocabulary,
)
from cxpredict.labels import Task, eligible
from cxpredict.models import PreferenceModel, booster_from_dict, booster_to_dict
from cxpredict.schemas import Tables, to_utc
from cxpredict.spine import feed_gap

BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = 1
HORIZON_METHODS: dict[str, str] = {
    "direct": "trained on labels over the full horizon",
    "btyd_extrapolation": (
        "trained on the longest label window the history allows and extended to the horizon "
        "with the BG/NBD model's ratio between the two windows"
    ),
    "btyd_start": (
        "trained on the longest label window the history allows as a correction to the "
        "Pareto/NBD prediction over it; predictions correct the Pareto/NBD prediction over the "
        "full horizon"
    ),
    "shorter_window": (
        "ranked on the longest label window the history allows; the ranking is taken as the "
        "ranking over the horizon"
    ),
}


# ------------------------------------------------------------------------------ the bundle


def _reference(values: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Quantile bins of ``values`` and their shares, in the JSON form the scoring job reads."""
    values = np.asarray(values, dtype=float)
    present = values[~np.isnan(values)]
    edges: list[float] = []
    if len(present):
        quantiles = np.quantile(present, np.linspace(0, 1, n_bins + 1)[1:-1], method="lower")
        edges = [float(q) for q in np.unique(quantiles)]
    bins = np.searchsorted(np.asarray(edges), present, side="left")
    counts = np.bincount(bins, minlength=len(edges) + 1).astype(float)
    total = max(len(values), 1)
    return {
        "edges": edges,
        "proportions": [float(c / total) for c in counts],
        "missing": float((len(values) - len(present)) / total),
    }


#: A column formatted into the start's sentence: weeks since the latest purchase day.
_WEEKS_SILENT = "btyd_weeks_since_last"


def _btyd_sentences(horizon_days: int) -> pd.DataFrame:
    """Catalogue rows for the BTYD outputs the models add to the engine's features, and for
    a started model's start (its purchase history as the buy-till-you-die model reads it)."""
    return pd.DataFrame(
        {
            "name": [*BTYD_FEATURES, START_CONTRIBUTION],
            "reason": [
                f"the purchase-rhythm model (BG/NBD) expects about "
                f"{{btyd_expected_purchases:.1f}} orders in the next {horizon_days} days",
                "the purchase-rhythm model (BG/NBD) puts the chance that the customer is still "
                "active at {btyd_p_alive:.0%}",
                f"the purchase-rhythm model (BG/NBD) puts the chance of an order in the next "
                f"{horizon_days} days at {{btyd_p_purchase:.0%}}",
                f"{{btyd_frequency:.0f}} days with a repeat purchase in {{btyd_t_weeks:.0f}} "
                f"weeks as a customer; last purchase {{{_WEEKS_SILENT}:.0f}} weeks ago",
            ],
            "unit": ["orders", "share", "share", ""],
        }
    )


@dataclass
class ModelBundle:
    """A trained task: its estimators and everything needed to score and explain with them.

    ``features`` are the columns the feature engine must provide (in order); the models may
    add the BTYD outputs to them, computed from the engine's ``btyd_*`` columns with the
    BG/NBD parameters fitted on the purchases before ``as_of``.
    """

    task_name: str
    kind: str
    task: dict[str, Any]
    features: list[str]
    model_features: list[str]
    catalogue_version: str
    vocabulary: dict[str, Any]
    estimators: dict[str, Any]
    as_of: pd.Timestamp
    training_cutoffs: list[pd.Timestamp]
    valid: pd.Timestamp
    label_horizon_days: int
    horizon_days: int
    horizon_method: str
    btyd: dict[str, float] | None = None
    calibration_method: str | None = None
    calibration: list[dict[str, Any]] | None = None
    reference: dict[str, Any] | None = None
    feature_medians: dict[str, float | None] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    feature_fingerprints: dict[str, str] = field(default_factory=dict)

    # -- inputs --------------------------------------------------------------------------

    def model_input(self, X: pd.DataFrame) -> pd.DataFrame:
        """The models' input: the engine features (plus BTYD outputs), in training order."""
        missing = [f for f in self.features if f not in X.columns]
        if missing:
            raise FeatureMismatch(
                f"the {self.task_name!r} model needs the feature columns {missing[:5]}"
                f"{' and more' if len(missing) > 5 else ''}; build the features with the "
                "model's vocabulary and feature settings"
            )
        frame = numeric_frame(X[self.features])
        if any(f in BTYD_FEATURES for f in self.model_features):
            model = None if self.btyd is None else btyd_from_params("bgnbd", self.btyd)
            frame = add_btyd(frame, model, horizon_days=self.label_horizon_days)
        return frame[self.model_features]

    def _btyd_ratio(self, X: pd.DataFrame, quantity: str) -> np.ndarray:
        """BG/NBD ratio of ``quantity`` over the horizon to the same over the label window.

        ``quantity`` is ``"survival"`` (probability of no purchase) or ``"expected"``
        (expected purchases). Customers without a purchase summary get the ratio of the
        window lengths (expected) or 1 (survival).
        """
        h, short = self.horizon_days, self.label_horizon_days
        fallback = h / short if quantity == "expected" else 1.0
        if self.btyd is None or not all(c in X.columns for c in BTYD_INPUTS):
            return np.full(len(X), fallback)
        model = btyd_from_params("bgnbd", self.btyd)
        args = [X[c].to_numpy(dtype=float) for c in BTYD_INPUTS]
        known = np.isfinite(args[0]) & np.isfinite(args[1]) & np.isfinite(args[2])
        ratio = np.full(len(X), fallback)
        if not known.any():
            return ratio
        f, r, t = (a[known] for a in args)
        with np.errstate(all="ignore"):
            if quantity == "expected":
                long = model.expected_purchases(h / 7.0, f, r, t)
                near = model.expected_purchases(short / 7.0, f, r, t)
            else:
                long = 1.0 - model.probability_of_purchase(h / 7.0, f, r, t)
                near = 1.0 - model.probability_of_purchase(short / 7.0, f, r, t)
            values = long / near
        ratio[known] = np.where(np.isfinite(values) & (near > 0), values, fallback)
        return ratio

    # -- predictions ---------------------------------------------------------------------

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        """One row per customer of ``X`` (same index).

        Churn and repurchase: ``probability`` over the task's horizon. Value: ``spend`` and
        ``orders`` expected over the horizon. Preference: one column per value, higher is
        preferred (the pairs model's probability that the customer chooses the value).
        """
        inputs = self.model_input(X)
        extend = self.horizon_method == "btyd_extrapolation"
        if self.kind in ("churn", "repurchase"):
            p = self.estimators["score"].predict_proba(inputs)[:, 1]
            if extend:
                survival = self._btyd_ratio(X, "survival")
                p = p * survival if self.kind == "churn" else 1.0 - (1.0 - p) * survival
            return pd.DataFrame({"probability": p}, index=X.index)
        if self.kind == "value":
            ratio = self._btyd_ratio(X, "expected") if extend else 1.0
            return pd.DataFrame(
                {
                    "spend": self.estimators["spend"].predict(inputs) * ratio,
                    "orders": self.estimators["orders"].predict(inputs) * ratio,
                },
                index=X.index,
            )
        return self.estimators["score"].predict_scores(inputs)

    def next_order(self, X: pd.DataFrame) -> pd.DataFrame:
        """Each customer's next order: ``next_order_days`` after the scoring instant (the
        median by the bundle's BG/NBD, within the task's horizon) or, where it cannot be
        estimated, ``next_order_note`` saying why (see :func:`cxpredict.backtest.next_order`).

        Raises
        ------
        FeatureMismatch
            When the bundle has a BG/NBD fit and ``X`` lacks the purchase summary it reads.
        """
        missing = [c for c in BTYD_INPUTS if c not in X.columns]
        if self.btyd is not None and missing:
            raise FeatureMismatch(
                f"the next-order dates read the purchase summary, and the features lack "
                f"{missing}; pass the features built by the engine (the btyd family)"
            )
        model = None if self.btyd is None else btyd_from_params("bgnbd", self.btyd)
        summary = X if not missing else pd.DataFrame(np.nan, index=X.index, columns=BTYD_INPUTS)
        return next_order(model, summary, horizon_days=self.horizon_days)  # type: ignore[arg-type]

    @property
    def main_estimator(self) -> Any:
        """The estimator whose score is explained and ranked: spend for value, else score."""
        return self.estimators["score" if self.kind != "value" else "spend"]

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        """Per-feature contributions to the raw score of the main estimator (spend for value)."""
        if self.kind == "preference":
            raise ValueError("contributions are given for churn, repurchase and value models")
        return self.main_estimator.contributions(self.model_input(X))

    def explain(self, X: pd.DataFrame, *, catalogue: pd.DataFrame, top: int = 3) -> pd.DataFrame:
        """``reason_1`` .. ``reason_<top>``: the features raising each customer's score.

        Parameters
        ----------
        X
            The customers' engine features (indexed by ``customer_id``).
        catalogue
            The feature catalogue (``name``, ``reason``, ``unit``) of the features, built with
            the model's vocabulary (:func:`cxpredict.features.feature_catalogue` with
            ``vocabulary=Vocabulary.from_dict(bundle.vocabulary)``).

        Raises
        ------
        ValueError
            When the catalogue has no sentence for a feature of the model.
        """
        named = set(catalogue["name"]) | set(_btyd_sentences(self.label_horizon_days)["name"])
        unnamed = [f for f in self.model_features if f not in named]
        if unnamed:
            raise ValueError(
                f"the catalogue has no sentence for {len(unnamed)} feature(s) of the model "
                f"({', '.join(unnamed[:3])}{', ...' if len(unnamed) > 3 else ''}); build it with "
                "the model's vocabulary: feature_catalogue(tables, settings=config.features, "
                "vocabulary=Vocabulary.from_dict(bundle.vocabulary))"
            )
        if X.empty:
            return pd.DataFrame(
                {f"reason_{k}": pd.Series(dtype="str") for k in range(1, top + 1)},
                index=X.index,
            )
        inputs = self.model_input(X)
        contributions = self.contributions(X)
        if START_CONTRIBUTION in contributions.columns:
            # the start speaks of the purchase history it reads
            inputs = inputs.assign(
                **{
                    START_CONTRIBUTION: contributions[START_CONTRIBUTION],
                    _WEEKS_SILENT: inputs["btyd_t_weeks"] - inputs["btyd_recency_weeks"],
                }
            )
        sentences = pd.concat(
            # the BTYD outputs are computed over the label windows the model learned on
            [catalogue, _btyd_sentences(self.label_horizon_days)],
            ignore_index=True,
        ).drop_duplicates("name")
        flags = sentences.loc[sentences.get("unit", pd.Series(dtype=str)) == "flag", "name"]
        vocabulary = Vocabulary.from_dict(self.vocabulary) if self.vocabulary else Vocabulary()
        groups = one_hot_groups(
            self.model_features,
            {key: vocabulary.slugs(key) for key, _ in vocabulary.values},
            flags=flags,
        )
        # a started model saved without its typical start explains its correction only
        started = isinstance(self.main_estimator, BtydStart)
        whole = not started or START_CONTRIBUTION in contributions
        return explain(contributions, inputs, sentences, top=top, groups=groups, whole=whole)

    def feature_importance(self) -> pd.Series:
        """Total gain per model feature of the main estimator, largest first."""
        estimator = self.main_estimator
        if isinstance(estimator, FrequentValueBaseline):
            estimator = self.estimators["lightgbm"]
        if isinstance(estimator, PreferenceModel):
            return estimator.model_.feature_importance()
        return estimator.feature_importance()

    # -- persistence ---------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the bundle to the directory ``path``: boosters as text, metadata as JSON."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        estimators = {}
        for name, estimator in self.estimators.items():
            if isinstance(estimator, FrequentValueBaseline):
                estimators[name] = {"type": "most_frequent", **estimator.to_dict()}
            elif isinstance(estimator, PreferenceModel | BtydStart):
                state = estimator.to_dict()
                state["model"] = _booster_file(state["model"], path / f"booster_{name}.txt")
                kind = "preference" if isinstance(estimator, PreferenceModel) else "btyd_start"
                estimators[name] = {"type": kind, **state}
            else:
                state = _booster_file(booster_to_dict(estimator), path / f"booster_{name}.txt")
                estimators[name] = {"type": "booster", **state}
        meta = {
            "format": BUNDLE_FORMAT,
            "task_name": self.task_name,
            "kind": self.kind,
            "task": self.task,
            "features": self.features,
            "model_features": self.model_features,
            "catalogue_version": self.catalogue_version,
            "vocabulary": self.vocabulary,
            "estimators": estimators,
            "as_of": self.as_of.isoformat(),
            "training_cutoffs": [c.isoformat() for c in self.training_cutoffs],
            "valid": self.valid.isoformat(),
            "label_horizon_days": self.label_horizon_days,
            "horizon_days": self.horizon_days,
            "horizon_method": self.horizon_method,
            "btyd": self.btyd,
            "calibration_method": self.calibration_method,
            "calibration": self.calibration,
            "reference": self.reference,
            "feature_medians": self.feature_medians,
            "details": self.details,
            "feature_fingerprints": self.feature_fingerprints,
        }
        text = json.dumps(meta, indent=1, default=_json_default, allow_nan=True)
        (path / BUNDLE_FILE).write_text(text, encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelBundle:
        """Read a bundle written by :meth:`save`.

        Raises
        ------
        ModelNotFound
            When the directory holds no bundle.
        """
        path = Path(path)
        file = path / BUNDLE_FILE
        if not file.is_file():
            raise ModelNotFound(
                f"no model bundle in {str(path)!r} (expected {BUNDLE_FILE}); train the task "
                "first with `cxpredict train`"
            )
        meta = json.loads(file.read_text(encoding="utf-8"))
        estimators: dict[str, Any] = {}
        for name, state in meta["estimators"].items():
            state = dict(state)
            kind = state.pop("type")
            if kind == "preference":
                state["model"] = _booster_text(state["model"], path)
                estimators[name] = PreferenceModel.from_dict(state)
            elif kind == "most_frequent":
                estimators[name] = FrequentValueBaseline.from_dict(state)
            elif kind == "btyd_start":
                state["model"] = _booster_text(state["model"], path)
                estimators[name] = BtydStart.from_dict(state)
            else:
                estimators[name] = booster_from_dict(_booster_text(state, path))
        return cls(
            task_name=meta["task_name"],
            kind=meta["kind"],
            task=meta["task"],
            features=list(meta["features"]),
            model_features=list(meta["model_features"]),
            catalogue_version=meta["catalogue_version"],
            vocabulary=meta["vocabulary"],
            estimators=estimators,
            as_of=to_utc(meta["as_of"]),
            training_cutoffs=[to_utc(c) for c in meta["training_cutoffs"]],
            valid=to_utc(meta["valid"]),
            label_horizon_days=int(meta["label_horizon_days"]),
            horizon_days=int(meta["horizon_days"]),
            horizon_method=meta["horizon_method"],
            btyd=meta["btyd"],
            calibration_method=meta["calibration_method"],
            calibration=meta["calibration"],
            reference=meta["reference"],
            feature_medians=meta["feature_medians"],
            details=meta["details"],
            # bundles written before per-feature fingerprints need the same catalogue version
            feature_fingerprints=dict(meta.get("feature_fingerprints") or {}),
        )


def _booster_file(state: dict[str, Any], file: Path) -> dict[str, Any]:
    state = dict(state)
    file.write_text(state.pop("booster"), encoding="utf-8")
    state["booster_file"] = file.name
    return state


def _booster_text(state: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    out = dict(state)
    out["booster"] = (folder / out.pop("booster_file")).read_text(encoding="utf-8")
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# ------------------------------------------------------------------------------ training


@dataclass
class TrainResult:
    """A trained task: the backtest next to the baselines, and the model kept.

    ``metrics`` is the tidy backtest frame (``cutoff``, ``model``, ``metric``, ``value``);
    ``summary`` its mean per metric and model.
    """

    task_name: str
    task: Task
    as_of: pd.Timestamp
    metrics: pd.DataFrame
    bundle: ModelBundle
    training_cutoffs: list[pd.Timestamp]
    validation_cutoff: pd.Timestamp
    catalogue_version: str
    features: list[str]
    horizon_method: str
    label_horizon_days: int
    params: dict[str, Any] = field(default_factory=dict)
    calibration: pd.DataFrame | None = None
    details: dict[str, Any] = field(default_factory=dict)
    backtest: BacktestResult | None = None

    @property
    def summary(self) -> pd.DataFrame:
        """Mean of each backtest metric over the test cutoffs: metrics by model."""
        if self.backtest is None:
            return pd.DataFrame()
        return self.backtest.summary()


def check_feed(task_name: str, known: Tables, as_of: pd.Timestamp, *, max_gap_days: int) -> None:
    """Raise :class:`IneligibleTask` when the data end more than ``max_gap_days`` before
    ``as_of``: the latest label windows would then run past the data, and count every
    customer in them as having bought nothing."""
    stopped = feed_gap(known, as_of, max_gap_days=max_gap_days)
    if stopped is not None:
        latest, gap = stopped
        day_after = (latest + pd.Timedelta(days=1)).floor("D")
        raise IneligibleTask(
            f"task {task_name!r}: the latest order or interaction is on {latest:%Y-%m-%d}, "
            f"{gap:.0f} days before the as-of date {as_of:%Y-%m-%d}; label windows past the end "
            "of the data would count every customer in them as having bought nothing. Bring "
            f"the data up to date, or train as of {day_after:%Y-%m-%d} (the day after the "
            f"data end); training.max_feed_gap_days ({max_gap_days}) sets the limit"
        )


def feature_function(config: ProjectConfig) -> FeatureFunction:
    """The engine's features with the project's settings, vocabulary learned before ``as_of``."""

    def features(tables: Tables, cutoffs: Sequence[pd.Timestamp], as_of: pd.Timestamp):
        vocabulary = learn_vocabulary(
            tables,
            as_of,
            max_values=config.features.vocabulary_max_values,
            min_customers=config.features.vocabulary_min_customers,
        )
        return build_training_features(
            tables, list(cutoffs), settings=config.features, vocabulary=vocabulary
        )

    return features


def _history_needed(horizon: int, training: TrainingConfig, *, backtest: bool) -> int:
    """Days before the as-of date that the folds need, from the first history to the as-of."""
    folds = training.n_backtest_cutoffs if backtest else 0
    last_test = (folds - 1) * training.step_days + horizon if folds else 0
    return (
        last_test
        + 2 * horizon
        + (training.n_cutoffs - 1) * training.step_days
        + min_history_days(horizon)
    )


def choose_label_horizon(
    task_name: str,
    task: Task,
    *,
    training: TrainingConfig,
    as_of: pd.Timestamp,
    first_event: pd.Timestamp,
    backtest: bool = True,
    allow_extrapolation: bool = True,
) -> tuple[int, str]:
    """The label window to train on and how the task's horizon is then reached.

    The task's own horizon when the history covers the folds it needs; otherwise the
    longest whole number of weeks that fits, with ``"btyd_extrapolation"`` (churn,
    repurchase, value) or ``"shorter_window"`` (preference).

    Raises
    ------
    IneligibleTask
        When not even one week fits, or extrapolation is not allowed.
    """
    available = (to_utc(as_of) - to_utc(first_event)) / pd.Timedelta(days=1)
    horizon = task.horizon_days
    if _history_needed(horizon, training, backtest=backtest) <= available:
        return horizon, "direct"
    needed = _history_needed(horizon, training, backtest=backtest)
    fits = [
        h
        for h in range(7 * (horizon // 7), 6, -7)
        if _history_needed(h, training, backtest=backtest) <= available
    ]
    layout = f"{training.n_cutoffs} training cutoffs every {training.step_days} days" + (
        f" and {training.n_backtest_cutoffs} backtest cutoffs" if backtest else ""
    )
    if not fits or not allow_extrapolation:
        raise IneligibleTask(
            f"task {task_name!r}: a {horizon}-day horizon with {layout} needs {needed} days of "
            f"history before the as-of date {to_utc(as_of):%Y-%m-%d}; the data start "
            f"{to_utc(first_event):%Y-%m-%d} ({available:.0f} days). Use a shorter horizon, "
            "fewer cutoffs (training.n_cutoffs, training.n_backtest_cutoffs), a shorter "
            "training.step_days, or a later as-of date"
        )
    method = "shorter_window" if isinstance(task, PreferenceTask) else "btyd_extrapolation"
    return fits[0], method


def train_task(
    config: ProjectConfig,
    task_name: str,
    *,
    as_of: Any,
    tables: Tables | Mapping[str, pd.DataFrame | None],
    backtest: bool = True,
    allow_extrapolation: bool = True,
    preference_strategy: str = "pairs",
    btyd_baselines: Sequence[str] = ("bgnbd", "pareto"),
    features: FeatureFunction | None = None,
) -> TrainResult:
    """Backtest the task's model against its baselines, then fit the model that is kept.

    Nothing at or after ``as_of`` is read. The kept model is trained on
    ``training.n_cutoffs`` cutoffs whose label windows end by its validation cutoff, whose own
    window ends at ``as_of``; the backtest repeats that recipe at earlier as-of dates.

    Parameters
    ----------
    config
        The project config (task, training layout, feature settings, LightGBM overrides).
    task_name
        A task of ``config.tasks``.
    as_of
        The instant the data are complete up to (exclusive).
    tables
        The project's tables, or a mapping of their names to frames (rows at or after
        ``as_of`` are ignored; naive instants are read as UTC).
    backtest
        Whether to run the backtest (the metrics frame is empty without it).
    allow_extrapolation
        Whether a horizon longer than the history can label is reached by extrapolation
        (see the module docstring) rather than refused.
    preference_strategy
        ``"pairs"`` (the default, measured better on the sample) or ``"multiclass"``.
    btyd_baselines
        The buy-till-you-die baselines of the backtest (``"bgnbd"``, ``"pareto"``).
    features
        The feature function; the engine's with the project's settings by default.

    Raises
    ------
    IneligibleTask
        When the history or the examples are too few, saying what to change.
    """
    task = config.task(task_name)
    as_of = to_utc(as_of)
    known = Tables.of(tables).before(as_of)
    if known.orders.empty:
        raise IneligibleTask(
            f"task {task_name!r}: no order before the as-of date {as_of:%Y-%m-%d}; use a later "
            "as-of date"
        )
    training = config.training
    check_feed(task_name, known, as_of, max_gap_days=training.max_feed_gap_days)
    features = features or feature_function(config)
    first_event = known.orders["timestamp"].min()
    horizon, method = choose_label_horizon(
        task_name,
        task,
        training=training,
        as_of=as_of,
        first_event=first_event,
        backtest=backtest,
        allow_extrapolation=allow_extrapolation,
    )
    cache = BtydCache(known.orders)
    # Probabilities over a horizon beyond the labelled windows start from the Pareto/NBD
    # prediction over it. Value models keep the BG/NBD ratio: started from Pareto/NBD they
    # ranked better but under-predicted totals on validation as-of dates (docs/models.md).
    start = (
        task.horizon_days
        if method == "btyd_extrapolation" and isinstance(task, ChurnTask | RepurchaseTask)
        else None
    )
    result = None
    if backtest:
        result = run_backtest(
            task_name,
            task,
            known,
            as_of=as_of,
            training=training,
            features=features,
            label_horizon_days=horizon,
            preference_strategy=preference_strategy,
            btyd_baselines=btyd_baselines,
            cache=cache,
            start_horizon_days=start,
        )
    fold = plan_fold(
        as_of,
        horizon_days=horizon,
        n_cutoffs=training.n_cutoffs,
        step_days=training.step_days,
        test=False,
    )
    check_fold(task_name, task, fold, first_event=first_event, horizon_days=horizon)
    data = fold_data(
        task, known, fold, features=features, cache=cache, label_horizon_days=horizon, use_btyd=True
    )
    fitted = fit_task(
        task_name,
        task,
        data,
        fold,
        training=training,
        label_horizon_days=horizon,
        cache=cache,
        preference_strategy=preference_strategy,
        start_horizon_days=start,
        # the calibration that did best on the backtest's later cutoffs, fitted on this
        # model's validation cutoff; without a backtest, chosen on the validation rows
        calibration=(result.calibration_method() if result is not None else None) or "auto",
    )
    if fitted.details.get("start") is not None:
        method = "btyd_start"
    vocabulary = learn_vocabulary(
        known,
        as_of,
        max_values=config.features.vocabulary_max_values,
        min_customers=config.features.vocabulary_min_customers,
    )
    catalogue = feature_catalogue(known, settings=config.features, vocabulary=vocabulary)
    bundle = _bundle(task_name, task, fitted, data, vocabulary, catalogue, as_of, method, result)
    population = scored_population(
        known, as_of, task, settings=config.features, vocabulary=vocabulary
    )
    bundle.reference = drift_reference(bundle, population)
    metrics = (
        result.metrics
        if result is not None
        else pd.DataFrame(columns=["cutoff", "model", "metric", "value"])
    )
    details = {
        "horizon_method": method,
        "horizon_method_text": HORIZON_METHODS[method],
        "label_horizon_days": horizon,
        "horizon_days": task.horizon_days,
        "final_model": fitted.details,
        "calibration_chosen_on": (
            "the backtest's test cutoffs"
            if result is not None and result.calibration_method() is not None
            else "the validation cutoff"
        ),
        "rows": {"train": len(data.y_train), "validation": len(data.y_valid)},
    }
    if result is not None:
        details["backtest_folds"] = result.details
    return TrainResult(
        task_name=task_name,
        task=task,
        as_of=as_of,
        metrics=metrics,
        bundle=bundle,
        training_cutoffs=list(fold.train),
        validation_cutoff=fold.valid,
        catalogue_version=bundle.catalogue_version,
        features=list(bundle.features),
        horizon_method=method,
        label_horizon_days=horizon,
        params=dict(training.lightgbm),
        calibration=None if result is None else result.calibration,
        details=details,
        backtest=result,
    )


def _bundle(
    task_name: str,
    task: Task,
    fitted: FittedTask,
    data: Any,
    vocabulary: Vocabulary,
    catalogue: pd.DataFrame,
    as_of: pd.Timestamp,
    method: str,
    result: BacktestResult | None,
) -> ModelBundle:
    """The bundle of a fitted task, with aggregate statistics of its validation rows only."""
    fingerprints = feature_fingerprints(catalogue)
    recent = data.X_valid
    # observed values (the lower median), so that a count's median is a count
    medians = recent[fitted.inputs].quantile(0.5, interpolation="lower")
    bundle = ModelBundle(
        task_name=task_name,
        kind=task.kind,
        task=task.model_dump(mode="json"),
        features=fitted.inputs,
        model_features=fitted.features,
        catalogue_version=catalogue_version(catalogue),
        vocabulary=vocabulary.to_dict(),
        estimators=fitted.estimators,
        as_of=as_of,
        training_cutoffs=list(fitted.fold.train),
        valid=fitted.fold.valid,
        label_horizon_days=fitted.label_horizon_days,
        horizon_days=task.horizon_days,
        horizon_method=method,
        btyd=fitted.btyd,
        calibration_method=fitted.details.get("calibration"),
        feature_medians={f: (None if math.isnan(v) else float(v)) for f, v in medians.items()},
        details=dict(fitted.details),
        feature_fingerprints={f: fingerprints[f] for f in fitted.inputs if f in fingerprints},
    )
    if result is not None and result.calibration is not None:
        table = result.calibration.assign(cutoff=result.calibration["cutoff"].astype(str))
        bundle.calibration = table.to_dict(orient="records")
    return bundle


def drift_reference(bundle: ModelBundle, population: pd.DataFrame) -> dict[str, Any]:
    """Binned shares of every model input and of the score over ``population``.

    ``population`` is the task's eligible customers' features at the training as-of date:
    the population a scoring run at that date would score, so that a later run compares
    like with like (the validation rows sit a horizon earlier, and every tenure-like
    feature would drift by construction).
    """
    features = {str(f): _reference(population[f].to_numpy(dtype=float)) for f in bundle.features}
    reference: dict[str, Any] = {"features": features}
    if len(population):
        reference["score"] = _reference(_score_column(bundle.predict(population), bundle.kind))
    return reference


def _score_column(predictions: pd.DataFrame, kind: str) -> np.ndarray:
    """The list's score: the probability, the expected spend, or the top value's probability."""
    if kind == "preference":
        matrix = predictions.to_numpy(dtype=float)
        return matrix.max(axis=1) if matrix.shape[1] else np.full(len(matrix), np.nan)
    column = "spend" if kind == "value" else "probability"
    return predictions[column].to_numpy(dtype=float)


# ------------------------------------------------------------------------------ scoring


def scored_population(
    known: Tables,
    as_of: pd.Timestamp,
    task: Task,
    *,
    settings: FeaturesConfig,
    vocabulary: Vocabulary,
) -> pd.DataFrame:
    """The features at ``as_of`` of the customers the task scores (:func:`eligible`).

    Window: events strictly before ``as_of``. What a scoring run on that date scores, and
    so what a model's drift reference is taken over.
    """
    X = build_features(known, as_of, settings=settings, vocabulary=vocabulary)
    return X[eligible(X, task)]


def score_task(
    config: ProjectConfig,
    task_name: str,
    *,
    as_of: Any,
    tables: Tables | Mapping[str, pd.DataFrame | None],
    model: ModelBundle,
) -> pd.DataFrame:
    """Score the task's customers as of ``as_of`` with a trained bundle, best first.

    Window: the events strictly before ``as_of``.

    Returns
    -------
    DataFrame
        ``customer_id``, ``score`` (probability over the task's horizon for churn and
        repurchase, expected spend for value, the top value's probability for preference)
        and ``rank`` (1 = highest score; ties by ``customer_id``); value tasks add
        ``expected_orders``, ``next_order_days`` and ``next_order_note`` (see
        :meth:`ModelBundle.next_order`), preference tasks ``top_<k>`` and
        ``top_<k>_probability`` for k up to the task's ``top_k``.

    Raises
    ------
    FeatureMismatch
        When a feature the model uses is no longer built, or is built differently.
    """
    task = config.task(task_name)
    if model.kind != task.kind:
        raise FeatureMismatch(
            f"the model is a {model.kind} model but task {task_name!r} is {task.kind}; load "
            "the model trained for this task"
        )
    as_of = to_utc(as_of)
    known = Tables.of(tables).before(as_of)
    vocabulary = Vocabulary.from_dict(model.vocabulary)
    catalogue = feature_catalogue(known, settings=config.features, vocabulary=vocabulary)
    check_trained_features(
        catalogue,
        features=model.features,
        version=model.catalogue_version,
        fingerprints=model.feature_fingerprints,
    )
    X = scored_population(known, as_of, task, settings=config.features, vocabulary=vocabulary)
    predictions = model.predict(X)
    out = pd.DataFrame({"customer_id": X.index.astype(str)})
    if isinstance(task, PreferenceTask):
        matrix = predictions.to_numpy(dtype=float)
        names = np.asarray(predictions.columns, dtype=object)
        order = np.argsort(-matrix, axis=1, kind="stable")
        for k in range(min(task.top_k, matrix.shape[1])):
            out[f"top_{k + 1}"] = names[order[:, k]]
            out[f"top_{k + 1}_probability"] = np.take_along_axis(matrix, order[:, [k]], 1)[:, 0]
        out.insert(1, "score", out["top_1_probability"] if len(names) else np.nan)
    elif isinstance(task, ValueTask):
        out["score"] = predictions["spend"].to_numpy(dtype=float)
        out["expected_orders"] = predictions["orders"].to_numpy(dtype=float)
        dated = model.next_order(X)
        out["next_order_days"] = dated["next_order_days"].to_numpy(dtype=float)
        out["next_order_note"] = dated["next_order_note"].to_numpy(dtype=object)
    else:
        assert isinstance(task, ChurnTask | RepurchaseTask)
        out["score"] = predictions["probability"].to_numpy(dtype=float)
    out = out.sort_values(["score", "customer_id"], ascending=[False, True], kind="stable")
    out.insert(2, "rank", np.arange(1, len(out) + 1))
    return out.reset_index(drop=True)
