"""Reason codes name what raised a score, in the catalogue's words, and find planted effects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxpredict.explain import (
    explain,
    fill_reason,
    one_hot_groups,
    singular_after_one,
    top_reasons,
)
from cxpredict.features import build_training_features, feature_catalogue, learn_vocabulary
from cxpredict.labels import churn_labels
from cxpredict.models import LightGBMClassifier
from cxpredict.sample import generate_sample

CATALOGUE = pd.DataFrame(
    {
        "name": [
            "days_since_last_order",
            "complaints_90d",
            "rating_last",
            "attr_country_fr",
            "attr_country_de",
            "orders_lifetime",
        ],
        "reason": [
            "no order for {days_since_last_order:.0f} days",
            "{complaints_90d:.0f} complaints in the last 90 days",
            "latest rating {rating_last:.1f}",
            "country is FR",
            "country is DE",
            "{orders_lifetime:.0f} orders so far",
        ],
        "unit": ["days", "count", "stars", "flag", "flag", "orders"],
    }
)


def frame(rows: dict[str, list[float]], index: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, index=pd.Index(index, name="customer_id"))


def test_only_features_that_raise_the_score_are_reasons_strongest_first():
    contributions = frame(
        {
            "days_since_last_order": [0.8],
            "complaints_90d": [0.3],
            "orders_lifetime": [-0.6],
            "bias": [-0.5],
        },
        ["a"],
    )
    features = frame(
        {"days_since_last_order": [120.0], "complaints_90d": [2.0], "orders_lifetime": [1.0]},
        ["a"],
    )
    reasons = explain(contributions, features, CATALOGUE)
    assert reasons.loc["a"].tolist() == [
        "no order for 120 days",
        "2 complaints in the last 90 days",
        "",
    ]


def test_a_customer_scored_below_the_typical_score_is_given_no_reason():
    # b's complaints raise its score a little, but its orders bring it below the typical one
    contributions = frame(
        {"complaints_90d": [0.3, 0.3], "orders_lifetime": [0.1, -1.2], "bias": [-0.5, -0.5]},
        ["a", "b"],
    )
    features = frame({"complaints_90d": [2.0, 2.0], "orders_lifetime": [1.0, 9.0]}, ["a", "b"])
    reasons = explain(contributions, features, CATALOGUE)
    assert reasons.loc["a", "reason_1"] == "2 complaints in the last 90 days"
    assert reasons.loc["b"].tolist() == ["", "", ""]


def test_a_feature_whose_value_is_missing_is_never_a_reason():
    contributions = frame({"rating_last": [2.0], "complaints_90d": [0.1]}, ["a"])
    features = frame({"rating_last": [np.nan], "complaints_90d": [1.0]}, ["a"])
    reasons = top_reasons(contributions, features, CATALOGUE)
    assert reasons["feature"].tolist() == ["complaints_90d"]


def test_a_feature_without_a_sentence_is_never_a_reason():
    catalogue = pd.concat(
        [CATALOGUE, pd.DataFrame({"name": ["cutoff_day_of_year"], "reason": [""]})]
    )
    contributions = frame({"cutoff_day_of_year": [3.0], "complaints_90d": [0.1]}, ["a"])
    features = frame({"cutoff_day_of_year": [300.0], "complaints_90d": [1.0]}, ["a"])
    reasons = top_reasons(contributions, features, catalogue)
    assert reasons["feature"].tolist() == ["complaints_90d"]


def test_one_hot_siblings_count_as_one_reason_in_the_words_of_the_column_set():
    groups = one_hot_groups(
        ["attr_country_fr", "attr_country_de", "complaints_90d"],
        {"customers.country": ("fr", "de")},
        flags=["attr_country_fr", "attr_country_de"],
    )
    assert groups == {"attr_country_fr": "attr_country", "attr_country_de": "attr_country"}
    contributions = frame(
        {
            "attr_country_fr": [0.3, 0.3],
            "attr_country_de": [0.3, -0.5],
            "complaints_90d": [0.5, 0.1],
        },
        ["a", "b"],
    )
    features = frame(
        {
            "attr_country_fr": [0.0, 0.0],
            "attr_country_de": [1.0, 1.0],
            "complaints_90d": [1.0, 1.0],
        },
        ["a", "b"],
    )
    reasons = top_reasons(contributions, features, CATALOGUE, groups=groups)
    # a: the country group adds 0.6 > 0.5 and speaks as the column the customer has
    assert reasons.loc["a", "sentence"].tolist() == [
        "country is DE",
        "1 complaint in the last 90 days",
    ]
    # b: the group sums to -0.2 and lowers the score, so it is no reason
    assert reasons.loc[["b"], "feature"].tolist() == ["complaints_90d"]


def test_reasons_are_limited_to_top_and_blank_when_nothing_raises_the_score():
    contributions = frame(
        {
            "days_since_last_order": [0.1, -0.1],
            "complaints_90d": [0.2, -0.2],
            "rating_last": [0.3, -0.3],
            "orders_lifetime": [0.4, -0.4],
        },
        ["a", "b"],
    )
    features = frame({c: [1.0, 1.0] for c in contributions.columns}, ["a", "b"])
    reasons = explain(contributions, features, CATALOGUE, top=3)
    assert reasons.loc["a", "reason_1"] == "1 order so far"
    assert reasons.loc["a", "reason_3"] == "1 complaint in the last 90 days"
    assert reasons.loc["b"].tolist() == ["", "", ""]


@pytest.fixture(scope="module")
def planted():
    """A churn model on the synthetic retailer, whose care desk drives lapses."""
    tables = generate_sample(2500, seed=7)
    cutoffs = list(pd.date_range("2024-07-01", "2025-09-01", freq="28D", tz="UTC"))
    train, test = cutoffs[:-4], cutoffs[-1]
    valid = cutoffs[-4]  # its 90-day window ends before the test cutoff
    known = tables.before(test)
    vocabulary = learn_vocabulary(known, test)
    features = build_training_features(known, [*train, valid, test], vocabulary=vocabulary)
    labels = churn_labels(tables, [*train, valid, test], horizon_days=90, active_days=180)
    cut = labels.index.get_level_values("cutoff")
    fit_rows = labels[cut < train[-1] - pd.Timedelta(days=62)]
    valid_rows, test_rows = labels[cut == valid], labels[cut == test]
    model = LightGBMClassifier(params={"learning_rate": 0.08}, seed=0).fit(
        features.loc[fit_rows.index],
        fit_rows["label"],
        X_valid=features.loc[valid_rows.index],
        y_valid=valid_rows["label"],
    )
    X = features.loc[test_rows.index].droplevel("cutoff")
    catalogue = feature_catalogue(known, vocabulary=vocabulary)
    long = top_reasons(model.contributions(X), X, catalogue)
    return X, model, long


def test_customers_left_unanswered_are_told_so_in_their_reasons(planted):
    X, model, long = planted
    score = pd.Series(model.predict_proba(X)[:, 1], index=X.index)
    waiting = X.index[(X["unanswered_messages_90d"] >= 1) & (score >= score.median())]
    assert len(waiting) >= 10
    care_words = long["sentence"].str.contains("unanswered|never answered|complaint|rating")
    named = long[care_words].index.unique()
    assert waiting.isin(named).mean() >= 0.6


def test_no_unanswered_reason_is_given_to_customers_without_an_unanswered_message(planted):
    X, _, long = planted
    served = X.index[X["unanswered_messages_lifetime"].fillna(0) == 0]
    unanswered = long[long["sentence"].str.contains("unanswered|never answered")]
    assert not unanswered.index.isin(served).any()


def test_windows_of_one_signal_give_one_reason_in_the_words_of_the_strongest():
    catalogue = pd.DataFrame(
        {
            "name": ["orders_30d", "orders_90d", "orders_lifetime", "complaints_90d"],
            "reason": [
                "{orders_30d:.0f} orders in the last 30 days",
                "{orders_90d:.0f} orders in the last 90 days",
                "{orders_lifetime:.0f} orders so far",
                "{complaints_90d:.0f} complaints in the last 90 days",
            ],
        }
    )
    contributions = frame(
        {
            "orders_30d": [0.4, 0.1],
            "orders_90d": [0.5, 0.2],
            "orders_lifetime": [0.3, 0.3],
            "complaints_90d": [0.1, 0.0],
        },
        ["a", "b"],
    )
    features = frame(
        {
            "orders_30d": [0.0, 1.0],
            "orders_90d": [0.0, 1.0],
            "orders_lifetime": [1.0, np.nan],
            "complaints_90d": [2.0, 0.0],
        },
        ["a", "b"],
    )
    reasons = explain(contributions, features, catalogue)
    assert reasons.loc["a"].tolist() == [
        "no orders in the last 90 days",
        "2 complaints in the last 90 days",
        "",
    ]
    # b's strongest window has no value: the next window of the signal speaks instead
    assert reasons.loc["b"].tolist() == ["1 order in the last 90 days", "", ""]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 ratings of 2 stars or less", "1 rating of 2 stars or less"),
        (
            "no order for 1 days; usually orders every 35 days",
            "no order for 1 day; usually orders every 35 days",
        ),
        ("1 replies", "1 reply"),
        ("11 orders so far", "11 orders so far"),
        ("0.1 days", "0.1 days"),
        ("1 class", "1 class"),
        ("0 orders in the last 30 days", "no orders in the last 30 days"),
        (
            "0% of purchases with product category fashion",
            "no purchases with product category fashion",
        ),
        ("10 orders so far", "10 orders so far"),
        ("0.5 orders per month", "0.5 orders per month"),
        ("no order for 0 days", "no order for 0 days"),
    ],
)
def test_a_count_of_one_reads_in_the_singular(text: str, expected: str) -> None:
    assert singular_after_one(text) == expected


@pytest.mark.parametrize(
    ("hours", "expected"),
    [
        (0.3, "waited up to 18 minutes for an answer"),
        (0.02, "waited up to 1 minute for an answer"),
        (0.001, "waited up to under a minute for an answer"),
        (0.999, "waited up to 1 hour for an answer"),
        (5.4, "waited up to 5 hours for an answer"),
        (80.0, "waited up to 3 days for an answer"),
        (float("nan"), None),
    ],
)
def test_waiting_times_read_in_minutes_hours_or_days(hours: float, expected: str | None) -> None:
    template = "waited up to {response_hours_max:hours} for an answer"
    assert fill_reason(template, {"response_hours_max": hours}) == expected


def test_the_catalogues_sentences_name_their_units_and_read_in_the_singular() -> None:
    shop = generate_sample(300, seed=4, start="2024-01-01", days=400)
    reasons = feature_catalogue(shop).set_index("name")["reason"]
    row = {
        "days_since_last_order": 110.0,
        "gap_mean_days": 100.0,
        "order_value_mean": 81.72,
        "first_order_value": 96.78,
        "refunds_lifetime": 1.0,
        "response_hours_median": 0.5,
    }
    assert fill_reason(reasons["overdue_ratio"], row) == (
        "no order for 110 days; usually orders every 100 days"
    )
    assert fill_reason(reasons["order_value_mean"], row) == "spends 81.72 per order on average"
    assert fill_reason(reasons["first_order_value"], row) == "first order worth 96.78"
    assert fill_reason(reasons["refunds_lifetime"], row) == (
        "returned or refunded items 1 time so far"
    )
    assert fill_reason(reasons["response_hours_median"], row) == (
        "answers took 30 minutes (median)"
    )
    assert fill_reason(reasons["category_entropy"], {"category_entropy": 1.58}) == (
        "product category as varied as 3 values used equally"
    )
    assert fill_reason(reasons["category_entropy"], {"category_entropy": 1e15}) is not None
    # a missing value, wherever it sits in the sentence, gives no sentence
    assert fill_reason(reasons["email_click_rate"], {"email_click_rate": np.nan}) is None
    assert fill_reason(reasons["email_clicks_30d"], {"email_clicks_30d": 1.0}) == (
        "1 click on emails in the last 30 days"
    )
    assert fill_reason(reasons["btyd_frequency"], {"btyd_frequency": 1.0}) == (
        "repeat purchases on 1 day"
    )
    assert fill_reason(
        reasons["days_since_last_interaction_other"], {"days_since_last_interaction_other": 3.0}
    ) == ("no interaction on other channels for 3 days")
