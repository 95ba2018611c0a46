"""Metric functions against values computed by hand on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxpredict import metrics

Y = [1, 0, 1, 0]
P = [0.9, 0.8, 0.3, 0.1]


def test_roc_auc_counts_correctly_ordered_pairs():
    # (0.9>0.8) (0.9>0.1) (0.3<0.8) (0.3>0.1): three of four pairs
    assert metrics.roc_auc(Y, P) == pytest.approx(0.75)


def test_roc_auc_is_nan_when_only_one_class_is_present():
    assert math.isnan(metrics.roc_auc([1, 1], [0.2, 0.4]))


def test_pr_auc_of_tied_scores_is_its_expectation_over_the_orders_of_the_tie():
    # positives 1 of the 3 tied at the top, 2 of the 3 tied below: averaged over all 36
    # orders of the ties, average precision is 29/54
    assert metrics.pr_auc([1, 0, 0, 1, 0, 1], [1, 1, 1, 0, 0, 0]) == pytest.approx(29 / 54)


@settings(deadline=None, max_examples=60)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 2)), min_size=2, max_size=6))
def test_pr_auc_with_ties_equals_the_mean_over_every_order_of_the_ties(rows):
    import itertools

    from sklearn.metrics import average_precision_score

    y = np.array([r[0] for r in rows])
    score = np.array([r[1] for r in rows], dtype=float)
    if y.sum() == 0:
        return
    orders = []
    for perm in itertools.permutations(range(len(y))):
        jitter = np.empty(len(y))
        jitter[list(perm)] = np.arange(len(y)) * 1e-6
        orders.append(average_precision_score(y, score + jitter))
    assert metrics.pr_auc(y, score) == pytest.approx(np.mean(orders))


def test_pr_auc_is_average_precision_at_each_positive():
    # positives at ranks 1 and 3: precision 1 and 2/3, each weighted by recall step 1/2
    assert metrics.pr_auc(Y, P) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_lift_and_capture_in_the_top_quarter():
    assert metrics.lift(Y, P, top=0.25) == pytest.approx(2.0)
    assert metrics.capture_rate(Y, P, top=0.25) == pytest.approx(0.5)
    # top half holds ranks 1-2: one positive of two
    assert metrics.lift(Y, P, top=0.5) == pytest.approx(1.0)


def test_a_constant_score_earns_exactly_the_base_rate_whatever_the_row_order():
    y = [0, 0, 0, 1]
    assert metrics.lift(y, [0.5] * 4, top=0.25) == pytest.approx(1.0)
    assert metrics.capture_rate(y, [0.5] * 4, top=0.5) == pytest.approx(0.5)


def test_ties_at_the_boundary_count_in_proportion():
    # top 2 of 4: the 0.9 row plus half of the two rows tied at 0.5 (one positive)
    y = [0, 1, 0, 1]
    score = [0.9, 0.5, 0.5, 0.1]
    assert metrics.capture_rate(y, score, top=0.5) == pytest.approx(0.25)


def test_brier_and_log_loss():
    assert metrics.brier(Y, P) == pytest.approx((0.01 + 0.64 + 0.49 + 0.01) / 4)
    expected = -(math.log(0.9) + math.log(0.2) + math.log(0.3) + math.log(0.9)) / 4
    assert metrics.log_loss(Y, P) == pytest.approx(expected)


def test_calibration_table_reports_the_actual_rate_per_score_bin():
    table = metrics.calibration_table(Y, P, n_bins=2)
    expected = pd.DataFrame(
        {"bin": [1, 2], "n": [2, 2], "mean_score": [0.2, 0.85], "actual_rate": [0.5, 0.5]}
    )
    pd.testing.assert_frame_equal(table, expected, check_dtype=False)


def test_binary_metrics_reports_lift_at_five_ten_and_twenty_percent():
    out = metrics.binary_metrics(Y, P)
    assert {"lift@5%", "lift@10%", "lift@20%", "capture@20%", "brier", "log_loss"} <= set(out)
    assert "brier" not in metrics.binary_metrics(Y, P, probabilities=False)


def test_outcomes_other_than_zero_and_one_are_refused():
    with pytest.raises(ValueError, match="must be 0 or 1"):
        metrics.roc_auc([0, 2], [0.1, 0.2])


def test_nan_scores_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="score every row"):
        metrics.brier([0, 1], [0.1, float("nan")])


ACTUAL = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]])
SCORES = np.array([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])


def test_hit_rate_counts_customers_with_a_relevant_value_in_their_top_k():
    # the third customer bought nothing and does not count
    assert metrics.hit_rate(ACTUAL, SCORES, k=1) == pytest.approx(0.5)
    assert metrics.hit_rate(ACTUAL, SCORES, k=3) == pytest.approx(1.0)
    np.testing.assert_allclose(metrics.customer_hits(ACTUAL, SCORES, k=1), [1.0, 0.0])


def test_ndcg_at_three_by_hand():
    second = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert metrics.ndcg(ACTUAL, SCORES, k=3) == pytest.approx((1.0 + second) / 2)


def test_tied_preference_scores_earn_the_random_order_expectation():
    actual, scores = np.array([[0, 1, 0]]), np.ones((1, 3))
    assert metrics.hit_rate(actual, scores, k=1) == pytest.approx(1 / 3)
    assert metrics.hit_rate(actual, scores, k=2) == pytest.approx(2 / 3)
    expected = (1 + 1 / math.log2(3) + 1 / math.log2(4)) / 3
    assert metrics.ndcg(actual, scores, k=3) == pytest.approx(expected)


def test_rmse_and_poisson_deviance_by_hand():
    actual, predicted = [0, 1, 3], [1, 1, 1]
    assert metrics.rmse(actual, predicted) == pytest.approx(math.sqrt(5 / 3))
    # y=0: 2*(0-(0-1)) = 2; y=1: 0; y=3: 2*(3 ln 3 - 2)
    expected = (2 + 0 + 2 * (3 * math.log(3) - 2)) / 3
    assert metrics.poisson_deviance(actual, predicted) == pytest.approx(expected)


def test_spearman_by_hand():
    # rank differences 0, 1, 1: 1 - 6 * 2 / (3 * 8)
    assert metrics.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)


def test_normalised_gini_is_one_for_the_perfect_order_and_minus_one_for_its_reverse():
    assert metrics.normalised_gini([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert metrics.normalised_gini([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_normalised_gini_of_a_binary_outcome_is_twice_the_auc_minus_one():
    assert metrics.normalised_gini(Y, P) == pytest.approx(2 * 0.75 - 1)


def test_value_metrics_reports_totals_side_by_side():
    out = metrics.value_metrics([0, 1, 3], [1, 1, 1])
    assert out["total_actual"] == 4 and out["total_predicted"] == 3
    assert out["total_ratio"] == pytest.approx(0.75)


@given(
    st.lists(st.tuples(st.integers(0, 1), st.floats(0, 1)), min_size=2, max_size=40),
    st.sampled_from(metrics.TOP_FRACTIONS),
)
def test_capture_rate_is_a_share_and_lift_never_exceeds_its_ceiling(rows, top):
    y = [r[0] for r in rows]
    score = [r[1] for r in rows]
    if sum(y) == 0:
        return
    capture = metrics.capture_rate(y, score, top=top)
    assert -1e-12 <= capture <= 1 + 1e-12
    assert metrics.lift(y, score, top=top) <= len(y) / sum(y) + 1e-9


def test_tied_scores_stay_in_one_calibration_bin_whatever_the_row_order():
    table = metrics.calibration_table([0] * 50 + [1] * 50, [0.5] * 100)
    assert table[["bin", "n", "actual_rate"]].values.tolist() == [[1, 100, 0.5]]


def test_metrics_refuse_inputs_they_cannot_score():
    actual = np.array([[1, 0, 0], [0, 1, 0]])
    scores = np.array([[0.5, 0.2, 0.1], [0.1, np.nan, 0.3]])
    with pytest.raises(ValueError, match="scores contain NaN"):
        metrics.hit_rate(actual, scores, k=1)
    with pytest.raises(ValueError, match="k must be at least 1"):
        metrics.ndcg(actual, np.nan_to_num(scores), k=0)
    with pytest.raises(ValueError, match=r"probabilities must lie in \[0, 1\]"):
        metrics.log_loss([1, 0], [1.5, -0.2])
    with pytest.raises(ValueError, match="actual values contain NaN"):
        metrics.rmse([1.0, np.nan], [1.0, 2.0])


def test_a_calibration_table_needs_at_least_one_bin() -> None:
    with pytest.raises(ValueError, match="n_bins must be at least 1"):
        metrics.calibration_table([0, 1], [0.2, 0.8], n_bins=0)
