"""Engagement: how often a customer visits, reads and clicks, and on which channels.

Over the interactions strictly before the cutoff (skipped without an interactions table).
Kinds are matched exactly: ``visit``, ``email_open``, ``email_click``.

- ``interactions_<w>d``: interactions of any kind in the last ``w`` days.
- ``visits_<w>d``: visits (kind ``visit``) in the last ``w`` days.
- ``sessions_<w>d``: distinct UTC days with a visit in the last ``w`` days (a day counts from
  its first visit).
- ``email_opens_<w>d``, ``email_clicks_<w>d``: emails opened and clicked in the last ``w`` days.
- ``email_click_rate``: clicks divided by opens since the first interaction (NaN without
  opens).
- ``visits_trend_30d_vs_90d``: ``(visits in the last 30 days + 1) / (visits in the 90 days
  before / 3 + 1)``, as ``orders_trend_30d_vs_90d``.
- ``distinct_interaction_channels``: number of vocabulary channels ever used (channels
  outside the vocabulary count as one, ``other``).
- ``days_since_last_interaction``: days since the latest interaction of any kind (NaN: none).
- ``days_since_last_interaction_<channel>``: the same per vocabulary channel and ``other``.
- ``share_interaction_channel_<channel>``: share of the customer's interactions (of any kind,
  since the first) made on each vocabulary channel and ``other`` (NaN without interactions;
  interactions without a channel count in the total only).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cxpredict.features.engine import Aggregate, Block, Request, Source, code_sql, floor_day_sql
from cxpredict.features.family import Context, Family, FeatureDef, feature, ratio, trend
from cxpredict.features.vocabulary import INTERACTION_CHANNEL, OTHER

NAME = "engagement"

#: (name stem, kind, words of the description, words of the reason: the count's noun first,
#: so that a count of one reads in the singular)
_COUNTS: tuple[tuple[str, str | None, str, str], ...] = (
    ("interactions", None, "interactions of any kind", "interactions of any kind"),
    ("visits", "visit", "visits", "visits"),
    ("email_opens", "email_open", "emails opened", "emails opened"),
    ("email_clicks", "email_click", "email clicks", "clicks on emails"),
)


def interaction_rows(ctx: Context) -> Source:
    """``interaction_rows``: the interactions with the vocabulary code of their channel.

    Only the columns the families read: other columns of the table, which SQL extensions may
    use, cannot collide with ``channel_code``.
    """
    code = code_sql("channel", ctx.vocabulary.get(INTERACTION_CHANNEL))
    return Source(
        "interaction_rows",
        f"SELECT customer_id, us, kind, rating, responded_us, {code} AS channel_code "
        "FROM interactions",
    )


def _channels(ctx: Context) -> tuple[tuple[str, str], ...]:
    values = (*ctx.vocabulary.get(INTERACTION_CHANNEL), "any other channel")
    return tuple(zip((*ctx.vocabulary.slugs(INTERACTION_CHANNEL), OTHER), values, strict=True))


def _definitions(ctx: Context) -> list[FeatureDef]:
    why = ctx.available.why_not("interactions")
    out: list[FeatureDef] = []
    for stem, _kind, words, said in _COUNTS:
        for w in ctx.windows:
            out.append(
                feature(
                    NAME,
                    f"{stem}_{w}d",
                    f"Number of {words} in the last {w} days.",
                    "count",
                    f"{{{stem}_{w}d:.0f}} {said} in the last {w} days",
                    why,
                )
            )
        if stem == "visits":
            for w in ctx.windows:
                out.append(
                    feature(
                        NAME,
                        f"sessions_{w}d",
                        f"Number of different days with a visit in the last {w} days.",
                        "days",
                        f"visited on {{sessions_{w}d:.0f}} days in the last {w} days",
                        why,
                    )
                )
    out += [
        feature(
            NAME,
            "email_click_rate",
            "Share of opened emails that were clicked.",
            "share",
            "clicks {email_click_rate:.0%} of the emails opened",
            why,
        ),
        feature(
            NAME,
            "visits_trend_30d_vs_90d",
            "Visits of the last 30 days against the monthly average of the 90 days before "
            "(1 steady, above 1 more, below 1 fewer).",
            "ratio",
            "visit pace {visits_trend_30d_vs_90d:.1f}x that of the previous three months",
            why,
        ),
        feature(
            NAME,
            "distinct_interaction_channels",
            "Number of different channels the customer has used to interact (rare ones as one).",
            "count",
            "used {distinct_interaction_channels:.0f} channels",
            why,
        ),
        feature(
            NAME,
            "days_since_last_interaction",
            "Days since the customer's latest interaction of any kind.",
            "days",
            "no interaction for {days_since_last_interaction:.0f} days",
            why,
        ),
    ]
    for slug, label in _channels(ctx):
        out.append(
            feature(
                NAME,
                f"days_since_last_interaction_{slug}",
                f"Days since the customer's latest interaction on channel '{label}'.",
                "days",
                f"no interaction on other channels for "
                f"{{days_since_last_interaction_{slug}:.0f}} days"
                if slug == OTHER
                else f"no {label} interaction for {{days_since_last_interaction_{slug}:.0f}} days",
                why,
            )
        )
    for slug, label in _channels(ctx):
        out.append(
            feature(
                NAME,
                f"share_interaction_channel_{slug}",
                f"Share of the customer's interactions made on channel '{label}'.",
                "share",
                f"{{share_interaction_channel_{slug}:.0%}} of interactions on {label}",
                why,
            )
        )
    return out


def _requests(ctx: Context) -> list[Request]:
    if not ctx.available.table("interactions"):
        return []
    windows = ctx.windows
    out: list[Request] = [interaction_rows(ctx)]
    for stem, kind, _words, _said in _COUNTS:
        condition = "true" if kind is None else f"kind = '{kind}'"
        extra = (30, 120) if stem == "visits" else ()
        spans = tuple(sorted({*windows, *extra}))
        out.append(Aggregate("interaction_rows", stem, "count", condition, spans))
    out.append(Aggregate("interaction_rows", "last_interaction_us", "max", "us"))
    for k in range(len(_channels(ctx))):
        out += [
            Aggregate(
                "interaction_rows",
                f"last_interaction_us_{k}",
                "max",
                f"CASE WHEN channel_code = {k} THEN us END",
            ),
            Aggregate(
                "interaction_rows", f"interaction_channel_{k}", "count", f"channel_code = {k}"
            ),
        ]
    out.append(
        Source(
            "visit_days",
            "SELECT customer_id, min(us) AS us FROM interactions WHERE kind = 'visit' "
            f"GROUP BY customer_id, {floor_day_sql('us')}",
        )
    )
    out.append(Aggregate("visit_days", "sessions", "count", "true", windows))
    return out


def _compute(ctx: Context, res: Block) -> Iterator[tuple[str, np.ndarray]]:
    if not ctx.available.table("interactions"):
        return
    for stem, _kind, _words, _said in _COUNTS:
        for w in ctx.windows:
            yield f"{stem}_{w}d", res.window(stem, w)
    for w in ctx.windows:
        yield f"sessions_{w}d", res.window("sessions", w)
    yield "email_click_rate", ratio(res.total("email_clicks"), res.total("email_opens"))
    recent = res.window("visits", 30)
    yield "visits_trend_30d_vs_90d", trend(recent, res.window("visits", 120) - recent, 3.0)
    yield "days_since_last_interaction", res.days_since(res.value("last_interaction_us"))
    used = np.zeros(res.shape)
    everything = res.total("interactions")
    for k, (slug, _label) in enumerate(_channels(ctx)):
        last = res.value(f"last_interaction_us_{k}")
        used += ~np.isnan(last)
        yield f"days_since_last_interaction_{slug}", res.days_since(last)
        share = ratio(res.total(f"interaction_channel_{k}"), everything)
        yield f"share_interaction_channel_{slug}", share
    yield "distinct_interaction_channels", used


FAMILY = Family(
    NAME,
    "How often the customer visits, opens and clicks, and on which channels.",
    _definitions,
    _requests,
    _compute,
)
