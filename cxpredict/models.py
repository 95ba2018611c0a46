"""Estimators with the scikit-learn contract: LightGBM classifiers, regressors, preference models.

Every estimator stores its parameters in ``__init__`` and nothing else; ``fit`` returns the
estimator and leaves learned state in attributes ending with ``_``; no training rows are kept.
Early stopping uses a validation set that the caller passes explicitly, and which the caller
takes from a later cutoff than the training rows: there is no random split anywhere in here.

Models are deterministic for a seed: LightGBM runs with a fixed thread count,
``deterministic=True`` and column-wise histograms.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from cxpredict.trees import booster_tables, cores, tree_contributions

#: LightGBM parameters used unless ``training.lightgbm`` in the config overrides them.
DEFAULT_PARAMS: dict[str, Any] = {
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 10.0,
    "max_bin": 255,
    # one thread: on a small shared machine a second one mostly waits; set more in
    # training.lightgbm on a larger one (the result depends on it, never on timing)
    "num_threads": 1,
    "deterministic": True,
    "force_col_wise": True,
    "verbosity": -1,
}
#: Keys of ``training.lightgbm`` that steer boosting rather than the booster itself.
BOOSTING_KEYS: tuple[str, ...] = ("num_boost_round", "early_stopping_rounds")
CALIBRATIONS: tuple[str, ...] = ("none", "platt", "isotonic")
_CLIP = 1e-6


def split_overrides(overrides: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``training.lightgbm`` into booster parameters and boosting settings."""
    overrides = dict(overrides or {})
    boosting = {k: overrides.pop(k) for k in BOOSTING_KEYS if k in overrides}
    return overrides, boosting


def _frame(X: pd.DataFrame | np.ndarray) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        return X
    X = np.asarray(X, dtype=float)
    return pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])


def _float_matrix(frame: pd.DataFrame) -> np.ndarray | None:
    """The frame as a float matrix, or ``None`` when a column is not numeric (a categorical)."""
    if all(pd.api.types.is_numeric_dtype(t) for t in frame.dtypes):
        return frame.to_numpy(dtype=np.float64)
    return None


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class _Booster(BaseEstimator):
    """Shared LightGBM training: explicit validation set, early stopping, contributions."""

    _objective: str = ""

    def __init__(
        self,
        *,
        params: Mapping[str, Any] | None = None,
        num_boost_round: int = 2000,
        early_stopping_rounds: int = 50,
        seed: int = 0,
    ) -> None:
        self.params = params
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.seed = seed

    def _params(self) -> dict[str, Any]:
        params = {**DEFAULT_PARAMS, **self._objective_params(), **dict(self.params or {})}
        params["seed"] = self.seed
        return params

    def _objective_params(self) -> dict[str, Any]:
        return {"objective": self._objective}

    def _boost(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        X_valid: pd.DataFrame | None,
        y_valid: np.ndarray | None,
        *,
        init_score: np.ndarray | None = None,
        init_score_valid: np.ndarray | None = None,
        weight: np.ndarray | None = None,
        weight_valid: np.ndarray | None = None,
    ) -> None:
        X = _frame(X)
        train = lgb.Dataset(X, label=y, init_score=init_score, weight=weight, free_raw_data=True)
        valid_sets, callbacks = [], []
        if X_valid is not None:
            X_valid = _frame(X_valid)
            if list(X_valid.columns) != list(X.columns):
                raise ValueError(
                    "the validation rows have other columns than the training rows; build both "
                    "with the same feature settings and vocabulary"
                )
            valid = lgb.Dataset(
                X_valid,
                label=y_valid,
                init_score=init_score_valid,
                weight=weight_valid,
                reference=train,
            )
            valid_sets = [valid]
            callbacks = [lgb.early_stopping(self.early_stopping_rounds, verbose=False)]
        booster = lgb.train(
            self._params(),
            train,
            num_boost_round=self.num_boost_round,
            valid_sets=valid_sets,
            valid_names=["validation"] if valid_sets else None,
            callbacks=callbacks,
        )
        best = booster.best_iteration if X_valid is not None else 0
        self.best_iteration_ = int(best) if best > 0 else booster.current_iteration()
        self.booster_ = booster
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = X.shape[1]

    @property
    def booster(self) -> lgb.Booster:
        """The fitted LightGBM booster."""
        return self.booster_

    def _check(self, X: pd.DataFrame | np.ndarray) -> pd.DataFrame:
        X = _frame(X)
        expected = list(self.feature_names_in_)
        if list(X.columns) != expected:
            missing = [c for c in expected if c not in X.columns]
            extra = [c for c in X.columns if c not in expected]
            if missing or extra:
                raise ValueError(
                    f"features differ from the ones the model was trained on: missing "
                    f"{missing[:5]}, unexpected {extra[:5]}; build features with the model's "
                    "vocabulary and settings"
                )
            X = X[expected]
        return X

    def raw_score(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """The booster's raw score (log-odds or log-mean) for each row.

        All-numeric inputs are scored from the trees' leaf tables
        (:class:`cxpredict.trees.TreeTables`): LightGBM's raw score bit for bit, several
        times faster. Models the tables cannot follow, and frames with a categorical column,
        are scored by LightGBM on every core this process may use.
        """
        frame = self._check(X)
        matrix = _float_matrix(frame)
        tables = booster_tables(self.booster_, self.best_iteration_) if matrix is not None else None
        if tables is not None:
            return tables.raw_score(matrix)
        return self.booster_.predict(
            frame if matrix is None else matrix,
            num_iteration=self.best_iteration_,
            raw_score=True,
            num_threads=cores(),
        )

    def contributions(self, X: pd.DataFrame | np.ndarray) -> pd.DataFrame:
        """Per-feature contributions to the raw score (LightGBM's ``pred_contrib=True``).

        Returns
        -------
        DataFrame
            One column per feature plus ``bias``; each row sums to :meth:`raw_score`.
        """
        X = self._check(X)
        matrix = _float_matrix(X)
        if matrix is not None:
            values = tree_contributions(self.booster_, matrix, self.best_iteration_)
        else:
            values = self.booster_.predict(
                X, num_iteration=self.best_iteration_, pred_contrib=True, num_threads=cores()
            )
        columns = [*self.feature_names_in_, "bias"]
        return pd.DataFrame(values, index=X.index, columns=columns)

    def feature_importance(self) -> pd.Series:
        """Total gain per feature, largest first."""
        gain = self.booster_.feature_importance("gain", iteration=self.best_iteration_)
        series = pd.Series(gain, index=self.feature_names_in_, name="gain")
        return series.sort_values(ascending=False)


class Calibrator(BaseEstimator):
    """Maps a raw log-odds score to a probability: ``none``, ``platt`` or ``isotonic``."""

    def __init__(self, method: Literal["none", "platt", "isotonic"] = "platt") -> None:
        self.method = method

    def fit(self, raw: np.ndarray, y: np.ndarray) -> Calibrator:
        """Fit on raw scores and 0/1 outcomes of rows the booster was not trained on."""
        raw = np.asarray(raw, dtype=float)
        y = np.asarray(y, dtype=float)
        if self.method not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {self.method!r}")
        if self.method == "platt":
            model = LogisticRegression(C=1e6, max_iter=1000).fit(raw.reshape(-1, 1), y)
            self.slope_ = float(model.coef_[0, 0])
            self.intercept_ = float(model.intercept_[0])
        elif self.method == "isotonic":
            model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            model.fit(raw, y)
            self.thresholds_ = np.asarray(model.X_thresholds_, dtype=float)
            self.values_ = np.asarray(model.y_thresholds_, dtype=float)
        return self

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """Probabilities for raw log-odds scores."""
        raw = np.asarray(raw, dtype=float)
        if self.method == "platt":
            p = _sigmoid(self.slope_ * raw + self.intercept_)
        elif self.method == "isotonic":
            p = np.interp(raw, self.thresholds_, self.values_)
        else:
            p = _sigmoid(raw)
        return np.clip(p, _CLIP, 1 - _CLIP)

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as plain JSON types."""
        out: dict[str, Any] = {"method": self.method}
        if self.method == "platt":
            out.update(slope=self.slope_, intercept=self.intercept_)
        elif self.method == "isotonic":
            out.update(thresholds=self.thresholds_.tolist(), values=self.values_.tolist())
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibrator:
        """Rebuild a fitted calibrator from :meth:`to_dict`."""
        calibrator = cls(method=data["method"])
        if calibrator.method == "platt":
            calibrator.slope_ = float(data["slope"])
            calibrator.intercept_ = float(data["intercept"])
        elif calibrator.method == "isotonic":
            calibrator.thresholds_ = np.asarray(data["thresholds"], dtype=float)
            calibrator.values_ = np.asarray(data["values"], dtype=float)
        return calibrator


def choose_calibration(raw: np.ndarray, y: np.ndarray) -> tuple[str, dict[str, float]]:
    """Pick the calibration with the lowest cross-fitted Brier score on validation rows.

    The rows (all of one validation cutoff) are cut in two halves by position; each method is
    fitted on one half and scored on the other, both ways. No later information is used: the
    halves share the same cutoff. With fewer than 1,000 rows isotonic is not considered (it
    overfits small samples).

    Returns
    -------
    tuple
        The chosen method and the cross-fitted Brier score of every method tried.
    """
    raw = np.asarray(raw, dtype=float)
    y = np.asarray(y, dtype=float)
    halves = np.arange(len(y)) % 2 == 0
    methods = ["none", "platt"] + (["isotonic"] if len(y) >= 1000 else [])
    scores: dict[str, float] = {}
    for method in methods:
        errors = []
        for fit_rows in (halves, ~halves):
            if y[fit_rows].min() == y[fit_rows].max():
                errors.append(np.nan)
                continue
            calibrator = Calibrator(method).fit(raw[fit_rows], y[fit_rows])
            p = calibrator.transform(raw[~fit_rows])
            errors.append(float(np.mean((p - y[~fit_rows]) ** 2)))
        scores[method] = float(np.mean(errors))
    finite = {m: s for m, s in scores.items() if np.isfinite(s)}
    chosen = min(finite, key=finite.__getitem__) if finite else "none"
    return chosen, scores


class LightGBMClassifier(_Booster):
    """Binary LightGBM with early stopping on a later cutoff, then calibration on it.

    Parameters
    ----------
    params
        LightGBM parameters overriding :data:`DEFAULT_PARAMS`.
    num_boost_round
        Upper bound on trees; early stopping usually ends sooner.
    early_stopping_rounds
        Stop when the validation log loss has not improved for this many trees.
    calibration
        ``"auto"`` (chosen on the validation rows, see :func:`choose_calibration`),
        ``"none"``, ``"platt"`` or ``"isotonic"``.
    seed
        Seed of every random choice LightGBM makes.
    """

    _objective = "binary"

    def __init__(
        self,
        *,
        params: Mapping[str, Any] | None = None,
        num_boost_round: int = 2000,
        early_stopping_rounds: int = 50,
        calibration: Literal["auto", "none", "platt", "isotonic"] = "auto",
        seed: int = 0,
    ) -> None:
        super().__init__(
            params=params,
            num_boost_round=num_boost_round,
            early_stopping_rounds=early_stopping_rounds,
            seed=seed,
        )
        self.calibration = calibration

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray | pd.Series,
        *,
        X_valid: pd.DataFrame,
        y_valid: np.ndarray | pd.Series,
        weight: np.ndarray | None = None,
        offset: np.ndarray | None = None,
        offset_valid: np.ndarray | None = None,
    ) -> LightGBMClassifier:
        """Fit on training rows; stop early and calibrate on the (later) validation rows.

        Parameters
        ----------
        X, y
            Training features and 0/1 labels (from cutoffs whose label windows end by the
            validation cutoff).
        X_valid, y_valid
            Features and labels of the validation cutoff.
        weight
            Optional training row weights.
        offset, offset_valid
            Optional log-odds each row starts from (another model's prediction); the trees
            then learn a correction to it, and predictions need an offset too.
        """
        y = np.asarray(y, dtype=float)
        y_valid = np.asarray(y_valid, dtype=float)
        for name, labels in (("training", y), ("validation", y_valid)):
            if labels.min() == labels.max():
                raise ValueError(
                    f"the {name} rows hold a single class; a classifier needs both outcomes"
                )
        if (offset is None) != (offset_valid is None):
            raise ValueError("pass both offset and offset_valid, or neither")
        self.classes_ = np.array([0, 1])
        self.uses_offset_ = offset is not None
        self._boost(
            X,
            y,
            X_valid,
            y_valid,
            weight=weight,
            init_score=None if offset is None else np.asarray(offset, dtype=float),
            init_score_valid=None if offset_valid is None else np.asarray(offset_valid, float),
        )
        raw_valid = self._with_offset(self.raw_score(X_valid), offset_valid)
        if self.calibration == "auto":
            method, self.calibration_scores_ = choose_calibration(raw_valid, y_valid)
        else:
            method, self.calibration_scores_ = self.calibration, {}
        self.calibrator_ = Calibrator(method).fit(raw_valid, y_valid)
        self.calibration_method_ = method
        return self

    def _with_offset(self, raw: np.ndarray, offset: np.ndarray | None) -> np.ndarray:
        if offset is not None:
            return raw + np.asarray(offset, dtype=float)
        if getattr(self, "uses_offset_", False):
            raise ValueError("this model corrects another model's log-odds; pass the offset")
        return raw

    def predict_proba(
        self, X: pd.DataFrame | np.ndarray, *, offset: np.ndarray | None = None
    ) -> np.ndarray:
        """Calibrated probabilities, shape ``(n, 2)``: negative then positive class.

        ``offset`` (log-odds per row) is required when the model was fitted with one.
        """
        p = self.calibrator_.transform(self._with_offset(self.raw_score(X), offset))
        return np.column_stack([1 - p, p])

    def predict(
        self, X: pd.DataFrame | np.ndarray, *, offset: np.ndarray | None = None
    ) -> np.ndarray:
        """The class (0/1) whose calibrated probability is higher."""
        return (self.predict_proba(X, offset=offset)[:, 1] >= 0.5).astype(int)

    def decision_function(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Raw log-odds before calibration and offset (the space of :meth:`contributions`)."""
        return self.raw_score(X)


class LightGBMRegressor(_Booster):
    """LightGBM for non-negative amounts (Tweedie) or counts (Poisson), optionally per exposure.

    With ``exposure``, the model learns a rate: the log of each row's exposure (for instance
    the days its label window covers) is the starting score, so a prediction for a window
    twice as long is twice as large.

    After fitting, the predictions are scaled so that their total over the training rows is
    the actual total (``balance_``, the balance property). A Poisson model with its log link
    has it nearly by itself; a Tweedie model does not (its log link is not the canonical one,
    and boosting stops early): on the bundled sample its spend fell 8-11 % short of the
    training rows' own total before the scaling.

    Parameters
    ----------
    objective
        ``"tweedie"`` for spend (many zeros, skewed positives) or ``"poisson"`` for counts.
    tweedie_variance_power
        Between 1 (Poisson) and 2 (gamma); used by the Tweedie objective.
    params, num_boost_round, early_stopping_rounds, seed
        As for :class:`LightGBMClassifier`.
    """

    def __init__(
        self,
        *,
        objective: Literal["tweedie", "poisson"] = "tweedie",
        tweedie_variance_power: float = 1.5,
        params: Mapping[str, Any] | None = None,
        num_boost_round: int = 2000,
        early_stopping_rounds: int = 50,
        seed: int = 0,
    ) -> None:
        super().__init__(
            params=params,
            num_boost_round=num_boost_round,
            early_stopping_rounds=early_stopping_rounds,
            seed=seed,
        )
        self.objective = objective
        self.tweedie_variance_power = tweedie_variance_power

    def _objective_params(self) -> dict[str, Any]:
        if self.objective not in ("tweedie", "poisson"):
            raise ValueError(f"objective must be 'tweedie' or 'poisson', got {self.objective!r}")
        out: dict[str, Any] = {"objective": self.objective}
        if self.objective == "tweedie":
            out["tweedie_variance_power"] = self.tweedie_variance_power
        return out

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray | pd.Series,
        *,
        X_valid: pd.DataFrame,
        y_valid: np.ndarray | pd.Series,
        exposure: np.ndarray | None = None,
        exposure_valid: np.ndarray | None = None,
    ) -> LightGBMRegressor:
        """Fit on training rows with early stopping on the (later) validation rows.

        Negative targets (net refunds) are counted as zero: both objectives need ``y >= 0``.
        """
        y = np.clip(np.asarray(y, dtype=float), 0.0, None)
        y_valid = np.clip(np.asarray(y_valid, dtype=float), 0.0, None)
        if y.sum() == 0:
            raise ValueError("every training target is zero; there is nothing to learn")
        self.uses_exposure_ = exposure is not None
        init = None if exposure is None else np.log(np.asarray(exposure, dtype=float))
        init_valid = None
        if exposure is not None:
            if exposure_valid is None:
                raise ValueError("pass exposure_valid too when the training rows have exposure")
            init_valid = np.log(np.asarray(exposure_valid, dtype=float))
        self._boost(X, y, X_valid, y_valid, init_score=init, init_score_valid=init_valid)
        self.balance_ = 1.0
        predicted = np.exp(self.raw_score(X) + (0.0 if init is None else init)).sum()
        if predicted > 0:
            self.balance_ = float(y.sum() / predicted)
        return self

    def raw_score(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """The log of the expected amount or count (or rate), balance included."""
        return super().raw_score(X) + np.log(self.balance_)

    def contributions(self, X: pd.DataFrame | np.ndarray) -> pd.DataFrame:
        """Per-feature contributions to :meth:`raw_score`; the balance is in ``bias``."""
        out = super().contributions(X)
        out["bias"] += np.log(self.balance_)
        return out

    def predict(self, X: pd.DataFrame | np.ndarray, *, exposure: np.ndarray | None = None):
        """Expected amount or count per row; scaled by ``exposure`` for a rate model."""
        raw = self.raw_score(X)
        if exposure is not None:
            raw = raw + np.log(np.asarray(exposure, dtype=float))
        elif self.uses_exposure_:
            raise ValueError("this model predicts a rate; pass the exposure to predict for")
        return np.exp(raw)


def booster_to_dict(model: _Booster) -> dict[str, Any]:
    """The fitted state of a LightGBM estimator as JSON types plus the booster as text."""
    state: dict[str, Any] = {
        "class": type(model).__name__,
        "params": json.loads(json.dumps(model.get_params(), default=str)),
        "best_iteration": model.best_iteration_,
        "features": [str(f) for f in model.feature_names_in_],
        "booster": model.booster_.model_to_string(num_iteration=model.best_iteration_),
    }
    if isinstance(model, LightGBMClassifier):
        state["calibrator"] = model.calibrator_.to_dict()
        state["calibration_scores"] = model.calibration_scores_
        state["uses_offset"] = bool(getattr(model, "uses_offset_", False))
    if isinstance(model, LightGBMRegressor):
        state["uses_exposure"] = model.uses_exposure_
        state["balance"] = model.balance_
    if isinstance(model, _Multiclass):
        state["num_class"] = model.num_class_
    return state


def booster_from_dict(state: Mapping[str, Any]) -> _Booster:
    """Rebuild an estimator saved with :func:`booster_to_dict`."""
    classes: dict[str, type[_Booster]] = {
        "LightGBMClassifier": LightGBMClassifier,
        "LightGBMRegressor": LightGBMRegressor,
        "_Multiclass": _Multiclass,
    }
    model = classes[state["class"]](**state["params"])
    model.booster_ = lgb.Booster(model_str=state["booster"])
    model.best_iteration_ = int(state["best_iteration"])
    model.feature_names_in_ = np.asarray(state["features"], dtype=object)
    model.n_features_in_ = len(state["features"])
    if isinstance(model, LightGBMClassifier):
        model.classes_ = np.array([0, 1])
        model.calibrator_ = Calibrator.from_dict(state["calibrator"])
        model.calibration_method_ = model.calibrator_.method
        model.calibration_scores_ = dict(state.get("calibration_scores", {}))
        model.uses_offset_ = bool(state.get("uses_offset", False))
    if isinstance(model, LightGBMRegressor):
        model.uses_exposure_ = bool(state["uses_exposure"])
        model.balance_ = float(state.get("balance", 1.0))  # 1: saved before the balance
    if isinstance(model, _Multiclass):
        model.num_class_ = int(state["num_class"])
    return model


# ------------------------------------------------------------------------------- preference


def pair_features(
    X: pd.DataFrame, values: Sequence[str], value_columns: Mapping[str, Mapping[str, str]]
) -> pd.DataFrame:
    """Customer features crossed with every value, plus the customer's past with each value.

    Parameters
    ----------
    X
        Customer features, one row per customer (any index).
    values
        The values to score, in order.
    value_columns
        For each value, its per-value feature columns under a name common to all values
        (``{"books": {"share_category": "share_category_books"}}``).

    Returns
    -------
    DataFrame
        One row per (customer, value), customers outer and values inner: the columns of
        ``X``, then ``value`` (a categorical over ``values``) and one ``value_<name>`` column
        per common name, holding the value's own column.
    """
    values = list(values)
    n, m = len(X), len(values)
    base = np.repeat(X.to_numpy(dtype=float), m, axis=0)
    out = pd.DataFrame(base, columns=X.columns)
    out["value"] = pd.Categorical(np.tile(values, n), categories=values)
    names = sorted({name for v in values for name in value_columns.get(v, {})})
    for name in names:
        stacked = np.full((n, m), np.nan)
        for j, value in enumerate(values):
            column = value_columns.get(value, {}).get(name)
            if column is not None:
                stacked[:, j] = X[column].to_numpy(dtype=float)
        out[f"value_{name}"] = stacked.reshape(-1)
    return out


class PreferenceModel(BaseEstimator):
    """Ranks the values of an attribute (categories, channels) for each customer.

    Parameters
    ----------
    strategy
        ``"pairs"``: one binary model over (customer, value) pairs, each pair described by
        the customer's features and the customer's own columns for that value (share of
        purchases, whether the latest purchase had it, days since it was last used); the
        score is the probability that the customer chooses the value in the window.
        ``"multiclass"``: one softmax model over the values on the customer's features,
        trained on one row per chosen value (weighted so that each customer counts once);
        the score is the share of the customer's choices expected to fall on each value.
    min_positives
        Values chosen fewer times than this in the training rows are not ranked.
    params, num_boost_round, early_stopping_rounds, seed
        As for :class:`LightGBMClassifier`.
    """

    def __init__(
        self,
        *,
        strategy: Literal["pairs", "multiclass"] = "pairs",
        min_positives: int = 30,
        params: Mapping[str, Any] | None = None,
        num_boost_round: int = 2000,
        early_stopping_rounds: int = 50,
        seed: int = 0,
    ) -> None:
        self.strategy = strategy
        self.min_positives = min_positives
        self.params = params
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.seed = seed

    def fit(
        self,
        X: pd.DataFrame,
        Y: pd.DataFrame,
        *,
        X_valid: pd.DataFrame,
        Y_valid: pd.DataFrame,
        value_columns: Mapping[str, Mapping[str, str]] | None = None,
    ) -> PreferenceModel:
        """Fit on training customers; stop early on the (later) validation customers.

        Parameters
        ----------
        X, X_valid
            Customer features, one row per customer and cutoff.
        Y, Y_valid
            0/1 choices per value (columns), rows as the features.
        value_columns
            Per-value feature columns (see :func:`pair_features`); used by ``"pairs"``.
        """
        counts = Y.sum(axis=0)
        values = sorted(str(v) for v in counts.index[counts >= self.min_positives])
        if len(values) < 2:
            raise ValueError(
                f"fewer than two values were chosen at least {self.min_positives} times in the "
                "training rows; there is nothing to rank"
            )
        self.values_ = np.asarray(values, dtype=object)
        self.value_columns_ = {v: dict((value_columns or {}).get(v, {})) for v in values}
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        Y = Y.reindex(columns=values, fill_value=0)
        Y_valid = Y_valid.reindex(columns=values, fill_value=0)
        common = {
            "params": self.params,
            "num_boost_round": self.num_boost_round,
            "early_stopping_rounds": self.early_stopping_rounds,
            "seed": self.seed,
        }
        if self.strategy == "pairs":
            model: _Booster = LightGBMClassifier(calibration="auto", **common)
            model.fit(
                pair_features(X, values, self.value_columns_),
                Y.to_numpy().reshape(-1),
                X_valid=pair_features(X_valid, values, self.value_columns_),
                y_valid=Y_valid.to_numpy().reshape(-1),
            )
        elif self.strategy == "multiclass":
            model = _Multiclass(**common).fit_choices(X, Y, X_valid, Y_valid)
        else:
            raise ValueError(f"strategy must be 'pairs' or 'multiclass', got {self.strategy!r}")
        self.model_ = model
        return self

    def predict_scores(self, X: pd.DataFrame) -> pd.DataFrame:
        """Scores per customer (rows, like ``X``) and value (columns); higher is preferred."""
        values = [str(v) for v in self.values_]
        X = X[list(self.feature_names_in_)]
        if self.strategy != "pairs":
            return pd.DataFrame(self.model_.predict_proba(X), index=X.index, columns=values)
        # The pairs of :func:`pair_features` are never built as a frame of customers x values
        # rows. From the leaf tables, each customer's own splits are decided once for all its
        # pairs; otherwise the pairs are one float matrix per block of customers (the value as
        # its category code, as LightGBM reads a categorical) scored by LightGBM on every
        # core. Both give the scores of the frame, bit for bit.
        names = sorted({name for v in values for name in self.value_columns_.get(v, {})})
        model = self.model_
        expected = [*X.columns, "value", *(f"value_{name}" for name in names)]
        if list(model.feature_names_in_) != expected:
            pairs = pair_features(X, values, self.value_columns_)
            p = model.predict_proba(pairs)[:, 1]
            return pd.DataFrame(p.reshape(len(X), len(values)), index=X.index, columns=values)
        n, m, width = len(X), len(values), len(X.columns)
        base = X.to_numpy(dtype=np.float64)
        own = np.full((n, m, len(names)), np.nan)
        for j, value in enumerate(values):
            for k, name in enumerate(names):
                column = self.value_columns_.get(value, {}).get(name)
                if column is not None:
                    own[:, j, k] = X[column].to_numpy(dtype=np.float64)
        scores = np.empty((n, m))
        tables = booster_tables(model.booster_, model.best_iteration_)
        if tables is not None:  # the customer columns' decisions are shared by its pairs
            extra = np.concatenate(
                [np.broadcast_to(np.arange(m, dtype=np.float64)[None, :, None], (n, m, 1)), own],
                axis=2,
            )
            raw = tables.pair_raw_score(base, extra)
            scores[:] = model.calibrator_.transform(raw.reshape(-1)).reshape(n, m)
            return pd.DataFrame(scores, index=X.index, columns=values)
        block = max(1, 200_000 // m)
        threads = cores()
        for start in range(0, n, block):
            rows = min(block, n - start)
            pairs = np.empty((rows, m, width + 1 + len(names)))
            pairs[:, :, :width] = base[start : start + rows, None, :]
            pairs[:, :, width] = np.arange(m, dtype=np.float64)
            pairs[:, :, width + 1 :] = own[start : start + rows]
            raw = model.booster_.predict(
                pairs.reshape(rows * m, -1),
                num_iteration=model.best_iteration_,
                raw_score=True,
                num_threads=threads,
            )
            scores[start : start + rows] = model.calibrator_.transform(raw).reshape(rows, m)
        return pd.DataFrame(scores, index=X.index, columns=values)

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as JSON types plus the booster as text."""
        return {
            "params": json.loads(json.dumps(self.get_params(), default=str)),
            "values": [str(v) for v in self.values_],
            "value_columns": self.value_columns_,
            "features": [str(f) for f in self.feature_names_in_],
            "model": booster_to_dict(self.model_),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> PreferenceModel:
        """Rebuild a model saved with :meth:`to_dict`."""
        model = cls(**state["params"])
        model.values_ = np.asarray(state["values"], dtype=object)
        model.value_columns_ = {k: dict(v) for k, v in state["value_columns"].items()}
        model.feature_names_in_ = np.asarray(state["features"], dtype=object)
        model.model_ = booster_from_dict(state["model"])
        return model


class _Multiclass(_Booster):
    """Softmax LightGBM over values; rows are (customer, chosen value) weighted 1 / choices."""

    _objective = "multiclass"

    def _objective_params(self) -> dict[str, Any]:
        return {"objective": "multiclass", "num_class": self.num_class_}

    def fit_choices(
        self, X: pd.DataFrame, Y: pd.DataFrame, X_valid: pd.DataFrame, Y_valid: pd.DataFrame
    ) -> _Multiclass:
        """Fit on one row per chosen value; customers who chose nothing are left out."""
        self.num_class_ = Y.shape[1]
        rows, labels, weights = self._expand(X, Y)
        rows_v, labels_v, weights_v = self._expand(X_valid, Y_valid)
        self._boost(rows, labels, rows_v, labels_v, weight=weights, weight_valid=weights_v)
        return self

    @staticmethod
    def _expand(X: pd.DataFrame, Y: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        matrix = Y.to_numpy()
        row, label = np.nonzero(matrix)
        weight = 1.0 / matrix.sum(axis=1)[row]
        return X.iloc[row], label.astype(float), weight

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Softmax share per value, shape ``(n, n_values)``."""
        return self.booster_.predict(self._check(X), num_iteration=self.best_iteration_)
