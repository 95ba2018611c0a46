"""Preferences: what a customer buys (categories) and where (order channels).

For each of ``category`` and ``channel`` of the orders (skipped when the column is absent),
over the purchase lines (non-negative amount, a value present) strictly before the cutoff:

- ``share_category_<value>`` / ``share_order_channel_<value>``: share of the lines with that
  value, one column per vocabulary value and ``other`` for the rest (NaN without lines);
- ``distinct_categories`` / ``distinct_order_channels``: number of vocabulary values bought,
  all values outside the vocabulary counting as one (``other``);
- ``category_entropy`` / ``order_channel_entropy``: entropy in bits of the shares (0: always
  the same, higher: more varied; NaN without lines);
- ``last_category_is_<value>`` / ``last_order_channel_is_<value>``: 1 for the value of the
  latest purchase line, 0 for the others (all 0 without lines; ties at one instant go to the
  value that sorts last in the vocabulary order).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cxpredict.features.engine import Aggregate, Block, Request, last_code
from cxpredict.features.family import Context, Family, FeatureDef, feature, shares_and_entropy
from cxpredict.features.rfm import order_lines
from cxpredict.features.vocabulary import ORDER_CATEGORY, ORDER_CHANNEL, OTHER

NAME = "preferences"

#: (vocabulary key, orders column, name stem, plural, words)
_FACETS: tuple[tuple[str, str, str, str, str], ...] = (
    (ORDER_CATEGORY, "category", "category", "categories", "product category"),
    (ORDER_CHANNEL, "channel", "order_channel", "order_channels", "order channel"),
)


def _slugs(ctx: Context, key: str) -> tuple[str, ...]:
    return (*ctx.vocabulary.slugs(key), OTHER)


def _labels(ctx: Context, key: str) -> tuple[str, ...]:
    return (*ctx.vocabulary.get(key), "any other value")


def _definitions(ctx: Context) -> list[FeatureDef]:
    out: list[FeatureDef] = []
    for key, column, stem, plural, words in _FACETS:
        why = ctx.available.why_not("orders", column)
        for slug, label in zip(_slugs(ctx, key), _labels(ctx, key), strict=True):
            out.append(
                feature(
                    NAME,
                    f"share_{stem}_{slug}",
                    f"Share of the customer's purchases with {words} '{label}'.",
                    "share",
                    f"{{share_{stem}_{slug}:.0%}} of purchases with {words} {label}",
                    why,
                )
            )
        out.append(
            feature(
                NAME,
                f"distinct_{plural}",
                f"Number of different {words} values the customer has bought (rare ones as one).",
                "count",
                f"{words} values bought: {{distinct_{plural}:.0f}}",
                why,
            )
        )
        out.append(
            feature(
                NAME,
                f"{stem}_entropy",
                f"How varied the customer's {words} values are (0 always the same).",
                "bits",
                f"{words} as varied as {{{stem}_entropy:spread}} values used equally",
                why,
            )
        )
        for slug, label in zip(_slugs(ctx, key), _labels(ctx, key), strict=True):
            out.append(
                feature(
                    NAME,
                    f"last_{stem}_is_{slug}",
                    f"1 when the latest purchase had {words} '{label}', else 0.",
                    "flag",
                    f"latest purchase with {words} {label}",
                    why,
                )
            )
    return out


def _requests(ctx: Context) -> list[Request]:
    out: list[Request] = []
    for key, column, stem, _plural, _words in _FACETS:
        if not ctx.available.has("orders", column):
            continue
        code = f"{column}_code"
        out.append(order_lines(ctx))
        for k in range(len(_slugs(ctx, key))):
            out.append(
                Aggregate(
                    "order_lines",
                    f"{stem}_lines_{k}",
                    "count",
                    f"amount >= 0 AND {code} = {k}",
                )
            )
        out.append(
            last_code("order_lines", f"{stem}_last", code, len(_slugs(ctx, key)), "amount >= 0")
        )
    return out


def _compute(ctx: Context, res: Block) -> Iterator[tuple[str, np.ndarray]]:
    for key, column, stem, plural, _words in _FACETS:
        if not ctx.available.has("orders", column):
            continue
        slugs = _slugs(ctx, key)
        counts = [res.total(f"{stem}_lines_{k}") for k in range(len(slugs))]
        shares, entropy = shares_and_entropy(counts)
        for slug, share in zip(slugs, shares, strict=True):
            yield f"share_{stem}_{slug}", share
        yield f"distinct_{plural}", sum((c > 0).astype(np.float64) for c in counts)
        yield f"{stem}_entropy", entropy
        last = res.value(f"{stem}_last")
        for k, slug in enumerate(slugs):
            yield f"last_{stem}_is_{slug}", (last == k).astype(np.float64)


FAMILY = Family(
    NAME,
    "What the customer buys (categories) and through which channels.",
    _definitions,
    _requests,
    _compute,
)
