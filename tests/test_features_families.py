"""Hand-computed features of the tiny shop (see conftest.py), one test per family."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import CUTOFF, instants

from cxpredict.config import FeaturesConfig
from cxpredict.features import Vocabulary, build_features, build_training_features
from cxpredict.schemas import Tables

NAN = np.nan
MICROSECOND_IN_DAYS = 1 / 86_400_000_000


def days_before_cutoff(instant: str) -> float:
    return (CUTOFF - pd.Timestamp(instant, tz="UTC")) / pd.Timedelta(days=1)


def expected(
    columns: dict[str, list[float]], ids: tuple[str, ...] = ("c1", "c2", "c3")
) -> pd.DataFrame:
    frame = pd.DataFrame(columns, index=pd.Index(list(ids), dtype="str", name="customer_id"))
    return frame.astype("float64")


@pytest.fixture
def features(
    tiny: Tables, tiny_vocabulary: Vocabulary, short_windows: FeaturesConfig
) -> pd.DataFrame:
    return build_features(tiny, CUTOFF, settings=short_windows, vocabulary=tiny_vocabulary)


def test_rfm_counts_orders_and_net_spend_per_window(features: pd.DataFrame) -> None:
    want = expected(
        {
            "orders_7d": [0, 1, 0],
            "orders_30d": [1, 1, 0],
            "orders_90d": [3, 1, 0],
            "orders_lifetime": [3, 1, 0],
            "spend_7d": [0, 10, 0],
            "spend_30d": [60, 10, 0],
            "spend_90d": [200, 10, 0],
            "spend_lifetime": [200, 10, 0],
            "refunds_lifetime": [1, 0, 0],
            "refund_amount_lifetime": [20, 0, 0],
            "order_value_mean": [220 / 3, 10, NAN],
            "order_value_max": [100, 10, NAN],
            "days_since_first_order": [
                days_before_cutoff("2023-12-20T10:00"),
                MICROSECOND_IN_DAYS,
                NAN,
            ],
            "days_since_last_order": [19.5, MICROSECOND_IN_DAYS, NAN],
        }
    )
    pd.testing.assert_frame_equal(features[list(want.columns)], want)


def test_rhythm_measures_gaps_between_purchase_days_and_the_order_trend(
    features: pd.DataFrame,
) -> None:
    want = expected(
        {
            "gap_mean_days": [26, NAN, NAN],
            "gap_std_days": [math.sqrt(392), NAN, NAN],
            "gap_last_days": [40, NAN, NAN],
            "overdue_ratio": [19.5 / 26, NAN, NAN],
            "orders_trend_30d_vs_90d": [(1 + 1) / (2 / 3 + 1), 2.0, 1.0],
        }
    )
    pd.testing.assert_frame_equal(features[list(want.columns)], want)


def test_preferences_share_entropy_and_latest_value_over_the_vocabulary(
    features: pd.DataFrame,
) -> None:
    entropy = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    want = expected(
        {
            "share_category_shoes": [0.75, 0, NAN],
            "share_category_bags": [0.25, 0, NAN],
            "share_category_other": [0, 1, NAN],
            "distinct_categories": [2, 1, 0],
            "category_entropy": [entropy, 0, NAN],
            # o2's two lines share an instant: the tie goes to the later vocabulary value.
            "last_category_is_shoes": [0, 0, 0],
            "last_category_is_bags": [1, 0, 0],
            "last_category_is_other": [0, 1, 0],
            "share_order_channel_web": [0.5, 0, NAN],
            "share_order_channel_store": [0.5, 0, NAN],
            "share_order_channel_other": [0, 1, NAN],
            "distinct_order_channels": [2, 1, 0],
            "order_channel_entropy": [1, 0, NAN],
            "last_order_channel_is_web": [0, 0, 0],
            "last_order_channel_is_store": [1, 0, 0],
            "last_order_channel_is_other": [0, 1, 0],
        }
    )
    pd.testing.assert_frame_equal(features[list(want.columns)], want)


def test_engagement_counts_visits_sessions_and_emails_and_recency_and_share_per_channel(
    features: pd.DataFrame,
) -> None:
    want = expected(
        {
            "interactions_7d": [6, 0, 0],
            "interactions_30d": [7, 0, 1],
            "interactions_90d": [8, 1, 1],
            "visits_7d": [2, 0, 0],
            "visits_30d": [2, 0, 1],
            "sessions_7d": [1, 0, 0],
            "sessions_30d": [1, 0, 1],
            "email_opens_7d": [1, 0, 0],
            "email_clicks_7d": [1, 0, 0],
            "email_click_rate": [1.0, NAN, NAN],
            "visits_trend_30d_vs_90d": [3.0, 1.0, 2.0],
            "distinct_interaction_channels": [4, 1, 1],
            "days_since_last_interaction": [1.5, 51, 10],
            "days_since_last_interaction_web": [4.375, NAN, NAN],
            "days_since_last_interaction_email": [3.625, NAN, NAN],
            "days_since_last_interaction_chat": [1.5, 51, NAN],
            "days_since_last_interaction_other": [10, NAN, 10],
            # c1: 2 web visits, an email opened and clicked, 2 chats and 3 app reviews
            "share_interaction_channel_web": [2 / 9, 0, 0],
            "share_interaction_channel_email": [2 / 9, 0, 0],
            "share_interaction_channel_chat": [2 / 9, 1, 0],
            "share_interaction_channel_other": [3 / 9, 0, 1],
        }
    )
    pd.testing.assert_frame_equal(features[list(want.columns)], want)


def test_care_counts_an_answer_given_at_the_cutoff_as_not_yet_given(
    features: pd.DataFrame,
) -> None:
    want = expected(
        {
            "messages_7d": [1, 0, 0],
            "messages_90d": [1, 1, 0],
            "complaints_7d": [1, 0, 0],
            "unanswered_messages_7d": [1, 0, 0],
            "unanswered_messages_30d": [1, 0, 0],
            "unanswered_messages_90d": [1, 1, 0],
            "unanswered_messages_lifetime": [1, 1, 0],
            "unanswered_share": [0.5, 1.0, NAN],
            "response_hours_median": [6.0, NAN, NAN],
            "response_hours_max": [6.0, NAN, NAN],
            "days_since_last_unanswered": [1.5, 51, NAN],
            "days_since_last_message": [1.5, 51, NAN],
            "rating_mean": [11 / 3, NAN, NAN],
            "rating_last": [5, NAN, NAN],
            "rating_trend": [3.5 - 4.0, NAN, NAN],
            "negative_ratings": [1, 0, 0],
        }
    )
    pd.testing.assert_frame_equal(features[list(want.columns)], want)


def test_tenure_starts_at_signup_or_first_order_and_attributes_are_one_hot(
    features: pd.DataFrame,
) -> None:
    want = expected(
        {
            "tenure_days": [91, 1, 15],
            "days_since_signup": [91, 1, 15],
            "attr_segment_gold": [1, 0, 1],
            "attr_segment_silver": [0, 1, 0],
            "attr_segment_other": [0, 0, 0],
            "attr_age": [30, NAN, 41],
        }
    )
    pd.testing.assert_frame_equal(features[list(want.columns)], want)


def test_btyd_counts_customer_days_in_weeks(features: pd.DataFrame) -> None:
    want = expected(
        {
            "btyd_frequency": [2, 0, NAN],
            "btyd_recency_weeks": [52 / 7, 0, NAN],
            "btyd_t_weeks": [72 / 7, 1 / 7, NAN],
        }
    )
    pd.testing.assert_frame_equal(features[list(want.columns)], want)


def test_the_season_is_the_cutoffs_day_of_the_year_for_every_customer(
    features: pd.DataFrame, tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    # 2024 is a leap year: 31 days of January and 29 of February come before 1 March
    want = expected({"cutoff_day_of_year": [61, 61, 61]})
    pd.testing.assert_frame_equal(features[list(want.columns)], want)
    cutoffs = ["2023-12-31", "2024-01-01", "2024-12-31 23:59:59.999999"]
    grid = build_training_features(tiny, cutoffs, vocabulary=tiny_vocabulary)
    by_cutoff = grid.groupby(level="cutoff")["cutoff_day_of_year"].agg(["min", "max"])
    assert by_cutoff["min"].tolist() == by_cutoff["max"].tolist() == [365.0, 1.0, 366.0]


def test_basket_without_quantities_gives_the_first_order_and_the_first_repeat_gap(
    features: pd.DataFrame,
) -> None:
    want = expected(
        {
            "first_order_value": [40, 10, NAN],
            "first_repeat_gap_days": [12, NAN, NAN],
        }
    )
    pd.testing.assert_frame_equal(features[list(want.columns)], want)
    assert "items_lifetime" not in features.columns


def test_basket_counts_items_of_purchase_lines_before_the_cutoff(
    tiny: Tables, tiny_vocabulary: Vocabulary, short_windows: FeaturesConfig
) -> None:
    # o0: 2 items, o1: 1, o2: 3 and a line without a quantity, the refund and the order at
    # the cutoff instant do not count
    quantity = pd.array([2, 1, 3, None, 1, 5, 1, 4], dtype="Int64")
    orders = tiny.orders.assign(quantity=quantity)
    tables = Tables(orders, tiny.interactions, tiny.customers)
    got = build_features(tables, CUTOFF, settings=short_windows, vocabulary=tiny_vocabulary)
    want = expected(
        {
            "first_order_value": [40, 10, NAN],
            "first_order_items": [2, 1, NAN],
            "items_lifetime": [6, 1, 0],
            "items_per_order_mean": [2, 1, NAN],
            "value_per_item": [190 / 6, 10, NAN],
            "first_repeat_gap_days": [12, NAN, NAN],
        }
    )
    pd.testing.assert_frame_equal(got[list(want.columns)], want)


def test_a_customer_history_gives_the_attributes_known_at_each_cutoff(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    history = pd.DataFrame(
        {
            "customer_id": ["c1", "c1", "c1", "c2"],
            "updated_at": instants(
                "2024-01-01T00:00", "2024-02-15T00:00", "2024-03-01T00:00", "2024-02-29T00:00"
            ),
            "segment": ["silver", "gold", "platinum", "silver"],
            "age": [29.0, 30.0, 31.0, None],
        }
    ).astype({"customer_id": "str", "segment": "str"})
    tables = Tables(tiny.orders, tiny.interactions, history)
    got = build_features(tables, CUTOFF, vocabulary=tiny_vocabulary)
    columns = ["attr_segment_gold", "attr_segment_silver", "attr_segment_other", "attr_age"]
    want = expected(
        {
            "attr_segment_gold": [1, 0],
            "attr_segment_silver": [0, 1],
            "attr_segment_other": [0, 0],
            "attr_age": [30, NAN],
        },
        ("c1", "c2"),
    )
    pd.testing.assert_frame_equal(got[columns], want)
    earlier = build_features(tables, "2024-02-01", vocabulary=tiny_vocabulary)
    want_earlier = expected(
        {
            "attr_segment_gold": [0],
            "attr_segment_silver": [1],
            "attr_segment_other": [0],
            "attr_age": [29],
        },
        ("c1",),
    )
    pd.testing.assert_frame_equal(earlier[columns], want_earlier)
