"""Label windows, populations and eligibility on small hand-computable fixtures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxpredict.config import (
    ChurnTask,
    PreferenceTask,
    RepurchaseTask,
    TrainingConfig,
    ValueTask,
)
from cxpredict.errors import FeatureMismatch, IneligibleTask
from cxpredict.labels import (
    check_class_balance,
    check_history,
    churn_labels,
    eligible,
    make_labels,
    median_days_to_next,
    preference_labels,
    repurchase_labels,
    value_labels,
)
from cxpredict.schemas import Tables

CUTOFF = pd.Timestamp("2024-03-01", tz="UTC")


def orders_frame(rows: list[tuple[str, str, float, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["customer_id", "timestamp", "amount", "category"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601").dt.as_unit(
        "us"
    )
    frame["order_id"] = [f"o{i}" for i in range(len(frame))]
    return frame


@pytest.fixture
def tables() -> Tables:
    return Tables(
        orders_frame(
            [
                ("a", "2024-01-10", 10.0, "books"),
                ("a", "2024-02-15", 20.0, "music"),
                ("a", "2024-03-30 23:59:59", 15.0, "books"),  # last instant inside the window
                ("b", "2024-01-20", 5.0, "music"),
                ("b", "2024-03-05", -5.0, "music"),  # a refund is not an order
                ("b", "2024-03-31", 8.0, "games"),  # the window's end instant is outside
                ("c", "2023-12-01", 12.0, "books"),
                ("c", "2024-03-01", 7.0, "games"),  # on the cutoff instant: a label event
                ("c", "2024-03-11", 3.0, "music"),
            ]
        )
    )


def labels_of(frame: pd.DataFrame, column: str = "label") -> dict[str, object]:
    return {cid: value for (cid, _), value in frame[column].items()}


def test_churn_population_is_customers_active_in_the_lookback(tables):
    labels = churn_labels(tables, [CUTOFF], horizon_days=30, active_days=60)
    # c's only order before the cutoff is 91 days old: not active, not labelled
    assert labels_of(labels) == {"a": 0, "b": 1}


def test_churn_frame_is_indexed_by_customer_and_cutoff(tables):
    labels = churn_labels(tables, [CUTOFF], horizon_days=30, active_days=60)
    expected = pd.DataFrame(
        {"label": np.array([0, 1], dtype="int8")},
        index=pd.MultiIndex.from_tuples(
            [("a", CUTOFF), ("b", CUTOFF)], names=["customer_id", "cutoff"]
        ),
    )
    pd.testing.assert_frame_equal(labels, expected, check_index_type=False)


def test_an_order_on_the_cutoff_instant_is_a_label_event_not_history(tables):
    labels = repurchase_labels(tables, [CUTOFF], horizon_days=30)
    assert labels_of(labels)["c"] == 1
    later = repurchase_labels(tables, [CUTOFF + pd.Timedelta(microseconds=1)], horizon_days=30)
    # one microsecond later, the order at the cutoff is history and the window holds c's next
    assert labels_of(later)["c"] == 1


def test_the_window_end_instant_is_outside_and_a_refund_is_not_an_order(tables):
    labels = repurchase_labels(tables, [CUTOFF], horizon_days=30)
    assert labels_of(labels) == {"a": 1, "b": 0, "c": 1}


def test_a_customer_whose_first_order_is_on_the_cutoff_is_not_labelled():
    tables = Tables(orders_frame([("n", "2024-03-01", 5.0, "books")]))
    assert repurchase_labels(tables, [CUTOFF], horizon_days=30).empty


def test_value_labels_count_orders_net_spend_and_days_to_next(tables):
    labels = value_labels(tables, [CUTOFF], horizon_days=30)
    assert labels_of(labels, "orders") == {"a": 1, "b": 0, "c": 2}
    assert labels_of(labels, "spend") == {"a": 15.0, "b": -5.0, "c": 10.0}
    days = labels_of(labels, "days_to_next")
    assert days["c"] == 0.0
    assert days["a"] == pytest.approx(30 - 1 / 86400)
    # b has no order in the window: censored at the horizon
    assert days["b"] == 30.0
    assert labels_of(labels, "next_observed") == {"a": True, "b": False, "c": True}


def test_median_days_to_next_is_refused_when_most_customers_are_censored(tables):
    labels = value_labels(tables, [CUTOFF], horizon_days=30)
    assert median_days_to_next(labels, horizon_days=30) == pytest.approx(30 - 1 / 86400)
    short = value_labels(tables, [CUTOFF], horizon_days=5)
    # only c orders within 5 days: the median is beyond the horizon
    assert median_days_to_next(short, horizon_days=5) is None


def test_preference_labels_list_the_values_each_returning_customer_chooses(tables):
    labels = preference_labels(tables, [CUTOFF], horizon_days=30)
    assert list(labels.columns) == ["books", "games", "music"]
    assert labels.loc[("a", CUTOFF)].tolist() == [1, 0, 0]
    assert labels.loc[("c", CUTOFF)].tolist() == [0, 1, 1]
    # b only has a refund in the window: not in the population
    assert "b" not in labels.index.get_level_values("customer_id")


def test_preference_on_a_missing_column_says_which_columns_exist(tables):
    with pytest.raises(IneligibleTask, match="has no column 'brand'"):
        preference_labels(tables, [CUTOFF], horizon_days=30, attribute="brand")


def test_many_cutoffs_give_the_same_labels_as_one_cutoff_at_a_time(tables):
    cutoffs = pd.date_range("2024-01-15", "2024-03-20", freq="7D", tz="UTC")
    task = ChurnTask(kind="churn", horizon_days=20, active_days=45)
    stacked = make_labels(task, tables, cutoffs)
    one_by_one = pd.concat([make_labels(task, tables, [c]) for c in cutoffs]).sort_index()
    pd.testing.assert_frame_equal(stacked, one_by_one)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from("abcd"), st.integers(0, 120), st.sampled_from([-3.0, 4.0])),
        min_size=1,
        max_size=30,
    ),
    st.integers(1, 40),
)
def test_labels_match_a_brute_force_count_of_the_window(rows, horizon):
    start = pd.Timestamp("2024-01-01", tz="UTC")
    frame = orders_frame(
        [(c, str(start + pd.Timedelta(days=d)), amount, "x") for c, d, amount in rows]
    )
    tables = Tables(frame)
    cutoffs = [start + pd.Timedelta(days=d) for d in (30, 60, 90)]
    labels = value_labels(tables, cutoffs, horizon_days=horizon)
    purchases = frame[frame["amount"] >= 0]
    for (customer, cutoff), row in labels.iterrows():
        mine = purchases[purchases["customer_id"] == customer]
        end = cutoff + pd.Timedelta(days=horizon)
        assert (mine["timestamp"] < cutoff).any()
        assert row["orders"] == ((mine["timestamp"] >= cutoff) & (mine["timestamp"] < end)).sum()
    expected_rows = sum(
        purchases.loc[purchases["timestamp"] < c, "customer_id"].nunique() for c in cutoffs
    )
    assert len(labels) == expected_rows


def test_labels_ignore_events_after_the_window():
    tables = Tables(orders_frame([("a", "2024-02-01", 5.0, "x"), ("b", "2024-02-02", 5.0, "x")]))
    extra = orders_frame([("a", "2024-04-01", 5.0, "x"), ("z", "2024-05-01", 9.0, "x")])
    more = Tables(pd.concat([tables.orders, extra], ignore_index=True))
    task = RepurchaseTask(kind="repurchase", horizon_days=30)
    pd.testing.assert_frame_equal(
        make_labels(task, tables, [CUTOFF]), make_labels(task, more, [CUTOFF])
    )


def test_too_few_positives_is_refused_with_what_to_change(tables):
    labels = churn_labels(tables, [CUTOFF], horizon_days=30, active_days=60)
    task = ChurnTask(kind="churn", horizon_days=30, active_days=60)
    with pytest.raises(IneligibleTask, match=r"hold 1 churned customers.*min_positives") as info:
        check_class_balance("churn", task, labels, training=TrainingConfig(min_positives=5))
    # a longer window holds more orders, so fewer churners: the advice is a shorter one, or a
    # larger population of active customers
    assert "use a shorter horizon than 30 days" in str(info.value)
    assert "a longer active_days than 60" in str(info.value)
    repurchase = RepurchaseTask(kind="repurchase", horizon_days=30)
    bought = make_labels(repurchase, tables, [CUTOFF])
    with pytest.raises(IneligibleTask, match="use a longer horizon than 30 days"):
        check_class_balance(
            "again", repurchase, bought, training=TrainingConfig(min_positives=10_000)
        )


def test_too_few_negatives_is_refused(tables):
    labels = value_labels(tables, [CUTOFF], horizon_days=30)
    task = ValueTask(kind="value", horizon_days=30)
    training = TrainingConfig(min_positives=1, min_negatives=2)
    with pytest.raises(IneligibleTask, match="hold 1 customers without one"):
        check_class_balance("value", task, labels, training=training)


def test_preference_balance_counts_the_most_chosen_value(tables):
    labels = preference_labels(tables, [CUTOFF], horizon_days=30)
    task = PreferenceTask(kind="preference", horizon_days=30)
    few = TrainingConfig(min_positives=1, min_negatives=1, min_customers=1)
    check_class_balance("pref", task, labels, training=few)


def test_a_preference_for_an_attribute_with_one_value_is_refused_as_such(tables):
    one = tables.orders.assign(category="books")
    labels = preference_labels(Tables(one), [CUTOFF], horizon_days=30)
    task = PreferenceTask(kind="preference", horizon_days=30)
    few = TrainingConfig(min_positives=1, min_negatives=1, min_customers=1)
    with pytest.raises(IneligibleTask, match="one value of category \\('books'\\); a preference"):
        check_class_balance("pref", task, labels, training=few)


def test_rows_of_too_few_distinct_customers_are_refused(tables):
    labels = churn_labels(tables, [CUTOFF], horizon_days=30, active_days=60)
    many = pd.concat(
        [labels.rename(index={CUTOFF: CUTOFF - pd.Timedelta(days=7 * k)}) for k in range(50)]
    )
    task = ChurnTask(kind="churn", horizon_days=30, active_days=60)
    enough_rows = TrainingConfig(min_positives=1, min_negatives=1)
    with pytest.raises(IneligibleTask, match="from 1 distinct customer\\(s\\); at least 10"):
        check_class_balance("churn", task, many, training=enough_rows)
    check_class_balance(
        "churn", task, many, training=enough_rows.model_copy(update={"min_customers": 1})
    )


def test_a_label_window_still_open_at_the_as_of_date_is_refused():
    task = RepurchaseTask(kind="repurchase", horizon_days=90)
    with pytest.raises(IneligibleTask, match="ends 2024-05-30, after the as-of date 2024-04-01"):
        check_history(
            "r",
            task,
            cutoffs=[CUTOFF],
            as_of=pd.Timestamp("2024-04-01", tz="UTC"),
            first_event=pd.Timestamp("2023-01-01", tz="UTC"),
            min_history_days=30,
        )


def test_a_first_cutoff_without_history_is_refused_with_the_earliest_valid_date():
    task = RepurchaseTask(kind="repurchase", horizon_days=30)
    with pytest.raises(IneligibleTask, match=r"on or after 2024-02-20.*fewer training cutoffs"):
        check_history(
            "r",
            task,
            cutoffs=[CUTOFF - pd.Timedelta(days=30), CUTOFF],
            as_of=pd.Timestamp("2024-04-01", tz="UTC"),
            first_event=pd.Timestamp("2024-01-21", tz="UTC"),
            min_history_days=30,
        )


def test_churn_scores_customers_active_within_its_window_and_others_any_buyer() -> None:
    features = pd.DataFrame({"days_since_last_order": [10.0, 180.0, 181.0, np.nan]})
    churn = ChurnTask(kind="churn", horizon_days=90, active_days=180)
    again = RepurchaseTask(kind="repurchase", horizon_days=90)
    assert eligible(features, churn).tolist() == [True, True, False, False]
    assert eligible(features, again).tolist() == [True, True, True, False]
    with pytest.raises(FeatureMismatch, match="lack 'days_since_last_order'"):
        eligible(features.rename(columns=str.upper), churn)
