"""Features a data scientist adds without touching the package: SQL or pandas.

A :class:`SqlFeature` is one SQL aggregate over the rows of ``orders`` or ``interactions``
strictly before each cutoff, optionally filtered (``where``) and limited to the last
``window_days`` days. The expression sees the canonical columns with instants as naive UTC
``TIMESTAMP`` values, plus ``cutoff``; ``responded_at`` is blank when the answer came at or
after the cutoff. Customers without rows get the expression's value over no rows
(``count(*)`` gives 0, ``sum`` and ``avg`` give NaN)::

    SqlFeature(
        "store_spend_90d", "orders", "sum(amount)", "Money spent in stores in the last 90 days.",
        where="channel = 'store'", window_days=90,
    )

A :class:`PythonFeature` is a function ``(tables, cutoff) -> DataFrame`` indexed by
``customer_id``, called once per cutoff with ``tables.before(cutoff)``: it cannot see the
future by construction, but it runs in a Python loop over the cutoffs (and needs in-memory
tables).

Both are registered by passing them to the build functions, or by listing them under
``features.sql`` and ``features.python`` (``"module:function"``) in the project config.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import duckdb
import numpy as np
import pandas as pd

from cxpredict.config import FeaturesConfig
from cxpredict.errors import ConfigError, DataError
from cxpredict.features.engine import (
    DAY_US,
    Block,
    PerCutoff,
    Request,
    Session,
    Source,
    columns_but,
    duck_kind,
)
from cxpredict.features.family import Context, FeatureDef, feature
from cxpredict.schemas import TABLE_NAMES, Tables

NAME = "extensions"


@dataclass(frozen=True)
class SqlFeature:
    """A feature written as one SQL aggregate over an event table.

    Parameters
    ----------
    name
        The column name (snake_case).
    table
        ``orders`` or ``interactions``.
    expression
        A DuckDB aggregate expression, e.g. ``"count(DISTINCT category)"``.
    description
        What it measures, in words a marketer understands.
    where
        A row filter, e.g. ``"channel = 'store'"``.
    window_days
        Only rows in the last ``window_days`` days before the cutoff.
    unit, reason
        For the catalogue; ``reason`` is a sentence formatted with the feature row.
    """

    name: str
    table: Literal["orders", "interactions"]
    expression: str
    description: str
    where: str | None = None
    window_days: int | None = None
    unit: str = "value"
    reason: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(
                f"SqlFeature name {self.name!r} must be snake_case (a-z, 0-9, _), starting "
                "with a letter; e.g. 'store_spend_90d'"
            )
        if self.table not in ("orders", "interactions"):
            raise ValueError(
                f"SqlFeature {self.name!r}: table must be 'orders' or 'interactions', got "
                f"{self.table!r} (customer attributes are features already)"
            )
        if self.window_days is not None and self.window_days <= 0:
            raise ValueError(
                f"SqlFeature {self.name!r}: window_days must be a positive number of days, "
                f"got {self.window_days}"
            )
        for part, text in (("expression", self.expression), ("where", self.where or "")):
            why = _not_one_expression(text) if text else None
            if why:
                raise ValueError(
                    f"SqlFeature {self.name!r}: the {part} {text!r} {why}; a feature reads "
                    "only its table's rows before the cutoff, which anything beyond one "
                    "expression over them would not: write one aggregate over the rows, e.g. "
                    "'count(*)'"
                )


def _not_one_expression(text: str) -> str | None:
    """Why the SQL ``text`` is not one expression over the feature's own rows, or ``None``.

    Read off DuckDB's own parse tree of ``SELECT (text) FROM t``: the text must parse there as
    exactly one select item, with nothing else around it (no ``UNION``, ``GROUP BY`` or
    comment reaching out of the parentheses), and hold no subquery in any form (``SELECT``,
    ``FROM`` first, ``PIVOT``, ``TABLE``, ``EXISTS`` ...).
    """
    code = re.sub(r"'(?:[^']|'')*'", "''", text)  # string literals say nothing
    if re.search(r"--|/\*|;", code):
        return "holds a comment or a statement break"
    with duckdb.connect() as con:
        got = con.execute("SELECT json_serialize_sql(?)", [f"SELECT ({text}) FROM t"]).fetchone()
    tree = json.loads(str(got[0])) if got else {}
    statements = tree.get("statements") or []
    node = statements[0].get("node", {}) if len(statements) == 1 else {}
    source = node.get("from_table") or {}
    alone = (
        node.get("type") == "SELECT_NODE"
        and len(node.get("select_list") or []) == 1
        and source.get("type") == "BASE_TABLE"
        and source.get("table_name") == "t"
        and not node.get("where_clause")
        and not node.get("group_expressions")
        and not node.get("having")
        and not node.get("modifiers")
    )
    if tree.get("error") or not alone:
        return "is not one SQL expression"
    if _has_class(node.get("select_list"), "SUBQUERY"):
        return "holds a subquery"
    return None


def _has_class(tree: object, name: str) -> bool:
    """Whether a node of the serialized parse ``tree`` is of the expression class ``name``."""
    if isinstance(tree, dict):
        return tree.get("class") == name or any(_has_class(v, name) for v in tree.values())
    if isinstance(tree, list):
        return any(_has_class(v, name) for v in tree)
    return False


@dataclass(frozen=True)
class PythonFeature:
    """Features computed by ``function(tables_before_cutoff, cutoff)`` in pandas.

    Parameters
    ----------
    function
        Returns a frame indexed by ``customer_id`` with numeric columns.
    description
        What the columns measure.
    columns
        The column names it returns; declared columns are listed in the catalogue and checked
        at build time.
    """

    function: Callable[[Tables, pd.Timestamp], pd.DataFrame]
    description: str = ""
    columns: tuple[str, ...] = ()


Extension = SqlFeature | PythonFeature


def _import(path: str) -> Callable[[Tables, pd.Timestamp], pd.DataFrame]:
    module, _, name = path.partition(":")
    try:
        function = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"features.python: cannot import {path!r} ({exc}); give 'module:function' of an "
            "importable module"
        ) from None
    if not callable(function):
        raise ConfigError(f"features.python: {path!r} is not a function")
    return function


def resolve_extensions(
    settings: FeaturesConfig, extensions: Sequence[Extension]
) -> list[Extension]:
    """The extensions of ``settings`` followed by ``extensions``."""
    try:
        out: list[Extension] = [
            SqlFeature(s.name, s.table, s.expression, s.description, s.where, s.window_days)
            for s in settings.sql
        ]
    except ValueError as exc:
        raise ConfigError(f"features.sql: {exc}") from None
    out += [
        PythonFeature(_import(p.function), p.description, tuple(p.columns)) for p in settings.python
    ]
    for extension in extensions:
        if not isinstance(extension, SqlFeature | PythonFeature):
            raise TypeError(
                "an extension must be a SqlFeature or a PythonFeature, got "
                f"{type(extension).__name__}"
            )
        out.append(extension)
    return out


def extension_definitions(ctx: Context, extensions: Sequence[Extension]) -> list[FeatureDef]:
    """Catalogue entries of the extensions."""
    out: list[FeatureDef] = []
    for extension in extensions:
        if isinstance(extension, SqlFeature):
            reason = extension.reason or f"{extension.name} {{{extension.name}:g}}"
            why = ctx.available.why_not(extension.table)
            out.append(
                feature(NAME, extension.name, extension.description, extension.unit, reason, why)
            )
        else:
            function = getattr(extension.function, "__qualname__", repr(extension.function))
            description = extension.description or f"computed by {function}"
            for column in extension.columns:
                out.append(feature(NAME, column, description, "value", f"{column} {{{column}:g}}"))
    return out


def _columns(table: str) -> str:
    """Per-cutoff columns of an extension view: the cutoff, and answers known by then."""
    columns = "make_timestamp(g.c) AS cutoff"
    if table == "interactions":
        columns += (
            ", CASE WHEN e.responded_us < g.c THEN make_timestamp(e.responded_us) END"
            " AS responded_at"
        )
    return columns


def _hidden(table: str) -> str:
    """Engine columns an expression must not see: the raw answer instant, which may lie after
    the cutoff (``responded_at`` is the answer as known at the cutoff)."""
    return "responded_us" if table == "interactions" else ""


def _source(table: str) -> Source:
    drop = "us, responded_us" if table == "interactions" else "us"
    return Source(
        f"extension_{table}",
        f"SELECT * EXCLUDE ({drop}), make_timestamp(us) AS timestamp, us"
        + (", responded_us" if table == "interactions" else "")
        + f" FROM {table}",
    )


def _where(extension: SqlFeature) -> str:
    parts = []
    if extension.where:
        parts.append(f"({extension.where})")
    if extension.window_days is not None:
        parts.append(f"us >= c - {int(extension.window_days) * DAY_US}")
    return " AND ".join(parts)


def _sql(ctx: Context, extensions: Sequence[Extension]) -> list[SqlFeature]:
    return [e for e in extensions if isinstance(e, SqlFeature) and ctx.available.table(e.table)]


def sql_requests(ctx: Context, extensions: Sequence[Extension]) -> list[Request]:
    """Engine requests of the SQL extensions whose table is present."""
    out: list[Request] = []
    for extension in _sql(ctx, extensions):
        out.append(_source(extension.table))
        out.append(
            PerCutoff(
                f"extension_{extension.table}",
                f"extension_{extension.name}",
                f"({extension.expression})",
                columns=_columns(extension.table),
                where=_where(extension),
                hidden=_hidden(extension.table),
            )
        )
    return out


def sql_fills(s: Session, ctx: Context, extensions: Sequence[Extension]) -> dict[str, float]:
    """The value of each SQL extension over no rows (given to customers without rows).

    Raises
    ------
    ValueError
        When an expression is not a valid aggregate over its table.
    """
    fills: dict[str, float] = {}
    for extension in _sql(ctx, extensions):
        columns = "0::INTEGER AS j, 0::BIGINT AS c, make_timestamp(0::BIGINT) AS cutoff"
        if extension.table == "interactions":
            columns += ", NULL::TIMESTAMP AS responded_at"
        source = _source(extension.table).sql
        star = columns_but("e", _hidden(extension.table))
        rows = f"SELECT {star}, {columns} FROM ({source}) e WHERE false"
        try:
            # Grouped, a non-aggregate expression fails to bind; ungrouped, an aggregate over
            # no rows gives the value of customers without rows.
            s.con.execute(
                f"SELECT ({extension.expression}) FROM ({rows}) GROUP BY customer_id, j"
            ).fetchall()
            value = s.con.execute(f"SELECT ({extension.expression}) FROM ({rows})").fetchone()
        except duckdb.Error as exc:
            raise ValueError(
                f"SqlFeature {extension.name!r}: {extension.expression!r} is not an aggregate "
                f"over {extension.table} ({exc}); write e.g. 'sum(amount)'"
            ) from None
        if extension.where:
            try:
                s.con.execute(f"SELECT count(*) FROM ({rows}) WHERE ({extension.where})").fetchall()
            except duckdb.Error as exc:
                raise ValueError(
                    f"SqlFeature {extension.name!r}: the row filter {extension.where!r} is not a "
                    f"condition on {extension.table} ({exc}); write e.g. \"channel = 'store'\""
                ) from None
        kind = s.con.execute(
            f"DESCRIBE SELECT ({extension.expression}) AS v FROM ({rows})"
        ).fetchall()[0][1]
        if duck_kind(str(kind)) != "numeric":
            raise ValueError(
                f"SqlFeature {extension.name!r}: {extension.expression!r} gives {kind} "
                "values, not numbers; write a numeric aggregate"
            )
        raw = None if value is None else value[0]
        fills[extension.name] = np.nan if raw is None else float(raw)
    return fills


def sql_values(
    ctx: Context, results: Block, extensions: Sequence[Extension], fills: Mapping[str, float]
) -> dict[str, np.ndarray]:
    """The SQL extension columns as dense ``(cutoffs, customers)`` arrays of one block."""
    out: dict[str, np.ndarray] = {}
    for extension in _sql(ctx, extensions):
        values = results.value(f"extension_{extension.name}")
        out[extension.name] = np.where(np.isnan(values), fills[extension.name], values)
    return out


def _in_memory(tables: Tables | Mapping[str, object]) -> Tables:
    if isinstance(tables, Tables):
        frames = {name: tables.get(name) for name in TABLE_NAMES}
    else:
        frames = {name: tables.get(name) for name in TABLE_NAMES}
    for name, frame in frames.items():
        if frame is not None and not isinstance(frame, pd.DataFrame):
            raise DataError(
                f"{name}: Python features need in-memory pandas tables, got "
                f"{type(frame).__name__}; load the table or write the feature in SQL",
                table=name,
            )
    return Tables(frames["orders"], frames["interactions"], frames["customers"])  # type: ignore[arg-type]


def _check_index(name: str, got: pd.DataFrame, ids: pd.Index) -> None:
    """A Python feature's rows must be customers: unique ``customer_id`` strings."""
    index = got.index
    if index.nlevels != 1 or index.has_duplicates:
        raise ValueError(
            f"PythonFeature {name} returned an index that is not one row per customer "
            f"({index.nlevels} level(s), duplicates: {bool(index.has_duplicates)}); index it "
            "by customer_id, e.g. with .groupby('customer_id')"
        )
    if len(got) and not index.isin(pd.Index(ids, dtype="str")).any():
        raise ValueError(
            f"PythonFeature {name} returned rows whose index matches no customer (e.g. "
            f"{index[0]!r}); index it by the customer_id strings, e.g. with "
            ".groupby('customer_id')"
        )


def python_columns(
    frame: pd.DataFrame,
    tables: Tables | Mapping[str, object],
    extensions: Sequence[PythonFeature],
    cutoffs: pd.DatetimeIndex,
) -> pd.DataFrame:
    """``frame`` with the columns of the Python extensions appended.

    Window: each function is called once per cutoff with the tables before that cutoff.
    """
    source = _in_memory(tables)
    codes = frame.index.codes[1]
    starts = np.searchsorted(codes, np.arange(len(cutoffs) + 1))
    ids = frame.index.get_level_values("customer_id")
    added: dict[str, np.ndarray] = {}
    for extension in extensions:
        name = getattr(extension.function, "__qualname__", repr(extension.function))
        for j, cutoff in enumerate(cutoffs):
            rows = slice(starts[j], starts[j + 1])
            got = extension.function(source.before(cutoff), cutoff)
            if not isinstance(got, pd.DataFrame):
                raise TypeError(
                    f"PythonFeature {name} returned {type(got).__name__}, not a DataFrame"
                )
            if extension.columns and tuple(got.columns) != tuple(extension.columns):
                raise ValueError(
                    f"PythonFeature {name} returned columns {list(got.columns)}; it declares "
                    f"{list(extension.columns)}"
                )
            clash = [c for c in got.columns if c in frame.columns]
            if clash:
                raise ValueError(
                    f"PythonFeature {name} returns existing column(s) {clash}; rename them"
                )
            _check_index(name, got, ids[rows])
            aligned = got.reindex(pd.Index(ids[rows], dtype="str"))
            for column in got.columns:
                if not pd.api.types.is_numeric_dtype(got[column]):
                    raise ValueError(
                        f"PythonFeature {name}: column {column!r} has dtype {got[column].dtype}; "
                        "features must be numeric"
                    )
                target = added.setdefault(column, np.full(len(frame), np.nan))
                target[rows] = aligned[column].to_numpy(dtype=np.float64, na_value=np.nan)
    for column, values in added.items():
        frame[column] = values
    return frame
