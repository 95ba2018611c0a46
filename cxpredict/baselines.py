"""Baselines from the customer-base literature, and two heuristics.

Buy-till-you-die models, fitted by maximum likelihood on per-customer summaries
(``frequency``, ``recency``, ``T``; see :func:`btyd_summary`):

- :class:`BetaGeometricNBD`, the BG/NBD model of Fader, Hardie & Lee (2005), "Counting Your
  Customers the Easy Way: An Alternative to the Pareto/NBD Model", Marketing Science 24(2).
- :class:`ParetoNBD`, the Pareto/NBD model of Schmittlein, Morrison & Colombo (1987),
  Management Science 33(1), in the formulation of Fader & Hardie (2005), "A Note on Deriving
  the Pareto/NBD Model and Related Expressions" (brucehardie.com/notes/009).

Heuristics working on a feature frame indexed by ``customer_id``:

- :class:`RecencyBaseline`, days since the last order;
- :class:`RFMBaseline`, the classic sum of recency, frequency and monetary quintile scores.

Every estimator keeps the scikit-learn contract: ``__init__`` stores parameters, ``fit``
returns ``self``, learned state ends in ``_`` and no training rows are kept.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, Self

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from scipy.special import betaln, expit, gammaln, hyp2f1
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from cxpredict.errors import CxpredictError, DataError

__all__ = [
    "BaselineFitError",
    "BaselineInputError",
    "BetaGeometricNBD",
    "ParetoNBD",
    "RFMBaseline",
    "RecencyBaseline",
    "btyd_summary",
]

Target = Literal["churn", "repurchase"]
FloatArray = NDArray[np.float64]

_TARGETS: tuple[str, ...] = ("churn", "repurchase")
# Fits run in a time unit where the oldest customer has age 10, so that the starting point
# (all parameters 1) is of the right order whatever unit the caller uses.
_FIT_TIME_SCALE = 10.0


class BaselineInputError(DataError, ValueError):
    """Inputs of a baseline are malformed (negative, non-finite, inconsistent or missing).

    Parameters
    ----------
    message
        What was wrong, how many rows and the fix.
    column
        The argument or column concerned.
    rows
        How many rows are affected.
    """

    def __init__(self, message: str, *, column: str | None = None, rows: int = 0):
        super().__init__(message, column=column)
        self.rows = rows


class BaselineFitError(CxpredictError):
    """A buy-till-you-die model cannot be fitted (the likelihood is not finite)."""


# --------------------------------------------------------------------------------------------
# Per-customer summaries
# --------------------------------------------------------------------------------------------


def btyd_summary(
    orders: pd.DataFrame, cutoff: pd.Timestamp | str, *, time_unit_days: float = 7.0
) -> pd.DataFrame:
    """Per-customer (frequency, recency, T) summary of the orders placed before ``cutoff``.

    Window: the orders with ``timestamp < cutoff``, i.e. strictly before the cutoff instant;
    an order at the cutoff instant belongs to the label window, not here. Orders are
    counted per UTC calendar day (several orders on one day are one transaction, the
    convention of Fader, Hardie & Lee 2005).

    Parameters
    ----------
    orders
        Canonical orders: ``customer_id`` (str) and ``timestamp`` (tz-aware datetime).
    cutoff
        The cutoff instant; a naive value is read as UTC.
    time_unit_days
        Length of the time unit of ``recency`` and ``T``, in days (7 gives weeks).

    Returns
    -------
    pandas.DataFrame
        Indexed by the string ``customer_id`` (sorted), one row per customer with at least
        one order before the cutoff, columns ``frequency`` (distinct purchase days - 1,
        int64), ``recency`` (last purchase day - first purchase day) and ``T``
        (cutoff - first purchase day), both in time units.

    Notes
    -----
    Fader, Hardie & Lee measure T to the last whole day before the cutoff, one day less
    than here; their published CDNOW estimates are reproduced with that convention
    (``T - 1`` with ``time_unit_days=1``, then converted), and this one moves BG/NBD's
    ``a`` and ``b`` by about 0.02 and 0.05 on the 2,357-customer sample.
    """
    missing = [c for c in ("customer_id", "timestamp") if c not in orders.columns]
    if missing:
        raise BaselineInputError(
            f"btyd_summary: orders lack column(s) {missing}; the frame has "
            f"{list(orders.columns)}; pass the canonical orders table (see cxpredict.schemas)",
            column=missing[0],
        )
    timestamps = orders["timestamp"]
    if not isinstance(timestamps.dtype, pd.DatetimeTZDtype):
        raise BaselineInputError(
            f"btyd_summary: orders.timestamp has dtype {timestamps.dtype}; a tz-aware datetime "
            "is required; convert it with pd.to_datetime(..., utc=True)",
            column="timestamp",
        )
    for column, bad in (
        ("timestamp", timestamps.isna()),
        ("customer_id", orders["customer_id"].isna()),
    ):
        if bad.any():
            raise BaselineInputError(
                f"btyd_summary: orders.{column} is missing in {int(bad.sum())} of {len(orders)} "
                "rows; validate the orders table before summarising it",
                column=column,
                rows=int(bad.sum()),
            )
    if not (np.isfinite(time_unit_days) and time_unit_days > 0):
        raise BaselineInputError(
            f"btyd_summary: time_unit_days must be a positive number, got {time_unit_days!r}; "
            "use 7.0 for weeks or 1.0 for days",
            column="time_unit_days",
        )
    cut = _utc_instant(cutoff)
    before = timestamps < cut
    days = pd.DataFrame(
        {
            "customer_id": orders.loc[before, "customer_id"].astype(str),
            "day": timestamps[before].dt.tz_convert("UTC").dt.floor("D"),
        }
    ).drop_duplicates()
    per_customer = days.groupby("customer_id", sort=True)["day"]
    first = per_customer.min()
    unit = pd.Timedelta(days=time_unit_days)
    summary = pd.DataFrame(
        {
            "frequency": (per_customer.size() - 1).astype("int64"),
            "recency": ((per_customer.max() - first) / unit).astype("float64"),
            "T": ((cut - first) / unit).astype("float64"),
        }
    )
    summary.index.name = "customer_id"
    return summary


def _utc_instant(cutoff: pd.Timestamp | str) -> pd.Timestamp:
    instant = pd.Timestamp(cutoff)
    if pd.isna(instant):
        raise BaselineInputError(
            f"btyd_summary: cutoff {cutoff!r} is not an instant; pass e.g. '1997-10-01' or a "
            "pd.Timestamp",
            column="cutoff",
        )
    return instant.tz_localize("UTC") if instant.tzinfo is None else instant.tz_convert("UTC")


# --------------------------------------------------------------------------------------------
# Input checks shared by the buy-till-you-die models
# --------------------------------------------------------------------------------------------


def _as_float_array(values: ArrayLike, name: str, where: str) -> FloatArray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise BaselineInputError(
            f"{where}: {name} cannot be read as numbers ({exc}); pass a numeric array",
            column=name,
        ) from exc
    if array.ndim > 1:
        raise BaselineInputError(
            f"{where}: {name} has shape {array.shape}; pass one value per customer (1-D)",
            column=name,
        )
    return np.atleast_1d(array)


def _first_rows(mask: NDArray[np.bool_]) -> str:
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(i) for i in rows[:5])
    return f"rows {shown}{', ...' if rows.size > 5 else ''}"


def _reject(mask: NDArray[np.bool_], where: str, name: str, problem: str, fix: str) -> None:
    if mask.any():
        count = int(mask.sum())
        raise BaselineInputError(
            f"{where}: {count} of {mask.size} customers have {problem} ({_first_rows(mask)}); "
            f"{fix}",
            column=name,
            rows=count,
        )


def _check_summary(
    frequency: ArrayLike, recency: ArrayLike, T: ArrayLike, where: str
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Validate a (frequency, recency, T) summary and return it as aligned float arrays."""
    arrays = [
        _as_float_array(values, name, where)
        for values, name in ((frequency, "frequency"), (recency, "recency"), (T, "T"))
    ]
    try:
        x, t_x, age = np.broadcast_arrays(*arrays)
    except ValueError as exc:
        sizes = ", ".join(str(a.size) for a in arrays)
        raise BaselineInputError(
            f"{where}: frequency, recency and T have lengths {sizes}; pass one value per "
            "customer in each",
        ) from exc
    for values, name in ((x, "frequency"), (t_x, "recency"), (age, "T")):
        _reject(
            ~np.isfinite(values),
            where,
            name,
            f"a non-finite {name} (NaN or inf)",
            "drop or fill those customers first",
        )
        _reject(values < 0, where, name, f"a negative {name}", "check the summary and its cutoff")
    _reject(
        x != np.round(x),
        where,
        "frequency",
        "a fractional frequency",
        "frequency counts repeat purchase periods and must be whole",
    )
    _reject(
        t_x > age,
        where,
        "recency",
        "recency > T",
        "recency is the age at the last purchase and cannot exceed the age T at the cutoff; "
        "build the summary with btyd_summary or check that both use the same time unit",
    )
    _reject(
        (x > 0) & (t_x == 0),
        where,
        "recency",
        "frequency > 0 with recency 0",
        "a repeat purchase happens after the first one, so recency must be positive; count "
        "purchases per day (btyd_summary) rather than per order",
    )
    _reject(
        (x == 0) & (t_x > 0),
        where,
        "recency",
        "frequency 0 with recency > 0",
        "without a repeat purchase the last purchase is the first one, so recency must be 0",
    )
    return x.astype(np.float64), t_x.astype(np.float64), age.astype(np.float64)


def _check_horizon(t: ArrayLike, where: str) -> FloatArray:
    horizon = _as_float_array(t, "t", where)
    _reject(
        ~np.isfinite(horizon) | (horizon < 0),
        where,
        "t",
        "a horizon t that is negative or not finite",
        "pass t >= 0 in the time unit of the fit",
    )
    return horizon


def _check_weights(weights: ArrayLike | None, size: int, where: str) -> FloatArray:
    if weights is None:
        return np.ones(size)
    w = _as_float_array(weights, "weights", where)
    if w.size != size:
        raise BaselineInputError(
            f"{where}: weights has {w.size} values for {size} customers; pass one count per "
            "(frequency, recency, T) row",
            column="weights",
        )
    _reject(
        ~np.isfinite(w) | (w < 0),
        where,
        "weights",
        "a negative or non-finite weight",
        "weights count identical customers and must be >= 0",
    )
    if not w.sum() > 0:
        raise BaselineInputError(
            f"{where}: the weights sum to 0 over {size} rows; at least one customer is needed",
            column="weights",
        )
    return w


def _compress(
    x: FloatArray, t_x: FloatArray, age: FloatArray, w: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Collapse identical (frequency, recency, T) rows into one row with summed weight."""
    rows, inverse = np.unique(np.column_stack([x, t_x, age]), axis=0, return_inverse=True)
    counts = np.bincount(inverse.ravel(), weights=w, minlength=rows.shape[0])
    keep = counts > 0
    return rows[keep, 0], rows[keep, 1], rows[keep, 2], counts[keep]


# --------------------------------------------------------------------------------------------
# Special-function helpers
# --------------------------------------------------------------------------------------------


def _log_hyp2f1(a: ArrayLike, b: ArrayLike, c: ArrayLike, z: ArrayLike) -> FloatArray:
    """``log 2F1(a, b; c; z)`` for ``0 <= z < 1`` and a positive value.

    Where the direct series overflows (large ``b`` with ``z`` near 1) Euler's transformation
    ``2F1(a, b; c; z) = (1 - z)^(c - a - b) 2F1(c - a, c - b; c; z)`` is used instead.
    """
    a, b, c, z = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a, b, c, z)))
    with np.errstate(all="ignore"):
        out = np.log(hyp2f1(a, b, c, z))
        bad = ~np.isfinite(out)
        if bad.any():
            ab, bb, cb, zb = a[bad], b[bad], c[bad], z[bad]
            out[bad] = (cb - ab - bb) * np.log1p(-zb) + np.log(hyp2f1(cb - ab, cb - bb, cb, zb))
    return out


def _log_tail_integral(
    y: ArrayLike, offset_a: float, offset_b: float, a: ArrayLike, b: ArrayLike
) -> FloatArray:
    """``log of the integral from y to infinity of (A + u)^-a (B + u)^-b du``, for a + b > 1.

    Expanding the factor with the smaller offset as a binomial series around the larger one,
    ``M = max(A, B)``, gives ``(M + y)^-(a+b-1) / (a+b-1) * 2F1(a+b-1, e; a+b; |A-B| / (M+y))``
    with ``e`` the exponent of the smaller offset. This is the integral behind the ``A_0``
    term of Fader & Hardie (2005, note 009, eqs 19-20) and both of its alpha/beta branches.
    """
    y = np.asarray(y, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    larger = max(offset_a, offset_b)
    exponent = b if offset_a >= offset_b else a
    k = a + b - 1.0
    z = abs(offset_a - offset_b) / (larger + y)
    return -k * np.log(larger + y) - np.log(k) + _log_hyp2f1(k, exponent, k + 1.0, z)


def _log_difference(log_big: FloatArray, log_small: FloatArray) -> FloatArray:
    """``log(exp(log_big) - exp(log_small))``; ``-inf`` where the two are equal."""
    with np.errstate(divide="ignore"):
        return log_big + np.log(-np.expm1(np.minimum(log_small - log_big, 0.0)))


def _one_minus_power_over(k: float, log_u: FloatArray) -> FloatArray:
    """``(1 - u^k) / k`` computed from ``log u``, with its limit ``-log u`` at ``k = 0``."""
    if abs(k) < 1e-10:
        return -log_u
    return -np.expm1(k * log_u) / k


# --------------------------------------------------------------------------------------------
# Buy-till-you-die models
# --------------------------------------------------------------------------------------------


class _BuyTillYouDie(BaseEstimator):
    """Shared fitting, checks and scores of the buy-till-you-die models."""

    _param_names: ClassVar[tuple[str, str, str, str]]
    _rate_params: ClassVar[tuple[str, ...]]  # parameters in time units, rescaled after a fit

    def __init__(self, penalizer: float = 0.0):
        self.penalizer = penalizer

    # -- to be provided by each model ----------------------------------------------------

    @staticmethod
    def _log_likelihood(
        params: Sequence[float], x: FloatArray, t_x: FloatArray, age: FloatArray
    ) -> FloatArray:
        raise NotImplementedError

    def _probability_alive(self, x: FloatArray, t_x: FloatArray, age: FloatArray) -> FloatArray:
        raise NotImplementedError

    # -- fitting -------------------------------------------------------------------------

    def fit(
        self,
        frequency: ArrayLike,
        recency: ArrayLike,
        T: ArrayLike,
        *,
        weights: ArrayLike | None = None,
    ) -> Self:
        """Fit the model by maximum likelihood.

        The mean log-likelihood per customer, minus ``penalizer * sum(params**2)``, is
        maximised over the log-parameters with scipy's bounded L-BFGS-B, then a budgeted
        Nelder-Mead polish if it stops short. Identical customers are collapsed into weighted
        rows first.

        Parameters
        ----------
        frequency
            Repeat purchase periods per customer (purchase days - 1).
        recency
            Age at the last purchase (0 without repeat purchases).
        T
            Age at the end of calibration, in the same time unit as ``recency``.
        weights
            Number of customers each row stands for (default 1 each).

        Returns
        -------
        Self
            With ``params_``, ``log_likelihood_``, ``converged_`` and ``n_iter_``.
        """
        where = f"{type(self).__name__}.fit"
        x, t_x, age = _check_summary(frequency, recency, T, where)
        if x.size == 0:
            raise BaselineInputError(f"{where}: no customers given; pass at least one row")
        w = _check_weights(weights, x.size, where)
        try:
            penalizer = float(self.penalizer)
        except (TypeError, ValueError):
            penalizer = np.nan
        if not (np.isfinite(penalizer) and penalizer >= 0):
            raise BaselineInputError(
                f"{where}: penalizer must be a number >= 0, got {self.penalizer!r}",
                column="penalizer",
            )
        x, t_x, age, w = _compress(x, t_x, age, w)
        if not (x > 0).any():
            raise BaselineFitError(
                f"{where}: no customer bought more than once, so the repeat-purchase and "
                "dropout parameters cannot be estimated; fit on a longer history"
            )
        scale = _FIT_TIME_SCALE / age.max() if age.max() > 0 else 1.0
        scaled_t_x, scaled_age = t_x * scale, age * scale
        total = w.sum()

        def objective(log_params: FloatArray) -> float:
            params = np.exp(log_params)
            with np.errstate(all="ignore"):
                ll = self._log_likelihood(params, x, scaled_t_x, scaled_age)
            value = -float(w @ ll) / total + penalizer * float(np.sum(params**2))
            return value if np.isfinite(value) else np.inf

        start = np.zeros(len(self._param_names))
        if not np.isfinite(objective(start)):
            raise BaselineFitError(
                f"{where}: the log-likelihood is not finite at the starting point for "
                f"{x.size} distinct (frequency, recency, T) rows; check the summary's units"
            )
        result = _minimize(objective, start)
        params = np.exp(result.x)
        fitted = dict(zip(self._param_names, (float(p) for p in params), strict=True))
        for name in self._rate_params:
            fitted[name] = float(fitted[name] / scale)
        self.params_ = fitted
        self.log_likelihood_ = float(w @ self._log_likelihood(self._params(), x, t_x, age))
        self.converged_ = bool(result.success)
        self.n_iter_ = int(result.nit)
        if not self.converged_:
            warnings.warn(
                f"{where}: the optimiser stopped before converging ({result.message}); the "
                "parameters may be off; try a small penalizer or check the summary",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _params(self) -> tuple[float, ...]:
        check_is_fitted(self, "params_")
        return tuple(self.params_[name] for name in self._param_names)

    def _prepare(
        self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike, where: str
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        check_is_fitted(self, "params_")
        return _check_summary(frequency, recency, T, f"{type(self).__name__}.{where}")

    def _prepare_horizon(
        self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike, where: str
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """Checked (x, t_x, T, t), broadcast against each other."""
        x, t_x, age = self._prepare(frequency, recency, T, where)
        horizon = _check_horizon(t, f"{type(self).__name__}.{where}")
        try:
            x, t_x, age, horizon = np.broadcast_arrays(x, t_x, age, horizon)
        except ValueError as exc:
            raise BaselineInputError(
                f"{type(self).__name__}.{where}: t has {horizon.size} values for {x.size} "
                "customers; pass one horizon, or one per customer",
                column="t",
            ) from exc
        return x, t_x, age, horizon

    # -- scores --------------------------------------------------------------------------

    def probability_alive(
        self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
    ) -> FloatArray:
        """Probability that each customer is still alive at the end of calibration (age T)."""
        x, t_x, age = self._prepare(frequency, recency, T, "probability_alive")
        return self._probability_alive(x, t_x, age)

    def churn_score(
        self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
    ) -> FloatArray:
        """Churn ranking score: ``1 - probability_of_purchase(t, ...)``.

        The probability of no purchase in the next ``t`` periods. Prefer it to
        ``1 - probability_alive``: it ranks every customer, including the one-time buyers
        that BG/NBD deems alive with certainty.
        """
        return 1.0 - self.probability_of_purchase(t, frequency, recency, T)

    def probability_of_purchase(
        self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
    ) -> FloatArray:
        raise NotImplementedError


_LOG_PARAM_BOUND = 15.0  # parameters stay within exp(+-15): wider than any published fit


def _minimize(objective: Callable[[FloatArray], float], start: FloatArray) -> Any:
    """Bounded L-BFGS-B on log-parameters; a budgeted Nelder-Mead polish when it fails.

    The polish is bounded and budgeted because on data with little evidence of dropout the
    likelihood keeps improving as the dropout parameters run off to infinity, where the
    hypergeometric terms become slow; the bound stops that walk at a flat optimum.
    """
    bounds = [(-_LOG_PARAM_BOUND, _LOG_PARAM_BOUND)] * len(start)
    # Finite differences step into regions where the likelihood is +inf (rejected values);
    # inf - inf there is expected and handled by the line search.
    with np.errstate(invalid="ignore"):
        result = minimize(
            objective,
            start,
            method="L-BFGS-B",
            bounds=bounds,
            options={"ftol": 1e-12, "gtol": 1e-8, "maxiter": 1000},
        )
    if result.success and np.isfinite(result.fun):
        return result
    begin = result.x if np.isfinite(result.fun) else start
    polish = minimize(
        objective,
        begin,
        method="Nelder-Mead",
        bounds=bounds,
        options={"xatol": 1e-6, "fatol": 1e-10, "maxfev": 1000},
    )
    polish.nit = int(result.nit) + int(polish.nit)
    return polish


class BetaGeometricNBD(_BuyTillYouDie):
    """The BG/NBD model (Fader, Hardie & Lee 2005).

    While alive a customer buys as a Poisson process with rate ``lambda ~ Gamma(r, alpha)``
    and drops out right after each purchase with probability ``p ~ Beta(a, b)``.

    Note that a customer without repeat purchases cannot have dropped out (dropout happens
    only after a repeat purchase), so ``probability_alive`` is exactly 1 for frequency 0,
    however old the customer. Rank churn with :meth:`churn_score` instead of
    ``1 - probability_alive``.

    Parameters
    ----------
    penalizer
        Weight of the L2 penalty ``penalizer * sum(params**2)`` on the mean log-likelihood;
        the rate parameters enter it in a time unit where the oldest customer is 10 units
        old, so the penalty does not depend on the caller's time unit.

    Attributes
    ----------
    params_ : dict[str, float]
        ``r``, ``alpha`` (in the time unit of the fit), ``a``, ``b``.
    log_likelihood_ : float
        Total (weighted, unpenalised) log-likelihood at ``params_``.
    converged_ : bool
        Whether the optimiser reported convergence.
    n_iter_ : int
        Optimiser iterations.
    """

    _param_names = ("r", "alpha", "a", "b")
    _rate_params = ("alpha",)

    @staticmethod
    def _log_likelihood(
        params: Sequence[float], x: FloatArray, t_x: FloatArray, age: FloatArray
    ) -> FloatArray:
        """Individual log-likelihood, FHL 2005 eq. (6), written with log-gamma functions."""
        r, alpha, a, b = params
        common = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
        log_alive = betaln(a, b + x) - betaln(a, b) - (r + x) * np.log(alpha + age)
        # Dropout right after the last purchase, only possible once there is a repeat purchase.
        log_dropped = np.where(
            x > 0,
            betaln(a + 1.0, b + np.maximum(x, 1.0) - 1.0)
            - betaln(a, b)
            - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
        return common + np.logaddexp(log_alive, log_dropped)

    def _probability_alive(self, x: FloatArray, t_x: FloatArray, age: FloatArray) -> FloatArray:
        r, alpha, a, b = self._params()
        log_odds_dropped = (
            np.log(a)
            - np.log(b + np.maximum(x, 1.0) - 1.0)
            + (r + x) * (np.log(alpha + age) - np.log(alpha + t_x))
        )
        return np.where(x > 0, expit(-log_odds_dropped), 1.0)

    def expected_purchases(
        self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
    ) -> FloatArray:
        """Expected number of purchases in the next ``t`` periods, FHL 2005 eq. (10).

        ``P(alive) (a+b+x-1)/(a-1) [1 - ((alpha+T)/(alpha+T+t))^(r+x)
        2F1(r+x, b+x; a+b+x-1; t/(alpha+T+t))]``.
        """
        x, t_x, age, horizon = self._prepare_horizon(t, frequency, recency, T, "expected_purchases")
        r, alpha, a, b = self._params()
        z = horizon / (alpha + age + horizon)
        with np.errstate(all="ignore"):
            direct = np.exp((r + x) * np.log1p(-z)) * hyp2f1(r + x, b + x, a + b + x - 1.0, z)
            # Euler's transformation of the same product, for where the series overflows.
            euler = np.exp((a - 1.0) * np.log1p(-z)) * hyp2f1(
                a + b - 1.0 - r, a - 1.0, a + b + x - 1.0, z
            )
        product = np.where(np.isfinite(direct), direct, euler)
        given_alive = (a + b + x - 1.0) / (a - 1.0) * (1.0 - product)
        return self._probability_alive(x, t_x, age) * given_alive

    def probability_of_purchase(
        self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
    ) -> FloatArray:
        """Probability of at least one purchase in the next ``t`` periods.

        Dropout happens only right after a purchase, so a customer alive at T buys again
        within t with probability ``1 - exp(-lambda t)``; given alive, lambda's posterior is
        ``Gamma(r + x, alpha + T)``. Hence, exactly,
        ``P(alive) [1 - ((alpha + T) / (alpha + T + t))^(r + x)]``.
        """
        x, t_x, age, horizon = self._prepare_horizon(
            t, frequency, recency, T, "probability_of_purchase"
        )
        r, alpha, _, _ = self._params()
        buys = -np.expm1(-(r + x) * np.log1p(horizon / (alpha + age)))
        return self._probability_alive(x, t_x, age) * buys

    def time_to_purchase(
        self, probability: float, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
    ) -> FloatArray:
        """The time after T by which the chance of at least one purchase reaches
        ``probability`` (0.5: the median time to the next purchase), in the fit's time unit.

        Inverts :meth:`probability_of_purchase`: ``P(alive) [1 - (1 + t / (alpha + T))^-(r + x)]
        = probability`` gives ``t = (alpha + T) [(1 - probability / P(alive))^(-1 / (r + x))
        - 1]``. NaN where ``P(alive) <= probability``: a customer more likely gone than not
        has no such time.
        """
        if not 0.0 < probability < 1.0:
            raise ValueError(f"probability must lie strictly between 0 and 1, got {probability}")
        x, t_x, age = self._prepare(frequency, recency, T, "time_to_purchase")
        r, alpha, _, _ = self._params()
        alive = self._probability_alive(x, t_x, age)
        reached = alive > probability
        with np.errstate(all="ignore"):
            t = (alpha + age) * np.expm1(-np.log1p(-probability / alive) / (r + x))
        return np.where(reached, t, np.nan)

    def expected_purchases_unconditional(self, t: ArrayLike) -> FloatArray:
        """Expected purchases of a new customer in ``t`` periods after the first, FHL eq. (9).

        ``(a+b-1)/(a-1) [1 - (alpha/(alpha+t))^r 2F1(r, b; a+b-1; t/(alpha+t))]``.
        """
        horizon = _check_horizon(t, f"{type(self).__name__}.expected_purchases_unconditional")
        r, alpha, a, b = self._params()
        z = horizon / (alpha + horizon)
        product = np.exp(r * np.log1p(-z)) * hyp2f1(r, b, a + b - 1.0, z)
        return (a + b - 1.0) / (a - 1.0) * (1.0 - product)


class ParetoNBD(_BuyTillYouDie):
    """The Pareto/NBD model (Schmittlein, Morrison & Colombo 1987).

    While alive a customer buys as a Poisson process with rate ``lambda ~ Gamma(r, alpha)``;
    the lifetime is exponential with rate ``mu ~ Gamma(s, beta)``. Formulas follow Fader &
    Hardie (2005), "A Note on Deriving the Pareto/NBD Model and Related Expressions".

    Parameters
    ----------
    penalizer
        Weight of the L2 penalty ``penalizer * sum(params**2)`` on the mean log-likelihood;
        the rate parameters enter it in a time unit where the oldest customer is 10 units
        old, so the penalty does not depend on the caller's time unit.

    Attributes
    ----------
    params_ : dict[str, float]
        ``r``, ``alpha``, ``s``, ``beta`` (alpha and beta in the time unit of the fit).
    log_likelihood_ : float
        Total (weighted, unpenalised) log-likelihood at ``params_``.
    converged_ : bool
        Whether the optimiser reported convergence.
    n_iter_ : int
        Optimiser iterations.
    """

    _param_names = ("r", "alpha", "s", "beta")
    _rate_params = ("alpha", "beta")

    @staticmethod
    def _log_terms(
        params: Sequence[float], x: FloatArray, t_x: FloatArray, age: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Log of the constant, the alive-at-T term and the died-in-(t_x, T] term of L.

        Note 009 eq. (18): ``L = C [ (alpha+T)^-(r+x) (beta+T)^-s + s/(r+s+x) A_0 ]`` with
        ``C = Gamma(r+x) alpha^r beta^s / Gamma(r)``; ``s/(r+s+x) A_0`` is ``s`` times the
        integral over the death time ``tau`` in (t_x, T] of
        ``(alpha+tau)^-(r+x) (beta+tau)^-(s+1)``, evaluated with 2F1 (eqs. 19-20).
        """
        r, alpha, s, beta = params
        log_constant = gammaln(r + x) - gammaln(r) + r * np.log(alpha) + s * np.log(beta)
        log_alive = -(r + x) * np.log(alpha + age) - s * np.log(beta + age)
        tail_at_last = _log_tail_integral(t_x, alpha, beta, r + x, s + 1.0)
        tail_at_age = _log_tail_integral(age, alpha, beta, r + x, s + 1.0)
        log_died = np.log(s) + _log_difference(tail_at_last, tail_at_age)
        return log_constant, log_alive, log_died

    @staticmethod
    def _log_likelihood(
        params: Sequence[float], x: FloatArray, t_x: FloatArray, age: FloatArray
    ) -> FloatArray:
        """Individual log-likelihood, note 009 eq. (18)."""
        log_constant, log_alive, log_died = ParetoNBD._log_terms(params, x, t_x, age)
        return log_constant + np.logaddexp(log_alive, log_died)

    def _probability_alive(self, x: FloatArray, t_x: FloatArray, age: FloatArray) -> FloatArray:
        """Note 009 eq. (36): the alive-at-T share of the likelihood."""
        _, log_alive, log_died = self._log_terms(self._params(), x, t_x, age)
        return expit(log_alive - log_died)

    def expected_purchases(
        self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
    ) -> FloatArray:
        """Expected number of purchases in the next ``t`` periods, note 009 eq. (41).

        ``P(alive) (r+x)(beta+T) / ((alpha+T)(s-1)) [1 - ((beta+T)/(beta+T+t))^(s-1)]``,
        with its limit ``(r+x)(beta+T)/(alpha+T) log((beta+T+t)/(beta+T))`` at s = 1.
        """
        x, t_x, age, horizon = self._prepare_horizon(t, frequency, recency, T, "expected_purchases")
        r, alpha, s, beta = self._params()
        given_alive = (
            (r + x)
            * (beta + age)
            / (alpha + age)
            * _one_minus_power_over(s - 1.0, -np.log1p(horizon / (beta + age)))
        )
        return self._probability_alive(x, t_x, age) * given_alive

    def probability_of_purchase(
        self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
    ) -> FloatArray:
        """Probability of at least one purchase in the next ``t`` periods, deaths included.

        Given ``lambda``, ``mu`` and alive at T, the lifetime left is ``Exp(mu)`` and the
        first purchase comes at rate ``lambda`` while alive, so
        ``P(buy in t) = integral_0^t lambda exp(-(lambda+mu) u) du``. Given alive, the
        posterior is ``lambda ~ Gamma(r+x, alpha+T)`` and ``mu ~ Gamma(s, beta+T)``,
        independent; averaging gives
        ``P(alive) (r+x) (alpha+T)^(r+x) (beta+T)^s
        integral_T^(T+t) (alpha+u)^-(r+x+1) (beta+u)^-s du``,
        evaluated in closed form with 2F1 as in note 009 eqs. (19-20). This equals
        ``1 - P(Y(t) = 0 | x, t_x, T)`` of Fader & Hardie's note 028 (eq. 16 with n = 0).
        """
        x, t_x, age, horizon = self._prepare_horizon(
            t, frequency, recency, T, "probability_of_purchase"
        )
        r, alpha, s, beta = self._params()
        log_integral = _log_difference(
            _log_tail_integral(age, alpha, beta, r + x + 1.0, s),
            _log_tail_integral(age + horizon, alpha, beta, r + x + 1.0, s),
        )
        with np.errstate(under="ignore"):
            buys = np.exp(
                np.log(r + x)
                + (r + x) * np.log(alpha + age)
                + s * np.log(beta + age)
                + log_integral
            )
        return self._probability_alive(x, t_x, age) * np.minimum(buys, 1.0)

    def expected_purchases_unconditional(self, t: ArrayLike) -> FloatArray:
        """Expected purchases of a new customer in ``t`` periods after the first, eq. (27).

        ``r beta / (alpha (s-1)) [1 - (beta/(beta+t))^(s-1)]``.
        """
        horizon = _check_horizon(t, f"{type(self).__name__}.expected_purchases_unconditional")
        r, alpha, s, beta = self._params()
        return r * beta / alpha * _one_minus_power_over(s - 1.0, -np.log1p(horizon / beta))


# --------------------------------------------------------------------------------------------
# Heuristics on the feature frame
# --------------------------------------------------------------------------------------------


def _check_target(target: str, where: str) -> None:
    if target not in _TARGETS:
        raise BaselineInputError(
            f"{where}: target must be one of {list(_TARGETS)}, got {target!r}",
            column="target",
        )


def _feature_column(
    frame: pd.DataFrame, column: str, where: str, *, non_negative: bool
) -> FloatArray:
    if column not in frame.columns:
        raise BaselineInputError(
            f"{where}: column {column!r} not found; the frame has {list(frame.columns)[:10]}; "
            "pass the column name to the constructor",
            column=column,
        )
    try:
        values = pd.to_numeric(frame[column], errors="raise").to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise BaselineInputError(
            f"{where}: column {column!r} is not numeric ({exc}); pass a numeric feature",
            column=column,
        ) from exc
    _reject(
        ~np.isfinite(values),
        where,
        column,
        f"a missing or non-finite {column}",
        "score only customers with an order before the cutoff, or fill the feature",
    )
    if non_negative:
        _reject(values < 0, where, column, f"a negative {column}", "check the feature frame")
    return values


class RecencyBaseline(BaseEstimator):
    """Days since the last order as a score.

    Parameters
    ----------
    recency_column
        Feature holding the days since the last order before the cutoff.
    target
        ``"churn"`` (score = days since the last order) or ``"repurchase"`` (its negation),
        so that a higher score always means the target event is more likely.

    Attributes
    ----------
    feature_names_in_ : numpy.ndarray
        The column the scores are read from.
    """

    def __init__(self, *, recency_column: str = "days_since_last_order", target: Target = "churn"):
        self.recency_column = recency_column
        self.target = target

    def fit(self, frame: pd.DataFrame, y: object = None) -> Self:
        """Check the frame; nothing is learned beyond the column used."""
        where = f"{type(self).__name__}.fit"
        _check_target(self.target, where)
        _feature_column(frame, self.recency_column, where, non_negative=True)
        self.feature_names_in_ = np.array([self.recency_column], dtype=object)
        return self

    def predict_score(self, frame: pd.DataFrame) -> pd.Series:
        """Scores indexed like ``frame``; higher means the target event is more likely."""
        check_is_fitted(self, "feature_names_in_")
        days = _feature_column(
            frame, self.recency_column, f"{type(self).__name__}.predict_score", non_negative=True
        )
        score = days if self.target == "churn" else -days
        return pd.Series(score, index=frame.index, name="score")


class RFMBaseline(BaseEstimator):
    """The classic RFM score: recency, frequency and monetary quantile scores summed.

    ``fit`` learns the quantile edges of each feature on the training frame; scoring any
    later frame bins its values with those edges (no peeking at the scored population).
    Bins are right-closed like :func:`pandas.qcut`; tied edges leave inner bins empty.
    Each feature scores 1..``n_bins``, with ``n_bins`` for the most recent, most frequent
    and highest-spending customers.

    Parameters
    ----------
    recency_column, frequency_column, monetary_column
        Features holding days since the last order, lifetime orders and lifetime spend.
    target
        ``"repurchase"``: score = R + F + M; ``"churn"``: score = 3 (n_bins + 1) - (R + F + M),
        so that a higher score always means the target event is more likely.
    n_bins
        Number of quantile bins (5: quintiles).

    Attributes
    ----------
    edges_ : dict[str, numpy.ndarray]
        The ``n_bins - 1`` inner edges per column, learned on the training frame.
    """

    def __init__(
        self,
        *,
        recency_column: str = "days_since_last_order",
        frequency_column: str = "orders_lifetime",
        monetary_column: str = "spend_lifetime",
        target: Target = "churn",
        n_bins: int = 5,
    ):
        self.recency_column = recency_column
        self.frequency_column = frequency_column
        self.monetary_column = monetary_column
        self.target = target
        self.n_bins = n_bins

    def _columns(self) -> dict[str, tuple[str, bool]]:
        """Score name -> (column, whether values must be non-negative)."""
        return {
            "recency_score": (self.recency_column, True),
            "frequency_score": (self.frequency_column, True),
            "monetary_score": (self.monetary_column, False),
        }

    def fit(self, frame: pd.DataFrame, y: object = None) -> Self:
        """Learn the quantile edges of the three features on the training frame."""
        where = f"{type(self).__name__}.fit"
        _check_target(self.target, where)
        if not (isinstance(self.n_bins, int | np.integer) and self.n_bins >= 2):
            raise BaselineInputError(
                f"{where}: n_bins must be an integer >= 2, got {self.n_bins!r}; use 5 for "
                "quintiles",
                column="n_bins",
            )
        if len(frame) == 0:
            raise BaselineInputError(f"{where}: the training frame is empty; pass customers")
        quantiles = np.arange(1, self.n_bins) / self.n_bins
        self.edges_ = {
            column: np.quantile(
                _feature_column(frame, column, where, non_negative=non_negative), quantiles
            )
            for column, non_negative in self._columns().values()
        }
        return self

    def rfm_scores(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Per-customer recency, frequency and monetary scores (1..n_bins), training edges."""
        check_is_fitted(self, "edges_")
        where = f"{type(self).__name__}.rfm_scores"
        scores = {}
        for score, (column, non_negative) in self._columns().items():
            values = _feature_column(frame, column, where, non_negative=non_negative)
            bins = 1 + np.searchsorted(self.edges_[column], values, side="left")
            # Recent customers (few days since the last order) get the high recency score.
            scores[score] = self.n_bins + 1 - bins if score == "recency_score" else bins
        return pd.DataFrame(scores, index=frame.index).astype("int64")

    def predict_score(self, frame: pd.DataFrame) -> pd.Series:
        """Scores indexed like ``frame``; higher means the target event is more likely."""
        total = self.rfm_scores(frame).sum(axis=1)
        score = total if self.target == "repurchase" else 3 * (self.n_bins + 1) - total
        return score.rename("score")


class FrequentValueBaseline(BaseEstimator):
    """Ranks each customer's values by their own past use, read from per-value features.

    A value's score is the customer's share of purchases with it (``share_*`` columns) or,
    for attributes described only by recency, ``1 / (1 + days since last used)``
    (``days_since_*`` columns); values the customer never used score 0. Ties, and customers
    without any past use, go by each value's popularity in the training labels. It is the
    "most frequent past value" baseline in a form a model bundle can serve from features.

    Parameters
    ----------
    value_columns
        For each value, its per-value feature columns under a name common to all values
        (``{"books": {"share_category": "share_category_books"}}``).
    """

    def __init__(self, *, value_columns: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.value_columns = value_columns

    def fit(self, X: pd.DataFrame, Y: pd.DataFrame, *, values: Sequence[str]) -> Self:
        """Learn the values to rank (``values``) and their popularity in the labels ``Y``."""
        chosen = Y.reindex(columns=list(values), fill_value=0).sum(axis=0).to_numpy(dtype=float)
        self.values_ = np.asarray([str(v) for v in values], dtype=object)
        self.popularity_ = chosen / chosen.sum() if chosen.sum() > 0 else chosen
        mapping = self.value_columns or {}
        self.columns_: dict[str, str | None] = {}
        for value in self.values_:
            own = mapping.get(value, {})
            share = [c for name, c in own.items() if name.startswith("share")]
            recency = [c for name, c in own.items() if name.startswith("days_since")]
            self.columns_[value] = (share or recency or [None])[0]
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        return self

    def predict_scores(self, X: pd.DataFrame) -> pd.DataFrame:
        """Scores per customer (rows, like ``X``) and value (columns); higher is preferred."""
        check_is_fitted(self, "values_")
        out = np.zeros((len(X), len(self.values_)))
        for j, value in enumerate(self.values_):
            column = self.columns_.get(value)
            if column is None or column not in X.columns:
                continue
            used = X[column].to_numpy(dtype=float)
            if column.startswith("days_since"):
                used = 1.0 / (1.0 + np.clip(used, 0.0, None))
            out[:, j] = np.nan_to_num(used, nan=0.0)
        out += 1e-6 * self.popularity_
        return pd.DataFrame(out, index=X.index, columns=[str(v) for v in self.values_])

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as JSON types."""
        return {
            "values": [str(v) for v in self.values_],
            "popularity": [float(p) for p in self.popularity_],
            "columns": dict(self.columns_),
            "features": [str(f) for f in self.feature_names_in_],
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> FrequentValueBaseline:
        """Rebuild a baseline saved with :meth:`to_dict`."""
        model = cls()
        model.values_ = np.asarray(state["values"], dtype=object)
        model.popularity_ = np.asarray(state["popularity"], dtype=float)
        model.columns_ = dict(state["columns"])
        model.feature_names_in_ = np.asarray(state["features"], dtype=object)
        return model
