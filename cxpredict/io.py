"""Reading and writing tables: column mapping, validation on read, rejects, atomic writes.

Reading a table goes through four steps, and every row read ends in exactly one place:

1. the file is read with every column as text, so that nothing is lost before it is judged
   ("00001" stays "00001"); Parquet columns that already hold instants, numbers or text
   keep their type, which loses nothing either, and their text is written only for the rows
   that are rejected;
2. the user's columns are renamed to the canonical ones (a missing required column is a
   :class:`~cxpredict.errors.DataError` naming the table, the column, the file's columns and
   the closest match);
3. each value is coerced to its canonical type; a value that cannot be coerced is remembered
   with its reason instead of failing the run;
4. the coerced table is validated lazily with its pandera schema, plus checks no schema can
   state alone (timestamps after the run's moment, exact duplicates, answers before messages).
   The schema's checks are per value, so whole-column operations first find the rows that
   can fail one, and pandera validates those rows only: the same failures and reasons, in
   seconds at ten million rows.

Rows whose event time is at or after the ``as_of`` instant are not bad rows: they are simply
not read (counted as ``rows_after_as_of``). Of the rows read, each is accepted or rejected,
and ``rows_read == rows_accepted + rows_rejected`` always holds. Rejected rows are kept with
their original text, their line number and a ``reason``.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from cxpredict.config import ProjectConfig, TableConfig
from cxpredict.errors import DataError, OutputError, ValidationFailed, closest
from cxpredict.schemas import (
    COLUMNS,
    EVENT_TIME,
    MAX_AMOUNT,
    NUMERIC_COLUMNS,
    SCHEMAS,
    TABLE_NAMES,
    TIMESTAMP_COLUMNS,
    TIMESTAMP_DTYPE,
    Tables,
    to_utc,
)

LINE_COLUMN = "line"
REASON_COLUMN = "reason"
#: Set by :func:`read_raw` on CSV rows whose number of fields is not the header's: the reason.
MALFORMED_COLUMN = "__malformed"
#: ISO text with a UTC offset after its time of day: ``Z``, ``+02:00``, ``+0200`` or ``+02``
#: (PostgreSQL's ``timestamptz`` text). A date alone (``2024-01-01``) is never read as one.
_AWARE = re.compile(r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)? ?(?:Z|[+-]\d{2}(?::?\d{2})?)$")
#: ``strftime`` directives that read a zone: with one, text is converted to UTC as written.
_ZONE_DIRECTIVES = ("%z", "%Z")


@dataclass(frozen=True)
class TableReport:
    """How the rows of one table were accounted for.

    ``rows_in_source == rows_after_as_of + rows_read`` and
    ``rows_read == rows_accepted + rows_rejected``.
    """

    table: str
    source: str
    rows_in_source: int
    rows_after_as_of: int
    rows_read: int
    rows_accepted: int
    rows_rejected: int
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def reject_fraction(self) -> float:
        """Rejected rows as a share of the rows read (0 for an empty table)."""
        return self.rows_rejected / self.rows_read if self.rows_read else 0.0

    def reconciles(self) -> bool:
        """Whether every row is accounted for exactly once."""
        return (
            self.rows_in_source == self.rows_after_as_of + self.rows_read
            and self.rows_read == self.rows_accepted + self.rows_rejected
        )


@dataclass(frozen=True)
class LoadResult:
    """Validated tables with the account of every row and the rejected rows themselves."""

    tables: Tables
    reports: dict[str, TableReport]
    rejects: dict[str, pd.DataFrame]
    run_at: pd.Timestamp | None = None
    as_of: pd.Timestamp | None = None

    def summary(self) -> pd.DataFrame:
        """One row per table: rows in source, after as-of, read, accepted, rejected."""
        rows = [
            {k: v for k, v in asdict(r).items() if k not in ("reasons", "source")}
            for r in self.reports.values()
        ]
        return pd.DataFrame(rows).set_index("table")


# --------------------------------------------------------------------------- reading raw text


def read_raw(table: str, config: TableConfig, *, typed: bool = False) -> pd.DataFrame:
    """Read a table's file (or folder of Parquet files) with every column as text.

    Missing values are ``None``; everything else is the text as found in the file. The
    returned frame has a ``line`` column: the 1-based line in a CSV file (the header is
    line 1), or the 1-based row number across the Parquet files.

    With ``typed=True``, Parquet columns that are already instants, numbers or text keep
    their type (their text is the one :func:`read_raw` would give, produced only for the
    rows that are rejected); :func:`validate_table` accepts both forms and gives the same
    accepted rows, rejects and reasons. Other columns are text; CSV columns are text held by
    Arrow (pandas ``str``) rather than one Python object per value.

    Raises
    ------
    DataError
        If the path does not exist or cannot be parsed.
    """
    path = config.path
    if not path.exists():
        raise DataError(
            f"{table}: file {str(path)!r} not found; fix data.{table}.path in the config "
            "(relative paths resolve against the config file's folder)",
            table=table,
        )
    try:
        if config.file_format == "parquet":
            frame = _read_parquet_as_text(path, typed=typed)
            frame.insert(0, LINE_COLUMN, np.arange(1, len(frame) + 1, dtype="int64"))
        else:
            frame = _read_csv_as_text(path, config.sep, config.encoding, typed=typed)
    except DataError as exc:
        if exc.table is None:
            raise DataError(f"{table}: {exc}", table=table) from None
        raise
    except UnicodeError as exc:
        raise DataError(_encoding_message(table, path, config, str(exc)), table=table) from None
    except Exception as exc:  # the parsers raise many kinds; all mean "unreadable"
        if "UTF8" in str(exc) or "utf-8" in str(exc):
            raise DataError(_encoding_message(table, path, config, str(exc)), table=table) from None
        raise DataError(
            f"{table}: cannot read {str(path)!r} as {config.file_format} ({exc}); check the "
            f"file, or set data.{table}.format / data.{table}.sep in the config",
            table=table,
        ) from None
    return frame


def _encoding_message(table: str, path: Path, config: TableConfig, detail: str) -> str:
    return (
        f"{table}: {str(path)!r} is not {config.encoding} text ({detail}); set "
        f"data.{table}.encoding to the file's encoding (often 'latin-1' or 'cp1252'), or "
        "save the file as UTF-8"
    )


#: A line break inside a value, as Arrow and Python's csv module both read them.
_BREAK = re.compile(r"\r\n|\r|\n")


def _read_csv_as_text(path: Path, sep: str, encoding: str, *, typed: bool = False) -> pd.DataFrame:
    """A CSV file as text, with the physical ``line`` of each row.

    A row with more or fewer fields than the header is not read as data: it is kept, its
    columns missing, with its reason in :data:`MALFORMED_COLUMN`; so is a row holding a
    quoted value that swallows the rows after it (:func:`_swallow_reason`). Blank lines are
    skipped.
    """
    if sep == "whitespace":
        return _read_whitespace(path, encoding)
    opening = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    physical, size, quoted = _physical_lines(path, opening)
    with _long_fields(size):
        with open(path, encoding=opening, newline="") as handle:
            header = next(csv.reader(handle, delimiter=sep), None)
        if not header:
            raise DataError(f"the file {str(path)!r} is empty: it has no header line")
        if any(_BREAK.search(name) for name in header):
            raise DataError(
                f"the header line of {str(path)!r} holds a double quote that is not closed "
                "on that line (a stray quote?): fix the header"
            )
        # Only a quoted value can hold a line break. Told that one may, Arrow stops cutting
        # the file into blocks at any line break (and splitting such a value): slower, so
        # only for a file with quotes.
        frame, malformed = _arrow_csv(path, opening, sep, header, line_breaks=quoted)
        # every row on a line of its own (the common file): no value holds a line break
        single = physical == len(frame) + len(malformed) + 1
        if not typed:
            frame = frame.astype(object).where(lambda f: f.notna(), None)
        # else Arrow-backed text: the same values, without a Python object per cell
        lines = _record_lines(
            path, opening, len(header), len(frame), len(malformed), sep=sep, physical=physical
        )
    swallowing = {} if single else _swallowing(frame, lines, len(header), sep, physical)
    return _with_lines(
        frame, lines, malformed, len(header), sep=sep, swallowing=swallowing, last=physical
    )


def _arrow_csv(
    path: Path, encoding: str, sep: str, header: list[str], *, line_breaks: bool
) -> tuple[pd.DataFrame, list[list[str]]]:
    """The rows of a CSV file as text, and the fields of its rows of the wrong width."""
    malformed: list[list[str]] = []

    def skip(row: Any) -> str:
        fields = next(csv.reader([str(row.text)], delimiter=sep), [])
        malformed.append(fields or [str(row.text)])
        return "skip"

    table = pa_csv.read_csv(
        path,
        read_options=pa_csv.ReadOptions(encoding=encoding.replace("-sig", "")),
        parse_options=pa_csv.ParseOptions(
            delimiter=sep, invalid_row_handler=skip, newlines_in_values=line_breaks
        ),
        convert_options=pa_csv.ConvertOptions(
            column_types={c: pa_arrow.string() for c in header},
            strings_can_be_null=True,
            null_values=[""],
            quoted_strings_can_be_null=True,
        ),
    )
    return table.to_pandas(), malformed


@contextmanager
def _long_fields(size: int) -> Iterator[None]:
    """Python's csv module reads fields of up to ``size`` characters meanwhile (its default
    limit is 128 KiB, and a stray quote in a large file makes a value of any length)."""
    previous = csv.field_size_limit()
    csv.field_size_limit(min(max(previous, size + 1), 2**31 - 1))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _physical_lines(path: Path, encoding: str) -> tuple[int, int, bool]:
    """The number of lines of a file (a last line without a line break counts), its size in
    bytes, and whether it holds a double quote, found without parsing. Lines end with LF,
    CRLF or a lone CR."""
    if codecs.lookup(encoding).name.startswith(("utf-16", "utf-32")):
        # several bytes a character: the file is decoded to be counted
        with open(path, encoding=encoding, newline="") as handle:
            text = handle.read()
        lines = len(_BREAK.findall(text)) + (1 if text and text[-1] not in "\r\n" else 0)
        return lines, path.stat().st_size, '"' in text
    breaks, size, last, quoted = 0, 0, b"\n", False
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            breaks += chunk.count(b"\n")
            if returns := chunk.count(b"\r"):  # a lone CR ends a line too
                breaks += returns - chunk.count(b"\r\n")
            if last == b"\r" and chunk[:1] == b"\n":  # a CRLF across two chunks
                breaks -= 1
            quoted = quoted or b'"' in chunk
            size += len(chunk)
            last = chunk[-1:]
    return breaks + (1 if size and last not in (b"\n", b"\r") else 0), size, quoted


def _swallowing(
    frame: pd.DataFrame, lines: tuple[np.ndarray, np.ndarray], width: int, sep: str, last: int
) -> dict[int, str]:
    """The rows of ``frame`` holding a quoted value that swallows rows, with the reason to
    reject each (:func:`_swallow_reason`).

    Only a row followed by a gap in the line numbers (``lines``: of the rows and of the
    malformed rows; ``last``: the file's last line) can hold a line break, and only those
    rows are looked at.
    """
    good, bad = lines
    starts = np.sort(np.concatenate([good, bad]))
    following = np.append(starts, last + 1)[np.searchsorted(starts, good) + 1]
    found: dict[int, str] = {}
    for row in np.flatnonzero(following - good > 1):
        fields = [v for v in frame.iloc[row].tolist() if isinstance(v, str)]
        reason = _swallow_reason(fields, int(good[row]), width, sep, last)
        if reason is not None:
            found[int(row)] = reason
    return found


def _swallow_reason(fields: list[str], start: int, width: int, sep: str, last: int) -> str | None:
    """Why the row on line ``start`` is rejected when one of its ``fields`` swallows rows.

    A double quote opens a value that may hold line breaks. A stray one (``"20`` for ``20``)
    makes the parser read the lines after it into that value, up to the next quote (or the
    file's ``last`` line). A value that continues over a line holding as many separators as
    a row does is taken for such a swallow: the row is rejected (its text kept) rather than
    read with rows inside a value.
    """
    for value in fields:
        if any(line.count(sep) >= width - 1 for line in _BREAK.split(value)[1:]):
            end = min(start + sum(len(_BREAK.findall(f)) for f in fields), last)
            return (
                f"a quoted value swallows the rows after it (the row on line {start} holds a "
                f"value running to line {end} over lines that look like rows of their own: a "
                'stray double quote? Remove it, or write a quote inside a quoted value as "")'
            )
    return None


def _read_whitespace(path: Path, encoding: str) -> pd.DataFrame:
    """A file whose fields are separated by runs of spaces or tabs; double quotes group a
    field that holds spaces."""
    opening = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    with open(path, encoding=opening, newline="") as handle:
        lines = ((n, line.strip().replace("\t", " ")) for n, line in enumerate(handle, start=1))
        numbered = [(n, line) for n, line in lines if line]
    reader = csv.reader((line for _, line in numbered), delimiter=" ", skipinitialspace=True)
    records = list(zip((n for n, _ in numbered), reader, strict=True))
    if not records:
        raise DataError(f"the file {str(path)!r} is empty: it has no header line")
    (_, header), body = records[0], records[1:]
    width = len(header)
    good = [(n, fields) for n, fields in body if len(fields) == width]
    frame = pd.DataFrame([fields for _, fields in good], columns=header, dtype=object)
    if frame.empty:
        frame = pd.DataFrame({c: pd.Series([], dtype=object) for c in header})
    malformed = [fields for _, fields in body if len(fields) != width]
    lines = (
        np.asarray([n for n, _ in good], dtype=np.int64),
        np.asarray([n for n, f in body if len(f) != width], dtype=np.int64),
    )
    return _with_lines(frame, lines, malformed, width, sep=" ", whitespace=True)


def _with_lines(
    frame: pd.DataFrame,
    lines: tuple[np.ndarray, np.ndarray],
    malformed: list[list[str]],
    width: int,
    *,
    sep: str,
    whitespace: bool = False,
    swallowing: dict[int, str] | None = None,
    last: int = 0,
) -> pd.DataFrame:
    """``frame`` with its ``line`` column, and the malformed rows appended with reasons.

    A malformed row keeps its text: its fields fill the columns in order, and fields beyond
    the last column are joined into it with the separator. The rows of ``frame`` in
    ``swallowing`` (row position: reason) are marked malformed too; ``last`` is the file's
    last line.
    """
    good, bad = lines
    frame.insert(0, LINE_COLUMN, good)
    if not malformed and not swallowing:
        return frame
    hint = (
        ", and with sep: whitespace an empty value cannot be told from a missing one: export "
        "with a delimiter"
        if whitespace
        else ""
    )
    reasons = [
        _swallow_reason(fields, int(line), width, sep, last)
        or f"wrong number of fields ({len(fields)}, the header has {width}{hint})"
        for fields, line in zip(malformed, bad, strict=True)
    ]
    columns = [c for c in frame.columns if c != LINE_COLUMN]
    cells: list[list[str | None]] = []
    for fields in malformed:
        kept: list[str | None] = list(fields[: width - 1])
        if len(fields) >= width:
            kept.append(sep.join(fields[width - 1 :]))
        cells.append(kept + [None] * (width - len(kept)))
    extra = pd.DataFrame(
        {
            c: pd.Series([row[k] for row in cells], dtype=frame[c].dtype)
            for k, c in enumerate(columns)
        }
    )
    extra.insert(0, LINE_COLUMN, bad)
    flagged: list[str | None] = [None] * len(frame)
    for row, reason in (swallowing or {}).items():
        flagged[row] = reason
    frame[MALFORMED_COLUMN] = pd.Series(flagged, dtype=object, index=frame.index)
    extra[MALFORMED_COLUMN] = pd.Series(reasons, dtype=object)
    return pd.concat([frame, extra], ignore_index=True)


def _record_lines(
    path: Path, encoding: str, width: int, rows: int, malformed: int, *, sep: str, physical: int
) -> tuple[np.ndarray, np.ndarray]:
    """The physical line of each data row and of each malformed row, in file order.

    In the common file (one line per row, no blank line, no malformed row) row ``i`` is on
    line ``i + 2``: that is checked against the file's ``physical`` lines, without parsing.
    Otherwise the file is read once more with Python's csv module to follow quoted line
    breaks and blank lines; if that reading disagrees with the first one, the rows are
    numbered in order as a last resort.
    """
    if not malformed and physical == rows + 1:
        return np.arange(2, rows + 2, dtype=np.int64), np.zeros(0, dtype=np.int64)
    good: list[int] = []
    bad: list[int] = []
    with open(path, encoding=encoding, newline="") as handle:
        reader = csv.reader(handle, delimiter=sep)
        previous = 0
        for k, record in enumerate(reader):
            start, previous = previous + 1, reader.line_num
            if k == 0 or not record:
                continue
            (good if len(record) == width else bad).append(start)
    if len(good) == rows and len(bad) == malformed:
        return np.asarray(good, dtype=np.int64), np.asarray(bad, dtype=np.int64)
    numbers = np.arange(2, rows + malformed + 2, dtype=np.int64)
    return numbers[:rows], numbers[rows:]


def _read_parquet_as_text(path: Path, *, typed: bool = False) -> pd.DataFrame:
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"the folder {str(path)!r} holds no .parquet files")
    frames = [pq.read_table(f).to_pandas() for f in files]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    del frames
    for column in frame.columns:
        if not (typed and _kind(frame[column]) in ("instant", "number", "text")):
            frame[column] = _as_text(frame[column])
    return frame


def _kind(column: pd.Series) -> str:
    """``instant``, ``number`` or ``text`` for a column that can stay typed, else ``other``."""
    dtype = column.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(dtype):
        return "instant"
    if pd.api.types.is_bool_dtype(dtype):
        return "other"
    if pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_float_dtype(dtype):
        return "number"
    if pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype):
        return "text"
    return "other"  # objects (decimals, dates, ...) are judged by their text


def _as_text(column: pd.Series) -> pd.Series:
    """A column as text, keeping missing values missing (timestamps keep their offset)."""
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        text = column.dt.strftime("%Y-%m-%dT%H:%M:%S.%f%z")
    elif pd.api.types.is_datetime64_dtype(column.dtype):
        text = column.dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
    elif pd.api.types.is_float_dtype(column.dtype):
        # whole numbers without ".0": ids written from a column with a missing value are
        # floats (1.0), and must read as the same ids as elsewhere ("1")
        values = column.to_numpy(dtype="float64", na_value=np.nan)
        whole = np.isfinite(values) & (np.abs(values) < 2.0**53)
        whole[whole] = values[whole] == np.round(values[whole])
        text = column.astype(str).astype(object)
        text[whole] = values[whole].astype(np.int64).astype(str)
    else:
        text = column.astype(str)
    return text.astype(object).where(column.notna(), None)


# --------------------------------------------------------------------------- column mapping


def map_columns(raw: pd.DataFrame, table: str, config: TableConfig) -> pd.DataFrame:
    """Rename the file's columns to the canonical names given the config's mapping.

    A canonical column is read from the column the config maps to it, else from the column of
    its own name, else from the one column whose name differs only in case, spaces, dashes
    and underscores ("Customer ID" for ``customer_id``). A file column that the mapping
    replaces (``timestamp`` when ``{timestamp: order_date}``) is not read.

    Raises
    ------
    DataError
        When the header repeats a name, when a required column (or a mapped optional one)
        is not in the file (the message names the file's columns, the closest match and where
        to map it), or when several columns could be the same canonical one.
    """
    required, optional = COLUMNS[table]
    found = [c for c in raw.columns if c not in (LINE_COLUMN, MALFORMED_COLUMN)]
    repeated = sorted({c for c in found if found.count(c) > 1})
    if repeated:
        raise DataError(
            f"{table}: the header of {config.path.name} names column {repeated[0]!r} more than "
            "once; rename or remove the repeated column",
            table=table,
            column=repeated[0],
        )
    mapped = {config.columns[c] for c in required + optional if c in config.columns}
    folded: dict[str, list[str]] = {}
    for column in found:
        folded.setdefault(_fold(column), []).append(column)
    rename: dict[str, str] = {}
    for canonical in required + optional:
        source = config.columns.get(canonical, canonical)
        if canonical not in config.columns and source not in found:
            similar = [c for c in folded.get(_fold(canonical), []) if c not in mapped]
            if len(similar) > 1:
                raise DataError(
                    f"{table}: columns {', '.join(map(repr, similar))} of {config.path.name} "
                    f"could each be {canonical!r}; map one under data.{table}.columns, e.g. "
                    f"{{{canonical}: {similar[0]}}}",
                    table=table,
                    column=canonical,
                )
            source = similar[0] if similar else source
        if canonical not in config.columns and source in mapped:
            if canonical in required:
                raise DataError(
                    f"{table}: column {source!r} is mapped to another canonical column, so "
                    f"{canonical!r} has no column; map it under data.{table}.columns",
                    table=table,
                    column=canonical,
                )
            continue  # the mapping reads this column as another canonical one
        if source in found:
            rename[source] = canonical
        elif canonical in required or canonical in config.columns:
            suggestion = closest(source, found)
            hint = f"; the closest is {suggestion!r}" if suggestion else ""
            other = [d for d in (";", "\t", "|", ",") if d != config.sep and len(found) == 1]
            split = [d for d in other if d in found[0]]
            if split:
                shown = "\\t" if split[0] == "\t" else split[0]
                raise DataError(
                    f"{table}: {config.path.name} has a single column {found[0]!r}: its header "
                    f'looks separated by "{shown}"; set data.{table}.sep: "{shown}" in the '
                    "config",
                    table=table,
                    column=canonical,
                )
            mapped_from = f" (mapped from {source!r})" if source != canonical else ""
            raise DataError(
                f"{table}: column {canonical!r}{mapped_from} not found in {config.path.name}; "
                f"the file has {', '.join(found)}{hint}. Map it under data.{table}.columns, "
                f"e.g. {{{canonical}: {suggestion or 'YourColumn'}}}",
                table=table,
                column=canonical,
            )
    for canonical, source in config.columns.items():
        if table == "customers" and canonical not in required + optional and source in found:
            rename[source] = canonical
    attributes = set(found) | {c for c in config.columns if c not in required + optional}
    unknown = [c for c in config.numeric if c not in attributes]
    if unknown:
        suggestion = closest(unknown[0], sorted(attributes))
        hint = f"; the closest is {suggestion!r}" if suggestion else ""
        raise DataError(
            f"{table}: data.{table}.numeric lists {unknown[0]!r}, which is not a column of "
            f"{config.path.name}{hint}",
            table=table,
            column=unknown[0],
        )
    # A file column named like a canonical column that another column is mapped to is
    # replaced by the mapping: it is not read (customers would keep it as an attribute).
    replaced = [c for c in found if c not in rename and c in rename.values()]
    frame = raw.drop(columns=replaced).rename(columns=rename)
    if table != "customers":  # customers keep their attribute columns; the others only theirs
        kept = [LINE_COLUMN, *[c for c in required + optional if c in frame.columns]]
        frame = frame[kept + [c for c in (MALFORMED_COLUMN,) if c in frame.columns]]
    return frame


def _fold(name: str) -> str:
    """A column name without case, spaces, dashes or underscores, for unambiguous matches."""
    return re.sub(r"[\s_-]+", "", name).lower()


# --------------------------------------------------------------------------- coercion


class _Reasons:
    """Collects rejection reasons per row position, in a stable order.

    Reasons are kept per check (the positions it failed and its text), so that a table of
    ten million good rows costs one boolean per row; the text of each row's reasons is
    joined only for the rejected rows.
    """

    def __init__(self, n: int) -> None:
        self._bad = np.zeros(n, dtype=bool)
        self._checks: list[tuple[np.ndarray, str | list[str]]] = []

    def add(
        self,
        mask: np.ndarray | pd.Series,
        reason: str | Callable[[np.ndarray], list[str]],
    ) -> None:
        """Record ``reason`` for the rows of ``mask``.

        ``reason`` is one text, or a function giving the text of each row position it is
        given (called only with the failing positions).
        """
        positions = np.flatnonzero(np.asarray(mask, dtype=bool))
        if not len(positions):
            return
        self._checks.append((positions, reason(positions) if callable(reason) else reason))
        self._bad[positions] = True

    def mask(self) -> np.ndarray:
        return self._bad.copy()

    def text(self, keep: np.ndarray | None = None) -> list[str]:
        """The reasons of each rejected row (in row order), joined with ``"; "``.

        ``keep``: only the rejected rows it marks (all when ``None``).
        """
        rows = self._bad if keep is None else self._bad & keep
        by_row: dict[int, list[str]] = {}
        for positions, reason in self._checks:
            texts = [reason] * len(positions) if isinstance(reason, str) else reason
            for position, text in zip(positions.tolist(), texts, strict=True):
                if rows[position]:
                    found = by_row.setdefault(position, [])
                    if text not in found:
                        found.append(text)
        return ["; ".join(by_row[p]) for p in np.flatnonzero(rows).tolist()]


def parse_timestamps(
    text: pd.Series, *, timezone: str = "UTC", fmt: str | None = None
) -> pd.Series:
    """Parse text to UTC instants; unparseable text becomes ``NaT``.

    Text with an offset (``Z``, ``+02:00``, ``+0200``, ``+02``) is converted to UTC; naive
    text is taken to be in ``timezone`` (UTC by default). ``fmt`` is an optional ``strftime``
    pattern: with a zone directive (``%z``) every value is converted to UTC from its own
    offset, without one every value is naive.
    """
    out = pd.Series(pd.NaT, index=text.index, dtype=TIMESTAMP_DTYPE)
    present = text.notna()
    if not present.any():
        return out
    values = text[present].astype(str).str.strip()
    if fmt is None:
        aware = values.str.contains(_AWARE)
    else:
        zoned = any(directive in fmt for directive in _ZONE_DIRECTIVES)
        aware = pd.Series(zoned, index=values.index)
    if aware.any():
        parsed = pd.to_datetime(values[aware], errors="coerce", utc=True, format=fmt or "ISO8601")
        out.loc[parsed.index] = parsed.astype(TIMESTAMP_DTYPE)
    naive = values[~aware]
    if len(naive):
        try:
            parsed = pd.to_datetime(naive, errors="coerce", format=fmt or "ISO8601")
        except ValueError:  # an offset the pattern above does not know, mixed with naive text
            parsed = pd.Series([_one_instant(v, fmt) for v in naive], index=naive.index)
        if isinstance(parsed.dtype, pd.DatetimeTZDtype):  # every value had an offset
            parsed = parsed.dt.tz_convert("UTC")
        elif parsed.dtype == object:  # some values had an offset: each is converted alone
            parsed = pd.Series(
                [_localized(v, timezone) for v in parsed], index=parsed.index, dtype=object
            )
            parsed = pd.to_datetime(parsed, utc=True)
        else:
            parsed = parsed.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
        out.loc[parsed.index] = parsed.dt.tz_convert("UTC").astype(TIMESTAMP_DTYPE)
    return out


def _one_instant(value: str, fmt: str | None) -> Any:
    """One text parsed alone: a naive or aware ``Timestamp``, or ``NaT``."""
    try:
        return pd.to_datetime(value, format=fmt or "ISO8601")
    except (ValueError, OverflowError):
        return pd.NaT


def _localized(value: Any, timezone: str) -> Any:
    """An aware instant as it is; a naive one in ``timezone`` (``NaT`` when ambiguous)."""
    if value is None or pd.isna(value):
        return pd.NaT
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is not None:
        return stamp
    try:
        return stamp.tz_localize(timezone, ambiguous="raise", nonexistent="raise")
    except (ValueError, OverflowError):  # pytz/zoneinfo raise subclasses of ValueError
        return pd.NaT


def _coerce(
    frame: pd.DataFrame, table: str, config: TableConfig, reasons: _Reasons
) -> pd.DataFrame:
    """Canonical dtypes for every canonical column, recording values that cannot be coerced.

    Columns still typed as instants or numbers (see :func:`read_raw`) are converted
    directly; their text is built only for the rows whose reason quotes it.
    """
    out = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        text = frame[column]
        kind = _kind(text)
        if column == LINE_COLUMN:
            out[column] = text
        elif column in TIMESTAMP_COLUMNS[table]:
            if kind == "instant" and config.timestamp_format is None:
                parsed = _instants(text, timezone=config.timezone)
            else:
                text = _textual(text)
                parsed = parse_timestamps(
                    text, timezone=config.timezone, fmt=config.timestamp_format
                )
            bad = (text.notna() & parsed.isna()).to_numpy()
            clock = _clock_changes(text, bad, config)
            reasons.add(
                clock,
                _quoting(
                    f"{column} ",
                    text,
                    f" does not exist or happens twice in {config.timezone} (a daylight saving "
                    "change): give it with its UTC offset",
                ),
            )
            reasons.add(bad & ~clock, _quoting(f"{column} ", text, " is not a date/time"))
            out[column] = parsed
        elif column in NUMERIC_COLUMNS[table]:
            numbers, text = _numbers(text, kind, column, reasons)
            if column == "amount":
                huge = numbers.abs() >= MAX_AMOUNT
                reasons.add(
                    huge,
                    _quoting("amount ", text, f" is implausibly large ({MAX_AMOUNT:.0e} or more)"),
                )
                numbers = numbers.mask(huge)
            if column == "quantity":
                fractional = numbers.notna() & (numbers % 1 != 0)
                reasons.add(fractional, _quoting("quantity ", text, " is not a whole number"))
                huge = numbers.abs() >= 1e9
                reasons.add(huge, "quantity is implausibly large")
                whole = numbers.notna() & ~fractional & ~huge
                quantity = pd.Series(pd.NA, index=numbers.index, dtype="Int64")
                quantity[whole] = numbers[whole].astype("int64")
                out[column] = quantity
            else:
                out[column] = numbers
        elif _numeric_attribute(table, column, kind, config):
            why = f" (data.{table}.numeric lists it)"
            out[column], _ = _numbers(text, kind, column, reasons, why=why)
        else:
            text = _textual(text)
            stripped = text.astype("str").str.strip() if len(text) else text.astype("str")
            out[column] = stripped.where(stripped != "", None).astype("str")
            missing = text.isna().to_numpy()
            if missing.any() and out[column][missing].notna().any():
                out.loc[missing, column] = None
    return out


def _clock_changes(text: pd.Series, bad: np.ndarray, config: TableConfig) -> np.ndarray:
    """Among the ``bad`` rows, those whose text is a valid local time that the daylight
    saving changes of ``config.timezone`` skip or repeat."""
    clock = np.zeros(len(text), dtype=bool)
    if not bad.any() or config.timezone == "UTC":
        return clock
    rows = np.flatnonzero(bad)
    values = _textual(text.iloc[rows]).astype(str).str.strip()
    local = pd.Series([_one_instant(v, config.timestamp_format) for v in values], dtype=object)
    clock[rows] = [v is not pd.NaT and getattr(v, "tzinfo", None) is None for v in local]
    return clock


def _numbers(
    text: pd.Series, kind: str, column: str, reasons: _Reasons, *, why: str = ""
) -> tuple[pd.Series, pd.Series]:
    """A column as float64 numbers (and as text), recording values that are not numbers or
    are infinite; those become missing."""
    if kind == "number":
        numbers = text.astype("float64")
    else:
        text = _textual(text)
        numbers = pd.to_numeric(text.str.strip() if len(text) else text, errors="coerce")
        numbers = numbers.astype("float64")
    reasons.add(
        text.notna() & numbers.isna(), _quoting(f"{column} ", text, f" is not a number{why}")
    )
    infinite = np.isinf(numbers.to_numpy(na_value=np.nan))
    reasons.add(infinite, f"{column} is infinite")
    return numbers.mask(infinite), text


def _numeric_attribute(table: str, column: str, kind: str, config: TableConfig) -> bool:
    """A customer attribute read as a number: listed in ``numeric``, or a number column."""
    if table != "customers" or column in COLUMNS[table][0] + COLUMNS[table][1]:
        return False
    return column in config.numeric or kind == "number"


def _textual(column: pd.Series) -> pd.Series:
    """The column as :func:`read_raw` gives text: typed columns become their text."""
    return column if _kind(column) == "text" or column.dtype == object else _as_text(column)


def _instants(values: pd.Series, *, timezone: str) -> pd.Series:
    """Typed instants as :func:`parse_timestamps` would read their text (to the microsecond).

    Aware instants are converted to UTC; naive ones are taken to be in ``timezone``.
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        utc = values.dt.tz_convert("UTC")
    else:
        utc = values.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
        utc = utc.dt.tz_convert("UTC")
    return utc.dt.floor("us").astype(TIMESTAMP_DTYPE)


def _quoting(before: str, text: pd.Series, after: str) -> Callable[[np.ndarray], list[str]]:
    """The reason ``before 'value' after`` of each failing row, quoting its text."""

    def reason(positions: np.ndarray) -> list[str]:
        quoted = _quoted(_textual(text.iloc[positions]))
        return (before + quoted + after).tolist()

    return reason


def _quoted(text: pd.Series) -> pd.Series:
    return "'" + text.astype(str).str.slice(0, 40) + "'"


# --------------------------------------------------------------------------- validation


def _schema_failures(frame: pd.DataFrame, raw: pd.DataFrame, table: str, reasons: _Reasons) -> None:
    """Run the pandera schema lazily on the coerced rows; record every failure.

    A value that was present but could not be coerced already has its reason; the schema's
    "missing" failure is recorded only for values that were missing in the file itself, and
    as "empty" for blank text.
    """
    schema = SCHEMAS[table].to_schema()
    suspects = _suspects(frame, schema)
    candidates = frame.drop(columns=[LINE_COLUMN])
    if suspects is not None:
        if not suspects.any():
            return
        # Every check of these schemas is per value, so the rows that can fail one are
        # validated alone: the same failures, for a fraction of the rows.
        candidates = candidates[suspects]
    try:
        schema.validate(candidates, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        cases = cases[cases["index"].notna()]
        position = pd.Series(np.arange(len(frame)), index=frame.index)
        for (column, check), group in cases.groupby(["column", "check"], sort=False):
            rows = position.reindex(group["index"].to_numpy()).dropna().astype(int).to_numpy()
            mask = np.zeros(len(frame), dtype=bool)
            mask[rows] = True
            if str(check).startswith("not_nullable") and column in raw.columns:
                missing = raw[column].isna().to_numpy()
                if _is_text_column(table, str(column)):  # blank text was stripped to nothing
                    reasons.add(mask & ~missing, f"{column} is empty")
                mask &= missing
            reasons.add(mask, _describe_check(str(column), str(check)))


def _is_text_column(table: str, column: str) -> bool:
    return column not in TIMESTAMP_COLUMNS[table] and column not in NUMERIC_COLUMNS[table]


def _suspects(frame: pd.DataFrame, schema: pa.DataFrameSchema) -> np.ndarray | None:
    """Rows that may fail one of the schema's value checks (``None``: any row may).

    A superset of the failing rows, found with whole-column operations: missing values of
    non-nullable columns, and values outside a ``str_length`` or ``in_range`` check. A check
    of any other kind makes every row a suspect.
    """
    suspects = np.zeros(len(frame), dtype=bool)
    for name, column in schema.columns.items():
        if name not in frame.columns:
            continue
        values = frame[name]
        if not column.nullable:
            suspects |= values.isna().to_numpy()
        for check in column.checks:
            bounds = check.statistics
            if check.name == "str_length":
                measured = values.astype("str").str.len()
            elif check.name == "in_range":
                measured = values
            else:
                return None
            low, high = bounds.get("min_value"), bounds.get("max_value")
            outside = pd.Series(False, index=values.index)
            if low is not None:  # the bound itself is a suspect too: a superset is enough
                outside |= measured <= low
            if high is not None:
                outside |= measured >= high
            suspects |= outside.fillna(False).to_numpy(dtype=bool)
    return suspects


def _describe_check(column: str, check: str) -> str:
    if check.startswith("not_nullable"):
        return f"{column} is missing"
    if check.startswith("str_length"):
        return f"{column} is empty"
    if check.startswith("in_range"):
        return f"{column} is outside the allowed range"
    return f"{column} fails {check}"


def _row_checks(
    frame: pd.DataFrame, table: str, reasons: _Reasons, *, run_at: pd.Timestamp
) -> None:
    """Checks a column schema cannot state: the future, answer order, duplicates."""
    for column in TIMESTAMP_COLUMNS[table]:
        if column in frame.columns:
            reasons.add(
                frame[column] > run_at,
                f"{column} is in the future (later than the moment of this run)",
            )
    if table == "interactions" and "responded_at" in frame.columns:
        reasons.add(
            frame["responded_at"] < frame["timestamp"], "responded_at is before the timestamp"
        )
    if table == "orders" and "quantity" in frame.columns:
        reasons.add(frame["quantity"].fillna(0) < 0, "quantity is negative")


def _duplicates(raw: pd.DataFrame, coerced: pd.DataFrame, table: str, reasons: _Reasons) -> None:
    """Exact duplicate rows (every column's text equal) after the first are rejected.

    Typed columns are compared by value, which is comparing their text: an instant or a
    number has one text.
    """
    content = raw.drop(columns=[LINE_COLUMN])
    if content.empty:
        return
    repeated = _repeated(content, coerced)
    duplicated = np.zeros(len(raw), dtype=bool)
    if repeated.any():
        copies = raw[repeated]
        duplicated[repeated] = copies.drop(columns=[LINE_COLUMN]).duplicated(keep="first")
        first_line = copies.groupby(list(content.columns), dropna=False, sort=False)[
            LINE_COLUMN
        ].transform("min")
        lines = np.zeros(len(raw), dtype=np.int64)
        lines[repeated] = first_line.to_numpy(dtype=np.int64)
        reasons.add(
            duplicated, lambda rows: [f"exact duplicate (of line {n})" for n in lines[rows]]
        )
    if table == "customers" and "updated_at" not in content.columns:
        repeated = content["customer_id"].notna() & content["customer_id"].duplicated(keep="first")
        reasons.add(
            repeated & ~duplicated,
            "customer_id appears on an earlier line with other attributes; keep one row per "
            "customer, or add an updated_at column to make the table a history",
        )


def _repeated(content: pd.DataFrame, coerced: pd.DataFrame) -> np.ndarray:
    """Rows equal in every column to another row, found one column more at a time.

    Coercion is a function of the text, so rows with the same text have the same coerced
    instants and numbers: those are compared first, and the text only among the few rows
    still in question.
    """
    cheap = [
        c
        for c in coerced.columns
        if c != LINE_COLUMN and _kind(coerced[c]) in ("instant", "number")
    ]
    stages = [(coerced, cheap[: k + 1]) for k in range(len(cheap))]
    stages.append((content, list(content.columns)))
    rows = np.arange(len(content))
    for frame, columns in stages:
        part = frame[columns] if len(rows) == len(frame) else frame[columns].iloc[rows]
        rows = rows[part.duplicated(keep=False).to_numpy()]
        if not len(rows):
            break
    mask = np.zeros(len(content), dtype=bool)
    mask[rows] = True
    return mask


def validate_table(
    raw: pd.DataFrame,
    table: str,
    config: TableConfig,
    *,
    run_at: pd.Timestamp,
    as_of: pd.Timestamp | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, TableReport]:
    """Coerce and validate one table's raw text frame (already mapped to canonical names).

    Parameters
    ----------
    raw
        Text frame from :func:`read_raw` after :func:`map_columns`.
    table
        Canonical table name.
    config
        The table's config (timezone, timestamp format).
    run_at
        The moment of the run: a timestamp later than this is a bad row.
    as_of
        Rows whose event time is at or after this instant are not read; ``None`` reads all.

    Returns
    -------
    accepted, rejects, report
        The canonical accepted rows, the rejected rows (original text, ``line``, ``reason``)
        and the account of every row.
    """
    if MALFORMED_COLUMN in raw.columns:
        return _with_malformed(raw, table, config, run_at=run_at, as_of=as_of)
    run_at = to_utc(run_at)
    reasons = _Reasons(len(raw))
    coerced = _coerce(raw, table, config, reasons)
    _schema_failures(coerced, raw, table, reasons)
    _row_checks(coerced, table, reasons, run_at=run_at)
    _duplicates(raw, coerced, table, reasons)

    # A row whose event time is at or after the as-of instant is not read, whatever else is
    # wrong with it: later rows cannot fail an earlier run. A row whose event time cannot be
    # read is read, and rejected.
    # A customer row is an event at its signup and, in a history, at its update.
    after = np.zeros(len(raw), dtype=bool)
    if as_of is not None:
        as_of = to_utc(as_of)
        for column in (EVENT_TIME[table], *(["updated_at"] if table == "customers" else [])):
            if column in coerced.columns:
                after |= (coerced[column] >= as_of).to_numpy(dtype=bool, na_value=False)
    read = ~after
    bad = reasons.mask() & read
    accepted_mask = read & ~bad

    rejects = raw[bad].copy()
    for column in rejects.columns:
        if column != LINE_COLUMN:
            text = _textual(rejects[column]).astype(object)
            rejects[column] = text.where(text.notna(), None)
    rejects[REASON_COLUMN] = np.asarray(reasons.text(keep=read), dtype=object)
    accepted = coerced[accepted_mask].drop(columns=[LINE_COLUMN])
    if table == "orders" and "order_id" not in accepted.columns:
        accepted.insert(1, "order_id", ("line-" + coerced[LINE_COLUMN].astype(str))[accepted_mask])
    if as_of is not None and table == "interactions" and "responded_at" in accepted.columns:
        accepted["responded_at"] = accepted["responded_at"].mask(accepted["responded_at"] >= as_of)
    accepted = accepted.reset_index(drop=True)
    counts = pd.Series([r for text in rejects[REASON_COLUMN] for r in _reason_kinds(text)])
    report = TableReport(
        table=table,
        source=config.path.name,
        rows_in_source=len(raw),
        rows_after_as_of=int(after.sum()),
        rows_read=int(read.sum()),
        rows_accepted=int(accepted_mask.sum()),
        rows_rejected=int(bad.sum()),
        reasons={str(k): int(v) for k, v in counts.value_counts().sort_index().items()},
    )
    return accepted, rejects.reset_index(drop=True), report


def _with_malformed(
    raw: pd.DataFrame,
    table: str,
    config: TableConfig,
    *,
    run_at: pd.Timestamp,
    as_of: pd.Timestamp | None,
) -> tuple[pd.DataFrame, pd.DataFrame, TableReport]:
    """:func:`validate_table` for a frame with malformed rows: they are read, and rejected."""
    flags = raw[MALFORMED_COLUMN].notna().to_numpy()
    accepted, rejects, report = validate_table(
        raw[~flags].drop(columns=MALFORMED_COLUMN).reset_index(drop=True),
        table,
        config,
        run_at=run_at,
        as_of=as_of,
    )
    bad = raw[flags].drop(columns=MALFORMED_COLUMN)
    for column in bad.columns:  # the row's fields, as read, in order
        if column != LINE_COLUMN:
            text = _textual(bad[column]).astype(object)
            bad[column] = text.where(text.notna(), None)
    bad[REASON_COLUMN] = raw.loc[flags, MALFORMED_COLUMN].astype(object)
    rejects = pd.concat([rejects, bad[rejects.columns]], ignore_index=True)
    rejects = rejects.sort_values(LINE_COLUMN, kind="stable").reset_index(drop=True)
    reasons = dict(report.reasons)
    for text in bad[REASON_COLUMN]:
        for kind in _reason_kinds(text):
            reasons[kind] = reasons.get(kind, 0) + 1
    count = int(flags.sum())
    report = replace(
        report,
        rows_in_source=report.rows_in_source + count,
        rows_read=report.rows_read + count,
        rows_rejected=report.rows_rejected + count,
        reasons=dict(sorted(reasons.items())),
    )
    return accepted, rejects, report


def _reason_kinds(text: str) -> Iterator[str]:
    """Reasons without the offending values, for counting ("amount is not a number")."""
    for part in text.split("; "):
        yield re.sub(r" '[^']*'", "", re.sub(r" line \d+", "", part)).split(" (")[0]


def load_tables(
    config: ProjectConfig,
    *,
    run_at: pd.Timestamp,
    as_of: pd.Timestamp | None = None,
    progress: Callable[[str], None] | None = None,
) -> LoadResult:
    """Read, map and validate every configured table.

    Nothing at or after ``as_of`` is read. Raises :class:`DataError` for a structural
    problem; bad rows never raise. The reject threshold is checked by :func:`check_rejects`
    so that callers can write the report and rejects first.
    """
    tables: dict[str, pd.DataFrame] = {}
    reports: dict[str, TableReport] = {}
    rejects: dict[str, pd.DataFrame] = {}
    for name, table_config in config.data.tables().items():
        if progress is not None:
            progress(name)
        raw = map_columns(read_raw(name, table_config, typed=True), name, table_config)
        accepted, rejected, report = validate_table(
            raw, name, table_config, run_at=run_at, as_of=as_of
        )
        tables[name], rejects[name], reports[name] = accepted, rejected, report
    return LoadResult(
        Tables(tables["orders"], tables.get("interactions"), tables.get("customers")),
        reports,
        rejects,
        run_at=to_utc(run_at),
        as_of=None if as_of is None else to_utc(as_of),
    )


def check_rejects(result: LoadResult, *, max_reject_fraction: float) -> None:
    """Raise :class:`ValidationFailed` for the first table whose rejected share is too high."""
    for report in result.reports.values():
        if report.reject_fraction > max_reject_fraction:
            top = ", ".join(f"{k} ({v})" for k, v in list(report.reasons.items())[:5])
            raise ValidationFailed(
                f"{report.table}: {report.rows_rejected} of {report.rows_read} rows rejected "
                f"({report.reject_fraction:.1%}, above validation.max_reject_fraction = "
                f"{max_reject_fraction:g}); reasons: {top}. Fix the source data, correct the "
                "column mapping, or raise validation.max_reject_fraction in the config",
                table=report.table,
                rejected=report.rows_rejected,
                read=report.rows_read,
            )


# --------------------------------------------------------------------------- writing


def check_output(path: str | Path, *, folder: bool = False, option: str = "--out") -> Path:
    """Raise :class:`OutputError` unless ``path`` can be written: checked before the work.

    A file must not be an existing folder; a folder must not be an existing file; the first
    existing folder above either must be a folder this process can write to (the missing
    ones are created when the output is written).
    """
    target = Path(path)
    if folder and target.exists() and not target.is_dir():
        raise OutputError(f"{option} {str(target)!r} is a file; give a folder (new or existing)")
    if not folder and target.is_dir():
        raise OutputError(f"{option} {str(target)!r} is a folder; give a file name inside it")
    parent = target if folder else target.parent
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(
            f"{option} {str(target)!r}: {str(existing)!r} is a file, not a folder; choose "
            "another path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(
            f"{option} {str(target)!r}: no permission to write in {str(existing)!r}; choose a "
            "folder you can write to"
        )
    return target


def check_inputs_kept(
    config: ProjectConfig, targets: Iterable[str | Path], *, option: str = "--out"
) -> None:
    """Raise :class:`OutputError` when an output would replace a configured input table.

    ``targets`` are the files the command writes, or folders it writes inside. A target is
    refused when it is an input file, a folder holding one, or anything inside an input
    folder (a table read from a folder of Parquet files reads every file in it).
    """
    inputs = {name: Path(table.path).resolve() for name, table in config.data.tables().items()}
    for target in targets:
        written = Path(target).resolve()
        for name, source in inputs.items():
            if (
                source == written
                or (written.is_dir() and source.is_relative_to(written))
                or (source.is_dir() and written.is_relative_to(source))
            ):
                raise OutputError(
                    f"{option} would overwrite the {name} table ({str(source)!r}) with an "
                    "output; choose another folder or file name"
                )


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    A crash or kill before the end leaves the previous file at ``path`` intact. The file gets
    the permissions any new file would (``0o666`` less the umask), not ``mkstemp``'s private
    ``0o600``. A failure of the file system (no permission, a folder in the way, a full disk)
    is an :class:`OutputError` naming the path.
    """
    target = Path(path)
    check_output(target, option="output")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _output_error(target, exc) from None
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    os.close(fd)
    temporary = Path(name)
    try:
        try:
            yield temporary
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except OSError as exc:
            raise _output_error(target, exc) from None
    finally:
        temporary.unlink(missing_ok=True)


def _output_error(target: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or type(exc).__name__
    return OutputError(
        f"cannot write {str(target)!r} ({reason}); the previous file, if any, is unchanged. "
        "Free space or choose another output path"
    )


def write_table(frame: pd.DataFrame, path: str | Path, *, index: bool = False) -> Path:
    """Write ``frame`` atomically as CSV or Parquet, chosen by the path's extension."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise DataError(f"cannot write {target.name!r}: use a .csv or .parquet file name")
    with atomic_path(target) as temporary:
        if suffix == ".csv":
            frame.to_csv(temporary, index=index, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
        else:
            frame.to_parquet(temporary, index=index)
    return target


def write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` atomically (UTF-8)."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(data: Any, path: str | Path) -> Path:
    """Write ``data`` as indented, key-sorted JSON, atomically."""
    return write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", path)


def write_validation(result: LoadResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``validation_report.json`` and one ``rejects_<table>.csv`` per table to ``out_dir``.

    A rejects file is written for every table, with a header even when it is empty, and the
    rejects file of a table that is not configured any more is removed, so that a previous
    run's rejects never linger.
    """
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    for name, rejected in result.rejects.items():
        paths[f"rejects_{name}"] = write_table(rejected, out / f"rejects_{name}.csv")
    for name in TABLE_NAMES:  # a table no longer configured leaves no rejects behind
        if name not in result.rejects:
            (out / f"rejects_{name}.csv").unlink(missing_ok=True)
    report: dict[str, Any] = {
        name: {**asdict(r), "reconciles": r.reconciles()} for name, r in result.reports.items()
    }
    as_of = None if result.as_of is None else str(result.as_of)
    report["run"] = {"run_at": str(result.run_at), "as_of": as_of}
    paths["report"] = write_json(report, out / "validation_report.json")
    return paths
