"""The fixed vocabulary that turns categorical facts into numeric columns.

A categorical column (an order's category, an interaction's channel, a customer attribute)
becomes one numeric column per known value plus ``other``. The known values are the most
frequent ones before an instant, learned once and then passed explicitly, so that a model
trained on one vocabulary is scored with exactly the same columns. A :class:`Vocabulary` is
small, frozen and JSON-serialisable: it is stored with the models.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cxpredict.features.engine import (
    KNOWN_SINCE_US,
    Availability,
    Session,
    TableSource,
    cutoff_micros,
    ident,
    session,
)
from cxpredict.schemas import Tables

#: The bucket every value outside the vocabulary falls into.
OTHER = "other"
#: The fewest customers a customer attribute value needs to become a vocabulary value.
MIN_CUSTOMERS = 10

#: Vocabulary keys of the event tables, ``"<table>.<column>"``.
ORDER_CATEGORY = "orders.category"
ORDER_CHANNEL = "orders.channel"
INTERACTION_CHANNEL = "interactions.channel"


def attribute_key(column: str) -> str:
    """The vocabulary key of the customer attribute ``column``."""
    return f"customers.{column}"


def slugify(value: str) -> str:
    """A snake_case name for ``value``: lower case, runs of other characters become ``_``."""
    slug = re.sub(r"[^a-z0-9]+", "_", str(value).lower()).strip("_")
    return slug or "blank"


def slugs_for(values: Iterable[str]) -> tuple[str, ...]:
    """Unique slugs for ``values`` in order; ``other`` is reserved for the remaining values."""
    taken = {OTHER}
    out: list[str] = []
    for value in values:
        base = slugify(value)
        slug, n = base, 2
        while slug in taken:
            slug, n = f"{base}_{n}", n + 1
        taken.add(slug)
        out.append(slug)
    return tuple(out)


@dataclass(frozen=True)
class Vocabulary:
    """The known values of every categorical column, most frequent first.

    Parameters
    ----------
    values
        ``(key, values)`` pairs; a key is ``"<table>.<column>"`` (``orders.category``,
        ``orders.channel``, ``interactions.channel``, ``customers.<attribute>``).
    numeric
        Customer attributes passed through as numbers, in column order.

    Examples
    --------
    >>> vocabulary = Vocabulary.from_dict({"values": {"orders.category": ["shoes", "bags"]}})
    >>> vocabulary.slugs("orders.category")
    ('shoes', 'bags')
    """

    values: tuple[tuple[str, tuple[str, ...]], ...] = ()
    numeric: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        keys = [key for key, _ in self.values]
        if len(set(keys)) != len(keys):
            raise ValueError(f"vocabulary keys must be unique, got {keys}")
        for key, known in self.values:
            if len(set(known)) != len(known):
                raise ValueError(f"vocabulary values of {key!r} must be unique, got {known}")

    def get(self, key: str) -> tuple[str, ...]:
        """The known values of ``key``; empty when the column has none."""
        return dict(self.values).get(key, ())

    def has(self, key: str) -> bool:
        """Whether ``key`` is a column of this vocabulary."""
        return key in dict(self.values)

    def slugs(self, key: str) -> tuple[str, ...]:
        """Column-name slugs of the known values of ``key`` (``other`` not included)."""
        return slugs_for(self.get(key))

    def attributes(self) -> tuple[str, ...]:
        """The categorical customer attributes, in vocabulary order."""
        prefix = attribute_key("")
        return tuple(key[len(prefix) :] for key, _ in self.values if key.startswith(prefix))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping; :meth:`from_dict` reads it back."""
        return {
            "values": {key: list(known) for key, known in self.values},
            "numeric": list(self.numeric),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocabulary:
        """The vocabulary written by :meth:`to_dict`."""
        unknown = set(data) - {"values", "numeric"}
        if unknown:
            raise ValueError(f"unknown vocabulary keys {sorted(unknown)}; expected values, numeric")
        values = tuple(
            (str(k), tuple(str(v) for v in vs)) for k, vs in data.get("values", {}).items()
        )
        return cls(values=values, numeric=tuple(str(c) for c in data.get("numeric", ())))

    def to_json(self) -> str:
        """The vocabulary as a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        """The vocabulary written by :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


def learn_in_session(
    s: Session,
    available: Availability,
    before: int,
    *,
    max_values: int = 10,
    min_customers: int = MIN_CUSTOMERS,
) -> Vocabulary:
    """The vocabulary of the tables registered in ``s``, from their rows before ``before``.

    Window: rows strictly before the instant ``before`` (microseconds); customer attribute
    rows with ``updated_at`` or ``signup_at`` at or after it are not yet known. A customer
    attribute value held by fewer than ``min_customers`` customers is never a vocabulary
    value, and an attribute without any such value (an e-mail address, a name, a phone
    number) gets no column: values that could single a customer out are not stored with a
    model, nor in its column names.
    """
    if max_values < 1:
        raise ValueError(f"max_values must be at least 1, got {max_values}")
    if min_customers < 1:
        raise ValueError(f"min_customers must be at least 1, got {min_customers}")
    s.prepare(before)

    def top(
        relation: str, columns: list[str], where: str, *, customers: bool = False
    ) -> dict[str, tuple[str, ...]]:
        # One scan per table, one grouping set per column (GROUPING(...) = 0: grouped by it).
        cells = ", ".join(f"CAST({ident(c)} AS VARCHAR) AS v{i}" for i, c in enumerate(columns))
        flags = ", ".join(f"GROUPING(v{i}) AS g{i}" for i in range(len(columns)))
        sets = ", ".join(f"(v{i})" for i in range(len(columns)))
        # customers are counted once each: a history table (updated_at) has several rows per
        # customer, otherwise a row is a customer (and a plain count is much cheaper)
        history = customers and available.has("customers", "updated_at")
        count = "count(DISTINCT customer_id)" if history else "count(*)"
        having = f" HAVING {count} >= {int(min_customers)}" if customers else ""
        grouped = s.con.execute(
            f"SELECT {', '.join(f'v{i}' for i in range(len(columns)))}, {flags}, {count} AS n "
            f"FROM (SELECT customer_id, {cells} FROM {relation} WHERE {where}) "
            f"GROUP BY GROUPING SETS ({sets}){having}"
        ).fetchall()
        width = len(columns)
        rows = [
            (column, row[i], row[-1])
            for row in grouped
            for i, column in enumerate(columns)
            if row[width + i] == 0 and row[i] is not None
        ]
        ranked = sorted(rows, key=lambda row: (row[0], -row[2], row[1]))
        found: dict[str, list[str]] = {c: [] for c in columns}
        for column, value, _count in ranked:
            if len(found[column]) < max_values:
                found[column].append(str(value))
        return {c: tuple(v) for c, v in found.items()}

    values: list[tuple[str, tuple[str, ...]]] = []
    for table, keys, where in (
        ("orders", ((ORDER_CATEGORY, "category"), (ORDER_CHANNEL, "channel")), "amount >= 0"),
        ("interactions", ((INTERACTION_CHANNEL, "channel"),), "true"),
    ):
        present = [(key, column) for key, column in keys if available.has(table, column)]
        if present:
            found = top(table, [column for _, column in present], where)
            values += [(key, found[column]) for key, column in present]
    known = f"{KNOWN_SINCE_US} < {before}"
    categorical = [column for column, kind in available.attributes if kind == "categorical"]
    if categorical:
        found = top("customers", categorical, known, customers=True)
        values += [(attribute_key(c), found[c]) for c in categorical if found[c]]
    numeric = tuple(column for column, kind in available.attributes if kind == "numeric")
    return Vocabulary(values=tuple(values), numeric=numeric)


def learn_vocabulary(
    tables: Tables | Mapping[str, TableSource | None],
    before: Any,
    *,
    max_values: int = 10,
    min_customers: int = MIN_CUSTOMERS,
) -> Vocabulary:
    """The ``max_values`` most frequent values of every categorical column before ``before``.

    Window: rows strictly before the instant ``before`` (order lines with a non-negative
    amount, all interactions, customer attribute rows already known); ties in frequency are
    broken alphabetically. Values outside the vocabulary are counted as ``other``. Customer
    attribute values are counted in customers and need ``min_customers`` of them (see
    :func:`learn_in_session`).
    """
    instant = int(cutoff_micros([before])[0])
    with session(tables) as s:
        return learn_in_session(
            s, s.availability(), instant, max_values=max_values, min_customers=min_customers
        )
