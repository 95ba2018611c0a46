"""Backtests split by time: every window in its place, nothing read after the as-of date."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cxpredict.backtest import (
    BTYD_FEATURES,
    BTYD_INPUTS,
    GRID_ORIGIN,
    METRIC_COLUMNS,
    _share,
    add_btyd,
    btyd_from_params,
    btyd_start,
    left_out_text,
    next_order,
    plan_backtest,
    plan_fold,
    run_backtest,
    value_columns,
)
from cxpredict.baselines import btyd_summary
from cxpredict.config import ChurnTask, RepurchaseTask, TrainingConfig, ValueTask
from cxpredict.errors import IneligibleTask
from cxpredict.schemas import Tables
from cxpredict.spine import label_window

START = pd.Timestamp("2023-01-01", tz="UTC")
AS_OF = pd.Timestamp("2024-07-01", tz="UTC")
TRAINING = TrainingConfig(
    n_cutoffs=3,
    step_days=28,
    n_backtest_cutoffs=2,
    min_positives=20,
    min_negatives=20,
    lightgbm={"learning_rate": 0.1, "min_data_in_leaf": 20, "num_leaves": 7},
)


def simulate(n: int, seed: int) -> Tables:
    """Customers buying at their own Poisson rate until an exponential lifetime ends."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        joined = rng.uniform(0, 300)
        rate = rng.gamma(1.5, 1 / 30)  # orders per day
        life = rng.exponential(250)
        t = joined
        while t < min(joined + life, 730):
            rows.append((f"c{i:04d}", t, float(rng.gamma(2, 20))))
            t += rng.exponential(1 / rate)
    frame = pd.DataFrame(rows, columns=["customer_id", "day", "amount"])
    frame["timestamp"] = (START + pd.to_timedelta(frame.pop("day"), unit="D")).dt.as_unit("us")
    frame["order_id"] = [f"o{k}" for k in range(len(frame))]
    return Tables(frame.sort_values("timestamp", ignore_index=True))


def rfm_features(tables: Tables, cutoffs, as_of) -> pd.DataFrame:
    """A stand-in feature function: recency, frequency, spend and the BTYD summary."""
    parts = []
    orders = tables.orders
    for cutoff in cutoffs:
        before = orders[orders["timestamp"] < cutoff]
        by = before.groupby("customer_id")
        summary = btyd_summary(before, cutoff)
        part = pd.DataFrame(
            {
                "days_since_last_order": (cutoff - by["timestamp"].max()) / pd.Timedelta(days=1),
                "orders_lifetime": by.size().astype(float),
                "spend_lifetime": by["amount"].sum(),
                "btyd_frequency": summary["frequency"].astype(float),
                "btyd_recency_weeks": summary["recency"],
                "btyd_t_weeks": summary["T"],
            }
        )
        part.index = pd.MultiIndex.from_arrays(
            [part.index.astype(str), pd.DatetimeIndex([cutoff] * len(part))],
            names=["customer_id", "cutoff"],
        )
        parts.append(part)
    return pd.concat(parts)


@pytest.fixture(scope="module")
def tables() -> Tables:
    return simulate(700, 0)


@given(
    horizon=st.integers(1, 120),
    step=st.integers(1, 60),
    n=st.integers(3, 12),
    folds=st.integers(1, 4),
)
def test_every_training_window_ends_by_its_validation_cutoff_and_every_test_by_the_as_of(
    horizon, step, n, folds
):
    training = TrainingConfig(n_cutoffs=n, step_days=step, n_backtest_cutoffs=folds)
    for fold in plan_backtest(AS_OF, horizon_days=horizon, training=training):
        assert len(fold.train) == n and list(fold.train) == sorted(fold.train)
        assert all(label_window(c, horizon)[1] <= fold.valid for c in fold.train)
        assert label_window(fold.valid, horizon)[1] <= fold.test == fold.as_of
        assert label_window(fold.test, horizon)[1] <= AS_OF
    final = plan_fold(AS_OF, horizon_days=horizon, n_cutoffs=n, step_days=step, test=False)
    assert label_window(final.valid, horizon)[1] == AS_OF and final.test is None


@given(
    horizon=st.integers(1, 120),
    step=st.integers(1, 60),
    later=st.integers(1, 40),
    minutes=st.integers(0, 24 * 60 - 1),
)
def test_backtests_a_few_days_apart_share_their_cutoffs_on_one_calendar_grid(
    horizon, step, later, minutes
):
    training = TrainingConfig(n_cutoffs=3, step_days=step, n_backtest_cutoffs=3)
    as_of = AS_OF + pd.Timedelta(minutes=minutes)
    tests = {
        when: {f.test for f in plan_backtest(when, horizon_days=horizon, training=training)}
        for when in (as_of, as_of + pd.Timedelta(days=later))
    }
    for cutoff in set().union(*tests.values()):
        # midnights, every step_days days from 1970-01-01
        assert cutoff == cutoff.normalize() and (cutoff - GRID_ORIGIN).days % step == 0
    if later < 2 * step:  # the two backtests overlap in time: they share a cutoff
        assert tests[as_of] & tests[as_of + pd.Timedelta(days=later)]
    off = plan_backtest(as_of, horizon_days=horizon, training=training, on_grid=False)
    assert label_window(off[0].test, horizon)[1] == as_of


@pytest.fixture(scope="module")
def churn_backtest(tables):
    seen = []

    def spy(known: Tables, cutoffs, as_of):
        seen.append((known.orders["timestamp"].max(), max(cutoffs), as_of))
        return rfm_features(known, cutoffs, as_of)

    task = ChurnTask(kind="churn", horizon_days=56, active_days=120)
    result = run_backtest(
        "churn",
        task,
        tables,
        as_of=AS_OF,
        training=TRAINING,
        features=spy,
        btyd_baselines=("bgnbd",),
    )
    return result, seen


def test_the_metrics_frame_is_tidy_with_the_model_next_to_every_baseline(churn_backtest):
    result, _ = churn_backtest
    assert tuple(result.metrics.columns) == METRIC_COLUMNS
    assert set(result.metrics["model"]) == {
        "lightgbm",
        "recency",
        "rfm_quintiles",
        "logistic",
        "bgnbd",
    }
    assert set(result.metrics["cutoff"]) == {f.test for f in result.folds}
    summary = result.summary()
    assert summary.columns[0] == "lightgbm"
    assert summary.loc["roc_auc", "lightgbm"] > 0.6


def test_each_fold_builds_features_only_from_events_before_its_test_cutoff(churn_backtest):
    result, seen = churn_backtest
    tests = {f.test for f in result.folds}
    for latest_event, latest_cutoff, as_of in seen:
        assert as_of in tests
        assert latest_event < as_of and latest_cutoff <= as_of


def test_the_backtest_never_reads_events_at_or_after_the_as_of_date(tables, churn_backtest):
    result, _ = churn_backtest
    future = pd.DataFrame(
        {
            "customer_id": ["c0001", "c0002", "z9999"],
            "timestamp": pd.DatetimeIndex(
                [AS_OF, AS_OF + pd.Timedelta(days=3), AS_OF + pd.Timedelta(days=40)]
            ).as_unit("us"),
            "amount": [1e6, 5.0, 7.0],
            "order_id": ["f1", "f2", "f3"],
        }
    )
    more = Tables(pd.concat([tables.orders, future], ignore_index=True))
    task = ChurnTask(kind="churn", horizon_days=56, active_days=120)
    again = run_backtest(
        "churn",
        task,
        more,
        as_of=AS_OF,
        training=TRAINING,
        features=rfm_features,
        btyd_baselines=("bgnbd",),
    )
    pd.testing.assert_frame_equal(again.metrics, result.metrics)


def test_a_fold_without_enough_history_is_refused_with_what_to_change(tables):
    task = RepurchaseTask(kind="repurchase", horizon_days=120)
    training = TRAINING.model_copy(update={"n_cutoffs": 6})
    with pytest.raises(IneligibleTask, match="fewer training cutoffs"):
        run_backtest("r", task, tables, as_of=AS_OF, training=training, features=rfm_features)


def value_backtest(tables: Tables, **options):
    """A one-fold backtest of a 56-day value task on the RFM features, BG/NBD as baseline."""
    return run_backtest(
        "value",
        ValueTask(kind="value", horizon_days=56),
        tables,
        as_of=AS_OF,
        training=TRAINING.model_copy(update={"n_backtest_cutoffs": 1}),
        features=rfm_features,
        btyd_baselines=("bgnbd",),
        **options,
    )


def test_a_value_backtest_scores_spend_and_orders_against_btyd_and_last_period(tables):
    result = value_backtest(tables)
    summary = result.summary()
    assert {"lightgbm", "bgnbd", "last_period"} <= set(summary.columns)
    assert {"spend/rmse", "orders/poisson_deviance", "orders/spearman"} <= set(summary.index)
    assert summary.loc["orders/normalised_gini", "lightgbm"] > 0.3
    assert result.details[0]["constant_predictions"] is False
    # the next-order dates are checked on the test windows: shares, and days of error
    dated = summary.loc[
        ["next_order/estimated", "next_order/ordered_by_date", "next_order/median_error_days"],
        "bgnbd",
    ]
    assert dated.iloc[:2].between(0, 1).all() and dated.iloc[0] > 0 and dated.iloc[2] >= 0


def test_a_next_order_is_dated_where_it_can_be_and_said_why_where_it_cannot():
    model = btyd_from_params("bgnbd", {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426})
    # weeks: often and lately; twice long ago; once, then silence; no purchase
    summary = pd.DataFrame(
        {
            BTYD_INPUTS[0]: [5.0, 2.0, 1.0, np.nan],
            BTYD_INPUTS[1]: [35.0, 30.0, 5.0, np.nan],
            BTYD_INPUTS[2]: [38.0] * 4,
        },
        index=pd.Index(["often", "twice", "gone", "never"], name="customer_id"),
    )
    out = next_order(model, summary, horizon_days=180)
    median = model.time_to_purchase(0.5, [5.0], [35.0], [38.0])[0] * 7
    assert out.loc["often", "next_order_days"] == pytest.approx(median)
    assert 50 < median < 60 and out.loc["often", "next_order_note"] == ""
    # 200 days away: beyond the horizon
    assert np.isnan(out.loc["twice", "next_order_days"])
    assert out.loc["twice", "next_order_note"].startswith("not expected within 180 days")
    assert out.loc["gone", "next_order_note"] == (
        "more likely lapsed than not (BG/NBD: 32% chance still active)"
    )
    assert out.loc["never", "next_order_note"] == "no purchase before the cutoff"
    # chances are never rounded across the even chance or down to nothing
    burst = summary.iloc[[0]].assign(btyd_frequency=30.0, btyd_recency_weeks=0.5)
    gone = next_order(model, burst, horizon_days=180)["next_order_note"].iloc[0]
    assert gone == "more likely lapsed than not (BG/NBD: under 1% chance still active)"
    assert [_share(p) for p in (0.004, 0.497, 0.5, 0.31)] == [
        "under 1%",
        "just under 50%",
        "50%",
        "31%",
    ]
    unknown = next_order(None, summary, horizon_days=180)
    assert unknown["next_order_days"].isna().all()
    assert (unknown["next_order_note"].str.startswith("no purchase-rhythm model")).all()


def test_a_model_that_learned_nothing_is_marked_as_predicting_one_value(tables):
    # with leaves needing more rows than there are, every tree is a single leaf
    stump = TRAINING.lightgbm | {"min_data_in_leaf": 1_000_000}
    result = run_backtest(
        "value",
        ValueTask(kind="value", horizon_days=56),
        tables,
        as_of=AS_OF,
        training=TRAINING.model_copy(update={"n_backtest_cutoffs": 1, "lightgbm": stump}),
        features=rfm_features,
        btyd_baselines=("bgnbd",),
    )
    assert result.details[0]["constant_predictions"] is True


def test_a_btyd_baseline_without_a_prediction_for_every_customer_is_left_out_and_said(tables):
    from cxpredict.backtest import BtydCache

    class OneCustomerLost(BtydCache):
        def predictions(self, name, cutoff, horizon_days):
            frame = super().predictions(name, cutoff, horizon_days).copy()
            frame.iloc[0] = np.nan
            return frame

    result = value_backtest(tables, cache=OneCustomerLost(tables.orders))
    assert "bgnbd" not in set(result.metrics["model"])
    (note,) = result.details[0]["baselines_left_out"]
    test = f"{result.folds[0].test:%Y-%m-%d}"
    assert note["baseline"] == "bgnbd"
    assert note["test_cutoff"] == test
    assert note["customers_without"] == 1
    (sentence,) = left_out_text(result.details)
    assert sentence.startswith(f"bgnbd is left out of the comparison at the test cutoff {test}")
    assert "gives no prediction for 1 of " in sentence


def test_a_baseline_left_out_of_several_folds_is_said_once_with_every_cutoff():
    folds = [
        {"baselines_left_out": [note]}
        for note in (
            {
                "baseline": "pareto",
                "test_cutoff": "2025-08-08",
                "customers_without": 2,
                "customers": 1500,
            },
            {
                "baseline": "pareto",
                "test_cutoff": "2025-09-05",
                "customers_without": 1,
                "customers": 1600,
            },
        )
    ]
    folds.append({"baselines_left_out": []})
    assert left_out_text(folds) == [
        "pareto is left out of the comparison at the test cutoffs 2025-08-08, 2025-09-05: its "
        "fit on the purchases before each gives no prediction for 2 of 1,500, 1 of 1,600 "
        "customers"
    ]


def two_buyers_and_one_without_a_summary(ids: list[str]) -> pd.DataFrame:
    """A one-time buyer, a repeat buyer and a customer without a BTYD summary."""
    return pd.DataFrame(
        {
            "btyd_frequency": [0.0, 3.0, np.nan],
            "btyd_recency_weeks": [0.0, 20.0, np.nan],
            "btyd_t_weeks": [30.0, 30.0, np.nan],
        },
        index=pd.Index(ids, name="customer_id"),
    )


def test_btyd_outputs_come_from_the_engine_summary_and_stored_parameters():
    model = btyd_from_params("bgnbd", {"r": 0.25, "alpha": 4.4, "a": 0.8, "b": 2.4})
    features = two_buyers_and_one_without_a_summary(["a", "b", "c"])
    out = add_btyd(features, model, horizon_days=91)
    assert list(out.columns[-3:]) == list(BTYD_FEATURES)
    expected = model.expected_purchases(13.0, [0.0, 3.0], [0.0, 20.0], [30.0, 30.0])
    np.testing.assert_allclose(out["btyd_expected_purchases"].iloc[:2], expected)
    assert out.loc["a", "btyd_p_alive"] == 1.0  # BG/NBD: a one-time buyer is alive
    assert out.loc["c"].isna().all()  # no purchase, no summary, no output


def test_a_summary_the_btyd_model_cannot_read_gives_missing_outputs_not_an_error():
    model = btyd_from_params("bgnbd", {"r": 0.25, "alpha": 4.4, "a": 0.8, "b": 2.4})
    features = pd.DataFrame(
        {
            "btyd_frequency": [1.5, 0.0, 2.0],
            "btyd_recency_weeks": [3.0, 2.0, 40.0],
            "btyd_t_weeks": [10.0, 10.0, 30.0],
        },
        index=pd.Index(["fractional", "recency_without_repeat", "recency_after_t"]),
    )
    out = add_btyd(features, model, horizon_days=91)
    assert out[list(BTYD_FEATURES)].isna().all().all()


def test_a_started_probability_is_the_chance_of_a_poisson_count_with_the_expected_purchases():
    model = btyd_from_params("pareto", {"r": 0.55, "alpha": 10.58, "s": 0.61, "beta": 11.67})
    features = two_buyers_and_one_without_a_summary(["a", "b", "no_summary"])
    expected = btyd_start(model, features, horizon_days=273, target="orders")
    buys = btyd_start(model, features, horizon_days=273, target="purchase")
    stays = btyd_start(model, features, horizon_days=273, target="no_purchase")
    np.testing.assert_allclose(buys, 1.0 - np.exp(-expected))
    np.testing.assert_allclose(buys + stays, 1.0)
    assert buys[1] > buys[0] and 0.0 < buys[2] < 1.0


def test_a_preference_task_serves_past_use_when_it_ranks_clearly_better_on_the_validation_cutoff():
    from cxpredict.backtest import FoldData, _serve_preference
    from cxpredict.baselines import FrequentValueBaseline

    class Backwards:
        """A ranker that puts each customer's favourite last."""

        values_ = np.asarray(["a", "b"], dtype=object)

        def predict_scores(self, X: pd.DataFrame) -> pd.DataFrame:
            return pd.DataFrame(
                {"a": X["share_category_b"], "b": X["share_category_a"]}, index=X.index
            )

    X = pd.DataFrame({"share_category_a": [0.9, 0.1, 0.7], "share_category_b": [0.1, 0.9, 0.3]})
    Y = pd.DataFrame({"a": [1, 0, 1], "b": [0, 1, 0]})
    mapping = {v: {"share_category": f"share_category_{v}"} for v in "ab"}
    data = FoldData(X_train=X, y_train=Y, X_valid=X, y_valid=Y)
    served, hits = _serve_preference(Backwards(), data, Y, mapping)  # type: ignore[arg-type]
    assert isinstance(served, FrequentValueBaseline)
    assert hits == {"lightgbm": 0.0, "most_frequent": 1.0}


def test_a_preference_task_keeps_its_model_when_past_use_ranks_better_only_within_the_noise():
    from cxpredict.backtest import FoldData, _serve_preference

    # 100 customers; past use ranks first right for 99, the model for 97: 3 customers favour
    # past use, 1 the model, a difference of 0.02 against a standard error of about 0.02.
    share_a = np.where(np.arange(100) % 2 == 0, 0.8, 0.2)
    X = pd.DataFrame({"share_category_a": share_a, "share_category_b": 1 - share_a})
    chosen_a = share_a > 0.5
    chosen_a[3] = not chosen_a[3]  # past use is wrong for customer 3
    Y = pd.DataFrame({"a": chosen_a.astype(int), "b": (~chosen_a).astype(int)})
    flipped = np.isin(np.arange(100), [0, 1, 2, 3])

    class Nearly:
        """Ranks by the shares, but the other way round for customers 0 to 3."""

        values_ = np.asarray(["a", "b"], dtype=object)

        def predict_scores(self, X: pd.DataFrame) -> pd.DataFrame:
            a = np.where(flipped, X["share_category_b"], X["share_category_a"])
            return pd.DataFrame({"a": a, "b": 1 - a}, index=X.index)

    mapping = {v: {"share_category": f"share_category_{v}"} for v in "ab"}
    data = FoldData(X_train=X, y_train=Y, X_valid=X, y_valid=Y)
    model = Nearly()
    served, hits = _serve_preference(model, data, Y, mapping)  # type: ignore[arg-type]
    assert served is model
    assert hits == {"lightgbm": pytest.approx(0.97), "most_frequent": pytest.approx(0.99)}


def test_value_models_started_from_pareto_nbd_predict_any_horizon_and_say_so(tables):
    from cxpredict.backtest import BtydCache, BtydStart, fit_task, fold_data

    task = ValueTask(kind="value", horizon_days=56)
    fold = plan_fold(AS_OF, horizon_days=56, n_cutoffs=3, step_days=28, test=False)
    cache = BtydCache(tables.orders)
    data = fold_data(
        task, tables, fold, features=rfm_features, cache=cache, label_horizon_days=56, use_btyd=True
    )
    fitted = fit_task(
        "value",
        task,
        data,
        fold,
        training=TRAINING,
        label_horizon_days=56,
        cache=cache,
        start_horizon_days=112,
    )
    assert fitted.details["start"] == "pareto"
    orders = fitted.estimators["orders"]
    assert isinstance(orders, BtydStart) and isinstance(fitted.estimators["spend"], BtydStart)
    X = data.X_valid
    short, long = orders.predict(X, horizon_days=56), orders.predict(X)
    # the correction is the same over both windows: the start alone sets the ratio
    ratio = orders.start(X) / orders.start(X, horizon_days=56)
    np.testing.assert_allclose(long / short, ratio, rtol=1e-9)
    assert (ratio >= 1).all() and (fitted.estimators["spend"].predict(X) >= 0).all()
    restored = BtydStart.from_dict(orders.to_dict())
    np.testing.assert_array_equal(restored.predict(X), long)


def test_interaction_channels_are_described_by_their_share_then_their_recency() -> None:
    columns = [
        "share_interaction_channel_web",
        "days_since_last_interaction_web",
        "days_since_last_interaction_chat",
    ]
    got = value_columns(columns, ["web", "chat"], key="interactions.channel")
    assert got == {
        "web": {
            "share_interaction_channel": "share_interaction_channel_web",
            "days_since_last_interaction": "days_since_last_interaction_web",
        },
        "chat": {"days_since_last_interaction": "days_since_last_interaction_chat"},
    }
