"""The synthetic sample: contract, determinism, and the mechanisms a model is meant to learn."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxpredict.config import load_config
from cxpredict.io import load_tables
from cxpredict.sample import (
    CATEGORIES,
    DEFAULT_MECHANISMS,
    INTERACTION_CHANNELS,
    KIND_CHANNELS,
    KINDS,
    ORDER_CHANNELS,
    generate_sample,
    write_sample,
)
from cxpredict.schemas import SCHEMAS, TIMESTAMP_DTYPE, Tables

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "sample"
START = pd.Timestamp("2024-01-01", tz="UTC")
END = pd.Timestamp("2026-01-01", tz="UTC")  # 730 days after START
TABLES = ("orders", "interactions", "customers")


@pytest.fixture(scope="module")
def sample() -> Tables:
    return generate_sample(3000, seed=7)


def _lapsed(tables: Tables) -> pd.Series:
    """Whether each customer lapsed within the period, indexed by customer_id."""
    truth = tables.extra["truth"]
    return pd.Series(truth["lapsed_at"].notna().to_numpy(), index=truth["customer_id"])


# --------------------------------------------------------------------------- the contract


def test_generated_tables_satisfy_the_data_contract(sample: Tables) -> None:
    for name in TABLES:
        SCHEMAS[name].validate(sample.get(name), lazy=True)
    orders, interactions = sample.orders, sample.interactions
    assert str(orders["timestamp"].dtype) == TIMESTAMP_DTYPE
    assert str(interactions["responded_at"].dtype) == TIMESTAMP_DTYPE
    assert str(sample.customers["signup_at"].dtype) == TIMESTAMP_DTYPE
    assert orders["amount"].dtype == np.float64
    assert orders["quantity"].dtype == pd.Int64Dtype()
    assert interactions["rating"].dtype == np.float64
    for column in ("customer_id", "order_id", "category", "channel"):
        assert orders[column].dtype == pd.StringDtype(na_value=np.nan), column


def test_columns_come_in_the_canonical_order_then_attributes(sample: Tables) -> None:
    assert list(sample.orders.columns) == [
        "customer_id",
        "timestamp",
        "amount",
        "order_id",
        "quantity",
        "category",
        "channel",
    ]
    assert list(sample.interactions.columns) == [
        "customer_id",
        "timestamp",
        "channel",
        "kind",
        "responded_at",
        "rating",
    ]
    assert list(sample.customers.columns) == [
        "customer_id",
        "signup_at",
        "country",
        "segment",
        "acquisition_channel",
    ]


def test_customer_ids_are_zero_padded_and_numbered_in_signup_order(sample: Tables) -> None:
    customers = sample.customers
    assert customers["customer_id"].tolist() == [f"C{i:06d}" for i in range(1, 3001)]
    assert customers["signup_at"].is_monotonic_increasing


def test_customer_ids_widen_beyond_a_million_customers() -> None:
    from cxpredict.sample import _fixed_ids

    ids = _fixed_ids("C", np.array([1, 1_234_567]), 7).to_pylist()
    assert ids == ["C0000001", "C1234567"]


def test_rows_are_sorted_by_time_then_customer(sample: Tables) -> None:
    for name, column in (("orders", "timestamp"), ("interactions", "timestamp")):
        frame = sample.get(name)
        expected = frame.sort_values([column, "customer_id"], kind="stable")
        pd.testing.assert_frame_equal(frame, expected.reset_index(drop=True))


def test_order_ids_are_unique(sample: Tables) -> None:
    assert sample.orders["order_id"].is_unique


def test_every_event_falls_within_the_period_at_whole_seconds(sample: Tables) -> None:
    for frame, column in (
        (sample.orders, "timestamp"),
        (sample.interactions, "timestamp"),
        (sample.interactions, "responded_at"),
        (sample.customers, "signup_at"),
    ):
        values = frame[column].dropna()
        assert values.min() >= START and values.max() < END, column
        assert (values == values.dt.floor("s")).all(), column


def test_no_order_precedes_the_customers_signup(sample: Tables) -> None:
    signup = sample.customers.set_index("customer_id")["signup_at"]
    for frame in (sample.orders, sample.interactions):
        assert (frame["timestamp"] >= frame["customer_id"].map(signup)).all()


def test_there_are_no_exact_duplicate_rows(sample: Tables) -> None:
    for name in TABLES:
        assert not sample.get(name).duplicated().any(), name


def test_each_kind_happens_on_its_own_channels(sample: Tables) -> None:
    interactions = sample.interactions
    assert set(interactions["kind"]) == set(KINDS)
    assert set(interactions["channel"]) <= set(INTERACTION_CHANNELS)
    for kind, channels in KIND_CHANNELS.items():
        assert set(interactions.loc[interactions["kind"] == kind, "channel"]) <= set(channels)
    assert set(sample.orders["category"]) == set(CATEGORIES)
    assert set(sample.orders["channel"]) == set(ORDER_CHANNELS)


def test_only_messages_and_complaints_get_answers_and_never_before_they_were_sent(
    sample: Tables,
) -> None:
    interactions = sample.interactions
    answered = interactions["responded_at"].notna()
    assert set(interactions.loc[answered, "kind"]) == {"message", "complaint"}
    assert (
        interactions.loc[answered, "responded_at"] >= interactions.loc[answered, "timestamp"]
    ).all()
    contacts = interactions["kind"].isin(["message", "complaint"])
    assert 0.05 < 1 - answered[contacts].mean() < 0.4


def test_ratings_are_whole_stars_on_reviews_only(sample: Tables) -> None:
    interactions = sample.interactions
    rated = interactions["rating"].notna()
    assert (rated == (interactions["kind"] == "review")).all()
    assert set(interactions.loc[rated, "rating"]) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_refunds_are_a_small_share_of_negative_orders_after_the_order_they_refund(
    sample: Tables,
) -> None:
    orders = sample.orders
    refunds = orders[orders["amount"] < 0]
    assert 0.01 < len(refunds) / len(orders) < 0.06
    assert refunds["order_id"].str.startswith("R").all()
    assert refunds["quantity"].isna().all()
    assert (orders.loc[orders["amount"] > 0, "quantity"] >= 1).all()
    originals = orders.set_index("order_id")
    refunded = originals.loc["O" + refunds["order_id"].str[1:]]
    assert (refunded["customer_id"].to_numpy() == refunds["customer_id"].to_numpy()).all()
    assert (refunded["timestamp"].to_numpy() < refunds["timestamp"].to_numpy()).all()
    assert (-refunds["amount"].to_numpy() <= refunded["amount"].to_numpy()).all()


def test_defaults_average_about_ten_orders_and_ten_interactions_per_customer(
    sample: Tables,
) -> None:
    assert 7 < len(sample.orders) / 3000 < 13
    assert 7 < len(sample.interactions) / 3000 < 13
    per_customer = sample.orders.groupby("customer_id").size()
    assert per_customer.max() > 8 * per_customer.median()  # heavy-tailed


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 60),
    seed=st.integers(0, 2**32 - 1),
    days=st.integers(1, 800),
    start=st.sampled_from(["2024-01-01", "2023-11-20T13:45:10", "2025-02-28T23:59:59Z"]),
)
def test_any_small_sample_satisfies_the_contract_within_its_period(
    n: int, seed: int, days: int, start: str
) -> None:
    tables = generate_sample(n, seed=seed, start=start, days=days)
    first = pd.Timestamp(start)
    first = first.tz_localize("UTC") if first.tzinfo is None else first
    last = first + pd.Timedelta(days=days)
    assert len(tables.customers) == n
    for name in TABLES:
        SCHEMAS[name].validate(tables.get(name), lazy=True)
    for frame in (tables.orders, tables.interactions):
        assert frame.empty or (frame["timestamp"].min() >= first.floor("s"))
        assert frame.empty or (frame["timestamp"].max() < last)


def test_too_few_customers_or_days_are_refused() -> None:
    with pytest.raises(ValueError, match="n_customers must be at least 1; got 0"):
        generate_sample(0)
    with pytest.raises(ValueError, match="days must be at least 1; got -3"):
        generate_sample(10, days=-3)


# --------------------------------------------------------------------------- determinism


def test_the_same_seed_gives_identical_tables() -> None:
    first, second = generate_sample(500, seed=3), generate_sample(500, seed=3)
    for name in TABLES:
        pd.testing.assert_frame_equal(first.get(name), second.get(name))


def test_another_seed_gives_other_tables() -> None:
    first, second = generate_sample(500, seed=3), generate_sample(500, seed=4)
    assert not first.orders["timestamp"].equals(second.orders["timestamp"])


def test_the_same_seed_writes_byte_identical_files(tmp_path: Path) -> None:
    digests = []
    for folder in ("a", "b"):
        paths = write_sample(generate_sample(300, seed=5), tmp_path / folder)
        digests.append({k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in paths.items()})
    assert digests[0] == digests[1]


# --------------------------------------------------------------------------- writing


def test_csv_files_have_iso_utc_timestamps_at_second_precision(tmp_path: Path) -> None:
    paths = write_sample(generate_sample(200, seed=1), tmp_path)
    assert sorted(paths) == sorted(TABLES)
    header, first = paths["orders"].read_text().splitlines()[:2]
    assert header == "customer_id,timestamp,amount,order_id,quantity,category,channel"
    stamp = first.split(",")[1]
    assert len(stamp) == 20 and stamp.endswith("Z") and stamp[10] == "T"
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_written_tables_read_back_identically(tmp_path: Path, fmt: str) -> None:
    tables = generate_sample(300, seed=2)
    paths = write_sample(tables, tmp_path, fmt=fmt)
    for name in TABLES:
        if fmt == "parquet":
            back = pd.read_parquet(paths[name])
        else:
            back = pd.read_csv(paths[name], dtype={"quantity": "Int64"})
            for column in ("timestamp", "responded_at", "signup_at"):
                if column in back.columns:
                    back[column] = pd.to_datetime(back[column], utc=True).astype(TIMESTAMP_DTYPE)
        pd.testing.assert_frame_equal(back, tables.get(name), check_dtype=fmt == "parquet")


def test_an_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fmt must be 'csv' or 'parquet'; got 'xlsx'"):
        write_sample(generate_sample(5), tmp_path, fmt="xlsx")


def test_the_committed_sample_is_what_the_generator_writes(tmp_path: Path) -> None:
    paths = write_sample(generate_sample(2000, seed=42), tmp_path)
    for path in paths.values():
        committed = SAMPLE_DIR / path.name
        assert committed.read_bytes() == path.read_bytes(), f"regenerate {committed}"
        assert committed.stat().st_size < 3 * 2**20


def test_the_committed_sample_loads_without_a_single_rejected_row() -> None:
    config = load_config(SAMPLE_DIR / "cxpredict.yaml")
    result = load_tables(config, run_at=END)
    generated = generate_sample(2000, seed=42)
    for name in TABLES:
        assert result.reports[name].rows_rejected == 0, name
        pd.testing.assert_frame_equal(result.tables.get(name), generated.get(name))


# --------------------------------------------------------------------------- mechanisms


def test_unanswered_complaints_raise_the_lapse_rate(sample: Tables) -> None:
    interactions = sample.interactions
    lapsed = _lapsed(sample)
    unanswered = interactions[
        (interactions["kind"] == "complaint") & interactions["responded_at"].isna()
    ]
    # Only complaints sent while the customer was still active can have caused the lapse.
    truth = sample.extra["truth"].set_index("customer_id")
    before = unanswered["timestamp"] < unanswered["customer_id"].map(truth["disengaged_at"])
    hit = lapsed.index.isin(unanswered.loc[before | before.isna(), "customer_id"])
    assert lapsed[hit].mean() > lapsed[~hit].mean() + 0.2


def test_without_care_effects_unanswered_messages_no_longer_matter() -> None:
    calm = dataclasses.replace(DEFAULT_MECHANISMS, care_hazard=0.0)
    rates = []
    for mechanisms in (DEFAULT_MECHANISMS, calm):
        tables = generate_sample(3000, seed=11, mechanisms=mechanisms)
        contacts = tables.interactions[tables.interactions["kind"].isin(["message", "complaint"])]
        ignored = contacts.loc[contacts["responded_at"].isna(), "customer_id"].unique()
        lapsed = _lapsed(tables)
        hit = lapsed.index.isin(ignored)
        rates.append(lapsed[hit].mean() - lapsed[~hit].mean())
    assert rates[0] > 0.2
    assert rates[1] < rates[0] / 2


def test_customers_heading_toward_a_lapse_rate_lower(sample: Tables) -> None:
    reviews = sample.interactions[sample.interactions["kind"] == "review"]
    truth = sample.extra["truth"].set_index("customer_id")
    disengaging = reviews["timestamp"] >= reviews["customer_id"].map(truth["disengaged_at"])
    assert (
        reviews.loc[disengaging, "rating"].mean() < reviews.loc[~disengaging, "rating"].mean() - 1
    )


def test_email_engagement_fades_before_a_lapse_and_orders_stop_after_it(sample: Tables) -> None:
    truth = sample.extra["truth"].set_index("customer_id")
    signup = sample.customers.set_index("customer_id")["signup_at"]
    lapsed = truth.dropna(subset=["lapsed_at"])
    opens = sample.interactions[sample.interactions["kind"] == "email_open"]
    opens = opens[opens["customer_id"].isin(lapsed.index)]
    drift, lapse = (opens["customer_id"].map(lapsed[c]) for c in ("disengaged_at", "lapsed_at"))
    active_days = (
        (lapsed["disengaged_at"] - signup.reindex(lapsed.index)).dt.days.clip(lower=1).sum()
    )
    fading_days = (lapsed["lapsed_at"] - lapsed["disengaged_at"]).dt.days.clip(lower=1).sum()
    active_rate = (opens["timestamp"] < drift).sum() / active_days
    fading_rate = ((opens["timestamp"] >= drift) & (opens["timestamp"] < lapse)).sum() / fading_days
    assert fading_rate < 0.5 * active_rate
    orders = sample.orders[sample.orders["amount"] > 0]
    after = orders["timestamp"] >= orders["customer_id"].map(truth["lapsed_at"])
    assert not after.any()


def test_some_customers_never_lapse_and_many_do(sample: Tables) -> None:
    share = _lapsed(sample).mean()
    assert 0.2 < share < 0.7


def test_demand_peaks_in_november_and_december_and_dips_in_summer(sample: Tables) -> None:
    orders = sample.orders[sample.orders["timestamp"] >= pd.Timestamp("2025-01-01", tz="UTC")]
    per_month = orders.groupby(orders["timestamp"].dt.month).size()
    assert per_month[[11, 12]].mean() > 1.25 * per_month[[9, 10]].mean()
    assert per_month[[7, 8]].mean() < per_month[[5, 6, 9]].mean()


def test_customers_prefer_some_order_channels_and_categories(sample: Tables) -> None:
    orders = sample.orders[sample.orders["amount"] > 0]
    regular = orders.groupby("customer_id").filter(lambda g: len(g) >= 10)
    for column, options in (("channel", ORDER_CHANNELS), ("category", CATEGORIES)):
        top_share = regular.groupby("customer_id")[column].agg(
            lambda s: s.value_counts(normalize=True).iloc[0]
        )
        assert top_share.mean() > 2 / len(options), column


def test_category_tastes_drift_over_a_customers_life() -> None:
    def distance(mechanisms: object) -> float:
        orders = generate_sample(2000, seed=9, mechanisms=mechanisms).orders
        orders = orders[orders["amount"] > 0]
        regular = orders.groupby("customer_id").filter(lambda g: len(g) >= 20)
        half = (
            regular.groupby("customer_id").cumcount()
            < regular.groupby("customer_id")["customer_id"].transform("size") // 2
        )
        shares = (
            regular.assign(half=half)
            .groupby(["customer_id", "half"])["category"]
            .value_counts(normalize=True)
            .unstack(fill_value=0.0)
        )
        early = shares.xs(True, level="half")
        late = shares.xs(False, level="half").reindex(early.index, fill_value=0.0)
        return float((early - late).abs().sum(axis=1).mean() / 2)

    steady = dataclasses.replace(DEFAULT_MECHANISMS, category_drift_days=1e9, gift_share=0.0)
    drifting = dataclasses.replace(DEFAULT_MECHANISMS, gift_share=0.0)
    assert distance(drifting) > distance(steady) + 0.05
