"""Feature pipeline benchmark: wall time, throughput and peak memory, with references.

Scenarios, each run in its own child process (spawned) so that peak RSS is its own:

- ``full_1_cutoff``: every family at one cutoff (``build_features``);
- ``full_12_cutoffs``: a training set at 12 monthly cutoffs (``build_training_features``);
- ``rfm_duckdb``: a plain DuckDB query computing only the RFM subset at one cutoff (orders and
  net spend per window and lifetime, order value mean and max, days since first and last
  order: the same numbers as those features of the full build, which a test checks);
- ``rfm_pandas``: the same RFM subset with idiomatic pandas ``groupby``.

Columns: wall time of the scenario, events (orders + interactions) per second, customers per
second (distinct customers in the output), rows per second (customer x cutoff rows) and the
child's peak RSS, which includes the input tables it read. The progress line of each scenario
also gives its CPU seconds (all threads) and the machine's load averages: on a shared machine
the wall times move with the other jobs, the CPU seconds much less.

Data come from :func:`cxpredict.sample.generate_sample`, written once to Parquet and read by
each child (reading time is not counted; its memory is, in peak RSS). Handing the frames to
DuckDB as Arrow tables is counted in both the full builds and the DuckDB reference. Ratios
printed: full/plain-RFM (same cutoff, same data) and pandas/DuckDB for the RFM subset.

With ``--repeat N`` the scenarios run in N rounds, one after the other within each round, so
that each round compares runs made within a minute of each other. The table then gives the
median wall time of each scenario with its range, and each ratio is taken within every round
and reported as the median and range of the N ratios.

Usage::

    python benchmarks/bench_features.py                      # 500k customers, ~9M events
    python benchmarks/bench_features.py --repeat 3           # three rounds, medians and ranges
    python benchmarks/bench_features.py --customers 50000    # quicker
    python benchmarks/bench_features.py --two-line-orders    # orders grouped by id
    python benchmarks/bench_features.py --parquet --memory-limit 1GB --events 50000000

The sample has one line per order, so the full build reads its orders off the lines (after
checking that no order id repeats) where the references group the lines by order; with
``--two-line-orders`` every order has two lines and the full build groups them too.

The ``--parquet`` mode writes the sample in chunks to Parquet folders, then builds one cutoff
from the files with DuckDB's memory limit, spilling to a temporary directory.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

CUTOFF = "2025-12-01"
WINDOWS = (7, 30, 90, 180, 365)
TARGETS = {"full_1_cutoff": 5.0, "full_12_cutoffs": 30.0}
RSS_TARGET_GB = 3.0


def _peak_rss_gb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _load() -> str:
    """The 1, 5 and 15 minute load averages: other jobs on the machine slow the wall times."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _read(folder: Path) -> Any:
    from cxpredict.schemas import Tables

    frames = {
        name: pd.read_parquet(folder / f"{name}.parquet")
        for name in ("orders", "interactions", "customers")
    }
    return Tables(frames["orders"], frames["interactions"], frames["customers"])


def _rfm_duckdb(tables: Any, cutoff: pd.Timestamp) -> pd.DataFrame:
    """The RFM subset as one hand-written DuckDB query, in two grouping steps.

    As in the features, an order counts in a window when its first purchase line (amount >= 0)
    is in it: the lines are first reduced to one row per order (first and latest purchase
    instant, purchase value, net amount per window), then to one row per customer. Written
    with ``count(DISTINCT order_id) FILTER (...)`` per window instead, DuckDB keeps a set of
    order ids per customer and window, which made this reference three times slower for the
    same numbers. One difference with the features: an order with lines on both sides of the
    cutoff has its value from the lines before it, where ``order_value_max`` waits for its
    last line (the benchmark's orders have one instant each).
    """
    import duckdb

    from cxpredict.features.engine import arrow_table

    cut = cutoff.value // 1000
    day = 86_400_000_000
    per_order = [
        "max(us) FILTER (WHERE amount >= 0) AS last_purchase",
        "min(us) FILTER (WHERE amount >= 0) AS first_purchase",
        "sum(amount) AS spend",
        "sum(amount) FILTER (WHERE amount >= 0) AS purchase_value",
    ]
    per_customer = []
    for w in WINDOWS:
        since = cut - w * day
        per_order.append(f"sum(amount) FILTER (WHERE us >= {since}) AS spend_{w}d")
        per_customer.append(f"count(*) FILTER (WHERE first_purchase >= {since}) AS orders_{w}d")
        per_customer.append(f"sum(spend_{w}d) AS spend_{w}d")
    per_customer += [
        "count(last_purchase) AS orders_lifetime",
        "sum(spend) AS spend_lifetime",
        f"({cut} - min(first_purchase)) / {day} AS days_since_first_order",
        f"({cut} - max(last_purchase)) / {day} AS days_since_last_order",
        "sum(purchase_value) / count(last_purchase) AS order_value_mean",
        "max(purchase_value) AS order_value_max",
    ]
    con = duckdb.connect()
    con.register("orders_arrow", arrow_table(tables.orders))
    sql = (
        f"SELECT customer_id, {', '.join(per_customer)} FROM (SELECT customer_id, "
        f"{', '.join(per_order)} FROM (SELECT customer_id, order_id, amount, "
        f"epoch_us(timestamp) AS us FROM orders_arrow) WHERE us < {cut} "
        "GROUP BY customer_id, order_id) GROUP BY customer_id"
    )
    frame = con.execute(sql).df().set_index("customer_id").sort_index()
    con.close()
    return frame


def _rfm_pandas(tables: Any, cutoff: pd.Timestamp) -> pd.DataFrame:
    orders = tables.orders
    orders = orders[orders["timestamp"] < cutoff]
    purchases = orders[orders["amount"] >= 0]
    per_order = purchases.groupby(["customer_id", "order_id"]).agg(
        first=("timestamp", "min"), value=("amount", "sum")
    )
    out = {}
    for w in WINDOWS:
        start = cutoff - pd.Timedelta(days=w)
        recent = orders[orders["timestamp"] >= start]
        out[f"orders_{w}d"] = (per_order["first"] >= start).groupby(level=0).sum()
        out[f"spend_{w}d"] = recent.groupby("customer_id")["amount"].sum()
    grouped = purchases.groupby("customer_id")["timestamp"]
    out["orders_lifetime"] = per_order.groupby(level=0).size()
    out["spend_lifetime"] = orders.groupby("customer_id")["amount"].sum()
    out["days_since_first_order"] = (cutoff - grouped.min()) / pd.Timedelta(days=1)
    out["days_since_last_order"] = (cutoff - grouped.max()) / pd.Timedelta(days=1)
    values = per_order["value"].groupby(level=0)
    out["order_value_mean"] = values.mean()
    out["order_value_max"] = values.max()
    return pd.DataFrame(out).sort_index()


def _scenario(name: str, source: str, options: dict[str, Any], queue: Any) -> None:
    from cxpredict.config import FeaturesConfig
    from cxpredict.features import build_features, build_training_features
    from cxpredict.spine import training_cutoffs

    cutoff = pd.Timestamp(CUTOFF, tz="UTC")
    settings = FeaturesConfig(
        duckdb_memory_limit=options.get("memory_limit"),
        duckdb_threads=options.get("threads"),
        duckdb_temp_directory=options.get("temp_directory"),
    )
    if options.get("parquet"):
        tables: Any = {n: Path(source) / n for n in ("orders", "interactions", "customers")}
    else:
        tables = _read(Path(source))
    start, cpu = time.perf_counter(), time.process_time()
    if name == "full_1_cutoff":
        frame = build_features(tables, cutoff, settings=settings)
    elif name == "full_12_cutoffs":
        cutoffs = training_cutoffs(cutoff, n=12, step_days=30)
        frame = build_training_features(tables, cutoffs, settings=settings)
    elif name == "rfm_duckdb":
        frame = _rfm_duckdb(tables, cutoff)
    elif name == "rfm_pandas":
        frame = _rfm_pandas(tables, cutoff)
    else:
        raise ValueError(name)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    queue.put(
        {
            "scenario": name,
            "seconds": seconds,
            "cpu_seconds": cpu,
            "rows": len(frame),
            "columns": frame.shape[1],
            "customers": frame.index.get_level_values(0).nunique(),
            "peak_rss_gb": _peak_rss_gb(),
        }
    )


def _run(name: str, source: str, options: dict[str, Any]) -> dict[str, Any]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_scenario, args=(name, source, options, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def _two_line_orders(orders: pd.DataFrame) -> pd.DataFrame:
    """Orders of two lines: every two consecutive lines of a customer (in time order) share
    one order id, so that the lines of an order are placed at different instants and the
    build must group the lines by order (the sample has one line per order)."""
    ordered = orders.sort_values(["customer_id", "timestamp"], kind="stable")
    pair = ordered.groupby("customer_id").cumcount() // 2
    ordered = ordered.assign(order_id=ordered["customer_id"] + "-" + pair.astype(str))
    return ordered.sort_index()


def _write_sample(
    folder: Path, customers: int, seed: int, *, two_line_orders: bool = False
) -> tuple[int, int]:
    from cxpredict.sample import generate_sample

    tables = generate_sample(customers, seed=seed, start="2024-01-01", days=730)
    for name in ("orders", "interactions", "customers"):
        frame = tables.get(name)
        if name == "orders" and two_line_orders:
            frame = _two_line_orders(frame)
        frame.to_parquet(folder / f"{name}.parquet", index=False)
    return len(tables.orders), len(tables.interactions)


def _write_chunks(folder: Path, events: int, seed: int) -> tuple[int, int, int]:
    """Sample chunks of 250k customers (distinct id prefixes) until ``events`` are written."""
    from cxpredict.sample import generate_sample

    orders = interactions = customers = chunk = 0
    for name in ("orders", "interactions", "customers"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    while orders + interactions < events:
        tables = generate_sample(250_000, seed=seed + chunk, start="2024-01-01", days=730)
        for name in ("orders", "interactions", "customers"):
            frame = tables.get(name)
            frame = frame.assign(customer_id=f"K{chunk:03d}-" + frame["customer_id"])
            if name == "orders":
                frame = frame.assign(order_id=f"K{chunk:03d}-" + frame["order_id"])
            frame.to_parquet(folder / name / f"part-{chunk:03d}.parquet", index=False)
        orders += len(tables.orders)
        interactions += len(tables.interactions)
        customers += 250_000
        chunk += 1
        print(f"  chunk {chunk}: {orders + interactions:,} events", flush=True)
        del tables
    return orders, interactions, customers


def _spread(values: list[float], digits: int, unit: str) -> str:
    """The median of ``values``, with their range when there are several."""
    median = f"{statistics.median(values):.{digits}f}{unit}"
    if len(values) == 1:
        return median
    return f"{median} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def _print(rounds: list[list[dict[str, Any]]], events: int, *, targets: bool = True) -> None:
    """The table of medians over ``rounds`` and the ratios taken within each round."""
    several = len(rounds) > 1
    print(
        f"\n{'scenario':<18}{'wall s':>9}{'events/s':>12}{'customers/s':>13}{'rows/s':>11}"
        f"{'peak RSS GB':>13}"
        f"{'rows':>11}{'cols':>6}{'target':>16}" + ("  wall range s" if several else "")
    )
    for first in rounds[0]:
        name = first["scenario"]
        runs = [r for results in rounds for r in results if r["scenario"] == name]
        seconds = statistics.median(r["seconds"] for r in runs)
        target = TARGETS.get(name) if targets else None
        note = f"<= {target:.0f} s" if target else ""
        if name == "full_1_cutoff" and targets:
            note += f", < {RSS_TARGET_GB:.0f} GB"
        walls = [r["seconds"] for r in runs]
        spread = f"  {min(walls):.2f}-{max(walls):.2f}" if several else ""
        print(
            f"{name:<18}{seconds:>9.2f}{events / seconds:>12,.0f}"
            f"{first['customers'] / seconds:>13,.0f}{first['rows'] / seconds:>11,.0f}"
            f"{max(r['peak_rss_gb'] for r in runs):>13.2f}{first['rows']:>11,}"
            f"{first['columns']:>6}{note:>16}{spread}"
        )
    ratios: dict[str, list[float]] = {"full": [], "pandas": []}
    for results in rounds:
        by = {r["scenario"]: r["seconds"] for r in results}
        if "rfm_duckdb" in by and "full_1_cutoff" in by:
            ratios["full"].append(by["full_1_cutoff"] / by["rfm_duckdb"])
        if "rfm_duckdb" in by and "rfm_pandas" in by:
            ratios["pandas"].append(by["rfm_pandas"] / by["rfm_duckdb"])
    within = f", each within one of {len(rounds)} rounds" if several else ""
    if ratios["full"]:
        print(
            f"\nfull / plain-RFM (1 cutoff): {_spread(ratios['full'], 2, 'x')} "
            f"(target <= 3x{within})"
        )
    if ratios["pandas"]:
        print(f"pandas / duckdb (RFM subset): {_spread(ratios['pandas'], 2, 'x')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=500_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--memory-limit", default=None)
    parser.add_argument("--parquet", action="store_true", help="build from Parquet files")
    parser.add_argument("--events", type=int, default=50_000_000, help="events in --parquet mode")
    parser.add_argument(
        "--scenarios", default="full_1_cutoff,full_12_cutoffs,rfm_duckdb,rfm_pandas"
    )
    parser.add_argument("--keep", help="write the data here and keep them")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of the scenarios (medians and ranges)"
    )
    parser.add_argument(
        "--two-line-orders",
        action="store_true",
        help="orders of two lines at different instants (the sample: one line an order)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cxpredict-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"memory_limit": args.memory_limit, "threads": args.threads}
    try:
        start = time.perf_counter()
        if args.parquet:
            orders, interactions, customers = _write_chunks(folder, args.events, args.seed)
            options["parquet"] = True
            options["temp_directory"] = str(folder / "spill")
            scenarios = ["full_1_cutoff"]
        else:
            orders, interactions = _write_sample(
                folder, args.customers, args.seed, two_line_orders=args.two_line_orders
            )
            customers = args.customers
            scenarios = args.scenarios.split(",")
        print(
            f"data: {customers:,} customers, {orders:,} orders, {interactions:,} interactions "
            f"({time.perf_counter() - start:.0f} s to generate); {os.cpu_count()} cores; "
            f"DuckDB memory limit {args.memory_limit or 'default'}",
            flush=True,
        )
        rounds = []
        for number in range(args.repeat):
            if args.repeat > 1:
                print(f"round {number + 1} of {args.repeat}", flush=True)
            results = []
            for name in scenarios:
                result = _run(name, str(folder), options)
                print(
                    f"  {name}: {result['seconds']:.2f} s wall, {result['cpu_seconds']:.2f} s "
                    f"CPU (all threads), load {_load()}",
                    flush=True,
                )
                results.append(result)
            rounds.append(results)
        # The targets are for the in-memory 500k-customer sample, not for the spill path.
        _print(rounds, orders + interactions, targets=not args.parquet)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
