"""How fast the synthetic sample is generated, against a floor measured in the same run.

The floor (reference) draws one uniform instant per event and sorts them: no generator that
places and orders the same number of events can beat it by much. The ratio says how far the
full generator (customers, lapse simulation, orders, contacts, string columns) is from it.

    .venv/bin/python benchmarks/bench_sample.py --customers 500000
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np

from cxpredict.sample import generate_sample


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _reference_seconds(events: int, seed: int) -> float:
    """Seconds to draw ``events`` uniform instants and sort them (the floor)."""
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    instants = rng.random(events)
    np.argsort(instants)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    """Time ``generate_sample`` and print events per second, CPU time and peak memory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=500_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--days", type=int, default=730)
    args = parser.parse_args(argv)

    wall, cpu = time.perf_counter(), time.process_time()
    tables = generate_sample(args.customers, seed=args.seed, days=args.days)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    orders = len(tables.orders)
    interactions = 0 if tables.interactions is None else len(tables.interactions)
    events = orders + interactions
    peak = _peak_rss_mb()
    reference = _reference_seconds(events, args.seed)

    print(f"customers          {args.customers:>14,}")
    print(f"orders             {orders:>14,}")
    print(f"interactions       {interactions:>14,}")
    print(f"wall time          {wall:>14.2f} s")
    print(f"cpu time           {cpu:>14.2f} s  (user + system, this process)")
    print(f"events per second  {events / wall:>14,.0f}  (wall)")
    print(f"events per second  {events / cpu:>14,.0f}  (cpu)")
    print(f"peak memory        {peak:>14,.0f} MB")
    print(f"reference          {reference:>14.2f} s  (draw and sort {events:,} instants)")
    print(f"ratio to reference {wall / reference:>14.1f} x")


if __name__ == "__main__":
    main()
