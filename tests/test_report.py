"""The HTML report: self-contained, reproducible, and showing whom to contact first."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from cxpredict.config import parse_config
from cxpredict.metrics import calibration_table
from cxpredict.report import ReportData, reason_patterns, render_report, write_report
from cxpredict.scoring import (
    customer_table,
    drift_report,
    priority_basis,
    reference_from_values,
    task_list,
)

AS_OF = pd.Timestamp("2025-06-01", tz="UTC")
CHROMIUM = Path("/usr/bin/chromium")
#: The five tasks of the bundled sample project, one of every kind.
TASKS = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "data" / "sample" / "cxpredict.yaml").read_text(
        encoding="utf-8"
    )
)["tasks"]


@pytest.fixture(scope="module")
def report_data() -> ReportData:
    config = parse_config(
        {"project": "shop", "data": {"orders": {"path": "o.csv"}}, "tasks": TASKS},
        root=Path("."),
    )
    rng = np.random.default_rng(3)
    n = 200
    ids = [f"C{i:05d}" for i in range(n)]
    features = pd.DataFrame(
        {
            "days_since_first_order": rng.uniform(10, 700, n),
            "days_since_last_order": rng.uniform(1, 300, n),
            "gap_mean_days": rng.uniform(10, 90, n),
            "days_since_signup": rng.uniform(10, 800, n),
            "complaints_90d": rng.poisson(0.2, n).astype(float),
            "orders_90d": rng.poisson(2.0, n).astype(float),
        },
        index=pd.Index(ids, name="customer_id"),
    )
    features["days_since_first_order"] = np.maximum(
        features["days_since_first_order"], features["days_since_last_order"]
    )
    reasons = pd.DataFrame(
        {
            "reason_1": [f"no order for {d:.0f} days" for d in features["days_since_last_order"]],
            "reason_2": [
                f"{c:.0f} complaints in the last 90 days" for c in features["complaints_90d"]
            ],
        },
        index=features.index,
    )
    lists = {}
    for name, task in config.tasks.items():
        scored = pd.DataFrame({"customer_id": ids, "score": rng.uniform(0, 1, n)})
        if task.kind == "value":
            scored["score"] *= 500
            scored["expected_orders"] = scored["score"] / 50
            soon = rng.uniform(0, 1, n) > 0.5
            scored["next_order_days"] = np.where(soon, rng.uniform(0, 90, n), np.nan)
            scored["next_order_note"] = np.where(soon, "", "not expected within 90 days")
        if task.kind == "preference":
            choices = ["books", "home", "toys"] if name == "next_category" else ["email", "app"]
            for k in (1, 2):
                scored[f"pref_{k}"] = rng.choice(choices, n)
                scored[f"pref_{k}_probability"] = scored["score"] / k
        lists[name] = task_list(
            scored,
            kind=task.kind,
            model_version="7",
            as_of=AS_OF,
            tier_cuts=(0.8, 0.5),
            reasons=reasons if task.kind in ("churn", "repurchase") else None,
        )
    customers = customer_table(features, lists, config.tasks, as_of=AS_OF, tier_cuts=(0.8, 0.5))
    train = rng.normal(0, 1, 5000)
    drift = drift_report(
        "churn",
        {"orders_90d": reference_from_values(train), "score": reference_from_values(train)},
        {"orders_90d": rng.normal(1.5, 1, n), "score": rng.normal(0, 1, n)},
        kinds={"score": "score"},
        warn=0.1,
        fail=0.25,
    )
    outcome = rng.uniform(0, 1, 1000)
    return ReportData(
        project="shop",
        as_of="2025-06-01",
        lists=lists,
        kinds={name: task.kind for name, task in config.tasks.items()},
        customers=customers,
        drift=drift,
        model_versions={name: "7" for name in lists},
        calibration={"churn": calibration_table(outcome < 0.3, outcome * 0.6)},
        top_n=10,
    )


@pytest.fixture(scope="module")
def html(report_data: ReportData) -> str:
    return render_report(report_data)


def test_the_report_contains_the_top_customers_of_the_list(
    report_data: ReportData, html: str
) -> None:
    top = report_data.customers["customer_id"].head(10).tolist()
    table = html[html.index('id="top-customers"') :]
    positions = [table.index(f">{c}<") for c in top]
    assert positions == sorted(positions)
    eleventh = report_data.customers["customer_id"].iloc[10]
    assert f">{eleventh}<" not in table.split("</table>")[0]
    # each row says when the customer's next order is due, or "-" without a date
    rows = table.split("</table>")[0].split("<tr>")[2:]
    dates = report_data.customers["next_order_date"].head(10).tolist()
    assert any(dates) and not all(dates)
    for row, date in zip(rows, dates, strict=True):
        assert f"<td>{date or '-'}</td>" in row


def test_the_report_loads_nothing_from_outside_the_file(report_data: ReportData, html: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", html)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert html.count('src="data:image/png;base64,') == len(report_data.lists) + 1


def test_the_report_shows_drift_warnings_and_the_calibration_table(html: str) -> None:
    assert re.search(r'<tr class="fail"><td>churn</td><td>orders_90d</td>', html)
    assert "actual rate" in html and "score decile" in html
    # the fixture's scores are far from the outcomes: the deciles that miss are named
    assert re.search(r'<p class="warn">Score decile\(s\) [\d, ]+ missed their actual rate', html)


def test_only_deciles_far_from_their_actual_rate_are_named() -> None:
    from cxpredict.report import miscalibrated

    table = pd.DataFrame(
        {
            "bin": [1, 2, 3],
            "n": [10, 10, 10],
            "mean_score": [0.1, 0.5, 0.9],
            "actual_rate": [0.12, 0.35, 0.85],
        }
    )
    assert miscalibrated(table) == (
        "Score decile(s) 2 missed their actual rate by more than 0.10 (the worst, decile 2, "
        "predicted 0.15 above it): read the probabilities there as a ranking rather than as "
        "rates."
    )
    assert miscalibrated(table.assign(actual_rate=[0.1, 0.45, 0.95])) is None


def test_without_a_churn_and_a_value_list_customers_rank_by_what_was_scored(
    report_data: ReportData,
) -> None:
    lists = {"churn": report_data.lists["churn"]}
    tasks = {"churn": SimpleNamespace(kind="churn")}
    features = pd.DataFrame(
        {"days_since_last_order": 10.0}, index=report_data.customers["customer_id"]
    ).sort_index()
    customers = customer_table(features, lists, tasks, as_of=AS_OF, tier_cuts=(0.8, 0.5))
    assert priority_basis(lists, tasks) == "churn probability"
    ranked = customers.dropna(subset=["churn_probability"])
    assert ranked["churn_probability"].is_monotonic_decreasing
    assert customers["value_at_risk_rank"].isna().all()
    html = render_report(
        dataclasses.replace(
            report_data,
            lists=lists,
            kinds={"churn": "churn"},
            customers=customers,
            priority_basis="churn probability",
        )
    )
    assert "Contact first: top 10 by churn probability" in html
    assert "value at risk (all)" not in html
    assert "this run ranks by churn probability instead" in html


def test_the_same_inputs_render_the_same_bytes(report_data: ReportData, tmp_path: Path) -> None:
    a = write_report(report_data, tmp_path / "a.html").read_bytes()
    b = write_report(report_data, tmp_path / "b.html").read_bytes()
    assert a == b


def test_reasons_are_counted_with_their_numbers_masked() -> None:
    frame = pd.DataFrame(
        {
            "reason_1": ["no order for 90 days", "no order for 12 days", ""],
            "reason_2": ["spent 1,234.50 so far", "", "no order for 3 days"],
        }
    )
    out = reason_patterns(frame, columns=("reason_1", "reason_2"))
    assert out.to_dict("list") == {
        "reason": ["no order for # days", "spent # so far"],
        "customers": [3, 1],
    }


def render_in_chromium(html: Path, out: Path) -> tuple[str, Path]:
    """Open ``html`` in headless Chromium; return the rendered DOM and a screenshot path."""
    flags = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={out / 'profile'}",
        "--window-size=1280,2000",
    ]
    screenshot = out / "report.png"
    subprocess.run(
        [*flags, f"--screenshot={screenshot}", html.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    dom = subprocess.run(
        [*flags, "--dump-dom", html.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return dom, screenshot


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="headless Chromium is not installed (/usr/bin/chromium); as root: "
    "apt-get update && apt-get install -y chromium",
)
def test_the_report_renders_in_headless_chromium_with_the_top_customers(
    report_data: ReportData, tmp_path: Path
) -> None:
    html = write_report(report_data, tmp_path / "report.html")
    dom, screenshot = render_in_chromium(html, tmp_path)
    for customer in report_data.customers["customer_id"].head(10):
        assert customer in dom
    assert "whom to contact first" in dom
    png = screenshot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
