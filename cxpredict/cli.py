"""The ``cxpredict`` command line: thin commands over the public API.

Every command reads the clock here, at the edge, and nowhere else: the moment of the run
decides which timestamps are in the future. Failures the package reports on purpose exit with
their own code (see :mod:`cxpredict.errors`); the message says what was wrong and the fix.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cxpredict.config import ProjectConfig, load_config
from cxpredict.errors import CxpredictError
from cxpredict.io import (
    LoadResult,
    check_inputs_kept,
    check_output,
    check_rejects,
    load_tables,
    write_table,
    write_text,
    write_validation,
)
from cxpredict.schemas import YEARS, to_utc

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

app = typer.Typer(
    name="cxpredict",
    help="Customer behaviour prediction from order and interaction logs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
#: Columns of output when it goes to a file or a pipe (a scheduled job's log): wide enough
#: that tables are not cut and paths not folded, whatever the width of no terminal.
LOG_WIDTH = 200
# Messages hold paths, column names and values from the data: no text is read as markup.
console = Console(stderr=True, markup=False, width=None if sys.stderr.isatty() else LOG_WIDTH)
out = Console(markup=False, width=None if sys.stdout.isatty() else LOG_WIDTH)


def say(label: str, style: str, text: str) -> None:
    """Print ``label`` in ``style``, then ``text`` as it is, on stderr."""
    console.print(Text.assemble((label, style), text), highlight=False, soft_wrap=True)


def warn(text: str) -> None:
    """Print a warning on stderr."""
    say("warning", "yellow", f": {text}")


F = TypeVar("F", bound=Callable[..., Any])

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="The project's YAML config file.", show_default=False)
]
AsOfOption = Annotated[
    str,
    typer.Option(
        "--as-of",
        help="Behave as if today were this date: nothing at or after it is read. ISO 8601, "
        "YYYY-MM-DD (midnight UTC) or YYYY-MM-DDTHH:MM with an optional offset.",
        show_default=False,
    ),
]


def reported(command: F) -> F:
    """Turn the package's own failures into a message and their exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with stopped_cleanly():
            try:
                return command(*args, **kwargs)
            except CxpredictError as exc:
                say("error", "bold red", f" ({type(exc).__name__}): {exc}")
                raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def stopped_cleanly() -> Iterator[None]:
    """Let SIGTERM (from a scheduler, systemd or ``timeout``) end a command as Ctrl-C does.

    Python's default on SIGTERM ends the process at once: temporary files stay behind and an
    MLflow run stays ``RUNNING``. Inside, the signal raises :class:`SystemExit` (143), so
    every ``with`` block unwinds first: temporary outputs are removed, locks released and
    the run ended as failed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        say(
            "stopped",
            "bold red",
            f" by signal {signal.Signals(signum).name}; the files of "
            "this run not yet written are left as they were",
        )
        raise SystemExit(128 + signum)

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def run_moment() -> pd.Timestamp:
    """The moment of this run, in UTC: the only clock read in the package."""
    return pd.Timestamp.now(tz="UTC")


def parse_as_of(text: str, *, now: pd.Timestamp) -> pd.Timestamp:
    """An ``--as-of`` value as a UTC instant; a date means its midnight, UTC.

    Only ISO 8601 is read: ``01/02/2026`` is the 2nd of January to some and the 1st of
    February to others, and a wrong guess would silently move every window.
    """
    try:
        as_of = to_utc(text)
    except (ValueError, TypeError):
        raise typer.BadParameter(
            f"{text!r} is not a date in ISO 8601; use YYYY-MM-DD (or YYYY-MM-DDTHH:MM)",
            param_hint="--as-of",
        ) from None
    if as_of > now:
        raise typer.BadParameter(
            f"{as_of.date()} is in the future; --as-of must be today or earlier",
            param_hint="--as-of",
        )
    if not YEARS[0] <= as_of.year <= YEARS[1]:
        raise typer.BadParameter(
            f"{text!r} is outside the years {YEARS[0]}-{YEARS[1]} cxpredict works in",
            param_hint="--as-of",
        )
    return as_of


@contextmanager
def progress_bar() -> Iterator[Progress]:
    """A rich progress display on stderr (quiet when stderr is not a terminal)."""
    with Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not sys.stderr.isatty(),
    ) as progress:
        yield progress


def read_validated(
    config: ProjectConfig,
    *,
    now: pd.Timestamp,
    as_of: pd.Timestamp | None,
    validation_dir: Path,
) -> LoadResult:
    """Read and validate every table, write the report and rejects, enforce the threshold."""
    with progress_bar() as progress:
        step = progress.add_task("reading tables", total=len(config.data.tables()))

        def advance(name: str) -> None:
            progress.update(step, description=f"reading {name}")
            progress.advance(step)

        result = load_tables(config, run_at=now, as_of=as_of, progress=advance)
    write_validation(result, validation_dir)
    print_reconciliation(result, max_reject_fraction=config.validation.max_reject_fraction)
    console.print(f"validation report and rejects: {validation_dir}", highlight=False)
    check_rejects(result, max_reject_fraction=config.validation.max_reject_fraction)
    return result


def print_reconciliation(result: LoadResult, *, max_reject_fraction: float) -> None:
    """Print rows in source = after as-of + read, and read = accepted + rejected, per table,
    and whether the rejected share is within ``validation.max_reject_fraction``."""
    table = Table(title="rows per table", title_justify="left")
    columns = ("table", "in source", "after as-of", "read", "accepted", "rejected")
    for column in (*columns, "counts add up", "rejects within limit"):
        table.add_column(column, justify="left" if column == "table" else "right")
    for name, r in result.reports.items():
        table.add_row(
            name,
            f"{r.rows_in_source:,}",
            f"{r.rows_after_as_of:,}",
            f"{r.rows_read:,}",
            f"{r.rows_accepted:,}",
            f"{r.rows_rejected:,} ({r.reject_fraction:.2%})",
            "yes" if r.reconciles() else "NO",
            "yes"
            if r.reject_fraction <= max_reject_fraction
            else f"NO (> {max_reject_fraction * 100:g}%)",
        )
    console.print(table)


@app.command()
@reported
def sample(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the tables to.")],
    customers: Annotated[int, typer.Option("--customers", min=1)] = 2000,
    seed: Annotated[int, typer.Option("--seed")] = 42,
    start: Annotated[str, typer.Option("--start", help="First day of the history.")] = (
        "2024-01-01"
    ),
    days: Annotated[int, typer.Option("--days", min=30, help="Length of the history.")] = 730,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
) -> None:
    """Generate a synthetic omnichannel retailer's orders, interactions and customers, and a
    project config for them (``cxpredict.yaml``, unless the folder already has one)."""
    from cxpredict.sample import generate_sample, sample_config, write_sample

    if fmt not in ("csv", "parquet"):
        raise typer.BadParameter("use csv or parquet", param_hint="--format")
    start = start.strip()
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", start):
            raise ValueError(start)
        first = pd.Timestamp(start, tz="UTC")
    except ValueError:
        raise typer.BadParameter(
            f"{start!r} is not a date; use YYYY-MM-DD", param_hint="--start"
        ) from None
    if not YEARS[0] <= first.year <= YEARS[1]:
        raise typer.BadParameter(
            f"{start!r} is outside the years {YEARS[0]}-{YEARS[1]} the generator covers",
            param_hint="--start",
        )
    check_output(out_dir, folder=True)
    with progress_bar() as progress:
        progress.add_task(f"generating {customers:,} customers", total=None)
        tables = generate_sample(customers, seed=seed, start=start, days=days)
        paths = write_sample(tables, out_dir, fmt=fmt)
    for name, path in paths.items():
        frame = tables.get(name)
        rows = 0 if frame is None else len(frame)
        out.print(f"{name:<13} {rows:>10,} rows  {path}", highlight=False)
    config = out_dir / "cxpredict.yaml"
    if config.exists():
        out.print(f"{'config':<13} {'kept':>15}  {config}", highlight=False)
        stale = _unread_tables(config, paths)
        if stale:
            warn(
                f"the kept config does not read {', '.join(stale)} written "
                "now; point its data paths at them or remove it to have one written",
            )
    else:
        write_text(sample_config(paths), config)
        out.print(f"{'config':<13} {'written':>15}  {config}", highlight=False)
    end = first + pd.Timedelta(days=days)
    if end > run_moment():
        warn(
            f"the history runs to {end:%Y-%m-%d}, after today: an --as-of "
            "must be today or earlier, so its later part cannot be used yet; pass an earlier "
            "--start or fewer --days",
        )


def _unread_tables(config: Path, paths: dict[str, Path]) -> list[str]:
    """The files in ``paths`` that the project config ``config`` does not read (all of them
    when it cannot be loaded)."""
    try:
        data = load_config(config).data
    except CxpredictError:
        return [Path(p).name for p in paths.values()]
    read = {Path(t.path).resolve() for t in data.tables().values()}
    return [Path(p).name for p in paths.values() if Path(p).resolve() not in read]


@app.command()
@reported
def validate(
    config_path: ConfigOption,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the report and rejects.")],
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="Only read what was known before this date: YYYY-MM-DD (midnight UTC) or "
            "YYYY-MM-DDTHH:MM with an optional offset.",
        ),
    ] = None,
) -> None:
    """Validate every table: write validation_report.json and rejects_<table>.csv."""
    check_output(out_dir, folder=True)
    now = run_moment()
    config = load_config(config_path)
    written = ["validation_report.json", *(f"rejects_{name}.csv" for name in config.data.tables())]
    check_inputs_kept(config, [out_dir / name for name in written])
    cutoff = parse_as_of(as_of, now=now) if as_of else None
    read_validated(config, now=now, as_of=cutoff, validation_dir=out_dir)
    out.print(f"validated: {out_dir / 'validation_report.json'}", highlight=False)


@app.command()
@reported
def features(
    config_path: ConfigOption,
    as_of: AsOfOption,
    out_file: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Output file: .parquet or .csv. The validation report and rejects are "
            "written to a 'validation' folder beside it.",
            show_default=False,
        ),
    ],
) -> None:
    """Build every customer's features as of a date and write them to a file."""
    if out_file.suffix.lower() not in (".csv", ".parquet"):
        raise typer.BadParameter("use a .csv or .parquet file name", param_hint="--out")
    check_output(out_file)
    check_output(out_file.parent / "validation", folder=True, option="the validation folder")
    now = run_moment()
    cutoff = parse_as_of(as_of, now=now)
    config = load_config(config_path)
    check_inputs_kept(config, [out_file, out_file.parent / "validation"])
    from cxpredict.features import build_features

    result = read_validated(
        config, now=now, as_of=cutoff, validation_dir=out_file.parent / "validation"
    )
    with progress_bar() as progress:
        progress.add_task("building features", total=None)
        frame = build_features(result.tables, cutoff, settings=config.features)
    write_table(frame, out_file, index=True)
    if frame.empty:
        warn(
            f"no customer ordered or signed up before {cutoff:%Y-%m-%d}; "
            "is --as-of before the data start?",
        )
    out.print(
        f"features: {len(frame):,} customers x {frame.shape[1]} features -> {out_file}",
        highlight=False,
    )


#: Backtest metrics printed by ``train`` per task kind (all of them are in metrics.csv).
TRAIN_METRICS: dict[str, tuple[str, ...]] = {
    "churn": ("roc_auc", "pr_auc", "lift@10%", "brier"),
    "repurchase": ("roc_auc", "pr_auc", "lift@10%", "brier"),
    "value": ("spend/rmse", "spend/normalised_gini", "spend/total_ratio", "orders/spearman"),
    "preference": ("hit@1", "hit@3", "ndcg@3"),
}


def print_backtest(name: str, summary: pd.DataFrame, kind: str) -> None:
    """The task's main backtest metrics: the model first, then every baseline."""
    rows = [m for m in TRAIN_METRICS[kind] if m in summary.index]
    table = Table(title=f"{name}: backtest means over the test cutoffs", title_justify="left")
    table.add_column("metric")
    for model in summary.columns:
        table.add_column(str(model), justify="right")
    unmeasured = False
    for metric in rows:
        values = summary.loc[metric].to_numpy(dtype=float)
        unmeasured |= not np.isfinite(values).all()
        table.add_row(metric, *(f"{v:.3f}" if np.isfinite(v) else "-" for v in values))
    if unmeasured:
        table.caption = (
            "-: not defined for that model (a ranking without probabilities, or predictions "
            "all equal on a test cutoff)"
        )
        table.caption_justify = "left"
    out.print(table)


def next_order_text(summary: pd.DataFrame) -> str | None:
    """How the value lists' next-order dates held on the backtest's test windows."""
    rows = ("next_order/estimated", "next_order/ordered_by_date", "next_order/median_error_days")
    if "bgnbd" not in summary.columns or not all(r in summary.index for r in rows):
        return None
    given, by_date, error = (float(summary.loc[r, "bgnbd"]) for r in rows)
    if not np.isfinite(given):
        return None
    if not given > 0:
        return "next-order dates: no customer of the test cutoffs was given one"
    return (
        f"next-order dates (BG/NBD medians) on the test cutoffs: given to {given:.0%} of the "
        f"customers, {by_date:.0%} of whom ordered by their date (50% when the dates are "
        f"right); median error {error:.0f} days for those who ordered in the window"
    )


def constant_warning(name: str, folds: list[dict[str, Any]]) -> str | None:
    """A warning when the model gave every customer the same prediction at some test cutoff
    of the backtest (``constant_predictions`` of its folds): it learned nothing to rank by."""
    flat = [f for f in folds if f.get("constant_predictions")]
    if not flat:
        return None
    cutoffs = sorted(f"{pd.Timestamp(f['test_cutoff']):%Y-%m-%d}" for f in flat)
    return (
        f"{name}: the model gives every customer the same prediction at the test cutoff(s) "
        f"{', '.join(cutoffs)}: too little data to learn from? Check the metrics before "
        "promoting this version"
    )


def baseline_warning(name: str, summary: pd.DataFrame, metric: str, higher: bool) -> str | None:
    """A warning when a baseline beats the served model on the task's promotion metric."""
    served = "served" if "served" in summary.columns else "lightgbm"
    if metric not in summary.index or served not in summary.columns:
        return None
    row = summary.loc[metric]
    model = float(row[served])
    others = row.drop(labels=[c for c in ("lightgbm", "served") if c in row.index]).dropna()
    if others.empty or not np.isfinite(model):
        return None
    best = str(others.idxmax() if higher else others.idxmin())
    if (model < others[best]) if higher else (model > others[best]):
        return (
            f"{name}: the {best} baseline beats the model on {metric} in the backtest "
            f"({others[best]:.3f} against {model:.3f}); too little data? Check the metrics "
            "before promoting this version"
        )
    return None


def final_model_text(details: dict) -> str:
    """What the final model serves: its calibration and where it was chosen, or its ranker."""
    final = details.get("final_model") or {}
    parts = []
    if "calibration" in final:
        parts.append(
            f"calibration {final['calibration'] or 'none'} "
            f"(chosen on {details.get('calibration_chosen_on', 'the validation cutoff')})"
        )
    if final.get("served"):
        hits = final.get("validation_hit@1") or {}
        shown = ", ".join(f"{k} {float(v):.3f}" for k, v in hits.items())
        behind = (
            final["served"] == "lightgbm"
            and "lightgbm" in hits
            and any(float(v) > float(hits["lightgbm"]) for v in hits.values())
        )
        note = "; past use ahead only within the noise" if behind else ""
        parts.append(
            f"serves the {final['served'].replace('_', ' ')} ranker"
            + (f" (hit@1 on the validation cutoff: {shown}{note})" if shown else "")
        )
    return "; ".join(parts) or "no calibration (not a probability)"


@app.command()
@reported
def train(
    config_path: ConfigOption,
    as_of: AsOfOption,
    task: Annotated[
        list[str] | None,
        typer.Option("--task", help="Train only this task (repeatable); default: every task."),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for the validation report, each task's bundle and backtest metrics; "
            "default: training/<as-of date> next to the config.",
        ),
    ] = None,
    register: Annotated[
        bool,
        typer.Option("--register/--no-register", help="Register each model as challenger."),
    ] = True,
) -> None:
    """Backtest each task against its baselines, train it as of a date and register it."""
    now = run_moment()
    cutoff = parse_as_of(as_of, now=now)
    config = load_config(config_path)
    names = list(task) if task else list(config.tasks)
    for name in names:
        config.task(name)  # a ConfigError naming the configured tasks
    from cxpredict.backtest import left_out_text
    from cxpredict.training import train_task

    out_dir = out_dir or config.root / "training" / f"{cutoff:%Y-%m-%d}"
    check_output(out_dir, folder=True)
    check_inputs_kept(config, [out_dir / "validation", *(out_dir / name for name in names)])
    loaded = read_validated(config, now=now, as_of=cutoff, validation_dir=out_dir / "validation")
    for name in names:
        with progress_bar() as progress:
            progress.add_task(f"training {name}", total=None)
            result = train_task(config, name, as_of=cutoff, tables=loaded.tables)
        bundle_dir = result.bundle.save(out_dir / name / "bundle")
        write_table(result.metrics, out_dir / name / "metrics.csv")
        print_backtest(name, result.summary, result.bundle.kind)
        dated = next_order_text(result.summary)
        if dated:
            out.print(f"{name}: {dated}", highlight=False, soft_wrap=True)
        from cxpredict.registry import promotion_metric

        warning = baseline_warning(
            name, result.summary, *promotion_metric(config, result.bundle.kind)
        )
        folds = result.details.get("backtest_folds", [])
        left_out = [f"{name}: {text}" for text in left_out_text(folds)]
        for text in [warning, constant_warning(name, folds), *left_out]:
            if text:
                warn(text)
        out.print(
            f"{name}: {result.details['horizon_method_text']} ({result.label_horizon_days}-day "
            f"windows); bundle {bundle_dir}",
            highlight=False,
            soft_wrap=True,
        )
        out.print(f"{name}: {final_model_text(result.details)}", highlight=False, soft_wrap=True)
        if register:
            from cxpredict import registry

            version = registry.log_training_run(
                config,
                name,
                result,
                tables=loaded.tables,
                bundle_dir=bundle_dir,
                tracking_uri=registry.resolve_tracking_uri(config, os.environ),
            )
            out.print(f"{name}: registered {version.name} v{version.version}", highlight=False)


@app.command()
@reported
def score(
    config_path: ConfigOption,
    as_of: AsOfOption,
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Folder for the ranked lists, customers.csv and report.html.",
            show_default=False,
        ),
    ],
    task: Annotated[
        list[str] | None,
        typer.Option("--task", help="Score only this task (repeatable); default: every task."),
    ] = None,
    reasons_for: Annotated[
        str | None,
        typer.Option(
            "--reasons-for",
            help="'all' customers or the 'top' share (scoring.reasons_top_fraction) get "
            "reasons; default: scoring.reasons_for.",
        ),
    ] = None,
) -> None:
    """Score every customer with each task's champion: ranked lists, customers and report."""
    if reasons_for not in (None, "all", "top"):
        raise typer.BadParameter("use all or top", param_hint="--reasons-for")
    check_output(out_dir, folder=True)
    now = run_moment()
    cutoff = parse_as_of(as_of, now=now)
    config = load_config(config_path)
    from cxpredict.registry import resolve_tracking_uri
    from cxpredict.scoring import run_scoring

    with progress_bar() as progress:
        step = progress.add_task("scoring", total=None)
        run = run_scoring(
            config,
            as_of=cutoff,
            out_dir=out_dir,
            run_at=now,
            tasks=task,
            tracking_uri=resolve_tracking_uri(config, os.environ),
            reasons_for=reasons_for,
            progress=lambda stage: progress.update(step, description=stage),
            on_loaded=lambda result: print_reconciliation(
                result, max_reject_fraction=config.validation.max_reject_fraction
            ),
        )
    for name, rows in run.rows_out.items():
        out.print(f"{name:<16} v{run.versions[name]:<4} {rows:>10,} customers", highlight=False)
    for warning in run.warnings:
        warn(warning)
    out.print(f"lists, customers.csv and report.html: {out_dir}", highlight=False)


@app.command()
@reported
def tasks(config_path: ConfigOption) -> None:
    """Print the configured task names, one per line (for scripts)."""
    for name in load_config(config_path).task_names():
        out.print(name, highlight=False)


TaskOption = Annotated[
    str, typer.Option("--task", "-t", help="The task (a key under 'tasks:').", show_default=False)
]


@app.command()
@reported
def promote(
    config_path: ConfigOption,
    task: TaskOption,
    force: Annotated[
        bool, typer.Option("--force", help="Promote even if not better; needs --reason.")
    ] = False,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (recorded on the version).")
    ] = None,
) -> None:
    """Make the challenger the champion if it is better, or if the champion can't score."""
    if force and not (reason or "").strip():
        raise typer.BadParameter(
            "--force needs --reason: say why the challenger replaces the champion",
            param_hint="--reason",
        )
    now = run_moment()
    config = load_config(config_path)
    config.task(task)
    from cxpredict import registry

    result = registry.promote(
        config,
        task,
        force=force,
        reason=reason,
        at=now,
        tracking_uri=registry.resolve_tracking_uri(config, os.environ),
    )
    out.print(result.message, highlight=False, soft_wrap=True)


@app.command()
@reported
def rollback(config_path: ConfigOption, task: TaskOption) -> None:
    """Point the champion back at the previous champion."""
    now = run_moment()
    config = load_config(config_path)
    config.task(task)
    from cxpredict import registry

    result = registry.rollback(
        config, task, at=now, tracking_uri=registry.resolve_tracking_uri(config, os.environ)
    )
    out.print(result.message, highlight=False, soft_wrap=True)


@app.command()
@reported
def serve(
    config_path: ConfigOption,
    task: TaskOption,
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 5001,
    host: Annotated[
        str, typer.Option("--host", help="Interface to bind; the default answers locally only.")
    ] = "127.0.0.1",
) -> None:
    """Serve the task's champion over HTTP: POST rows (JSON, CSV or Parquet) to /invocations."""
    config = load_config(config_path)
    config.task(task)
    from cxpredict import registry, serving

    if serving.port_in_use(host, port):
        raise typer.BadParameter(
            f"port {port} on {host} is in use (another server?); choose another with --port",
            param_hint="--port",
        )
    tracking_uri = registry.resolve_tracking_uri(config, os.environ)
    model_uri = registry.champion_uri(config, task, tracking_uri=tracking_uri)
    if host not in ("127.0.0.1", "localhost", "::1"):
        warn(
            f"binding {host}: the scoring server has no authentication; "
            "anyone who can reach this port can score and read the model's answers",
        )
    console.print(f"serving {model_uri} on http://{host}:{port}/invocations", highlight=False)
    code = serving.run_server(
        model_uri, tracking_uri=tracking_uri, environ=os.environ, host=host, port=port
    )
    raise typer.Exit(code)


def main() -> None:  # pragma: no cover - console entry point
    """Run the command line."""
    app()
