"""The point-in-time engine: DuckDB in process, one pass over the events for any cutoff list.

How a build runs
----------------
Every event table is read once, and only its rows before the latest cutoff. The instants that
matter are the cutoffs ``c`` and the window starts ``c - w days``; together they cut time into
*slots*, and each event falls into exactly one slot. A first ``GROUP BY (customer, slot)``
reduces the events to one row per customer and slot. From there, for every customer and
cutoff:

- a lifetime sum at cutoff ``j`` is the sum over the slots before ``c_j``, i.e. a running sum
  over ``j`` of the slots whose first cutoff is ``j`` (a difference array);
- a window sum over ``[c_j - w, c_j)`` is the lifetime sum at ``c_j`` minus the lifetime sum at
  ``c_j - w``, the second computed the same way from the slot's first cutoff after ``w`` days;
- a latest instant (``max``) or a latest value (``last``) is a running maximum or a forward
  fill over ``j``.

DuckDB does the scans and the two ``GROUP BY`` steps (spilling to ``temp_directory`` when the
data exceed ``memory_limit``); NumPy does the running sums over the (customer, cutoff) grid,
which is as large as the output. Sums are taken over integers (money in 1/10,000 units,
ratings in millionths) so that a value is bit-identical whether it is computed at one cutoff
or among many. Aggregates that do not decompose this way (medians, facts that depend on two
instants such as "sent before the cutoff and still unanswered at it") are computed over the
rows of their (small) source joined to every later cutoff.

DuckDB's cost grows with the number of aggregate states it updates per row, so a source's
many counts are summed as bit fields of a few 128-bit integers (:class:`_Packing`), and the
latest of a small code is read off the maximum of an ordering key that holds it
(:func:`last_code`). Both give the same integers as the plain aggregates.

Instants are handled as microseconds since 1970-01-01 UTC (``BIGINT``) inside the engine, so
no time zone setting is involved; SQL extensions see naive UTC ``TIMESTAMP`` columns.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cxpredict.errors import DataError, ExtensionError
from cxpredict.schemas import (
    COLUMNS,
    INSTANT_COLUMNS,
    MAX_AMOUNT,
    RATING_RANGE,
    TABLE_NAMES,
    YEARS,
    Tables,
    to_utc,
)

DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
#: Amounts are summed exactly in 1/MONEY_SCALE currency units.
MONEY_SCALE = 10_000
#: Ratings are summed exactly in 1/RATING_SCALE points.
RATING_SCALE = 1_000_000
#: The instant of facts known since always (customer attributes without ``updated_at``).
ALWAYS_US = -(2**52)  # about 1827: before any event, and safe to multiply by 2**10
#: SQL over the ``customers`` view: when a row became known, the later of its ``updated_at``
#: and ``signup_at`` (a row with neither is known since always).
KNOWN_SINCE_US = f"greatest(COALESCE(updated_us, {ALWAYS_US}), COALESCE(signup_us, {ALWAYS_US}))"

TableSource = pd.DataFrame | pa.Table | str | os.PathLike[str]
Kind = Literal["sum", "count", "max", "min", "last"]
#: The kinds whose values add up over slots and cutoffs.
SUMMED = ("sum", "count")


# --------------------------------------------------------------------------------------------
# What families ask for
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A named event source: SQL returning ``customer_id``, ``us`` (its instant) and columns.

    The SQL may read the base views ``orders``, ``interactions`` and ``customers`` (rows before
    the latest cutoff, instants as ``us`` microseconds) and earlier sources. ``materialize``:
    computed once into a table, for a source that several queries read (a build over several
    cutoffs reads each source in two passes; a one-cutoff build reads a source once, so it
    materializes only a source that another one also reads).
    """

    name: str
    sql: str
    materialize: bool = False


@dataclass(frozen=True)
class Shortcut:
    """Another way to an aggregate's values, for data of a common shape.

    ``holds`` are SQL booleans over the base views (the rows before the latest cutoff), asked
    in order until one is false, so that a cheap test can spare a costly one. Where all are
    true, the aggregate is ``expr`` over the rows of ``source`` instead, which gives the same
    value at every cutoff with less work (an order's count and value read off its lines when
    every order has one purchase line, without grouping the lines by order).
    """

    holds: tuple[str, ...]
    source: str
    expr: str


@dataclass(frozen=True)
class Aggregate:
    """A per-customer aggregate of a source's rows before each cutoff.

    ``sum`` is over an integer expression, ``count`` counts the rows where the condition
    ``expr`` holds (``true``: every row); both are also computed over each of ``windows``
    (days before the cutoff); ``max`` and ``min`` are over all rows before the cutoff; ``last`` is
    the expression's value on the row with the largest ``order`` (an integer, unique per
    customer so that the result is deterministic: ``us`` when a customer has one row per
    instant, else :func:`last_order` to break ties), over the rows where it is not missing.

    ``one_cutoff`` names another source that a build at one cutoff reads instead: one whose
    rows, when they all lie before the cutoff, give this aggregate the same value, and which
    other aggregates read anyway (an order's value so far is the largest of the running totals
    of its lines, one row per line instant; at one cutoff, the order's total, one row per order).
    ``shortcut`` (a :class:`Shortcut`) is read instead of both where its conditions hold.
    """

    source: str
    name: str
    kind: Kind
    expr: str
    windows: tuple[int, ...] = ()
    order: str = "us"
    #: For a ``last`` whose ``order`` holds the value plus one in its low bits (as
    #: :func:`last_code` makes them): how many bits; read off ``max(order)``.
    code_bits: int = 0
    one_cutoff: str | None = None
    shortcut: Shortcut | None = None


#: Customers become known at their first order: every build asks for this aggregate.
ENTRY = "entry_us"
#: DuckDB block memory kept for reuse between the queries of a session rather than returned
#: to the OS and faulted in again by the next query (freed when the session closes; at most
#: what DuckDB itself uses, which ``memory_limit`` bounds). See ``docs/performance.md``.
BLOCK_ALLOCATOR_MEMORY = "2GiB"


def _code_bits(n_codes: int) -> int:
    return max(1, int(n_codes + 1).bit_length())


def last_order(code: str, n_codes: int, key: str = "us") -> str:
    """An ``order`` for a ``last`` aggregate over a small code: ties go to the larger code.

    The code (``-1`` to ``n_codes - 1``) plus one is in the low bits below ``key``, the
    instant that orders the rows (``us``; ``key * 2**bits`` must fit in 64 bits, so a code of
    more than about 4,000 values needs a coarser key, such as a day number).
    """
    return f"({key} * {2 ** _code_bits(n_codes)} + COALESCE({code}, 0) + 1)"


def last_code(
    source: str, name: str, code: str, n_codes: int, when: str = "", key: str = "us"
) -> Aggregate:
    """The latest value (by ``key``, see :func:`last_order`) of an integer code (``-1`` to
    ``n_codes - 1``) among the rows where ``when`` holds and the code is not missing; ties go
    to the larger code.

    The order holds the code in its low bits, so the latest code is read off ``max(order)``:
    an ``arg_max`` costs several times more.
    """
    expr = f"CASE WHEN {when} THEN {code} END" if when else code
    order = last_order(code, n_codes, key)
    return Aggregate(source, name, "last", expr, order=order, code_bits=_code_bits(n_codes))


def _decoded(values: np.ndarray, bits: int) -> np.ma.MaskedArray:
    """The codes held in the low ``bits`` of fetched orders (see :func:`last_order`)."""
    orders = np.asarray(_filled(values, 0), dtype=np.int64)
    return np.ma.masked_array((orders & (2**bits - 1)) - 1, mask=np.ma.getmaskarray(values))


@dataclass(frozen=True)
class PerCutoff:
    """An aggregate over a source's rows joined to every cutoff after them.

    ``expr`` is any SQL aggregate; it may use ``c`` (the cutoff in microseconds) to filter
    rows, e.g. ``count(*) FILTER (WHERE us >= c - 30 * 86400000000)``. ``columns`` adds
    columns computed per row and cutoff; ``hidden`` names source columns that ``expr`` and
    ``where`` must not see (``columns`` may read them, to show what is known at the cutoff).
    ``failure``: what to say when the query fails on the data (a feature written by a user:
    its name and what to change); empty, the DuckDB error is raised as it is.
    """

    source: str
    name: str
    expr: str
    columns: str = ""
    where: str = ""
    hidden: str = ""
    failure: str = ""


Request = Source | Aggregate | PerCutoff


# --------------------------------------------------------------------------------------------
# What is available
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Availability:
    """Which tables and columns a project has, and the type of each customer attribute.

    Parameters
    ----------
    columns
        ``(table, columns)`` pairs of the tables present and their columns.
    attributes
        ``(column, "categorical" | "numeric")`` pairs of the customer attribute columns.
    """

    columns: tuple[tuple[str, tuple[str, ...]], ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()

    def table(self, name: str) -> bool:
        """Whether the table ``name`` is present."""
        return name in dict(self.columns)

    def has(self, table: str, column: str) -> bool:
        """Whether ``table`` is present and has ``column``."""
        return column in dict(self.columns).get(table, ())

    def why_not(self, table: str, column: str | None = None) -> str:
        """Why a feature that needs ``table`` (and ``column``) is unavailable, or ``""``."""
        if not self.table(table):
            return f"no {table} table"
        if column is not None and not self.has(table, column):
            return f"{table} has no {column} column"
        return ""


def _arrow_kind(kind: pa.DataType) -> str | None:
    if pa.types.is_boolean(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return "numeric"
    if pa.types.is_decimal(kind):
        return "numeric"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "categorical"
    if pa.types.is_dictionary(kind):
        return "categorical"
    return None


#: DuckDB's and Arrow's names of number types (and booleans).
_NUMERIC_TYPE = re.compile(
    r"U?(TINY|SMALL|BIG|HUGE)?INT(EGER|8|16|32|64|128)?|HALFFLOAT|FLOAT(16|32|64)?|DOUBLE|REAL"
    r"|BOOL(EAN)?|(DECIMAL|NUMERIC)(32|64|128|256)?(\(\d+, ?\d+\))?"
)


def duck_kind(kind: str) -> str | None:
    """``numeric`` or ``categorical`` for a DuckDB type name, ``None`` for other types
    (``INTERVAL``, lists such as ``DOUBLE[]``, structs ...)."""
    kind = kind.strip().upper()
    if _NUMERIC_TYPE.fullmatch(kind):
        return "numeric"
    if kind == "VARCHAR" or re.fullmatch(r"ENUM\(.*\)", kind, re.S):
        return "categorical"
    return None


# --------------------------------------------------------------------------------------------
# Sources: pandas, Arrow or Parquet
# --------------------------------------------------------------------------------------------


def table_sources(tables: Tables | Mapping[str, TableSource | None]) -> dict[str, TableSource]:
    """The present tables of ``tables`` by canonical name.

    Raises
    ------
    DataError
        When ``orders`` is missing or a name is not a canonical table.
    """
    if isinstance(tables, Tables):
        found = {name: tables.get(name) for name in TABLE_NAMES}
    else:
        unknown = set(tables) - set(TABLE_NAMES)
        if unknown:
            raise DataError(
                f"unknown table(s) {sorted(unknown)}; the tables are {', '.join(TABLE_NAMES)}",
                table=sorted(unknown)[0],
            )
        found = {name: tables.get(name) for name in TABLE_NAMES}
    sources = {name: value for name, value in found.items() if value is not None}
    if "orders" not in sources:
        raise DataError("orders: the table is required to build features; pass it", table="orders")
    return sources  # type: ignore[return-value]


def _parquet_sql(path: str | os.PathLike[str]) -> str:
    target = Path(path)
    pattern = str(target / "**" / "*.parquet") if target.is_dir() else str(target)
    if not target.is_dir() and not target.exists():
        raise DataError(
            f"Parquet source {str(target)!r} does not exist; pass a canonical Parquet file "
            "or folder",
        )
    quoted = pattern.replace("'", "''")
    return f"read_parquet('{quoted}', union_by_name = true)"


def _check_parquet(name: str, path: Path) -> None:
    """Refuse a file that is not Parquet (its first bytes say), naming the way to read it."""
    if not path.is_file():
        return
    with path.open("rb") as file:
        magic = file.read(4)
    if magic != b"PAR1":
        raise DataError(
            f"{name}: {str(path)!r} is not a Parquet file; the feature engine reads Parquet "
            "files and folders or in-memory tables; read other files (CSV) with "
            "cxpredict.io.load_tables, which converts and checks every column",
            table=name,
        )


def _arrow_column(series: pd.Series) -> pa.Array | pa.ChunkedArray:
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        # Naive UTC: the engine reads naive instants as UTC.
        return pa.array(series.dt.tz_convert(None).to_numpy(), from_pandas=True)
    if hasattr(series.array, "__arrow_array__"):
        return pa.array(series.array)
    if isinstance(series.dtype, np.dtype):
        return pa.array(series.to_numpy(), from_pandas=True)
    return pa.Array.from_pandas(series)


def arrow_table(frame: pd.DataFrame) -> pa.Table:
    """``frame`` as an Arrow table without copying its string and number columns."""
    return pa.table({str(c): _arrow_column(frame[c]) for c in frame.columns})


def _schema_of(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    rows = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


#: Column names the engine gives its own columns (compared without case, as SQL does): a
#: table column of one of these names would be read in their place.
RESERVED_COLUMNS = frozenset({"us", "responded_us", "signup_us", "updated_us", "c", "j", "cid"})
_NUMBER_COLUMNS = ("amount", "quantity", "rating")
_FIX = "load the tables with cxpredict.io.load_tables, which converts and checks every column"


def _check_names(name: str, schema: Mapping[str, str]) -> None:
    taken = [c for c in schema if c.lower() in RESERVED_COLUMNS or c.startswith("__")]
    if taken:
        raise DataError(
            f"{name}: column {taken[0]!r} has a name the feature engine uses for its own "
            "columns; rename or drop it",
            table=name,
            column=taken[0],
        )


def _check_types(name: str, schema: Mapping[str, str]) -> None:
    """Canonical instants must be timestamps and canonical numbers numbers."""
    for column, kind in schema.items():
        upper = kind.upper()
        if column in INSTANT_COLUMNS and not upper.startswith(("TIMESTAMP", "DATE")):
            raise DataError(
                f"{name}: column {column!r} holds {kind}, not instants; convert it with "
                f"pd.to_datetime(..., utc=True), or {_FIX}",
                table=name,
                column=column,
            )
        if column == "customer_id" and upper.startswith(("DOUBLE", "FLOAT", "HALF")):
            raise DataError(
                f"{name}: column 'customer_id' holds {kind}; read as text its ids would be like "
                "'1.0', which is another customer than '1' in a table of whole-number or text "
                "ids; convert it with .astype('Int64').astype(str), or read the column as text",
                table=name,
                column=column,
            )
        numeric = duck_kind(kind) == "numeric"
        if column in _NUMBER_COLUMNS and not numeric:
            raise DataError(
                f"{name}: column {column!r} holds {kind}, not numbers; convert it with "
                f"pd.to_numeric, or {_FIX}",
                table=name,
                column=column,
            )


def _is_text(kind: pa.DataType) -> bool:
    """Whether ``kind`` is an Arrow text type (plain, large or view)."""
    return (
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    )


def _arrow_counts(arrow: pa.Table) -> tuple[int, int, int]:
    """Rows without a customer_id (missing, empty or blank), amounts missing or out of
    bounds, and ratings out of range, read off the Arrow columns (null counts are kept by
    Arrow; a scan of the ids or the amounts takes milliseconds)."""
    ids = arrow.column("customer_id")
    # pandas categories (dictionaries) and view text: checked as the plain text they hold
    kind = ids.type.value_type if pa.types.is_dictionary(ids.type) else ids.type
    if _is_text(kind) and (pa.types.is_dictionary(ids.type) or pa.types.is_string_view(kind)):
        if pa.types.is_dictionary(ids.type):  # view text has no cast out of a dictionary
            ids = ids.cast(pa.dictionary(ids.type.index_type, pa.large_string()))
        ids = ids.cast(pa.large_string())
    missing = ids.null_count
    if len(ids) and _is_text(ids.type):
        empty = pc.or_(pc.equal(pc.binary_length(ids), 0), pc.utf8_is_space(ids))
        missing += int(pc.sum(empty).as_py() or 0)
    bad = ratings = 0
    if "amount" in arrow.column_names:
        for chunk in arrow.column("amount").chunks:
            bad += chunk.null_count  # a pandas NaN arrives as a null
            values = _floats(chunk, 0.0)
            if len(values) and not max(values.max(), -values.min()) < MAX_AMOUNT:  # NaN too
                bad += int((~(np.abs(values) < MAX_AMOUNT)).sum())
    if "rating" in arrow.column_names:
        low, high = RATING_RANGE
        for chunk in arrow.column("rating").chunks:
            values = _floats(chunk, low)  # missing and NaN ratings are no rating
            ratings += int((~((values >= low) & (values <= high)) & ~np.isnan(values)).sum())
    return missing, bad, ratings


def _floats(chunk: pa.Array, fill: float) -> np.ndarray:
    """An Arrow number column (any integer, decimal or float type) as float64, nulls filled."""
    values = pc.cast(chunk, pa.float64()) if chunk.type != pa.float64() else chunk
    return np.asarray(pc.fill_null(values, fill) if values.null_count else values, dtype=float)


#: SQL, for an id ``{id}``: it may be blank, as it starts with a control character, a space
#: or a character beyond ASCII (two comparisons a row; the empty id included).
_MAYBE_BLANK = "({id} < '!' OR {id} >= chr(127))"
#: SQL: the id ``{id}`` is empty or blank (white space only, as Python's ``str.isspace`` and
#: Arrow's ``utf8_is_space`` tell it).
_BLANK = (
    "({id} = '' OR regexp_full_match({id}, '[\\s\\x{{0b}}\\x{{1c}}-\\x{{1f}}\\x{{85}}\\p{{Z}}]*'))"
)


def _check_values(
    con: duckdb.DuckDBPyConnection,
    name: str,
    relation: str,
    schema: Mapping[str, str],
    arrow: pa.Table | None = None,
) -> None:
    """Rows without a customer, amounts missing or beyond what the engine's integer sums hold,
    and ratings out of range."""
    if arrow is not None:
        found: Sequence[int] = _arrow_counts(arrow)
    else:
        text = "CAST(customer_id AS VARCHAR)"
        missing = "count(*) FILTER (WHERE customer_id IS NULL OR {})"
        checks = [missing.format(_MAYBE_BLANK.format(id=text))]
        # NOT (x < limit) holds for NaN and the infinities too
        amount, rating = "amount" in schema, "rating" in schema
        checks.append(
            f"count(*) FILTER (WHERE amount IS NULL OR NOT (abs(amount) < {MAX_AMOUNT:.0f}))"
            if amount
            else "0"
        )
        low, high = RATING_RANGE
        checks.append(
            f"count(*) FILTER (WHERE NOT (rating >= {low} AND rating <= {high}) "
            "AND NOT isnan(CAST(rating AS DOUBLE)))"
            if rating
            else "0"
        )
        found = list(con.execute(f"SELECT {', '.join(checks)} FROM {relation}").fetchall()[0])
        if found[0]:  # some ids may be blank: counted exactly (a pattern a row, so only now)
            exact = missing.format(_BLANK.format(id=text))
            found[0] = con.execute(f"SELECT {exact} FROM {relation}").fetchall()[0][0]
    if found[0]:
        raise DataError(
            f"{name}: {found[0]:,} row(s) have no customer_id (missing, empty or blank); drop "
            f"them, or {_FIX} (it rejects such rows with their reasons)",
            table=name,
            column="customer_id",
        )
    if found[1]:
        raise DataError(
            f"{name}: {found[1]:,} row(s) have an amount that is missing or not a number below "
            f"{MAX_AMOUNT:.0e} in size (the engine sums amounts in 1/10,000 units as 64-bit "
            f"integers); fix or drop them, or {_FIX}",
            table=name,
            column="amount",
        )
    if found[2]:
        low, high = RATING_RANGE
        raise DataError(
            f"{name}: {found[2]:,} row(s) have a rating outside {low:g} to {high:g} (or not a "
            f"number); fix or drop them, or {_FIX}",
            table=name,
            column="rating",
        )
    if "timestamp" in schema:
        undated = (
            arrow.column("timestamp").null_count
            if arrow is not None
            else con.execute(
                f"SELECT count(*) FILTER (WHERE timestamp IS NULL) FROM {relation}"
            ).fetchall()[0][0]
        )
        if undated:
            raise DataError(
                f"{name}: {undated:,} row(s) have no timestamp; an event without an instant "
                f"cannot be placed before or after a cutoff; drop them, or {_FIX}",
                table=name,
                column="timestamp",
            )


def _check_one_row_per_customer(s: Session, before: int) -> None:
    """Refuse customers given different attributes at once (no ``updated_at`` to order them,
    or the same one) among the rows known before ``before``: which holds would be arbitrary.

    Window: customer rows whose ``updated_at`` and ``signup_at`` are before ``before`` (a
    row recorded later is not read by the build, whatever it holds).
    """
    known = f"{KNOWN_SINCE_US} < {before}"
    repeated = s.con.execute(
        f"SELECT count(*) - count(DISTINCT customer_id) FROM customers WHERE {known}"
    ).fetchall()[0][0]
    if not repeated:
        return
    # rows are ordered by when they became known, as the build reads them
    found = s.con.execute(
        f"SELECT count(*), min(customer_id) FROM (SELECT customer_id, {KNOWN_SINCE_US} FROM "
        f"(SELECT DISTINCT * FROM customers WHERE {known}) GROUP BY ALL HAVING count(*) > 1)"
    ).fetchall()[0]
    if found[0]:
        raise DataError(
            f"customers: {found[0]:,} customer(s) have rows with different attributes known at "
            "the same instant (their updated_at, else their signup_at, else always), so which "
            f"holds cannot be told (e.g. {found[1]!r}); keep one row per customer, or give each "
            "change its updated_at so that the table is a history",
            table="customers",
            column="customer_id",
        )


class Session:
    """A DuckDB connection holding the registered tables of one build.

    Parameters
    ----------
    tables
        The canonical tables as pandas frames, Arrow tables or Parquet paths.
    threads, memory_limit, temp_directory
        DuckDB settings; ``temp_directory`` is where operators spill when the data do not fit
        in ``memory_limit`` (a fresh temporary folder when ``None``).
    """

    def __init__(
        self,
        tables: Tables | Mapping[str, TableSource | None],
        *,
        threads: int | None = None,
        memory_limit: str | None = None,
        temp_directory: str | os.PathLike[str] | None = None,
    ):
        self._sources = table_sources(tables)
        config: dict[str, Any] = {
            "preserve_insertion_order": False,
            "block_allocator_memory": BLOCK_ALLOCATOR_MEMORY,
        }
        if threads is not None:
            config["threads"] = int(threads)
        if memory_limit is not None:
            config["memory_limit"] = str(memory_limit)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if temp_directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cxpredict-duckdb-")
            temp_directory = self._tmp.name
        config["temp_directory"] = str(temp_directory)
        self.con = duckdb.connect(":memory:", config=config)
        self.relations: dict[str, str] = {}
        self.schemas: dict[str, dict[str, str]] = {}
        self.kinds: dict[str, dict[str, str | None]] = {}
        self.prepared: int | None = None
        self._arrow: dict[str, pa.Table] = {}
        try:
            for name, value in self._sources.items():
                self._register(name, value)
        except BaseException:
            self.close()
            raise

    def _register(self, name: str, value: TableSource) -> None:
        if isinstance(value, str | os.PathLike):
            _check_parquet(name, Path(value))
            relation = _parquet_sql(value)
            schema = _schema_of(self.con, relation)
            self.kinds[name] = {c: duck_kind(t) for c, t in schema.items()}
        else:
            if isinstance(value, pd.DataFrame):
                arrow = arrow_table(value)
            elif isinstance(value, pa.Table):
                arrow = value
            else:
                raise DataError(
                    f"{name}: expected a pandas DataFrame, an Arrow table or a Parquet path, got "
                    f"{type(value).__name__}",
                    table=name,
                )
            if not arrow.num_columns:
                raise DataError(
                    f"{name}: the table has no columns; it needs {list(COLUMNS[name][0])}",
                    table=name,
                )
            relation = f"src_{name}"
            self.con.register(relation, arrow)
            self._arrow[name] = arrow
            schema = {f.name: str(f.type) for f in arrow.schema}
            self.kinds[name] = {f.name: _arrow_kind(f.type) for f in arrow.schema}
        required = COLUMNS[name][0]
        missing = [c for c in required if c not in schema]
        if missing:
            close = difflib.get_close_matches(missing[0], list(schema), n=1, cutoff=0.6)
            hint = f" (the closest is {close[0]!r})" if close else ""
            raise DataError(
                f"{name}: column(s) {missing} not found; the table has {list(schema)}{hint}; "
                f"rename them to the canonical names, or in a project config map them under "
                f"data.{name}.columns",
                table=name,
                column=missing[0],
            )
        _check_names(name, schema)
        _check_types(name, schema)
        _check_values(self.con, name, relation, schema, self._arrow.get(name))
        self.relations[name] = relation
        self.schemas[name] = schema

    def prepare(self, before: int) -> None:
        """Create the base views over the rows before ``before`` (microseconds), once."""
        if self.prepared is None:
            _base_views(self, before)
            if "customers" in self.relations:
                _check_one_row_per_customer(self, before)
            self.prepared = before
        elif self.prepared != before:
            raise ValueError("a session serves one latest cutoff; open another session")

    def close(self) -> None:
        """Close the connection and remove the temporary folder."""
        self.con.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    @contextmanager
    def closing_behind(self) -> Iterator[None]:
        """Close the session in a helper thread while the block runs; on leaving, wait for it.

        Closing returns DuckDB's memory (about 0.05 s for a large build), which DuckDB does
        without the interpreter lock, so other work can go on meanwhile. An error of the
        closing is raised on leaving; when the block raised one of its own, that one is raised
        with a note of the other. Where no thread can be started, the session is closed before
        the block runs.
        """
        errors: list[BaseException] = []

        def close() -> None:
            try:
                self.close()
            except BaseException as error:  # handed to the caller below
                errors.append(error)

        thread = threading.Thread(target=close, name="cxpredict-close", daemon=True)
        try:
            thread.start()
        except RuntimeError:
            # no thread to be had: close here, before the block
            self.close()
            yield
            return
        try:
            yield
        except BaseException as error:
            thread.join()
            if errors:
                error.add_note(f"closing the DuckDB session failed too: {errors[0]!r}")
            raise
        thread.join()
        if errors:
            raise errors[0]

    def fetch(self, sql: str, params: Sequence[Any] | None = None) -> dict[str, np.ndarray]:
        """Run ``sql`` and fetch the whole result as NumPy arrays (missing values kept masked)."""
        return self.con.execute(sql, params).fetchnumpy()

    def availability(self) -> Availability:
        """Which tables and columns are present, and the customer attribute types."""
        columns = []
        for name in TABLE_NAMES:
            if name not in self.relations:
                continue
            # A column counts when the table has it, whatever its values: availability must
            # not depend on rows, or rows after a cutoff could change the columns built.
            present = tuple(self.schemas[name])
            columns.append((name, present))
        attributes: list[tuple[str, str]] = []
        if "customers" in self.relations:
            reserved = set(COLUMNS["customers"][0]) | set(COLUMNS["customers"][1])
            present = dict(columns)["customers"]
            for column, kind in self.kinds["customers"].items():
                if column in reserved or column not in present or kind is None:
                    continue
                attributes.append((column, kind))
        return Availability(columns=tuple(columns), attributes=tuple(attributes))


@dataclass
class _Advice:
    """How many builds are inside :func:`small_pages`, and NumPy's setting before the first."""

    users: int = 0
    before: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)


_ADVICE = _Advice()


@contextmanager
def small_pages() -> Iterator[None]:
    """Let NumPy's large arrays use ordinary pages while inside, instead of huge pages.

    NumPy asks Linux for transparent huge pages for every large array. Where the kernel then
    compacts memory to find them, first writes to a fresh array become several times slower
    (measured here: 2 GB written in 0.7 s with ordinary pages, 1.9-3.9 s with huge pages);
    a feature build writes every output cell once, so it asks for ordinary pages. NumPy's
    setting is process-wide: it is restored when the last build running leaves.
    """
    toggle = getattr(np._core.multiarray, "_set_madvise_hugepage", None)  # type: ignore[attr-defined]
    if toggle is None:
        yield
        return
    with _ADVICE.lock:
        if _ADVICE.users == 0:
            _ADVICE.before = bool(toggle(False))
        _ADVICE.users += 1
    try:
        yield
    finally:
        with _ADVICE.lock:
            _ADVICE.users -= 1
            if _ADVICE.users == 0:
                toggle(_ADVICE.before)


@contextmanager
def session(
    tables: Tables | Mapping[str, TableSource | None],
    *,
    threads: int | None = None,
    memory_limit: str | None = None,
    temp_directory: str | os.PathLike[str] | None = None,
) -> Iterator[Session]:
    """A :class:`Session` closed on exit."""
    current = Session(
        tables, threads=threads, memory_limit=memory_limit, temp_directory=temp_directory
    )
    try:
        yield current
    finally:
        current.close()


# --------------------------------------------------------------------------------------------
# SQL helpers
# --------------------------------------------------------------------------------------------


def quote(value: str) -> str:
    """``value`` as a SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + str(name).replace('"', '""') + '"'


def code_sql(column: str, values: Sequence[str]) -> str:
    """SQL giving the vocabulary position of ``column`` (``len(values)`` is ``other``)."""
    if not values:
        return f"CASE WHEN {column} IS NULL THEN NULL ELSE 0 END"
    cases = " ".join(f"WHEN {quote(v)} THEN {i}" for i, v in enumerate(values))
    inner = f"CASE {column} {cases} ELSE {len(values)} END"
    return f"CASE WHEN {column} IS NULL THEN NULL ELSE ({inner}) END"


def floor_div_sql(value: str, divisor: int) -> str:
    """SQL for ``value`` divided by ``divisor``, rounded down also below zero (SQL's integer
    division rounds toward zero)."""
    return f"(({value}) - ((({value}) % {divisor}) + {divisor}) % {divisor}) // {divisor}"


def floor_day_sql(us: str) -> str:
    """SQL for the UTC day number (days since 1970-01-01) of the instant ``us``."""
    return floor_div_sql(us, DAY_US)


def _epoch_us_sql(column: str, kind: str) -> str:
    """SQL for the instants of ``column`` (of the DuckDB or Arrow type ``kind``) as whole
    microseconds, finer digits dropped as :func:`cutoff_micros` drops them (DuckDB's own
    cast of nanoseconds would round an instant just before a cutoff up to it)."""
    if kind.upper().startswith(("BIGINT", "INTEGER")):
        return ident(column)
    if kind.upper().endswith("_NS") or "[ns" in kind.lower():
        return floor_div_sql(f"epoch_ns({ident(column)})", 1000)
    return f"epoch_us({ident(column)})"


# --------------------------------------------------------------------------------------------
# The time grid
# --------------------------------------------------------------------------------------------


def cutoff_micros(cutoffs: Sequence[Any]) -> np.ndarray:
    """The cutoffs as sorted, unique UTC microseconds.

    Raises
    ------
    ValueError
        When no cutoff is given, or one is outside the years of :data:`YEARS`.
    """
    if isinstance(cutoffs, str | bytes):
        raise TypeError(
            f"cutoffs must be a list of instants, got the text {cutoffs!r}; pass [{cutoffs!r}]"
        )
    if len(cutoffs) == 0:
        raise ValueError("no cutoff given; pass at least one instant (e.g. '2025-01-01')")
    numbers = [
        c for c in cutoffs if isinstance(c, int | float | np.number) and not isinstance(c, bool)
    ]
    if numbers:
        raise TypeError(
            f"a cutoff must be a date or an instant ('2024-10-01', a Timestamp), got the number "
            f"{numbers[0]!r}"
        )
    stamps = sorted({to_utc(c) for c in cutoffs})
    outside = [s for s in (stamps[0], stamps[-1]) if not YEARS[0] <= s.year <= YEARS[1]]
    if outside:
        raise ValueError(
            f"cutoff {outside[0]} is outside the years {YEARS[0]}-{YEARS[1]} that features are "
            "computed for"
        )
    # digits below a microsecond are dropped, so cutoffs that differ only there are one
    return np.unique(np.array([s.value // 1000 for s in stamps], dtype=np.int64))


@dataclass
class Grid:
    """Slots between the instants that matter, and the key that maps an instant to its slot.

    The key of an instant is its UTC day times ``len(tods) + 1`` plus the number of the
    cutoffs' times of day it is at or past; any two instants separated by a boundary get
    different keys, so a table of keys gives each instant's slot with an equi-join.
    """

    cutoffs: np.ndarray
    windows: tuple[int, ...]
    boundaries: np.ndarray = field(init=False)
    tods: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        starts = [self.cutoffs - w * DAY_US for w in self.windows]
        self.boundaries = np.unique(np.concatenate([self.cutoffs, *starts]))
        self.tods = tuple(sorted({int(c) % DAY_US for c in self.cutoffs} - {0}))

    @property
    def n(self) -> int:
        return len(self.cutoffs)

    def key(self, us: int) -> int:
        day, tod = divmod(int(us), DAY_US)
        return day * (len(self.tods) + 1) + sum(tod >= t for t in self.tods)

    def key_sql(self, us: str) -> str:
        day = floor_day_sql(us)
        if not self.tods:
            return f"({day})"
        tod = f"((({us}) % {DAY_US}) + {DAY_US}) % {DAY_US}"
        parts = " + ".join(f"({tod} >= {t})::BIGINT" for t in self.tods)
        return f"(({day}) * {len(self.tods) + 1} + {parts})"

    #: Up to this many boundaries, an instant's slot is a sum of comparisons (no join).
    MAX_COMPARED = 16

    def slot_sql(self, us: str) -> str | None:
        """SQL for the slot of ``us`` when there are few boundaries, else ``None``."""
        if len(self.boundaries) > self.MAX_COMPARED:
            return None
        return "(" + " + ".join(f"({us} >= {int(b)})::INTEGER" for b in self.boundaries) + ")"

    def lookup(self) -> pa.Table:
        """Slot of every key from the first boundary's to the last's (earlier keys: slot 0)."""
        keys = np.array([self.key(b) for b in self.boundaries], dtype=np.int64)
        span = np.arange(keys[0], keys[-1] + 1, dtype=np.int64)
        slots = np.searchsorted(keys, span, side="right").astype(np.int32)
        return pa.table({"k": span, "slot": slots})

    def slots(self) -> pa.Table:
        """For each slot: ``a`` (first cutoff it is before) and ``b_<w>`` (after ``w`` days)."""
        starts = np.concatenate([[np.iinfo(np.int64).min], self.boundaries])
        columns: dict[str, np.ndarray] = {
            "slot": np.arange(len(starts), dtype=np.int32),
            "a": np.searchsorted(self.cutoffs, starts, side="right").astype(np.int32),
        }
        for w in self.windows:
            shifted = self.cutoffs - w * DAY_US
            columns[f"b_{w}"] = np.searchsorted(shifted, starts, side="right").astype(np.int32)
        return pa.table(columns)


# --------------------------------------------------------------------------------------------
# Results over the (cutoff, customer) grid
# --------------------------------------------------------------------------------------------


def _filled(values: np.ndarray, fill: float | int) -> np.ndarray:
    if isinstance(values, np.ma.MaskedArray):
        return values.filled(fill)
    return np.asarray(values)


#: Cells (cutoffs x customers) of one block: the arrays of a block stay in the CPU caches.
BLOCK_CELLS = 1 << 18


@dataclass(frozen=True)
class Cells:
    """The (customer, cutoff) cells of one fetch, ordered by block of customers.

    The cells of block ``b`` are the rows ``bounds[b]:bounds[b + 1]``; the values stored
    with them are in the same order.
    """

    cid: np.ndarray
    j: np.ndarray
    bounds: np.ndarray
    #: Whether the cells are every customer in order, at one cutoff (``cid`` is ``arange``).
    every: bool = False


def _compact(values: np.ndarray) -> np.ndarray:
    """Integer ``values`` as int32 when they fit (half the memory), else int64."""
    small = np.iinfo(np.int32)
    if values.dtype == np.int32:
        return values
    if len(values) == 0 or (values.min() >= small.min and values.max() <= small.max):
        return values.astype(np.int32)
    return values.astype(np.int64, copy=False)


@dataclass
class Results:
    """Aggregates fetched per (customer, cutoff), read block by block of customers.

    Families do not read this store directly: :meth:`blocks` yields :class:`Block` views, each
    holding dense ``(cutoffs, customers)`` arrays for a range of customers small enough to
    stay in the CPU caches, so that no array is as large as the output.
    """

    customer_ids: pd.Index
    entry: np.ndarray
    cutoffs: np.ndarray
    _sums: dict[str, dict[int, tuple[Cells, np.ndarray]]] = field(default_factory=dict)
    _values: dict[str, tuple[str, Cells, np.ndarray]] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """``(cutoffs, customers)``."""
        return (len(self.cutoffs), len(self.customer_ids))

    @property
    def block_size(self) -> int:
        """Customers per block."""
        return max(1, BLOCK_CELLS // max(1, len(self.cutoffs)))

    @property
    def n_blocks(self) -> int:
        """Number of blocks (at least one)."""
        return max(1, -(-self.shape[1] // self.block_size))

    def _bounds(self, cid: np.ndarray) -> np.ndarray:
        """Where each block starts and ends among cells ``cid`` ordered by block."""
        per_block = np.bincount(cid // self.block_size, minlength=self.n_blocks)
        return np.concatenate([[0], np.cumsum(per_block)])

    def _cells(self, cid: np.ndarray, j: np.ndarray) -> tuple[Cells, np.ndarray | None]:
        cid = np.asarray(cid, dtype=np.int32 if self.shape[1] < 2**31 else np.int64)
        j = np.asarray(j, dtype=np.int16 if self.shape[0] < 2**15 else np.int32)
        if self.n_blocks == 1:
            return Cells(cid, j, np.array([0, len(cid)])), None
        block = cid // self.block_size
        # A stable radix sort on a 16-bit key when there are few enough blocks.
        wide = self.n_blocks > np.iinfo(np.uint16).max
        order = np.argsort(block.astype(np.int64 if wide else np.uint16), kind="stable")
        return Cells(cid[order], j[order], self._bounds(cid)), order

    def keep(
        self,
        got: Mapping[str, np.ndarray],
        sums: Mapping[str, tuple[str, int]] | None = None,
        values: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        """Keep the columns of one fetch of ``cid``, ``j`` and values.

        ``sums`` maps a fetched column to ``(aggregate, days)``: 0 for the sums per first
        cutoff, ``w`` for the sums per first cutoff after ``w`` days. ``values`` maps a fetched
        column to ``(aggregate, kind)``: ``max``, ``min``, ``last`` or ``cutoff``.
        """
        if self.shape[0] == 1 and 2 * len(got["cid"]) >= self.shape[1]:
            # at one cutoff, a fetch covering at least half the customers is kept over every
            # customer; one covering fewer stays sparse (below), as an array over every
            # customer would then hold mostly fill values
            self._keep_every(got, sums or {}, values or {})
            return
        cells, order = self._cells(_filled(got["cid"], 0), _filled(got["j"], 0))

        def arranged(column: np.ndarray) -> np.ndarray:
            return column if order is None else column[order]

        for column, (name, days) in (sums or {}).items():
            fetched = _compact(arranged(np.asarray(_filled(got[column], 0))))
            self._sums.setdefault(name, {})[days] = (cells, fetched)
        for column, (name, kind) in (values or {}).items():
            keep = arranged(~np.ma.getmaskarray(got[column]))
            raw = arranged(np.asarray(_filled(got[column], 0), dtype=np.float64))
            if keep.all():
                self._values[name] = (kind, cells, raw)
                continue
            cid = cells.cid[keep]
            self._values[name] = (kind, Cells(cid, cells.j[keep], self._bounds(cid)), raw[keep])

    def _keep_every(
        self,
        got: Mapping[str, np.ndarray],
        sums: Mapping[str, tuple[str, int]],
        values: Mapping[str, tuple[str, str]],
    ) -> None:
        """At one cutoff, keep each fetched column as an array over every customer.

        Scattered once into customer order, a column is then read block by block as a slice,
        without sorting the fetched rows by block first. NumPy scatters without the
        interpreter lock, and DuckDB is idle meanwhile: two threads share the columns.
        """
        n = self.shape[1]
        every = Cells(
            np.arange(n, dtype=np.int32 if n < 2**31 else np.int64),
            np.zeros(n, dtype=np.int16),
            np.minimum(np.arange(self.n_blocks + 1) * self.block_size, n),
            every=True,
        )
        cid = _filled(got["cid"], 0)

        def summed(column: str) -> np.ndarray:
            fetched = np.asarray(_filled(got[column], 0))
            dense = np.zeros(n, dtype=fetched.dtype)
            dense[cid] = fetched
            return _compact(dense)

        def valued(column: str) -> np.ndarray:
            raw = np.asarray(_filled(got[column], 0), dtype=np.float64)
            raw[np.ma.getmaskarray(got[column])] = np.nan
            dense = np.full(n, np.nan)
            dense[cid] = raw
            return dense

        with ThreadPoolExecutor(2, thread_name_prefix="cxpredict-keep") as pool:
            sum_arrays = pool.map(summed, sums)
            value_arrays = pool.map(valued, values)
            for (name, days), dense in zip(sums.values(), sum_arrays, strict=True):
                self._sums.setdefault(name, {})[days] = (every, dense)
            for (name, kind), dense in zip(values.values(), value_arrays, strict=True):
                self._values[name] = (kind, every, dense)

    @property
    def nbytes(self) -> int:
        """Bytes held by the fetched values (released as the families are computed).

        The aggregates of one fetch share their cells: each array is counted once.
        """
        stored = [cv for per_days in self._sums.values() for cv in per_days.values()]
        stored += [(cells, values) for _kind, cells, values in self._values.values()]
        arrays = {id(a): a for cells, values in stored for a in (cells.cid, cells.j, values)}
        return sum(a.nbytes for a in arrays.values())

    def release(self, keep: set[str]) -> None:
        """Drop the fetched values of every aggregate not named in ``keep``."""
        for store in (self._sums, self._values):
            for name in [n for n in store if n not in keep]:
                del store[name]

    @property
    def population(self) -> np.ndarray:
        """Whether each customer is known before each cutoff (first order or signup)."""
        return self.entry[None, :] < self.cutoffs[:, None]

    def blocks(self) -> Iterator[Block]:
        """The customers in blocks of :attr:`block_size` (one empty block without customers)."""
        n = self.shape[1]
        for b, lo in enumerate(range(0, max(n, 1), self.block_size)):
            yield Block(self, b, lo, min(n, lo + self.block_size))


def _accumulated(accumulate: Callable[..., np.ndarray], dense: np.ndarray) -> np.ndarray:
    """``dense`` accumulated in place over the cutoffs (axis 0); with one cutoff, as it is."""
    if dense.shape[0] > 1:
        accumulate(dense, axis=0, out=dense)
    return dense


@dataclass
class Block:
    """Dense ``(cutoffs, customers)`` arrays of the customers ``lo:hi``, computed on first use.

    The arrays are ordered by cutoff then customer; ``cutoff_grid`` and ``entry`` broadcast
    against them.
    """

    results: Results
    number: int
    lo: int
    hi: int
    _cache: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.results.cutoffs), self.hi - self.lo)

    @property
    def cutoff_grid(self) -> np.ndarray:
        """The cutoffs (microseconds) as a column, to broadcast against the arrays."""
        return self.results.cutoffs[:, None]

    @property
    def entry(self) -> np.ndarray:
        """The customers' entry instants as a row, to broadcast against the arrays."""
        return self.results.entry[None, self.lo : self.hi]

    def _at(self, cells: Cells) -> tuple[slice, tuple[np.ndarray, np.ndarray]]:
        """The rows of ``cells`` in this block, and their (cutoff, customer) places here."""
        rows = slice(cells.bounds[self.number], cells.bounds[self.number + 1])
        return rows, (cells.j[rows], cells.cid[rows] - self.lo)

    def _dense(self, cells: Cells, values: np.ndarray, fill: Any) -> np.ndarray:
        dtype = np.int64 if values.dtype.kind in "iub" and fill == 0 else np.float64
        if cells.every:
            # every customer in order: the block is a slice (missing values already filled)
            out = np.empty(self.shape, dtype=dtype)
            out[0] = values[cells.bounds[self.number] : cells.bounds[self.number + 1]]
            return out
        out = np.zeros(self.shape, dtype) if dtype == np.int64 else np.full(self.shape, fill, dtype)
        rows, (j, cid) = self._at(cells)
        if self.shape[0] == 1:
            out[0, cid] = values[rows]  # one cutoff: a plain index is several times faster
        else:
            out[j, cid] = values[rows]
        return out

    def total(self, name: str) -> np.ndarray:
        """The lifetime sum ``name`` (int64): rows before each cutoff."""
        key = (name, 0)
        if key not in self._cache:
            dense = self._dense(*self.results._sums[name][0], 0)
            self._cache[key] = _accumulated(np.cumsum, dense)
        return self._cache[key]

    def window(self, name: str, days: int) -> np.ndarray:
        """The sum ``name`` (int64) over ``[cutoff - days, cutoff)``."""
        key = (name, days)
        if key not in self._cache:
            exits = _accumulated(np.cumsum, self._dense(*self.results._sums[name][days], 0))
            self._cache[key] = np.subtract(self.total(name), exits, out=exits)
        return self._cache[key]

    def value(self, name: str) -> np.ndarray:
        """A ``max``, ``min``, ``last`` or per-cutoff aggregate as float64 (NaN: no rows)."""
        kind, cells, values = self.results._values[name]
        dense = self._dense(cells, values, np.nan)
        if kind == "max":
            _accumulated(np.fmax.accumulate, dense)
        elif kind == "min":
            _accumulated(np.fmin.accumulate, dense)
        elif kind == "last" and self.shape[0] > 1:
            seen = np.zeros(self.shape, dtype=bool)
            seen[self._at(cells)[1]] = True
            for k in range(1, self.shape[0]):
                carry = ~seen[k]
                dense[k, carry] = dense[k - 1, carry]
        return dense

    def days_since(self, instants: np.ndarray) -> np.ndarray:
        """Days (float) from each instant (microseconds) to its cutoff."""
        return (self.cutoff_grid - instants) / DAY_US


# --------------------------------------------------------------------------------------------
# Running the requests
# --------------------------------------------------------------------------------------------


_TEXT_COLUMNS = ("customer_id", "order_id", "category", "channel", "kind")


def _text(column: str) -> str:
    """A base view's column: text as text; a rating as a number, a NaN one as missing (no
    rating, as pandas holds one)."""
    if column in _TEXT_COLUMNS:
        return f"CAST({ident(column)} AS VARCHAR) AS {ident(column)}"
    if column == "rating":
        return "nullif(CAST(rating AS DOUBLE), 'NaN'::DOUBLE) AS rating"
    return ident(column)


def _base_views(s: Session, cmax: int) -> None:
    """Views ``orders``, ``interactions``, ``customers`` with instants as ``us`` microseconds."""
    con = s.con
    for name in ("orders", "interactions"):
        if name not in s.relations:
            continue
        schema = s.schemas[name]
        cols = [_text(c) for c in schema if c not in ("timestamp", "responded_at")]
        us = _epoch_us_sql("timestamp", schema["timestamp"])
        extra = ""
        if name == "interactions":
            extra = (
                f", {_epoch_us_sql('responded_at', schema['responded_at'])} AS responded_us"
                if "responded_at" in schema
                else ", NULL::BIGINT AS responded_us"
            )
            if "rating" not in schema:
                extra += ", NULL::DOUBLE AS rating"
        con.execute(
            f"CREATE TEMP VIEW {name} AS SELECT {', '.join(cols)}, {us} AS us{extra} "
            f"FROM {s.relations[name]} WHERE {us} < {cmax}"
        )
    if "customers" in s.relations:
        schema = s.schemas["customers"]
        kinds = s.kinds["customers"]
        cols = [
            f"CAST({ident(c)} AS VARCHAR) AS {ident(c)}"
            if kinds.get(c) == "categorical" or c == "customer_id"
            else ident(c)
            for c in schema
            if c not in ("signup_at", "updated_at")
        ]
        signup = (
            _epoch_us_sql("signup_at", schema["signup_at"])
            if "signup_at" in schema
            else "NULL::BIGINT"
        )
        updated = (
            _epoch_us_sql("updated_at", schema["updated_at"])
            if "updated_at" in schema
            else "NULL::BIGINT"
        )
        con.execute(
            f"CREATE TEMP VIEW customers AS SELECT {', '.join(cols)}, {signup} AS signup_us, "
            f"{updated} AS updated_us FROM {s.relations['customers']}"
        )


def _dimension(s: Session, cmax: int, first_orders: str) -> tuple[pd.Index, np.ndarray]:
    """Customers known before the latest cutoff, sorted by id, with their entry instant.

    The ids come back as a string index over DuckDB's Arrow output (no Python strings made).

    ``first_orders`` is a table of ``customer_id`` and ``entry_us`` (first purchase instants;
    missing for a customer with refunds only). A signup counts from the later of its
    ``signup_at`` and the ``updated_at`` of its row.
    """
    parts = [f"SELECT customer_id, {ENTRY} AS us FROM {first_orders}"]
    if "customers" in s.relations:
        # a signup counts from when its row was recorded: a later correction of the signup
        # date is not known before its updated_at; a row without a signup is no signup (and
        # DuckDB's greatest skips a missing value, hence the CASE)
        known = (
            "CASE WHEN signup_us IS NOT NULL "
            "THEN greatest(signup_us, COALESCE(updated_us, signup_us)) END"
        )
        parts.append(f"SELECT customer_id, {known} AS us FROM customers WHERE {known} < {cmax}")
    s.con.execute(
        "CREATE TEMP TABLE dim AS SELECT customer_id, min(us) AS entry, "
        "(row_number() OVER (ORDER BY customer_id) - 1)::INTEGER AS cid "
        f"FROM ({' UNION ALL '.join(parts)}) WHERE us IS NOT NULL GROUP BY customer_id"
    )
    got = s.con.sql("SELECT customer_id, entry FROM dim ORDER BY cid").to_arrow_table()
    ids = pd.Index(pd.array(got["customer_id"], dtype="str"), name="customer_id")
    entry = got["entry"].fill_null(0).to_numpy().astype(np.int64, copy=False)
    return ids, entry


def sum_sql(agg: Aggregate, where: str = "") -> str:
    """SQL for the ``sum`` or ``count`` ``agg`` as ``BIGINT``, over the rows where ``where`` holds.

    DuckDB counts with ``count(*) FILTER`` several times faster than it sums casts of
    booleans, hence the ``count`` kind.
    """
    if agg.kind == "count":
        both = " AND ".join(f"({c})" for c in (agg.expr, where) if c and c != "true")
        return f"count(*) FILTER (WHERE {both})" if both else "count(*)"
    filtered = f" FILTER (WHERE {where})" if where else ""
    return f"sum({agg.expr}){filtered}::BIGINT"


def _level_one(agg: Aggregate) -> str:
    name = ident(agg.name)
    if agg.kind in SUMMED:
        return f"{sum_sql(agg)} AS {name}"
    if agg.kind in ("max", "min"):
        return f"{agg.kind}({agg.expr}) AS {name}"
    order = f"CASE WHEN ({agg.expr}) IS NOT NULL THEN {agg.order} END"
    if agg.code_bits:
        return f"max({order}) AS {name}"
    return f"arg_max({agg.expr}, {order}) AS {name}, max({order}) AS {ident(agg.name + '__at')}"


def _level_single(agg: Aggregate) -> str:
    if agg.kind != "last" or agg.code_bits:
        return _level_one(agg)
    order = f"CASE WHEN ({agg.expr}) IS NOT NULL THEN {agg.order} END"
    return f"arg_max({agg.expr}, {order}) AS {ident(agg.name)}"


def _level_two(agg: Aggregate) -> str:
    name = ident(agg.name)
    if agg.kind in SUMMED:
        return f"sum({name})::BIGINT AS {name}"
    if agg.kind in ("max", "min") or agg.code_bits:
        return f"{'max' if agg.code_bits else agg.kind}({name}) AS {name}"
    return f"arg_max({name}, {ident(agg.name + '__at')}) AS {name}"


def _store(
    results: Results,
    aggs: Sequence[Aggregate],
    got: dict[str, np.ndarray],
    *,
    windows: bool = False,
) -> None:
    """Keep the per (customer, first cutoff) values of ``aggs`` fetched in ``got``.

    With ``windows``, the fetch also holds each windowed sum ``name@w``.
    """
    sums = {a.name: (a.name, 0) for a in aggs if a.kind in SUMMED}
    if windows:
        sums |= {f"{a.name}@{w}": (a.name, w) for a in aggs if a.kind in SUMMED for w in a.windows}
    values = {a.name: (a.name, a.kind) for a in aggs if a.kind not in SUMMED}
    for agg in aggs:
        if agg.code_bits:
            got[agg.name] = _decoded(got[agg.name], agg.code_bits)
    results.keep(got, sums, values)


def columns_but(alias: str, hidden: str) -> str:
    """SQL for every column of the relation ``alias`` but the ``hidden`` ones (comma-separated;
    none when empty)."""
    return f"{alias}.* EXCLUDE ({hidden})" if hidden else f"{alias}.*"


def per_cutoff_rows(source: str, columns: str = "", hidden: str = "") -> str:
    """SQL pairing each row of ``source`` with every cutoff after it (``j``, ``c``, ``columns``),
    without the source's ``hidden`` columns."""
    extra = f", {columns}" if columns else ""
    star = columns_but("e", hidden)
    return f"SELECT {star}, g.j, g.c{extra} FROM {ident(source)} e JOIN cutoff_grid g ON e.us < g.c"


def _query_of(item: PerCutoff) -> tuple[str, str, str, str]:
    """What a :class:`PerCutoff` shares with the others computed in the same query."""
    return (item.source, item.columns, item.where, item.hidden)


def _materialized(source: Source, readers: int, several: bool) -> bool:
    """Whether ``source``, read by ``readers`` queries, is computed into a table: over several
    cutoffs when it asks to be, over one cutoff only when more than one query reads it."""
    if not source.materialize or several:
        return source.materialize
    return readers > 1


def _readers(
    source: Source,
    sources: Sequence[Source],
    aggregates: Sequence[Aggregate],
    per_cutoff: Sequence[PerCutoff],
) -> int:
    """How many queries read ``source``: one for all its aggregates, one per query of its
    per-cutoff values, one per other source naming it."""
    mention = re.compile(rf"\b{re.escape(source.name)}\b")
    readers = int(any(a.source == source.name for a in aggregates))
    readers += len({_query_of(p) for p in per_cutoff if p.source == source.name})
    readers += sum(1 for o in sources if o.name != source.name and mention.search(o.sql))
    return readers


def _shortcuts_taken(
    s: Session, aggregates: Sequence[Aggregate], on_sql: Callable[[str], None] | None = None
) -> list[Aggregate]:
    """``aggregates``, each with its :class:`Shortcut` taken where its conditions hold (each
    set of conditions is asked once)."""
    holds: dict[tuple[str, ...], bool] = {}

    def true(sql: str) -> bool:
        query = f"SELECT ({sql})"
        if on_sql is not None:
            on_sql(query)
        return bool(s.con.execute(query).fetchall()[0][0])

    out = []
    for agg in aggregates:
        cut = agg.shortcut
        if cut is not None:
            if cut.holds not in holds:
                holds[cut.holds] = all(true(sql) for sql in cut.holds)
            if holds[cut.holds]:
                agg = replace(agg, source=cut.source, expr=cut.expr, one_cutoff=None)
            agg = replace(agg, shortcut=None)
        out.append(agg)
    return out


def merge_aggregates(aggregates: Sequence[Aggregate]) -> list[Aggregate]:
    """One aggregate per (source, name), with the union of the windows asked for.

    Raises
    ------
    ValueError
        When two families define the same name differently.
    """
    merged: dict[tuple[str, str], Aggregate] = {}
    for agg in aggregates:
        key = (agg.source, agg.name)
        if key in merged:
            known = merged[key]
            if replace(known, windows=()) != replace(agg, windows=()):
                raise ValueError(f"two different definitions of the aggregate {agg.name!r}")
            merged[key] = replace(agg, windows=tuple(sorted({*known.windows, *agg.windows})))
        else:
            merged[key] = agg
    return list(merged.values())


def run(
    s: Session,
    cutoffs: np.ndarray,
    requests: Sequence[Request],
    *,
    on_sql: Callable[[str], None] | None = None,
) -> Results:
    """Run every request for every cutoff (microseconds, sorted) in one pass per source.

    Window: each aggregate sees the rows of its source strictly before each cutoff (and, for
    a window of ``w`` days, at or after ``cutoff - w days``).
    """
    con = s.con
    cmax = int(cutoffs[-1])

    def execute(sql: str) -> None:
        if on_sql is not None:
            on_sql(sql)
        con.execute(sql)

    s.prepare(cmax)
    sources = [r for r in requests if isinstance(r, Source)]
    several = len(cutoffs) > 1
    aggregates = merge_aggregates(
        [
            r
            if several or r.one_cutoff is None
            else replace(r, source=r.one_cutoff, one_cutoff=None)
            for r in _shortcuts_taken(s, [r for r in requests if isinstance(r, Aggregate)], on_sql)
        ]
    )
    per_cutoff = list(
        {(r.source, r.name): r for r in requests if isinstance(r, PerCutoff)}.values()
    )
    entry_source = [a.source for a in aggregates if a.name == ENTRY]
    if not entry_source:
        raise ValueError(f"no aggregate named {ENTRY!r}: the first order of each customer")

    seen: dict[str, str] = {}
    for source in sources:
        if source.name in seen:
            if seen[source.name] != source.sql:
                raise ValueError(f"two different definitions of the source {source.name!r}")
            continue
        seen[source.name] = source.sql
        readers = _readers(source, sources, aggregates, per_cutoff)
        if not readers:
            continue
        kind = "TABLE" if _materialized(source, readers, several) else "VIEW"
        execute(f"CREATE TEMP {kind} {ident(source.name)} AS {source.sql}")

    windows = tuple(sorted({w for a in aggregates for w in a.windows}))
    grid = Grid(cutoffs, windows)
    con.register(
        "cutoff_grid", pa.table({"j": np.arange(len(cutoffs), dtype=np.int32), "c": cutoffs})
    )
    con.register("slot_keys", grid.lookup())
    con.register("slot_info", grid.slots())

    # First pass: every source reduced to one row per (customer, slot), keyed by the raw id.
    by_source: dict[str, list[Aggregate]] = {}
    for agg in aggregates:
        by_source.setdefault(agg.source, []).append(agg)
    order = sorted(by_source, key=lambda name: name != entry_source[0])
    if not several:
        return _run_one(s, cutoffs, order, by_source, per_cutoff, execute)
    tables = {source: f"slotted_{i}" for i, source in enumerate(order)}
    packings = {source: _Packing.of(by_source[source]) for source in order}
    n = len(cutoffs)

    def first_pass(source: str) -> None:
        """``{table}_raw``: the source reduced to one row per (customer, slot)."""
        aggs, packing = by_source[source], packings[source]
        level_one = [_level_one(a) for a in aggs if packing.place(a) is None]
        level_one += packing.sums(aggs)
        rows = packing.source(source)
        compared = grid.slot_sql("e.us")
        slotted = (
            f"SELECT customer_id, {compared} AS slot, {', '.join(level_one)} FROM {rows} e"
            if compared is not None
            else f"SELECT customer_id, COALESCE(k.slot, 0) AS slot, {', '.join(level_one)} "
            f"FROM {rows} e LEFT JOIN slot_keys k ON k.k = {grid.key_sql('e.us')}"
        )
        execute(
            f"CREATE OR REPLACE TEMP TABLE {tables[source]}_raw AS {slotted} "
            f"WHERE e.us < {cmax} GROUP BY ALL"
        )

    def second_pass(source: str) -> bool:
        """Keep the source's values per (customer, first cutoff after the slot) and per window
        exit; ``False`` when a packed count may have overflowed."""
        aggs, table, packing = by_source[source], tables[source], packings[source]
        plain = [a for a in aggs if packing.place(a) is None]
        execute(
            f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT d.cid, r.* EXCLUDE (customer_id) "
            f"FROM {table}_raw r JOIN dim d USING (customer_id)"
        )
        execute(f"DROP TABLE {table}_raw")
        level_two = [_level_two(a) for a in plain] + packing.resums(aggs)
        got = s.fetch(
            packing.read(
                f"SELECT cid, a AS j, {', '.join(level_two)} FROM {table} "
                f"JOIN slot_info USING (slot) WHERE a < {n} GROUP BY cid, a",
                aggs,
            )
        )
        if not packing.fits(got):
            return False
        later(_store, results, aggs, got)
        summed = [a for a in aggs if a.kind in SUMMED and a.windows]
        for w in sorted({w for a in summed for w in a.windows}):
            exits = [a for a in summed if w in a.windows]
            cols = [
                f"sum({ident(a.name)})::BIGINT AS {ident(a.name)}"
                for a in exits
                if packing.place(a) is None
            ]
            got = s.fetch(
                packing.read(
                    f"SELECT cid, b_{w} AS j, {', '.join(cols + packing.resums(exits))} "
                    f"FROM {table} JOIN slot_info USING (slot) WHERE b_{w} < {n} "
                    f"GROUP BY cid, b_{w}",
                    exits,
                )
            )
            if not packing.fits(got):
                return False
            later(results.keep, got, sums={a.name: (a.name, w) for a in exits})
        execute(f"DROP TABLE {table}")
        return True

    # First pass: every source reduced to one row per (customer, slot), keyed by the raw id;
    # then per (customer, first cutoff after the slot) and per window exit.
    for source in order:
        try:
            first_pass(source)
        except duckdb.OutOfRangeException:
            packings[source] = _Packing(())
            first_pass(source)
        if source == entry_source[0]:
            ids, entry = _dimension(s, cmax, f"{tables[source]}_raw")
            results = Results(customer_ids=ids, entry=entry, cutoffs=cutoffs)
    # The fetched values are kept by a helper thread (NumPy sorts and copies them, mostly
    # without the interpreter lock) while DuckDB runs the next query; one helper keeps them
    # in the order they were fetched. At most KEEP_AHEAD fetches wait for it: a helper that
    # falls behind holds back the next query instead of letting fetches pile up in memory,
    # and its first error is raised at the next fetch.
    with ThreadPoolExecutor(1, thread_name_prefix="cxpredict-keep") as keeper:
        kept: list[Future[None]] = []

        def later(keep: Callable[..., None], *args: Any, **kwargs: Any) -> None:
            # the oldest first, done or not, so that the first error is the one raised
            while len(kept) >= max(1, KEEP_AHEAD):
                kept.pop(0).result()
            kept.append(keeper.submit(keep, *args, **kwargs))

        for source in order:
            try:
                done = second_pass(source)
            except duckdb.OutOfRangeException:
                done = False
            if not done:
                # Counted again without packing: some customer has too many rows.
                packings[source] = _Packing(())
                first_pass(source)
                second_pass(source)
        _run_per_cutoff(s, results, per_cutoff)
        for future in kept:
            future.result()
    return results


#: Fetched results of a build over several cutoffs that may wait for the helper keeping them.
KEEP_AHEAD = 2
#: Count conditions summed together as bit fields of one 128-bit integer (14 bits each at 9).
PACK_FIELDS = 9
#: A source's counts are packed when they have at least this many distinct conditions.
PACK_FROM = 8
#: Counts over windows are packed when at least this many conditions have windows: a pack
#: is summed again per window, and a 128-bit sum costs DuckDB about what four counts do.
PACK_WINDOWED_FROM = 4


@dataclass(frozen=True)
class _Packing:
    """The ``count`` aggregates of one source, summed as bit fields of a few 128-bit integers.

    DuckDB updates one aggregate state per row and aggregate; summing ``2**(bits * k)`` for each
    condition ``k`` that holds counts up to :data:`PACK_FIELDS` conditions in one state. The
    counts are exact while no group has ``2**bits`` rows or more: every fetch carries its row
    count ``__rows`` so that :meth:`fits` can tell, and a sum past 128 bits raises.
    """

    packs: tuple[tuple[str, ...], ...]

    @classmethod
    def of(cls, aggs: Sequence[Aggregate]) -> _Packing:
        """The packing of ``aggs``' counts, or an empty one when they are too few to gain."""
        counts = [a for a in aggs if a.kind == "count"]
        conditions = list(dict.fromkeys(a.expr for a in counts))
        # Conditions counted over windows first, so that they share as few packs as possible:
        # each pack holding one is summed again per window.
        windowed = {a.expr for a in counts if a.windows}
        if len(windowed) < PACK_WINDOWED_FROM:
            conditions = [c for c in conditions if c not in windowed]
        conditions.sort(key=lambda c: c not in windowed)
        if len(conditions) < PACK_FROM:
            return cls(())
        size = -(-len(conditions) // -(-len(conditions) // PACK_FIELDS))
        return cls(tuple(tuple(conditions[k : k + size]) for k in range(0, len(conditions), size)))

    def width(self, p: int) -> int:
        """Bits per field of pack ``p`` (its fields share 126 bits)."""
        return 126 // len(self.packs[p])

    def place(self, agg: Aggregate) -> tuple[int, int] | None:
        """``(pack, shift)`` of a packed count, ``None`` for any other aggregate."""
        for p, conditions in enumerate(self.packs):
            if agg.kind == "count" and agg.expr in conditions:
                return p, conditions.index(agg.expr) * self.width(p)
        return None

    def _used(self, aggs: Sequence[Aggregate]) -> list[int]:
        return sorted({place[0] for a in aggs if (place := self.place(a)) is not None})

    def _days(self, aggs: Sequence[Aggregate], p: int) -> list[int]:
        return sorted({w for a in aggs if p in self._used([a]) for w in a.windows})

    def field(self, agg: Aggregate, suffix: str = "") -> str:
        """SQL reading ``agg``'s count from the summed pack column ``r.__pack_<p><suffix>``."""
        place = self.place(agg)
        if place is None:
            raise ValueError(f"{agg.name!r} is not a packed count")
        p, shift = place
        mask = 2 ** self.width(p) - 1
        # a field of up to 31 bits is read as a 32-bit integer: half the memory fetched
        kind = "INTEGER" if self.width(p) <= 31 else "BIGINT"
        return f"((r.__pack_{p}{suffix} >> {shift}) & {mask})::{kind}"

    def source(self, source: str) -> str:
        """``source`` with one column of bit fields per pack."""
        if not self.packs:
            return ident(source)
        columns = []
        for p, conditions in enumerate(self.packs):
            terms = " + ".join(
                f"CASE WHEN ({c}) THEN {2 ** (self.width(p) * k)}::HUGEINT ELSE 0::HUGEINT END"
                for k, c in enumerate(conditions)
            )
            columns.append(f"{terms} AS __pack_{p}")
        return f"(SELECT *, {', '.join(columns)} FROM {ident(source)} e)"

    def sums(self, aggs: Sequence[Aggregate], cut: int | None = None) -> list[str]:
        """Aggregates over rows: each pack's sum and the row count; with ``cut``, also each
        pack's sums before the window starts of its counts (``__pack_<p>_<w>``)."""
        if not self.packs:
            return []
        out = ["count(*) AS __rows"]
        for p in range(len(self.packs)):
            out.append(f"sum(__pack_{p}) AS __pack_{p}")
            out += [
                f"sum(__pack_{p}) FILTER (WHERE e.us < {cut - w * DAY_US}) AS __pack_{p}_{w}"
                for w in (self._days(aggs, p) if cut is not None else ())
            ]
        return out

    def resums(self, aggs: Sequence[Aggregate]) -> list[str]:
        """Aggregates over rows of :meth:`sums`: the packs holding ``aggs`` and the rows."""
        used = self._used(aggs)
        if not used:
            return []
        return ["sum(__rows)::BIGINT AS __rows"] + [f"sum(__pack_{p}) AS __pack_{p}" for p in used]

    def read(self, sql: str, aggs: Sequence[Aggregate]) -> str:
        """``sql`` (a query of :meth:`resums` of ``aggs``) with each packed count read back."""
        used = self._used(aggs)
        if not used:
            return sql
        hidden = ", ".join(["__rows", *(f"__pack_{p}" for p in used)])
        reads = [f"{self.field(a)} AS {ident(a.name)}" for a in aggs if self.place(a)]
        return f"SELECT r.* EXCLUDE ({hidden}), r.__rows, {', '.join(reads)} FROM ({sql}) r"

    def columns(self, aggs: Sequence[Aggregate]) -> list[str]:
        """The columns of :meth:`sums` with ``cut``."""
        if not self.packs:
            return []
        out = ["__rows"]
        for p in range(len(self.packs)):
            out += [f"__pack_{p}", *(f"__pack_{p}_{w}" for w in self._days(aggs, p))]
        return out

    def reads(self, aggs: Sequence[Aggregate]) -> list[str]:
        """Select items reading each packed count and its sums before window starts back from
        the columns of :meth:`sums` with ``cut``."""
        out = ["r.__rows"] if self.packs else []
        for agg in aggs:
            if self.place(agg) is None:
                continue
            out.append(f"{self.field(agg)} AS {ident(agg.name)}")
            out += [
                f"{self.field(agg, f'_{w}')} AS {ident(f'{agg.name}@{w}')}" for w in agg.windows
            ]
        return out

    def fits(self, got: Mapping[str, np.ndarray]) -> bool:
        """Whether no packed field of a fetch can have overflowed into the next one."""
        if not self.packs or "__rows" not in got:
            return True
        rows = _filled(got["__rows"], 0)
        bits = min(self.width(p) for p in range(len(self.packs)))
        return len(rows) == 0 or int(rows.max()) < 2**bits


def _grouped_one(source: str, aggs: Sequence[Aggregate], cut: int, packing: _Packing) -> str:
    """SQL for ``aggs`` over the rows of ``source`` before ``cut``, one row per customer."""
    parts = [_level_single(a) for a in aggs if packing.place(a) is None]
    parts += [
        f"{sum_sql(a, f'e.us < {cut - w * DAY_US}')} AS {ident(f'{a.name}@{w}')}"
        for a in aggs
        if a.kind in SUMMED and packing.place(a) is None
        for w in a.windows
    ]
    parts += packing.sums(aggs, cut)
    return (
        f"SELECT customer_id, {', '.join(parts)} FROM {packing.source(source)} e "
        f"WHERE e.us < {cut} GROUP BY customer_id"
    )


def _run_one(
    s: Session,
    cutoffs: np.ndarray,
    order: Sequence[str],
    by_source: Mapping[str, Sequence[Aggregate]],
    per_cutoff: Sequence[PerCutoff],
    execute: Callable[[str], None],
) -> Results:
    """:func:`run` for one cutoff: one ``GROUP BY customer`` per source, no slots.

    The values are those of the slotted path: integer sums (and the sums before each window
    start, from which the window sums are derived the same way), extrema and ``last`` values
    over the same rows. Counts are packed (:class:`_Packing`) unless a customer has too many
    rows, in which case the source is aggregated again without.
    """
    cut = int(cutoffs[0])
    results: Results | None = None
    for i, source in enumerate(order):
        aggs = by_source[source]
        packing = _Packing.of(aggs)
        while True:
            grouped = _grouped_one(source, aggs, cut, packing)
            try:
                if results is None:
                    # The first source holds the first orders: the customers come from it.
                    execute(f"CREATE TEMP TABLE one_{i} AS {grouped}")
                    ids, entry = _dimension(s, cut, f"one_{i}")
                    results = Results(customer_ids=ids, entry=entry, cutoffs=cutoffs)
                    grouped = f"SELECT * FROM one_{i}"
                hidden = ", ".join(["customer_id", *packing.columns(aggs)])
                reads = "".join(f", {r}" for r in packing.reads(aggs))
                got = s.fetch(
                    f"SELECT d.cid, 0 AS j, r.* EXCLUDE ({hidden}){reads} "
                    f"FROM ({grouped}) r JOIN dim d USING (customer_id)"
                )
            except duckdb.OutOfRangeException:
                if not packing.packs:
                    raise
                packing = _Packing(())
                continue
            if not packing.packs or packing.fits(got):
                break
            packing = _Packing(())
        _store(results, aggs, got, windows=True)
        if i == 0:
            execute(f"DROP TABLE one_{i}")
    if results is None:
        raise ValueError(f"no aggregate named {ENTRY!r}: the first order of each customer")
    _run_per_cutoff(s, results, per_cutoff)
    return results


def _run_per_cutoff(s: Session, results: Results, per_cutoff: Sequence[PerCutoff]) -> None:
    by_cutoff_source: dict[tuple[str, str, str, str], list[PerCutoff]] = {}
    for item in per_cutoff:
        by_cutoff_source.setdefault(_query_of(item), []).append(item)
    for key, items in by_cutoff_source.items():
        query = functools.partial(_per_cutoff_query, key)
        try:
            got = s.fetch(query(items))
        except (duckdb.DataError, duckdb.ProgrammingError) as exc:  # not out of memory
            if not any(p.failure for p in items):
                raise
            raise _failing(s, query, items, exc) from exc
        results.keep(got, values={p.name: (p.name, "cutoff") for p in items})


def _per_cutoff_query(key: tuple[str, str, str, str], chosen: Sequence[PerCutoff]) -> str:
    """SQL of the ``chosen`` aggregates sharing the query ``key`` (see :func:`_query_of`)."""
    source, columns, where, hidden = key
    cols = ", ".join(f"{p.expr} AS {ident(p.name)}" for p in chosen)
    return (
        f"SELECT d.cid, r.* EXCLUDE (customer_id) FROM (SELECT customer_id, j, {cols} "
        f"FROM ({per_cutoff_rows(source, columns, hidden)}) WHERE {where or 'true'} "
        "GROUP BY customer_id, j) r JOIN dim d USING (customer_id)"
    )


def _failing(
    s: Session,
    query: Callable[[Sequence[PerCutoff]], str],
    items: Sequence[PerCutoff],
    error: Exception,
) -> ExtensionError:
    """The error of the first item that fails alone (items share a query, so the query's own
    error does not say whose expression failed)."""
    for item in items:
        if not item.failure:
            continue
        try:
            s.fetch(query([item]))
        except (duckdb.DataError, duckdb.ProgrammingError) as exc:
            return ExtensionError(f"{item.failure} ({exc})")
    failures = "; ".join(sorted({p.failure for p in items if p.failure}))
    return ExtensionError(f"one of these failed together: {failures} ({error})")
