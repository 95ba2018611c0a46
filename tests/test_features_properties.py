"""Properties: nothing at or after the cutoff changes a feature (same vocabulary), whether
the cutoff is built alone or among later cutoffs."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import order_grouping_forced, recorded_sql
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxpredict.config import FeaturesConfig
from cxpredict.features import Vocabulary, build_features, build_training_features
from cxpredict.schemas import Tables

CUTOFF = pd.Timestamp("2024-03-01 06:30", tz="UTC")
DAY_US = 86_400_000_000
WINDOWS = FeaturesConfig(windows=(7, 30))
VOCABULARY = Vocabulary(
    values=(
        ("orders.category", ("shoes", "bags")),
        ("orders.channel", ("web",)),
        ("interactions.channel", ("email", "chat")),
        ("customers.segment", ("gold",)),
    ),
    numeric=("age",),
)
CUSTOMERS = ("a", "b", "c")
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

before = st.integers(-200 * DAY_US, -1)
# At the cutoff instant itself half of the time.
at_or_after = st.one_of(st.just(0), st.integers(0, 60 * DAY_US))


def instant(offset: int) -> pd.Timestamp:
    return CUTOFF + pd.Timedelta(microseconds=offset)


def order_rows(offsets: st.SearchStrategy[int]) -> st.SearchStrategy[list[tuple]]:
    row = st.tuples(
        st.sampled_from(CUSTOMERS + ("new",)),
        st.sampled_from(("o1", "o2", "o3", "o4")),
        offsets,
        st.sampled_from((-30.0, 0.0, 12.5, 80.0)),
        st.sampled_from(("shoes", "bags", "hats")),
        st.sampled_from(("web", "app")),
    )
    return st.lists(row, max_size=8)


def interaction_rows(
    offsets: st.SearchStrategy[int], answers: st.SearchStrategy[int | None]
) -> st.SearchStrategy[list[tuple]]:
    row = st.tuples(
        st.sampled_from(CUSTOMERS),
        offsets,
        st.sampled_from(("email", "chat", "web")),
        st.sampled_from(("visit", "email_open", "email_click", "message", "complaint", "review")),
        answers,
        st.sampled_from((None, 1.0, 4.0, 5.0)),
    )
    return st.lists(row, max_size=8)


def history_rows(offsets: st.SearchStrategy[int]) -> st.SearchStrategy[list[tuple]]:
    row = st.tuples(
        st.sampled_from(CUSTOMERS + ("new",)),
        offsets,
        st.sampled_from(("gold", "silver")),
        st.sampled_from((None, 20.0, 35.0)),
    )
    # one row per customer and instant: rows of one instant that differ are refused
    return st.lists(row, max_size=4, unique_by=lambda r: (r[0], r[1]))


def orders(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(
        [(c, o, instant(t), a, cat, ch) for c, o, t, a, cat, ch in rows],
        columns=["customer_id", "order_id", "timestamp", "amount", "category", "channel"],
    )
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).astype("datetime64[us, UTC]")
    return frame.astype(
        {
            "customer_id": "str",
            "order_id": "str",
            "amount": "float64",
            "category": "str",
            "channel": "str",
        }
    )


def interactions(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(
        [
            (c, instant(t), ch, k, None if r is None else instant(r), g)
            for c, t, ch, k, r, g in rows
        ],
        columns=["customer_id", "timestamp", "channel", "kind", "responded_at", "rating"],
    )
    for column in ("timestamp", "responded_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True).astype("datetime64[us, UTC]")
    return frame.astype(
        {"customer_id": "str", "channel": "str", "kind": "str", "rating": "float64"}
    )


def customers(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(
        [(c, instant(t), seg, age) for c, t, seg, age in rows],
        columns=["customer_id", "updated_at", "segment", "age"],
    )
    frame["updated_at"] = pd.to_datetime(frame["updated_at"], utc=True).astype(
        "datetime64[us, UTC]"
    )
    frame["signup_at"] = frame["updated_at"]
    return frame.astype({"customer_id": "str", "segment": "str", "age": "float64"})


def features(tables: Tables) -> pd.DataFrame:
    return build_features(tables, CUTOFF, settings=WINDOWS, vocabulary=VOCABULARY)


def features_among_later_cutoffs(tables: Tables) -> pd.DataFrame:
    """The cutoff's rows of a build over it and two later cutoffs, which see the future rows."""
    cutoffs = [CUTOFF, CUTOFF + pd.Timedelta(days=20), CUTOFF + pd.Timedelta(days=61)]
    many = build_training_features(tables, cutoffs, settings=WINDOWS, vocabulary=VOCABULARY)
    return many[many.index.get_level_values("cutoff") == CUTOFF].droplevel("cutoff")


def assert_same_features(one: Tables, other: Tables) -> None:
    """Equal features at the cutoff in both worlds, alone and among later cutoffs."""
    alone = features(one)
    pd.testing.assert_frame_equal(alone, features(other), check_exact=True)
    among = features_among_later_cutoffs(one)
    pd.testing.assert_frame_equal(among, features_among_later_cutoffs(other), check_exact=True)
    pd.testing.assert_frame_equal(among, alone, check_exact=True, check_names=False)


@SETTINGS
@given(
    past=order_rows(before),
    future=order_rows(at_or_after),
    other_future=order_rows(at_or_after),
    history=history_rows(before),
    future_history=history_rows(at_or_after),
    other_future_history=history_rows(at_or_after),
)
def test_orders_and_attribute_changes_at_or_after_the_cutoff_change_no_feature(
    past: list[tuple],
    future: list[tuple],
    other_future: list[tuple],
    history: list[tuple],
    future_history: list[tuple],
    other_future_history: list[tuple],
) -> None:
    one = Tables(orders(past + future), None, customers(history + future_history))
    other = Tables(orders(past + other_future), None, customers(history + other_future_history))
    assert_same_features(one, other)


@SETTINGS
@given(
    past=st.lists(
        st.tuples(before, st.one_of(st.none(), at_or_after), st.one_of(st.none(), at_or_after)),
        max_size=8,
    ),
    kinds=st.lists(st.sampled_from(("message", "complaint", "review", "visit")), min_size=8),
    answered_before=st.lists(st.integers(1, 3 * DAY_US), min_size=8, max_size=8),
    future=interaction_rows(at_or_after, st.one_of(st.none(), at_or_after)),
    other_future=interaction_rows(at_or_after, st.one_of(st.none(), at_or_after)),
)
def test_interactions_and_answers_at_or_after_the_cutoff_change_no_feature(
    past: list[tuple],
    kinds: list[str],
    answered_before: list[int],
    future: list[tuple],
    other_future: list[tuple],
) -> None:
    # Each past contact is answered later than the cutoff (or never) in one world and at
    # another instant at or after the cutoff (or never) in the other; some are answered
    # before the cutoff in both.
    one_rows, other_rows = [], []
    for i, (sent, answer, other_answer) in enumerate(past):
        customer = CUSTOMERS[i % len(CUSTOMERS)]
        kind = kinds[i]
        rating = 2.0 if kind == "review" else None
        if i % 3 == 0 and sent + answered_before[i] < 0:
            answer = other_answer = sent + answered_before[i]
        one_rows.append((customer, sent, "chat", kind, answer, rating))
        other_rows.append((customer, sent, "chat", kind, other_answer, rating))
    base_orders = orders([(c, "o1", -DAY_US, 10.0, "shoes", "web") for c in CUSTOMERS])
    one = Tables(base_orders, interactions(one_rows + future))
    other = Tables(base_orders, interactions(other_rows + other_future))
    assert_same_features(one, other)


@SETTINGS
@given(past=order_rows(before), future=order_rows(at_or_after))
def test_orders_of_one_line_read_off_their_lines_give_the_features_of_orders_grouped_by_id(
    past: list[tuple], future: list[tuple]
) -> None:
    # Every line its own order (refunds, lines at one instant and customers with refunds only,
    # who are known from their signup, included): the build reads the orders off the lines;
    # grouping them by order id must give the same features, alone and among later cutoffs.
    rows = [(c, f"u{k}", *rest) for k, (c, _, *rest) in enumerate(past + future)]
    signed_up = customers([(c, -300 * DAY_US, "gold", 30.0) for c in CUSTOMERS])
    tables = Tables(orders(rows), None, signed_up)
    with pytest.MonkeyPatch.context() as patch:
        sql = recorded_sql(patch)
        alone, among = features(tables), features_among_later_cutoffs(tables)
        assert not any('"order_level"' in q for q in sql)
        order_grouping_forced(patch)
        sql.clear()
        pd.testing.assert_frame_equal(alone, features(tables), check_exact=True)
        pd.testing.assert_frame_equal(among, features_among_later_cutoffs(tables), check_exact=True)
        assert any('"order_level"' in q for q in sql)
