"""Reason codes: the features that pushed each customer's score up, as sentences.

The contributions are LightGBM's own (``pred_contrib=True``, exact TreeSHAP values in the
raw-score space), so they add up to the customer's score before calibration. A reason is a
feature whose contribution raises the score: for a churn score, something that makes the
customer riskier; a feature that lowers the risk is never listed as a reason for it. Each
reason is the feature's sentence from the feature catalogue, formatted with the customer's
own values. Features whose value is missing are skipped (there is nothing true to say about
them), and the one-hot columns of one attribute (``attr_country_fr``, ``attr_country_de``,
...) count as one feature whose sentence is that of the column the customer has.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

REASON_COLUMNS: tuple[str, ...] = ("reason_1", "reason_2", "reason_3")
LONG_COLUMNS: tuple[str, ...] = ("rank", "feature", "contribution", "sentence")


def one_hot_groups(
    names: Iterable[str],
    slugs: Mapping[str, Sequence[str]],
    *,
    flags: Iterable[str] | None = None,
) -> dict[str, str]:
    """Map each one-hot column to its group (the column name without the value's slug).

    Parameters
    ----------
    names
        The model's feature names.
    slugs
        For each vocabulary key, the slugs of its values (``other`` is added).
    flags
        The names whose catalogue unit is ``flag``; only these are grouped (shares of each
        value, for instance, each mean something on their own). ``None``: all names.

    Returns
    -------
    dict
        ``{"attr_country_fr": "attr_country", "attr_country_de": "attr_country", ...}`` for
        every group of at least two columns; ungrouped names are absent.
    """
    candidates = list(names) if flags is None else [n for n in names if n in set(flags)]
    members: dict[str, list[str]] = {}
    for key_slugs in slugs.values():
        ordered = sorted({*key_slugs, "other"}, key=len, reverse=True)
        for name in candidates:
            for slug in ordered:
                if name.endswith(f"_{slug}") and len(name) > len(slug) + 1:
                    members.setdefault(name[: -len(slug) - 1], []).append(name)
                    break
    out: dict[str, str] = {}
    for prefix, group in members.items():
        if len(set(group)) >= 2:
            out.update({name: prefix for name in group})
    return out


#: "1 orders", "1 replies": a count of one followed by a plural noun (not "1 class").
_ONE_PLURAL = re.compile(r"(?<![\d.,])\b1 ([a-z]+?)(ies|s)\b(?<!ss)")
#: A sentence opening on a count or share of nothing: "0 orders ...", "0% of purchases ...".
_NOTHING = re.compile(r"^0(?:% of)? (?=[a-z])")


def singular_after_one(text: str) -> str:
    """``text`` with a plural noun right after the count 1 made singular, and a sentence
    opening on a count of nothing opened with "no".

    Catalogue sentences are written for any count ("{orders_lifetime:.0f} orders so far");
    a customer with one reads "1 order so far", "1 reply", "no order for 1 day"; one with
    none "no orders in the last 30 days", "no purchases with product category fashion".
    """
    text = _NOTHING.sub("no ", text)
    return _ONE_PLURAL.sub(lambda m: f"1 {m[1]}{'y' if m[2] == 'ies' else ''}", text)


def duration_text(hours: float) -> str:
    """A duration given in hours, in the unit a reader expects: "20 minutes", "5 hours",
    "3 days" (``nan`` for a missing value)."""
    if not np.isfinite(hours):
        return "nan"
    minutes = round(hours * 60)
    if minutes < 1:
        return "under a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    if hours < 47.5:
        return f"{hours:.0f} hours"
    return f"{hours / 24:.0f} days"


class _ReasonFormatter(string.Formatter):
    """``str.format`` plus two specs: ``hours`` (``{response_hours_max:hours}``, see
    :func:`duration_text`) and ``spread``, an entropy in bits as the number of equally used
    values it amounts to (``2 ** bits``, whole)."""

    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec == "hours":
            return duration_text(float(value))
        if format_spec == "spread":
            bits = float(value)
            return f"{2.0 ** min(bits, 64.0):.0f}" if np.isfinite(bits) else "nan"
        return format(value, format_spec)


_REASONS = _ReasonFormatter()


def fill_reason(template: str, row: Mapping[str, Any]) -> str | None:
    """A catalogue ``reason`` filled with a customer's feature values (``row``).

    Templates are ``str.format`` patterns, with two more specs: ``:hours`` writes a number of
    hours as minutes, hours or days, and ``:spread`` an entropy in bits as a number of
    equally used values. ``None`` when a value the sentence needs is missing or
    the template does not fit the row; a count of one is followed by a singular noun.
    """
    try:
        fields = _fields(template)
    except ValueError:  # a malformed template says nothing
        return None
    for field in fields:
        value = row.get(field)
        if isinstance(value, float | np.floating) and np.isnan(value):
            return None  # a sentence about an unknown value says nothing
    try:
        special = ":hours}" in template or ":spread}" in template
        text = _REASONS.vformat(template, (), row) if special else template.format(**row)
    except (KeyError, ValueError, TypeError, IndexError):
        return None
    return singular_after_one(text) if "nan" not in text.split() else None


#: A window suffix: ``orders_30d`` and ``orders_lifetime`` are windows of the signal ``orders``.
_WINDOW = re.compile(r"_(?:\d+d|lifetime)$")


def signal_of(name: str) -> str:
    """The signal a feature measures, without its window (``orders_90d`` -> ``orders``).

    Windows of one signal say the same thing over different spans; a customer's reasons
    name each signal once, in the words of its strongest window.
    """
    return _WINDOW.sub("", name)


def _fields(template: str) -> list[str]:
    """The feature names a sentence template refers to."""
    return [
        field.split(".")[0].split("[")[0]
        for _, field, _, _ in string.Formatter().parse(template)
        if field
    ]


def _sentences(template: str, features: pd.DataFrame, rows: np.ndarray) -> list[str | None]:
    """``template`` formatted with each row of ``rows``; each distinct value set once."""
    try:
        fields = list(dict.fromkeys(_fields(template)))
    except ValueError:  # a malformed template says nothing
        return [None] * len(rows)
    present = [f for f in fields if f in features.columns]
    if not present:
        return [fill_reason(template, {})] * len(rows)
    values = features[present].to_numpy(dtype=float)[rows]
    distinct, inverse = np.unique(values, axis=0, return_inverse=True)
    texts = [fill_reason(template, dict(zip(present, row, strict=True))) for row in distinct]
    return [texts[k] for k in inverse.reshape(-1)]


def top_reasons(
    contributions: pd.DataFrame,
    features: pd.DataFrame,
    catalogue: pd.DataFrame,
    *,
    top: int = 3,
    groups: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """The ``top`` features raising each customer's score, with their sentences.

    Windows of one signal (``orders_30d``, ``orders_90d``, ``orders_lifetime``; see
    :func:`signal_of`) give one reason at most, the strongest window's.

    Parameters
    ----------
    contributions
        Per-feature contributions to the raw score (rows: customers; a ``bias`` column is
        ignored), as returned by the estimators' ``contributions`` method.
    features
        The same customers' feature values (the model's inputs), to format the sentences.
    catalogue
        At least ``name`` and ``reason`` (a template formatted with the feature row).
    top
        Reasons per customer at most.
    groups
        One-hot columns and their group (see :func:`one_hot_groups`).

    Returns
    -------
    DataFrame
        Long format, indexed like the rows (repeated): ``rank`` (1 = strongest),
        ``feature`` (the group's name for a one-hot group), ``contribution`` (always
        positive) and ``sentence``.
    """
    groups = dict(groups or {})
    # a feature without a sentence (the season) is never a reason
    templates = {n: t for n, t in catalogue.set_index("name")["reason"].dropna().items() if t}
    names = [c for c in contributions.columns if c != "bias" and c in templates]
    features = features.reindex(index=contributions.index)
    values = features.reindex(columns=names).to_numpy(dtype=float)
    contrib = contributions[names].to_numpy(dtype=float)
    group_names = list(dict.fromkeys(groups.get(n, n) for n in names))
    position = {g: k for k, g in enumerate(group_names)}
    membership = np.zeros((len(names), len(group_names)))
    for j, name in enumerate(names):
        membership[j, position[groups.get(name, name)]] = 1.0
    sizes = membership.sum(axis=0)
    strength = contrib @ membership
    # A single feature speaks when its value is known; a one-hot group when exactly one of
    # its columns is set, and then with that column's sentence.
    known = ~np.isnan(values)
    active = np.nan_to_num(values) == 1.0
    n_active = active.astype(float) @ membership
    speaks = np.where(sizes == 1, known.astype(float) @ membership > 0, n_active == 1)
    strength = np.where(speaks & (strength > 0), strength, 0.0)
    chosen_column = np.tile(np.argmax(membership, axis=0), (len(values), 1))
    for g in np.flatnonzero(sizes > 1):
        members = np.flatnonzero(membership[:, g])
        chosen_column[:, g] = members[np.argmax(active[:, members], axis=1)]
    signals = pd.factorize(np.asarray([signal_of(g) for g in group_names], dtype=object))[0]
    same_signal = signals[:, None] == signals[None, :]
    # Reasons are taken strongest first, one rank at a time over all customers at once: the
    # strongest group left speaks if its sentence can be said (else it is dropped and the
    # next one tried), then the group and its sibling windows leave the race.
    n = len(values)
    records: list[tuple[np.ndarray, int, np.ndarray, np.ndarray, list[str]]] = []
    pending = np.arange(n)
    for rank in range(1, top + 1):
        said_rows: list[np.ndarray] = []
        said_groups: list[np.ndarray] = []
        said_texts: list[str] = []
        while len(pending):
            best = np.argmax(strength[pending], axis=1)
            alive = strength[pending, best] > 0
            pending, best = pending[alive], best[alive]
            if not len(pending):
                break
            columns = chosen_column[pending, best]
            texts = np.empty(len(pending), dtype=object)
            for column in np.unique(columns):
                at = np.flatnonzero(columns == column)
                texts[at] = _sentences(templates[names[column]], features, pending[at])
            mute = np.asarray([t is None for t in texts], dtype=bool)
            speak = ~mute
            said_rows.append(pending[speak])
            said_groups.append(best[speak])
            said_texts.extend(texts[speak].tolist())
            strength[pending[mute], best[mute]] = 0.0
            pending = pending[mute]
        rows = np.concatenate(said_rows) if said_rows else np.empty(0, dtype=np.int64)
        chosen = np.concatenate(said_groups) if said_groups else np.empty(0, dtype=np.int64)
        if not len(rows):
            break
        records.append((rows, rank, chosen, strength[rows, chosen].copy(), said_texts))
        strength[rows] = np.where(same_signal[chosen], 0.0, strength[rows])
        pending = np.sort(rows)
    if records:
        rows = np.concatenate([r[0] for r in records])
        ranks = np.concatenate([np.full(len(r[0]), r[1]) for r in records])
        chosen = np.concatenate([r[2] for r in records])
        strengths = np.concatenate([r[3] for r in records])
        sentences = [t for r in records for t in r[4]]
    else:
        rows = ranks = chosen = np.empty(0, dtype=np.int64)
        strengths = np.empty(0)
        sentences = []
    order = np.lexsort((ranks, rows))
    labels = np.asarray(
        [
            names[int(chosen_column[i, g])] if sizes[g] == 1 else group_names[g]
            for i, g in zip(rows[order], chosen[order], strict=True)
        ],
        dtype=object,
    )
    frame = pd.DataFrame(
        {
            "rank": ranks[order].astype(np.int64),
            "feature": labels,
            "contribution": strengths[order].astype(float),
            "sentence": np.asarray(sentences, dtype=object)[order],
        },
        index=contributions.index[rows[order]],
    )
    frame.index.name = contributions.index.name
    return frame


def reason_columns(reasons: pd.DataFrame, index: pd.Index, *, top: int = 3) -> pd.DataFrame:
    """``reason_1`` .. ``reason_<top>`` per row of ``index`` (empty text when fewer reasons)."""
    columns = [f"reason_{k}" for k in range(1, top + 1)]
    out = pd.DataFrame("", index=index, columns=columns, dtype=object)
    for k in range(1, top + 1):
        at = reasons[reasons["rank"] == k]["sentence"]
        position = index.get_indexer(at.index)
        column = np.array(out[f"reason_{k}"], dtype=object)
        column[position[position >= 0]] = at.to_numpy(dtype=object)[position >= 0]
        out[f"reason_{k}"] = column
    return out


def explain(
    contributions: pd.DataFrame,
    features: pd.DataFrame,
    catalogue: pd.DataFrame,
    *,
    top: int = 3,
    groups: Mapping[str, str] | None = None,
    whole: bool = True,
) -> pd.DataFrame:
    """Reason sentences per customer: ``reason_1`` .. ``reason_<top>``, strongest first.

    When the contributions are the ``whole`` score's (they add up to it with ``bias``), only
    a customer whose score is above the model's typical one (the contributions, bias left
    out, add up to more than zero) is given reasons: for one below it, a feature that raises
    the score a little does not explain a score that is low. Contributions to a part of the
    score only (``whole=False``) cannot tell, and every customer is explained.
    """
    explained = contributions
    if whole:
        explained = contributions[
            contributions.drop(columns="bias", errors="ignore").sum(axis=1) > 0
        ]
    long = top_reasons(explained, features, catalogue, top=top, groups=groups)
    return reason_columns(long, contributions.index, top=top)
