"""Tests of the buy-till-you-die baselines, the heuristics and the BTYD summary."""

from __future__ import annotations

import pickle
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score

from cxpredict.baselines import (
    BaselineFitError,
    BaselineInputError,
    BetaGeometricNBD,
    ParetoNBD,
    RecencyBaseline,
    RFMBaseline,
    btyd_summary,
)

CDNOW = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cdnow"
CALIBRATION_CUTOFF = pd.Timestamp("1997-10-01", tz="UTC")
HOLDOUT_END = pd.Timestamp("1998-07-01", tz="UTC")
Model = TypeVar("Model", BetaGeometricNBD, ParetoNBD)

#: Published CDNOW estimates (Fader, Hardie & Lee 2005; alpha and beta in weeks).
PUBLISHED_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PUBLISHED_PARETO = {"r": 0.553, "alpha": 10.578, "s": 0.606, "beta": 11.669}


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def orders_frame(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": pd.array([c for c, _ in rows], dtype="str"),
            "timestamp": pd.to_datetime([t for _, t in rows], utc=True).as_unit("us"),
        }
    )


def with_params(model: Model, params: dict[str, float]) -> Model:
    """A model carrying given parameters, as if fitted."""
    model.params_ = dict(params)
    return model


# --------------------------------------------------------------------------------------------
# CDNOW data
# --------------------------------------------------------------------------------------------


def require_cdnow(name: str) -> Path:
    path = CDNOW / name
    if not path.exists():
        pytest.skip(f"CDNOW benchmark file {path} not found; the repo must sit beside shared/")
    return path


@cache
def cdnow_sample_orders() -> pd.DataFrame:
    raw = pd.read_csv(
        require_cdnow("CDNOW_sample.txt"),
        sep=r"\s+",
        header=None,
        names=["master_id", "customer_id", "date", "cds", "dollars"],
        dtype={"master_id": str, "customer_id": str, "date": str},
    )
    raw["timestamp"] = pd.to_datetime(raw["date"], format="%Y%m%d", utc=True)
    return raw[["customer_id", "timestamp"]]


@cache
def cdnow_master_orders() -> pd.DataFrame:
    raw = pd.read_csv(
        require_cdnow("CDNOW_master.txt"), sep=r"\s+", dtype={"customer_id": str, "date": str}
    )
    raw["timestamp"] = pd.to_datetime(raw["date"], format="%Y%m%d", utc=True)
    return raw[["customer_id", "timestamp"]]


def published_convention(orders: pd.DataFrame) -> pd.DataFrame:
    """Calibration summary in weeks with T measured to the last calibration day (1997-09-30).

    btyd_summary measures T to the cutoff instant; Fader, Hardie & Lee measure it to the last
    whole day before it, one day less. Working in days keeps recency <= T exact.
    """
    days = btyd_summary(orders, CALIBRATION_CUTOFF, time_unit_days=1.0)
    return days.assign(recency=days["recency"] / 7, T=(days["T"] - 1) / 7)


# --------------------------------------------------------------------------------------------
# btyd_summary
# --------------------------------------------------------------------------------------------

FIXTURE = [
    ("a", "2024-01-01 10:00"),
    ("a", "2024-01-01 18:30"),  # same day as the one above: one transaction
    ("a", "2024-01-15 09:00"),
    ("a", "2024-02-01 00:00"),  # on the cutoff instant: belongs to the label window
    ("b", "2024-01-25 23:59"),
    ("c", "2024-01-18 12:00"),
    ("c", "2024-01-04 08:00"),
    ("c", "2024-01-11 20:00"),
    ("d", "2024-02-03 10:00"),  # only after the cutoff: not a customer yet
]


def test_btyd_summary_counts_customer_days_strictly_before_the_cutoff():
    summary = btyd_summary(orders_frame(FIXTURE), utc("2024-02-01"))

    expected = pd.DataFrame(
        {
            "frequency": np.array([1, 0, 2], dtype="int64"),
            "recency": [14 / 7, 0.0, 14 / 7],
            "T": [31 / 7, 7 / 7, 28 / 7],
        },
        index=pd.Index(["a", "b", "c"], dtype="str", name="customer_id"),
    )
    pd.testing.assert_frame_equal(summary, expected)


def test_an_order_one_microsecond_before_the_cutoff_is_counted():
    summary = btyd_summary(orders_frame(FIXTURE), utc("2024-02-01 00:00:00.000001"))

    assert summary.loc["a", "frequency"] == 2
    assert summary.loc["a", "recency"] == pytest.approx(31 / 7)


def test_btyd_summary_measures_in_the_requested_time_unit_and_reads_naive_cutoffs_as_utc():
    summary = btyd_summary(orders_frame(FIXTURE), "2024-02-01", time_unit_days=1.0)

    assert summary["recency"].tolist() == [14.0, 0.0, 14.0]
    assert summary["T"].tolist() == [31.0, 7.0, 28.0]


def test_btyd_summary_leaves_its_input_untouched():
    orders = orders_frame(FIXTURE)
    before = orders.copy()

    btyd_summary(orders, utc("2024-02-01"))

    pd.testing.assert_frame_equal(orders, before)


def test_btyd_summary_is_empty_when_nobody_ordered_before_the_cutoff():
    summary = btyd_summary(orders_frame(FIXTURE), utc("2023-01-01"))

    assert summary.empty
    assert list(summary.columns) == ["frequency", "recency", "T"]


def test_btyd_summary_rejects_naive_timestamps_and_missing_columns():
    naive = orders_frame(FIXTURE).assign(timestamp=lambda f: f["timestamp"].dt.tz_localize(None))
    with pytest.raises(BaselineInputError, match="tz-aware datetime is required"):
        btyd_summary(naive, utc("2024-02-01"))
    with pytest.raises(BaselineInputError, match=r"lack column\(s\) \['timestamp'\]"):
        btyd_summary(orders_frame(FIXTURE).drop(columns="timestamp"), utc("2024-02-01"))


# --------------------------------------------------------------------------------------------
# Fits on CDNOW
# --------------------------------------------------------------------------------------------


def test_bgnbd_reproduces_the_published_cdnow_parameters():
    summary = published_convention(cdnow_sample_orders())

    model = BetaGeometricNBD().fit(summary["frequency"], summary["recency"], summary["T"])

    assert model.converged_
    for name, value in PUBLISHED_BGNBD.items():
        assert model.params_[name] == pytest.approx(value, abs=0.005), name
    assert model.log_likelihood_ == pytest.approx(-9582.4, abs=0.1)


def test_pareto_nbd_reproduces_the_published_cdnow_parameters():
    summary = published_convention(cdnow_sample_orders())

    model = ParetoNBD().fit(summary["frequency"], summary["recency"], summary["T"])

    assert model.converged_
    for name, value in PUBLISHED_PARETO.items():
        assert model.params_[name] == pytest.approx(value, rel=0.005), name
    assert model.log_likelihood_ == pytest.approx(-9595.0, abs=0.1)


@pytest.mark.parametrize("model_class", [BetaGeometricNBD, ParetoNBD])
def test_a_fit_on_weighted_groups_equals_the_fit_on_customers(model_class):
    summary = published_convention(cdnow_sample_orders())
    groups = summary.value_counts(["frequency", "recency", "T"]).reset_index()

    by_customer = model_class().fit(summary["frequency"], summary["recency"], summary["T"])
    by_group = model_class().fit(
        groups["frequency"], groups["recency"], groups["T"], weights=groups["count"]
    )

    assert len(groups) < len(summary) / 2
    assert by_group.params_ == pytest.approx(by_customer.params_, rel=1e-6)
    assert by_group.log_likelihood_ == pytest.approx(by_customer.log_likelihood_, rel=1e-9)


def simulate_bgnbd(params: tuple[float, ...], n: int, seed: int) -> tuple[np.ndarray, ...]:
    """(x, t_x, T) of customers drawn from BG/NBD, in continuous time."""
    r, alpha, a, b = params
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 52, n)
    arrivals = rng.poisson(rng.gamma(r, 1 / alpha, n) * age)
    dropout_after = rng.geometric(rng.beta(a, b, n))  # index of the last repeat purchase
    x = np.minimum(arrivals, dropout_after)
    # The x-th of `arrivals` uniform arrival times on (0, T).
    t_x = np.where(x > 0, age * rng.beta(np.maximum(x, 1), np.maximum(arrivals - x + 1, 1)), 0)
    return x, t_x, age


def simulate_pareto_nbd(params: tuple[float, ...], n: int, seed: int) -> tuple[np.ndarray, ...]:
    """(x, t_x, T) of customers drawn from Pareto/NBD, in continuous time."""
    r, alpha, s, beta = params
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 52, n)
    active = np.minimum(rng.exponential(1 / rng.gamma(s, 1 / beta, n)), age)
    x = rng.poisson(rng.gamma(r, 1 / alpha, n) * active)
    t_x = np.where(x > 0, active * rng.beta(np.maximum(x, 1), 1), 0.0)  # max of x uniforms
    return x, t_x, age


@pytest.mark.parametrize(
    ("model_class", "params", "simulate"),
    [
        (BetaGeometricNBD, (0.6, 4.0, 0.8, 2.5), simulate_bgnbd),
        (ParetoNBD, (0.6, 8.0, 0.7, 10.0), simulate_pareto_nbd),
    ],
)
def test_fits_recover_the_parameters_of_simulated_customers(model_class, params, simulate):
    history = simulate(params, 20_000, seed=0)

    model = model_class().fit(*history)

    assert model.converged_
    assert list(model.params_.values()) == pytest.approx(params, rel=0.2)
    at_truth = model_class._log_likelihood(params, *(np.asarray(v, float) for v in history))
    assert model.log_likelihood_ >= at_truth.sum()


@pytest.mark.parametrize("model_class", [BetaGeometricNBD, ParetoNBD])
def test_fitting_in_days_gives_the_same_model_with_rates_in_days(model_class):
    weeks = published_convention(cdnow_sample_orders())
    days = weeks.assign(recency=weeks["recency"] * 7, T=weeks["T"] * 7)

    in_weeks = model_class().fit(weeks["frequency"], weeks["recency"], weeks["T"])
    in_days = model_class().fit(days["frequency"], days["recency"], days["T"])

    for name, value in in_weeks.params_.items():
        scale = 7 if name in ("alpha", "beta") else 1
        assert in_days.params_[name] == pytest.approx(value * scale, rel=1e-4), name
    np.testing.assert_allclose(
        in_days.expected_purchases(7 * 39, days["frequency"], days["recency"], days["T"]),
        in_weeks.expected_purchases(39, weeks["frequency"], weeks["recency"], weeks["T"]),
        rtol=1e-4,
    )


def test_a_penalizer_shrinks_the_parameters():
    summary = published_convention(cdnow_sample_orders())
    args = (summary["frequency"], summary["recency"], summary["T"])

    plain = BetaGeometricNBD().fit(*args)
    penalised = BetaGeometricNBD(penalizer=0.1).fit(*args)

    assert sum(v**2 for v in penalised.params_.values()) < sum(v**2 for v in plain.params_.values())


def test_btyd_models_match_the_reference_holdout_figures_on_full_cdnow():
    orders = cdnow_master_orders()
    summary = published_convention(orders)
    holdout = orders[
        (orders["timestamp"] >= CALIBRATION_CUTOFF) & (orders["timestamp"] < HOLDOUT_END)
    ]
    actual = (
        holdout.drop_duplicates().groupby("customer_id").size().reindex(summary.index, fill_value=0)
    )
    args = (summary["frequency"], summary["recency"], summary["T"])
    # (total holdout transactions, ROC-AUC of P(purchase)) from the dataset README.
    reference = {BetaGeometricNBD: (16_874, 0.747), ParetoNBD: (17_153, 0.763)}

    assert actual.sum() == 19_684
    for model_class, (total, auc) in reference.items():
        model = model_class().fit(*args)
        expected = model.expected_purchases(39, *args)
        buys = model.probability_of_purchase(39, *args)
        print(
            f"{model_class.__name__}: params {model.params_}; holdout total {expected.sum():.0f} "
            f"(actual {actual.sum()}); ROC-AUC E[X(39)] {roc_auc_score(actual > 0, expected):.4f}"
            f", P(purchase) {roc_auc_score(actual > 0, buys):.4f}"
        )
        assert expected.sum() == pytest.approx(total, rel=0.001)
        assert roc_auc_score(actual > 0, buys) == pytest.approx(auc, abs=0.001)


# --------------------------------------------------------------------------------------------
# Predictions against published and independently computed values
# --------------------------------------------------------------------------------------------


def test_bgnbd_matches_the_published_conditional_expectation():
    model = with_params(BetaGeometricNBD(), PUBLISHED_BGNBD)

    assert model.expected_purchases(39, 2, 30.43, 38.86)[0] == pytest.approx(1.226, abs=5e-4)


def test_bgnbd_matches_the_published_population_expectations():
    summary = published_convention(cdnow_sample_orders())
    model = BetaGeometricNBD().fit(summary["frequency"], summary["recency"], summary["T"])
    weeks = [0.1429, 1.0, 3.0, 31.8571, 32.0, 78.0]

    expected = model.expected_purchases_unconditional(weeks)

    published = [0.0078, 0.0532, 0.1506, 1.0405, 1.0437, 1.8576]  # Hardie's BG/NBD workbook
    np.testing.assert_allclose(expected, published, atol=5e-4)


def posterior_by_quadrature(
    model: BetaGeometricNBD | ParetoNBD, x: float, t_x: float, age: float, t: float
) -> tuple[float, ...]:
    """P(alive), E[Y(t)] and P(Y(t) > 0) by 2-D quadrature of individual-level formulas.

    Integrates over the two mixing distributions with Gauss-Legendre nodes on their quantile
    scale; no hypergeometric function and no posterior algebra involved.
    """
    q, w = np.polynomial.legendre.leggauss(400)
    q, w = (q + 1) / 2, np.outer(w / 2, w / 2)
    p = model.params_
    lam = stats.gamma.ppf(q, p["r"], scale=1 / p["alpha"])[:, None]
    if isinstance(model, BetaGeometricNBD):
        drop = stats.beta.ppf(q, p["a"], p["b"])[None, :]
        alive = (1 - drop) ** x * lam**x * np.exp(-lam * age)
        dropped = (x > 0) * drop * (1 - drop) ** max(x - 1, 0) * lam**x * np.exp(-lam * t_x)
        purchases = -np.expm1(-lam * drop * t) / drop  # FHL 2005 eq. (7), given alive
        buys = -np.expm1(-lam * t)
    else:
        mu = stats.gamma.ppf(q, p["s"], scale=1 / p["beta"])[None, :]
        alive = lam**x * np.exp(-(lam + mu) * age)
        dropped = lam**x * mu / (lam + mu) * (np.exp(-(lam + mu) * t_x) - alive / lam**x)
        purchases = lam / mu * -np.expm1(-mu * t)
        buys = lam / (lam + mu) * -np.expm1(-(lam + mu) * t)
    likelihood = np.sum(w * (alive + dropped))
    return tuple(float(np.sum(w * alive * f) / likelihood) for f in (1.0, purchases, buys))


@pytest.mark.parametrize(
    ("model_class", "params"),
    [
        (BetaGeometricNBD, PUBLISHED_BGNBD),
        (BetaGeometricNBD, {"r": 1.5, "alpha": 2.0, "a": 2.5, "b": 4.0}),
        (ParetoNBD, PUBLISHED_PARETO),  # alpha < beta
        (ParetoNBD, {"r": 0.8, "alpha": 15.0, "s": 1.4, "beta": 3.0}),  # alpha > beta
    ],
)
@pytest.mark.parametrize(
    ("x", "t_x", "age"), [(0, 0.0, 2.0), (0, 0.0, 38.86), (1, 2.0, 10.0), (6, 30.43, 38.86)]
)
def test_predictions_match_numerical_integration_over_the_mixing_distributions(
    model_class, params, x, t_x, age
):
    model = with_params(model_class(), params)

    computed = (
        model.probability_alive(x, t_x, age)[0],
        model.expected_purchases(39, x, t_x, age)[0],
        model.probability_of_purchase(39, x, t_x, age)[0],
    )

    assert computed == pytest.approx(posterior_by_quadrature(model, x, t_x, age, 39), rel=1e-5)


def test_pareto_nbd_stays_finite_for_extreme_histories():
    model = with_params(
        ParetoNBD(), {"r": 10.465, "alpha": 7.98565181e-03, "s": 3.0516, "beta": 2.82}
    )
    x, t_x, age = (
        np.array([400.0, 500.0, 500.0]),
        np.array([5.0, 1.0, 4.0]),
        np.array([6.0, 37, 37]),
    )

    log_likelihood = ParetoNBD._log_likelihood(list(model.params_.values()), x, t_x, age)
    alive = model.probability_alive(x, t_x, age)

    assert np.isfinite(log_likelihood).all()
    assert ((alive >= 0) & (alive <= 1)).all()
    assert np.isfinite(model.expected_purchases(10, x, t_x, age)).all()
    assert np.isfinite(model.probability_of_purchase(10, x, t_x, age)).all()


def test_pareto_nbd_expectations_are_continuous_at_s_equal_one():
    near = [
        with_params(ParetoNBD(), {**PUBLISHED_PARETO, "s": s}) for s in (1 - 1e-7, 1.0, 1 + 1e-7)
    ]

    values = [m.expected_purchases(39, 3, 20.0, 38.0)[0] for m in near]
    population = [m.expected_purchases_unconditional(39)[0] for m in near]

    assert values == pytest.approx([values[1]] * 3, rel=1e-6)
    assert population == pytest.approx([population[1]] * 3, rel=1e-6)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@st.composite
def histories(draw: st.DrawFn) -> tuple[int, float, float]:
    age = draw(st.floats(0.01, 200.0))
    x = draw(st.integers(0, 60))
    t_x = 0.0 if x == 0 else age * draw(st.floats(0.001, 1.0))
    return x, t_x, age


PROPERTY_MODELS = [
    with_params(BetaGeometricNBD(), PUBLISHED_BGNBD),
    with_params(BetaGeometricNBD(), {"r": 1.5, "alpha": 2.0, "a": 2.5, "b": 4.0}),
    with_params(ParetoNBD(), PUBLISHED_PARETO),
    with_params(ParetoNBD(), {"r": 0.8, "alpha": 15.0, "s": 1.4, "beta": 3.0}),
]


@settings(max_examples=60, deadline=None)
@given(history=histories())
def test_scores_are_probabilities_and_expectations_grow_with_the_horizon(history):
    horizons = np.array([0.0, 0.5, 4.0, 13.0, 52.0, 520.0])
    for model in PROPERTY_MODELS:
        alive = model.probability_alive(*history)
        buys = model.probability_of_purchase(horizons, *history)
        expected = model.expected_purchases(horizons, *history)

        assert 0.0 <= alive[0] <= 1.0
        assert ((buys >= 0) & (buys <= alive + 1e-12)).all()
        assert expected[0] == 0.0 and buys[0] == 0.0
        assert (np.diff(expected) >= -1e-9 * expected[1:]).all()
        assert (np.diff(buys) >= -1e-12).all()


@given(history=histories(), probability=st.floats(0.05, 0.95))
def test_the_time_to_a_purchase_is_when_its_probability_reaches_the_level_asked(
    history, probability
):
    model = with_params(BetaGeometricNBD(), PUBLISHED_BGNBD)
    t = model.time_to_purchase(probability, *history)
    alive = model.probability_alive(*history)
    if alive[0] <= probability:  # more likely gone than not: no such time
        assert np.isnan(t[0])
        return
    assert t[0] >= 0
    reached = model.probability_of_purchase(t, *history)
    np.testing.assert_allclose(reached, probability, rtol=1e-7, atol=1e-9)


def test_bgnbd_deems_customers_without_repeat_purchases_alive_but_still_ranks_their_churn():
    model = with_params(BetaGeometricNBD(), PUBLISHED_BGNBD)
    ages = np.array([1.0, 10.0, 38.0])

    alive = model.probability_alive(0, 0.0, ages)
    churn = model.churn_score(39, 0, 0.0, ages)

    np.testing.assert_array_equal(alive, [1.0, 1.0, 1.0])
    assert (np.diff(churn) > 0).all()  # older one-time buyers are likelier to churn


def test_population_expectations_grow_from_zero():
    for model in PROPERTY_MODELS:
        expected = model.expected_purchases_unconditional([0.0, 1.0, 10.0, 100.0])
        assert expected[0] == 0.0
        assert (np.diff(expected) > 0).all()


# --------------------------------------------------------------------------------------------
# Invalid inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frequency", "recency", "T", "message"),
    [
        ([1, -1], [1.0, 0.0], [2.0, 2.0], "1 of 2 customers have a negative frequency"),
        ([1, 0], [3.0, 0.0], [2.0, 2.0], r"1 of 2 customers have recency > T \(rows 0\)"),
        ([1, 2], [0.0, 0.0], [2.0, 2.0], "2 of 2 customers have frequency > 0 with recency 0"),
        ([0, 0], [1.0, 0.0], [2.0, 2.0], "frequency 0 with recency > 0"),
        ([1, 0], [1.0, 0.0], [np.nan, 2.0], r"a non-finite T \(NaN or inf\).*drop or fill"),
        ([1.5, 0], [1.0, 0.0], [2.0, 2.0], "a fractional frequency"),
        ([1, 0, 2], [1.0, 0.0], [2.0, 2.0], "have lengths 3, 2, 2"),
    ],
)
@pytest.mark.parametrize("model_class", [BetaGeometricNBD, ParetoNBD])
def test_invalid_summaries_are_rejected_with_what_was_wrong(
    model_class, frequency, recency, T, message
):
    with pytest.raises(BaselineInputError, match=message):
        model_class().fit(frequency, recency, T)
    fitted = with_params(
        model_class(), PUBLISHED_BGNBD if model_class is BetaGeometricNBD else PUBLISHED_PARETO
    )
    with pytest.raises(ValueError, match=message):
        fitted.expected_purchases(10, frequency, recency, T)


def test_negative_weights_horizons_and_penalizers_are_rejected():
    with pytest.raises(BaselineInputError, match="negative or non-finite weight"):
        BetaGeometricNBD().fit([1, 0], [1.0, 0.0], [2.0, 2.0], weights=[1, -2])
    with pytest.raises(BaselineInputError, match="penalizer must be a number >= 0"):
        ParetoNBD(penalizer=-1).fit([1, 0], [1.0, 0.0], [2.0, 2.0])
    model = with_params(ParetoNBD(), PUBLISHED_PARETO)
    with pytest.raises(BaselineInputError, match="horizon t that is negative"):
        model.probability_of_purchase(-1, [1], [1.0], [2.0])


@pytest.mark.parametrize("model_class", [BetaGeometricNBD, ParetoNBD])
def test_a_history_without_repeat_buyers_cannot_be_fitted(model_class):
    # without a second purchase the dropout parameters are not in the likelihood at all
    with pytest.raises(BaselineFitError, match="no customer bought more than once"):
        model_class().fit(np.zeros(200), np.zeros(200), np.linspace(1, 50, 200))


@pytest.mark.parametrize("model_class", [BetaGeometricNBD, ParetoNBD])
def test_an_unfitted_model_refuses_to_predict(model_class):
    with pytest.raises(NotFittedError, match="not fitted yet"):
        model_class().probability_alive([1], [1.0], [2.0])


# --------------------------------------------------------------------------------------------
# Heuristics
# --------------------------------------------------------------------------------------------


def feature_frame(days: list[float], orders: list[float], spend: list[float]) -> pd.DataFrame:
    ids = pd.Index([f"c{i}" for i in range(len(days))], dtype="str", name="customer_id")
    return pd.DataFrame(
        {"days_since_last_order": days, "orders_lifetime": orders, "spend_lifetime": spend},
        index=ids,
    )


def test_recency_baseline_scores_days_since_the_last_order_in_the_target_direction():
    frame = feature_frame([3.0, 40.0, 10.0], [1, 1, 1], [1.0, 1.0, 1.0])

    churn = RecencyBaseline().fit(frame).predict_score(frame)
    repurchase = RecencyBaseline(target="repurchase").fit(frame).predict_score(frame)

    pd.testing.assert_series_equal(
        churn, pd.Series([3.0, 40.0, 10.0], index=frame.index, name="score")
    )
    assert repurchase.tolist() == [-3.0, -40.0, -10.0]


def test_rfm_edges_learned_on_training_customers_are_reused_on_new_customers():
    train = feature_frame(
        days=list(range(1, 11)), orders=list(range(1, 11)), spend=list(range(10, 110, 10))
    )
    later = feature_frame(days=[0.0, 3.0, 100.0], orders=[50, 3, 1], spend=[5.0, 30.0, 1000.0])

    rfm = RFMBaseline(target="repurchase").fit(train)

    np.testing.assert_allclose(rfm.edges_["orders_lifetime"], [2.8, 4.6, 6.4, 8.2])
    expected = pd.DataFrame(
        {"recency_score": [5, 4, 1], "frequency_score": [5, 2, 1], "monetary_score": [1, 2, 5]},
        index=later.index,
    )
    pd.testing.assert_frame_equal(rfm.rfm_scores(later), expected)
    assert rfm.predict_score(later).tolist() == [11, 8, 7]
    refitted = RFMBaseline(target="repurchase").fit(later).predict_score(later)
    assert refitted.tolist() != [11, 8, 7]


def test_rfm_churn_score_reverses_the_repurchase_score():
    frame = feature_frame([1.0, 5.0, 9.0, 30.0], [8, 4, 2, 1], [80.0, 40.0, 20.0, 10.0])

    churn = RFMBaseline().fit(frame).predict_score(frame)
    repurchase = RFMBaseline(target="repurchase").fit(frame).predict_score(frame)

    assert (churn + repurchase == 18).all()
    assert churn.is_monotonic_increasing


def test_heuristics_reject_missing_columns_unknown_targets_and_missing_values():
    frame = feature_frame([1.0, np.nan], [1, 2], [1.0, 2.0])
    with pytest.raises(BaselineInputError, match="column 'recency' not found"):
        RecencyBaseline(recency_column="recency").fit(frame)
    with pytest.raises(
        BaselineInputError, match=r"target must be one of \['churn', 'repurchase'\]"
    ):
        RFMBaseline(target="upsell").fit(frame)  # type: ignore[arg-type]
    with pytest.raises(BaselineInputError, match="1 of 2 customers have a missing or non-finite"):
        RFMBaseline().fit(frame)
    with pytest.raises(NotFittedError):
        RFMBaseline().predict_score(frame)


# --------------------------------------------------------------------------------------------
# The estimator contract, over every baseline
# --------------------------------------------------------------------------------------------


def btyd_fit(model: Any, n: int) -> Any:
    rng = np.random.default_rng(0)
    age = rng.uniform(1, 40, n)
    x = rng.poisson(2, n)
    t_x = np.where(x > 0, age * rng.uniform(0.1, 1, n), 0.0)
    return model.fit(x, t_x, age)


def frame_fit(model: Any, n: int) -> Any:
    rng = np.random.default_rng(0)
    return model.fit(feature_frame(rng.uniform(0, 90, n), rng.poisson(3, n), rng.gamma(2, 20, n)))


CONTRACT = [
    (BetaGeometricNBD(penalizer=0.01), btyd_fit),
    (ParetoNBD(penalizer=0.01), btyd_fit),
    (RecencyBaseline(target="repurchase"), frame_fit),
    (RFMBaseline(n_bins=4), frame_fit),
]


@pytest.mark.parametrize(("model", "fit"), CONTRACT, ids=[type(m).__name__ for m, _ in CONTRACT])
def test_every_baseline_keeps_the_estimator_contract(model, fit):
    fresh = clone(model)
    assert vars(fresh) == fresh.get_params()

    fitted = fit(fresh, 50)

    assert fitted is fresh
    learned = set(vars(fitted)) - set(fresh.get_params())
    assert learned and all(name.endswith("_") for name in learned)
    # No training rows are kept: the pickle does not grow with the training set.
    small, large = (len(pickle.dumps(fit(clone(model), n))) for n in (50, 5000))
    assert abs(large - small) < 64


def test_past_use_ranks_by_share_then_by_recency_and_ties_by_popularity() -> None:
    from cxpredict.baselines import FrequentValueBaseline

    X = pd.DataFrame(
        {
            "share_category_a": [0.2, 0.0, np.nan],
            "share_category_b": [0.8, 0.0, np.nan],
            "days_since_last_interaction_c": [3.0, np.nan, np.nan],
        },
        index=["u1", "u2", "u3"],
    )
    mapping = {
        "a": {"share_category": "share_category_a"},
        "b": {"share_category": "share_category_b"},
        "c": {"days_since_last_interaction": "days_since_last_interaction_c"},
    }
    Y = pd.DataFrame({"a": [1, 1, 1], "b": [0, 1, 0], "c": [0, 0, 0]})
    baseline = FrequentValueBaseline(value_columns=mapping).fit(X, Y, values=["a", "b", "c"])
    scores = baseline.predict_scores(X)
    assert list(scores.columns) == ["a", "b", "c"]
    assert scores.loc["u1"].idxmax() == "b"  # 80% of purchases
    assert scores.loc["u1", "c"] == pytest.approx(1 / 4, abs=1e-5)  # used 3 days ago
    # no past use: the most popular value in the labels first
    assert list(scores.loc["u2"].sort_values(ascending=False).index) == ["a", "b", "c"]
    assert list(scores.loc["u3"].sort_values(ascending=False).index) == ["a", "b", "c"]
    restored = FrequentValueBaseline.from_dict(baseline.to_dict())
    pd.testing.assert_frame_equal(restored.predict_scores(X), scores)
