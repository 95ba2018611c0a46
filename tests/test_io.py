"""Reading tables: mapping, coercion, rejects with reasons, reconciliation, atomic writes."""

from __future__ import annotations

import itertools
import os
import stat
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxpredict.config import TableConfig, parse_config
from cxpredict.errors import DataError, OutputError, ValidationFailed
from cxpredict.io import (
    atomic_path,
    check_output,
    check_rejects,
    load_tables,
    map_columns,
    read_raw,
    validate_table,
    write_table,
    write_text,
    write_validation,
)

RUN_AT = pd.Timestamp("2026-01-01", tz="UTC")


def write(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


def project(tmp_path: Path, **tables: dict) -> object:
    return parse_config({"project": "t", "data": tables}, root=tmp_path)


def test_bad_order_rows_are_rejected_with_exact_reasons(tmp_path: Path) -> None:
    write(
        tmp_path / "orders.csv",
        """
CustomerID,InvoiceDate,Revenue,Qty
00001,2024-01-05 10:00:00,12.5,1
00002,2024-13-01,3.0,1
,2024-02-01,4.0,1
00003,2024-02-01T00:00:00+02:00,abc,1
00001,2024-01-05 10:00:00,12.5,1
00004,2030-01-01,5.0,1
00005,2024-03-01,5.0,1.5
00006,,7.0,2
""",
    )
    config = project(
        tmp_path,
        orders={
            "path": "orders.csv",
            "columns": {
                "customer_id": "CustomerID",
                "timestamp": "InvoiceDate",
                "amount": "Revenue",
                "quantity": "Qty",
            },
        },
    )
    result = load_tables(config, run_at=RUN_AT)
    rejects = result.rejects["orders"]
    assert rejects[["line", "reason"]].to_dict("records") == [
        {"line": 3, "reason": "timestamp '2024-13-01' is not a date/time"},
        {"line": 4, "reason": "customer_id is missing"},
        {"line": 5, "reason": "amount 'abc' is not a number"},
        {"line": 6, "reason": "exact duplicate (of line 2)"},
        {"line": 7, "reason": "timestamp is in the future (later than the moment of this run)"},
        {"line": 8, "reason": "quantity '1.5' is not a whole number"},
        {"line": 9, "reason": "timestamp is missing"},
    ]
    assert rejects.loc[0, "customer_id"] == "00002"  # the original text is kept
    assert list(result.tables.orders["customer_id"]) == ["00001"]


def test_bad_interaction_rows_are_rejected_with_exact_reasons(tmp_path: Path) -> None:
    write(
        tmp_path / "interactions.csv",
        """
customer_id,timestamp,channel,kind,responded_at,rating
1,2024-01-05,chat,message,2024-01-04,
2,2024-01-05,web,review,,9
3,2024-01-05,,visit,,
4,2024-01-05,chat,message,soon,
5,2024-01-05,chat,message,2024-01-06,
""",
    )
    config = project(
        tmp_path,
        orders={"path": "orders.csv"},
        interactions={"path": "interactions.csv"},
    )
    write(tmp_path / "orders.csv", "customer_id,timestamp,amount\n5,2024-01-01,3")
    result = load_tables(config, run_at=RUN_AT)
    assert result.rejects["interactions"][["line", "reason"]].to_dict("records") == [
        {"line": 2, "reason": "responded_at is before the timestamp"},
        {"line": 3, "reason": "rating is outside the allowed range"},
        {"line": 4, "reason": "channel is missing"},
        {"line": 5, "reason": "responded_at 'soon' is not a date/time"},
    ]
    accepted = result.tables.interactions
    assert accepted["responded_at"].iloc[0] == pd.Timestamp("2024-01-06", tz="UTC")


def test_a_row_with_several_problems_lists_every_reason(tmp_path: Path) -> None:
    write(tmp_path / "orders.csv", "customer_id,timestamp,amount\n,yesterday,lots")
    result = load_tables(project(tmp_path, orders={"path": "orders.csv"}), run_at=RUN_AT)
    assert result.rejects["orders"]["reason"].tolist() == [
        "timestamp 'yesterday' is not a date/time; amount 'lots' is not a number; "
        "customer_id is missing"
    ]


def test_a_blank_customer_id_is_rejected_as_empty(tmp_path: Path) -> None:
    write(tmp_path / "orders.csv", 'customer_id,timestamp,amount\n" ",2024-01-01,1\na,2024-01-01,1')
    result = load_tables(project(tmp_path, orders={"path": "orders.csv"}), run_at=RUN_AT)
    assert result.rejects["orders"]["reason"].tolist() == ["customer_id is empty"]
    assert result.tables.orders["customer_id"].tolist() == ["a"]


def test_only_rows_with_the_same_text_are_duplicates_not_rows_with_equal_values(
    tmp_path: Path,
) -> None:
    write(
        tmp_path / "orders.csv",
        "customer_id,timestamp,amount\n"
        "a,2024-01-01,1.0\na,2024-01-01,1.00\nb,2024-01-01,1.0\na,2024-01-01,1.0",
    )
    result = load_tables(project(tmp_path, orders={"path": "orders.csv"}), run_at=RUN_AT)
    rejects = result.rejects["orders"]
    assert rejects[["line", "reason"]].to_dict("records") == [
        {"line": 5, "reason": "exact duplicate (of line 2)"}
    ]


def test_ids_with_leading_zeros_survive_a_round_trip(tmp_path: Path) -> None:
    write(
        tmp_path / "orders.csv",
        "customer_id,timestamp,amount\n00001,2024-01-01,1\n0042,2024-01-02,2",
    )
    config = project(tmp_path, orders={"path": "orders.csv"})
    first = load_tables(config, run_at=RUN_AT).tables.orders
    assert first["customer_id"].tolist() == ["00001", "0042"]
    for name in ("again.csv", "again.parquet"):
        write_table(first, tmp_path / name)
        again = load_tables(project(tmp_path, orders={"path": name}), run_at=RUN_AT)
        assert again.tables.orders["customer_id"].tolist() == ["00001", "0042"]
        pd.testing.assert_series_equal(
            again.tables.orders["timestamp"], first["timestamp"], check_names=False
        )


def test_naive_timestamps_are_taken_in_the_configured_timezone(tmp_path: Path) -> None:
    write(
        tmp_path / "orders.csv",
        "customer_id,timestamp,amount\na,2024-07-01 12:00:00,1\nb,2024-07-01T12:00:00Z,1",
    )
    config = project(tmp_path, orders={"path": "orders.csv", "timezone": "Europe/Paris"})
    stamps = load_tables(config, run_at=RUN_AT).tables.orders["timestamp"].tolist()
    assert stamps == [
        pd.Timestamp("2024-07-01 10:00:00", tz="UTC"),
        pd.Timestamp("2024-07-01 12:00:00", tz="UTC"),
    ]


def test_a_missing_required_column_names_the_table_the_column_and_the_closest_match(
    tmp_path: Path,
) -> None:
    write(tmp_path / "orders.csv", "CustomerID,InvoiceDate,Amount\n1,2024-01-01,1")
    config = project(
        tmp_path, orders={"path": "orders.csv", "columns": {"customer_id": "CustomerID"}}
    )
    with pytest.raises(DataError, match=r"orders: column 'timestamp' not found") as info:
        load_tables(config, run_at=RUN_AT)
    message = str(info.value)
    assert "the file has CustomerID, InvoiceDate, Amount" in message
    assert "data.orders.columns" in message
    assert info.value.table == "orders" and info.value.column == "timestamp"


def test_a_misspelt_mapping_suggests_the_files_column(tmp_path: Path) -> None:
    write(tmp_path / "orders.csv", "CustomerID,InvoiceDate,Amount\n1,2024-01-01,1")
    config = project(
        tmp_path,
        orders={
            "path": "orders.csv",
            "columns": {"customer_id": "CustomerID", "timestamp": "InvoiceDat"},
        },
    )
    with pytest.raises(DataError, match=r"the closest is 'InvoiceDate'"):
        load_tables(config, run_at=RUN_AT)


def test_a_missing_file_is_a_data_error_naming_the_config_key(tmp_path: Path) -> None:
    config = project(tmp_path, orders={"path": "nowhere.csv"})
    with pytest.raises(DataError, match=r"orders: file .*nowhere.csv' not found; fix data.orders"):
        load_tables(config, run_at=RUN_AT)


def test_rows_at_or_after_as_of_are_not_read_and_not_rejected(tmp_path: Path) -> None:
    write(
        tmp_path / "orders.csv",
        "customer_id,timestamp,amount\n"
        "a,2024-01-31T23:59:59.999999Z,1\nb,2024-02-01T00:00:00Z,1\nc,2024-03-01,1",
    )
    result = load_tables(
        project(tmp_path, orders={"path": "orders.csv"}),
        run_at=RUN_AT,
        as_of=pd.Timestamp("2024-02-01", tz="UTC"),
    )
    report = result.reports["orders"]
    assert (report.rows_in_source, report.rows_after_as_of, report.rows_read) == (3, 2, 1)
    assert (report.rows_accepted, report.rows_rejected) == (1, 0)
    assert result.tables.orders["customer_id"].tolist() == ["a"]


@pytest.mark.parametrize("signup", [True, False])
def test_attribute_changes_at_or_after_as_of_are_not_read(tmp_path: Path, signup: bool) -> None:
    write(tmp_path / "orders.csv", "customer_id,timestamp,amount\na,2025-01-01,10\nb,2025-02-01,20")
    rows = [
        ("a", "2024-12-01", "2024-12-01", "basic"),
        ("a", "2024-12-01", "2025-07-01", "vip"),
        ("b", "2025-06-15", "2025-06-15", "basic"),
    ]
    header = (
        "customer_id,signup_at,updated_at,segment" if signup else "customer_id,updated_at,segment"
    )
    lines = [",".join(r if signup else (r[0], *r[2:])) for r in rows]
    write(tmp_path / "customers.csv", "\n".join([header, *lines]))
    config = project(tmp_path, orders={"path": "orders.csv"}, customers={"path": "customers.csv"})
    result = load_tables(config, run_at=RUN_AT, as_of=pd.Timestamp("2025-06-01", tz="UTC"))
    report = result.reports["customers"]
    assert (report.rows_in_source, report.rows_after_as_of, report.rows_read) == (3, 2, 1)
    assert result.tables.customers["segment"].tolist() == ["basic"]


def test_answers_given_at_or_after_as_of_are_not_yet_known(tmp_path: Path) -> None:
    write(tmp_path / "orders.csv", "customer_id,timestamp,amount\na,2024-01-01,1")
    write(
        tmp_path / "interactions.csv",
        "customer_id,timestamp,channel,kind,responded_at\n"
        "a,2024-01-10,chat,message,2024-01-20\na,2024-01-10,chat,message,2024-01-12",
    )
    result = load_tables(
        project(tmp_path, orders={"path": "orders.csv"}, interactions={"path": "interactions.csv"}),
        run_at=RUN_AT,
        as_of=pd.Timestamp("2024-01-15", tz="UTC"),
    )
    answered = result.tables.interactions["responded_at"]
    assert answered.isna().tolist() == [True, False]


def test_missing_order_ids_make_each_row_one_order(tmp_path: Path) -> None:
    write(tmp_path / "orders.csv", "customer_id,timestamp,amount\na,2024-01-01,1\na,2024-01-01,2")
    orders = load_tables(project(tmp_path, orders={"path": "orders.csv"}), run_at=RUN_AT)
    assert orders.tables.orders["order_id"].tolist() == ["line-2", "line-3"]


def test_whitespace_separated_files_with_compact_dates_are_read(tmp_path: Path) -> None:
    write(
        tmp_path / "cdnow.txt", "id date cds dollars\n00001 19970101 1 11.77\n00002 19970112 2 20.5"
    )
    config = project(
        tmp_path,
        orders={
            "path": "cdnow.txt",
            "sep": "whitespace",
            "timestamp_format": "%Y%m%d",
            "columns": {"customer_id": "id", "timestamp": "date", "amount": "dollars"},
        },
    )
    orders = load_tables(config, run_at=RUN_AT).tables.orders
    assert orders["customer_id"].tolist() == ["00001", "00002"]
    assert orders["timestamp"].iloc[1] == pd.Timestamp("1997-01-12", tz="UTC")


def test_a_folder_of_parquet_files_is_one_table(tmp_path: Path) -> None:
    folder = tmp_path / "orders"
    folder.mkdir()
    for part in range(2):
        frame = pd.DataFrame(
            {
                "customer_id": [f"0{part}"],
                "timestamp": pd.to_datetime(["2024-01-01"], utc=True),
                "amount": [1.0],
            }
        )
        frame.to_parquet(folder / f"part-{part}.parquet")
    orders = load_tables(project(tmp_path, orders={"path": "orders"}), run_at=RUN_AT)
    assert orders.tables.orders["customer_id"].tolist() == ["00", "01"]


def _typed_tables() -> dict[str, pd.DataFrame]:
    """Typed tables with one bad row of every kind a typed column can hold."""
    stamps = pd.to_datetime(
        ["2024-01-01 10:00", "2024-01-02 00:00", "2030-01-01 00:00", None]
        + ["2024-01-03 00:00", "2024-01-01 10:00"]
        + ["2024-01-04 00:00", "2024-01-05 00:00"],
    )
    orders = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d", None, "a", "", "e"],
            "timestamp": stamps.tz_localize("UTC"),
            "amount": [1.0, np.inf, 2.0, 3.0, 4.0, 1.0, 5.0, np.nan],
            "quantity": [1.0, 2.0, 1.0, 1.5, -2.0, 1.0, 1.0, 1.0],
            "category": ["x", " y ", None, "x", "x", "x", "x", "x"],
        }
    )
    interactions = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d"],
            "timestamp": stamps[:4],  # naive: taken in the configured timezone
            "channel": ["web", "chat", None, "web"],
            "kind": ["visit", "message", "visit", "review"],
            "responded_at": pd.to_datetime([None, "2023-12-31", None, None]),
            "rating": [np.nan, 3.0, 9.0, -1.0],
        }
    )
    return {"orders": orders, "interactions": interactions}


@pytest.mark.parametrize("table", ["orders", "interactions"])
def test_typed_parquet_columns_give_the_rows_and_reasons_of_their_text(
    tmp_path: Path, table: str
) -> None:
    _typed_tables()[table].to_parquet(tmp_path / f"{table}.parquet")
    config = TableConfig(path=tmp_path / f"{table}.parquet", timezone="Europe/Paris")
    results = [
        validate_table(
            map_columns(read_raw(table, config, typed=typed), table, config),
            table,
            config,
            run_at=RUN_AT,
            as_of=pd.Timestamp("2025-01-01", tz="UTC"),
        )
        for typed in (False, True)
    ]
    (text_rows, text_rejects, text_report), (rows, rejects, report) = results
    assert report == text_report
    # the 2030 row is after the as-of date: not read, so not rejected whatever it holds
    assert report.rows_after_as_of == 1
    assert len(rejects) == {"orders": 6, "interactions": 2}[table]
    pd.testing.assert_frame_equal(rows, text_rows)
    pd.testing.assert_frame_equal(rejects, text_rejects)


def test_too_many_rejects_stop_the_run_after_the_rejects_are_written(tmp_path: Path) -> None:
    write(tmp_path / "orders.csv", "customer_id,timestamp,amount\na,2024-01-01,x\nb,2024-01-01,1")
    result = load_tables(project(tmp_path, orders={"path": "orders.csv"}), run_at=RUN_AT)
    paths = write_validation(result, tmp_path / "out")
    assert pd.read_csv(paths["rejects_orders"])["reason"].tolist() == ["amount 'x' is not a number"]
    with pytest.raises(ValidationFailed, match=r"orders: 1 of 2 rows rejected \(50.0%"):
        check_rejects(result, max_reject_fraction=0.01)
    check_rejects(result, max_reject_fraction=0.5)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_get_the_permissions_of_any_new_file(
    tmp_path: Path, umask: int, mode: int
) -> None:
    previous = os.umask(umask)
    try:
        paths = [
            write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.csv"),
            write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet"),
            write_text("x", tmp_path / "t.txt"),
        ]
    finally:
        os.umask(previous)
    assert [stat.S_IMODE(p.stat().st_mode) for p in paths] == [mode] * 3


def test_an_interrupted_write_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "list.csv"
    target.write_text("previous\n")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half a fi")
        raise RuntimeError("killed")
    assert target.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["list.csv"]


CELL = st.one_of(
    st.none(),
    st.text(alphabet=string.printable, max_size=12),
    st.sampled_from(["2024-01-01", "2024-02-30", "1e400", "-3", "NaN", "0001", "5.5", " "]),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(st.lists(CELL, min_size=6, max_size=6), max_size=12),
    table=st.sampled_from(["orders", "interactions"]),
)
def test_garbage_tables_give_valid_tables_or_clear_rejects_and_always_reconcile(
    rows: list[list[str | None]], table: str
) -> None:
    columns = {
        "orders": ["customer_id", "timestamp", "amount", "quantity", "category", "channel"],
        "interactions": ["customer_id", "timestamp", "channel", "kind", "responded_at", "rating"],
    }[table]
    raw = pd.DataFrame(rows, columns=columns, dtype=object)
    raw.insert(0, "line", np.arange(2, len(raw) + 2))
    config = TableConfig(path=Path(f"{table}.csv"))
    mapped = map_columns(raw, table, config)
    accepted, rejects, report = validate_table(
        mapped, table, config, run_at=RUN_AT, as_of=pd.Timestamp("2025-01-01", tz="UTC")
    )
    assert report.reconciles()
    assert len(accepted) == report.rows_accepted and len(rejects) == report.rows_rejected
    assert rejects["reason"].str.len().gt(0).all()
    assert accepted["customer_id"].str.len().gt(0).all()
    assert accepted["timestamp"].dt.tz is not None


def test_unreadable_files_raise_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "orders.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"orders: cannot read .*orders.parquet' as parquet"):
        read_raw("orders", TableConfig(path=tmp_path / "orders.parquet"))


def test_short_utc_offsets_and_naive_text_mix_in_one_column(tmp_path: Path) -> None:
    write(
        tmp_path / "orders.csv",
        "customer_id,timestamp,amount\n"
        "a,2024-01-01 02:33:40+00,1\nb,2024-01-01 01:39:37+01,1\n"
        "c,2024-01-01 12:00:00,1\nd,2024-01-01T10:00-05,1\ne,2024-01-01,1",
    )
    config = project(tmp_path, orders={"path": "orders.csv", "timezone": "Europe/Paris"})
    stamps = load_tables(config, run_at=RUN_AT).tables.orders["timestamp"].tolist()
    assert stamps == [
        pd.Timestamp("2024-01-01 02:33:40", tz="UTC"),
        pd.Timestamp("2024-01-01 00:39:37", tz="UTC"),
        pd.Timestamp("2024-01-01 11:00:00", tz="UTC"),  # naive: Paris time
        pd.Timestamp("2024-01-01 15:00:00", tz="UTC"),
        pd.Timestamp("2023-12-31 23:00:00", tz="UTC"),  # a date alone is naive too
    ]


def test_a_pattern_without_a_zone_reads_every_value_in_the_configured_timezone(
    tmp_path: Path,
) -> None:
    # "01-02-1997" ends like an offset ("-1997"): only the pattern says what it is
    write(tmp_path / "orders.csv", "customer_id,timestamp,amount\na,01-02-1997,1")
    config = project(
        tmp_path,
        orders={"path": "orders.csv", "timezone": "Europe/Paris", "timestamp_format": "%d-%m-%Y"},
    )
    stamps = load_tables(config, run_at=RUN_AT).tables.orders["timestamp"].tolist()
    assert stamps == [pd.Timestamp("1997-01-31 23:00:00", tz="UTC")]


def test_local_times_that_daylight_saving_skips_or_repeats_get_their_own_reason(
    tmp_path: Path,
) -> None:
    write(
        tmp_path / "orders.csv",
        "customer_id,timestamp,amount\na,2023-10-29 02:30:00,1\nb,2023-03-26 02:30:00,1\n"
        "c,2023-03-26 04:30:00,1\nd,yesterday,1",
    )
    config = project(tmp_path, orders={"path": "orders.csv", "timezone": "Europe/Paris"})
    result = load_tables(config, run_at=RUN_AT)
    reasons = result.rejects["orders"]["reason"].tolist()
    assert reasons[:2] == [
        f"timestamp '{text}' does not exist or happens twice in Europe/Paris (a daylight saving "
        "change): give it with its UTC offset"
        for text in ("2023-10-29 02:30:00", "2023-03-26 02:30:00")
    ]
    assert reasons[2] == "timestamp 'yesterday' is not a date/time"
    assert result.tables.orders["customer_id"].tolist() == ["c"]


def test_rows_after_the_as_of_date_are_not_read_even_when_they_are_bad(tmp_path: Path) -> None:
    write(
        tmp_path / "orders.csv",
        "customer_id,timestamp,amount\na,2024-01-01,1\nb,2024-01-18,oops\n,2024-01-19,2\n"
        "c,someday,3",
    )
    config = project(tmp_path, orders={"path": "orders.csv"})
    result = load_tables(config, run_at=RUN_AT, as_of=pd.Timestamp("2024-01-10", tz="UTC"))
    report = result.reports["orders"]
    assert (report.rows_in_source, report.rows_after_as_of, report.rows_read) == (4, 2, 2)
    assert (report.rows_accepted, report.rows_rejected) == (1, 1)
    # a date that cannot be read might be before the as-of date: that row is read, and rejected
    assert result.rejects["orders"]["reason"].tolist() == ["timestamp 'someday' is not a date/time"]


def test_malformed_lines_are_rejected_with_their_physical_line_and_text(tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_text(
        "customer_id,timestamp,amount\n"
        "a,2024-01-01,1\n"  # line 2
        "b,2024-01-02\n"  # 3: a field short
        "\n"  # 4: blank, skipped
        '"c\nd",2024-01-03,3\n'  # 5-6: a line break inside quotes
        "e,2024-01-04,4,9\n"  # 7: a field too many
        "f,2024-01-05,x\n",  # 8
        encoding="utf-8",
    )
    config = project(tmp_path, orders={"path": "orders.csv"})
    result = load_tables(config, run_at=RUN_AT)
    rejects = result.rejects["orders"]
    assert rejects["line"].tolist() == [3, 7, 8]
    assert rejects["reason"].tolist() == [
        "wrong number of fields (2, the header has 3)",
        "wrong number of fields (4, the header has 3)",
        "amount 'x' is not a number",
    ]
    # the text is kept: fields in order, those beyond the last column joined into it
    assert rejects.iloc[0][["customer_id", "timestamp", "amount"]].tolist() == [
        "b",
        "2024-01-02",
        None,
    ]
    assert rejects.iloc[1]["amount"] == "4,9"
    report = result.reports["orders"]
    assert (report.rows_in_source, report.rows_read, report.rows_accepted) == (5, 5, 2)
    assert report.reconciles()
    assert report.reasons == {"amount is not a number": 1, "wrong number of fields": 2}
    assert result.tables.orders["customer_id"].tolist() == ["a", "c\nd"]


def test_a_stray_quote_that_swallows_rows_rejects_its_row_naming_the_lines(
    tmp_path: Path,
) -> None:
    (tmp_path / "orders.csv").write_text(
        "customer_id,timestamp,amount,category\n"
        "a,2024-01-01,1,books\n"  # line 2
        'b,2024-01-02,2,"toys\n'  # 3: a stray quote opens a value...
        "c,2024-01-03,3,home\n"  # 4: ...that swallows this row
        'd,2024-01-04,4,garden"\n'  # 5: ...up to the next quote
        'e,2024-01-05,5,"note\nover two lines"\n'  # 6-7: a value holding a line break
        'f,2024-01-06,"6,toys\n'  # 8: a stray quote never closed
        "g,2024-01-07,7,home\n",
        encoding="utf-8",
    )
    result = load_tables(project(tmp_path, orders={"path": "orders.csv"}), run_at=RUN_AT)
    rejects = result.rejects["orders"]
    assert rejects["line"].tolist() == [3, 8]
    assert rejects["reason"].str.startswith("a quoted value swallows the rows after it").all()
    assert "the row on line 3 holds a value running to line 5" in rejects["reason"][0]
    assert "running to line 9" in rejects["reason"][1]
    # the swallowed rows are kept in the rejected row's text, not lost
    assert rejects["category"][0] == "toys\nc,2024-01-03,3,home\nd,2024-01-04,4,garden"
    assert "g,2024-01-07,7,home" in rejects["amount"][1]
    assert result.tables.orders["customer_id"].tolist() == ["a", "e"]
    report = result.reports["orders"]
    assert report.reconciles()
    assert report.reasons == {"a quoted value swallows the rows after it": 2}


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_a_stray_quote_in_the_last_row_is_found_whatever_the_line_endings(
    tmp_path: Path, newline: str
) -> None:
    text = (
        "customer_id,timestamp,amount,category\n"
        "a,2024-01-01,1,books\n"
        'b,2024-01-02,2,"toys\n'  # 3: the last row, swallowing lines 4-5
        "c,2024-01-03,3,home\n"
        'd,2024-01-04,4,garden"\n'
    )
    (tmp_path / "orders.csv").write_bytes(text.replace("\n", newline).encode())
    result = load_tables(project(tmp_path, orders={"path": "orders.csv"}), run_at=RUN_AT)
    assert result.rejects["orders"]["line"].tolist() == [3]
    assert (
        "the row on line 3 holds a value running to line 5" in result.rejects["orders"]["reason"][0]
    )
    assert result.tables.orders["customer_id"].tolist() == ["a"]


def test_a_stray_quote_never_closed_in_a_large_file_rejects_one_row_and_reads_the_others(
    tmp_path: Path,
) -> None:
    rows = [f"c{i},2024-01-01,{i % 100},books\n" for i in range(60_000)]
    # one opening quote that runs to the end of the file (a value of about 1.5 MB), and two
    # quotes around the end of Arrow's first 1 MiB block of lines
    rows[59_000] = 'x,2024-01-01,1,"books\n'
    at = next(k for k, end in enumerate(itertools.accumulate(map(len, rows))) if end > 1 << 20)
    rows[at - 1] = 'y,2024-01-01,1,"books\n'
    rows[at + 3] = 'z,2024-01-01,1,books"\n'
    (tmp_path / "orders.csv").write_text("customer_id,timestamp,amount,category\n" + "".join(rows))
    result = load_tables(project(tmp_path, orders={"path": "orders.csv"}), run_at=RUN_AT)
    rejects = result.rejects["orders"]
    assert rejects["line"].tolist() == [at + 1, 59_002]
    assert f"running to line {at + 5}" in rejects["reason"][0]
    assert "running to line 60001" in rejects["reason"][1]
    report = result.reports["orders"]
    # every line is in a row: the two swallowing rows hold 5 and 1,000 lines
    assert report.rows_in_source == 60_000 - 4 - 999
    assert report.rows_accepted == report.rows_in_source - 2 and report.reconciles()


@pytest.mark.parametrize("closing", ['t,2024-01-02,2,garden"\n', 'second line"\n'])
def test_a_quoted_value_on_the_line_that_crosses_arrows_first_block_is_read_whole(
    tmp_path: Path, closing: str
) -> None:
    header = "customer_id,timestamp,amount,category\n"
    rows = [f"c{i:06d},2024-01-01,1,books\n" for i in range(38_834)]  # 27 bytes each
    assert len(header) + 27 * len(rows) < 1 << 20 < len(header) + 27 * (len(rows) + 1)
    text = header + "".join(rows) + 's,2024-01-01,1,"toys\n' + closing + "u,2024-01-03,3,home\n"
    (tmp_path / "orders.csv").write_text(text)
    result = load_tables(project(tmp_path, orders={"path": "orders.csv"}), run_at=RUN_AT)
    orders = result.tables.orders.set_index("customer_id")
    assert orders.loc["u", "category"] == "home"
    if closing.startswith("t,"):  # a stray quote swallowing the row of t
        assert result.rejects["orders"]["line"].tolist() == [38_836]
        assert "s" not in orders.index and "t" not in orders.index
    else:  # a value over two lines
        assert orders.loc["s", "category"] == "toys\nsecond line"
        assert result.rejects["orders"].empty
    assert result.reports["orders"].reconciles()


def test_the_lines_of_a_utf16_file_are_counted_in_characters(tmp_path: Path) -> None:
    text = (
        "customer_id,timestamp,amount,category\r\n"
        "a,2024-01-01,1,books\r\n"
        'b,2024-01-02,2,"toys\r\n'  # 3: a quote never closed
        "c,2024-01-03,3,home\r\n"
    )
    (tmp_path / "orders.csv").write_text(text, encoding="utf-16", newline="")
    config = project(tmp_path, orders={"path": "orders.csv", "encoding": "utf-16"})
    rejects = load_tables(config, run_at=RUN_AT).rejects["orders"]
    assert rejects["line"].tolist() == [3]
    assert "running to line 4" in rejects["reason"][0]


def test_a_file_in_another_encoding_names_the_encoding_option(tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_bytes(
        b"customer_id,timestamp,amount,category\na,2024-01-01,1,caf\xe9\n"
    )
    with pytest.raises(DataError, match=r"orders: .* is not utf-8 text .*data.orders.encoding"):
        load_tables(project(tmp_path, orders={"path": "orders.csv"}), run_at=RUN_AT)
    config = project(tmp_path, orders={"path": "orders.csv", "encoding": "latin-1"})
    assert load_tables(config, run_at=RUN_AT).tables.orders["category"].tolist() == ["café"]


def test_whitespace_separated_rows_with_a_missing_value_are_rejected_not_shifted(
    tmp_path: Path,
) -> None:
    write(
        tmp_path / "orders.txt",
        "customer_id timestamp amount quantity\n\na 20240101 1 2\nb 20240102 3\n"
        '"c d"\t20240103   4 5\n',
    )
    config = project(
        tmp_path,
        orders={"path": "orders.txt", "sep": "whitespace", "timestamp_format": "%Y%m%d"},
    )
    result = load_tables(config, run_at=RUN_AT)
    # quotes group a field that holds a space; tabs and runs of spaces separate alike
    assert result.tables.orders["customer_id"].tolist() == ["a", "c d"]
    assert result.rejects["orders"]["line"].tolist() == [4]
    assert "with sep: whitespace an empty value" in result.rejects["orders"]["reason"][0]
    assert result.reports["orders"].reasons == {"wrong number of fields": 1}


def test_huge_amounts_are_rejected_rather_than_overflowing_the_engine(tmp_path: Path) -> None:
    write(
        tmp_path / "orders.csv", "customer_id,timestamp,amount\na,2024-01-01,2e15\nb,2024-01-01,1"
    )
    result = load_tables(project(tmp_path, orders={"path": "orders.csv"}), run_at=RUN_AT)
    assert result.rejects["orders"]["reason"].tolist() == [
        "amount '2e15' is implausibly large (1e+10 or more)"
    ]


def test_header_problems_are_data_errors_naming_the_columns(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", "customer_id,timestamp,amount,category,category\nx,2024-01-01,1,a,b")
    with pytest.raises(DataError, match="names column 'category' more than once"):
        load_tables(project(tmp_path, orders={"path": "a.csv"}), run_at=RUN_AT)
    write(tmp_path / "b.csv", "Customer ID,customer-id,timestamp,amount\nx,y,2024-01-01,1")
    with pytest.raises(DataError, match="'Customer ID', 'customer-id' .* could each be"):
        load_tables(project(tmp_path, orders={"path": "b.csv"}), run_at=RUN_AT)
    write(tmp_path / "c.csv", "customer_id;timestamp;amount\nx;2024-01-01;1")
    with pytest.raises(DataError, match='looks separated by ";"; set data.orders.sep: ";"'):
        load_tables(project(tmp_path, orders={"path": "c.csv"}), run_at=RUN_AT)


def test_a_mapped_column_replaces_the_files_column_of_the_canonical_name(tmp_path: Path) -> None:
    write(
        tmp_path / "orders.csv",
        "customer_id,timestamp,order_date,amount\nx,garbage,2024-01-01,1",
    )
    config = project(
        tmp_path, orders={"path": "orders.csv", "columns": {"timestamp": "order_date"}}
    )
    orders = load_tables(config, run_at=RUN_AT).tables.orders
    assert orders["timestamp"].tolist() == [pd.Timestamp("2024-01-01", tz="UTC")]
    # a column mapped to another canonical name is not read under its own name as well
    write(tmp_path / "ids.csv", "customer_id,timestamp,amount,order_id\nx,2024-01-01,1,C7")
    config = project(tmp_path, orders={"path": "ids.csv", "columns": {"customer_id": "order_id"}})
    orders = load_tables(config, run_at=RUN_AT).tables.orders
    assert orders["customer_id"].tolist() == ["C7"]
    assert orders["order_id"].str.startswith("line-").all()


def test_numeric_attributes_are_numbers_from_parquet_types_or_the_config(tmp_path: Path) -> None:
    write(tmp_path / "orders.csv", "customer_id,timestamp,amount\n1,2024-01-01,1")
    write(tmp_path / "customers.csv", "customer_id,age,zip\n1,34,01234\n2,x,02000")
    customers = {"path": "customers.csv", "numeric": ["age"]}
    result = load_tables(
        project(tmp_path, orders={"path": "orders.csv"}, customers=customers), run_at=RUN_AT
    )
    frame = result.tables.customers
    assert frame["age"].dtype == "float64" and frame["age"].tolist() == [34.0]
    assert frame["zip"].tolist() == ["01234"]  # not listed: a category, leading zero kept
    assert result.rejects["customers"]["reason"].tolist() == [
        "age 'x' is not a number (data.customers.numeric lists it)"
    ]
    # ids written as floats (a column with a missing value) read as the same ids
    pd.DataFrame({"customer_id": [1.0, 2.0, np.nan], "income": [10, 20, 30]}).to_parquet(
        tmp_path / "customers.parquet"
    )
    result = load_tables(
        project(tmp_path, orders={"path": "orders.csv"}, customers={"path": "customers.parquet"}),
        run_at=RUN_AT,
    )
    frame = result.tables.customers
    assert frame["customer_id"].tolist() == ["1", "2"]
    assert frame["income"].dtype == "float64"


def test_a_numeric_attribute_that_is_not_a_column_is_named_with_the_closest(
    tmp_path: Path,
) -> None:
    write(tmp_path / "orders.csv", "customer_id,timestamp,amount\n1,2024-01-01,1")
    write(tmp_path / "customers.csv", "customer_id,age\n1,34")
    customers = {"path": "customers.csv", "numeric": ["agee"]}
    config = project(tmp_path, orders={"path": "orders.csv"}, customers=customers)
    with pytest.raises(DataError, match="numeric lists 'agee'.*the closest is 'age'"):
        load_tables(config, run_at=RUN_AT)


def test_a_table_no_longer_configured_leaves_no_rejects_file(tmp_path: Path) -> None:
    write(tmp_path / "orders.csv", "customer_id,timestamp,amount\na,2024-01-01,1")
    write(tmp_path / "customers.csv", "customer_id\na")
    both = project(tmp_path, orders={"path": "orders.csv"}, customers={"path": "customers.csv"})
    write_validation(load_tables(both, run_at=RUN_AT), tmp_path / "v")
    assert (tmp_path / "v" / "rejects_customers.csv").exists()
    alone = project(tmp_path, orders={"path": "orders.csv"})
    write_validation(load_tables(alone, run_at=RUN_AT), tmp_path / "v")
    assert not (tmp_path / "v" / "rejects_customers.csv").exists()


def test_outputs_that_cannot_be_written_are_output_errors_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "a_folder.csv").mkdir()
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputError, match="is a folder; give a file name"):
        check_output(tmp_path / "a_folder.csv")
    with pytest.raises(OutputError, match="is a file; give a folder"):
        check_output(tmp_path / "a_file", folder=True)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output(tmp_path / "a_file" / "out.csv")
    with pytest.raises(OutputError, match="is a folder"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "a_folder.csv")
    assert check_output(tmp_path / "new" / "deeper" / "out.csv") == (
        tmp_path / "new" / "deeper" / "out.csv"
    )
