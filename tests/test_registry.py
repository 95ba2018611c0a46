"""The MLflow registry on a temporary SQLite store: logging, aliases, promotion, rollback."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import ADDED_FEATURE

from cxpredict import registry
from cxpredict.config import ChurnTask, ProjectConfig, parse_config
from cxpredict.errors import ConfigError, FeatureMismatch, ModelNotFound, RegistryUnavailable
from cxpredict.models import LightGBMClassifier, booster_from_dict, booster_to_dict
from cxpredict.registry import CHALLENGER, CHAMPION, PromotionRefused
from cxpredict.sample import generate_sample

FEATURES = ["days_since_last_order", "orders_lifetime", "spend_lifetime"]
CATALOGUE = "features-1-0123456789ab"
AS_OF = pd.Timestamp("2025-10-01", tz="UTC")
BACKTEST = [pd.Timestamp(d, tz="UTC") for d in ("2025-06-03", "2025-07-01", "2025-07-29")]
AT = pd.Timestamp("2025-10-02 09:00", tz="UTC")


@dataclass
class TinyBundle:
    """A stand-in model bundle: one small LightGBM classifier saved as JSON."""

    model: LightGBMClassifier
    features: list[str]
    catalogue_version: str
    kind: str = "churn"
    feature_medians: dict[str, float] = field(default_factory=dict)
    feature_fingerprints: dict[str, str] = field(default_factory=dict)

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        p = self.model.predict_proba(X[self.features])[:, 1]
        return pd.DataFrame({"probability": p}, index=X.index)

    def feature_importance(self) -> pd.Series:
        return self.model.feature_importance()

    def save(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        state = {
            "features": self.features,
            "catalogue_version": self.catalogue_version,
            "kind": self.kind,
            "feature_medians": self.feature_medians,
            "model": booster_to_dict(self.model),
        }
        (path / "bundle.json").write_text(json.dumps(state), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TinyBundle:
        state = json.loads((Path(path) / "bundle.json").read_text(encoding="utf-8"))
        return cls(
            booster_from_dict(state["model"]),
            state["features"],
            state["catalogue_version"],
            state["kind"],
            state["feature_medians"],
        )


def tiny_bundle(seed: int = 0, catalogue: str = CATALOGUE) -> TinyBundle:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(400, 3)), columns=FEATURES)
    y = (X["days_since_last_order"] + rng.normal(size=400) > 0).astype(int)
    model = LightGBMClassifier(params={"min_data_in_leaf": 20}, num_boost_round=20, seed=seed)
    model.fit(X[:300], y[:300], X_valid=X[300:], y_valid=y[300:])
    medians = {f: 1.5 for f in FEATURES}
    return TinyBundle(model, FEATURES, catalogue, feature_medians=medians)


@dataclass
class Trained:
    """What training hands to the registry: metrics per backtest cutoff and the bundle."""

    as_of: pd.Timestamp
    metrics: pd.DataFrame
    training_cutoffs: list[pd.Timestamp]
    catalogue_version: str
    bundle: TinyBundle


def backtest_metrics(pr_auc: float, cutoffs: list[pd.Timestamp] = BACKTEST) -> pd.DataFrame:
    rows = []
    for k, cutoff in enumerate(cutoffs):
        figures = {
            "lightgbm": pr_auc + 0.01 * (k - 1),
            "recency": 0.30,
            "logistic": 0.35,
        }
        for model, value in figures.items():
            for metric, scale in (
                ("pr_auc", 1.0),
                ("roc_auc", 1.5),
                ("lift@5%", 4.0),
                ("lift@10%", 3.0),
                ("lift@20%", 2.0),
                ("capture@5%", 0.2),
                ("capture@10%", 0.3),
                ("capture@20%", 0.4),
                ("brier", 0.3),
            ):
                rows.append(
                    {"cutoff": cutoff, "model": model, "metric": metric, "value": value * scale}
                )
    return pd.DataFrame(rows)


#: Reads the stand-in bundles, in this process and in a scoring server run with tests/ on its path.
LOADER = "test_registry:TinyBundle.load"


@pytest.fixture(autouse=True)
def _no_store_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def tables():
    return generate_sample(300, seed=1)


def make_config(root: Path) -> ProjectConfig:
    churn = {"kind": "churn", "horizon_days": 56, "active_days": 180}
    raw = {
        "project": "shop",
        "data": {"orders": {"path": "orders.csv"}},
        "tasks": {name: churn for name in ("churn", "worse", "other", "shifted")},
        "training": {"n_backtest_cutoffs": 3, "step_days": 28},
    }
    return parse_config(raw, root=root)


def log(config: ProjectConfig, task: str, tables, *, pr_auc: float, seed: int = 0, **kw: Any):
    """Log a stand-in training result; its bundle is saved by the registry (no bundle_dir)."""
    result = Trained(
        as_of=AS_OF,
        metrics=backtest_metrics(pr_auc, kw.get("cutoffs", BACKTEST)),
        training_cutoffs=[AS_OF - pd.Timedelta(days=112 + 28 * j) for j in range(3)][::-1],
        catalogue_version=CATALOGUE,
        bundle=tiny_bundle(seed),
    )
    return registry.log_training_run(config, task, result, tables=tables, loader=LOADER)


@dataclass
class Template:
    """A store with two versions of each scenario's model; tests work on copies of it."""

    root: Path
    logged: dict[tuple[str, int], registry.RegisteredVersion]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, tables) -> Template:
    """Logging takes seconds, so every version is logged once; each test copies the database.

    ``churn``: 0.50 then a better 0.60; ``worse``: 0.50 then 0.45; ``other``: 0.50, then 0.90
    on other data; ``shifted``: 0.50, then 0.55 on cutoffs moved one step later.
    """
    root = tmp_path_factory.mktemp("template")
    config = make_config(root)
    later = [*BACKTEST[1:], BACKTEST[-1] + pd.Timedelta(days=28)]
    plan = [
        ("churn", tables, 0.50, BACKTEST),
        ("churn", tables, 0.60, BACKTEST),
        ("worse", tables, 0.50, BACKTEST),
        ("worse", tables, 0.45, BACKTEST),
        ("other", tables, 0.50, BACKTEST),
        ("other", generate_sample(300, seed=2), 0.90, BACKTEST),
        ("shifted", tables, 0.50, BACKTEST),
        ("shifted", tables, 0.55, later),
    ]
    logged = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        for task, data, pr_auc, cutoffs in plan:
            n = sum(1 for key in logged if key[0] == task)
            logged[task, n] = log(config, task, data, pr_auc=pr_auc, seed=n, cutoffs=cutoffs)
    return Template(root, logged)


@pytest.fixture
def config(tmp_path: Path, template: Template) -> ProjectConfig:
    (tmp_path / "mlruns").mkdir()
    shutil.copy(template.root / "mlruns" / "mlflow.db", tmp_path / "mlruns" / "mlflow.db")
    return make_config(tmp_path)


@pytest.fixture
def empty(tmp_path: Path) -> ProjectConfig:
    return make_config(tmp_path / "empty")


def aliases(config: ProjectConfig, task: str = "churn") -> dict[str, str]:
    model = client_for(config).get_registered_model(registry.model_name(config, task))
    return {alias: str(version) for alias, version in model.aliases.items()}


def client_for(config: ProjectConfig):
    import mlflow

    uri = registry.default_tracking_uri(config)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


# ------------------------------------------------------------------------------ the store


def test_the_default_store_is_a_sqlite_file_under_the_project_root(tmp_path: Path) -> None:
    config = parse_config({"project": "p", "data": {"orders": {"path": "o.csv"}}}, root=tmp_path)
    uri = registry.default_tracking_uri(config)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert registry.artifact_location(uri) == (tmp_path.resolve() / "mlruns/artifacts").as_uri()


def test_a_configured_path_is_relative_to_the_config_folder(tmp_path: Path) -> None:
    raw = {"project": "p", "data": {"orders": {"path": "o.csv"}}}
    relative = parse_config({**raw, "mlflow": {"tracking_uri": "store/t.db"}}, root=tmp_path)
    assert registry.default_tracking_uri(relative) == f"sqlite:///{tmp_path.resolve()}/store/t.db"
    server = parse_config({**raw, "mlflow": {"tracking_uri": "http://mlflow:5000"}}, root=tmp_path)
    assert registry.default_tracking_uri(server) == "http://mlflow:5000"
    assert registry.artifact_location("http://mlflow:5000") is None


def test_the_environment_variable_overrides_the_config(tmp_path: Path) -> None:
    config = parse_config({"project": "p", "data": {"orders": {"path": "o.csv"}}}, root=tmp_path)
    env = {"MLFLOW_TRACKING_URI": "sqlite:////elsewhere/mlflow.db"}
    assert registry.resolve_tracking_uri(config, env) == "sqlite:////elsewhere/mlflow.db"
    assert registry.resolve_tracking_uri(config, {}) == registry.default_tracking_uri(config)
    with pytest.raises(ConfigError, match=r"is a path, not a URI; use sqlite:////some/mlflow.db"):
        registry.resolve_tracking_uri(config, {"MLFLOW_TRACKING_URI": "/some"})
    with pytest.raises(ConfigError, match=r"use sqlite:////some/runs.db for"):
        registry.resolve_tracking_uri(config, {"MLFLOW_TRACKING_URI": "/some/runs.db"})


def test_a_store_that_cannot_be_read_is_not_reported_as_a_missing_champion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.exceptions import MlflowException

    config = parse_config({"project": "p", "data": {"orders": {"path": "o.csv"}}}, root=tmp_path)

    def refused(self: object, *args: object) -> None:
        raise MlflowException("API request to http://mlflow:5000 failed: connection refused")

    monkeypatch.setattr("mlflow.MlflowClient.get_model_version_by_alias", refused)
    with pytest.raises(RegistryUnavailable, match=r"the MLflow store http://mlflow:5000 cannot"):
        registry.load_champion(config, "churn", tracking_uri="http://mlflow:5000")


def test_the_data_fingerprint_ignores_row_order_but_not_content(tables) -> None:
    fingerprint = registry.data_fingerprint(tables)
    shuffled = tables.orders.sample(frac=1.0, random_state=0)
    same = registry.data_fingerprint(type(tables)(shuffled, tables.interactions, tables.customers))
    changed = tables.orders.copy()
    changed.loc[changed.index[0], "amount"] += 1.0
    other = registry.data_fingerprint(type(tables)(changed, tables.interactions, tables.customers))
    assert fingerprint["hash"] == same["hash"] != other["hash"]
    assert fingerprint["tables"]["orders"]["rows"] == len(tables.orders)
    assert set(fingerprint["tables"]["orders"]) == {"rows", "hash", "first", "last"}


# ------------------------------------------------------------------------------ logging


def test_the_first_version_is_challenger_and_champion_with_card_and_tags(
    config: ProjectConfig, template: Template, tables
) -> None:
    first = template.logged["churn", 0]
    assert (first.name, first.version) == ("shop-churn", "1")
    assert set(first.aliases) == {CHALLENGER, CHAMPION}
    version = client_for(config).get_model_version("shop-churn", "1")
    assert version.tags["catalogue_version"] == CATALOGUE
    assert version.tags["as_of"] == AS_OF.isoformat()
    assert version.tags["data_hash"] == registry.data_fingerprint(tables.before(AS_OF))["hash"]
    card = version.description
    for text in ("churn: no order in [cutoff, cutoff + 56 days)", "2025-06-03", "Known limit"):
        assert text in card
    assert "| metric | lightgbm | recency | logistic |" in card
    assert "| pr_auc | 0.5 | 0.3 | 0.35 |" in card
    assert (template.root / "mlruns" / "artifacts").is_dir()


def test_a_second_version_is_only_the_challenger(config: ProjectConfig, template: Template) -> None:
    assert template.logged["churn", 1].aliases == (CHALLENGER,)
    assert aliases(config) == {CHALLENGER: "2", CHAMPION: "1"}


def test_no_training_customer_id_appears_in_any_logged_artifact(
    config: ProjectConfig, template: Template, tables, tmp_path: Path
) -> None:
    out = registry.version_artifacts(config, "churn", "1", tmp_path / "download")
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.relative_to(out).as_posix() for p in files}
    assert {"run/backtest/metrics.csv", "run/data/fingerprint.json"} <= names
    assert {"run/plots/gains_lift.png", "run/plots/feature_importance.png"} <= names
    assert {"model/MLmodel", "model/input_example.json"} <= names
    store = [p for p in (template.root / "mlruns").rglob("*") if p.is_file()]
    ids = set(tables.orders["customer_id"].astype(str)) | set(
        tables.customers["customer_id"].astype(str)
    )
    assert len(ids) == 300
    for path in files + store:
        content = path.read_bytes()
        leaked = [i for i in ids if i.encode() in content]
        assert not leaked, f"{path} contains customer ids {leaked[:3]}"


# ------------------------------------------------------------------------------ promotion


def test_a_better_challenger_is_promoted_and_the_history_kept(config: ProjectConfig) -> None:
    result = registry.promote(config, "churn", at=AT)
    assert result.promoted and result.champion == "2" and result.previous_champion == "1"
    assert result.comparison is not None
    assert result.comparison.cutoffs == tuple(BACKTEST)
    assert result.comparison.champion == pytest.approx(0.5)
    assert result.comparison.challenger == pytest.approx(0.6)
    assert aliases(config) == {CHAMPION: "2"}
    client = client_for(config)
    tags = client.get_registered_model("shop-churn").tags
    assert json.loads(tags["champion_history"]) == ["1", "2"]
    assert tags["previous_champion"] == "1"
    version = client.get_model_version("shop-churn", "2")
    assert version.tags["promoted_at"] == AT.isoformat()
    assert "champion v1 0.5000, challenger v2 0.6000" in version.tags["promotion_evidence"]


def test_a_worse_challenger_is_refused_with_both_figures(config: ProjectConfig) -> None:
    with pytest.raises(PromotionRefused, match=r"champion v1 0\.5000, challenger v2 0\.4500"):
        registry.promote(config, "worse", at=AT)
    assert PromotionRefused.exit_code not in range(11)
    assert aliases(config, "worse") == {CHALLENGER: "2", CHAMPION: "1"}


def test_an_equal_figure_is_not_better() -> None:
    common = {"cutoffs": tuple(BACKTEST), "method": "logged"}
    same = registry.Comparison("pr_auc", True, champion=0.5, challenger=0.5, **common)
    lower = registry.Comparison("brier", False, champion=0.2, challenger=0.19, **common)
    assert not same.challenger_better
    assert lower.challenger_better


def test_force_with_a_reason_promotes_and_records_the_reason(config: ProjectConfig) -> None:
    with pytest.raises(PromotionRefused, match="--reason"):
        registry.promote(config, "worse", force=True)
    result = registry.promote(config, "worse", force=True, reason="new catalogue", at=AT)
    assert result.forced and result.champion == "2"
    tags = client_for(config).get_model_version("shop-worse", "2").tags
    assert tags["promotion_reason"] == "new catalogue"
    assert tags["promotion_forced"] == "true"
    assert aliases(config, "worse")[CHAMPION] == "2"


def test_a_champion_that_can_no_longer_score_gives_way_to_a_challenger_that_is_not_better(
    tmp_path: Path, tables
) -> None:
    config = make_config(tmp_path)
    prints = {f: "a" * 12 for f in FEATURES}

    def log_version(pr_auc: float, catalogue: str, fingerprints: dict[str, str]) -> None:
        bundle = tiny_bundle(0, catalogue=catalogue)
        bundle.feature_fingerprints = fingerprints
        result = Trained(
            as_of=AS_OF,
            metrics=backtest_metrics(pr_auc),
            training_cutoffs=[AS_OF - pd.Timedelta(days=112 + 28 * j) for j in range(3)][::-1],
            catalogue_version=catalogue,
            bundle=bundle,
        )
        registry.log_training_run(config, "churn", result, tables=tables, loader=LOADER)

    log_version(0.5, CATALOGUE, prints)
    # features were only added since: the champion still scores, so the figures decide
    log_version(0.45, "features-1-added", {**prints, "visits_30d": "b" * 12})
    with pytest.raises(PromotionRefused, match="is not better than champion v1"):
        registry.promote(config, "churn", at=AT)
    # a feature it uses was redefined: it can no longer score, the challenger replaces it
    log_version(0.45, "features-1-redefined", {**prints, "orders_lifetime": "c" * 12})
    result = registry.promote(config, "churn", at=AT)
    assert result.promoted and not result.forced
    assert (result.champion, result.previous_champion) == ("3", "1")
    assert "features the model uses were redefined: orders_lifetime" in result.message
    tags = client_for(config).get_model_version("shop-churn", "3").tags
    assert tags["promotion_reason"].startswith("champion v1 can no longer score: features")
    assert tags["promotion_forced"] == "false"


def test_a_champion_trained_for_another_task_definition_gives_way_to_the_challenger(
    tmp_path: Path, tables
) -> None:
    before = make_config(tmp_path)
    log(before, "churn", tables, pr_auc=0.5)
    raw = before.model_dump(mode="json", exclude={"root"})
    raw["tasks"]["churn"] = {**raw["tasks"]["churn"], "horizon_days": 49}
    now = parse_config(raw, root=tmp_path)
    log(now, "churn", tables, pr_auc=0.45, seed=1)
    result = registry.promote(now, "churn", at=AT)
    assert result.promoted and (result.champion, result.previous_champion) == ("2", "1")
    reason = client_for(now).get_model_version("shop-churn", "2").tags["promotion_reason"]
    assert "horizon_days 49 (trained with 56)" in reason


def test_a_challenger_trained_for_the_old_task_definition_does_not_replace_such_a_champion(
    tmp_path: Path, tables
) -> None:
    before = make_config(tmp_path)
    log(before, "churn", tables, pr_auc=0.5)
    log(before, "churn", tables, pr_auc=0.6, seed=1)  # better, but for the old horizon
    raw = before.model_dump(mode="json", exclude={"root"})
    raw["tasks"]["churn"] = {**raw["tasks"]["churn"], "horizon_days": 49}
    now = parse_config(raw, root=tmp_path)
    with pytest.raises(PromotionRefused, match="challenger v2 was trained for an earlier"):
        registry.promote(now, "churn", at=AT)
    assert str(client_for(now).get_model_version_by_alias("shop-churn", "champion").version) == "1"


def test_a_description_changes_no_evaluation(tables) -> None:
    task = ChurnTask(kind="churn", horizon_days=56, active_days=180)
    described = task.model_copy(update={"description": "who leaves"})
    keys = [registry.evaluation_key(tables, AS_OF, t) for t in (task, described)]
    assert keys[0] == keys[1]
    longer = task.model_copy(update={"horizon_days": 57})
    assert registry.evaluation_key(tables, AS_OF, longer) != keys[0]


def test_versions_evaluated_on_other_data_are_not_compared(config: ProjectConfig) -> None:
    with pytest.raises(PromotionRefused, match="share no backtest cutoff evaluated on the same"):
        registry.promote(config, "other")
    assert aliases(config, "other")[CHAMPION] == "1"
    # a champion logged by an earlier release: the refusal says how to move past it
    client_for(config).delete_model_version_tag("shop-other", "1", "cxpredict_version")
    with pytest.raises(PromotionRefused, match='logged by an earlier cxpredict.*"upgrade"'):
        registry.promote(config, "other")


def test_versions_trained_on_other_label_windows_are_refused_with_the_reason(
    empty: ProjectConfig, tables
) -> None:
    # while the history is short, a later training labels a longer window: no cutoff compares
    for number, days in enumerate((49, 56)):
        result = Trained(
            as_of=AS_OF,
            metrics=backtest_metrics(0.5 + 0.1 * number),
            training_cutoffs=[AS_OF - pd.Timedelta(days=112 + 28 * j) for j in range(3)][::-1],
            catalogue_version=CATALOGUE,
            bundle=tiny_bundle(number),
        )
        result.label_horizon_days = days  # type: ignore[attr-defined]
        registry.log_training_run(empty, "churn", result, tables=tables, loader=LOADER)
    with pytest.raises(PromotionRefused, match="their label windows differ \\(49 and 56 days"):
        registry.promote(empty, "churn")


def test_only_shared_cutoffs_are_compared(config: ProjectConfig) -> None:
    result = registry.promote(config, "shifted")
    assert result.comparison is not None
    assert result.comparison.cutoffs == tuple(BACKTEST[1:])
    # the champion's last two cutoffs: 0.50 and 0.51; the challenger's first two: 0.54, 0.55
    assert result.comparison.champion == pytest.approx(0.505)
    assert result.comparison.challenger == pytest.approx(0.545)


def test_promoting_without_a_model_says_to_train_first(empty: ProjectConfig) -> None:
    with pytest.raises(ModelNotFound, match="cxpredict train"):
        registry.promote(empty, "churn")


# ------------------------------------------------------------------------------ rollback


def test_rollback_points_the_champion_back_to_the_previous_one(config: ProjectConfig) -> None:
    with pytest.raises(ModelNotFound, match="no earlier champion"):
        registry.rollback(config, "churn")
    registry.promote(config, "churn")
    result = registry.rollback(config, "churn", at=AT)
    assert (result.champion, result.previous_champion) == ("1", "2")
    assert aliases(config)[CHAMPION] == "1"
    client = client_for(config)
    assert json.loads(client.get_registered_model("shop-churn").tags["champion_history"]) == ["1"]
    assert client.get_model_version("shop-churn", "2").tags["rolled_back"] == AT.isoformat()
    # promoted again, the version no longer says it was rolled back
    client.set_registered_model_alias("shop-churn", CHALLENGER, "2")
    registry.promote(config, "churn", force=True, reason="fixed feed", at=AT)
    tags = client.get_model_version("shop-churn", "2").tags
    assert "rolled_back" not in tags and tags["promotion_reason"] == "fixed feed"


# ------------------------------------------------------------------------------ loading


def test_loading_without_a_champion_says_to_train_first(empty: ProjectConfig) -> None:
    with pytest.raises(ModelNotFound, match=r"run `cxpredict train .*--task churn` first"):
        registry.load_champion(empty, "churn")


def test_the_champion_scores_features_of_its_own_catalogue(config: ProjectConfig) -> None:
    champion = registry.load_champion(config, "churn")
    assert (champion.version, champion.catalogue_version) == ("1", CATALOGUE)
    features = pd.DataFrame(
        {"days_since_last_order": [3.0, -2.0], "orders_lifetime": [1.0, None]},
        index=pd.Index(["x-1", "x-2"], name="customer_id"),
    ).assign(spend_lifetime=[10.0, 0.0])
    scored = champion.predict(features, catalogue_version=CATALOGUE)
    expected = tiny_bundle(0).predict(features.reset_index())["probability"]
    assert list(scored.columns) == ["customer_id", "probability"]
    assert list(scored["customer_id"]) == ["x-1", "x-2"]
    np.testing.assert_allclose(scored["probability"], expected)


def test_scoring_features_of_another_catalogue_raises_feature_mismatch(
    config: ProjectConfig,
) -> None:
    champion = registry.load_champion(config, "churn")
    features = pd.DataFrame({f: [1.0] for f in FEATURES})
    with pytest.raises(FeatureMismatch, match=rf"trained with feature catalogue '{CATALOGUE}'"):
        champion.predict(features, catalogue_version="features-1-ffffffffffff")
    with pytest.raises(FeatureMismatch, match=r"missing column\(s\) 'spend_lifetime'"):
        champion.predict(features.drop(columns="spend_lifetime"), catalogue_version=CATALOGUE)


@pytest.mark.slow
def test_a_trained_bundle_round_trips_through_the_registry(tmp_path: Path) -> None:
    from cxpredict import training
    from cxpredict.features import Vocabulary, build_features, catalogue_version
    from cxpredict.features import feature_catalogue as catalogue_of

    raw = {
        "project": "shop",
        "data": {"orders": {"path": "orders.csv"}},
        "tasks": {"churn": {"kind": "churn", "horizon_days": 56}},
        "training": {"n_cutoffs": 4, "step_days": 28, "min_positives": 10, "min_negatives": 10},
    }
    config = parse_config(raw, root=tmp_path)
    tables = generate_sample(600, seed=1)
    as_of = pd.Timestamp("2025-12-01", tz="UTC")
    result = training.train_task(config, "churn", as_of=as_of, tables=tables, backtest=False)
    logged = registry.log_training_run(config, "churn", result, tables=tables)
    assert logged.aliases == (CHALLENGER, CHAMPION)
    champion = registry.load_champion(config, "churn")
    assert champion.catalogue_version == result.catalogue_version
    known = tables.before(as_of)
    vocabulary = Vocabulary.from_dict(champion.bundle.vocabulary)
    features = build_features(known, as_of, settings=config.features, vocabulary=vocabulary)
    version = catalogue_version(
        catalogue_of(known, settings=config.features, vocabulary=vocabulary)
    )
    scored = champion.predict(features.head(20), catalogue_version=version)
    expected = result.bundle.predict(features.head(20))["probability"].to_numpy()
    np.testing.assert_allclose(scored["probability"], expected)
    assert list(scored["customer_id"]) == list(features.index[:20])
    # a feature added after training: the champion still scores, with the same figures
    later = config.features.model_copy(update={"sql": (ADDED_FEATURE,)})
    wider = build_features(known, as_of, settings=later, vocabulary=vocabulary)
    catalogue = catalogue_of(known, settings=later, vocabulary=vocabulary)
    assert ADDED_FEATURE.name in wider.columns and catalogue_version(catalogue) != version
    again = champion.predict(wider.head(20), catalogue=catalogue)
    np.testing.assert_allclose(again["probability"], expected)
    with pytest.raises(FeatureMismatch, match="trained with feature catalogue"):
        champion.predict(wider.head(20), catalogue_version=catalogue_version(catalogue))
    card = client_for(config).get_model_version("shop-churn", "1").description
    assert "No backtest metrics." in card


def test_a_store_that_cannot_be_read_is_unavailable_not_a_missing_champion(
    empty: ProjectConfig, tmp_path: Path
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n", encoding="utf-8")
    with pytest.raises(RegistryUnavailable, match="file is not a database"):
        registry.load_champion(empty, "churn", tracking_uri=f"sqlite:///{text}")
    elsewhere = f"sqlite:///{tmp_path / 'unmounted' / 'mlflow.db'}"
    with pytest.raises(RegistryUnavailable, match="does not exist \\(a share not mounted"):
        registry.load_champion(empty, "churn", tracking_uri=elsewhere)
