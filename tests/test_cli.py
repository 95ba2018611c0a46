"""The command line: help everywhere, distinct exit codes, outputs where it says."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cxpredict.cli import app
from cxpredict.training import ModelBundle

runner = CliRunner()


def write_project(tmp_path: Path, orders: str) -> Path:
    (tmp_path / "orders.csv").write_text(orders.strip() + "\n", encoding="utf-8")
    config = tmp_path / "cxpredict.yaml"
    config.write_text("project: t\ndata:\n  orders: {path: orders.csv}\n", encoding="utf-8")
    return config


@pytest.mark.parametrize(
    "command", [[], *[[c.name or c.callback.__name__] for c in app.registered_commands]]
)
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_validate_writes_the_report_and_rejects_and_exits_zero_on_clean_data(
    tmp_path: Path,
) -> None:
    config = write_project(tmp_path, "customer_id,timestamp,amount\n1,2024-01-01,3")
    result = runner.invoke(app, ["validate", "--config", str(config), "--out", str(tmp_path / "v")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "v" / "validation_report.json").is_file()
    assert (tmp_path / "v" / "rejects_orders.csv").read_text().startswith("line,customer_id")


def test_too_many_rejects_exit_with_the_validation_code(tmp_path: Path) -> None:
    config = write_project(tmp_path, "customer_id,timestamp,amount\n1,2024-01-01,x")
    result = runner.invoke(app, ["validate", "--config", str(config), "--out", str(tmp_path / "v")])
    assert result.exit_code == 5
    assert "orders: 1 of 1 rows rejected" in result.output


def test_a_broken_config_exits_with_the_config_code(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("project: t\ndata: {orders: {path: o.csv}}\nvalidaton: {}\n")
    result = runner.invoke(app, ["validate", "--config", str(config), "--out", str(tmp_path)])
    assert result.exit_code == 3
    assert "did you mean 'validation'" in result.output


def test_a_missing_column_exits_with_the_data_code(tmp_path: Path) -> None:
    config = write_project(tmp_path, "customer_id,when,amount\n1,2024-01-01,3")
    result = runner.invoke(app, ["validate", "--config", str(config), "--out", str(tmp_path)])
    assert result.exit_code == 4
    assert "column 'timestamp' not found" in result.output


def test_an_as_of_in_the_future_is_a_usage_error(tmp_path: Path) -> None:
    config = write_project(tmp_path, "customer_id,timestamp,amount\n1,2024-01-01,3")
    result = runner.invoke(
        app,
        ["features", "--config", str(config), "--as-of", "2999-01-01", "--out", "f.csv"],
    )
    assert result.exit_code == 2
    assert "is in the future" in result.output


def test_train_on_the_sample_writes_each_bundle_and_its_backtest_next_to_the_baselines(
    tmp_path: Path,
) -> None:
    sample = Path(__file__).resolve().parents[1] / "data" / "sample"
    # the sample's first 600 customers, with all their rows, keep the test small
    keep = pd.read_csv(sample / "customers.csv", dtype=str)["customer_id"].head(600)
    for name in ("orders", "interactions", "customers"):
        rows = pd.read_csv(sample / f"{name}.csv", dtype=str, keep_default_na=False)
        rows[rows["customer_id"].isin(keep)].to_csv(tmp_path / f"{name}.csv", index=False)
    config = tmp_path / "cxpredict.yaml"
    config.write_text(
        "project: sample\n"
        "data: {orders: {path: orders.csv}, interactions: {path: interactions.csv}, "
        "customers: {path: customers.csv}}\n"
        "tasks: {repurchase: {kind: repurchase, horizon_days: 60}}\n"
        "training: {n_cutoffs: 3, step_days: 28, n_backtest_cutoffs: 1}\n",
        encoding="utf-8",
    )
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        ["train", "--config", str(config), "--as-of", "2025-10-01", "--out", str(out)]
        + ["--no-register"],
    )
    assert result.exit_code == 0, result.output
    assert "trained on labels over the full horizon (60-day windows)" in result.output
    bundle = ModelBundle.load(out / "repurchase" / "bundle")
    assert (bundle.task_name, bundle.horizon_method) == ("repurchase", "direct")
    metrics = pd.read_csv(out / "repurchase" / "metrics.csv")
    assert {"lightgbm", "recency", "logistic", "bgnbd", "pareto"} <= set(metrics["model"])
    assert metrics["cutoff"].nunique() == 1
    assert (out / "validation" / "validation_report.json").is_file()
    assert f"calibration {bundle.calibration_method or 'none'} (chosen on" in result.output


def test_the_final_model_line_names_the_served_ranker_and_its_validation_hits() -> None:
    from cxpredict.cli import final_model_text

    details = {
        "final_model": {
            "served": "most_frequent",
            "validation_hit@1": {"lightgbm": 0.5, "most_frequent": 0.6},
        }
    }
    assert final_model_text(details) == (
        "serves the most frequent ranker (hit@1 on the validation cutoff: lightgbm 0.500, "
        "most_frequent 0.600)"
    )
    details["final_model"]["served"] = "lightgbm"
    assert final_model_text(details) == (
        "serves the lightgbm ranker (hit@1 on the validation cutoff: lightgbm 0.500, "
        "most_frequent 0.600; past use ahead only within the noise)"
    )
    assert final_model_text({"final_model": {}}) == "no calibration (not a probability)"
