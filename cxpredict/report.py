"""The scoring report: one self-contained HTML page a marketing team can open offline.

Everything is inside the file: the style sheet is inline, plots are PNG images drawn by
matplotlib's Agg renderer (plain ``Figure`` objects, no pyplot state, no display) and embedded
as base64 ``data:`` URIs, and there are no scripts, fonts or links to fetch. The page holds
no moment of the run, so the same inputs render the same bytes.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cxpredict.scoring import STAGES, TIERS, write_document

TEMPLATE = "report.html.j2"
#: Drifted variables listed in the report at most (all of them are in ``drift.csv``).
DRIFT_ROWS = 30
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")
_PNG_METADATA = {"Software": None}


@dataclass(frozen=True)
class ReportData:
    """What the report shows.

    Parameters
    ----------
    project
        The project name.
    as_of
        The as-of date as written in the lists.
    lists
        Each task's ranked list (:func:`cxpredict.scoring.task_list`).
    kinds
        Each task's kind (``churn``, ``repurchase``, ``preference``, ``value``).
    customers
        The customer table (:func:`cxpredict.scoring.customer_table`).
    drift
        The drift report (:func:`cxpredict.scoring.drift_report`, all tasks).
    model_versions
        Each task's model version.
    calibration
        Per task, the backtest's calibration table: ``bin``, ``n``, ``mean_score``,
        ``actual_rate`` (see :func:`cxpredict.metrics.calibration_table`).
    tier_cuts, drift_warn, drift_fail
        The scoring settings, to explain tiers and drift levels.
    top_n
        How many customers the "contact first" table shows.
    notes
        Sentences shown under the headline (for instance a task that was not scored).
    priority_basis
        What the customers are ranked by (:func:`cxpredict.scoring.priority_basis`); the
        value at risk is shown only when it is the basis.
    """

    project: str
    as_of: str
    lists: Mapping[str, pd.DataFrame]
    kinds: Mapping[str, str]
    customers: pd.DataFrame
    drift: pd.DataFrame
    model_versions: Mapping[str, str]
    calibration: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    tier_cuts: tuple[float, float] = (0.8, 0.5)
    drift_warn: float = 0.1
    drift_fail: float = 0.25
    top_n: int = 25
    notes: tuple[str, ...] = ()
    priority_basis: str | None = "value at risk"


def png_data_uri(figure: Figure) -> str:
    """The figure as an embedded ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, metadata=_PNG_METADATA)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float = 6.4, height: float = 2.6) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots()
    axes.spines[["top", "right"]].set_visible(False)
    return figure, axes


def score_histogram(scores: pd.Series, *, title: str, xlabel: str) -> str:
    """A histogram of one task's scores, as a data URI."""
    values = scores.to_numpy(dtype=np.float64, na_value=np.nan)
    values = values[np.isfinite(values)]
    figure, axes = _figure()
    clipped = 0
    if len(values):
        high = float(np.quantile(values, 0.995)) if values.max() > 1 else 1.0
        clipped = int((values > high).sum())
        axes.hist(np.clip(values, 0, high), bins=40, range=(0, high), color="#3b6ea8")
    axes.set_title(title, fontsize=10, loc="left")
    if clipped:  # the long tail is drawn in the last bar, and said so
        xlabel += f" (the last bar also holds the {clipped:,} customers above {high:,.0f})"
    axes.set_xlabel(xlabel, fontsize=9)
    axes.set_ylabel("customers", fontsize=9)
    axes.tick_params(labelsize=8)
    return png_data_uri(figure)


def calibration_plot(table: pd.DataFrame, *, title: str) -> str:
    """Predicted against actual rate per score decile, with the diagonal, as a data URI."""
    figure, axes = _figure(4.2, 3.2)
    top = float(max(table["mean_score"].max(), table["actual_rate"].max(), 0.01)) * 1.05
    axes.plot([0, top], [0, top], color="#999999", linewidth=1, linestyle="--")
    axes.plot(table["mean_score"], table["actual_rate"], marker="o", color="#c0504d")
    axes.set_xlim(0, top)
    axes.set_ylim(0, top)
    axes.set_title(title, fontsize=10, loc="left")
    axes.set_xlabel("predicted probability (decile mean)", fontsize=9)
    axes.set_ylabel("actual rate", fontsize=9)
    axes.tick_params(labelsize=8)
    return png_data_uri(figure)


def reason_patterns(frame: pd.DataFrame, *, columns: tuple[str, ...]) -> pd.DataFrame:
    """The most frequent reasons, numbers masked (``no order for # days``), with counts."""
    texts = pd.concat([frame[c] for c in columns if c in frame.columns], ignore_index=True)
    texts = texts[texts.astype(str) != ""].astype(str)
    if texts.empty:
        return pd.DataFrame({"reason": [], "customers": []})
    # Distinct texts first: far fewer than rows, so the regular expression runs rarely.
    counts = texts.value_counts()
    masked = pd.Series(
        [_NUMBER.sub("#", t) for t in counts.index], index=counts.index, dtype=object
    )
    grouped = counts.groupby(masked.to_numpy()).sum()
    out = grouped.rename_axis("reason").reset_index(name="customers")
    return out.sort_values(["customers", "reason"], ascending=[False, True], kind="mergesort")


def _fmt(value: object, spec: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    return format(value, spec)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cxpredict", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = _fmt
    return env


def _headline(data: ReportData) -> dict[str, object]:
    customers = data.customers
    tiers = customers["tier"].value_counts()
    risk = customers["value_at_risk"].astype(np.float64)
    shown = data.priority_basis == "value at risk"
    return {
        "customers": len(customers),
        "tiers": [(t, int(tiers.get(t, 0))) for t in TIERS],
        "value_at_risk": float(np.nansum(risk)) if shown else None,
        "value_at_risk_high": (
            float(np.nansum(risk[customers["tier"] == TIERS[0]])) if shown else None
        ),
        "stages": [(s, int((customers["lifecycle_stage"] == s).sum())) for s in STAGES],
        "actions": [
            (str(a), int(n)) for a, n in customers["action"].value_counts().sort_index().items()
        ],
    }


def _task_sections(data: ReportData) -> list[dict[str, object]]:
    sections = []
    for name, frame in data.lists.items():
        kind = data.kinds.get(name, "")
        label = {
            "churn": "churn probability",
            "repurchase": "repurchase probability",
            "value": "expected spend over the horizon",
            "preference": "probability of the top choice",
        }.get(kind, "score")
        tiers = frame["tier"].value_counts()
        section: dict[str, object] = {
            "name": name,
            "kind": kind,
            "version": data.model_versions.get(name, ""),
            "rows": len(frame),
            "tiers": [(t, int(tiers.get(t, 0))) for t in TIERS],
            "mean": float(frame["score"].mean()) if len(frame) else float("nan"),
            "histogram": score_histogram(frame["score"], title=name, xlabel=label),
            "calibration": None,
            "calibration_plot": None,
        }
        if kind == "preference" and "pref_1" in frame.columns:
            top = frame["pref_1"].value_counts()
            section["top_choices"] = [(str(v), int(n)) for v, n in top.head(8).items()]
        table = data.calibration.get(name)
        if table is not None and len(table):
            section["calibration"] = table.to_dict("records")
            section["calibration_plot"] = calibration_plot(table, title=f"{name}: calibration")
            section["miscalibrated"] = miscalibrated(table)
        sections.append(section)
    return sections


#: A score decile whose mean predicted probability is this far from its actual rate is named.
CALIBRATION_GAP = 0.1


def miscalibrated(table: pd.DataFrame) -> str | None:
    """A sentence naming the score deciles whose predictions missed their actual rate by more
    than :data:`CALIBRATION_GAP` (``None`` when every decile is within it)."""
    gap = (table["mean_score"] - table["actual_rate"]).to_numpy(dtype=float)
    off = np.abs(gap) > CALIBRATION_GAP
    if not off.any():
        return None
    bins = [str(b) for b in table["bin"].to_numpy()[off]]
    worst = int(np.nanargmax(np.abs(gap)))
    side = "above" if gap[worst] > 0 else "below"
    return (
        f"Score decile(s) {', '.join(bins)} missed their actual rate by more than "
        f"{CALIBRATION_GAP:.2f} (the worst, decile {table['bin'].iloc[worst]}, predicted "
        f"{abs(gap[worst]):.2f} {side} it): read the probabilities there as a ranking rather "
        "than as rates."
    )


def render_report(data: ReportData) -> str:
    """The report as one HTML string (no external resources)."""
    top = data.customers.head(data.top_n)
    reasons = reason_patterns(data.customers, columns=("reason_1", "reason_2", "reason_3"))
    drift = data.drift
    flagged = drift[drift["status"].isin(["warn", "fail"])].sort_values(
        ["psi", "task", "variable"], ascending=[False, True, True], kind="mergesort"
    )
    checked_tasks = set(drift.loc[drift["status"] != "not checked", "task"])
    unchecked = sorted(set(drift["task"]) - checked_tasks)
    template = _environment().get_template(TEMPLATE)
    return template.render(
        data=data,
        headline=_headline(data),
        top=top.to_dict("records"),
        reasons=reasons.head(15).to_dict("records"),
        tasks=_task_sections(data),
        drift_flagged=flagged.head(DRIFT_ROWS).to_dict("records"),
        drift_more=max(len(flagged) - DRIFT_ROWS, 0),
        drift_checked=int((drift["status"] != "not checked").sum()),
        drift_unchecked=unchecked,
    )


def write_report(data: ReportData, path: str | Path) -> Path:
    """Render the report and write it atomically to ``path``."""
    return write_document(render_report(data), Path(path))
