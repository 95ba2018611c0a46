"""The data contract: canonical tables, their columns and their pandera schemas.

Every table that crosses a boundary of the package is one of three canonical tables.
Inside the package they always carry these column names and dtypes:

``orders`` (required)
    ``customer_id`` (str), ``order_id`` (str; synthesised one per row when the source has none),
    ``timestamp`` (datetime64[us, UTC]), ``amount`` (float64; negative only for refunds),
    optional ``quantity`` (Int64), ``category`` (str), ``channel`` (str).
``interactions`` (optional)
    ``customer_id`` (str), ``timestamp`` (datetime64[us, UTC]), ``channel`` (str), ``kind`` (str),
    optional ``responded_at`` (datetime64[us, UTC]; missing means the brand never answered),
    optional ``rating`` (float64; 1-5 stars, or a sentiment score in [-1, 1]).
``customers`` (optional)
    ``customer_id`` (str), optional ``signup_at`` (datetime64[us, UTC]), optional ``updated_at``
    (datetime64[us, UTC]; when present the table is a history, one row per change, and
    attributes are taken as of each cutoff), and any number of attribute columns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd
import pandera.pandas as pa

TABLE_NAMES: tuple[str, ...] = ("orders", "interactions", "customers")

#: The canonical columns holding instants.
INSTANT_COLUMNS: tuple[str, ...] = ("timestamp", "responded_at", "signup_at", "updated_at")

#: Amounts must stay below this size: the feature engine sums amounts in whole 1/10,000
#: units as 64-bit integers, which holds about 92,000 lines of this size per customer.
MAX_AMOUNT = 1e10

#: Canonical columns per table: (required, optional).
COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "orders": (
        ("customer_id", "timestamp", "amount"),
        ("order_id", "quantity", "category", "channel"),
    ),
    "interactions": (
        ("customer_id", "timestamp", "channel", "kind"),
        ("responded_at", "rating"),
    ),
    "customers": (("customer_id",), ("signup_at", "updated_at")),
}

#: Columns holding instants, per table.
TIMESTAMP_COLUMNS: dict[str, tuple[str, ...]] = {
    "orders": ("timestamp",),
    "interactions": ("timestamp", "responded_at"),
    "customers": ("signup_at", "updated_at"),
}

#: Columns holding numbers, per table.
NUMERIC_COLUMNS: dict[str, tuple[str, ...]] = {
    "orders": ("amount", "quantity"),
    "interactions": ("rating",),
    "customers": (),
}

#: The column whose instant decides whether a row is already known at a cutoff.
EVENT_TIME: dict[str, str] = {
    "orders": "timestamp",
    "interactions": "timestamp",
    "customers": "signup_at",
}

TIMESTAMP_DTYPE = "datetime64[us, UTC]"
RATING_RANGE: tuple[float, float] = (-1.0, 5.0)


class OrdersSchema(pa.DataFrameModel):
    """An order (or an order line) a customer placed; refunds have a negative amount."""

    customer_id: pa.typing.Series[str] = pa.Field(nullable=False, str_length={"min_value": 1})
    order_id: pa.typing.Series[str] | None = pa.Field(nullable=False)
    timestamp: pa.typing.Series[pd.DatetimeTZDtype] = pa.Field(
        nullable=False, dtype_kwargs={"unit": "us", "tz": "UTC"}
    )
    amount: pa.typing.Series[float] = pa.Field(nullable=False)
    quantity: pa.typing.Series[pd.Int64Dtype] | None = pa.Field(nullable=True)
    category: pa.typing.Series[str] | None = pa.Field(nullable=True)
    channel: pa.typing.Series[str] | None = pa.Field(nullable=True)

    class Config:
        strict = False
        coerce = False


class InteractionsSchema(pa.DataFrameModel):
    """A contact between customer and brand on any channel: a visit, an email, a message."""

    customer_id: pa.typing.Series[str] = pa.Field(nullable=False, str_length={"min_value": 1})
    timestamp: pa.typing.Series[pd.DatetimeTZDtype] = pa.Field(
        nullable=False, dtype_kwargs={"unit": "us", "tz": "UTC"}
    )
    channel: pa.typing.Series[str] = pa.Field(nullable=False)
    kind: pa.typing.Series[str] = pa.Field(nullable=False)
    responded_at: pa.typing.Series[pd.DatetimeTZDtype] | None = pa.Field(
        nullable=True, dtype_kwargs={"unit": "us", "tz": "UTC"}
    )
    rating: pa.typing.Series[float] | None = pa.Field(
        nullable=True, in_range={"min_value": RATING_RANGE[0], "max_value": RATING_RANGE[1]}
    )

    class Config:
        strict = False
        coerce = False


class CustomersSchema(pa.DataFrameModel):
    """A customer and their attributes; a history when ``updated_at`` is present."""

    customer_id: pa.typing.Series[str] = pa.Field(nullable=False, str_length={"min_value": 1})
    signup_at: pa.typing.Series[pd.DatetimeTZDtype] | None = pa.Field(
        nullable=True, dtype_kwargs={"unit": "us", "tz": "UTC"}
    )
    updated_at: pa.typing.Series[pd.DatetimeTZDtype] | None = pa.Field(
        nullable=True, dtype_kwargs={"unit": "us", "tz": "UTC"}
    )

    class Config:
        strict = False
        coerce = False


SCHEMAS: dict[str, type[pa.DataFrameModel]] = {
    "orders": OrdersSchema,
    "interactions": InteractionsSchema,
    "customers": CustomersSchema,
}


@dataclass(frozen=True)
class Tables:
    """The validated canonical tables of one project.

    Parameters
    ----------
    orders
        Canonical orders; always present.
    interactions
        Canonical interactions, or ``None`` when the project has none.
    customers
        Canonical customers, or ``None`` when the project has none.
    """

    orders: pd.DataFrame
    interactions: pd.DataFrame | None = None
    customers: pd.DataFrame | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def of(cls, tables: Tables | Mapping[str, pd.DataFrame | None]) -> Tables:
        """``tables`` as :class:`Tables`: a mapping of table names to frames is wrapped.

        Raises
        ------
        TypeError
            When ``tables`` is neither, or names a table that does not exist.
        KeyError
            When the mapping has no ``orders``.
        """
        if isinstance(tables, Tables):
            return tables
        if not isinstance(tables, Mapping):
            raise TypeError(
                f"tables must be a Tables or a mapping of table names to DataFrames, got "
                f"{type(tables).__name__}"
            )
        unknown = sorted(set(tables) - set(TABLE_NAMES))
        if unknown:
            raise TypeError(f"unknown table(s) {unknown}; the tables are {', '.join(TABLE_NAMES)}")
        if tables.get("orders") is None:
            raise KeyError("orders: the orders table is required")
        return cls(tables["orders"], tables.get("interactions"), tables.get("customers"))

    def get(self, name: str) -> pd.DataFrame | None:
        """Return the table called ``name`` (``orders``, ``interactions`` or ``customers``)."""
        if name not in TABLE_NAMES:
            raise KeyError(f"unknown table {name!r}; the tables are {', '.join(TABLE_NAMES)}")
        return getattr(self, name)

    def has_column(self, table: str, column: str) -> bool:
        """Whether ``table`` is present and has ``column`` with at least one non-missing value."""
        frame = self.get(table)
        return frame is not None and column in frame.columns and bool(frame[column].notna().any())

    def latest_event(self) -> pd.Timestamp | None:
        """The latest order or interaction instant, in UTC (``None`` when both are empty)."""
        stamps = [self.orders["timestamp"].max()]
        if self.interactions is not None and len(self.interactions):
            stamps.append(self.interactions["timestamp"].max())
        known = [to_utc(s) for s in stamps if not pd.isna(s)]
        return max(known) if known else None

    def before(self, instant: pd.Timestamp) -> Tables:
        """The tables as known strictly before ``instant``: rows with event time ``< instant``.

        ``responded_at`` values at or after ``instant`` are blanked (the answer was not yet
        given); customers who signed up at or after ``instant`` are removed, as are attribute
        rows whose ``updated_at`` is at or after it. Naive instants are read as UTC and come
        back as UTC instants.
        """
        instant = to_utc(instant)

        def at(column: pd.Series) -> pd.Timestamp:
            # naive instants are UTC, as everywhere in cxpredict
            naive = not isinstance(column.dtype, pd.DatetimeTZDtype)
            return instant.tz_localize(None) if naive else instant

        orders = self.orders[self.orders["timestamp"] < at(self.orders["timestamp"])]
        interactions = self.interactions
        if interactions is not None:
            stamps = interactions["timestamp"]
            interactions = interactions[stamps < at(stamps)].copy()
            if "responded_at" in interactions.columns:
                answers = interactions["responded_at"]
                interactions.loc[answers >= at(answers), "responded_at"] = pd.NaT
        customers = self.customers
        if customers is not None:
            keep = pd.Series(True, index=customers.index)
            for column in ("signup_at", "updated_at"):
                if column in customers.columns:
                    keep &= ~(customers[column] >= at(customers[column]))
            customers = customers[keep]
        return Tables(orders, interactions, customers, dict(self.extra)).in_utc()

    def in_utc(self) -> Tables:
        """The tables with naive instants read as UTC (these tables when none is naive)."""
        frames = [self.orders, self.interactions, self.customers]
        aware = [None if f is None else _aware(f) for f in frames]
        if all(a is f for a, f in zip(aware, frames, strict=True)):
            return self
        return Tables(aware[0], aware[1], aware[2], dict(self.extra))  # type: ignore[arg-type]


def _aware(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its naive instant columns read as UTC (the frame itself when none is)."""
    naive = [
        c
        for c in INSTANT_COLUMNS
        if c in frame.columns
        and pd.api.types.is_datetime64_dtype(frame[c].dtype)
        and not isinstance(frame[c].dtype, pd.DatetimeTZDtype)
    ]
    if not naive:
        return frame
    return frame.assign(**{c: frame[c].dt.tz_localize("UTC") for c in naive})


#: The years a cutoff or an as-of date may fall in.
YEARS: tuple[int, int] = (1900, 2200)


#: ISO 8601: a date, or a date and time with an optional offset (``Z``, ``+02:00``).
ISO_INSTANT = re.compile(
    r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?"
)


def to_utc(value: object) -> pd.Timestamp:
    """Return ``value`` as a UTC ``Timestamp`` to the microsecond; a naive value is taken to be
    UTC already.

    Text is read only as ISO 8601 (``YYYY-MM-DD``, optionally with a time and an offset):
    ``01/02/2026`` is the 2nd of January to some and the 1st of February to others, and
    ``"now"`` would read the clock, so both are refused rather than guessed.

    Raises
    ------
    ValueError
        When ``value`` is not a date or instant, or is text in another form.
    """
    if isinstance(value, str):
        if not ISO_INSTANT.fullmatch(value.strip()):
            raise ValueError(
                f"{value!r} is not a date in ISO 8601; use YYYY-MM-DD (or YYYY-MM-DDTHH:MM)"
            )
        value = value.strip()
    stamp = pd.Timestamp(value)
    if stamp is pd.NaT:
        raise ValueError(f"{value!r} is not a date or instant")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    # instants are kept to the microsecond, as events are read
    return stamp.floor("us") if stamp.nanosecond else stamp
