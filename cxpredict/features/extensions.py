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

import functools
import importlib
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pandas as pd

from cxpredict.config import FeaturesConfig
from cxpredict.errors import ConfigError, DataError, ExtensionError
from cxpredict.features.engine import (
    DAY_US,
    RESERVED_COLUMNS,
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
#: The output's index levels: no feature may take their names.
OUTPUT_NAMES = ("customer_id", "cutoff")


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
            raise ExtensionError(
                f"SqlFeature name {self.name!r} must be snake_case (a-z, 0-9, _), starting "
                "with a letter; e.g. 'store_spend_90d'"
            )
        if self.name in OUTPUT_NAMES:
            raise ExtensionError(
                f"SqlFeature {self.name!r}: the name is the output's {self.name} column; "
                "choose another"
            )
        if self.table not in ("orders", "interactions"):
            raise ExtensionError(
                f"SqlFeature {self.name!r}: table must be 'orders' or 'interactions', got "
                f"{self.table!r} (customer attributes are features already)"
            )
        if self.window_days is not None and self.window_days <= 0:
            raise ExtensionError(
                f"SqlFeature {self.name!r}: window_days must be a positive number of days, "
                f"got {self.window_days}"
            )
        if not self.expression.strip():
            raise ExtensionError(
                f"SqlFeature {self.name!r}: the expression is empty; write one aggregate over "
                "the rows, e.g. 'count(*)'"
            )
        for part, text in (("expression", self.expression), ("where", self.where or "")):
            why = _not_one_expression(text) if text.strip() else None
            if why:
                raise ExtensionError(
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
    # Parsed both inside parentheses and without: a text that closes the parentheses around it
    # (``a) OR (b``) is one expression only inside them.
    items = [_select_item(f"({text})"), _select_item(text)]
    if any(item is None for item in items):
        return "is not one SQL expression"
    if _has_class(items, "SUBQUERY"):
        return "holds a subquery"
    if _has_class(items, "WINDOW"):
        return "holds a window function (OVER), which reads the rows of other customers and cutoffs"
    if _has_class(items, "STAR"):
        return "holds * or COLUMNS(...); name the columns it reads"
    internal = sorted(
        {
            name
            for name in _column_names(items)
            if name.lower() in RESERVED_COLUMNS or name.startswith("__")
        }
    )
    if internal:
        return f"reads the engine's own column(s) {internal}; read 'timestamp' and 'cutoff' instead"
    return None


@functools.lru_cache(maxsize=512)
def _select_item(text: str) -> dict[str, Any] | None:
    """The parse tree of ``text`` as the only item of ``SELECT text FROM t``, or ``None``
    when it is not exactly that. Kept for texts seen again (a config's features are checked
    each time it is read), so read only."""
    with duckdb.connect() as con:
        got = con.execute("SELECT json_serialize_sql(?)", [f"SELECT {text} FROM t"]).fetchone()
    tree = json.loads(str(got[0])) if got else {}
    statements = tree.get("statements") or []
    node = statements[0].get("node", {}) if len(statements) == 1 else {}
    source = node.get("from_table") or {}
    alone = (
        not tree.get("error")
        and node.get("type") == "SELECT_NODE"
        and len(node.get("select_list") or []) == 1
        and source.get("type") == "BASE_TABLE"
        and source.get("table_name") == "t"
        and not node.get("where_clause")
        and not node.get("group_expressions")
        and not node.get("having")
        and not node.get("modifiers")
    )
    return node["select_list"][0] if alone else None


def _column_names(tree: object, bound: frozenset[str] = frozenset()) -> set[str]:
    """The column names (without their table) that a serialized parse ``tree`` refers to; the
    parameters of a lambda are its own names inside it, not columns."""
    if isinstance(tree, list):
        return set().union(*(_column_names(v, bound) for v in tree))
    if not isinstance(tree, dict):
        return set()
    if tree.get("class") == "LAMBDA":
        params = frozenset(_column_names(tree.get("lhs")))
        return _column_names(tree.get("expr"), bound | params)
    names = set()
    if tree.get("class") == "COLUMN_REF" and tree.get("column_names"):
        name = str(tree["column_names"][-1])
        if len(tree["column_names"]) > 1 or name not in bound:
            names.add(name)
    return names.union(*(_column_names(v, bound) for v in tree.values()))


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


def _import(
    path: str, folder: Path | None = None
) -> Callable[[Tables, pd.Timestamp], pd.DataFrame]:
    """The function ``module:function``; a module that Python's path lacks is looked for in
    ``folder`` too, which is then added to the end of the path (so that an installed module
    of the same name still comes first, and the module's own imports work later). Modules
    are shared by the whole process: two projects naming different modules of one name in
    one notebook get the first one imported."""
    module, _, name = path.partition(":")
    try:
        try:
            imported = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            top = module.split(".")[0]
            if folder is None or exc.name != top or not _holds_module(folder, top):
                raise
            if str(folder) not in sys.path:
                sys.path.append(str(folder))
            imported = importlib.import_module(module)
        function = getattr(imported, name)
    except (ImportError, AttributeError) as exc:
        missing = getattr(exc, "name", None)
        if isinstance(exc, ModuleNotFoundError) and missing and not _names_module(module, missing):
            raise ConfigError(
                f"features.python: {path!r} imports {missing!r}, which is not installed; "
                "install it where cxpredict runs"
            ) from None
        beside = f" or in {str(folder)!r}" if folder is not None else ""
        raise ConfigError(
            f"features.python: cannot import {path!r} ({exc}); give 'module:function' of a "
            f"module on Python's path{beside}"
        ) from None
    if not callable(function):
        raise ConfigError(f"features.python: {path!r} is not a function")
    return function


def _holds_module(folder: Path, name: str) -> bool:
    return (folder / f"{name}.py").is_file() or (folder / name).is_dir()


def _names_module(module: str, missing: str) -> bool:
    """Whether ``missing`` (a module Python could not find) is ``module`` or a package of it."""
    return module == missing or module.startswith(f"{missing}.")


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
        PythonFeature(_import(p.function, p.folder), p.description, tuple(p.columns))
        for p in settings.python
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
        failure = (
            f"SqlFeature {extension.name!r}: {extension.expression!r}"
            + (f" over the rows where {extension.where!r}" if extension.where else "")
            + f" failed on the {extension.table} rows; change it so that it holds for every row"
        )
        for name, expr in (
            (f"extension_{extension.name}", f"({extension.expression})"),
            (_rows(extension), "count(*)"),
        ):
            out.append(
                PerCutoff(
                    f"extension_{extension.table}",
                    name,
                    expr,
                    columns=_columns(extension.table),
                    where=_where(extension),
                    hidden=_hidden(extension.table),
                    failure=failure,
                )
            )
    return out


def _rows(extension: SqlFeature) -> str:
    """The engine name of the count of an extension's rows (a name no extension can take)."""
    return f"extension_rows:{extension.name}"


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
            raise ExtensionError(
                f"SqlFeature {extension.name!r}: {extension.expression!r} is not an aggregate "
                f"over {extension.table} ({exc}); write e.g. 'sum(amount)'"
            ) from None
        if extension.where:
            try:
                # bound as a filter (an aggregate cannot be one), then typed
                s.con.execute(f"SELECT count(*) FROM ({rows}) WHERE ({extension.where})").fetchall()
                condition = s.con.execute(
                    f"DESCRIBE SELECT ({extension.where}) AS v FROM ({rows})"
                ).fetchall()[0][1]
            except duckdb.Error as exc:
                condition = f"an error: {exc}"
            if str(condition) != "BOOLEAN":
                raise ExtensionError(
                    f"SqlFeature {extension.name!r}: the row filter {extension.where!r} is not a "
                    f"condition on {extension.table} (it gives {condition}); write e.g. "
                    "\"channel = 'store'\""
                )
        kind = s.con.execute(
            f"DESCRIBE SELECT ({extension.expression}) AS v FROM ({rows})"
        ).fetchall()[0][1]
        if duck_kind(str(kind)) != "numeric":
            raise ExtensionError(
                f"SqlFeature {extension.name!r}: {extension.expression!r} gives {kind} "
                "values, not numbers; write a numeric aggregate"
            )
        raw = None if value is None else value[0]
        fills[extension.name] = np.nan if raw is None else float(raw)
    return fills


def sql_values(
    ctx: Context, results: Block, extensions: Sequence[Extension], fills: Mapping[str, float]
) -> dict[str, np.ndarray]:
    """The SQL extension columns as dense ``(cutoffs, customers)`` arrays of one block: a
    customer without rows gets the expression's value over no rows, one with rows its value
    (which may be missing)."""
    out: dict[str, np.ndarray] = {}
    for extension in _sql(ctx, extensions):
        values = results.value(f"extension_{extension.name}")
        none = np.isnan(results.value(_rows(extension)))
        out[extension.name] = np.where(none, fills[extension.name], values)
        _refuse_infinite(f"SqlFeature {extension.name!r}", out[extension.name])
    return out


def _refuse_infinite(feature: str, values: np.ndarray) -> None:
    """Features are finite or missing: an infinity (a ratio over zero) says nothing a model
    can split on sensibly, nor a reason can tell."""
    infinite = int(np.isinf(values).sum())
    if infinite:
        raise ExtensionError(
            f"{feature} gives {infinite:,} infinite value(s); give a missing value (NULL, NaN) "
            "where it is undefined, e.g. a ratio over zero"
        )


def _in_memory(tables: Tables | Mapping[str, object]) -> Tables:
    frames = {name: tables.get(name) for name in TABLE_NAMES}  # both have get
    for name, frame in frames.items():
        if frame is None:
            continue
        if not isinstance(frame, pd.DataFrame):
            raise DataError(
                f"{name}: Python features need in-memory pandas tables, got "
                f"{type(frame).__name__}; load the table or write the feature in SQL",
                table=name,
            )
        ids = frame.get("customer_id")
        if ids is not None and not pd.api.types.is_string_dtype(ids):
            # the ids as the features hold them: whole numbers as their digits
            frames[name] = frame.assign(customer_id=ids.astype("str"))
    return Tables(frames["orders"], frames["interactions"], frames["customers"])  # type: ignore[arg-type]


def _checked(name: str, got: object, extension: PythonFeature, taken: set[str]) -> pd.DataFrame:
    """A Python feature's frame, refused unless it is one row per customer id string and
    numeric columns under new names (``taken``: the names of the columns already there)."""
    if not isinstance(got, pd.DataFrame):
        raise ExtensionError(f"PythonFeature {name} returned {type(got).__name__}, not a DataFrame")
    columns = list(got.columns)
    if extension.columns and tuple(columns) != tuple(extension.columns):
        raise ExtensionError(
            f"PythonFeature {name} returned columns {columns}; it declares "
            f"{list(extension.columns)}"
        )
    odd = [c for c in columns if not isinstance(c, str) or not c.strip()]
    if odd or got.columns.has_duplicates:
        raise ExtensionError(
            f"PythonFeature {name} returned columns {columns}; name each column once, with a "
            "non-empty text"
        )
    clash = [c for c in columns if c in taken or c in OUTPUT_NAMES]
    if clash:
        raise ExtensionError(
            f"PythonFeature {name} returns column(s) {clash} that the output has already; "
            "rename them"
        )
    for column in columns:
        kind = got[column].dtype
        if not pd.api.types.is_numeric_dtype(kind) or pd.api.types.is_complex_dtype(kind):
            raise ExtensionError(
                f"PythonFeature {name}: column {column!r} has dtype {kind}; features must be "
                "real numbers"
            )
    index = got.index
    if index.nlevels != 1 or index.has_duplicates:
        raise ExtensionError(
            f"PythonFeature {name} returned an index that is not one row per customer "
            f"({index.nlevels} level(s), duplicates: {bool(index.has_duplicates)}); index it "
            "by customer_id, e.g. with .groupby('customer_id')"
        )
    kind = (
        index.categories.inferred_type
        if isinstance(index, pd.CategoricalIndex)
        else index.inferred_type
    )
    if len(index) and kind != "string":
        raise ExtensionError(
            f"PythonFeature {name} returned an index of {kind} values (e.g. "
            f"{index[0]!r}); index it by the customer_id strings, e.g. with "
            ".groupby('customer_id')"
        )
    return got


def python_columns(
    frame: pd.DataFrame,
    tables: Tables | Mapping[str, object],
    extensions: Sequence[PythonFeature],
    cutoffs: pd.DatetimeIndex,
) -> pd.DataFrame:
    """``frame`` with the columns of the Python extensions appended.

    Window: each function is called once per cutoff with the tables before that cutoff. Rows
    of customers not in the frame at that cutoff are left out; a function none of whose rows
    is a customer at any cutoff is refused (its index is not the customer ids).
    """
    source = _in_memory(tables)
    codes = frame.index.codes[1]
    starts = np.searchsorted(codes, np.arange(len(cutoffs) + 1))
    ids = frame.index.get_level_values("customer_id")
    added: dict[str, np.ndarray] = {}
    for extension in extensions:
        name = getattr(extension.function, "__qualname__", repr(extension.function))
        taken = set(frame.columns) | set(added)
        returned = matched = 0
        for j, cutoff in enumerate(cutoffs):
            rows = slice(starts[j], starts[j + 1])
            try:
                got = extension.function(source.before(cutoff), cutoff)
            except Exception as exc:
                raise ExtensionError(
                    f"PythonFeature {name} failed at cutoff {cutoff} with "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            got = _checked(name, got, extension, taken)
            customers = pd.Index(ids[rows], dtype="str")
            returned += len(got)
            matched += int(got.index.isin(customers).sum())
            aligned = got.reindex(customers)
            for column in got.columns:
                target = added.setdefault(column, np.full(len(frame), np.nan))
                target[rows] = aligned[column].to_numpy(dtype=np.float64, na_value=np.nan)
                _refuse_infinite(f"PythonFeature {name} (column {column!r})", target[rows])
        if returned and not matched:
            raise ExtensionError(
                f"PythonFeature {name} returned {returned:,} rows and none is a customer at "
                "its cutoff; index it by the customer_id strings, e.g. with "
                ".groupby('customer_id')"
            )
    for column, values in added.items():
        frame[column] = values
    return frame
