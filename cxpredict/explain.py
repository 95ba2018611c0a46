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


def _sentence(template: str, row: Mapping[str, Any]) -> str | None:
    try:
        text = template.format(**row)
    except (KeyError, ValueError, TypeError, IndexError):
        return None
    return text if "nan" not in text.split() else None


def top_reasons(
    contributions: pd.DataFrame,
    features: pd.DataFrame,
    catalogue: pd.DataFrame,
    *,
    top: int = 3,
    groups: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """The ``top`` features raising each customer's score, with their sentences.

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
    templates = catalogue.set_index("name")["reason"].dropna().to_dict()
    names = [c for c in contributions.columns if c != "bias" and c in templates]
    values = features.reindex(index=contributions.index, columns=names).to_numpy(dtype=float)
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
    order = np.argsort(-strength, axis=1, kind="stable")
    rows = features.reindex(contributions.index).to_dict(orient="records")
    records: list[tuple[Any, int, str, float, str]] = []
    for i, key in enumerate(contributions.index):
        rank = 0
        for g in order[i]:
            if strength[i, g] <= 0 or rank == top:
                break
            column = names[int(chosen_column[i, g])]
            sentence = _sentence(templates[column], rows[i])
            if sentence is None:
                continue
            rank += 1
            feature = column if sizes[g] == 1 else group_names[g]
            records.append((key, rank, feature, float(strength[i, g]), sentence))
    frame = pd.DataFrame.from_records(records, columns=["key", *LONG_COLUMNS]).set_index("key")
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
) -> pd.DataFrame:
    """Reason sentences per customer: ``reason_1`` .. ``reason_<top>``, strongest first."""
    long = top_reasons(contributions, features, catalogue, top=top, groups=groups)
    return reason_columns(long, contributions.index, top=top)
