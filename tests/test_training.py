"""Training and scoring a task end to end on the synthetic retailer, without looking ahead."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ADDED_FEATURE

from cxpredict.config import parse_config
from cxpredict.errors import FeatureMismatch, IneligibleTask, ModelNotFound
from cxpredict.features import Vocabulary, build_features, catalogue_version, feature_catalogue
from cxpredict.sample import generate_sample
from cxpredict.schemas import Tables
from cxpredict.training import ModelBundle, choose_label_horizon, score_task, train_task

AS_OF = pd.Timestamp("2025-03-01", tz="UTC")
FAST = {"learning_rate": 0.1, "min_data_in_leaf": 30, "num_leaves": 7, "num_boost_round": 300}


def project(tasks: dict, **training) -> object:
    raw = {
        "project": "test",
        "data": {"orders": {"path": "orders.csv"}},
        "tasks": tasks,
        "training": {
            "n_cutoffs": 3,
            "step_days": 28,
            "n_backtest_cutoffs": 1,
            "min_positives": 20,
            "min_negatives": 20,
            "lightgbm": FAST,
            **training,
        },
    }
    return parse_config(raw, root=Path("."))


CONFIG = project(
    {
        "churn": {"kind": "churn", "horizon_days": 56, "active_days": 120},
        "spend": {"kind": "value", "horizon_days": 56},
        "category": {"kind": "preference", "horizon_days": 56},
        "year": {"kind": "repurchase", "horizon_days": 365},
    }
)


@pytest.fixture(scope="module")
def tables() -> Tables:
    return generate_sample(1500, seed=11, start="2024-01-01", days=500)


@pytest.fixture(scope="module")
def churn(tables):
    return train_task(CONFIG, "churn", as_of=AS_OF, tables=tables, btyd_baselines=("bgnbd",))


def with_future(tables: Tables) -> Tables:
    """The same tables plus orders and contacts at and after the as-of date."""
    extra = tables.orders.head(50).copy()
    extra["timestamp"] = AS_OF + pd.to_timedelta(np.arange(50), unit="D")
    extra["amount"] = 1e5
    contacts = tables.interactions.head(50).copy()
    contacts["timestamp"] = AS_OF + pd.to_timedelta(np.arange(50), unit="h")
    return Tables(
        pd.concat([tables.orders, extra], ignore_index=True),
        pd.concat([tables.interactions, contacts], ignore_index=True),
        tables.customers,
    )


def test_training_reports_the_model_next_to_its_baselines_on_later_cutoffs(churn):
    models = set(churn.metrics["model"])
    assert models == {"lightgbm", "recency", "rfm_quintiles", "logistic", "bgnbd"}
    (test_cutoff,) = churn.metrics["cutoff"].unique()
    assert max(churn.training_cutoffs) < churn.validation_cutoff < AS_OF
    assert test_cutoff + pd.Timedelta(days=56) <= AS_OF
    assert churn.summary.loc["roc_auc", "lightgbm"] > 0.7
    assert churn.horizon_method == "direct"
    assert churn.bundle.calibration_method in {"none", "platt", "isotonic"}


def test_the_final_models_label_windows_end_by_the_validation_cutoff_whose_ends_at_as_of(churn):
    window = pd.Timedelta(days=56)
    assert all(c + window <= churn.validation_cutoff for c in churn.training_cutoffs)
    assert churn.validation_cutoff + window == AS_OF


def test_a_model_trained_as_of_a_date_ignores_every_event_after_it(tables, churn):
    again = train_task(
        CONFIG, "churn", as_of=AS_OF, tables=with_future(tables), btyd_baselines=("bgnbd",)
    )
    booster = churn.bundle.estimators["score"].booster_.model_to_string()
    assert again.bundle.estimators["score"].booster_.model_to_string() == booster
    pd.testing.assert_frame_equal(again.metrics, churn.metrics)


def test_training_twice_with_the_same_seed_gives_the_same_model(tables, churn):
    again = train_task(CONFIG, "churn", as_of=AS_OF, tables=tables, backtest=False)
    assert (
        again.bundle.estimators["score"].booster_.model_to_string()
        == churn.bundle.estimators["score"].booster_.model_to_string()
    )


def test_a_saved_bundle_scores_exactly_as_before_and_holds_no_customer(tables, churn, tmp_path):
    churn.bundle.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["booster_score.txt", "bundle.json"]
    text = "".join(p.read_text() for p in tmp_path.iterdir())
    assert not any(cid in text for cid in tables.orders["customer_id"].unique()[:200])
    loaded = ModelBundle.load(tmp_path)
    first = score_task(CONFIG, "churn", as_of=AS_OF, tables=tables, model=churn.bundle)
    pd.testing.assert_frame_equal(
        score_task(CONFIG, "churn", as_of=AS_OF, tables=tables, model=loaded), first
    )
    assert json.loads((tmp_path / "bundle.json").read_text())["horizon_method"] == "direct"


def test_scores_are_ranked_probabilities_of_active_customers_only(tables, churn):
    scored = score_task(CONFIG, "churn", as_of=AS_OF, tables=tables, model=churn.bundle)
    assert list(scored.columns) == ["customer_id", "score", "rank"]
    assert scored["score"].is_monotonic_decreasing and scored["rank"].tolist()[:3] == [1, 2, 3]
    assert scored["score"].between(0, 1).all()
    purchases = tables.orders[(tables.orders["timestamp"] < AS_OF) & (tables.orders["amount"] >= 0)]
    last = purchases.groupby("customer_id")["timestamp"]
    active = last.max()[last.max() >= AS_OF - pd.Timedelta(days=120)].index
    assert set(scored["customer_id"]) == set(active)


def test_scoring_ignores_every_event_at_or_after_the_as_of_date(tables, churn):
    scored = score_task(CONFIG, "churn", as_of=AS_OF, tables=tables, model=churn.bundle)
    pd.testing.assert_frame_equal(
        score_task(CONFIG, "churn", as_of=AS_OF, tables=with_future(tables), model=churn.bundle),
        scored,
    )


def test_high_risk_customers_get_reasons_that_raise_their_risk(tables, churn):
    from cxpredict.features import Vocabulary, build_features, feature_catalogue

    vocabulary = Vocabulary.from_dict(churn.bundle.vocabulary)
    known = tables.before(AS_OF)
    X = build_features(known, AS_OF, vocabulary=vocabulary)
    scored = score_task(CONFIG, "churn", as_of=AS_OF, tables=tables, model=churn.bundle)
    top = X.loc[scored["customer_id"].head(20)]
    reasons = churn.bundle.explain(
        top, catalogue=feature_catalogue(known, vocabulary=vocabulary), top=3
    )
    assert list(reasons.columns) == ["reason_1", "reason_2", "reason_3"]
    assert (reasons["reason_1"] != "").all()
    contributions = churn.bundle.contributions(top)
    assert (contributions.drop(columns="bias").max(axis=1) > 0).all()


def test_a_model_from_another_task_kind_is_refused(tables, churn):
    with pytest.raises(FeatureMismatch, match="churn model but task 'spend' is value"):
        score_task(CONFIG, "spend", as_of=AS_OF, tables=tables, model=churn.bundle)


def test_a_missing_bundle_says_how_to_make_one(tmp_path):
    with pytest.raises(ModelNotFound, match="cxpredict train"):
        ModelBundle.load(tmp_path)


def test_a_value_task_predicts_spend_and_orders(tables):
    result = train_task(CONFIG, "spend", as_of=AS_OF, tables=tables, btyd_baselines=())
    assert {"lightgbm", "last_period"} <= set(result.metrics["model"])
    scored = score_task(CONFIG, "spend", as_of=AS_OF, tables=tables, model=result.bundle)
    extra = ["expected_orders", "next_order_days", "next_order_note"]
    assert list(scored.columns) == ["customer_id", "score", "rank", *extra]
    assert (scored["score"] >= 0).all() and (scored["expected_orders"] >= 0).all()
    # a next order is dated within the horizon, or the note says why not
    dated = scored["next_order_days"].notna()
    assert dated.any() and scored.loc[dated, "next_order_days"].between(0, 56).all()
    assert (scored.loc[dated, "next_order_note"] == "").all()
    assert (scored.loc[~dated, "next_order_note"] != "").all()


def test_a_preference_task_lists_the_top_values_with_probabilities(tables):
    result = train_task(CONFIG, "category", as_of=AS_OF, tables=tables)
    assert {"lightgbm", "most_frequent", "popularity"} <= set(result.metrics["model"])
    # what each fold serves is reported for every fold, so that its mean compares like folds
    folds = result.metrics.groupby("model")["cutoff"].agg(lambda c: sorted(set(c)))
    assert folds["served"] == folds["lightgbm"]
    scored = score_task(CONFIG, "category", as_of=AS_OF, tables=tables, model=result.bundle)
    assert list(scored.columns[:5]) == [
        "customer_id",
        "score",
        "rank",
        "top_1",
        "top_1_probability",
    ]
    assert "top_3" in scored.columns
    assert (scored["top_1_probability"] >= scored["top_2_probability"]).all()


def test_a_horizon_longer_than_the_history_is_extrapolated_and_says_so(tables):
    config = CONFIG
    task = config.task("year")
    first = tables.orders["timestamp"].min()
    horizon, method = choose_label_horizon(
        "year", task, training=config.training, as_of=AS_OF, first_event=first
    )
    assert method == "btyd_extrapolation" and horizon < 365 and horizon % 7 == 0
    with pytest.raises(IneligibleTask, match="needs .* days of history.*shorter horizon"):
        choose_label_horizon(
            "year",
            task,
            training=config.training,
            as_of=AS_OF,
            first_event=first,
            allow_extrapolation=False,
        )


def test_a_feed_that_stopped_before_the_as_of_date_is_refused_with_its_last_day(tables):
    stopped = tables.before(AS_OF - pd.Timedelta(days=40))
    with pytest.raises(IneligibleTask) as info:
        train_task(CONFIG, "churn", as_of=AS_OF, tables=stopped, backtest=False)
    latest = stopped.latest_event()
    assert str(info.value).startswith(
        f"task 'churn': the latest order or interaction is on {latest:%Y-%m-%d}, 40 days "
        "before the as-of date 2025-03-01"
    )
    assert f"train as of {latest + pd.Timedelta(days=1):%Y-%m-%d}" in str(info.value)
    # a gap within training.max_feed_gap_days is a quiet fortnight, not a stopped feed
    patient = project(
        {"churn": {"kind": "churn", "horizon_days": 56, "active_days": 120}},
        max_feed_gap_days=45,
    )
    assert train_task(patient, "churn", as_of=AS_OF, tables=stopped, backtest=False).bundle


def test_too_few_churners_is_refused_with_what_to_change(tables):
    config = project(
        {"churn": {"kind": "churn", "horizon_days": 56, "active_days": 120}},
        min_positives=100_000,
    )
    with pytest.raises(IneligibleTask, match=r"min_positives.*shorter horizon"):
        train_task(config, "churn", as_of=AS_OF, tables=tables, backtest=False)


def test_a_preference_with_one_value_chosen_often_enough_is_refused_with_what_to_change(
    tables,
):
    config = project({"category": {"kind": "preference", "horizon_days": 56}}, min_positives=461)
    with pytest.raises(IneligibleTask, match=r"second most chosen value.*longer horizon"):
        train_task(config, "category", as_of=AS_OF, tables=tables, backtest=False)


def test_a_probability_beyond_the_history_starts_from_pareto_nbd_and_is_scored_on_its_window(
    tables, tmp_path
):
    result = train_task(CONFIG, "year", as_of=AS_OF, tables=tables, btyd_baselines=("pareto",))
    bundle = result.bundle
    assert result.horizon_method == "btyd_start" == bundle.horizon_method
    assert result.label_horizon_days < 365 and bundle.horizon_days == 365
    assert "Pareto/NBD" in result.details["horizon_method_text"]
    scored = score_task(CONFIG, "year", as_of=AS_OF, tables=tables, model=bundle)
    assert scored["score"].between(0, 1).all()
    # the backtest scores the model over the labelled window, where labels exist
    assert set(result.metrics["model"]) >= {"lightgbm", "pareto"}
    restored = ModelBundle.load(bundle.save(tmp_path / "year"))
    again = score_task(CONFIG, "year", as_of=AS_OF, tables=tables, model=restored)
    pd.testing.assert_frame_equal(again, scored)


def year_model_and_buyers(tables: Tables, folder: Path) -> tuple[ModelBundle, pd.DataFrame]:
    """The started 365-day repurchase bundle, saved and loaded, and its buyers' features."""
    bundle = train_task(CONFIG, "year", as_of=AS_OF, tables=tables, backtest=False).bundle
    bundle = ModelBundle.load(bundle.save(folder / "year"))
    X = build_features(
        tables.before(AS_OF),
        AS_OF,
        settings=CONFIG.features,
        vocabulary=Vocabulary.from_dict(bundle.vocabulary),
    )
    return bundle, X[X["days_since_last_order"].notna()]


def test_reasons_and_dates_say_what_they_lack_and_an_empty_frame_has_none(churn, tables):
    bundle = churn.bundle
    X = build_features(
        tables.before(AS_OF),
        AS_OF,
        settings=CONFIG.features,
        vocabulary=Vocabulary.from_dict(bundle.vocabulary),
    )
    catalogue = feature_catalogue(
        tables, settings=CONFIG.features, vocabulary=Vocabulary.from_dict(bundle.vocabulary)
    )
    with pytest.raises(ValueError, match="no sentence for .* feature\\(s\\) of the model"):
        bundle.explain(X, catalogue=catalogue.iloc[:5])
    empty = bundle.explain(X.iloc[:0], catalogue=catalogue)
    assert empty.empty and list(empty.columns) == ["reason_1", "reason_2", "reason_3"]
    with pytest.raises(FeatureMismatch, match="btyd_frequency"):
        bundle.next_order(X.drop(columns=["btyd_frequency"]))


def test_a_task_is_trained_from_a_mapping_of_frames_and_text_dates_in_iso_8601(tables):
    frames = {"orders": tables.orders, "interactions": tables.interactions}
    with pytest.raises(IneligibleTask, match="no order before the as-of date"):
        train_task(CONFIG, "churn", as_of="2000-01-01", tables=frames, backtest=False)
    with pytest.raises(ValueError, match="not a date in ISO 8601"):
        train_task(CONFIG, "churn", as_of="01/03/2025", tables=frames, backtest=False)


def test_a_started_probability_grows_with_the_horizon_for_every_customer(tables, tmp_path):
    bundle, X = year_model_and_buyers(tables, tmp_path)
    model = bundle.estimators["score"]
    inputs = bundle.model_input(X)
    short = model.predict_proba(inputs, horizon_days=bundle.label_horizon_days)[:, 1]
    long = model.predict_proba(inputs)[:, 1]
    assert (long >= short).all() and long.mean() > short.mean()


def test_a_started_model_tells_its_start_among_the_reasons_and_explains_only_high_scores(
    tables, tmp_path
):
    from cxpredict.backtest import START_CONTRIBUTION

    bundle, X = year_model_and_buyers(tables, tmp_path)  # saved: the reference is kept
    model = bundle.estimators["score"]
    inputs = bundle.model_input(X)
    contributions = bundle.contributions(X)
    start = contributions[START_CONTRIBUTION].to_numpy()
    # the start's column is the customer's start against the typical one, on the raw scale
    np.testing.assert_allclose(start, model.start_raw(inputs) - model.start_reference_)
    raw = model.raw_score(inputs)
    np.testing.assert_allclose(
        contributions.sum(axis=1), raw - model.start_reference_, rtol=1e-6, atol=1e-6
    )
    vocabulary = Vocabulary.from_dict(bundle.vocabulary)
    catalogue = feature_catalogue(tables, settings=CONFIG.features, vocabulary=vocabulary)
    reasons = bundle.explain(X, catalogue=catalogue)
    above = raw > np.median(raw)
    told = reasons["reason_1"].str.contains("days with a repeat purchase in")
    assert told[above].any()
    # customers scored below the typical score are given no reason
    low = contributions.drop(columns="bias").sum(axis=1).to_numpy() <= 0
    assert low.any() and (reasons.loc[low, "reason_1"] == "").all()
    assert (reasons.loc[~low, "reason_1"] != "").mean() > 0.9
    # the BTYD outputs are over the label windows the model learned on: their sentences say so
    told = pd.concat([reasons[f"reason_{k}"] for k in (1, 2, 3)])
    windows = set(told.str.extract(r"in the next (\d+) days")[0].dropna())
    assert windows == {str(bundle.label_horizon_days)}
    # a bundle saved before the typical start was kept explains its correction, for everyone
    model.start_reference_ = None
    assert START_CONTRIBUTION not in bundle.contributions(X).columns
    older = bundle.explain(X, catalogue=catalogue)
    assert (older.loc[above, "reason_1"] != "").mean() > 0.9


def test_the_calibration_is_fitted_on_the_validation_cutoff_and_chosen_on_later_test_cutoffs(
    churn,
):
    on_test = [fold["calibration_brier_on_test"] for fold in churn.details["backtest_folds"]]
    assert on_test and all({"none", "platt"} <= set(scores) for scores in on_test)
    best = min(on_test[0], key=on_test[0].__getitem__)
    assert churn.bundle.calibration_method == best
    assert churn.details["calibration_chosen_on"] == "the backtest's test cutoffs"


def test_scoring_on_the_training_date_finds_no_drift_from_the_stored_reference(tables, churn):
    from cxpredict.scoring import Reference, psi
    from cxpredict.training import eligible

    bundle = churn.bundle
    known = tables.before(AS_OF)
    X = build_features(
        known, AS_OF, settings=CONFIG.features, vocabulary=Vocabulary.from_dict(bundle.vocabulary)
    )
    X = X[eligible(X, CONFIG.task("churn"))]
    references = bundle.reference["features"]
    assert set(references) == set(bundle.features)
    for name in ("tenure_days", "days_since_first_order", "days_since_last_order"):
        if name in references:
            value = psi(Reference.from_dict(references[name]), X[name].to_numpy(dtype=float))
            assert value == pytest.approx(0.0, abs=1e-9), name
    scores = bundle.predict(X)["probability"].to_numpy()
    assert psi(Reference.from_dict(bundle.reference["score"]), scores) == pytest.approx(
        0.0, abs=1e-9
    )


def test_a_preference_model_stores_a_reference_of_its_top_probability(tables):
    result = train_task(CONFIG, "category", as_of=AS_OF, tables=tables)
    reference = result.bundle.reference
    assert set(reference["features"]) == set(result.bundle.features)
    assert sum(reference["score"]["proportions"]) + reference["score"]["missing"] == (
        pytest.approx(1.0)
    )


def test_a_model_keeps_scoring_when_features_are_added_after_its_training(tables, churn):
    later = CONFIG.model_copy(
        update={"features": CONFIG.features.model_copy(update={"sql": (ADDED_FEATURE,)})}
    )
    vocabulary = Vocabulary.from_dict(churn.bundle.vocabulary)
    catalogue = feature_catalogue(tables, settings=later.features, vocabulary=vocabulary)
    assert catalogue_version(catalogue) != churn.bundle.catalogue_version
    assert ADDED_FEATURE.name not in churn.bundle.features
    assert set(churn.bundle.feature_fingerprints) == set(churn.bundle.features)

    now = score_task(later, "churn", as_of=AS_OF, tables=tables, model=churn.bundle)
    before = score_task(CONFIG, "churn", as_of=AS_OF, tables=tables, model=churn.bundle)
    pd.testing.assert_frame_equal(now, before)


def test_a_model_from_another_feature_catalogue_is_refused_with_what_changed(tables, churn):
    from dataclasses import replace

    bundle = churn.bundle
    older = replace(bundle, catalogue_version="features-1-000000000000")
    name = bundle.features[3]
    redefined = replace(older, feature_fingerprints={**bundle.feature_fingerprints, name: "0" * 12})
    with pytest.raises(
        FeatureMismatch, match=f"features the model uses were redefined: {name} .*retrain"
    ):
        score_task(CONFIG, "churn", as_of=AS_OF, tables=tables, model=redefined)
    gone = replace(older, features=[*bundle.features, "retired_feature"])
    with pytest.raises(
        FeatureMismatch, match="features the model uses are no longer built: retired_feature "
    ):
        score_task(CONFIG, "churn", as_of=AS_OF, tables=tables, model=gone)
    unfingerprinted = replace(older, feature_fingerprints={})
    with pytest.raises(FeatureMismatch, match="stores no fingerprint of each feature"):
        score_task(CONFIG, "churn", as_of=AS_OF, tables=tables, model=unfingerprinted)


def test_a_bundle_saved_before_feature_fingerprints_loads_and_scores(tmp_path, tables, churn):
    folder = churn.bundle.save(tmp_path / "bundle")
    meta = json.loads((folder / "bundle.json").read_text(encoding="utf-8"))
    del meta["feature_fingerprints"]
    (folder / "bundle.json").write_text(json.dumps(meta), encoding="utf-8")
    loaded = ModelBundle.load(folder)
    assert loaded.feature_fingerprints == {}
    scored = score_task(CONFIG, "churn", as_of=AS_OF, tables=tables, model=loaded)
    expected = score_task(CONFIG, "churn", as_of=AS_OF, tables=tables, model=churn.bundle)
    pd.testing.assert_frame_equal(scored, expected)
