"""Cutoff arithmetic and the (customer_id, cutoff) grid."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import CUTOFF

from cxpredict.schemas import Tables
from cxpredict.spine import (
    feature_window,
    label_window,
    population,
    spine,
    training_cutoffs,
)


def utc(value: str) -> pd.Timestamp:
    return pd.Timestamp(value, tz="UTC")


def test_training_cutoffs_step_back_from_as_of_in_ascending_order() -> None:
    got = training_cutoffs("2025-07-01", n=3, step_days=30)
    assert got == [utc("2025-05-02"), utc("2025-06-01"), utc("2025-07-01")]


def test_training_cutoffs_leave_the_label_horizon_before_as_of() -> None:
    got = training_cutoffs("2025-07-01", n=2, step_days=7, horizon_days=30)
    assert got == [utc("2025-05-25"), utc("2025-06-01")]
    start, end = label_window(got[-1], 30)
    assert end == utc("2025-07-01")


def test_training_cutoffs_refuse_an_empty_grid() -> None:
    with pytest.raises(ValueError, match="n >= 1"):
        training_cutoffs("2025-07-01", n=0, step_days=30)


def test_the_label_window_starts_at_the_cutoff_and_excludes_its_end() -> None:
    assert label_window("2025-01-01", 90) == (utc("2025-01-01"), utc("2025-04-01"))
    with pytest.raises(ValueError, match="positive"):
        label_window("2025-01-01", 0)


def test_a_feature_window_ends_at_the_cutoff() -> None:
    assert feature_window("2025-01-31", 30) == (utc("2025-01-01"), utc("2025-01-31"))
    assert feature_window("2025-01-31") == (None, utc("2025-01-31"))


def test_a_naive_cutoff_is_read_as_utc() -> None:
    assert training_cutoffs("2025-07-01 12:00", n=1, step_days=1) == [utc("2025-07-01 12:00")]


def test_the_population_is_known_strictly_before_the_cutoff(tiny: Tables) -> None:
    assert list(population(tiny, CUTOFF)) == ["c1", "c2", "c3"]
    # c2 signed up at 2024-02-29 00:00: not before that instant, known one microsecond after.
    signup = utc("2024-02-29")
    assert "c2" not in population(tiny, signup)
    assert "c2" in population(tiny, signup + pd.Timedelta(microseconds=1))


def test_the_spine_lists_each_cutoffs_population_ordered_by_cutoff(tiny: Tables) -> None:
    got = spine(tiny, [CUTOFF, "2024-01-01", CUTOFF])
    want = pd.MultiIndex.from_tuples(
        [("c1", utc("2024-01-01")), ("c1", CUTOFF), ("c2", CUTOFF), ("c3", CUTOFF)],
        names=["customer_id", "cutoff"],
    )
    assert list(got) == list(want)
    assert got.names == ["customer_id", "cutoff"]


def test_the_population_reads_a_mapping_of_frames_with_naive_instants_as_utc(tiny: Tables) -> None:
    naive = tiny.orders.assign(timestamp=tiny.orders["timestamp"].dt.tz_localize(None))
    assert population({"orders": naive}, CUTOFF).equals(population(Tables(tiny.orders), CUTOFF))
    known = Tables(naive).before(CUTOFF)
    assert str(known.orders["timestamp"].dt.tz) == "UTC"
    assert known.latest_event() == Tables(tiny.orders).before(CUTOFF).latest_event()


def test_tables_are_a_tables_or_a_mapping_of_table_names() -> None:
    with pytest.raises(TypeError, match="unknown table\\(s\\) \\['order'\\]"):
        Tables.of({"order": pd.DataFrame()})
    with pytest.raises(TypeError, match="got list"):
        Tables.of([])  # type: ignore[arg-type]
