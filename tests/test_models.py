"""The estimators keep the scikit-learn contract, are deterministic and explain themselves."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from cxpredict import models
from cxpredict.models import (
    Calibrator,
    LightGBMClassifier,
    LightGBMRegressor,
    PreferenceModel,
    booster_from_dict,
    booster_to_dict,
    choose_calibration,
    pair_features,
)

FAST = {"learning_rate": 0.1, "min_data_in_leaf": 20, "num_leaves": 7}


def planted(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 4)), columns=["signal", "noise_a", "noise_b", "anti"])
    p = 1 / (1 + np.exp(-(2 * X["signal"] - X["anti"])))
    return X, (rng.random(n) < p).astype(int)


@pytest.fixture(scope="module")
def data():
    X, y = planted(1500, 0)
    X_valid, y_valid = planted(1200, 1)
    return X, y, X_valid, y_valid


@pytest.fixture(scope="module")
def classifier(data):
    X, y, X_valid, y_valid = data
    return LightGBMClassifier(params=FAST, seed=3).fit(X, y, X_valid=X_valid, y_valid=y_valid)


def test_init_stores_parameters_only_and_clones_cleanly():
    model = LightGBMClassifier(params=FAST, calibration="platt", seed=5)
    assert clone(model).get_params() == model.get_params()
    assert not [k for k in vars(model) if k.endswith("_")]


def test_fit_returns_the_estimator_with_learned_state_ending_in_underscore(data, classifier):
    learned = {k for k in vars(classifier) if k.endswith("_")}
    assert {"booster_", "best_iteration_", "calibrator_", "calibration_method_"} <= learned
    assert classifier.calibration_method_ in {"none", "platt", "isotonic"}


def test_no_training_rows_are_kept_on_the_model(data, classifier):
    X = data[0]
    for value in vars(classifier).values():
        if isinstance(value, np.ndarray | pd.DataFrame | pd.Series):
            assert len(value) != len(X)


def test_the_same_seed_gives_identical_predictions(data, classifier):
    X, y, X_valid, y_valid = data
    again = LightGBMClassifier(params=FAST, seed=3).fit(X, y, X_valid=X_valid, y_valid=y_valid)
    np.testing.assert_array_equal(again.predict_proba(X_valid), classifier.predict_proba(X_valid))


def test_early_stopping_watches_the_validation_rows_it_was_given(data):
    X, y, X_valid, _ = data
    noise = np.random.default_rng(9).integers(0, 2, len(X_valid))
    model = LightGBMClassifier(params=FAST, num_boost_round=500, early_stopping_rounds=20)
    model.fit(X, y, X_valid=X_valid, y_valid=noise)
    assert model.best_iteration_ < 100


def test_contributions_add_up_to_the_raw_score_and_find_the_planted_signal(data, classifier):
    X_valid = data[2]
    contributions = classifier.contributions(X_valid)
    assert list(contributions.columns) == ["signal", "noise_a", "noise_b", "anti", "bias"]
    np.testing.assert_allclose(
        contributions.sum(axis=1), classifier.decision_function(X_valid), rtol=1e-6, atol=1e-9
    )
    strength = contributions.drop(columns="bias").abs().mean()
    assert strength.idxmax() == "signal"
    assert classifier.feature_importance().index[0] == "signal"


def test_features_in_another_order_are_reordered_and_missing_ones_are_refused(data, classifier):
    X_valid = data[2]
    shuffled = X_valid[["anti", "signal", "noise_b", "noise_a"]]
    np.testing.assert_array_equal(
        classifier.predict_proba(shuffled), classifier.predict_proba(X_valid)
    )
    with pytest.raises(ValueError, match=r"missing \['anti'\]"):
        classifier.predict_proba(X_valid.drop(columns="anti"))


def test_a_single_class_in_validation_is_refused(data):
    X, y, X_valid, _ = data
    with pytest.raises(ValueError, match="validation rows hold a single class"):
        LightGBMClassifier().fit(X, y, X_valid=X_valid, y_valid=np.zeros(len(X_valid)))


def test_platt_scaling_repairs_overconfident_scores():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-truth))).astype(float)
    raw = 3 * truth  # three times too confident
    chosen, scores = choose_calibration(raw, y)
    assert chosen in {"platt", "isotonic"}
    assert scores[chosen] < scores["none"]
    platt = Calibrator("platt").fit(raw, y)
    assert platt.slope_ == pytest.approx(1 / 3, abs=0.05)


def test_a_calibrator_survives_a_round_trip_through_json_types():
    raw = np.linspace(-3, 3, 50)
    y = (raw + np.sin(raw * 5) > 0).astype(float)
    for method in ("none", "platt", "isotonic"):
        fitted = Calibrator(method).fit(raw, y)
        rebuilt = Calibrator.from_dict(fitted.to_dict())
        np.testing.assert_allclose(rebuilt.transform(raw), fitted.transform(raw))


def test_a_saved_classifier_predicts_exactly_as_before(data, classifier):
    X_valid = data[2]
    rebuilt = booster_from_dict(booster_to_dict(classifier))
    np.testing.assert_allclose(rebuilt.predict_proba(X_valid), classifier.predict_proba(X_valid))


def test_a_rate_model_scales_with_exposure():
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"rate": rng.uniform(0.1, 2, 3000), "noise": rng.normal(size=3000)})
    exposure = rng.choice([1.0, 2.0, 3.0], 3000)
    y = rng.poisson(X["rate"] * exposure)
    model = LightGBMRegressor(objective="poisson", params=FAST).fit(
        X[:2000],
        y[:2000],
        X_valid=X[2000:],
        y_valid=y[2000:],
        exposure=exposure[:2000],
        exposure_valid=exposure[2000:],
    )
    one = model.predict(X[2000:], exposure=np.ones(1000))
    np.testing.assert_allclose(model.predict(X[2000:], exposure=np.full(1000, 2.0)), 2 * one)
    assert np.corrcoef(one, X["rate"][2000:])[0, 1] > 0.9
    with pytest.raises(ValueError, match="pass the exposure"):
        model.predict(X[2000:])


def test_a_tweedie_model_predicts_non_negative_spend_and_survives_a_round_trip():
    rng = np.random.default_rng(1)
    X = pd.DataFrame({"wealth": rng.uniform(0, 1, 2000)})
    spend = np.where(rng.random(2000) < X["wealth"], rng.gamma(2, 50 * X["wealth"] + 1), 0)
    model = LightGBMRegressor(params=FAST).fit(
        X[:1500], spend[:1500], X_valid=X[1500:], y_valid=spend[1500:]
    )
    predicted = model.predict(X[1500:])
    assert (predicted >= 0).all()
    np.testing.assert_allclose(
        booster_from_dict(booster_to_dict(model)).predict(X[1500:]), predicted
    )


@pytest.mark.parametrize("rate", [False, True], ids=["amount", "rate"])
def test_a_regressor_predicts_the_total_of_its_training_rows_and_says_so_in_the_bias(rate):
    # Skewed spend stops the Tweedie boosting short of the training total; the balance scales
    # the predictions back to it (a rate model's too, at each row's exposure).
    rng = np.random.default_rng(2)
    X = pd.DataFrame({"wealth": rng.uniform(0, 1, 3000)})
    spend = np.where(rng.random(3000) < 0.3, rng.lognormal(3 + 2 * X["wealth"], 1.5), 0)
    days = rng.choice([1.0, 2.0], 3000)
    train, valid = slice(0, 2000), slice(2000, 3000)

    def at(rows: slice, suffix: str = "") -> dict[str, np.ndarray]:
        return {f"exposure{suffix}": days[rows]} if rate else {}

    model = LightGBMRegressor(params={**FAST, "learning_rate": 0.02}).fit(
        X[train],
        spend[train],
        X_valid=X[valid],
        y_valid=spend[valid],
        **at(train),
        **at(valid, "_valid"),
    )
    assert model.balance_ != pytest.approx(1.0, abs=0.01)
    assert model.predict(X[train], **at(train)).sum() == pytest.approx(spend[train].sum())
    bias_included = model.contributions(X[:5]).sum(axis=1).to_numpy()
    np.testing.assert_allclose(bias_included, model.raw_score(X[:5]))
    rebuilt = booster_from_dict(booster_to_dict(model))
    np.testing.assert_allclose(
        rebuilt.predict(X[valid], **at(valid)), model.predict(X[valid], **at(valid))
    )


VALUES = ("books", "games", "music")


def preference_data(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    favourite = rng.choice(VALUES, n, p=[0.5, 0.3, 0.2])
    X = pd.DataFrame({"age": rng.uniform(0, 1, n)}, index=[f"c{seed}-{i}" for i in range(n)])
    for v in VALUES:
        X[f"share_{v}"] = np.where(favourite == v, rng.uniform(0.5, 1, n), rng.uniform(0, 0.3, n))
    Y = pd.DataFrame(
        {v: ((favourite == v) | (rng.random(n) < 0.1)).astype(int) for v in VALUES},
        index=X.index,
    )
    return X, Y


@pytest.mark.parametrize("strategy", ["pairs", "multiclass"])
def test_a_preference_model_ranks_each_customers_favourite_first(strategy):
    X, Y = preference_data(600, 0)
    X_valid, Y_valid = preference_data(400, 1)
    columns = {v: {"share": f"share_{v}"} for v in VALUES}
    model = PreferenceModel(strategy=strategy, params=FAST).fit(
        X, Y, X_valid=X_valid, Y_valid=Y_valid, value_columns=columns
    )
    scores = model.predict_scores(X_valid)
    assert list(scores.columns) == list(VALUES)
    favourite = X_valid[[f"share_{v}" for v in VALUES]].to_numpy().argmax(axis=1)
    assert (scores.to_numpy().argmax(axis=1) == favourite).mean() > 0.9
    rebuilt = PreferenceModel.from_dict(model.to_dict())
    pd.testing.assert_frame_equal(rebuilt.predict_scores(X_valid), scores)


def test_pairs_scored_from_leaf_tables_equal_the_pairs_scored_by_lightgbm(monkeypatch):
    X, Y = preference_data(600, 0)
    X_valid, Y_valid = preference_data(400, 1)
    columns = {v: {"share": f"share_{v}"} for v in VALUES}
    model = PreferenceModel(params=FAST).fit(
        X, Y, X_valid=X_valid, Y_valid=Y_valid, value_columns=columns
    )
    from_tables = model.predict_scores(X_valid)
    monkeypatch.setattr(models, "booster_tables", lambda *args: None)
    pd.testing.assert_frame_equal(model.predict_scores(X_valid), from_tables, check_exact=True)


def test_pair_features_put_each_values_own_column_under_one_name():
    X = pd.DataFrame({"age": [1.0, 2.0], "share_a": [0.9, 0.1], "share_b": [0.1, 0.9]})
    pairs = pair_features(X, ["a", "b"], {"a": {"share": "share_a"}, "b": {"share": "share_b"}})
    assert pairs["value"].tolist() == ["a", "b", "a", "b"]
    assert pairs["value_share"].tolist() == [0.9, 0.1, 0.1, 0.9]
    assert pairs["age"].tolist() == [1.0, 1.0, 2.0, 2.0]


def test_a_classifier_started_from_an_offset_learns_only_the_correction_and_needs_the_offset():
    rng = np.random.default_rng(3)
    n = 4000
    X = pd.DataFrame({"signal": rng.normal(size=n), "noise": rng.normal(size=n)})
    # the offset already knows everything but the signal's effect
    offset = rng.normal(-1.0, 1.0, size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(offset + X["signal"])))).astype(int)
    half = n // 2
    model = LightGBMClassifier(params=FAST, calibration="none", seed=0).fit(
        X[:half],
        y[:half],
        X_valid=X[half:],
        y_valid=y[half:],
        offset=offset[:half],
        offset_valid=offset[half:],
    )
    assert model.uses_offset_
    assert model.feature_importance().index[0] == "signal"
    correction = model.decision_function(X[half:])
    assert np.corrcoef(correction, X["signal"][half:])[0, 1] > 0.9
    with pytest.raises(ValueError, match="pass the offset"):
        model.predict_proba(X[half:])
    restored = booster_from_dict(booster_to_dict(model))
    np.testing.assert_array_equal(
        restored.predict_proba(X[half:], offset=offset[half:]),
        model.predict_proba(X[half:], offset=offset[half:]),
    )
