"""The command line: help everywhere, distinct exit codes, outputs where it says."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxpredict.cli import app

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
