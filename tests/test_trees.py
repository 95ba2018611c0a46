"""Leaf tables and per-tree contributions give LightGBM's own scores and contributions."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from cxpredict import trees
from cxpredict.trees import booster_tables, tree_contributions

BINARY = {"objective": "binary", "num_leaves": 15, "min_data_in_leaf": 5, "num_threads": 1}
BINARY["verbosity"] = -1


def gappy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows with missing values, exact zeros and values on a coarse grid (ties at splits)."""
    rng = np.random.default_rng(seed)
    X = np.round(rng.normal(size=(n, 5)), 1)
    X[rng.random(X.shape) < 0.15] = np.nan
    X[rng.random(X.shape) < 0.1] = 0.0
    signal = np.nan_to_num(X[:, 0]) - np.isnan(X[:, 1]) + (X[:, 2] == 0)
    return X, (rng.random(n) < 1 / (1 + np.exp(-signal))).astype(int)


def with_thresholds(booster: lgb.Booster, rows: np.ndarray) -> np.ndarray:
    """``rows`` plus rows whose value is exactly a split's threshold, where "<=" and "<" differ."""
    splits = booster.trees_to_dataframe().dropna(subset=["threshold"])
    splits = splits[splits["decision_type"] == "<="]
    at = np.resize(rows, (len(splits), rows.shape[1]))
    features = splits["split_feature"].str.removeprefix("Column_").astype(int)
    at[np.arange(len(splits)), features] = splits["threshold"].astype(float)
    return np.vstack([rows, at, [[1e-36, -1e-36, 5e-36, -1e-40, 0.0]]])


def trained(params: dict, *, seed: int = 0, rounds: int = 40) -> lgb.Booster:
    X, y = gappy(3000, seed)
    return lgb.train(params, lgb.Dataset(X, label=y), num_boost_round=rounds)


MISSING = pytest.mark.parametrize(
    "missing",
    [{}, {"zero_as_missing": True}, {"use_missing": False}],
    ids=["missing as NaN", "zero as missing", "missing ignored"],
)


@MISSING
def test_leaf_tables_give_lightgbms_raw_score_bit_for_bit(missing):
    booster = trained({**BINARY, **missing})
    rows = with_thresholds(booster, gappy(2000, 1)[0])
    tables = booster_tables(booster, 30)
    assert tables is not None
    expected = booster.predict(rows, num_iteration=30, raw_score=True)
    np.testing.assert_array_equal(tables.raw_score(rows), expected)


@MISSING
def test_contributions_tree_by_tree_equal_lightgbms_own(missing):
    booster = trained({**BINARY, **missing})
    rows = with_thresholds(booster, gappy(2000, 1)[0])
    expected = booster.predict(rows, num_iteration=30, pred_contrib=True)
    np.testing.assert_allclose(tree_contributions(booster, rows, 30), expected, atol=1e-12)


def categorical_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    X, _ = gappy(n, seed)
    rng = np.random.default_rng(seed + 10)
    X[:, 4] = rng.integers(0, 6, n)
    y = ((X[:, 4] % 2 == 0) ^ (rng.random(n) < 0.2)).astype(int)
    return X, y


def test_categorical_splits_send_missing_negative_and_unseen_categories_as_lightgbm_does():
    X, y = categorical_rows(3000, 2)
    data = lgb.Dataset(X, label=y, categorical_feature=[4])
    booster = lgb.train(BINARY, data, num_boost_round=10)
    assert (booster.trees_to_dataframe()["decision_type"] == "==").any()
    rows, _ = categorical_rows(600, 3)
    rows[:100, 4] = [np.nan, -1.0, -0.5, 0.5, 2.7, 9.0, 1e12, -3.0, 3.0, 4.0] * 10
    tables = booster_tables(booster, 10)
    assert tables is not None
    np.testing.assert_array_equal(tables.raw_score(rows), booster.predict(rows, raw_score=True))
    expected = booster.predict(rows, pred_contrib=True)
    np.testing.assert_allclose(tree_contributions(booster, rows, 10), expected, atol=1e-12)


def test_pairs_scored_from_their_parts_equal_the_scores_of_the_full_pair_rows():
    rng = np.random.default_rng(4)
    n, m = 400, 3
    customers = gappy(n, 5)[0][:, :3]
    own = np.round(rng.normal(size=(n, m, 1)), 1)
    own[rng.random(own.shape) < 0.2] = np.nan
    value = np.broadcast_to(np.arange(m, dtype=float)[None, :, None], (n, m, 1))
    extra = np.concatenate([value, own], axis=2)
    rows = np.concatenate([np.repeat(customers[:, None, :], m, axis=1), extra], axis=2)
    rows = rows.reshape(n * m, -1)
    y = (np.nan_to_num(rows[:, 0]) + rows[:, 3] + np.nan_to_num(rows[:, 4]) > 1).astype(int)
    data = lgb.Dataset(rows, label=y, categorical_feature=[3])
    booster = lgb.train(BINARY, data, num_boost_round=20)
    tables = booster_tables(booster, 20)
    assert tables is not None
    expected = booster.predict(rows, raw_score=True).reshape(n, m)
    np.testing.assert_array_equal(tables.pair_raw_score(customers, extra), expected)


def test_models_the_tables_cannot_follow_are_left_to_lightgbm(monkeypatch):
    linear = trained({**BINARY, "linear_tree": True}, rounds=5)
    many_leaves = trained({**BINARY, "num_leaves": 40}, rounds=5)
    assert booster_tables(linear, 5) is None
    assert booster_tables(many_leaves, 5) is None
    monkeypatch.setattr(trees, "MAX_TABLE_BYTES", 4 * 8 << 14)
    large = trained(BINARY, rounds=5)
    assert booster_tables(large, 4) is not None
    assert booster_tables(large, 5) is None


def test_contributions_of_trees_of_many_leaves_are_still_lightgbms_own():
    booster = trained({**BINARY, "num_leaves": 40})
    rows = with_thresholds(booster, gappy(2000, 1)[0])
    expected = booster.predict(rows, num_iteration=30, pred_contrib=True)
    np.testing.assert_allclose(tree_contributions(booster, rows, 30), expected, atol=1e-12)


def test_rows_shared_out_between_threads_give_the_same_scores_and_contributions(monkeypatch):
    booster = trained(BINARY)
    rows = with_thresholds(booster, gappy(2000, 1)[0])
    tables = booster_tables(booster, 30)
    assert tables is not None
    alone = tables.raw_score(rows), tree_contributions(booster, rows, 30)
    monkeypatch.setattr(trees, "ROWS_PER_THREAD", 300)
    monkeypatch.setattr(trees, "cores", lambda: 3)
    np.testing.assert_array_equal(tables.raw_score(rows), alone[0])
    np.testing.assert_array_equal(tree_contributions(booster, rows, 30), alone[1])
