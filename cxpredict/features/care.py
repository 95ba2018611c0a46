"""Care: whether the customer's messages are answered, how fast, and how they rate the brand.

A customer whose message goes unanswered leaves; these features say so. Over the interactions
strictly before the cutoff (skipped without an interactions table). *Contacts* are the
interactions of kind ``message`` or ``complaint``. A contact is *answered* at a cutoff when its
``responded_at`` is before the cutoff; an answer given at or after the cutoff is not yet known,
so the contact counts as unanswered and its response time as unknown.

- ``messages_<w>d``, ``complaints_<w>d``: messages and complaints sent in the last ``w`` days.
- ``unanswered_messages_<w>d``: contacts sent in the last ``w`` days and unanswered at the
  cutoff; ``unanswered_messages_lifetime``: all of them (needs ``responded_at``).
- ``unanswered_share``: unanswered contacts divided by contacts (NaN without contacts).
- ``response_hours_median``, ``response_hours_max``: hours from contact to answer, over the
  contacts answered before the cutoff (NaN without any).
- ``days_since_last_unanswered``: days since the latest contact still unanswered (NaN: none).
- ``days_since_last_message``: days since the latest contact (NaN: none).
- ``rating_mean``, ``rating_last``: mean and latest rating (any interaction with a rating;
  needs ``rating``); ``rating_trend``: mean rating of the last 90 days minus the mean before
  them (NaN when either is empty); ``negative_ratings``: ratings of 2 or less on the 1-5
  scale (sentiment scores in [-1, 1] should be mapped to 1-5 first, e.g. ``3 + 2 * score``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cxpredict.features.engagement import interaction_rows
from cxpredict.features.engine import (
    DAY_US,
    HOUR_US,
    RATING_SCALE,
    Aggregate,
    Block,
    PerCutoff,
    Request,
    Source,
    last_order,
)
from cxpredict.features.family import Context, Family, FeatureDef, feature, ratio

NAME = "care"
CONTACT = "kind IN ('message', 'complaint')"
UNANSWERED = "(responded_us IS NULL OR responded_us >= c)"
ANSWERED = "responded_us < c"
RECENT_RATING_DAYS = 90

CONTACT_ROWS = Source(
    "contact_rows",
    f"SELECT customer_id, us, responded_us FROM interactions WHERE {CONTACT}",
)


def _since(days: int) -> str:
    return f"us >= c - {days * DAY_US}"


def _definitions(ctx: Context) -> list[FeatureDef]:
    table = ctx.available.why_not("interactions")
    answers = ctx.available.why_not("interactions", "responded_at")
    ratings = ctx.available.why_not("interactions", "rating")
    out: list[FeatureDef] = []
    for stem, words in (("messages", "messages"), ("complaints", "complaints")):
        for w in ctx.windows:
            out.append(
                feature(
                    NAME,
                    f"{stem}_{w}d",
                    f"Number of {words} the customer sent in the last {w} days.",
                    "count",
                    f"{{{stem}_{w}d:.0f}} {words} in the last {w} days",
                    table,
                )
            )
    for w in ctx.windows:
        out.append(
            feature(
                NAME,
                f"unanswered_messages_{w}d",
                f"Messages and complaints of the last {w} days still without an answer.",
                "count",
                f"{{unanswered_messages_{w}d:.0f}} messages unanswered in the last {w} days",
                answers,
            )
        )
    out += [
        feature(
            NAME,
            "unanswered_messages_lifetime",
            "Messages and complaints still without an answer.",
            "count",
            "{unanswered_messages_lifetime:.0f} messages never answered",
            answers,
        ),
        feature(
            NAME,
            "unanswered_share",
            "Share of the customer's messages and complaints without an answer.",
            "share",
            "{unanswered_share:.0%} of messages unanswered",
            answers,
        ),
        feature(
            NAME,
            "response_hours_median",
            "Typical (median) hours the brand took to answer the customer.",
            "hours",
            "answers took {response_hours_median:hours} (median)",
            answers,
        ),
        feature(
            NAME,
            "response_hours_max",
            "Longest the brand took to answer the customer, in hours.",
            "hours",
            "waited up to {response_hours_max:hours} for an answer",
            answers,
        ),
        feature(
            NAME,
            "days_since_last_unanswered",
            "Days since the customer's latest message that is still unanswered.",
            "days",
            "a message has been unanswered for {days_since_last_unanswered:.0f} days",
            answers,
        ),
        feature(
            NAME,
            "days_since_last_message",
            "Days since the customer's latest message or complaint.",
            "days",
            "last wrote {days_since_last_message:.0f} days ago",
            table,
        ),
        feature(
            NAME,
            "rating_mean",
            "Average rating the customer gave.",
            "rating",
            "rates the brand {rating_mean:.1f} on average",
            ratings,
        ),
        feature(
            NAME,
            "rating_last",
            "The customer's latest rating.",
            "rating",
            "latest rating {rating_last:.1f}",
            ratings,
        ),
        feature(
            NAME,
            "rating_trend",
            f"Average rating of the last {RECENT_RATING_DAYS} days minus the average before "
            "(negative: getting less happy).",
            "rating",
            "ratings moved by {rating_trend:+.1f} recently",
            ratings,
        ),
        feature(
            NAME,
            "negative_ratings",
            "Number of ratings of 2 stars or less.",
            "count",
            "{negative_ratings:.0f} ratings of 2 stars or less",
            ratings,
        ),
    ]
    return out


def _requests(ctx: Context) -> list[Request]:
    if not ctx.available.table("interactions"):
        return []
    windows = ctx.windows
    rating_code = "CAST(round((rating + 1) * 2) AS BIGINT)"
    out: list[Request] = [
        interaction_rows(ctx),
        Aggregate("interaction_rows", "messages", "count", "kind = 'message'", windows),
        Aggregate("interaction_rows", "complaints", "count", "kind = 'complaint'", windows),
        Aggregate("interaction_rows", "contacts", "count", CONTACT),
        Aggregate("interaction_rows", "last_contact_us", "max", f"CASE WHEN {CONTACT} THEN us END"),
        Aggregate(
            "interaction_rows",
            "rating_n",
            "count",
            "rating IS NOT NULL",
            (RECENT_RATING_DAYS,),
        ),
        Aggregate(
            "interaction_rows",
            "rating_sum",
            "sum",
            f"COALESCE(round(rating * {RATING_SCALE}), 0)::BIGINT",
            (RECENT_RATING_DAYS,),
        ),
        Aggregate("interaction_rows", "negative_ratings", "count", "rating <= 2"),
        Aggregate(
            "interaction_rows", "rating_last", "last", "rating", order=last_order(rating_code, 13)
        ),
    ]
    if not ctx.available.has("interactions", "responded_at"):
        return out
    # Answered-or-not depends on two instants (sent, answered) against each cutoff: these
    # aggregates run over the contacts joined to every later cutoff.
    items: list[tuple[str, str]] = [
        (f"unanswered_{w}", f"count(*) FILTER (WHERE {UNANSWERED} AND {_since(w)})")
        for w in windows
    ]
    response = "greatest(responded_us - us, 0)"
    items += [
        ("unanswered", f"count(*) FILTER (WHERE {UNANSWERED})"),
        ("response_us_median", f"median({response}) FILTER (WHERE {ANSWERED})"),
        ("response_us_max", f"max({response}) FILTER (WHERE {ANSWERED})"),
        ("last_unanswered_us", f"max(us) FILTER (WHERE {UNANSWERED})"),
    ]
    out.append(CONTACT_ROWS)
    out += [PerCutoff("contact_rows", f"care_{name}", expr) for name, expr in items]
    return out


def _compute(ctx: Context, res: Block) -> Iterator[tuple[str, np.ndarray]]:
    if not ctx.available.table("interactions"):
        return
    for w in ctx.windows:
        yield f"messages_{w}d", res.window("messages", w)
        yield f"complaints_{w}d", res.window("complaints", w)
    yield "days_since_last_message", res.days_since(res.value("last_contact_us"))
    n, total = res.total("rating_n"), res.total("rating_sum")
    recent_n, recent_total = res.window("rating_n", 90), res.window("rating_sum", 90)
    yield "rating_mean", ratio(total, n) / RATING_SCALE
    yield "rating_last", res.value("rating_last")
    recent_mean = ratio(recent_total, recent_n)
    prior_mean = ratio(total - recent_total, n - recent_n)
    yield "rating_trend", (recent_mean - prior_mean) / RATING_SCALE
    yield "negative_ratings", res.total("negative_ratings")
    if not ctx.available.has("interactions", "responded_at"):
        return

    def count(name: str) -> np.ndarray:
        return np.nan_to_num(res.value(f"care_{name}"), nan=0.0)

    for w in ctx.windows:
        yield f"unanswered_messages_{w}d", count(f"unanswered_{w}")
    unanswered = count("unanswered")
    yield "unanswered_messages_lifetime", unanswered
    yield "unanswered_share", ratio(unanswered, res.total("contacts"))
    yield "response_hours_median", res.value("care_response_us_median") / HOUR_US
    yield "response_hours_max", res.value("care_response_us_max") / HOUR_US
    yield "days_since_last_unanswered", res.days_since(res.value("care_last_unanswered_us"))


FAMILY = Family(
    NAME,
    "Whether the customer's messages are answered, how fast, and how they rate the brand.",
    _definitions,
    _requests,
    _compute,
)
