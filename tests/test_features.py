"""The feature API: cutoff boundaries, many cutoffs at once, the contract of every family,
vocabulary, catalogue, Parquet sources and agreement with the BTYD reference."""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import importlib.util
import json
import threading
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CUTOFF, order_grouping_forced, recorded_sql

from cxpredict.baselines import btyd_summary
from cxpredict.config import FeaturesConfig
from cxpredict.errors import DataError, OutOfMemory
from cxpredict.explain import fill_reason
from cxpredict.features import (
    FAMILIES,
    Vocabulary,
    build_features,
    build_training_features,
    catalogue_version,
    engine,
    feature_catalogue,
    feature_fingerprints,
    learn_vocabulary,
    rfm,
)
from cxpredict.features import build as build_module
from cxpredict.features.engine import session
from cxpredict.features.season import SEASON_FEATURES
from cxpredict.sample import generate_sample
from cxpredict.schemas import Tables
from cxpredict.spine import population, spine

MICROSECOND = pd.Timedelta(microseconds=1)


@pytest.fixture(scope="module")
def shop() -> Tables:
    """A small synthetic shop: 150 customers over 400 days."""
    return generate_sample(150, seed=3, start="2024-01-01", days=400)


# -- the cutoff instant ----------------------------------------------------------------------


def test_an_order_at_the_cutoff_instant_is_not_a_feature(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    at = build_features(tiny, CUTOFF, vocabulary=tiny_vocabulary)
    after = build_features(tiny, CUTOFF + MICROSECOND, vocabulary=tiny_vocabulary)
    assert at.loc["c1", "orders_lifetime"] == 3
    assert after.loc["c1", "orders_lifetime"] == 4
    assert at.loc["c1", "visits_7d"] == 2
    assert after.loc["c1", "visits_7d"] == 3


def test_an_order_one_microsecond_before_the_cutoff_is_a_feature(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    before = build_features(tiny, CUTOFF - MICROSECOND, vocabulary=tiny_vocabulary)
    at = build_features(tiny, CUTOFF, vocabulary=tiny_vocabulary)
    assert "c2" not in before.index or before.loc["c2", "orders_lifetime"] == 0
    assert at.loc["c2", "orders_lifetime"] == 1
    assert at.loc["c2", "days_since_last_order"] == pytest.approx(1 / 86_400_000_000)


def test_an_answer_given_one_microsecond_before_the_cutoff_is_an_answer(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    interactions = tiny.interactions.copy()
    late = interactions["kind"] == "complaint"
    interactions.loc[late, "responded_at"] = CUTOFF - MICROSECOND
    tables = Tables(tiny.orders, interactions, tiny.customers)
    got = build_features(tables, CUTOFF, vocabulary=tiny_vocabulary)
    assert got.loc["c1", "unanswered_messages_lifetime"] == 0
    assert got.loc["c1", "response_hours_max"] == pytest.approx(36.0 - 1 / 3_600_000_000)


def test_customers_are_those_with_a_first_order_or_signup_before_the_cutoff(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    got = build_features(tiny, CUTOFF, vocabulary=tiny_vocabulary)
    assert list(got.index) == ["c1", "c2", "c3"]
    pd.testing.assert_index_equal(got.index, population(tiny, CUTOFF))


def test_a_cutoff_is_always_given() -> None:
    with pytest.raises(TypeError):
        build_features(Tables(pd.DataFrame()))  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="no cutoff given"):
        build_training_features(Tables(pd.DataFrame()), [])


@pytest.mark.parametrize("cutoff", ["1600-01-01", "2262-04-12", "2300-01-01"])
def test_a_cutoff_outside_the_supported_years_is_refused_by_name(tiny: Tables, cutoff: str) -> None:
    with pytest.raises(ValueError, match=f"cutoff {cutoff} .*outside the years 1900-2200"):
        build_features(tiny, cutoff)


# -- many cutoffs ----------------------------------------------------------------------------


def test_an_order_counts_at_its_first_line_and_is_worth_its_lines_before_the_cutoff(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    # c2's order o4 (10 just before the cutoff) gets two more lines after it: before them it
    # is worth 10 and is the largest order, whether built alone or among later cutoffs.
    late = pd.DataFrame(
        {
            "customer_id": ["c2", "c2", "c2"],
            "order_id": ["o4", "o4", "o9"],
            "timestamp": pd.to_datetime(
                ["2024-03-03T00:00", "2024-03-05T00:00", "2024-02-01T00:00"], utc=True
            ).astype("datetime64[us, UTC]"),
            "amount": [1.0, 500.0, 5.0],
            "category": ["hats", "hats", "hats"],
            "channel": ["app", "app", "app"],
        }
    )
    orders = pd.concat([tiny.orders, late], ignore_index=True)
    shop = Tables(orders, tiny.interactions, tiny.customers)
    between, later = CUTOFF + pd.Timedelta(days=3), CUTOFF + pd.Timedelta(days=10)
    many = build_training_features(shop, [CUTOFF, between, later], vocabulary=tiny_vocabulary)
    for cutoff, largest in ((CUTOFF, 10), (between, 11), (later, 511)):
        alone = build_features(shop, cutoff, vocabulary=tiny_vocabulary)
        for frame in (alone, many.xs(cutoff, level="cutoff")):
            assert frame.loc["c2", "orders_lifetime"] == 2
            assert frame.loc["c2", "order_value_max"] == largest


def test_features_at_one_cutoff_equal_those_built_among_many(shop: Tables) -> None:
    cutoffs = [
        pd.Timestamp("2024-06-01", tz="UTC"),
        pd.Timestamp("2024-08-17 13:45:10", tz="UTC"),
        pd.Timestamp("2024-10-01", tz="UTC"),
        pd.Timestamp("2025-01-01 06:00", tz="UTC"),
    ]
    vocabulary = learn_vocabulary(shop, cutoffs[-1])
    many = build_training_features(shop, cutoffs, vocabulary=vocabulary)
    assert many.index.names == ["customer_id", "cutoff"]
    for cutoff in cutoffs:
        alone = build_features(shop, cutoff, vocabulary=vocabulary)
        pd.testing.assert_frame_equal(many.xs(cutoff, level="cutoff"), alone, check_exact=True)


def test_a_source_covering_few_customers_gives_the_same_features_at_one_cutoff(
    shop: Tables,
) -> None:
    # At one cutoff a fetch covering most customers is kept in customer order, one covering
    # few is kept sparse: both read the same as among several cutoffs.
    two = sorted(shop.interactions["customer_id"].unique())[:2]
    few = shop.interactions[shop.interactions["customer_id"].isin(two)]
    tables = Tables(shop.orders, few, shop.customers)
    cutoffs = [pd.Timestamp("2024-06-01", tz="UTC"), pd.Timestamp("2025-01-01", tz="UTC")]
    vocabulary = learn_vocabulary(tables, cutoffs[-1])
    many = build_training_features(tables, cutoffs, vocabulary=vocabulary)
    alone = build_features(tables, cutoffs[-1], vocabulary=vocabulary)
    pd.testing.assert_frame_equal(many.xs(cutoffs[-1], level="cutoff"), alone, check_exact=True)
    assert alone["days_since_last_interaction"].notna().sum() == 2


def test_the_session_is_closed_once_even_when_no_thread_can_close_it(
    shop: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[int] = []
    close = engine.Session.close
    start = threading.Thread.start

    def counted(self: engine.Session) -> None:
        closed.append(1)
        close(self)

    def no_thread(self: threading.Thread) -> None:
        if self.name == "cxpredict-close":
            raise RuntimeError("can't start new thread")
        start(self)

    monkeypatch.setattr(engine.Session, "close", counted)
    expected = build_features(shop, "2024-10-01")
    assert closed == [1]
    monkeypatch.setattr(threading.Thread, "start", no_thread)
    pd.testing.assert_frame_equal(build_features(shop, "2024-10-01"), expected)
    assert closed == [1, 1]


def test_a_failed_close_is_raised_and_noted_on_an_error_of_the_assembly(
    shop: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: engine.Session) -> None:
        self.con.close()
        raise OSError("spill folder vanished")

    monkeypatch.setattr(engine.Session, "close", broken)
    with pytest.raises(OSError, match="spill folder vanished"):
        build_features(shop, "2024-10-01")

    def failing(*args: object, **kwargs: object) -> None:
        raise MemoryError("no room for the output")

    monkeypatch.setattr(build_module, "_assemble", failing)
    with pytest.raises(MemoryError) as raised:
        build_features(shop, "2024-10-01")
    assert "closing the DuckDB session failed too" in str(raised.value.__notes__)


@pytest.mark.parametrize(("cells", "scattered"), [(1, False), (7, False), (64, False), (7, True)])
def test_features_are_the_same_whatever_the_size_of_the_customer_blocks(
    shop: Tables, cells: int, scattered: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    cutoffs = ["2024-03-01", "2024-06-01", "2024-09-01 12:00", "2025-01-01"]
    vocabulary = learn_vocabulary(shop, cutoffs[-1])
    whole = build_training_features(shop, cutoffs, vocabulary=vocabulary)
    one = build_features(shop, cutoffs[1], vocabulary=vocabulary)
    monkeypatch.setattr(engine, "BLOCK_CELLS", cells)
    if scattered:
        # As with many cutoffs: each block's cells copied in one scatter.
        monkeypatch.setattr(build_module, "_RUNS_UP_TO", 0)
    pd.testing.assert_frame_equal(
        build_training_features(shop, cutoffs, vocabulary=vocabulary), whole, check_exact=True
    )
    pd.testing.assert_frame_equal(
        build_features(shop, cutoffs[1], vocabulary=vocabulary), one, check_exact=True
    )


def test_features_are_the_same_whether_one_thread_or_several_compute_the_blocks(
    shop: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    cutoffs = ["2024-03-01", "2024-06-01", "2025-01-01"]
    vocabulary = learn_vocabulary(shop, cutoffs[-1])
    monkeypatch.setattr(engine, "BLOCK_CELLS", 16)
    alone = build_training_features(
        shop, cutoffs, vocabulary=vocabulary, settings=FeaturesConfig(duckdb_threads=1)
    )
    assert build_module._workers(1) == 1
    assert build_module._workers(4) == 4
    together = build_training_features(
        shop, cutoffs, vocabulary=vocabulary, settings=FeaturesConfig(duckdb_threads=4)
    )
    pd.testing.assert_frame_equal(together, alone, check_exact=True)


def test_an_error_in_one_block_of_customers_is_raised_from_the_build(
    shop: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "BLOCK_CELLS", 16)
    family = build_module.FAMILIES[0]

    def compute(ctx, part):
        if part.number == 3:
            raise ZeroDivisionError("planted")
        yield from family.compute(ctx, part)

    planted = dataclasses.replace(family, compute=compute)
    monkeypatch.setattr(build_module, "FAMILIES", (planted, *build_module.FAMILIES[1:]))
    with pytest.raises(ZeroDivisionError, match="planted"):
        build_features(shop, "2024-10-01", settings=FeaturesConfig(duckdb_threads=2))


def test_a_training_set_has_the_rows_of_the_spine(shop: Tables) -> None:
    cutoffs = ["2024-05-01", "2024-09-01", "2025-01-01"]
    got = build_training_features(shop, cutoffs)
    pd.testing.assert_index_equal(got.index, spine(shop, cutoffs))


# -- the contract of every family ------------------------------------------------------------


def _family_names(tables: Tables, vocabulary: Vocabulary, family: str) -> list[str]:
    catalogue = feature_catalogue(tables, vocabulary=vocabulary)
    chosen = catalogue[(catalogue["family"] == family) & catalogue["available"]]
    return list(chosen["name"])


@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_every_family_keeps_the_feature_contract(shop: Tables, family: str) -> None:
    cutoff = pd.Timestamp("2024-11-01", tz="UTC")
    frames = {
        name: copy.deepcopy(shop.get(name)) for name in ("orders", "interactions", "customers")
    }
    vocabulary = learn_vocabulary(shop, cutoff)
    got = build_features(shop, cutoff, vocabulary=vocabulary)
    names = _family_names(shop, vocabulary, family)
    assert names, f"family {family} has no available feature on the sample"
    part = got[names]
    assert part.index.name == "customer_id"
    assert part.index.dtype == "str"
    assert part.index.is_unique and part.index.is_monotonic_increasing
    assert all(dtype == np.float64 for dtype in part.dtypes)
    pd.testing.assert_index_equal(part.index, population(shop, cutoff))
    catalogue = feature_catalogue(shop, vocabulary=vocabulary)
    assert list(catalogue.loc[catalogue["available"], "name"]) == list(got.columns)
    for name in ("orders", "interactions", "customers"):
        pd.testing.assert_frame_equal(shop.get(name), frames[name])


@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_every_family_works_without_the_optional_tables(shop: Tables, family: str) -> None:
    cutoff = pd.Timestamp("2024-11-01", tz="UTC")
    orders_only = Tables(shop.orders.drop(columns=["category", "channel"]))
    vocabulary = learn_vocabulary(orders_only, cutoff)
    got = build_features(orders_only, cutoff, vocabulary=vocabulary)
    catalogue = feature_catalogue(orders_only, vocabulary=vocabulary)
    mine = catalogue[catalogue["family"] == family]
    assert set(mine.loc[mine["available"], "name"]) <= set(got.columns)
    missing = mine[~mine["available"]]
    assert not set(missing["name"]) & set(got.columns)
    assert (missing["why_not"] != "").all()
    pd.testing.assert_index_equal(got.index, population(orders_only, cutoff))


def test_a_skipped_family_says_which_table_or_column_is_missing(shop: Tables) -> None:
    catalogue = feature_catalogue(Tables(shop.orders.drop(columns=["category"])))
    why = catalogue.set_index("name")["why_not"]
    assert why["share_category_other"] == "orders has no category column"
    assert why["visits_30d"] == "no interactions table"
    assert why["days_since_signup"] == "no customers table"
    assert why["orders_30d"] == ""


# -- vocabulary ------------------------------------------------------------------------------


def test_the_vocabulary_keeps_the_most_frequent_values_before_the_instant(tiny: Tables) -> None:
    vocabulary = learn_vocabulary(tiny, CUTOFF, max_values=1, min_customers=1)
    assert vocabulary.get("orders.category") == ("shoes",)
    assert vocabulary.get("customers.segment") == ("gold",)
    assert vocabulary.numeric == ("age",)
    earlier = learn_vocabulary(tiny, "2024-01-01", max_values=5)
    assert earlier.get("orders.category") == ("shoes",)


def test_attribute_values_of_few_customers_never_reach_a_model(shop: Tables) -> None:
    customers = shop.customers.assign(
        email=[f"person{k}@example.com" for k in range(len(shop.customers))]
    )
    tables = Tables(shop.orders, shop.interactions, customers)
    vocabulary = learn_vocabulary(tables, "2025-01-01")
    assert not vocabulary.has("customers.email")  # every address is one customer's
    # BE (9 customers) and NL (6) are under the default 10: they count as "other"
    assert vocabulary.get("customers.country") == ("FR", "DE", "GB", "ES", "IT")
    frame = build_features(tables, "2025-01-01")
    assert not [c for c in frame.columns if c.startswith("attr_email") or "example" in c]
    assert "attr_country_it" in frame.columns and "attr_country_be" not in frame.columns
    looser = learn_vocabulary(tables, "2025-01-01", min_customers=6)
    assert looser.get("customers.country")[-2:] == ("BE", "NL")
    # in a history, a customer's many rows are still one customer
    first = customers.iloc[[0]]
    updates = pd.concat([first] * 12, ignore_index=True).assign(
        updated_at=pd.date_range("2024-02-01", periods=12, freq="D", tz="UTC"), tier="vip"
    )
    history = pd.concat([customers.assign(updated_at=pd.NaT, tier=None), updates])
    learnt = learn_vocabulary(Tables(shop.orders, shop.interactions, history), "2025-01-01")
    assert not learnt.has("customers.tier")


def test_the_configured_vocabulary_cap_limits_the_one_hot_columns(tiny: Tables) -> None:
    got = build_features(tiny, CUTOFF, settings=FeaturesConfig(vocabulary_max_values=1))
    shares = [c for c in got.columns if c.startswith("share_category_")]
    assert shares == ["share_category_shoes", "share_category_other"]


def test_a_vocabulary_round_trips_through_json(tiny_vocabulary: Vocabulary) -> None:
    text = tiny_vocabulary.to_json()
    assert json.loads(text)["values"]["orders.category"] == ["shoes", "bags"]
    assert Vocabulary.from_json(text) == tiny_vocabulary


def test_values_outside_the_vocabulary_count_as_other(tiny: Tables) -> None:
    vocabulary = Vocabulary(values=(("orders.category", ("bags",)),))
    got = build_features(tiny, CUTOFF, vocabulary=vocabulary)
    assert got.loc["c1", "share_category_other"] == 0.75
    assert "share_category_shoes" not in got.columns


def test_slugs_are_unique_and_never_other() -> None:
    vocabulary = Vocabulary(values=(("orders.channel", ("Web Shop", "web-shop", "other")),))
    assert vocabulary.slugs("orders.channel") == ("web_shop", "web_shop_2", "other_2")


# -- catalogue -------------------------------------------------------------------------------


def test_every_reason_formats_with_a_feature_row(tiny: Tables, tiny_vocabulary: Vocabulary) -> None:
    got = build_features(tiny, CUTOFF, vocabulary=tiny_vocabulary)
    catalogue = feature_catalogue(tiny, vocabulary=tiny_vocabulary)
    row = got.loc["c1"].to_dict()
    for name, reason in catalogue.loc[catalogue["available"], ["name", "reason"]].values:
        # the season says nothing about the customer: it is never a reason
        assert fill_reason(reason, row) if name not in SEASON_FEATURES else reason == ""
    assert fill_reason(catalogue.set_index("name").loc["overdue_ratio", "reason"], row) == (
        "no order for 20 days; usually orders every 26 days"
    )


def test_the_catalogue_version_changes_with_the_columns(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    one = catalogue_version(feature_catalogue(tiny, vocabulary=tiny_vocabulary))
    again = catalogue_version(feature_catalogue(tiny, vocabulary=tiny_vocabulary))
    other = catalogue_version(
        feature_catalogue(tiny, vocabulary=tiny_vocabulary, settings=FeaturesConfig(windows=(7,)))
    )
    assert one == again != other
    assert one.startswith("features-")


def test_a_feature_keeps_its_fingerprint_when_other_features_are_added() -> None:
    rfm = {
        "name": ["orders_30d", "spend_30d"],
        "family": ["rfm", "rfm"],
        "description": ["orders in the last 30 days", "spend in the last 30 days"],
        "unit": ["orders", "currency"],
    }
    visits = {"name": "visits_30d", "family": "engagement", "description": "visits", "unit": "n"}
    wider = {column: [*values, visits[column]] for column, values in rfm.items()}
    reworded = {**rfm, "description": ["orders in the last 30 days", "net spend, 30 days"]}

    # the version of registered models stays what it was before fingerprints existed
    assert catalogue_version(rfm) == "features-1-c2bc58b7a2af"
    assert catalogue_version(wider) != catalogue_version(rfm)
    assert feature_fingerprints(wider).items() > feature_fingerprints(rfm).items()
    changed = feature_fingerprints(reworded)
    assert changed["orders_30d"] == feature_fingerprints(rfm)["orders_30d"]
    assert changed["spend_30d"] != feature_fingerprints(rfm)["spend_30d"]


# -- sources ---------------------------------------------------------------------------------


def test_parquet_sources_give_the_same_features(
    tiny: Tables, tiny_vocabulary: Vocabulary, tmp_path
) -> None:
    paths = {}
    for name in ("orders", "interactions", "customers"):
        folder = tmp_path / name
        folder.mkdir()
        tiny.get(name).to_parquet(folder / "part-0.parquet")
        paths[name] = folder
    from_files = build_features(paths, CUTOFF, vocabulary=tiny_vocabulary)
    in_memory = build_features(tiny, CUTOFF, vocabulary=tiny_vocabulary)
    pd.testing.assert_frame_equal(from_files, in_memory)


def test_the_engine_spills_into_the_configured_folder_with_the_same_features(
    tiny: Tables, tiny_vocabulary: Vocabulary, tmp_path
) -> None:
    spill = tmp_path / "spill"
    settings = FeaturesConfig(
        duckdb_memory_limit="64MB", duckdb_threads=1, duckdb_temp_directory=spill
    )
    with session(tiny, temp_directory=settings.duckdb_temp_directory) as s:
        folder = s.con.execute("SELECT current_setting('temp_directory')").fetchone()
    assert folder == (str(spill),)
    limited = build_features(tiny, CUTOFF, settings=settings, vocabulary=tiny_vocabulary)
    default = build_features(tiny, CUTOFF, vocabulary=tiny_vocabulary)
    pd.testing.assert_frame_equal(limited, default)


def test_a_missing_column_is_reported_with_the_columns_found(tiny: Tables) -> None:
    orders = tiny.orders.rename(columns={"amount": "revenue"})
    with pytest.raises(DataError, match=r"orders: column\(s\) \['amount'\] not found.*revenue"):
        build_features(Tables(orders), CUTOFF)


def test_btyd_features_agree_with_the_reference_summary(shop: Tables) -> None:
    cutoff = pd.Timestamp("2024-12-01", tz="UTC")
    got = build_features(shop, cutoff)
    purchases = shop.orders[shop.orders["amount"] >= 0]
    reference = btyd_summary(purchases, cutoff)
    mine = got.loc[reference.index, ["btyd_frequency", "btyd_recency_weeks", "btyd_t_weeks"]]
    np.testing.assert_array_equal(mine["btyd_frequency"], reference["frequency"])
    np.testing.assert_allclose(mine["btyd_recency_weeks"], reference["recency"], rtol=1e-12)
    np.testing.assert_allclose(mine["btyd_t_weeks"], reference["T"], rtol=1e-12)


def test_care_without_answers_or_ratings_keeps_the_other_care_features(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    interactions = tiny.interactions.drop(columns=["responded_at", "rating"])
    tables = Tables(tiny.orders, interactions, tiny.customers)
    got = build_features(tables, CUTOFF, vocabulary=tiny_vocabulary)
    catalogue = feature_catalogue(tables, vocabulary=tiny_vocabulary).set_index("name")
    assert catalogue.loc["unanswered_share", "why_not"] == "interactions has no responded_at column"
    assert catalogue.loc["rating_mean", "why_not"] == "interactions has no rating column"
    assert "unanswered_share" not in got.columns and "rating_mean" not in got.columns
    assert got.loc["c1", "messages_7d"] == 1
    assert got.loc["c2", "days_since_last_message"] == 51


def test_attributes_without_dates_are_used_as_they_are(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    customers = tiny.customers[["customer_id", "segment", "age"]]
    got = build_features(Tables(tiny.orders, None, customers), CUTOFF, vocabulary=tiny_vocabulary)
    assert list(got.index) == ["c1", "c2"]
    assert got["attr_segment_gold"].tolist() == [1.0, 0.0]
    assert got["attr_age"].iloc[0] == 30.0


# -- memory ----------------------------------------------------------------------------------


def test_a_build_restores_numpys_huge_page_setting_when_the_last_one_leaves() -> None:
    advice = np._core.multiarray
    before = advice._get_madvise_hugepage()
    with engine.small_pages():
        with engine.small_pages():
            assert advice._get_madvise_hugepage() is False
        assert advice._get_madvise_hugepage() is False
    assert advice._get_madvise_hugepage() is before


@pytest.mark.parametrize("helpers", [1, 2])
def test_the_output_keeps_every_column_written_while_its_pages_are_prepared(
    helpers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(build_module, "_TWO_HELPERS_FROM", 0 if helpers == 2 else 1 << 62)
    columns = [f"c{k}" for k in range(40)]
    output = build_module._Output(columns)
    block = output.allocate(50_000)
    assert len(output._threads) == helpers
    for k in np.random.default_rng(0).permutation(len(columns)):
        output.column(int(k))[:] = float(k)
    output.close()
    assert (block == np.arange(len(columns), dtype=float)[:, None]).all()


def test_an_output_larger_than_the_available_memory_is_refused_before_it_is_written(
    shop: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    cutoffs = ["2024-06-01", "2025-01-01"]
    rows, columns = build_training_features(shop, cutoffs).shape
    monkeypatch.setattr(build_module, "available_memory", lambda: 1_000)
    allocated: list[int] = []
    monkeypatch.setattr(build_module._Output, "allocate", lambda self, n: allocated.append(n))
    with pytest.raises(OutOfMemory, match=rf"{rows:,} rows x {columns} columns.*fewer cutoffs"):
        build_training_features(shop, cutoffs)
    assert allocated == []


def test_fetches_wait_for_a_slow_keeper_and_its_error_is_raised(
    shop: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    cutoffs = ["2024-10-01", "2024-11-01", "2024-12-01"]
    want = build_training_features(shop, cutoffs)
    waiting: list[int] = []
    keep = engine.Results.keep

    def slow(self: engine.Results, *args: object, **kwargs: object) -> None:
        time.sleep(0.05)
        keep(self, *args, **kwargs)

    class Counted(concurrent.futures.ThreadPoolExecutor):
        futures: list[concurrent.futures.Future[None]] = []

        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            if getattr(fn, "__func__", None) is slow:
                waiting.append(sum(not f.done() for f in Counted.futures))
                future = super().submit(fn, *args, **kwargs)
                Counted.futures.append(future)
                return future
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(engine.Results, "keep", slow)
    monkeypatch.setattr(engine, "ThreadPoolExecutor", Counted)
    monkeypatch.setattr(engine, "KEEP_AHEAD", 2)
    pd.testing.assert_frame_equal(build_training_features(shop, cutoffs), want)
    assert len(waiting) > 10
    assert max(waiting) <= 1  # waiting when the next was submitted: never more than one

    calls: list[int] = []

    def broken(self: engine.Results, *args: object, **kwargs: object) -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise MemoryError("no room to keep a fetch")
        time.sleep(0.05)
        raise RuntimeError("a later error")

    monkeypatch.setattr(engine.Results, "keep", broken)
    with pytest.raises(MemoryError, match="no room"):  # the first error, not a later one
        build_training_features(shop, cutoffs)
    assert len(calls) <= 2  # the build stops at the next fetch


def test_the_memory_of_fetched_values_counts_the_cells_they_share_once() -> None:
    results = engine.Results(
        customer_ids=np.array(["a", "b", "c"], dtype=object),
        entry=np.zeros(3, dtype=np.int64),
        cutoffs=np.array([10], dtype=np.int64),
    )
    got = {"cid": np.arange(3), "j": np.zeros(3), "x": np.arange(3), "y": np.arange(3)}
    results.keep(got, sums={"x": ("x", 0), "y": ("y", 0)})
    # int32 customer numbers, int16 cutoffs, two int32 sums: 3 x (4 + 2 + 4 + 4) bytes.
    assert results.nbytes == 3 * (4 + 2 + 4 + 4)


def test_the_available_memory_is_the_kernels_figure_capped_by_the_cgroup_limit(
    tmp_path: Path,
) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  8000000 kB\nMemAvailable:  2000000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert build_module.available_memory(meminfo, cgroup) == 2_048_000_000
    (cgroup / "memory.max").write_text("max\n")
    assert build_module.available_memory(meminfo, cgroup) == 2_048_000_000
    (cgroup / "memory.max").write_text("1000000000\n")
    (cgroup / "memory.current").write_text("250000000\n")
    assert build_module.available_memory(meminfo, cgroup) == 750_000_000
    assert build_module.available_memory(tmp_path / "absent", cgroup) is None


# -- packed counts ---------------------------------------------------------------------------


def _nine_counts(rows_of_first: int, cutoffs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Nine counts (lifetime and last 30 days) of two customers' orders before the last cutoff.

    The first customer has ``rows_of_first`` orders, one every 20 s from 2024-12-01; the second
    has three. Each count has its own condition, all true, so each equals the number of rows.
    """
    stamps = pd.Timestamp("2024-12-01", tz="UTC") + pd.to_timedelta(
        20 * np.arange(rows_of_first), unit="s"
    )
    orders = pd.DataFrame(
        {
            "customer_id": ["a"] * rows_of_first + ["b"] * 3,
            "timestamp": [*stamps, *pd.to_datetime(["2024-01-05"] * 3, utc=True)],
            "amount": 1.0,
        }
    )
    requests = [engine.Aggregate("orders", engine.ENTRY, "min", "us")] + [
        engine.Aggregate("orders", f"n{k}", "count", f"us > {-k - 1}", (30,)) for k in range(9)
    ]
    with session({"orders": orders}) as s:
        results = engine.run(s, engine.cutoff_micros(cutoffs), requests)
    block = next(results.blocks())
    totals = np.stack([block.total(f"n{k}")[-1] for k in range(9)])
    recent = np.stack([block.window(f"n{k}", 30)[-1] for k in range(9)])
    return totals, recent


@pytest.mark.parametrize("rows", [100, 20_000, 40_000])
@pytest.mark.parametrize("cutoffs", [["2025-01-01"], ["2024-06-01", "2024-12-15", "2025-01-01"]])
def test_packed_counts_are_exact_even_past_what_a_packed_field_holds(
    rows: int, cutoffs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 9 conditions in one 128-bit sum leave 14 bits a count: 20,000 rows overflow a field
    # into the next one, 40,000 overflow the whole sum (35,680 of them fall between
    # 2024-12-02 and 2024-12-15); both must fall back to plain counts. The last 30 days start
    # on 2024-12-02: the first day's 4,320 orders are before them.
    expected_totals = np.tile([[rows, 3]], (9, 1))
    expected_recent = np.tile([[max(0, rows - 4_320), 0]], (9, 1))
    totals, recent = _nine_counts(rows, cutoffs)
    np.testing.assert_array_equal(totals, expected_totals)
    np.testing.assert_array_equal(recent, expected_recent)
    monkeypatch.setattr(engine, "PACK_FROM", 10**6)
    plain_totals, plain_recent = _nine_counts(rows, cutoffs)
    np.testing.assert_array_equal(plain_totals, expected_totals)
    np.testing.assert_array_equal(plain_recent, expected_recent)


def test_counts_over_windows_share_the_first_packs() -> None:
    # Each pack holding a windowed count is summed again per window: the 8 plain counts listed
    # first must not push the windowed ones into a second pack.
    plain = [engine.Aggregate("orders", f"p{k}", "count", f"us > {k}") for k in range(8)]
    windowed = [
        engine.Aggregate("orders", f"w{k}", "count", f"us < {k}", (7, 30)) for k in range(8)
    ]
    packing = engine._Packing.of([*plain, *windowed])
    assert packing.packs[0][:8] == tuple(f"us < {k}" for k in range(8))
    assert all(packing.place(a)[0] == 0 for a in windowed)  # type: ignore[index]


def _one_line_orders(orders: pd.DataFrame, cutoff: pd.Timestamp) -> bool:
    with session({"orders": orders}) as s:
        s.prepare(int(engine.cutoff_micros([cutoff])[0]))
        ctx = types.SimpleNamespace(available=s.availability())
        tests = rfm.one_line_orders(ctx)
        return all(s.con.execute(f"SELECT ({sql})").fetchall()[0][0] for sql in tests)


def test_orders_are_their_lines_only_when_no_purchase_line_shares_an_order_id(
    shop: Tables,
) -> None:
    # About a thousand lines: one repeated id leaves the estimate of distinct ids above three
    # quarters, so the exact test decides each case.
    cutoff = pd.Timestamp("2025-03-01", tz="UTC")  # after every line of the shop
    orders = shop.orders.reset_index(drop=True)
    lines = orders[orders["amount"] >= 0]
    customer = lines["customer_id"].value_counts().index[0]
    first, second = lines.index[lines["customer_id"] == customer][:2]
    other = orders.index[
        (orders["amount"] >= 0) & (orders["customer_id"] != orders.at[first, "customer_id"])
    ][0]
    refund = orders.index[orders["amount"] < 0][0]

    def with_id(rows: list[int], order_id: object) -> pd.DataFrame:
        changed = orders.astype({"order_id": "object"})
        changed.loc[rows, "order_id"] = order_id
        return changed

    assert _one_line_orders(orders, cutoff)
    assert _one_line_orders(orders.drop(columns="order_id"), cutoff)
    # a refund line may share its order's id: it is no purchase line
    assert _one_line_orders(with_id([refund], orders.at[first, "order_id"]), cutoff)
    # a line without an id is an order of its own when it is the only one
    assert _one_line_orders(with_id([first], None), cutoff)
    assert not _one_line_orders(with_id([second], orders.at[first, "order_id"]), cutoff)
    assert not _one_line_orders(with_id([other], orders.at[first, "order_id"]), cutoff)
    assert not _one_line_orders(with_id([first, other], None), cutoff)
    # lines at or after the latest cutoff are not read
    again = orders.loc[[first]].assign(timestamp=cutoff)
    assert _one_line_orders(pd.concat([orders, again], ignore_index=True), cutoff)


def test_orders_of_several_lines_are_told_apart_without_the_exact_test(
    shop: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every order of two lines: the estimate of the distinct ids is enough to tell
    doubled = pd.concat([shop.orders, shop.orders.assign(amount=1.0)], ignore_index=True)
    sql = recorded_sql(monkeypatch)
    build_features(dataclasses.replace(shop, orders=doubled), pd.Timestamp("2024-12-20", tz="UTC"))
    assert any("approx_count_distinct(order_id)" in q for q in sql)
    assert not any("NOT EXISTS" in q for q in sql)
    assert any(q.startswith('CREATE TEMP VIEW "order_level"') for q in sql)


@pytest.mark.parametrize("n_cutoffs", [1, 3])
def test_orders_read_off_their_lines_give_the_features_of_orders_grouped_by_id(
    shop: Tables, n_cutoffs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the shop has one line per order, refunds among them
    assert shop.orders["order_id"].is_unique
    assert (shop.orders["amount"] < 0).any()
    cutoffs = [
        pd.Timestamp("2024-12-20", tz="UTC") - pd.Timedelta(days=45 * k) for k in range(n_cutoffs)
    ]
    sql = recorded_sql(monkeypatch)
    read_off_lines = build_training_features(shop, sorted(cutoffs))
    assert not any('"order_level"' in q or '"order_steps"' in q for q in sql)
    order_grouping_forced(monkeypatch)
    sql.clear()
    grouped = build_training_features(shop, sorted(cutoffs))
    assert any("CREATE TEMP" in q and '"order_level"' in q for q in sql)
    pd.testing.assert_frame_equal(read_off_lines, grouped, check_exact=True)


def test_a_one_cutoff_build_computes_a_source_read_once_in_its_query(tiny: Tables) -> None:
    sql: list[str] = []
    requests = [
        engine.Source("per_order", "SELECT customer_id, us FROM orders", materialize=True),
        engine.Aggregate("orders", engine.ENTRY, "min", "us"),
        engine.Aggregate("per_order", "n", "count", "true"),
    ]
    for cutoffs, kind in (([CUTOFF], "VIEW"), ([CUTOFF - pd.Timedelta(days=1), CUTOFF], "TABLE")):
        sql.clear()
        with session(tiny) as s:
            engine.run(s, engine.cutoff_micros(cutoffs), requests, on_sql=sql.append)
        assert any(q.startswith(f'CREATE TEMP {kind} "per_order"') for q in sql)


def test_extra_columns_named_like_the_engines_own_change_nothing(tiny: Tables) -> None:
    # A table may carry columns of its own (SQL extensions can read them); those that share a
    # name with a column the engine adds must not reach the families.
    orders, interactions = tiny.orders.copy(), tiny.interactions.copy()
    for column in ("purchase_day", "purchase_gap", "first_purchase_line", "category_code"):
        orders[column] = "x"
    interactions["channel_code"] = "x"
    extra = Tables(orders, interactions, tiny.customers)
    vocabulary = learn_vocabulary(tiny, CUTOFF)
    pd.testing.assert_frame_equal(
        build_features(extra, CUTOFF, vocabulary=vocabulary),
        build_features(tiny, CUTOFF, vocabulary=vocabulary),
    )


# -- inputs the engine refuses, and who is a customer ----------------------------------------


def _orders(**columns: list) -> pd.DataFrame:
    base = {
        "customer_id": ["a", "b"],
        "timestamp": pd.to_datetime(["2024-01-01", "2024-01-02"], utc=True),
        "amount": [10.0, 20.0],
    }
    return pd.DataFrame({**base, **columns})


@pytest.mark.parametrize(
    ("orders", "message"),
    [
        (_orders(us=[1, 2]), "column 'us' has a name the feature engine uses"),
        (_orders(C=[1, 2]), "column 'C' has a name the feature engine uses"),
        (_orders(customer_id=["a", None]), "1 row\\(s\\) have no customer_id"),
        (_orders(customer_id=["a", ""]), "1 row\\(s\\) have no customer_id"),
        (_orders(customer_id=["a", " \t"]), "1 row\\(s\\) have no customer_id .*blank"),
        (_orders(amount=[10.0, 2e15]), "have an amount that is missing or not a number below 1e"),
        (_orders(amount=[10.0, np.inf]), "have an amount that is missing or not a number below"),
        (_orders(amount=[10.0, np.nan]), "1 row\\(s\\) have an amount that is missing"),
        (
            _orders(timestamp=["2024-01-01", "2024-01-02"]),
            "'timestamp' holds .*string, not instants",
        ),
        (_orders(amount=["10", "20"]), "'amount' holds .*string, not numbers"),
    ],
)
def test_tables_the_engine_cannot_read_right_are_refused_naming_the_column(
    orders: pd.DataFrame, message: str
) -> None:
    with pytest.raises(DataError, match=message) as info:
        build_features(Tables(orders), "2024-02-01")
    assert info.value.table == "orders"


@pytest.mark.parametrize("parquet", [False, True])
@pytest.mark.parametrize("rating", [np.inf, 7.0, -3.0, np.nan])  # NaN: no rating given
def test_ratings_out_of_range_are_refused_naming_the_column(
    tmp_path, parquet: bool, rating: float
) -> None:
    contacts = pd.DataFrame(
        {
            "customer_id": ["a", "a"],
            "timestamp": pd.to_datetime(["2024-01-05", "2024-01-06"], utc=True),
            "channel": ["app", "app"],
            "kind": ["review", "review"],
            "rating": [4.0, rating],
        }
    )
    if parquet:
        contacts.to_parquet(tmp_path / "interactions.parquet")
    tables = {
        "orders": _orders(),
        "interactions": tmp_path / "interactions.parquet" if parquet else contacts,
    }
    if np.isnan(rating):  # a NaN rating is no rating, whatever holds it
        assert build_features(tables, "2024-02-01").loc["a", "rating_mean"] == 4.0
        import pyarrow as pa

        from cxpredict.features.engine import arrow_table

        arrow = arrow_table(contacts.drop(columns="rating"))
        arrow = arrow.append_column("rating", pa.array([4.0, np.nan]))
        assert np.isnan(arrow.column("rating")[1].as_py())  # a NaN, not a null
        tables["interactions"] = arrow
        assert build_features(tables, "2024-02-01").loc["a", "rating_mean"] == 4.0
        return
    with pytest.raises(DataError, match="1 row\\(s\\) have a rating outside -1 to 5") as info:
        build_features(tables, "2024-02-01")
    assert (info.value.table, info.value.column) == ("interactions", "rating")


@pytest.mark.parametrize("dtype", ["UInt8", "Int64", "float32"])
def test_ratings_of_any_number_type_are_read(dtype: str) -> None:
    contacts = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a"],
            "timestamp": pd.to_datetime(["2024-01-05", "2024-01-06", "2024-01-07"], utc=True),
            "channel": ["app"] * 3,
            "kind": ["review"] * 3,
            "rating": pd.array([4, None if dtype != "float32" else np.nan, 2], dtype=dtype),
        }
    )
    got = build_features({"orders": _orders(), "interactions": contacts}, "2024-02-01")
    assert got.loc["a", "rating_mean"] == 3.0


@pytest.mark.parametrize("blank", [" \r\n", "\u00a0", "\u3000", "\x1c"])
def test_blank_customer_ids_in_parquet_files_are_refused_too(tmp_path, blank: str) -> None:
    _orders(customer_id=["a", blank]).to_parquet(tmp_path / "orders.parquet")
    with pytest.raises(DataError, match="1 row\\(s\\) have no customer_id") as info:
        build_features({"orders": tmp_path / "orders.parquet"}, "2024-02-01")
    assert (info.value.table, info.value.column) == ("orders", "customer_id")


def test_ids_that_start_with_a_space_or_beyond_ascii_are_ids_in_parquet_files(tmp_path) -> None:
    _orders(customer_id=[" b", "\u00e9a"]).to_parquet(tmp_path / "orders.parquet")
    frame = build_features({"orders": tmp_path / "orders.parquet"}, "2024-02-01")
    assert frame.index.tolist() == [" b", "\u00e9a"]


def test_blank_ids_in_an_arrow_dictionary_of_view_text_are_refused() -> None:
    import pyarrow as pa

    from cxpredict.features.engine import arrow_table

    ids = pa.DictionaryArray.from_arrays(
        pa.array([0, 1], pa.int32()), pa.array(["a", " "], pa.string_view())
    )
    orders = arrow_table(_orders()).set_column(0, "customer_id", ids)
    with pytest.raises(DataError, match="1 row\\(s\\) have no customer_id"):
        build_features({"orders": orders}, "2024-02-01")


@pytest.mark.parametrize("dtype", ["category", "string[pyarrow]"])
def test_blank_customer_ids_are_refused_whatever_the_column_type(dtype: str) -> None:
    orders = _orders(customer_id=pd.Series(["a", "\u00a0"], dtype=dtype))
    with pytest.raises(DataError, match="1 row\\(s\\) have no customer_id"):
        build_features(Tables(orders), "2024-02-01")
    # an id with spaces around it is an id
    assert build_features(
        Tables(_orders(customer_id=["a", " b "])), "2024-02-01"
    ).index.tolist() == [
        " b ",
        "a",
    ]


def test_a_customer_with_refunds_only_is_not_yet_a_customer() -> None:
    orders = _orders(amount=[10.0, -5.0])
    frame = build_features(Tables(orders), "2024-02-01")
    assert frame.index.tolist() == ["a"]
    assert population(Tables(orders), "2024-02-01").tolist() == ["a"]


def test_a_signup_date_corrected_later_is_not_known_before_the_correction() -> None:
    orders = _orders(customer_id=["x", "y"])
    customers = pd.DataFrame(
        {
            "customer_id": ["a", "a"],
            "signup_at": pd.to_datetime(["2024-04-01", "2023-01-01"], utc=True),
            "updated_at": pd.to_datetime(["2024-04-01", "2024-12-01"], utc=True),
        }
    )
    tables = Tables(orders, None, customers)
    march = build_features(tables, "2024-03-01")
    assert "a" not in march.index  # the row saying 2023 was only written in December
    assert "a" not in population(tables, "2024-03-01")
    june = build_features(tables, "2024-06-01")
    assert june.loc["a", "tenure_days"] == june.loc["a", "days_since_signup"] == 61


def test_a_customer_row_without_a_signup_or_an_order_is_not_a_customer_yet() -> None:
    orders = _orders(customer_id=["x", "y"])
    recorded = pd.to_datetime(["2024-01-05"], utc=True)
    with_column = pd.DataFrame(
        {
            "customer_id": ["a"],
            "signup_at": pd.Series([pd.NaT], dtype=recorded.dtype),
            "updated_at": recorded,
        }
    )
    without_column = pd.DataFrame({"customer_id": ["a"], "updated_at": recorded})
    for customers in (with_column, without_column):
        tables = Tables(orders, None, customers)
        for cutoffs in (["2024-02-01"], ["2024-02-01", "2024-03-01"]):
            frame = build_training_features(tables, cutoffs)
            assert "a" not in frame.index.get_level_values("customer_id")
        assert "a" not in population(tables, "2024-02-01")


def test_instants_are_read_to_the_microsecond_with_finer_digits_dropped() -> None:
    for stamp in ("2024-03-09 23:59:59.9999995", "1969-12-31 23:59:59.9999995"):
        nanoseconds = pd.to_datetime([stamp], utc=True)  # pandas' default unit
        orders = _orders(customer_id=["a"], timestamp=nanoseconds, amount=[10.0])
        midnight = pd.Timestamp(stamp).ceil("D").tz_localize("UTC")
        frame = build_features(Tables(orders), midnight)
        assert frame.index.tolist() == ["a"]
        assert 0 < frame.loc["a", "days_since_first_order"] < 1e-9


def test_cutoffs_given_as_numbers_or_a_bare_text_are_refused(tiny: Tables) -> None:
    with pytest.raises(TypeError, match="got the number 20241001"):
        build_features(tiny, 20241001)
    with pytest.raises(TypeError, match="for several, use build_training_features"):
        build_features(tiny, ["2024-10-01", "2024-11-01"])
    with pytest.raises(TypeError, match="pass \\['2024-10-01'\\]"):
        build_training_features(tiny, "2024-10-01")


@pytest.mark.parametrize("text", ["now", "today", "01/12/2025", "12 Jan 2025"])
def test_cutoffs_as_text_are_read_only_in_iso_8601(tiny: Tables, text: str) -> None:
    with pytest.raises(ValueError, match="not a date in ISO 8601"):
        build_features(tiny, text)


def test_cutoffs_that_differ_below_a_microsecond_are_one_cutoff(tiny: Tables) -> None:
    at = pd.Timestamp(CUTOFF)
    both = build_training_features(tiny, [at + pd.Timedelta(nanoseconds=100), at])
    pd.testing.assert_frame_equal(both, build_training_features(tiny, [at]))
    assert both.index.get_level_values("cutoff").nunique() == 1


def test_customer_ids_held_as_floats_are_refused_naming_the_fix(tiny: Tables) -> None:
    orders = tiny.orders.assign(customer_id=range(len(tiny.orders)))
    customers = pd.DataFrame({"customer_id": [1.0, 2.0], "tier": ["a", "b"]})
    with pytest.raises(DataError, match=r"customers: column 'customer_id' holds double.*Int64"):
        build_features({"orders": orders, "customers": customers}, CUTOFF)


def test_customers_given_different_attributes_at_once_are_refused(tiny: Tables) -> None:
    ids = tiny.orders["customer_id"].iloc[:2].tolist()
    customers = pd.DataFrame({"customer_id": [ids[0], ids[0], ids[1]], "tier": ["a", "b", "b"]})
    with pytest.raises(DataError, match=rf"1 customer\(s\) have rows .*\(e.g. '{ids[0]}'\)"):
        build_features({"orders": tiny.orders, "customers": customers}, CUTOFF)
    # the same row twice says nothing new: it is read once
    twice = pd.concat([customers.iloc[1:], customers.iloc[1:]])
    assert len(build_features({"orders": tiny.orders, "customers": twice}, CUTOFF))


def test_orders_without_a_timestamp_are_refused_not_dropped(tiny: Tables) -> None:
    orders = tiny.orders.copy()
    orders.loc[orders.index[0], "timestamp"] = pd.NaT
    with pytest.raises(DataError, match="orders: 1 row\\(s\\) have no timestamp"):
        build_features({"orders": orders}, CUTOFF)


def test_sources_the_engine_cannot_read_are_refused_saying_how_to_read_them(
    tiny: Tables, tmp_path: Path
) -> None:
    csv = tmp_path / "orders.csv"
    tiny.orders.to_csv(csv, index=False)
    with pytest.raises(DataError, match="is not a Parquet file.*load_tables"):
        build_features({"orders": csv}, CUTOFF)
    with pytest.raises(DataError, match="orders: the table has no columns"):
        build_features({"orders": pd.DataFrame()}, CUTOFF)
    renamed = tiny.orders.rename(columns={"timestamp": "timestmp"})
    with pytest.raises(DataError, match="the closest is 'timestmp'"):
        build_features({"orders": renamed}, CUTOFF)


def test_the_catalogue_lists_the_columns_a_build_gives_without_a_vocabulary(
    shop: Tables,
) -> None:
    built = build_features(shop, "2025-06-01")
    catalogue = feature_catalogue(shop)
    assert set(catalogue["name"]) == set(built.columns)


def test_a_numeric_attribute_of_the_vocabulary_must_be_numbers_in_the_tables(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    customers = tiny.customers.assign(age=tiny.customers["age"].astype(str))
    with pytest.raises(DataError, match="attribute 'age' holds text here"):
        build_features(
            Tables(tiny.orders, tiny.interactions, customers), CUTOFF, vocabulary=tiny_vocabulary
        )


def test_attribute_columns_of_one_name_once_slugged_are_named_as_such(tiny: Tables) -> None:
    customers = tiny.customers.assign(Segment=tiny.customers["segment"])
    with pytest.raises(DataError, match="customers: .*two attribute columns have the same name"):
        build_features(
            Tables(tiny.orders, tiny.interactions, customers),
            CUTOFF,
            settings=FeaturesConfig(vocabulary_min_customers=1),
        )


# -- the benchmark's references ----------------------------------------------------------------


def _bench() -> types.ModuleType:
    path = Path(__file__).parents[1] / "benchmarks" / "bench_features.py"
    spec = importlib.util.spec_from_file_location("bench_features", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.parametrize("reference", ["_rfm_duckdb", "_rfm_pandas"])
def test_the_benchmark_references_compute_the_rfm_features_they_are_timed_against(
    shop: Tables, reference: str
) -> None:
    bench = _bench()
    cutoff = pd.Timestamp("2024-11-15", tz="UTC")
    # Two orders in five get a second line 1 to 19 days after the first, so that an order's
    # first line, its last line and its lines differ; none straddles the cutoff (the one
    # case where the references and the features differ, as the benchmark says).
    rng = np.random.default_rng(5)
    later = shop.orders[rng.random(len(shop.orders)) < 0.4]
    later = later.assign(
        timestamp=later["timestamp"] + pd.to_timedelta(rng.integers(1, 20, len(later)), unit="D"),
        amount=later["amount"] * 0.5,
    )
    first = shop.orders.set_index("order_id").loc[later["order_id"], "timestamp"].to_numpy()
    later = later[(first < cutoff) == (later["timestamp"] < cutoff).to_numpy()]
    orders = pd.concat([shop.orders, later], ignore_index=True)
    tables = Tables(orders, shop.interactions, shop.customers)
    assert orders.groupby("order_id")["timestamp"].nunique().gt(1).sum() > 100

    timed = getattr(bench, reference)(tables, cutoff)
    features = build_features(tables, cutoff)

    assert len(timed.columns) == 16
    assert set(timed.columns) <= set(features.columns)
    # The references also list customers with refunds only, and leave sums over no rows
    # missing.
    timed = timed[timed["orders_lifetime"] > 0].copy()
    spend = [c for c in timed.columns if c.startswith("spend_")]
    timed[spend] = timed[spend].fillna(0.0)
    built = features.loc[timed.index, timed.columns]
    pd.testing.assert_frame_equal(
        timed.astype(float), built, check_names=False, check_index_type=False, rtol=1e-9
    )
    assert len(timed) == int((features["orders_lifetime"] > 0).sum())


def test_the_benchmark_can_give_its_orders_two_lines_placed_at_different_instants(
    shop: Tables,
) -> None:
    paired = _bench()._two_line_orders(shop.orders)
    lines = paired.groupby("order_id")["timestamp"].agg(["size", "nunique"])
    assert lines["size"].max() == 2
    assert (lines["size"] == 2).mean() > 0.5
    assert (lines.loc[lines["size"] == 2, "nunique"] == 2).all()
    assert paired.groupby("order_id")["customer_id"].nunique().max() == 1
    others = [c for c in shop.orders.columns if c != "order_id"]
    pd.testing.assert_frame_equal(paired[others], shop.orders[others])
