"""The synthetic omnichannel sample: a retailer whose customers buy, visit, read emails, write
to the brand, complain, review, and lapse for reasons a model can learn.

Customers join over the period and follow their own rates (gamma-distributed purchase and
contact rates, lognormal spend). Each week an active customer may start to disengage with a
hazard that rises after unanswered messages and complaints, slow answers, low ratings and a
falling engagement level; a disengaging customer orders less, visits less, stops opening
emails and rates lower, and lapses a few weeks later (no more orders, hardly any contact).
Category tastes drift, channels are preferred per customer, and demand is seasonal.
``data/sample/README.md`` describes every mechanism with its parameter values.

The generator is deterministic for a seed, never reads the clock and is vectorised: the only
Python loops run over weeks (the lapse hazard) and 28-day blocks (engagement).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from cxpredict.schemas import TIMESTAMP_COLUMNS, Tables, to_utc

CATEGORIES: tuple[str, ...] = (
    "electronics",
    "fashion",
    "home",
    "beauty",
    "sports",
    "books",
    "grocery",
    "toys",
)
ORDER_CHANNELS: tuple[str, ...] = ("web", "app", "store", "phone", "marketplace")
INTERACTION_CHANNELS: tuple[str, ...] = ("web", "app", "email", "social", "chat", "phone", "store")
KINDS: tuple[str, ...] = ("visit", "email_open", "email_click", "message", "complaint", "review")
COUNTRIES: tuple[str, ...] = ("FR", "DE", "GB", "ES", "IT", "NL", "BE")
SEGMENTS: tuple[str, ...] = ("standard", "premium", "business")
ACQUISITION_CHANNELS: tuple[str, ...] = (
    "organic",
    "paid_search",
    "paid_social",
    "referral",
    "marketplace",
    "store",
)

#: Channels each interaction kind can happen on.
KIND_CHANNELS: dict[str, tuple[str, ...]] = {
    "visit": ("web", "app", "store"),
    "email_open": ("email",),
    "email_click": ("email",),
    "message": ("chat", "email", "social", "phone", "app"),
    "complaint": ("chat", "email", "social", "phone", "store"),
    "review": ("web", "app"),
}

_DAY_S = 86_400
_YEAR = 365.25
_BLOCK_DAYS = 28


@dataclass(frozen=True)
class Mechanisms:
    """The parameters of the simulated behaviour; ``data/sample/README.md`` explains each.

    Rates are per year of active life unless the name says otherwise; hazards are weekly.
    """

    # joining
    launch_share: float = 0.3
    launch_days: float = 28.0
    growth: float = 1.0
    welcome_order_share: float = 0.6
    # buying
    orders_per_year: float = 10.0
    orders_shape: float = 0.8
    spend_median: float = 40.0
    spend_sigma: float = 0.6
    basket_shape: float = 3.0
    refund_share: float = 0.03
    category_drift_days: float = 365.0
    gift_share: float = 0.3
    # contacts
    visits_per_year: float = 4.5
    opens_per_year: float = 3.5
    click_share: float = 0.25
    messages_per_year: float = 1.5
    complaints_per_year: float = 0.4
    review_share: float = 0.08
    # engagement level: AR(1) on 28-day blocks, in log units
    engagement_persistence: float = 0.8
    engagement_noise: float = 0.35
    # the lapse hazard
    loyal_share: float = 0.2
    loyal_hazard: float = 0.0003
    weekly_hazard: float = 0.008
    hazard_shape: float = 2.0
    engagement_effect: float = 0.8
    care_hazard: float = 0.08
    unanswered_effect: float = 1.0
    slow_effect: float = 0.4
    very_slow_effect: float = 0.8
    complaint_effect: float = 0.8
    complaint_answer_weight: float = 1.5
    low_rating_effect: float = 0.9
    mid_rating_effect: float = 0.3
    care_half_life_weeks: float = 8.0
    # disengaging, then lapsed
    disengaged_weeks: float = 6.0
    disengaged_order_factor: float = 0.25
    disengaged_visit_factor: float = 0.35
    disengaged_open_factor: float = 0.25
    disengaged_click_factor: float = 0.4
    disengaged_complaint_factor: float = 1.5
    disengaged_rating_drop: float = 1.6
    care_rating_drop: float = 0.5
    lapsed_visit_factor: float = 0.03
    lapsed_open_factor: float = 0.05
    # the brand's care desk
    backlog_delay_factor: float = 2.5
    backlog_answer_drop: float = 0.1


DEFAULT_MECHANISMS = Mechanisms()

#: Monthly demand factors (January first) for orders; visits follow their square root.
_MONTH_DEMAND = np.array([0.9, 0.9, 1.0, 1.0, 1.0, 0.9, 0.8, 0.8, 1.0, 1.05, 1.35, 1.6])
_BLACK_FRIDAY_BOOST = 2.5
#: Weekday factors, Monday first.
_WEEKDAY_ORDERS = np.array([1.0, 1.0, 1.0, 1.0, 1.05, 1.1, 1.15])
_WEEKDAY_EMAIL = np.array([0.7, 1.6, 1.1, 0.9, 1.5, 0.8, 0.6])

_CATEGORY_SHARE = np.array([0.14, 0.2, 0.14, 0.12, 0.1, 0.08, 0.14, 0.08])
_CATEGORY_PRICE = np.array([3.0, 1.2, 1.5, 0.7, 1.3, 0.45, 0.6, 0.9])
_GIFT_CATEGORIES = np.array([0.3, 0.1, 0.05, 0.15, 0.0, 0.1, 0.0, 0.3])
_ORDER_CHANNEL_SHARE = np.array([0.42, 0.3, 0.16, 0.04, 0.08])
_CONTACT_CHANNEL_SHARE = np.array([0.25, 0.22, 0.14, 0.1, 0.14, 0.08, 0.07])
_COUNTRY_SHARE = np.array([0.3, 0.25, 0.15, 0.1, 0.1, 0.06, 0.04])
_SEGMENT_SHARE = np.array([0.72, 0.2, 0.08])
_ACQUISITION_SHARE = np.array([0.3, 0.25, 0.2, 0.1, 0.1, 0.05])
#: Per segment: purchase rate, spend and lapse hazard multipliers, extra items per order.
_SEGMENT_RATE = np.array([1.0, 1.3, 1.6])
_SEGMENT_SPEND = np.array([1.0, 1.8, 2.5])
_SEGMENT_HAZARD = np.array([1.0, 0.7, 0.8])
_SEGMENT_ITEMS = np.array([0.4, 0.6, 2.5])
#: Per acquisition channel: lapse hazard multiplier.
_ACQUISITION_HAZARD = np.array([1.0, 1.2, 1.7, 0.6, 1.1, 0.8])
#: Per interaction channel: share of messages answered, median answer delay in hours.
_ANSWER_SHARE = np.array([0.9, 0.9, 0.8, 0.55, 0.95, 0.97, 0.97])
_ANSWER_HOURS = np.array([6.0, 6.0, 20.0, 30.0, 0.25, 0.05, 1.0])
_ANSWER_SIGMA = 1.1
#: Complaints are answered a little less often than other messages.
_COMPLAINT_ANSWER_FACTOR = 0.9


def generate_sample(
    n_customers: int,
    *,
    seed: int = 0,
    start: str | pd.Timestamp = "2024-01-01",
    days: int = 730,
    mechanisms: Mechanisms = DEFAULT_MECHANISMS,
) -> Tables:
    """Generate a synthetic retailer's canonical orders, interactions and customers.

    Every event falls in ``[start, start + days)``; customers join over that period and no
    event of a customer precedes their ``signup_at``.

    Parameters
    ----------
    n_customers
        Number of customers, numbered ``C000001`` upwards in order of signup.
    seed
        Seed of every random draw; the same arguments give the same tables.
    start
        First instant of the history (a date or an instant; naive values are UTC; a fraction
        of a second is rounded up).
    days
        Length of the history in days.
    mechanisms
        Parameters of the simulated behaviour.

    Returns
    -------
    Tables
        Canonical ``orders``, ``interactions`` and ``customers``, sorted by time then
        customer. ``extra["truth"]`` holds, per customer, when they started to disengage and
        when they lapsed (``NaT`` if not within the period): the hidden state, for checks only.
    """
    if int(n_customers) < 1:
        raise ValueError(f"n_customers must be at least 1; got {n_customers!r}")
    if int(days) < 1:
        raise ValueError(f"days must be at least 1; got {days!r}")
    n, days = int(n_customers), int(days)
    origin = to_utc(start).ceil("s")
    seeds = np.random.SeedSequence(seed).spawn(5)
    streams = iter(np.random.default_rng(s) for s in seeds[:3])
    calendar = _Calendar.build(origin, days)
    people = _Population.draw(next(streams), n, calendar, mechanisms)
    care = _CareEvents.draw(next(streams), people, calendar, mechanisms)
    _simulate_lapses(next(streams), people, care, calendar, mechanisms)
    ids = _fixed_ids("C", np.arange(1, n + 1), max(6, len(str(n))))
    orders = _orders(seeds[3], people, calendar, mechanisms, ids)
    interactions = _interactions(seeds[4], people, care, calendar, mechanisms, ids)
    customers = _customers(people, calendar, ids)
    truth = pd.DataFrame(
        {
            "customer_id": _strings(ids),
            "disengaged_at": _instants(calendar, people.drift),
            "lapsed_at": _instants(calendar, people.lapse),
        }
    )
    return Tables(orders, interactions, customers, {"truth": truth})


def write_sample(tables: Tables, out_dir: str | Path, *, fmt: str = "csv") -> dict[str, Path]:
    """Write the tables to ``out_dir`` as ``<table>.csv`` or ``<table>.parquet``, atomically.

    CSV timestamps are ISO-8601 in UTC with a ``Z`` and second precision; missing values are
    empty fields. Each file is written beside its target and moved into place in one step.

    Parameters
    ----------
    tables
        The tables to write; absent tables are skipped.
    out_dir
        Folder to write to; created if missing.
    fmt
        ``"csv"`` or ``"parquet"``.

    Returns
    -------
    dict of str to Path
        The path written for each table.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be 'csv' or 'parquet'; got {fmt!r}")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in ("orders", "interactions", "customers"):
        frame = tables.get(name)
        if frame is None:
            continue
        target = folder / f"{name}.{fmt}"
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        try:
            if fmt == "csv":
                _csv_ready(frame, name).to_csv(temporary, index=False, lineterminator="\n")
            else:
                frame.to_parquet(temporary, index=False)
            os.chmod(temporary, 0o644)
            os.replace(temporary, target)
        finally:
            Path(temporary).unlink(missing_ok=True)
        paths[name] = target
    return paths


# --------------------------------------------------------------------------- the calendar


@dataclass(frozen=True)
class _Steps:
    """A step function as its running integral, with a lookup grid to invert it quickly.

    ``cumulative[i]`` is the integral up to step ``i``; the grid maps a value to the step it
    falls in, checked against the next edge (grid cells are narrower than any step).
    """

    cumulative: np.ndarray
    grid: np.ndarray

    @classmethod
    def of(cls, heights: np.ndarray) -> _Steps:
        cumulative = np.concatenate([[0.0], np.cumsum(heights)])
        cells = int(np.ceil(cumulative[-1] / heights.min())) + 1
        edges = np.arange(cells) * (cumulative[-1] / cells)
        grid = np.searchsorted(cumulative, edges, side="right") - 1
        return cls(cumulative, np.clip(grid, 0, heights.size - 1))

    def locate(self, u: np.ndarray) -> np.ndarray:
        """The step ``i`` with ``cumulative[i] <= u < cumulative[i + 1]``."""
        last = self.cumulative.size - 2
        cell = np.clip((u * (self.grid.size / self.cumulative[-1])).astype(np.int64), 0, None)
        step = self.grid[np.minimum(cell, self.grid.size - 1)]
        return np.minimum(step + (self.cumulative[step + 1] <= u), last)


@dataclass(frozen=True)
class _Demand:
    """A relative intensity per hour of the period (mean 1), to place events in time."""

    hourly: np.ndarray
    steps: _Steps

    @classmethod
    def of(cls, daily: np.ndarray, hours: np.ndarray) -> _Demand:
        """Intensity of day ``d`` and hour ``h``: ``daily[d] * hours[h]``, scaled to mean 1."""
        hourly = (daily[:, None] * hours[None, :]).ravel()
        hourly = hourly / hourly.mean()
        return cls(hourly, _Steps.of(hourly / 24.0))

    def warp(self, t: np.ndarray) -> np.ndarray:
        """The integral of the intensity from day 0 to day ``t`` (``0 <= t <= days``)."""
        position = t * 24.0
        hour = np.minimum(position.astype(np.int64), self.hourly.size - 1)
        return self.steps.cumulative[hour] + (position - hour) * (self.hourly[hour] / 24.0)

    def unwarp(self, u: np.ndarray) -> np.ndarray:
        """The day offset at which the integral reaches ``u`` (inverse of :meth:`warp`)."""
        hour = self.steps.locate(u)
        return (hour + (u - self.steps.cumulative[hour]) / (self.hourly[hour] / 24.0)) / 24.0


#: Hour-of-day profiles (UTC), hour 0 first.
_HOUR_SHOPPING = np.array(
    [2, 1, 1, 1, 1, 2, 3, 5, 7, 8, 9, 10, 12, 11, 9, 8, 8, 9, 11, 13, 14, 12, 8, 4], float
)
_HOUR_EMAIL = np.array(
    [1, 1, 1, 1, 1, 2, 6, 12, 14, 11, 8, 7, 8, 7, 6, 6, 6, 7, 9, 10, 9, 7, 4, 2], float
)
_HOUR_OFFICE = np.array(
    [1, 1, 1, 1, 1, 1, 2, 5, 9, 11, 11, 10, 9, 10, 11, 10, 9, 8, 7, 6, 5, 4, 2, 1], float
)


@dataclass(frozen=True)
class _Calendar:
    """Per-day factors of the period; day ``d`` covers ``[d, d + 1)`` days after ``origin``."""

    origin: pd.Timestamp
    days: int
    orders: _Demand
    visits: _Demand
    emails: _Demand
    messages: _Demand
    reviews: _Demand
    gift_season: np.ndarray
    backlog: np.ndarray

    @classmethod
    def build(cls, origin: pd.Timestamp, days: int) -> _Calendar:
        dates = np.datetime64(origin.tz_localize(None).floor("D"), "D") + np.arange(days)
        month_start = dates.astype("datetime64[M]")
        month = month_start.astype(np.int64) % 12
        day_of_month = (dates - month_start.astype("datetime64[D]")).astype(np.int64) + 1
        weekday = (dates.astype(np.int64) + 3) % 7
        # Black Friday is the Friday of 23-29 November; the boost runs to Cyber Monday.
        friday = (month == 10) & (day_of_month >= 23) & (day_of_month <= 29) & (weekday == 4)
        black_friday = np.zeros(days, bool)
        for lag in range(4):
            black_friday[lag:] |= friday[: days - lag]
        seasonal = _MONTH_DEMAND[month] * np.where(black_friday, _BLACK_FRIDAY_BOOST, 1.0)
        late_year = ((month == 10) & (day_of_month >= 15)) | (month == 11)
        shopping = seasonal * _WEEKDAY_ORDERS[weekday]
        browsing = np.sqrt(seasonal) * _WEEKDAY_ORDERS[weekday]
        return cls(
            origin=origin,
            days=days,
            orders=_Demand.of(shopping, _HOUR_SHOPPING),
            visits=_Demand.of(browsing, _HOUR_SHOPPING),
            emails=_Demand.of(_WEEKDAY_EMAIL[weekday], _HOUR_EMAIL),
            messages=_Demand.of(browsing, _HOUR_OFFICE),
            reviews=_Demand.of(shopping, _HOUR_OFFICE),
            gift_season=late_year & ~((month == 11) & (day_of_month > 24)),
            backlog=late_year,
        )


# --------------------------------------------------------------------------- customers


@dataclass
class _Population:
    """Per-customer traits (arrays of length n), in days since the origin, rates per day."""

    signup: np.ndarray
    country: np.ndarray
    segment: np.ndarray
    acquisition: np.ndarray
    order_rate: np.ndarray
    spend: np.ndarray
    visit_rate: np.ndarray
    open_rate: np.ndarray
    click_share: np.ndarray
    message_rate: np.ndarray
    complaint_rate: np.ndarray
    review_share: np.ndarray
    rating_mean: np.ndarray
    hazard: np.ndarray
    engagement: np.ndarray  # (blocks, n), log units
    category_early: np.ndarray  # (categories, n) cumulative
    category_late: np.ndarray
    category_days: np.ndarray
    order_channels: np.ndarray  # (channels, n) cumulative
    contact_channels: np.ndarray  # (channels, n) probabilities
    drift: np.ndarray
    lapse: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, cal: _Calendar, m: Mechanisms) -> _Population:
        days = cal.days
        u = rng.random(n)
        launch = rng.random(n) < m.launch_share
        g = m.growth
        growing = (-1.0 + np.sqrt(1.0 + 2.0 * g * u * (1.0 + g / 2.0))) / g if g else u
        signup = np.sort(np.where(launch, u * min(m.launch_days, days), growing * days))
        segment = _categorical(rng, _SEGMENT_SHARE, n)
        acquisition = _categorical(rng, _ACQUISITION_SHARE, n)
        country = _categorical(rng, _COUNTRY_SHARE, n)

        order_rate = (
            rng.gamma(m.orders_shape, m.orders_per_year / m.orders_shape, n)
            * _SEGMENT_RATE[segment]
        )
        relative = (order_rate / m.orders_per_year) ** 0.25
        spend = m.spend_median * np.exp(m.spend_sigma * rng.standard_normal(n))
        loyal = rng.random(n) < m.loyal_share
        weekly = np.where(
            loyal,
            m.loyal_hazard,
            rng.gamma(m.hazard_shape, m.weekly_hazard / m.hazard_shape, n),
        )
        hazard = weekly * _SEGMENT_HAZARD[segment] * _ACQUISITION_HAZARD[acquisition] / 7.0

        blocks = math.ceil(days / _BLOCK_DAYS)
        engagement = np.empty((blocks, n), np.float32)
        spread = m.engagement_noise / math.sqrt(1.0 - m.engagement_persistence**2)
        engagement[0] = spread * rng.standard_normal(n)
        for b in range(1, blocks):
            step = m.engagement_noise * rng.standard_normal(n)
            engagement[b] = m.engagement_persistence * engagement[b - 1] + step

        early = _dirichlet(rng, _CATEGORY_SHARE * 4.0, n)
        late = 0.4 * early + 0.6 * _dirichlet(rng, _CATEGORY_SHARE * 4.0, n)
        order_weights = _dirichlet(rng, _ORDER_CHANNEL_SHARE * 3.0, n)
        order_weights[4, acquisition == 4] += 1.0  # marketplace
        order_weights[2, acquisition == 5] += 1.0  # store
        order_weights[3, segment == 2] += 0.5  # business customers phone in
        order_weights /= order_weights.sum(axis=0)
        return cls(
            signup=signup,
            country=country,
            segment=segment,
            acquisition=acquisition,
            order_rate=order_rate / _YEAR,
            spend=spend * _SEGMENT_SPEND[segment],
            visit_rate=m.visits_per_year / _YEAR * relative * rng.gamma(2.0, 0.5, n),
            open_rate=m.opens_per_year / _YEAR * rng.gamma(1.0, 1.0, n),
            click_share=rng.beta(2.0, 2.0 / m.click_share - 2.0, n),
            message_rate=m.messages_per_year / _YEAR * relative * rng.gamma(2.0, 0.5, n),
            complaint_rate=m.complaints_per_year / _YEAR * relative * rng.gamma(1.0, 1.0, n),
            review_share=rng.beta(1.0, 1.0 / m.review_share - 1.0, n),
            rating_mean=np.clip(4.4 + 0.4 * rng.standard_normal(n), 3.0, 5.2),
            hazard=hazard,
            engagement=engagement,
            category_early=np.cumsum(early, axis=0),
            category_late=np.cumsum(late, axis=0),
            category_days=m.category_drift_days * rng.gamma(4.0, 0.25, n),
            order_channels=np.cumsum(order_weights, axis=0),
            contact_channels=_dirichlet(rng, _CONTACT_CHANNEL_SHARE * 3.0, n),
            drift=np.full(n, np.inf),
            lapse=np.full(n, np.inf),
        )

    def engagement_at(self, owner: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Engagement level (log units) of each ``owner`` at day ``t``."""
        block = np.minimum((t // _BLOCK_DAYS).astype(np.int64), self.engagement.shape[0] - 1)
        return self.engagement[block, owner]

    def part(self, a: int, b: int) -> _Population:
        """The customers at positions ``[a, b)`` (views, not copies)."""
        values = {
            f.name: (value[:, a:b] if value.ndim == 2 else value[a:b])
            for f in fields(self)
            for value in [getattr(self, f.name)]
        }
        return _Population(**values)


# --------------------------------------------------------------------------- care events


@dataclass
class _CareEvents:
    """Candidate messages, complaints and reviews, sorted by time; the lapse loop keeps some."""

    owner: np.ndarray
    t: np.ndarray
    kind: np.ndarray  # index into KINDS
    channel: np.ndarray  # index into INTERACTION_CHANNELS
    answered: np.ndarray  # days, NaN if never answered (within the period)
    delay_hours: np.ndarray
    thinning: np.ndarray  # uniform, thins complaints of customers who are not disengaging
    noise: np.ndarray  # rating noise
    keep: np.ndarray
    rating: np.ndarray

    @classmethod
    def draw(
        cls, rng: np.random.Generator, people: _Population, cal: _Calendar, m: Mechanisms
    ) -> _CareEvents:
        end = np.full(people.signup.size, float(cal.days))
        parts = []
        for kind, rate, demand in (
            ("message", people.message_rate, cal.messages),
            ("complaint", people.complaint_rate * m.disengaged_complaint_factor, cal.messages),
            ("review", people.order_rate * people.review_share, cal.reviews),
        ):
            owner, t = _poisson_process(rng, people.signup, end, rate, demand)
            channels = KIND_CHANNELS[kind]
            codes = np.array([INTERACTION_CHANNELS.index(c) for c in channels])
            weights = people.contact_channels[codes]
            cumulative = np.cumsum(weights / weights.sum(axis=0), axis=0)
            channel = codes[_choose(rng.random(owner.size), cumulative, owner)]
            parts.append((owner, t, np.full(owner.size, KINDS.index(kind)), channel))
        owner, t, kind, channel = (np.concatenate(p) for p in zip(*parts, strict=True))
        order = _sort_order(t)
        owner, t, kind, channel = owner[order], t[order], kind[order], channel[order]

        size = owner.size
        backlog = cal.backlog[np.minimum(t.astype(np.int64), cal.days - 1)]
        complaint = kind == KINDS.index("complaint")
        share = _ANSWER_SHARE[channel] * np.where(complaint, _COMPLAINT_ANSWER_FACTOR, 1.0)
        share = share - m.backlog_answer_drop * backlog
        hours = _ANSWER_HOURS[channel] * np.exp(_ANSWER_SIGMA * rng.standard_normal(size))
        hours *= np.where(backlog, m.backlog_delay_factor, 1.0)
        answered = t + hours / 24.0
        answered[(rng.random(size) >= share) | (answered >= cal.days)] = np.nan
        answered[kind == KINDS.index("review")] = np.nan
        return cls(
            owner=owner,
            t=t,
            kind=kind,
            channel=channel,
            answered=answered,
            delay_hours=hours,
            thinning=rng.random(size),
            noise=rng.standard_normal(size),
            keep=np.zeros(size, bool),
            rating=np.full(size, np.nan),
        )


#: The project config written beside generated tables; ``{orders}`` and the others are the
#: file names. The same tasks as the bundled sample's config.
SAMPLE_CONFIG = """\
# A synthetic omnichannel retailer made by `cxpredict sample`. Paths are relative to this file.
project: sample

data:
  orders: {{path: {orders}}}
  interactions: {{path: {interactions}}}
  customers: {{path: {customers}}}

tasks:
  churn:         {{kind: churn, horizon_days: 90, active_days: 180}}
  repurchase:    {{kind: repurchase, horizon_days: 90}}
  next_category: {{kind: preference, attribute: category, horizon_days: 90}}
  best_channel:  {{kind: preference, attribute: channel, table: interactions, horizon_days: 90}}
  value:         {{kind: value, horizon_days: 180}}

training:
  n_cutoffs: 12
  step_days: 28
  n_backtest_cutoffs: 3
"""


def sample_config(paths: dict[str, Path]) -> str:
    """The text of a project config reading the tables written by :func:`write_sample`.

    Parameters
    ----------
    paths
        The path of each table, as :func:`write_sample` returns them; the config names them
        relative to its own folder, which is theirs.

    Returns
    -------
    str
        YAML with the tables and one task of every kind.
    """
    return SAMPLE_CONFIG.format(**{name: Path(path).name for name, path in paths.items()})


def _simulate_lapses(
    rng: np.random.Generator, people: _Population, care: _CareEvents, cal: _Calendar, m: Mechanisms
) -> None:
    """Walk week by week: who starts to disengage, and which care events happen.

    In week ``w`` (days ``[7w, 7w + 7)``) an active customer starts to disengage with hazard
    ``hazard * exp(-engagement_effect * engagement) + care_hazard * care``, where ``care`` is
    the decayed sum of the care effects of the events before week ``w``. Disengagement
    starts are placed exactly within the week (an exponential clock per customer); the lapse
    follows a gamma-distributed number of weeks later. Fills ``people.drift``, ``people.lapse``,
    ``care.keep`` and ``care.rating`` in place.
    """
    n = people.signup.size
    clock = rng.exponential(1.0, n)
    spent = np.zeros(n)
    frustration = np.zeros(n)
    decay = 0.5 ** (1.0 / m.care_half_life_weeks)
    care_rate = m.care_hazard / 7.0
    engagement_factor = np.exp(-m.engagement_effect * people.engagement)
    weeks = math.ceil(cal.days / 7)
    bounds = np.searchsorted(care.t, 7.0 * np.arange(weeks + 1))
    complaint, review = KINDS.index("complaint"), KINDS.index("review")
    lapse_shape = 2.0
    active = np.ones(n, bool)
    for w in range(weeks):
        lo, hi = 7.0 * w, min(7.0 * (w + 1), float(cal.days))
        # Customers are numbered in signup order: those who joined before ``hi`` are a prefix.
        joined = int(np.searchsorted(people.signup, hi))
        begin = np.maximum(lo, people.signup[:joined])
        exposure = hi - begin
        block = min(w * 7 // _BLOCK_DAYS, len(engagement_factor) - 1)
        rate = people.hazard[:joined] * engagement_factor[block, :joined]
        rate += care_rate * frustration[:joined]
        step = np.where(active[:joined], rate * exposure, 0.0)
        now = spent[:joined] + step
        starting = np.flatnonzero((now >= clock[:joined]) & (step > 0))
        if starting.size:
            fraction = (clock[starting] - spent[starting]) / step[starting]
            drift = begin[starting] + fraction * exposure[starting]
            people.drift[starting] = drift
            weeks_left = rng.gamma(lapse_shape, m.disengaged_weeks / lapse_shape, starting.size)
            people.lapse[starting] = drift + 7.0 * weeks_left
            active[starting] = False
        spent[:joined] = now

        window = slice(bounds[w], bounds[w + 1])
        owner, t, kind = care.owner[window], care.t[window], care.kind[window]
        disengaged = t >= people.drift[owner]
        keep = t < people.lapse[owner]
        keep &= (
            (kind != complaint)
            | disengaged
            | (care.thinning[window] < 1.0 / m.disengaged_complaint_factor)
        )
        care.keep[window] = keep

        stars = (
            people.rating_mean[owner]
            - m.disengaged_rating_drop * disengaged
            - m.care_rating_drop * np.minimum(frustration[owner], 3.0)
            + 0.7 * care.noise[window]
        )
        stars = np.where(kind == review, np.clip(np.rint(stars), 1.0, 5.0), np.nan)
        care.rating[window] = stars

        effect = _care_effect(kind, care.answered[window] - t, care.delay_hours[window], stars, m)
        frustration[:joined] *= decay
        np.add.at(frustration, owner[keep], effect[keep])
    people.lapse[people.lapse >= cal.days] = np.inf
    people.drift[people.drift >= cal.days] = np.inf


def _care_effect(
    kind: np.ndarray, wait_days: np.ndarray, hours: np.ndarray, stars: np.ndarray, m: Mechanisms
) -> np.ndarray:
    """Units of care frustration each event adds (the README's table of effects)."""
    message, complaint, review = (KINDS.index(k) for k in ("message", "complaint", "review"))
    unanswered = np.isnan(wait_days)
    answer = np.where(
        unanswered,
        m.unanswered_effect,
        np.where(hours > 72, m.very_slow_effect, np.where(hours > 24, m.slow_effect, 0.0)),
    )
    rating = np.where(stars <= 2, m.low_rating_effect, np.where(stars == 3, m.mid_rating_effect, 0))
    return np.select(
        [kind == message, kind == complaint, kind == review],
        [answer, m.complaint_effect + m.complaint_answer_weight * answer, rating],
        0.0,
    )


# --------------------------------------------------------------------------- orders

#: Customers per chunk when drawing orders and contacts: small arrays are reused by the
#: allocator instead of being mapped afresh, which is what makes large samples fast.
_CHUNK = 1 << 16


def _chunks(n: int, seeds: np.random.SeedSequence) -> list[tuple[int, int, np.random.Generator]]:
    """Customer ranges ``[a, b)`` of at most ``_CHUNK`` customers, each with its own stream."""
    starts = range(0, n, _CHUNK)
    streams = seeds.spawn(len(starts))
    return [
        (a, min(a + _CHUNK, n), np.random.default_rng(s))
        for a, s in zip(starts, streams, strict=True)
    ]


def _orders(
    seeds: np.random.SeedSequence,
    people: _Population,
    cal: _Calendar,
    m: Mechanisms,
    ids: pa.Array,
) -> pd.DataFrame:
    """Orders of each customer from signup until they lapse, plus refunds."""
    n = people.signup.size
    parts, rows = [], 0
    for a, b, rng in _chunks(n, seeds):
        part = _order_rows(rng, people.part(a, b), cal, m)
        part["owner"] += a
        part["source"] = np.where(part["source"] >= 0, part["source"] + rows, -1)
        rows += part["owner"].size
        parts.append(part)
    columns = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    owner, seconds, source = columns["owner"], columns["seconds"], columns["source"]
    order = _sort_order(seconds * n + owner)

    refund = source >= 0
    number = np.zeros(rows, np.int64)
    originals = order[~refund[order]]
    number[originals] = np.arange(1, originals.size + 1)
    number[refund] = number[source[refund]]
    refund = refund[order]
    width = max(8, len(str(originals.size)))
    quantity = pd.arrays.IntegerArray(columns["quantity"][order], refund)
    return pd.DataFrame(
        copy=False,
        data={
            "customer_id": _strings(ids.take(owner[order])),
            "timestamp": _stamps(cal, seconds[order]),
            "amount": columns["amount"][order],
            "order_id": _strings(_fixed_ids(np.where(refund, b"R", b"O"), number[order], width)),
            "quantity": quantity,
            "category": _labels(columns["category"][order], CATEGORIES),
            "channel": _labels(columns["channel"][order], ORDER_CHANNELS),
        },
    )


def _order_rows(
    rng: np.random.Generator, people: _Population, cal: _Calendar, m: Mechanisms
) -> dict[str, np.ndarray]:
    """The orders of some customers as columns: orders first, then their refunds.

    ``source`` is -1 for an order and, for a refund, the row of the order it refunds.
    """
    n = people.signup.size
    end = np.minimum(people.lapse, float(cal.days))
    drift = np.minimum(people.drift, end)
    rate = people.order_rate
    windows = [(people.signup, drift, rate), (drift, end, rate * m.disengaged_order_factor)]
    owner, t = _events(rng, windows, cal.orders)
    welcome = np.flatnonzero(rng.random(n) < m.welcome_order_share)
    welcome_t = people.signup[welcome] + rng.exponential(20.0 / 1440.0, welcome.size)
    on_time = welcome_t < end[welcome]
    owner = np.concatenate([owner, welcome[on_time]])
    t = np.concatenate([t, welcome_t[on_time]])
    size = owner.size

    age = t - people.signup[owner]
    late = rng.random(size) < 1.0 - np.exp(-age / people.category_days[owner])
    tastes = np.concatenate([people.category_early, people.category_late], axis=1)
    category = _choose(rng.random(size), tastes, owner + n * late)
    gift = cal.gift_season[np.minimum(t.astype(np.int64), cal.days - 1)]
    gift &= rng.random(size) < m.gift_share
    gift_cumulative = np.cumsum(_GIFT_CATEGORIES / _GIFT_CATEGORIES.sum())
    gift_category = np.searchsorted(gift_cumulative, rng.random(size), side="right")
    category = np.where(gift, np.minimum(gift_category, len(CATEGORIES) - 1), category)
    channel = _choose(rng.random(size), people.order_channels, owner)
    quantity = 1 + rng.poisson(_SEGMENT_ITEMS[people.segment[owner]])
    basket = rng.gamma(m.basket_shape, 1.0 / m.basket_shape, size)
    amount = people.spend[owner] * _CATEGORY_PRICE[category] * basket * (0.5 + 0.5 * quantity)
    amount = np.maximum(np.round(amount, 2), 1.0)

    refunded = np.flatnonzero(rng.random(size) < m.refund_share)
    refund_t = t[refunded] + rng.uniform(2.0, 30.0, refunded.size)
    refunded, refund_t = refunded[refund_t < cal.days], refund_t[refund_t < cal.days]
    partial = rng.random(refunded.size) < 0.3
    share = np.where(partial, rng.uniform(0.2, 0.9, refunded.size), 1.0)
    refund_amount = -np.maximum(np.round(amount[refunded] * share, 2), 0.01)
    return {
        "owner": np.concatenate([owner, owner[refunded]]),
        "seconds": _seconds(np.concatenate([t, refund_t])),
        "source": np.concatenate([np.full(size, -1), refunded]),
        "amount": np.concatenate([amount, refund_amount]),
        "quantity": np.concatenate([quantity, np.zeros(refunded.size, np.int64)]),
        "category": np.concatenate([category, category[refunded]]).astype(np.int8),
        "channel": np.concatenate([channel, channel[refunded]]).astype(np.int8),
    }


# --------------------------------------------------------------------------- interactions


def _interactions(
    seeds: np.random.SeedSequence,
    people: _Population,
    care: _CareEvents,
    cal: _Calendar,
    m: Mechanisms,
    ids: pa.Array,
) -> pd.DataFrame:
    """Visits, email opens and clicks, and the care events the lapse loop kept."""
    n = people.signup.size
    parts = []
    for a, b, rng in _chunks(n, seeds):
        part = _contact_rows(rng, people.part(a, b), cal, m)
        part["owner"] += a
        parts.append(part)
    keep = care.keep
    parts.append(
        {
            "owner": care.owner[keep],
            "seconds": _seconds(care.t[keep]),
            "kind": care.kind[keep].astype(np.int8),
            "channel": care.channel[keep].astype(np.int8),
        }
    )
    columns = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    owner, seconds = columns["owner"], columns["seconds"]
    kind, channel = columns["kind"], columns["channel"]
    key = ((seconds * n + owner) * len(KINDS) + kind) * len(INTERACTION_CHANNELS) + channel
    order = _sort_order(key)
    # Two identical events of one customer in the same second would be exact duplicates.
    first = np.ones(order.size, bool)
    first[1:] = key[order[1:]] != key[order[:-1]]
    order = order[first]

    contacts = owner.size - int(keep.sum())
    cared = order >= contacts
    positions = order[cared] - contacts
    responded = np.full(order.size, np.nan)
    responded[cared] = care.answered[keep][positions]
    rating = np.full(order.size, np.nan)
    rating[cared] = care.rating[keep][positions]
    return pd.DataFrame(
        copy=False,
        data={
            "customer_id": _strings(ids.take(owner[order])),
            "timestamp": _stamps(cal, seconds[order]),
            "channel": _labels(channel[order], INTERACTION_CHANNELS),
            "kind": _labels(kind[order], KINDS),
            "responded_at": _instants(cal, responded),
            "rating": rating,
        },
    )


def _contact_rows(
    rng: np.random.Generator, people: _Population, cal: _Calendar, m: Mechanisms
) -> dict[str, np.ndarray]:
    """Visits, email opens and email clicks of some customers, as columns."""
    n = people.signup.size
    end = np.full(n, float(cal.days))
    drift = np.minimum(people.drift, end)
    lapse = np.minimum(people.lapse, end)
    # Engagement varies by 28-day block: events are drawn at the customer's highest level
    # over their life and thinned back to the level of their block.
    blocks = np.arange(people.engagement.shape[0])[:, None]
    joined = blocks >= (people.signup // _BLOCK_DAYS)[None, :]
    top = np.where(joined, people.engagement, -np.inf).max(axis=0).astype(np.float64)

    def draw(
        base: np.ndarray, demand: _Demand, factors: tuple[float, float], slope: float
    ) -> tuple[np.ndarray, np.ndarray]:
        rate = base * np.exp(slope * top)
        windows = [
            (people.signup, drift, rate),
            (drift, lapse, rate * factors[0]),
            (lapse, end, rate * factors[1]),
        ]
        owner, t = _events(rng, windows, demand)
        level = people.engagement_at(owner, t) - top[owner]
        kept = rng.random(owner.size) < np.exp(slope * level)
        return owner[kept], t[kept]

    visit = (m.disengaged_visit_factor, m.lapsed_visit_factor)
    v_owner, v_t = draw(people.visit_rate, cal.visits, visit, 1.0)
    codes = np.array([INTERACTION_CHANNELS.index(c) for c in KIND_CHANNELS["visit"]])
    weights = people.contact_channels[codes]
    cumulative = np.cumsum(weights / weights.sum(axis=0), axis=0)
    v_channel = codes[_choose(rng.random(v_owner.size), cumulative, v_owner)]
    opens = (m.disengaged_open_factor, m.lapsed_open_factor)
    o_owner, o_t = draw(people.open_rate, cal.emails, opens, 0.5)

    click = people.click_share[o_owner] * np.where(
        o_t >= people.drift[o_owner], m.disengaged_click_factor, 1.0
    )
    clicked = rng.random(o_owner.size) < click
    c_owner = o_owner[clicked]
    c_t = o_t[clicked] + (1.0 + rng.exponential(180.0, c_owner.size)) / _DAY_S
    c_owner, c_t = c_owner[c_t < cal.days], c_t[c_t < cal.days]

    kinds = [KINDS.index(k) for k in ("visit", "email_open", "email_click")]
    email = INTERACTION_CHANNELS.index("email")
    return {
        "owner": np.concatenate([v_owner, o_owner, c_owner]),
        "seconds": _seconds(np.concatenate([v_t, o_t, c_t])),
        "kind": np.repeat(np.array(kinds, np.int8), [v_owner.size, o_owner.size, c_owner.size]),
        "channel": np.concatenate([v_channel, np.full(o_owner.size + c_owner.size, email)]).astype(
            np.int8
        ),
    }


# --------------------------------------------------------------------------- customers


def _customers(people: _Population, cal: _Calendar, ids: pa.Array) -> pd.DataFrame:
    """One row per customer: signup instant and the attributes known at signup."""
    return pd.DataFrame(
        copy=False,
        data={
            "customer_id": _strings(ids),
            "signup_at": _stamps(cal, _seconds(people.signup)),
            "country": _labels(people.country, COUNTRIES),
            "segment": _labels(people.segment, SEGMENTS),
            "acquisition_channel": _labels(people.acquisition, ACQUISITION_CHANNELS),
        },
    )


# --------------------------------------------------------------------------- helpers


def _poisson_process(
    rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, rate: np.ndarray, demand: _Demand
) -> tuple[np.ndarray, np.ndarray]:
    """Events of one Poisson process per customer on ``[lo, hi)`` (days).

    The intensity of customer ``i`` at instant ``t`` is ``rate[i]`` per day times the
    demand of that hour; events are placed by inverting the integrated demand, so no draw is
    wasted. Returns the owner (customer position) and the day offset of each event, grouped
    by owner.
    """
    days = demand.hourly.size / 24.0
    lo = np.minimum(lo, days)
    hi = np.clip(hi, lo, days)
    start = demand.warp(lo)
    span = demand.warp(hi) - start
    counts = rng.poisson(rate * span)
    owner = np.repeat(np.arange(lo.size, dtype=np.int64), counts)
    t = demand.unwarp(start[owner] + rng.random(owner.size) * span[owner])
    return owner, np.clip(t, lo[owner], np.nextafter(hi[owner], -np.inf))


def _events(
    rng: np.random.Generator,
    windows: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    demand: _Demand,
) -> tuple[np.ndarray, np.ndarray]:
    """Events over several ``(lo, hi, rate)`` windows per customer; see `_poisson_process`."""
    parts = [_poisson_process(rng, lo, hi, rate, demand) for lo, hi, rate in windows]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _choose(u: np.ndarray, cumulative: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw per event from its owner's distribution (``cumulative``: k x owners)."""
    code = np.zeros(u.size, np.int64)
    for row in cumulative[:-1]:
        code += u >= row[owner]
    return code


def _dirichlet(rng: np.random.Generator, alpha: np.ndarray, n: int) -> np.ndarray:
    """``n`` Dirichlet draws as columns of a ``(len(alpha), n)`` array."""
    draws = np.stack([rng.standard_gamma(a, n, dtype=np.float32) for a in alpha])
    return (draws / draws.sum(axis=0)).astype(np.float64)


def _categorical(rng: np.random.Generator, shares: np.ndarray, n: int) -> np.ndarray:
    """``n`` independent draws of a category index with the given shares."""
    cumulative = np.cumsum(shares / shares.sum())
    return np.minimum(np.searchsorted(cumulative, rng.random(n), side="right"), shares.size - 1)


def _seconds(t: np.ndarray) -> np.ndarray:
    """Whole seconds since the origin of non-negative, finite day offsets ``t`` (rounded down)."""
    return (t * _DAY_S).astype(np.int64)


def _stamps(cal: _Calendar, seconds: np.ndarray) -> pd.Series:
    """UTC instants, in microseconds, of whole seconds since the origin."""
    micros = seconds * 1_000_000
    micros += cal.origin.value // 1000
    return pd.Series(micros.view("datetime64[us]"), copy=False).dt.tz_localize("UTC")


def _instants(cal: _Calendar, t: np.ndarray) -> pd.Series:
    """UTC instants of day offsets ``t``; infinite or NaN offsets become ``NaT``."""
    finite = np.flatnonzero(np.isfinite(t))
    micros = np.full(t.size, np.iinfo(np.int64).min)
    micros[finite] = cal.origin.value // 1000 + _seconds(t[finite]) * 1_000_000
    return pd.Series(micros.view("datetime64[us]"), copy=False).dt.tz_localize("UTC")


def _sort_order(key: np.ndarray) -> np.ndarray:
    """Positions that sort ``key``; equal keys keep their input order.

    A quicksort is much faster than a stable sort; the rare runs of equal keys are put back
    in input order afterwards so the result never depends on the sorting algorithm.
    """
    order = np.argsort(key)
    ranked = key[order]
    tied = np.flatnonzero(ranked[1:] == ranked[:-1])
    if tied.size:
        members = np.union1d(tied, tied + 1)
        inputs = order[members]
        order[members] = inputs[np.lexsort((inputs, ranked[members]))]
    return order


#: The four ASCII digits of every number below 10,000.
_DIGITS = (48 + np.arange(10_000)[:, None] // np.array([1000, 100, 10, 1]) % 10).astype(np.uint8)


def _fixed_ids(prefix: str | np.ndarray, numbers: np.ndarray, width: int) -> pa.Array:
    """Identifiers: a one-letter ``prefix`` (or one per row) + zero-padded ``numbers``."""
    size = numbers.size
    chunks = -(-width // 4)
    chars = np.empty((size, 1 + 4 * chunks), np.uint8)
    chars[:, 0] = np.asarray(prefix, "S1").view(np.uint8)
    rest = numbers.astype(np.int64)
    for chunk in range(chunks, 0, -1):
        chars[:, 4 * chunk - 3 : 4 * chunk + 1] = _DIGITS[rest % 10_000]
        rest = rest // 10_000
    if 4 * chunks > width:
        chars = np.ascontiguousarray(np.delete(chars, np.s_[1 : 1 + 4 * chunks - width], axis=1))
    offsets = np.arange(size + 1, dtype=np.int64) * (1 + width)
    return pa.LargeStringArray.from_buffers(size, pa.py_buffer(offsets), pa.py_buffer(chars))


def _strings(values: pa.Array | pa.ChunkedArray) -> pd.Series:
    """A pandas ``str`` Series over Arrow strings."""
    return pd.Series(pd.array(values.cast(pa.large_string()), dtype="str"), copy=False)


def _labels(codes: np.ndarray, names: tuple[str, ...]) -> pd.Series:
    """The names of integer codes as a ``str`` Series."""
    return _strings(pa.array(names, pa.large_string()).take(pa.array(codes.astype(np.int32))))


def _csv_ready(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """A copy of ``frame`` with its instants as ``YYYY-MM-DDTHH:MM:SSZ`` text."""
    out = frame.copy()
    for column in TIMESTAMP_COLUMNS[table]:
        if column in out.columns:
            values = out[column].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
            text = np.datetime_as_string(values.astype("datetime64[s]"), unit="s")
            out[column] = np.where(np.isnat(values), "", np.char.add(text, "Z"))
    return out
