"""The command line: help everywhere, distinct exit codes, outputs where it says."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from cxpredict.cli import app, baseline_warning
from cxpredict.training import ModelBundle

runner = CliRunner()


def write_project(tmp_path: Path, orders: str, tasks: str = "") -> Path:
    """A project reading ``orders`` (CSV text), with the YAML lines ``tasks`` under ``tasks:``."""
    (tmp_path / "orders.csv").write_text(orders.strip() + "\n", encoding="utf-8")
    config = tmp_path / "cxpredict.yaml"
    text = "project: t\ndata:\n  orders: {path: orders.csv}\n"
    config.write_text(text + (f"tasks:\n{tasks}" if tasks else ""), encoding="utf-8")
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
    report = json.loads((tmp_path / "v" / "validation_report.json").read_text())
    assert report["run"]["as_of"] is None  # no --as-of: everything read
    assert report["orders"]["reconciles"] is True
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


def test_the_validation_table_says_when_a_table_has_too_many_rejects(tmp_path: Path) -> None:
    rows = "\n".join(["customer_id,timestamp,amount", "1,2024-01-01,3", *["2,never,4"] * 3])
    config = write_project(tmp_path, rows)
    args = ["validate", "--config", str(config), "--out", str(tmp_path)]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 5
    lines = result.output.splitlines()
    header = [c.strip() for c in next(x for x in lines if "counts add up" in x).split("┃")]
    row = [c.strip() for c in next(x for x in lines if "75.00%" in x).split("│")]
    cells = dict(zip(header, row, strict=True))
    assert cells["table"] == "orders" and cells["rejected"] == "3 (75.00%)"
    assert cells["counts add up"] == "yes"
    assert cells["rejects within limit"] == "NO (> 1%)"


def test_an_as_of_in_the_future_is_a_usage_error(tmp_path: Path) -> None:
    config = write_project(tmp_path, "customer_id,timestamp,amount\n1,2024-01-01,3")
    result = runner.invoke(
        app,
        ["features", "--config", str(config), "--as-of", "2999-01-01", "--out", "f.csv"],
    )
    assert result.exit_code == 2
    assert "is in the future" in result.output


def test_an_as_of_before_1900_is_a_usage_error() -> None:
    from cxpredict.cli import parse_as_of

    with pytest.raises(typer.BadParameter, match="outside the years 1900-2200"):
        parse_as_of("1600-01-01", now=pd.Timestamp("2026-06-01", tz="UTC"))


def test_error_messages_show_square_brackets_as_written(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    (tmp_path / "o.csv").write_text("customer_id,when,amount\n1,2024-01-01,3\n")
    config.write_text("project: t\ndata: {orders: {path: o.csv, columns: {timestamp: '[when]'}}}\n")
    result = runner.invoke(app, ["validate", "--config", str(config), "--out", str(tmp_path)])
    assert result.exit_code == 4
    assert "(mapped from '[when]')" in result.output


@pytest.mark.parametrize("text", ["01/02/2026", "2/1/2026", "Jan 2 2026", "20260102", "yesterday"])
def test_an_as_of_outside_iso_8601_is_a_usage_error_not_a_guess(text: str) -> None:
    from cxpredict.cli import parse_as_of

    with pytest.raises(typer.BadParameter, match="not a date in ISO 8601; use YYYY-MM-DD"):
        parse_as_of(text, now=pd.Timestamp("2026-06-01", tz="UTC"))


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2026-01-02", "2026-01-02T00:00Z"),
        ("2026-01-02T06:30", "2026-01-02T06:30Z"),
        ("2026-01-02 06:30:15", "2026-01-02T06:30:15Z"),
        ("2026-01-02T06:30+02:00", "2026-01-02T04:30Z"),
    ],
)
def test_an_iso_8601_as_of_is_read_as_a_utc_instant(text: str, instant: str) -> None:
    from cxpredict.cli import parse_as_of

    now = pd.Timestamp("2026-06-01", tz="UTC")
    assert parse_as_of(text, now=now) == pd.Timestamp(instant)


def test_a_sample_running_past_today_is_warned_about(tmp_path: Path) -> None:
    args = ["sample", "--customers", "50", "--days", "60", "--out", str(tmp_path)]
    soon = pd.Timestamp.now(tz="UTC").floor("D") + pd.Timedelta(days=30)
    ahead = runner.invoke(app, [*args, "--start", f"{soon:%Y-%m-%d}"], env={"COLUMNS": "200"})
    assert ahead.exit_code == 0, ahead.output
    end = soon + pd.Timedelta(days=60)
    assert f"the history runs to {end:%Y-%m-%d}, after today" in ahead.output
    past = runner.invoke(app, [*args, "--start", "2024-01-01"], env={"COLUMNS": "200"})
    assert past.exit_code == 0 and "after today" not in past.output


@pytest.mark.parametrize(
    ("start", "message"),
    [
        ("2024-02-30", "is not a date; use YYYY-MM-DD"),
        ("next week", "is not a date; use YYYY-MM-DD"),
        ("01/02/2024", "is not a date; use YYYY-MM-DD"),
        ("2999-01-01", "outside the years 1900-2200"),
    ],
)
def test_a_sample_start_that_is_not_a_usable_date_is_a_usage_error(
    tmp_path: Path, start: str, message: str
) -> None:
    result = runner.invoke(
        app, ["sample", "--out", str(tmp_path), "--start", start], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2
    assert message in result.output
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_generated_sample_comes_with_a_config_that_reads_it(tmp_path: Path, fmt: str) -> None:
    from cxpredict.config import load_config

    args = ["sample", "--customers", "200", "--out", str(tmp_path), "--format", fmt]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    config = load_config(tmp_path / "cxpredict.yaml")
    assert config.data.orders.path == tmp_path / f"orders.{fmt}"
    kinds = {task.kind for task in config.tasks.values()}
    assert kinds == {"churn", "repurchase", "preference", "value"}
    bundled = load_config(
        Path(__file__).resolve().parents[1] / "data" / "sample" / "cxpredict.yaml"
    )
    assert config.tasks == bundled.tasks and config.training == bundled.training
    checked = runner.invoke(
        app,
        ["validate", "--config", str(tmp_path / "cxpredict.yaml"), "--out", str(tmp_path / "v")],
    )
    assert checked.exit_code == 0, checked.output
    # generating again keeps the config, which reads the files written again
    again = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert again.exit_code == 0 and "kept" in again.output and "warning" not in again.output
    # a config already there is the user's: generating again keeps it, and says what it misses
    (tmp_path / "cxpredict.yaml").write_text("project: mine\n", encoding="utf-8")
    kept = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert kept.exit_code == 0
    assert f"the kept config does not read orders.{fmt}" in kept.output
    assert (tmp_path / "cxpredict.yaml").read_text(encoding="utf-8") == "project: mine\n"


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


def test_training_a_value_task_says_how_its_next_order_dates_held() -> None:
    from cxpredict.cli import next_order_text

    rows = ["next_order/estimated", "next_order/ordered_by_date", "next_order/median_error_days"]
    summary = pd.DataFrame({"bgnbd": [0.4, 0.47, 12.2]}, index=rows)
    assert next_order_text(summary) == (
        "next-order dates (BG/NBD medians) on the test cutoffs: given to 40% of the customers, "
        "47% of whom ordered by their date (50% when the dates are right); median error 12 "
        "days for those who ordered in the window"
    )
    assert next_order_text(summary.drop(index=rows[0])) is None


def test_the_backtest_table_shows_a_dash_where_a_model_gives_no_probability() -> None:
    from cxpredict.cli import out, print_backtest

    summary = pd.DataFrame(
        {"lightgbm": [0.812, 0.151], "recency": [0.701, float("nan")]}, index=["roc_auc", "brier"]
    )
    with out.capture() as captured:
        print_backtest("churn", summary, "churn")
    lines = captured.get().splitlines()
    assert any(
        "brier" in line and "0.151" in line and line.rstrip(" │").endswith("-") for line in lines
    )
    assert "nan" not in captured.get()
    assert any(line.startswith("-: not defined for that model") for line in lines)


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


def test_an_output_path_that_cannot_be_written_stops_before_any_work(tmp_path: Path) -> None:
    config = write_project(tmp_path, "customer_id,timestamp,amount\n1,2024-01-01,3")
    as_file = ["--config", str(config), "--out", str(tmp_path / "orders.csv")]
    result = runner.invoke(app, ["validate", *as_file])
    assert result.exit_code == 13, result.output
    assert "is a file; give a folder" in result.output
    (tmp_path / "taken.csv").mkdir()
    args = ["features", "--config", str(config), "--as-of", "2024-02-01"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "taken.csv")])
    assert result.exit_code == 13, result.output
    assert not (tmp_path / "validation").exists()  # nothing was read or written
    result = runner.invoke(app, ["score", *as_file, "--as-of", "2024-02-01"])
    assert result.exit_code == 13, result.output


def test_an_output_that_would_replace_an_input_table_is_refused_before_any_work(
    tmp_path: Path,
) -> None:
    config = write_project(tmp_path, "customer_id,timestamp,amount\n1,2024-01-01,3")
    args = ["--config", str(config), "--as-of", "2024-02-01"]
    result = runner.invoke(app, ["features", *args, "--out", str(tmp_path / "orders.csv")])
    assert result.exit_code == 13, result.output
    assert "would overwrite the orders table" in result.output
    (tmp_path / "customers.csv").write_text("customer_id\n1\n", encoding="utf-8")
    text = config.read_text(encoding="utf-8").replace(
        "data:\n", "data:\n  customers: {path: customers.csv}\n"
    )
    config.write_text(text + "tasks:\n  churn: {kind: churn, horizon_days: 28}\n")
    result = runner.invoke(app, ["score", *args, "--out", str(tmp_path)])
    assert result.exit_code == 13, result.output
    assert "would overwrite the customers table" in result.output
    assert (tmp_path / "customers.csv").read_text(encoding="utf-8") == "customer_id\n1\n"


def test_an_output_inside_an_input_folder_of_parquet_files_is_refused(tmp_path: Path) -> None:
    config = write_project(tmp_path, "customer_id,timestamp,amount\n1,2024-01-01,3")
    folder = tmp_path / "orders"
    folder.mkdir()
    part = folder / "part-0.parquet"
    pd.DataFrame(
        {
            "customer_id": ["1"],
            "timestamp": pd.to_datetime(["2024-01-01"], utc=True),
            "amount": [3.0],
        }
    ).to_parquet(part)
    text = config.read_text(encoding="utf-8").replace("orders.csv", "orders")
    config.write_text(text, encoding="utf-8")
    before = part.read_bytes()
    args = ["features", "--config", str(config), "--as-of", "2024-02-01"]
    result = runner.invoke(app, [*args, "--out", str(part)])
    assert result.exit_code == 13, result.output
    assert "would overwrite the orders table" in result.output
    assert part.read_bytes() == before
    result = runner.invoke(app, [*args, "--out", str(folder / "features.parquet")])
    assert result.exit_code == 13, result.output
    config.write_text(text + "tasks:\n  churn: {kind: churn, horizon_days: 28}\n")
    result = runner.invoke(app, ["train", *args[1:], "--out", str(folder)])
    assert result.exit_code == 13, result.output
    assert "would overwrite the orders table" in result.output
    assert sorted(p.name for p in folder.iterdir()) == ["part-0.parquet"]


def test_sigterm_ends_a_command_as_ctrl_c_does_with_exit_code_143() -> None:
    import os
    import signal
    import time

    from cxpredict.cli import stopped_cleanly

    left: list[str] = []
    with pytest.raises(SystemExit) as stopped, stopped_cleanly():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            left.append("unwound")
    assert stopped.value.code == 143 and left == ["unwound"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_features_before_any_customer_are_written_empty_with_a_warning(tmp_path: Path) -> None:
    config = write_project(tmp_path, "customer_id,timestamp,amount\n1,2024-01-01,3")
    out = tmp_path / "f.csv"
    args = ["features", "--config", str(config), "--as-of", "2023-06-01", "--out", str(out)]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "no customer ordered or signed up before 2023-06-01" in result.output
    assert pd.read_csv(out).empty


def test_forcing_a_promotion_without_a_reason_is_a_usage_error(tmp_path: Path) -> None:
    config = write_project(tmp_path, "customer_id,timestamp,amount\n1,2024-01-01,3")
    result = runner.invoke(app, ["promote", "--config", str(config), "-t", "x", "--force"])
    assert result.exit_code == 2
    assert "--force needs --reason" in result.output


def test_a_port_in_use_is_a_usage_error_naming_the_port(tmp_path: Path) -> None:
    import socket

    config = write_project(
        tmp_path,
        "customer_id,timestamp,amount\n1,2024-01-01,3",
        "  churn: {kind: churn, horizon_days: 30}\n",
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", "--config", str(config), "-t", "churn", "--port", str(port)]
        result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert f"port {port} on 127.0.0.1 is in use" in result.output


def test_training_warns_when_a_baseline_beats_the_model() -> None:
    summary = pd.DataFrame(
        {"lightgbm": [0.55, 0.60], "recency": [0.61, 0.58], "logistic": [0.62, 0.59]},
        index=["pr_auc", "roc_auc"],
    )
    warning = baseline_warning("churn", summary, "pr_auc", True)
    assert warning is not None
    assert warning.startswith(
        "churn: the logistic baseline beats the model on pr_auc in the backtest "
        "(0.620 against 0.550)"
    )
    assert baseline_warning("churn", summary, "roc_auc", True) is None
    # lower is better: a deviance above a baseline's is a loss too
    assert baseline_warning("churn", summary.loc[["roc_auc"]], "roc_auc", False) is not None


def test_training_warns_when_the_model_gives_everyone_the_same_prediction() -> None:
    from cxpredict.cli import constant_warning

    folds = [
        {"test_cutoff": pd.Timestamp("2025-09-01", tz="UTC"), "constant_predictions": False},
        {"test_cutoff": pd.Timestamp("2025-08-01", tz="UTC"), "constant_predictions": True},
    ]
    warning = constant_warning("value", folds)
    assert warning is not None
    assert "same prediction at the test cutoff(s) 2025-08-01:" in warning
    assert constant_warning("value", folds[:1]) is None


def test_tasks_lists_the_configured_tasks_one_per_line(tmp_path: Path) -> None:
    orders = "customer_id,timestamp,amount\n1,2024-01-01,3"
    tasks = "  churn: {kind: churn, horizon_days: 30}\n  value: {kind: value, horizon_days: 60}\n"
    config = write_project(tmp_path, orders, tasks)
    result = runner.invoke(app, ["tasks", "--config", str(config)])
    assert result.exit_code == 0
    assert result.output.splitlines() == ["churn", "value"]
    config = write_project(tmp_path, orders)
    result = runner.invoke(app, ["tasks", "--config", str(config)])
    assert result.exit_code == 3
    assert "no task is configured" in result.output
