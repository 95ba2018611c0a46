"""Model quality metrics for ranked lists, probabilities, preferences and values.

Every function takes plain arrays (actual first, prediction second) and returns a float or a
small frame, so the same code scores a model, a baseline, or a notebook's guess. Rankings
that have ties are scored by their expectation over a random order of the tied rows, never
by a lucky sort: a score that gives everybody the same value earns a ROC-AUC of 0.5 and a lift
of 1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.metrics import roc_auc_score

#: The shares of a ranked list at which lift and capture rate are reported.
TOP_FRACTIONS: tuple[float, ...] = (0.05, 0.10, 0.20)
_EPS = 1e-15


def _binary(y: ArrayLike) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    if y.ndim != 1:
        raise ValueError(f"expected a 1-d array of 0/1 outcomes, got shape {y.shape}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("outcomes must be 0 or 1; got other values")
    return y


def _pair(y: ArrayLike, score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = _binary(y)
    score = np.asarray(score, dtype=float)
    if score.shape != y.shape:
        raise ValueError(f"outcomes have shape {y.shape} but scores have shape {score.shape}")
    if np.isnan(score).any():
        raise ValueError("scores contain NaN; score every row or drop the unscored ones first")
    return y, score


def roc_auc(y: ArrayLike, score: ArrayLike) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y, score = _pair(y, score)
    if y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, score))


def pr_auc(y: ArrayLike, score: ArrayLike) -> float:
    """Average precision (the step-wise area under the precision-recall curve), expected over
    a random order of tied scores.

    Without ties it is scikit-learn's ``average_precision_score``. A group of ``m`` tied rows
    holding ``g`` positives, after ``A`` rows and ``B`` positives ranked above it, adds
    ``g / m * sum over t = 1..m of (B + 1 + (t - 1) (g - 1) / (m - 1)) / (A + t)``: a positive
    is equally likely at each place ``t`` of the group, with the group's other positives
    spread evenly before it.
    """
    y, score = _pair(y, score)
    positives = y.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-score, kind="stable")
    y, score = y[order], score[order]
    starts = np.flatnonzero(np.r_[True, score[1:] != score[:-1]])
    sizes = np.diff(np.r_[starts, len(y)])
    goods = np.add.reduceat(y, starts)
    above = starts.astype(float)  # rows ranked above each group
    good_above = np.r_[0.0, np.cumsum(goods)[:-1]]
    single = sizes == 1  # most groups: the row's own precision
    total = float(np.sum(goods[single] * (good_above[single] + 1) / (above[single] + 1)))
    for m, g, a, b in zip(
        sizes[~single], goods[~single], above[~single], good_above[~single], strict=True
    ):
        if g == 0:
            continue
        t = np.arange(1, m + 1, dtype=float)
        total += g * float(np.mean((b + 1 + (t - 1) * (g - 1) / (m - 1)) / (a + t)))
    return total / float(positives)


def _expected_top_positives(y: np.ndarray, score: np.ndarray, n_top: int) -> float:
    """Expected positives among the ``n_top`` highest scores, ties broken at random."""
    if n_top <= 0:
        return 0.0
    order = np.argsort(-score, kind="stable")
    threshold = score[order[n_top - 1]]
    above = score > threshold
    tied = score == threshold
    share = (n_top - above.sum()) / tied.sum()
    return float(y[above].sum() + share * y[tied].sum())


def capture_rate(y: ArrayLike, score: ArrayLike, *, top: float) -> float:
    """Share of all positives found in the top ``top`` fraction of rows by score.

    The top holds ``ceil(top * n)`` rows; rows tied at the boundary count in proportion.
    """
    y, score = _pair(y, score)
    if not 0 < top <= 1:
        raise ValueError(f"top must be a fraction in (0, 1], got {top}")
    if y.sum() == 0:
        return float("nan")
    n_top = int(np.ceil(top * len(y)))
    return _expected_top_positives(y, score, n_top) / float(y.sum())


def lift(y: ArrayLike, score: ArrayLike, *, top: float) -> float:
    """Positive rate in the top ``top`` fraction of rows divided by the overall positive rate."""
    y, score = _pair(y, score)
    if not 0 < top <= 1:
        raise ValueError(f"top must be a fraction in (0, 1], got {top}")
    if y.sum() == 0:
        return float("nan")
    n_top = int(np.ceil(top * len(y)))
    return (_expected_top_positives(y, score, n_top) / n_top) / float(y.mean())


def _probabilities(probability: ArrayLike) -> np.ndarray:
    values = np.asarray(probability, dtype=float)
    if ((values < 0) | (values > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]; got values outside")
    return values


def brier(y: ArrayLike, probability: ArrayLike) -> float:
    """Mean squared difference between the outcome and the predicted probability."""
    y, probability = _pair(y, _probabilities(probability))
    return float(np.mean((probability - y) ** 2))


def log_loss(y: ArrayLike, probability: ArrayLike) -> float:
    """Mean negative log-likelihood of the outcomes; probabilities are clipped to (1e-15, 1)."""
    y, probability = _pair(y, _probabilities(probability))
    p = np.clip(probability, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def calibration_table(
    y: ArrayLike,
    probability: ArrayLike,
    *,
    n_bins: int = 10,
) -> pd.DataFrame:
    """Actual positive rate per score decile (or ``n_bins`` quantile bins).

    Tied scores stay in one bin (the bin of their first rank), so that the table does not
    depend on the order of the rows; bins are then of unequal size, and a bin can be empty
    (it has no row).

    Returns
    -------
    DataFrame
        One row per bin, highest scores last: ``bin`` (1..n_bins), ``n``, ``mean_score``,
        ``actual_rate``.

    Raises
    ------
    ValueError
        When ``n_bins`` is below 1.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    y, probability = _pair(y, _probabilities(probability))
    ranks = pd.Series(probability).rank(method="min").to_numpy()
    bins = np.ceil(ranks * n_bins / len(y)).astype(int).clip(1, n_bins)
    frame = pd.DataFrame({"bin": bins, "score": probability, "y": y})
    table = frame.groupby("bin").agg(
        n=("y", "size"), mean_score=("score", "mean"), actual_rate=("y", "mean")
    )
    return table.reset_index()


def binary_metrics(
    y: ArrayLike,
    score: ArrayLike,
    *,
    probabilities: bool = True,
) -> dict[str, float]:
    """The ranking metrics of a score, and the probability metrics when it is a probability.

    Parameters
    ----------
    y
        0/1 outcomes.
    score
        Higher means more likely positive.
    probabilities
        Whether ``score`` is a probability; only then are Brier and log loss reported.
    """
    out = {"roc_auc": roc_auc(y, score), "pr_auc": pr_auc(y, score)}
    for top in TOP_FRACTIONS:
        pct = round(top * 100)
        out[f"lift@{pct}%"] = lift(y, score, top=top)
        out[f"capture@{pct}%"] = capture_rate(y, score, top=top)
    if probabilities:
        out["brier"] = brier(y, score)
        out["log_loss"] = log_loss(y, score)
    out["base_rate"] = float(np.mean(y))
    out["n"] = float(len(y))
    return out


# ---------------------------------------------------------------- preference (multi-label)


def _ranked(
    actual: np.ndarray, scores: np.ndarray, k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    actual = np.asarray(actual, dtype=float)
    scores = np.asarray(scores, dtype=float)
    if actual.ndim != 2 or actual.shape != scores.shape:
        raise ValueError(
            "expected actual and scores as (customers x values) matrices of the same shape; "
            f"got {actual.shape} and {scores.shape}"
        )
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; score every value or drop the unscored rows first")
    if k is not None and k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return actual, scores


def _expected_hits_in_top(actual: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Per row: expected count of relevant values at each rank 1..k, ties broken at random.

    Returns a (rows x k) matrix of the probability that the value at each rank is relevant.
    """
    n, m = scores.shape
    k = min(k, m)
    out = np.zeros((n, k))
    order = np.argsort(-scores, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    sorted_actual = np.take_along_axis(actual, order, axis=1)
    for i in range(n):
        s, a = sorted_scores[i], sorted_actual[i]
        start = 0
        while start < k:
            stop = start + 1
            while stop < m and s[stop] == s[start]:
                stop += 1
            rate = a[start:stop].mean()
            out[i, start : min(stop, k)] = rate
            start = stop
    return out


def hit_rate(actual: np.ndarray, scores: np.ndarray, *, k: int) -> float:
    """Share of customers with at least one relevant value among their top ``k`` scores.

    Only customers with at least one relevant value count. Ties at the boundary are broken
    at random (the expectation is reported).
    """
    hits = customer_hits(actual, scores, k=k)
    return float(hits.mean()) if len(hits) else float("nan")


def customer_hits(actual: np.ndarray, scores: np.ndarray, *, k: int) -> np.ndarray:
    """:func:`hit_rate` customer by customer: the chance of a relevant value in the top ``k``.

    One value per customer with at least one relevant value, in row order (1 or 0, or in
    between when ties at the boundary are broken at random).
    """
    actual, scores = _ranked(actual, scores, k)
    keep = actual.sum(axis=1) > 0
    actual, scores = actual[keep], scores[keep]
    n, m = scores.shape
    k = min(k, m)
    order = np.argsort(-scores, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    sorted_actual = np.take_along_axis(actual, order, axis=1)
    hits = np.zeros(n)
    for i in range(n):
        s, a = sorted_scores[i], sorted_actual[i]
        threshold = s[k - 1]
        if a[s > threshold].any():
            hits[i] = 1.0
            continue
        tied = s == threshold
        slots = k - int((s > threshold).sum())
        n_tied, n_good = int(tied.sum()), int(a[tied].sum())
        # P(at least one relevant among `slots` drawn without replacement from the tie group)
        miss = 1.0
        for j in range(slots):
            miss *= max(n_tied - n_good - j, 0) / (n_tied - j)
        hits[i] = 1.0 - miss
    return hits


def ndcg(actual: np.ndarray, scores: np.ndarray, *, k: int) -> float:
    """Mean normalised discounted cumulative gain at ``k`` with 0/1 relevance.

    Only customers with at least one relevant value count; gains are ``1 / log2(rank + 1)``.
    """
    actual, scores = _ranked(actual, scores, k)
    keep = actual.sum(axis=1) > 0
    if not keep.any():
        return float("nan")
    actual, scores = actual[keep], scores[keep]
    k = min(k, scores.shape[1])
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = _expected_hits_in_top(actual, scores, k) @ discounts
    n_relevant = np.minimum(actual.sum(axis=1), k).astype(int)
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[n_relevant]
    return float(np.mean(dcg / ideal))


def preference_metrics(actual: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Hit rate at 1 and 3 and NDCG at 3 over customers with at least one relevant value."""
    actual = np.asarray(actual, dtype=float)
    return {
        "hit@1": hit_rate(actual, scores, k=1),
        "hit@3": hit_rate(actual, scores, k=3),
        "ndcg@3": ndcg(actual, scores, k=3),
        "n": float((actual.sum(axis=1) > 0).sum()),
    }


# ---------------------------------------------------------------- values (spend, counts)


def _values(actual: ArrayLike, predicted: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    actual = np.asarray(actual, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    if actual.shape != predicted.shape or actual.ndim != 1:
        raise ValueError(
            f"expected two 1-d arrays of the same length; got {actual.shape} and {predicted.shape}"
        )
    if np.isnan(predicted).any():
        raise ValueError("predictions contain NaN; predict every row or drop the unscored ones")
    if np.isnan(actual).any():
        raise ValueError("actual values contain NaN; drop the rows without an outcome first")
    return actual, predicted


def rmse(actual: ArrayLike, predicted: ArrayLike) -> float:
    """Root mean squared error."""
    actual, predicted = _values(actual, predicted)
    return float(np.sqrt(np.mean((actual - predicted) ** 2)))


def mae(actual: ArrayLike, predicted: ArrayLike) -> float:
    """Mean absolute error."""
    actual, predicted = _values(actual, predicted)
    return float(np.mean(np.abs(actual - predicted)))


def poisson_deviance(actual: ArrayLike, predicted: ArrayLike) -> float:
    """Mean Poisson deviance ``2 * (y log(y / mu) - (y - mu))``; predictions clipped at 1e-15.

    Negative actuals (net refunds) are counted as zero.
    """
    actual, predicted = _values(actual, predicted)
    y = np.clip(actual, 0.0, None)
    mu = np.clip(predicted, _EPS, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(y > 0, y * np.log(y / mu), 0.0)
    return float(np.mean(2.0 * (term - (y - mu))))


def spearman(actual: ArrayLike, predicted: ArrayLike) -> float:
    """Spearman rank correlation; NaN when either side is constant."""
    actual, predicted = _values(actual, predicted)
    if np.ptp(actual) == 0 or np.ptp(predicted) == 0:
        return float("nan")
    return float(stats.spearmanr(actual, predicted).statistic)


def pearson(actual: ArrayLike, predicted: ArrayLike) -> float:
    """Pearson correlation; NaN when either side is constant."""
    actual, predicted = _values(actual, predicted)
    if np.ptp(actual) == 0 or np.ptp(predicted) == 0:
        return float("nan")
    return float(np.corrcoef(actual, predicted)[0, 1])


def _gini(actual: np.ndarray, predicted: np.ndarray) -> float:
    order = np.argsort(-predicted, kind="stable")
    a, p = actual[order], predicted[order]
    # Rows tied on the prediction share their actual total evenly: the expected curve
    # under a random order of the tie.
    groups = np.concatenate([[0], np.cumsum(p[1:] != p[:-1])])
    a = pd.Series(a).groupby(groups).transform("mean").to_numpy()
    n = len(a)
    return float((np.cumsum(a).sum() / a.sum() - (n + 1) / 2.0) / n)


def normalised_gini(actual: ArrayLike, predicted: ArrayLike) -> float:
    """Gini of the prediction's ordering divided by the Gini of the perfect ordering.

    1 means the prediction orders customers exactly as their actual values, 0 means no better
    than random; for 0/1 actuals it equals ``2 * AUC - 1``.
    """
    actual, predicted = _values(actual, predicted)
    if actual.sum() == 0:
        return float("nan")
    perfect = _gini(actual, actual)
    if perfect == 0:
        return float("nan")
    return _gini(actual, predicted) / perfect


def value_metrics(actual: ArrayLike, predicted: ArrayLike) -> dict[str, float]:
    """Error, ranking and total metrics of a value (spend or order count) prediction."""
    actual, predicted = _values(actual, predicted)
    total_actual = float(actual.sum())
    total_predicted = float(predicted.sum())
    return {
        "rmse": rmse(actual, predicted),
        "mae": mae(actual, predicted),
        "poisson_deviance": poisson_deviance(actual, predicted),
        "spearman": spearman(actual, predicted),
        "pearson": pearson(actual, predicted),
        "normalised_gini": normalised_gini(actual, predicted),
        "total_predicted": total_predicted,
        "total_actual": total_actual,
        "total_ratio": total_predicted / total_actual if total_actual else float("nan"),
        "n": float(len(actual)),
    }
