"""Batch scoring of a million customers, from raw files to ranked lists, reasons and report.

The job (:func:`cxpredict.scoring.run_scoring`, what ``cxpredict score`` runs) is timed in a
child process, so that its peak resident memory is its own (``ru_maxrss`` of the child,
DuckDB included); the stage timings come from the job itself. Not timed: generating the
raw files (``cxpredict.sample``, cached under ``benchmarks/output/``) and training the
champions.

Models: the five tasks of the bundled sample project are trained quickly (no backtest, three
training cutoffs) on a small sample drawn by the same generator over the same dates, and
registered in a local MLflow store, exactly as ``cxpredict train`` would; the job then loads
them as champions. The million-customer data are a different draw, so the drift check runs
in full; ``scoring.drift_fail_psi`` is raised so that drift is reported but does not stop a
speed measurement.

The reference, computed in the same run, is reading the raw files with pyarrow: no job that
starts from those files can beat it.

    .venv/bin/python benchmarks/bench_scoring.py                     # 1M customers, ~10M events
    .venv/bin/python benchmarks/bench_scoring.py --reasons-for all   # reasons for every customer
    .venv/bin/python benchmarks/bench_scoring.py --customers 100000  # a quick look

Measured on the 2-core, 24 GB development machine (1,000,000 customers, 10,964,706 events,
Parquet input, 158 features, nothing else running, load average 1.2-1.3): 63.0 s of wall
time, 76.8 s of CPU and 4.9 GB peak with reasons for the top 20% (validation 7.7 s, features
7.3 s, predictions 12.9 s, reasons 19.0 s); 124.8 s, 147.5 s of CPU and 5.3 GB with reasons
for everyone. The previous release took 160 s and 494 s. Stage by stage in
``docs/scoring.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

HERE = Path(__file__).resolve().parent
START = "2024-01-01"
DAYS = 340
AS_OF = "2024-12-01"
#: The moment of the run: the end of the generated history (nothing in the files is later).
RUN_AT = pd.Timestamp(START, tz="UTC") + pd.Timedelta(days=DAYS)
#: The five tasks of the bundled sample project, one of every kind.
TASKS = yaml.safe_load(
    (HERE.parent / "data" / "sample" / "cxpredict.yaml").read_text(encoding="utf-8")
)["tasks"]


def _project(folder: Path, data: Path, fmt: str, store: Path) -> Path:
    """Write a project config over the raw files in ``data``; return its path."""
    config = {
        "project": "bench",
        "data": {
            name: {"path": str(data / f"{name}.{fmt}")}
            for name in ("orders", "interactions", "customers")
        },
        "tasks": TASKS,
        "training": {"n_cutoffs": 3, "step_days": 28, "seed": 0},
        "mlflow": {"tracking_uri": f"sqlite:///{store}"},
        "scoring": {"drift_fail_psi": 1000.0},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cxpredict.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _raw_files(folder: Path, customers: int, fmt: str, seed: int) -> Path:
    """Generate and write the raw tables once; later runs reuse them."""
    from cxpredict.sample import generate_sample, write_sample

    done = folder / "complete"
    if not done.exists():
        started = time.perf_counter()
        tables = generate_sample(customers, seed=seed, start=START, days=DAYS)
        write_sample(tables, folder, fmt=fmt)
        done.write_text("ok\n")
        print(f"generated {customers:,} customers in {time.perf_counter() - started:.0f} s")
    return folder


def _train(config_path: Path, store: Path) -> None:
    """Train and register every task's champion on the small project.

    Once per feature catalogue: the champions of an earlier run are reused while today's
    features are those they were trained on; otherwise (features added or changed since),
    the store is emptied and every task trained again.
    """
    from cxpredict import registry
    from cxpredict.config import load_config
    from cxpredict.features import catalogue_version, feature_catalogue, learn_vocabulary
    from cxpredict.io import load_tables
    from cxpredict.training import train_task

    config = load_config(config_path)
    as_of = pd.Timestamp(AS_OF, tz="UTC")
    tables = load_tables(config, run_at=RUN_AT, as_of=as_of).tables
    known = tables.before(as_of)
    vocabulary = learn_vocabulary(
        known,
        as_of,
        max_values=config.features.vocabulary_max_values,
        min_customers=config.features.vocabulary_min_customers,
    )
    version = catalogue_version(
        feature_catalogue(known, settings=config.features, vocabulary=vocabulary)
    )
    marker = config_path.parent / "trained"
    if marker.exists() and marker.read_text().strip() == version:
        return
    if store.exists():
        print(f"features changed since the champions were trained ({version}): training again")
        store.unlink()
        shutil.rmtree(store.parent / "artifacts", ignore_errors=True)
    for task in config.tasks:
        started = time.perf_counter()
        result = train_task(config, task, as_of=as_of, tables=tables, backtest=False)
        # The registry's input example is built from training medians; a median repeat
        # purchase count may be fractional, which the BTYD model refuses.
        medians = result.bundle.feature_medians
        if medians.get("btyd_frequency") is not None:
            medians["btyd_frequency"] = float(np.floor(medians["btyd_frequency"]))
        registry.log_training_run(config, task, result, tables=tables)
        print(f"trained {task:<14} in {time.perf_counter() - started:5.0f} s")
    marker.write_text(f"{version}\n")


def _reference_seconds(config_path: Path) -> float:
    """Seconds to read the raw files with pyarrow (Parquet) or its CSV reader."""
    from pyarrow import csv

    config = yaml.safe_load(config_path.read_text())
    started = time.perf_counter()
    for table in config["data"].values():
        path = table["path"]
        if path.endswith(".parquet"):
            pq.read_table(path)
        else:
            csv.read_csv(path)
    return time.perf_counter() - started


def _child(config_path: Path, out: Path, reasons_for: str, report: Path) -> None:
    """Run the job (in the child process) and write its timings to ``report``."""
    from cxpredict.config import load_config
    from cxpredict.scoring import run_scoring

    config = load_config(config_path)
    started = time.perf_counter()
    run = run_scoring(
        config,
        as_of=pd.Timestamp(AS_OF, tz="UTC"),
        out_dir=out,
        run_at=RUN_AT,
        tracking_uri=config.mlflow.tracking_uri,
        reasons_for=reasons_for,
        progress=lambda stage: print(f"  {time.perf_counter() - started:6.1f} s  {stage}"),
    )
    lists = {name: pd.read_parquet(out / f"{name}.parquet") for name in run.rows_out}
    explained = {
        name: int((frame["reason_1"] != "").sum())
        for name, frame in lists.items()
        if TASKS[name]["kind"] != "preference"
    }
    report.write_text(
        json.dumps(
            {
                "total": time.perf_counter() - started,
                "timings": run.timings,
                "rows_in": run.rows_in,
                "rows_out": run.rows_out,
                "explained": explained,
                "drift_warnings": int((run.drift["status"] == "warn").sum()),
            }
        )
    )


def main(argv: list[str] | None = None) -> None:
    """Prepare data and champions, time the job in a child process, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--train-customers", type=int, default=10_000)
    parser.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    parser.add_argument("--reasons-for", choices=("top", "all"), default="top")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=HERE / "output" / "scoring")
    parser.add_argument("--child", nargs=3, metavar=("CONFIG", "OUT", "REPORT"))
    args = parser.parse_args(argv)
    if args.child:
        config, out, report = (Path(p) for p in args.child)
        _child(config, out, args.reasons_for, report)
        return

    work = args.workdir.resolve()
    store = work / "mlruns" / "mlflow.db"
    small = _raw_files(work / f"train-{args.train_customers}", args.train_customers, "parquet", 0)
    _train(_project(work / "train-project", small, "parquet", store), store)
    data = _raw_files(
        work / f"data-{args.customers}-{args.format}-{args.seed}",
        args.customers,
        args.format,
        args.seed,
    )
    config = _project(work / f"project-{args.customers}-{args.format}", data, args.format, store)
    out = work / f"scores-{args.customers}-{args.reasons_for}"
    report = work / "child.json"
    print(f"scoring {args.customers:,} customers as of {AS_OF} (reasons for {args.reasons_for})")
    started = time.perf_counter()
    command = [sys.executable, __file__, "--reasons-for", args.reasons_for, "--child"]
    subprocess.run([*command, str(config), str(out), str(report)], check=True)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = usage.ru_maxrss / 2**10  # kB on Linux
    cpu = usage.ru_utime + usage.ru_stime
    load = os.getloadavg()[0]
    figures = json.loads(report.read_text())
    reference = _reference_seconds(config)

    events = figures["rows_in"].get("orders", 0) + figures["rows_in"].get("interactions", 0)
    print()
    print(f"customers          {args.customers:>12,}")
    print(f"events read        {events:>12,}  (orders and interactions accepted)")
    for name, rows in figures["rows_out"].items():
        reasons = figures["explained"].get(name)
        extra = f", {reasons:,} with reasons" if reasons is not None else ""
        print(f"  {name:<16} {rows:>12,}  scored{extra}")
    print("stages")
    for stage, seconds in figures["timings"].items():
        print(f"  {stage:<30} {seconds:>8.1f} s")
    print(f"job (in the child) {figures['total']:>12.1f} s")
    print(f"wall incl. start   {wall:>12.1f} s  (target 90 s)")
    print(f"CPU time           {cpu:>12.1f} s  (user + system, all threads; load {load:.1f})")
    print(f"peak memory        {peak:>12,.0f} MB (target 6,144 MB)")
    print(f"drift warnings     {figures['drift_warnings']:>12,}")
    print(f"reference          {reference:>12.1f} s  (read the raw files with pyarrow)")
    print(f"ratio to reference {wall / reference:>12.1f} x")
    print(f"outputs            {out}")


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    main()
