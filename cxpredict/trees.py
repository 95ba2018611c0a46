"""The trees of a LightGBM model as vectorised decisions: scores and exact contributions.

LightGBM walks each row down each tree one node at a time. A tree of 15 leaves has 14 splits,
so a row's way through it is 14 bits, one per split (does the row go left there?); every
bit pattern leads to exactly one leaf. Computing the bits column by column for all rows at
once and reading the leaf from a table indexed by the pattern gives the same leaf as
LightGBM's walk, several times faster, and exact contributions can be computed once per
distinct pattern instead of once per row.

Decisions follow LightGBM's own (``Tree::NumericalDecision``): an input within ``1e-35`` of
zero is zero; a missing value goes the split's default way when the split treats missing
values as such (``NaN``; ``Zero`` also sends zeros that way) and is read as zero otherwise;
then ``value <= threshold`` goes left; at a categorical split, the listed categories go left
and anything else (missing, negative, unseen) right. Models these tables cannot represent
(linear trees, several trees per iteration, random forests, trees of more than 16 splits) are
left to LightGBM, as are models whose tables would exceed :data:`MAX_TABLE_BYTES`:
:func:`booster_tables` returns ``None`` for them.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import lightgbm as lgb
import numpy as np

#: LightGBM's ``kZeroThreshold`` (the float ``1e-35f``): inputs this close to zero are zero.
ZERO = float(np.float32(1e-35))
#: Splits per tree up to which a tree is kept as a table of its leaves (2**16 entries).
MAX_SPLITS = 16
#: Memory the leaf tables of one model may take (a tree of 15 leaves takes 128 KiB).
MAX_TABLE_BYTES = 256 * 2**20
#: Rows below which a matrix is not shared out between threads.
ROWS_PER_THREAD = 20_000


def cores() -> int:
    """The cores this process may run on (``sched_getaffinity`` is Linux only)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def by_rows(function: Callable[..., np.ndarray], *arrays: np.ndarray) -> np.ndarray:
    """``function`` over blocks of the arrays' rows, one block per core, concatenated.

    Every row is computed as it would be alone, so the result does not depend on the number
    of blocks. NumPy and LightGBM release the interpreter lock in their loops.
    """
    n_rows = len(arrays[0])
    threads = min(cores(), n_rows // ROWS_PER_THREAD)
    if threads <= 1:
        return function(*arrays)
    bounds = np.linspace(0, n_rows, threads + 1).astype(int)
    blocks = [
        [a[start:end] for a in arrays] for start, end in zip(bounds, bounds[1:], strict=False)
    ]
    with ThreadPoolExecutor(threads) as pool:
        return np.concatenate(list(pool.map(lambda block: function(*block), blocks)))


class Columns:
    """A float matrix by column, as LightGBM's decisions read it.

    Columns are prepared when a split first reads them (a frame's matrix is stored by column,
    so this is usually no copy at all).

    Parameters
    ----------
    X
        ``(rows, features)`` float matrix, the columns in the model's order.
    """

    def __init__(self, X: np.ndarray) -> None:
        self._matrix = np.asarray(X, dtype=np.float64)
        self._columns: dict[int, np.ndarray] = {}
        self._zeroed: dict[int, np.ndarray] = {}
        self._wholes: dict[int, np.ndarray] = {}

    @property
    def n_rows(self) -> int:
        """Rows of the matrix."""
        return self._matrix.shape[0]

    def column(self, feature: int) -> np.ndarray:
        """One feature's values, contiguous, a value within ``1e-35`` of zero read as zero."""
        if feature not in self._columns:
            values = np.ascontiguousarray(self._matrix[:, feature])
            tiny = (np.abs(values) <= ZERO) & (values != 0.0)
            if tiny.any():  # as LightGBM reads its input rows
                values = np.where(tiny, 0.0, values)
            self._columns[feature] = values
        return self._columns[feature]

    def _whole(self, feature: int) -> np.ndarray:
        """The feature's values truncated to whole numbers, as a category is read."""
        if feature not in self._wholes:
            self._wholes[feature] = np.trunc(self.column(feature))
        return self._wholes[feature]

    def _as_zero(self, feature: int) -> np.ndarray:
        """The feature's values with a missing value read as zero."""
        if feature not in self._zeroed:
            values = self.column(feature)
            missing = np.isnan(values)
            self._zeroed[feature] = np.where(missing, 0.0, values) if missing.any() else values
        return self._zeroed[feature]

    def goes_left(self, node: Mapping[str, Any], *, feature: int | None = None) -> np.ndarray:
        """Whether each row goes left at a split node (``feature``: the column to read)."""
        feature = node["split_feature"] if feature is None else feature
        if node["decision_type"] == "==":  # the categories listed go left, anything else right
            categories = [float(c) for c in str(node["threshold"]).split("||")]
            whole = self._whole(feature)  # NaN stays NaN and goes right
            if len(categories) > 8:
                return np.isin(whole, categories)
            left = whole == categories[0]
            for category in categories[1:]:
                left |= whole == category
            return left
        threshold, default_left = node["threshold"], bool(node["default_left"])
        if node["missing_type"] == "NaN":  # a comparison with NaN is false
            values = self.column(feature)
            return ~(values > threshold) if default_left else values <= threshold
        zeroed = self._as_zero(feature)
        if node["missing_type"] == "Zero":
            return np.where(np.abs(zeroed) <= ZERO, default_left, zeroed <= threshold)
        return zeroed <= threshold


def _code_type(n_bits: int) -> type[np.unsignedinteger]:
    return np.uint16 if n_bits <= 16 else np.uint32 if n_bits <= 32 else np.uint64


def branch_codes(
    columns: Columns,
    splits: Sequence[Mapping[str, Any]],
    bits: Sequence[int],
    *,
    n_bits: int,
    features: Sequence[int] | None = None,
) -> np.ndarray:
    """One integer per row: bit ``bits[k]`` set when the row goes left at ``splits[k]``.

    ``features``, when given, are the columns of ``columns`` to read for each split (instead
    of the split's own feature index).
    """
    dtype = _code_type(n_bits)
    codes = np.zeros(columns.n_rows, dtype=dtype)
    for k, (node, bit) in enumerate(zip(splits, bits, strict=True)):
        feature = None if features is None else features[k]
        codes |= columns.goes_left(node, feature=feature).view(np.uint8).astype(dtype) << dtype(bit)
    return codes


def _nodes(tree: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every node of one tree of ``Booster.dump_model()``, splits and leaves, in a fixed order."""
    stack = [tree["tree_structure"]]
    while stack:
        node = stack.pop()
        yield node
        if "split_index" in node:
            stack.extend((node["right_child"], node["left_child"]))


def split_nodes(tree: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The split nodes of one tree of ``Booster.dump_model()``, in a fixed order."""
    return [node for node in _nodes(tree) if "split_index" in node]


def _leaf_table(tree: Mapping[str, Any], splits: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Leaf value for every bit pattern of the tree's splits (bit ``k``: left at split ``k``)."""
    bit_of = {id(node): k for k, node in enumerate(splits)}
    patterns = np.arange(1 << len(splits), dtype=np.int64)
    table = np.empty(len(patterns))
    stack: list[tuple[Mapping[str, Any], int, int]] = [(tree["tree_structure"], 0, 0)]
    while stack:
        node, mask, want = stack.pop()
        if "split_index" not in node:
            table[(patterns & mask) == want] = node["leaf_value"]
            continue
        bit = 1 << bit_of[id(node)]
        stack.append((node["left_child"], mask | bit, want | bit))
        stack.append((node["right_child"], mask | bit, want))
    return table


def _representable(dump: Mapping[str, Any], trees: Sequence[Mapping[str, Any]]) -> bool:
    """Whether every tree is a numerical tree these tables (and contributions) can follow."""
    if dump.get("num_tree_per_iteration", 1) != 1 or dump.get("average_output"):
        return False
    for node in (node for tree in trees for node in _nodes(tree)):
        if "split_index" in node:
            if node["decision_type"] not in ("<=", "=="):
                return False
        elif "leaf_coeff" in node or "leaf_features" in node:  # a linear tree's leaf
            return False
    return True


class TreeTables:
    """The first ``num_iteration`` trees of a booster as split lists and leaf tables.

    Use :func:`booster_tables`, which returns ``None`` for models the tables cannot follow.
    """

    def __init__(self, dump: Mapping[str, Any], num_iteration: int) -> None:
        trees = dump["tree_info"]
        self.trees = trees[:num_iteration] if num_iteration > 0 else trees
        self.splits = [split_nodes(tree) for tree in self.trees]
        self.representable = _representable(dump, self.trees)
        #: Contributions need a branch code per row: at most 64 splits per tree.
        self.codable = self.representable and all(len(s) <= 64 for s in self.splits)
        size = sum(8 << len(s) for s in self.splits)
        self.small = (
            self.representable
            and all(len(s) <= MAX_SPLITS for s in self.splits)
            and size <= MAX_TABLE_BYTES
        )
        self._tables: list[np.ndarray] | None = None

    def leaf_tables(self) -> list[np.ndarray]:
        """Leaf value per bit pattern, one table per tree (built on the first call)."""
        if self._tables is None:
            self._tables = [
                _leaf_table(tree, splits)
                for tree, splits in zip(self.trees, self.splits, strict=True)
            ]
        return self._tables

    def raw_score(self, X: np.ndarray) -> np.ndarray:
        """The sum of the leaf values each row reaches: LightGBM's raw score, bit for bit.

        The leaves are added tree by tree in the booster's order, as LightGBM adds them.
        """
        tables = self.leaf_tables()  # built here, before threads share them
        return by_rows(lambda rows: self._raw_score(tables, rows), np.asarray(X, dtype=np.float64))

    def _raw_score(self, tables: Sequence[np.ndarray], X: np.ndarray) -> np.ndarray:
        columns = Columns(X)
        out = np.zeros(columns.n_rows)
        for splits, table in zip(self.splits, tables, strict=True):
            codes = branch_codes(columns, splits, range(len(splits)), n_bits=len(splits))
            out += table[codes]
        return out

    def pair_raw_score(self, customers: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """Raw scores of customer x value pairs without building the pair rows.

        Parameters
        ----------
        customers
            ``(n, width)``: the customer columns of the pair rows (the model's first columns).
        pairs
            ``(n, m, extra)``: the remaining columns of each customer's ``m`` pairs.

        Returns
        -------
        ndarray
            ``(n, m)``: the raw score of each pair, as from the full pair rows.
        """
        tables = self.leaf_tables()  # built here, before threads share them
        return by_rows(
            lambda rows, extra: self._pair_raw_score(tables, rows, extra),
            np.asarray(customers, dtype=np.float64),
            pairs,
        )

    def _pair_raw_score(
        self, tables: Sequence[np.ndarray], customers: np.ndarray, pairs: np.ndarray
    ) -> np.ndarray:
        n, m, extra = pairs.shape
        width = customers.shape[1]
        by_customer = Columns(customers)
        by_pair = Columns(pairs.reshape(n * m, extra))
        out = np.zeros(n * m)
        for splits, table in zip(self.splits, tables, strict=True):
            n_bits = len(splits)
            own = [k for k, node in enumerate(splits) if node["split_feature"] < width]
            rest = [k for k, node in enumerate(splits) if node["split_feature"] >= width]
            codes = np.repeat(
                branch_codes(by_customer, [splits[k] for k in own], own, n_bits=n_bits), m
            )
            if rest:
                codes |= branch_codes(
                    by_pair,
                    [splits[k] for k in rest],
                    rest,
                    n_bits=n_bits,
                    features=[splits[k]["split_feature"] - width for k in rest],
                )
            out += table[codes]
        return out.reshape(n, m)


#: A booster keeps the trees a prediction uses (first tree, number of trees) as its own state,
#: so calls for one tree at a time, from any thread, take turns.
_ONE_TREE_AT_A_TIME = threading.Lock()
#: Tables of the boosters in use, built once per booster and number of trees.
_CACHE: weakref.WeakKeyDictionary[lgb.Booster, dict[int, TreeTables]] = weakref.WeakKeyDictionary()


def _tables_of(booster: lgb.Booster, num_iteration: int) -> TreeTables:
    per_booster = _CACHE.setdefault(booster, {})
    if num_iteration not in per_booster:
        per_booster[num_iteration] = TreeTables(
            booster.dump_model(num_iteration=num_iteration), num_iteration
        )
    return per_booster[num_iteration]


def booster_tables(booster: lgb.Booster, num_iteration: int) -> TreeTables | None:
    """The booster's trees as tables, or ``None`` when LightGBM must walk them itself."""
    tables = _tables_of(booster, num_iteration)
    return tables if tables.small else None


def _distinct(codes: np.ndarray, n_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """One row of each distinct code, and each row's position among them."""
    if n_bits > 20:
        _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
        return first, inverse.reshape(-1)
    present = np.bincount(codes, minlength=1 << n_bits) > 0
    position = np.cumsum(present) - 1
    row = np.empty(len(present), dtype=np.int64)
    row[codes] = np.arange(len(codes))  # any row of a code will do: they share their values
    return row[present], position[codes]


def tree_contributions(booster: lgb.Booster, X: np.ndarray, num_iteration: int) -> np.ndarray:
    """LightGBM's ``pred_contrib`` for the first ``num_iteration`` trees, computed per tree.

    A tree's exact contributions (path-dependent TreeSHAP) depend on a row only through the
    branch it takes at each split of that tree, and a tree of 15 leaves sends a hundred
    thousand customers down a few hundred distinct sets of branches. So each tree's
    contributions are computed by LightGBM for one row of every distinct set of branches
    and copied to the rows that share it: the same values as ``pred_contrib`` over the
    whole model (up to the order of floating-point additions), several times faster.

    Parameters
    ----------
    booster
        A booster with one tree per iteration (binary or regression objective).
    X
        Float matrix, the columns in training order.
    num_iteration
        Trees to use (the best iteration).

    Returns
    -------
    ndarray
        ``(rows, features + 1)``: one column per feature, then the bias.
    """
    model = _tables_of(booster, num_iteration)
    if not model.codable or not len(X):
        return booster.predict(
            X, num_iteration=num_iteration, pred_contrib=True, num_threads=cores()
        )
    n_features = X.shape[1]
    columns = Columns(X)
    out = np.zeros((n_features + 1, len(X)))  # one row per feature: contiguous additions
    for index, (tree, splits) in enumerate(zip(model.trees, model.splits, strict=True)):
        if not splits:  # a single leaf: only the bias
            out[-1] += tree["tree_structure"]["leaf_value"]
            continue
        codes = branch_codes(columns, splits, range(len(splits)), n_bits=len(splits))
        first, position = _distinct(codes, len(splits))
        with _ONE_TREE_AT_A_TIME:  # one thread: the tree-at-a-time calls cannot overlap
            values = booster.predict(
                X[first], start_iteration=index, num_iteration=1, pred_contrib=True, num_threads=1
            )
        for feature in [*sorted({node["split_feature"] for node in splits}), n_features]:
            out[feature] += values[:, feature].take(position)
    return out.T
