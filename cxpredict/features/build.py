"""Building feature frames: one cutoff for scoring, many cutoffs for training.

Both go through the same code: the engine computes every family over the sorted cutoff list
in one pass, and a single-cutoff frame is the multi-cutoff frame at that cutoff. Rows are the
customers known before each cutoff (first order or signup strictly before it).
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxpredict.config import FeaturesConfig
from cxpredict.errors import DataError, ExtensionError, OutOfMemory
from cxpredict.features import (
    basket,
    btyd,
    care,
    engagement,
    preferences,
    rfm,
    rhythm,
    season,
    tenure,
)
from cxpredict.features.engine import (
    Aggregate,
    Availability,
    Block,
    PerCutoff,
    Request,
    Results,
    Session,
    TableSource,
    cutoff_micros,
    run,
    small_pages,
)
from cxpredict.features.extensions import (
    Extension,
    PythonFeature,
    extension_definitions,
    python_columns,
    resolve_extensions,
    sql_fills,
    sql_requests,
    sql_values,
)
from cxpredict.features.family import Context, Family, FeatureDef
from cxpredict.features.vocabulary import Vocabulary, learn_in_session
from cxpredict.schemas import Tables

#: The built-in families, in column order.
FAMILIES: tuple[Family, ...] = (
    rfm.FAMILY,
    rhythm.FAMILY,
    basket.FAMILY,
    preferences.FAMILY,
    engagement.FAMILY,
    care.FAMILY,
    tenure.FAMILY,
    btyd.FAMILY,
    season.FAMILY,
)

TablesLike = Tables | Mapping[str, TableSource | None]


def build_features(
    tables: TablesLike,
    cutoff: Any,
    *,
    settings: FeaturesConfig = FeaturesConfig(),
    vocabulary: Vocabulary | None = None,
    extensions: Sequence[Extension] = (),
    temp_directory: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Features of every customer known before ``cutoff``, from the events before it.

    Window: events with ``timestamp < cutoff`` (windowed features: the last ``w`` days,
    ``[cutoff - w days, cutoff)``); answers given at or after the cutoff count as not given;
    customer attributes as known before it.

    Parameters
    ----------
    tables
        Canonical tables (:class:`~cxpredict.schemas.Tables`), or a mapping from table name to
        a pandas frame, an Arrow table or a canonical Parquet file or folder.
    cutoff
        The instant; a naive value is read as UTC.
    settings
        Windows, SQL and Python extensions, DuckDB limits and spill folder, and the cap on
        the vocabulary learned when ``vocabulary`` is ``None``.
    vocabulary
        The categorical values to one-hot; learned before ``cutoff`` (at most
        ``settings.vocabulary_max_values`` per column) when ``None``. Pass the training
        vocabulary when scoring so that the columns match.
    extensions
        :class:`SqlFeature` and :class:`PythonFeature` objects added to those of ``settings``.
    temp_directory
        Where DuckDB spills when the data exceed ``settings.duckdb_memory_limit``; overrides
        ``settings.duckdb_temp_directory``.

    Returns
    -------
    pandas.DataFrame
        One float64 row per customer, indexed by the string ``customer_id`` (sorted), columns
        in catalogue order.
    """
    if isinstance(cutoff, list | tuple | set | np.ndarray | pd.Index):
        raise TypeError("build_features takes one cutoff; for several, use build_training_features")
    frame = _build(
        tables,
        [cutoff],
        settings=settings,
        vocabulary=vocabulary,
        extensions=extensions,
        temp_directory=temp_directory,
    )
    return frame.droplevel("cutoff")


def build_training_features(
    tables: TablesLike,
    cutoffs: Sequence[Any],
    *,
    settings: FeaturesConfig = FeaturesConfig(),
    vocabulary: Vocabulary | None = None,
    extensions: Sequence[Extension] = (),
    temp_directory: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Features at each of ``cutoffs``, in one pass over the data.

    Window: at each cutoff, the events strictly before it, exactly as :func:`build_features`
    at that cutoff (the values are identical).

    Parameters
    ----------
    cutoffs
        The instants; duplicates are dropped.
    vocabulary
        Learned before the latest cutoff when ``None``.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``(customer_id, cutoff)``, rows ordered by cutoff then customer; one row
        per customer known before each cutoff.
    """
    return _build(
        tables,
        cutoffs,
        settings=settings,
        vocabulary=vocabulary,
        extensions=extensions,
        temp_directory=temp_directory,
    )


def _check_numeric_attributes(vocabulary: Vocabulary, available: Availability) -> None:
    """A vocabulary's numeric attributes must be numbers in the tables it is used with."""
    kinds = dict(available.attributes)
    text = [c for c in vocabulary.numeric if kinds.get(c) == "categorical"]
    if text:
        raise DataError(
            f"customers: attribute {text[0]!r} holds text here, but the vocabulary (the "
            "model's, when scoring) reads it as a number; give it as numbers (list it under "
            "data.customers.numeric for a CSV file)",
            table="customers",
            column=text[0],
        )


def available_definitions(ctx: Context, extensions: Sequence[Extension]) -> list[FeatureDef]:
    """Every catalogue entry, built-in families first, then extensions."""
    defs = [d for family in FAMILIES for d in family.definitions(ctx)]
    defs += extension_definitions(ctx, extensions)
    names = [d.name for d in defs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        families = sorted({d.family for d in defs if d.name in set(duplicated)})
        if families == ["tenure"]:
            raise DataError(
                f"customers: feature names defined twice: {duplicated}; two attribute columns "
                "have the same name once lower-cased and slugged: rename one of them",
                table="customers",
            )
        raise ExtensionError(f"feature names defined twice: {duplicated}; rename the extension")
    return defs


def _build(
    tables: TablesLike,
    cutoffs: Sequence[Any],
    *,
    settings: FeaturesConfig,
    vocabulary: Vocabulary | None,
    extensions: Sequence[Extension],
    temp_directory: str | os.PathLike[str] | None,
) -> pd.DataFrame:
    micros = cutoff_micros(cutoffs)
    chosen = resolve_extensions(settings, extensions)
    with small_pages():
        return _build_in(tables, micros, settings, vocabulary, chosen, temp_directory)


def _build_in(
    tables: TablesLike,
    micros: np.ndarray,
    settings: FeaturesConfig,
    vocabulary: Vocabulary | None,
    chosen: Sequence[Extension],
    temp_directory: str | os.PathLike[str] | None,
) -> pd.DataFrame:
    s = Session(
        tables,
        threads=settings.duckdb_threads,
        memory_limit=settings.duckdb_memory_limit,
        temp_directory=temp_directory or settings.duckdb_temp_directory,
    )
    try:
        available = s.availability()
        if vocabulary is None:
            vocabulary = learn_in_session(
                s,
                available,
                int(micros[-1]),
                max_values=settings.vocabulary_max_values,
                min_customers=settings.vocabulary_min_customers,
            )
        _check_numeric_attributes(vocabulary, available)
        ctx = Context(settings, vocabulary, available)
        defs = available_definitions(ctx, chosen)
        # Each family's requests, then the SQL extensions' (also what each step of the
        # assembly still reads).
        steps = [list(family.requests(ctx)) for family in FAMILIES]
        steps.append(sql_requests(ctx, chosen))
        requests = [r for step in steps for r in step]
        s.prepare(int(micros[-1]))
        fills = sql_fills(s, ctx, chosen)
        declared = {c for e in chosen if isinstance(e, PythonFeature) for c in e.columns}
        columns = [d.name for d in defs if d.available and d.name not in declared]
        results = run(s, micros, requests)
    except BaseException:
        s.close()
        raise
    # DuckDB returns its memory while the frame is assembled.
    with s.closing_behind():
        needs = [_names(step) for step in steps]
        workers = _workers(settings.duckdb_threads)
        return _assemble(tables, ctx, results, defs, chosen, fills, columns, needs, workers)


#: From this many bytes, the output block's memory is obtained by two helper threads.
_TWO_HELPERS_FROM = 1 << 30


def available_memory(
    meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """Bytes the process can still obtain: Linux's ``MemAvailable``, capped by the cgroup's
    memory limit when there is one; ``None`` where neither can be read."""
    try:
        found = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo.read_text(), re.M)
    except OSError:
        return None
    if found is None:
        return None
    available = int(found.group(1)) * 1024
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup / "memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def _check_memory(rows: int, columns: int, releasable: int) -> None:
    """Refuse an output that cannot fit, before writing it (the kernel would kill the process
    part way instead). The fetched values (``releasable`` bytes) are freed as it is filled."""
    need = rows * columns * 8
    available = available_memory()
    if available is None or need <= available + releasable:
        return
    raise OutOfMemory(
        f"features: the output needs {need / 1e9:.1f} GB ({rows:,} rows x {columns} columns of "
        f"float64) and {available / 1e9:.1f} GB are available (with "
        f"{releasable / 1e9:.1f} GB freed on the way); build fewer cutoffs at once "
        "(training.n_cutoffs, or several calls of build_training_features), fewer customers, "
        "or on a machine with more memory"
    )


class _Output:
    """The output block, its memory obtained by helper threads.

    The float64 output is as large as everything else together, and a fresh page of memory
    costs time when it is first written. While the main thread fills the columns in order,
    helper threads write the pages of the columns from the last one backwards (NumPy releases
    the interpreter lock meanwhile); each column is first written by one thread only. A large
    block gets two helpers: on virtual machines two threads obtaining fresh pages at once can
    be several times faster per page than one, and the main thread is mostly computing.
    """

    def __init__(self, columns: Sequence[str]):
        self.columns = list(columns)
        self.block = np.empty((0, 0))
        self._claimed = [False] * len(self.columns)
        self._done = threading.Condition()
        self._busy: set[int] = set()
        self._threads: list[threading.Thread] = []

    def allocate(self, rows: int) -> np.ndarray:
        """Allocate the block of ``rows`` rows and start the helpers."""
        self.block = np.empty((len(self.columns), rows), dtype=np.float64)
        helpers = 2 if self.block.nbytes >= _TWO_HELPERS_FROM else 1
        self._threads = [
            threading.Thread(target=self._touch, name=f"cxpredict-output-{i}", daemon=True)
            for i in range(helpers)
        ]
        for thread in self._threads:
            thread.start()
        return self.block

    def _touch(self) -> None:
        for k in reversed(range(len(self.columns))):
            with self._done:
                if self._claimed[k]:
                    continue
                self._claimed[k] = True
                self._busy.add(k)
            self.block[k] = 0.0
            with self._done:
                self._busy.discard(k)
                self._done.notify_all()

    def column(self, k: int) -> np.ndarray:
        """Column ``k`` of the block, to be written by the caller."""
        with self._done:
            self._claimed[k] = True
            while k in self._busy:
                self._done.wait()
        return self.block[k]

    def close(self) -> None:
        """Stop the helpers."""
        with self._done:
            self._claimed = [True] * len(self.columns)
        for thread in self._threads:
            thread.join()
        self._threads = []


#: Up to this many cutoffs, a block's rows are copied cutoff by cutoff (contiguous runs);
#: beyond, in one scatter (fewer Python steps).
_RUNS_UP_TO = 16

Places = tuple[list[tuple[int, int]] | np.ndarray, Any]


def _places(population: np.ndarray, blocks: Iterable[Block]) -> list[Places]:
    """Where the cells of each block of customers go in the output rows.

    The output is in cutoff-major order with the customers sorted within each cutoff, so the
    known cells of a block at one cutoff are one run of rows, and read cutoff by cutoff they
    go to increasing rows. For each block: its ``(start, stop)`` run at each cutoff (or, with
    many cutoffs, the row of each known cell) and the mask of its known cells (``None`` when
    every cell is known).
    """
    n_cutoffs = population.shape[0]
    starts = np.concatenate([[0], np.cumsum(population.sum(axis=1))])[:-1, None]
    before = np.zeros((n_cutoffs, 1), dtype=np.int64)
    out: list[Places] = []
    for part in blocks:
        known = population[:, part.lo : part.hi]
        ranks = np.cumsum(known, axis=1, dtype=np.int64)
        inside = ranks[:, -1:] if ranks.shape[1] else np.zeros_like(before)
        mask = None if known.all() else known
        if n_cutoffs <= _RUNS_UP_TO:
            first = (starts + before)[:, 0]
            runs = [(int(a), int(a + n)) for a, n in zip(first, inside[:, 0], strict=True)]
            out.append((runs, mask))
        else:
            out.append(((starts + before + ranks - 1)[known], mask))
        before += inside
    return out


def _names(requests: Sequence[Request]) -> set[str]:
    return {r.name for r in requests if isinstance(r, Aggregate | PerCutoff)}


#: At most this many threads compute the feature blocks at once.
_FILL_WORKERS_MAX = 4


def _workers(threads: int | None) -> int:
    """Threads computing the feature blocks: DuckDB's ``threads`` setting when given, else
    one per core (at most :data:`_FILL_WORKERS_MAX`)."""
    return max(1, min(_FILL_WORKERS_MAX, threads or os.cpu_count() or 1))


def _each(pool: ThreadPoolExecutor, work: Callable[[Block], None], parts: Iterable[Block]) -> None:
    """Run ``work`` on every block in ``pool``; the first error is raised once all stopped."""
    futures = [pool.submit(work, part) for part in parts]
    try:
        for future in futures:
            future.result()
    except BaseException:
        for future in futures:
            future.cancel()
        wait(futures)
        raise


def _fill(
    ctx: Context,
    results: Results,
    extensions: Sequence[Extension],
    fills: Mapping[str, float],
    output: _Output,
    position: Mapping[str, int],
    places: Sequence[Places],
    needs: Sequence[set[str]],
    workers: int = 1,
) -> None:
    """Compute every family block by block and copy each array into its output column.

    ``needs`` holds the aggregates each family reads, then those of the SQL extensions;
    ``workers`` threads compute blocks at once.
    """
    filled: set[str] = set()

    def put(number: int, name: str, dense: np.ndarray) -> None:
        if name not in position:
            return
        filled.add(name)
        rows, known = places[number]
        row = output.column(position[name])
        if isinstance(rows, np.ndarray):
            row[rows] = dense.reshape(-1) if known is None else dense[known]
            return
        for j, (start, stop) in enumerate(rows):
            if known is None or stop - start == dense.shape[1]:
                row[start:stop] = dense[j]
            elif stop > start:
                row[start:stop] = dense[j][known[j]]

    def family_block(family: Family, part: Block) -> None:
        for name, dense in family.compute(ctx, part):
            put(part.number, name, np.broadcast_to(dense, part.shape))

    def sql_block(part: Block) -> None:
        for name, dense in sql_values(ctx, part, extensions, fills).items():
            put(part.number, name, dense)

    # Blocks hold distinct customers, hence distinct output rows: two threads fill them at
    # once (NumPy computes without the interpreter lock). The aggregates each later step
    # still reads: the others are dropped as soon as possible, so that their memory is reused
    # by the output instead of adding to it.
    with ThreadPoolExecutor(workers, thread_name_prefix="cxpredict-fill") as pool:
        for k, family in enumerate(FAMILIES):
            _each(pool, functools.partial(family_block, family), results.blocks())
            results.release(set().union(*needs[k + 1 :]))
        _each(pool, sql_block, results.blocks())
    if len(filled) != len(position):
        missing = sorted(set(position) - filled)
        raise RuntimeError(f"features listed as available but not computed: {missing}")


def _assemble(
    tables: TablesLike,
    ctx: Context,
    results: Results,
    defs: Sequence[FeatureDef],
    extensions: Sequence[Extension],
    fills: Mapping[str, float],
    columns: Sequence[str],
    needs: Sequence[set[str]],
    workers: int = 1,
) -> pd.DataFrame:
    python = [e for e in extensions if isinstance(e, PythonFeature)]
    position = {name: k for k, name in enumerate(columns)}
    # Rows in cutoff-major order, customers sorted within each cutoff.
    population = results.population
    jj, ii = np.nonzero(population)
    _check_memory(len(ii), len(columns), results.nbytes)
    places = _places(population, results.blocks())
    output = _Output(columns)
    block = output.allocate(len(ii))
    try:
        _fill(ctx, results, extensions, fills, output, position, places, needs, workers)
    finally:
        output.close()

    stamps = pd.DatetimeIndex(
        pd.to_datetime(results.cutoffs, unit="us", utc=True), name="cutoff"
    ).as_unit("us")
    ids = pd.Index(results.customer_ids, dtype="str", name="customer_id")
    # Both levels hold distinct values by construction: pandas need not check them.
    index = pd.MultiIndex(
        levels=[ids, stamps],
        codes=[ii, jj],
        names=["customer_id", "cutoff"],
        verify_integrity=False,
    )
    frame = pd.DataFrame(block.T, index=index, columns=list(columns), copy=False)
    if python:
        python_columns(frame, tables, python, stamps)
        order = [d.name for d in defs if d.available]
        frame = frame[order + [c for c in frame.columns if c not in set(order)]]
    return frame
