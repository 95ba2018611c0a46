"""Tenure and customer attributes, as known at the cutoff.

- ``tenure_days``: days since the customer became known (the earlier of signup and first
  order), strictly before the cutoff.
- ``days_since_signup``: days since ``signup_at`` (NaN without a signup before the cutoff;
  needs ``customers.signup_at``).
- ``attr_<attribute>_<value>``: 1 when the customer's text attribute has that vocabulary value
  (or ``other``), else 0 (all 0 when the value is missing).
- ``attr_<attribute>``: a numeric attribute passed through (NaN when missing).

Attributes are taken *as of the cutoff*. When the customers table has ``updated_at`` it is a
history: the row used is the latest with ``updated_at`` (and ``signup_at``) before the cutoff.
Without ``updated_at`` the attributes are used as they are today, whatever the cutoff: a
leakage risk whenever they change over time (a segment assigned after a purchase, a loyalty
tier earned by spending, a "churned" flag), because training rows from the past would see
facts that were not yet true. Prefer a history table, or keep only attributes fixed at
signup (country, acquisition channel).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cxpredict.features.engine import (
    DAY_US,
    KNOWN_SINCE_US,
    Aggregate,
    Block,
    Request,
    Source,
    code_sql,
    ident,
    last_code,
)
from cxpredict.features.family import Context, Family, FeatureDef, feature
from cxpredict.features.vocabulary import OTHER, attribute_key, slugify

NAME = "tenure"

HISTORY = Source("customer_history", f"SELECT *, {KNOWN_SINCE_US} AS us FROM customers")


def _attribute_why(ctx: Context, column: str) -> str:
    if not ctx.available.table("customers"):
        return "no customers table"
    if not ctx.available.has("customers", column):
        return f"customers has no {column} values"
    return ""


def _definitions(ctx: Context) -> list[FeatureDef]:
    out = [
        feature(
            NAME,
            "tenure_days",
            "Days since the customer became known (signup or first order).",
            "days",
            "a customer for {tenure_days:.0f} days",
        ),
        feature(
            NAME,
            "days_since_signup",
            "Days since the customer signed up.",
            "days",
            "signed up {days_since_signup:.0f} days ago",
            ctx.available.why_not("customers", "signup_at"),
        ),
    ]
    vocabulary = ctx.vocabulary
    for column in vocabulary.attributes():
        key = attribute_key(column)
        why = _attribute_why(ctx, column)
        labels = (*vocabulary.get(key), "any other value")
        for slug, label in zip((*vocabulary.slugs(key), OTHER), labels, strict=True):
            out.append(
                feature(
                    NAME,
                    f"attr_{slugify(column)}_{slug}",
                    f"1 when the customer's {column} is '{label}', else 0.",
                    "flag",
                    f"{column.replace('_', ' ')} is {label}",
                    why,
                )
            )
    for column in vocabulary.numeric:
        out.append(
            feature(
                NAME,
                f"attr_{slugify(column)}",
                f"The customer's {column}, as recorded before the cutoff.",
                "value",
                f"{column} {{attr_{slugify(column)}:g}}",
                _attribute_why(ctx, column),
            )
        )
    return out


def _requests(ctx: Context) -> list[Request]:
    if not ctx.available.table("customers"):
        return []
    out: list[Request] = [HISTORY]
    if ctx.available.has("customers", "signup_at"):
        out.append(Aggregate("customer_history", "signup_us", "min", "signup_us"))
    vocabulary = ctx.vocabulary
    for i, column in enumerate(vocabulary.attributes()):
        if _attribute_why(ctx, column):
            continue
        known = vocabulary.get(attribute_key(column))
        code = f"COALESCE({code_sql(ident(column), known)}, -1)"
        out.append(last_code("customer_history", f"attribute_code_{i}", code, len(known) + 2))
    for i, column in enumerate(vocabulary.numeric):
        if _attribute_why(ctx, column):
            continue
        # NaN, not NULL, so that a value cleared later is not replaced by an older one.
        expr = f"COALESCE(CAST({ident(column)} AS DOUBLE), 'NaN'::DOUBLE)"
        out.append(Aggregate("customer_history", f"attribute_value_{i}", "last", expr))
    return out


def _compute(ctx: Context, res: Block) -> Iterator[tuple[str, np.ndarray]]:
    yield "tenure_days", (res.cutoff_grid - res.entry) / DAY_US
    if not ctx.available.table("customers"):
        return
    if ctx.available.has("customers", "signup_at"):
        yield "days_since_signup", res.days_since(res.value("signup_us"))
    vocabulary = ctx.vocabulary
    for i, column in enumerate(vocabulary.attributes()):
        if _attribute_why(ctx, column):
            continue
        code = res.value(f"attribute_code_{i}")
        key = attribute_key(column)
        for k, slug in enumerate((*vocabulary.slugs(key), OTHER)):
            yield f"attr_{slugify(column)}_{slug}", (code == k).astype(np.float64)
    for i, column in enumerate(vocabulary.numeric):
        if _attribute_why(ctx, column):
            continue
        yield f"attr_{slugify(column)}", res.value(f"attribute_value_{i}")


FAMILY = Family(
    NAME,
    "How long the customer has been known, and their attributes as of the cutoff.",
    _definitions,
    _requests,
    _compute,
)
