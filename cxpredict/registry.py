"""MLflow: log training runs, register versions, move aliases, promote, roll back, load.

One registered model per task, named ``<project>-<task>``. Every training run registers a
version with the alias ``challenger``; the first version is also ``champion``. Promotion moves
``champion`` only when the challenger beats it on the same backtest cutoffs and the same data,
or when the champion can no longer score the features the challenger was trained on (see
:func:`promote`); rollback points it back at the previous champion. Models are loaded as
``models:/<project>-<task>@champion``.

Nothing logged holds a customer row: the data are described by counts, date ranges and
hashes, metrics are aggregates over backtest cutoffs, plots draw aggregates, and the model's
input example is synthesised.

The tracking store defaults to ``sqlite:///<root>/mlruns/mlflow.db`` with artifacts under
``<root>/mlruns/artifacts``; ``mlflow.tracking_uri`` in the config replaces it, and the
``MLFLOW_TRACKING_URI`` environment variable replaces both (read by the command line only,
through :func:`resolve_tracking_uri`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import yaml

from cxpredict import __version__
from cxpredict.config import ProjectConfig, TaskConfig, task_changes, task_definition
from cxpredict.errors import ConfigError, ModelNotFound, PromotionRefused, RegistryUnavailable
from cxpredict.schemas import Tables, to_utc

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

CHAMPION = "champion"
CHALLENGER = "challenger"
#: The model whose backtest figures decide promotion (the baselines are only reported).
MODEL = "lightgbm"
#: Promotion metric per task kind when ``training.promotion_metric`` is not set.
DEFAULT_PROMOTION_METRICS: dict[str, str] = {
    "churn": "pr_auc",
    "repurchase": "pr_auc",
    "value": "spend/normalised_gini",
    "preference": "ndcg@3",
}
#: Metrics (last path component) for which a smaller value is better.
LOWER_IS_BETTER: frozenset[str] = frozenset(
    {"rmse", "mae", "poisson_deviance", "brier", "log_loss"}
)
HISTORY_TAG = "champion_history"
PREVIOUS_TAG = "previous_champion"
METRICS_ARTIFACT = "backtest/metrics.csv"
CUTOFFS_ARTIFACT = "backtest/cutoffs.json"
#: The model's features, its catalogue version and each feature's fingerprint.
FEATURES_ARTIFACT = "model/features.json"


# ------------------------------------------------------------------------------ the store


def model_name(config: ProjectConfig, task: str) -> str:
    """The registered model of ``task``: ``<project>-<task>``."""
    return f"{config.project}-{task}"


def experiment_name(config: ProjectConfig) -> str:
    """``mlflow.experiment`` from the config, or the project name."""
    return config.mlflow.experiment or config.project


def default_tracking_uri(config: ProjectConfig) -> str:
    """``mlflow.tracking_uri`` from the config, else ``sqlite:///<root>/mlruns/mlflow.db``.

    A value without a scheme is a path to a SQLite file, relative to the config's folder.
    """
    configured = config.mlflow.tracking_uri
    if configured and "://" in configured:
        return configured
    path = Path(configured) if configured else Path("mlruns") / "mlflow.db"
    if not path.is_absolute():
        path = Path(config.root).resolve() / path
    return f"sqlite:///{path}"


def resolve_tracking_uri(config: ProjectConfig, environ: Mapping[str, str]) -> str:
    """The tracking URI to use: ``MLFLOW_TRACKING_URI`` from ``environ``, else the config's.

    Called by the command line with ``os.environ``; library functions take the URI as an
    argument and never read the environment.
    """
    given = environ.get("MLFLOW_TRACKING_URI")
    if given and ":" not in given:
        raise ConfigError(
            f"MLFLOW_TRACKING_URI {given!r} is a path, not a URI; use "
            f"sqlite:///{_database(Path(given).absolute())} for a local store, or "
            "http://host:port for a tracking server"
        )
    return given or default_tracking_uri(config)


def _database(path: Path) -> Path:
    """A SQLite store's file for a path: the path itself when it names a file, else
    ``mlflow.db`` in that folder."""
    return path if path.suffix in (".db", ".sqlite", ".sqlite3") else path / "mlflow.db"


def artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: ``artifacts/`` beside a SQLite file.

    ``None`` for a tracking server, which decides for itself.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    if not database.is_absolute():
        database = Path("/") / database
    return (database.parent / "artifacts").as_uri()


def _uri(config: ProjectConfig, tracking_uri: str | None) -> str:
    return tracking_uri or default_tracking_uri(config)


@contextmanager
def tracking(tracking_uri: str) -> Iterator[Any]:
    """Point MLflow's tracking and registry at ``tracking_uri`` for the duration; yield a client.

    MLflow keeps the URI in module state and in environment variables; both are restored on
    exit so that one project's store never leaks into the next call.
    """
    import mlflow
    from mlflow import MlflowClient
    from sqlalchemy.exc import SQLAlchemyError

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    except (sqlite3.DatabaseError, SQLAlchemyError) as exc:
        raise _unavailable(tracking_uri, exc) from None
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC):
            raise
        raise RegistryUnavailable(
            f"the MLflow store {tracking_uri} cannot be written ({exc.strerror}: "
            f"{exc.filename}); give this account write access to it, or free space"
        ) from None
    finally:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])  # type: ignore[arg-type]
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ensure_experiment(client: Any, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created with a local artifact folder when new."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    return str(client.create_experiment(name, artifact_location=artifact_location(tracking_uri)))


# ------------------------------------------------------------------------------ fingerprints

_TIME_COLUMNS: dict[str, str] = {
    "orders": "timestamp",
    "interactions": "timestamp",
    "customers": "signup_at",
}


def _table_hash(frame: pd.DataFrame) -> str:
    """Order-independent content hash: columns, dtypes and the sorted row hashes."""
    digest = hashlib.sha256()
    for name, dtype in frame.dtypes.items():
        digest.update(f"{name}:{dtype}\x1f".encode())
    rows = pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
    digest.update(np.sort(rows).tobytes())
    return digest.hexdigest()


def data_fingerprint(tables: Tables) -> dict[str, Any]:
    """Row counts, date range and a content hash per table, and one hash over all of them.

    No value of any row is kept: only counts, the first and last event instants and hashes.
    """
    out: dict[str, Any] = {"tables": {}}
    combined = hashlib.sha256()
    for name in ("orders", "interactions", "customers"):
        frame = tables.get(name)
        if frame is None:
            continue
        entry: dict[str, Any] = {"rows": len(frame), "hash": _table_hash(frame)}
        column = _TIME_COLUMNS[name]
        if column in frame.columns and frame[column].notna().any():
            entry["first"] = pd.Timestamp(frame[column].min()).isoformat()
            entry["last"] = pd.Timestamp(frame[column].max()).isoformat()
        out["tables"][name] = entry
        combined.update(f"{name}:{entry['hash']}\x1e".encode())
    out["hash"] = combined.hexdigest()[:16]
    return out


def evaluation_key(
    tables: Tables, cutoff: pd.Timestamp, task: TaskConfig, *, label_days: int | None = None
) -> str:
    """What a backtest fold at ``cutoff`` saw: the data before its label window's end and task.

    A fold trains on events before the cutoff and is scored on the labels of
    ``[cutoff, cutoff + label_days)`` (``label_days``: the label window the run trained on,
    the task's horizon by default); two folds with the same key were evaluated on the same
    customers with the same outcomes, whatever data arrived later.
    """
    days = label_days or task.horizon_days
    end = to_utc(cutoff) + pd.Timedelta(days=max(days, task.horizon_days))
    seen = data_fingerprint(tables.before(end))["hash"]
    # what defines the labels only: a description or top_k changes no figure
    definition = json.dumps(task_definition(task.model_dump(mode="json")), sort_keys=True)
    return hashlib.sha256(f"{seen}\x1f{definition}\x1f{days}".encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ metrics


def promotion_metric(config: ProjectConfig, kind: str) -> tuple[str, bool]:
    """The metric that decides promotion and whether higher is better.

    ``training.promotion_metric`` when set, else PR-AUC for churn and repurchase, the
    normalised Gini of spend for value and NDCG@3 for preference.
    """
    name = config.training.promotion_metric or DEFAULT_PROMOTION_METRICS[kind]
    return name, name.rsplit("/", 1)[-1] not in LOWER_IS_BETTER


def metric_key(model: str, metric: str) -> str:
    """An MLflow-safe metric name: ``lightgbm/lift@10%`` becomes ``lightgbm/lift_at_10pct``."""
    return f"{model}/{metric}".replace("@", "_at_").replace("%", "pct")


def summary_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean of each metric over the backtest cutoffs: metrics as rows, models as columns."""
    table = metrics.pivot_table(
        index="metric", columns="model", values="value", aggfunc="mean", sort=False
    )
    first = [m for m in (MODEL,) if m in table.columns]
    return table[first + [c for c in table.columns if c not in first]]


# ------------------------------------------------------------------------------ run facts


class TrainedTask(Protocol):
    """What :func:`log_training_run` reads from a training result."""

    as_of: pd.Timestamp
    metrics: pd.DataFrame
    training_cutoffs: Sequence[pd.Timestamp]
    catalogue_version: str


@dataclass(frozen=True)
class RunFacts:
    """Everything logged about one training run, gathered from the training result."""

    task_name: str
    task: TaskConfig
    as_of: pd.Timestamp
    metrics: pd.DataFrame
    training_cutoffs: tuple[pd.Timestamp, ...]
    validation_cutoff: pd.Timestamp | None
    backtest_cutoffs: tuple[pd.Timestamp, ...]
    catalogue_version: str
    features: tuple[str, ...]
    fingerprints: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    importance: pd.Series | None = None
    calibration: pd.DataFrame | None = None
    details: dict[str, Any] = field(default_factory=dict)
    #: The label window the run trained on (shorter than the horizon while history is short).
    label_days: int | None = None
    #: Whether the kept model's probabilities are recalibrated (``None``: not known).
    calibrated: bool | None = None


def _attr(names: str, *sources: Any) -> Any:
    """The first attribute among ``names`` (space-separated) that a source has, not None."""
    for source in sources:
        for name in names.split():
            value = getattr(source, name, None)
            if value is not None:
                return value
    return None


def run_facts(config: ProjectConfig, task_name: str, result: Any) -> RunFacts:
    """Gather what is logged from a training result (see :class:`TrainedTask`).

    Facts the result does not carry are looked up on its ``bundle``.
    """
    bundle = getattr(result, "bundle", None)
    metrics = result.metrics.copy()
    metrics["cutoff"] = pd.to_datetime(metrics["cutoff"], utc=True)
    training_cutoffs = _attr("training_cutoffs", result, bundle)
    validation = _attr("validation_cutoff valid_cutoff", result, bundle)
    importance = _attr("feature_importance importance", result)
    if importance is None and hasattr(bundle, "feature_importance"):
        importance = bundle.feature_importance()
    if callable(importance):
        importance = importance()
    params = _attr("params lightgbm_params", result, bundle)
    details = dict(_attr("details", result) or {})
    return RunFacts(
        task_name=task_name,
        task=config.task(task_name),
        as_of=to_utc(result.as_of),
        metrics=metrics,
        training_cutoffs=tuple(to_utc(c) for c in _listed(training_cutoffs)),
        validation_cutoff=None if validation is None else to_utc(validation),
        backtest_cutoffs=tuple(sorted(metrics["cutoff"].unique())),
        catalogue_version=str(_attr("catalogue_version", result, bundle) or ""),
        features=tuple(str(f) for f in _listed(_attr("features", result, bundle))),
        fingerprints=dict(_attr("feature_fingerprints", result, bundle) or {}),
        params=dict(config.training.lightgbm if params is None else params),
        importance=importance,
        calibration=_calibration_frame(_attr("calibration", result, bundle)),
        details=details,
        label_days=details.get("label_horizon_days") or _attr("label_horizon_days", result),
    )


def _listed(values: Any) -> list[Any]:
    return [] if values is None else list(values)


def _calibration_frame(table: Any) -> pd.DataFrame | None:
    """An aggregated reliability table (``mean_score``, ``actual_rate``), or ``None``."""
    if table is None:
        return None
    frame = pd.DataFrame(table)
    return frame if {"mean_score", "actual_rate"} <= set(frame.columns) else None


# ------------------------------------------------------------------------------ model card

#: Stands for the sentence on calibration, which depends on the run (:func:`_limitations`).
_CALIBRATION = "calibration"
_LIMITATIONS: dict[str, tuple[str, ...]] = {
    "churn": (
        "Batch scoring scores only customers with an order in the active window before the "
        "cutoff (others get no churn score); the HTTP endpoint scores every row it is sent, "
        "so callers leave out the others themselves (days_since_last_order).",
        _CALIBRATION,
    ),
    "repurchase": (
        "Batch scoring scores only customers with at least one past order; the HTTP endpoint "
        "scores every row it is sent.",
        _CALIBRATION,
    ),
    "value": (
        "Predicts expected net spend and order count in the horizon; refunds beyond purchases "
        "count as zero. An expectation per customer, not a guarantee.",
        "Large spenders are rare; the error of a single customer's figure is wide even when "
        "the ranking is good.",
    ),
    "preference": (
        "Ranks only values chosen often enough in the training rows; values new since "
        "training are never recommended.",
        "Says what a returning customer chooses, not whether they return (that is repurchase).",
    ),
}
_COMMON_LIMITATIONS: tuple[str, ...] = (
    "Learned from this brand's history up to the as-of date; changes after it (assortment, "
    "pricing, service) are not seen. Retrain and compare before relying on it.",
    "Backtest figures are means over few cutoffs; see backtest/metrics.csv in the run for the "
    "figure at each cutoff.",
    "Batch scoring refuses features built with another catalogue version; the HTTP endpoint "
    "checks it when a request passes catalogue_version in its params.",
)


def _limitations(facts: RunFacts) -> list[str]:
    """The model card's limitations, the calibration sentence as the run calibrated."""
    if facts.calibrated:
        calibration = (
            "Probabilities are calibrated on one validation cutoff; when the base rate moves "
            "(season, campaigns), the ranking holds longer than the calibration."
        )
    elif facts.calibrated is None:
        calibration = (
            "When the base rate moves (season, campaigns), the ranking holds longer than the "
            "probabilities."
        )
    else:
        calibration = (
            "Probabilities are the model's own, not recalibrated (calibration did not improve "
            "them on the validation cutoff); when the base rate moves (season, campaigns), the "
            "ranking holds longer than the probabilities."
        )
    texts = _LIMITATIONS[facts.task.kind] + _COMMON_LIMITATIONS
    return [calibration if text == _CALIBRATION else text for text in texts]


def _task_sentence(task: TaskConfig) -> str:
    h = task.horizon_days
    kind = task.kind
    if kind == "churn":
        text = (
            f"churn: no order in [cutoff, cutoff + {h} days) among customers with an order in "
            f"the {task.active_days} days before the cutoff"  # type: ignore[union-attr]
        )
    elif kind == "repurchase":
        text = f"repurchase: at least one order in [cutoff, cutoff + {h} days) among past buyers"
    elif kind == "value":
        text = f"value: net spend and number of orders in [cutoff, cutoff + {h} days)"
    else:
        text = (
            f"preference: which {task.table}.{task.attribute} values a customer "  # type: ignore[union-attr]
            f"chooses in [cutoff, cutoff + {h} days), ranked top {task.top_k}"  # type: ignore[union-attr]
        )
    return text + (f". {task.description}" if task.description else "")


def _format(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"


def model_card(
    facts: RunFacts, fingerprint: Mapping[str, Any], *, metric: str, name: str, version: str
) -> str:
    """A short Markdown model card: task, window, data, metrics against baselines, limits."""
    days = lambda stamps: ", ".join(f"{s:%Y-%m-%d}" for s in stamps)  # noqa: E731
    lines = [
        f"# {name} v{version}",
        "",
        f"**Task** {_task_sentence(facts.task)}.",
        "",
        f"**Trained** as of {facts.as_of:%Y-%m-%d} on {len(facts.training_cutoffs)} cutoffs "
        f"({days(facts.training_cutoffs[:1])} .. {days(facts.training_cutoffs[-1:])})"
        + (
            f", validation cutoff {facts.validation_cutoff:%Y-%m-%d}"
            if facts.validation_cutoff is not None
            else ""
        )
        + f"; features {facts.catalogue_version} ({len(facts.features)} columns).",
        "",
    ]
    method = facts.details.get("horizon_method")
    if method not in (None, "direct"):
        lines += [
            f"**Horizon** {facts.details.get('horizon_method_text', method)} "
            f"({facts.details.get('label_horizon_days')}-day labels for a "
            f"{facts.task.horizon_days}-day horizon).",
            "",
        ]
    if facts.backtest_cutoffs:
        lines.append(
            f"**Backtest** test cutoffs {days(facts.backtest_cutoffs)}; each fold was trained "
            "only on events before its test cutoff."
        )
    else:
        lines.append(
            "**Backtest** none was run: there are no figures to compare, so this version can "
            "only become champion first or with --force."
        )
    lines += [
        "",
        "**Data** "
        + "; ".join(_table_line(n, t) for n, t in fingerprint["tables"].items())
        + f"; hash {fingerprint['hash']}.",
        "",
        f"**Metrics** (mean over the backtest cutoffs; promotion metric `{metric}`)",
        "",
    ]
    table = summary_table(facts.metrics) if len(facts.metrics) else pd.DataFrame()
    shown = [m for m in _card_metrics(metric, list(table.index)) if m in table.index]
    if shown:
        lines.append("| metric | " + " | ".join(table.columns) + " |")
        lines.append("|---|" + "---:|" * len(table.columns))
        for row in shown:
            values = " | ".join(_format(table.loc[row, c]) for c in table.columns)
            lines.append(f"| {row} | {values} |")
    else:
        lines.append("No backtest metrics.")
    lines += ["", "**Known limitations**", ""]
    lines += [f"- {text}" for text in _limitations(facts)]
    return "\n".join(lines) + "\n"


def _table_line(name: str, entry: Mapping[str, Any]) -> str:
    span = ""
    if "first" in entry:
        span = f" {entry['first'][:10]}..{entry['last'][:10]}"
    return f"{name} {entry['rows']:,} rows{span}"


def _card_metrics(metric: str, available: list[str]) -> list[str]:
    preferred = [
        metric,
        "roc_auc",
        "pr_auc",
        "lift@10%",
        "brier",
        "spend/normalised_gini",
        "spend/mae",
        "orders/normalised_gini",
        "hit@1",
        "hit@3",
        "ndcg@3",
        "n",
    ]
    seen: list[str] = []
    for name in preferred:
        if name in available and name not in seen:
            seen.append(name)
    return seen


# ------------------------------------------------------------------------------ plots


def _figure(width: float = 6.0, height: float = 4.0, *, left: float = 0.12) -> Any:
    """A headless figure with fixed margins (a layout engine would double the drawing time)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    figure.subplots_adjust(left=left, right=0.97, bottom=0.15, top=0.9, wspace=0.3)
    return figure


def gains_figure(metrics: pd.DataFrame) -> Any | None:
    """Cumulative gains and lift of every model (means over cutoffs) from capture/lift metrics."""
    table = summary_table(metrics)
    capture = [m for m in table.index if m.startswith("capture@")]
    if not capture:
        return None
    shares = sorted(capture, key=lambda m: float(m.removeprefix("capture@").rstrip("%")))
    x = [0.0] + [float(m.removeprefix("capture@").rstrip("%")) / 100 for m in shares] + [1.0]
    fig = _figure(9.0, 4.0)
    gains, lift = fig.subplots(1, 2)
    for model in table.columns:
        y = [0.0] + [float(table.loc[m, model]) for m in shares] + [1.0]
        gains.plot(x, y, marker="o", label=model)
        lifts = [float(table.loc[m.replace("capture", "lift"), model]) for m in shares]
        lift.plot(x[1:-1], lifts, marker="o", label=model)
    gains.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random")
    gains.set(xlabel="share of customers contacted", ylabel="share of positives found")
    gains.set_title("cumulative gains (backtest mean)")
    lift.axhline(1.0, color="grey", linestyle=":")
    lift.set(xlabel="share of customers contacted", ylabel="lift")
    lift.set_title("lift (backtest mean)")
    gains.legend(fontsize="small")
    return fig


def calibration_figure(calibration: pd.DataFrame) -> Any | None:
    """Reliability diagram from an aggregated table (``mean_score``, ``actual_rate`` per bin)."""
    if calibration is None or calibration.empty:
        return None
    fig = _figure(5.0, 5.0)
    ax = fig.subplots()
    group = "cutoff" if "cutoff" in calibration.columns else None
    parts = calibration.groupby(group) if group else [("all", calibration)]
    for key, part in parts:
        label = f"{pd.Timestamp(key):%Y-%m-%d}" if group else str(key)
        ax.plot(part["mean_score"], part["actual_rate"], marker="o", label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", xlim=(0, 1), ylim=(0, 1))
    ax.set_title("calibration on the backtest cutoffs")
    ax.legend(fontsize="small")
    return fig


def per_cutoff_figure(metrics: pd.DataFrame, metric: str) -> Any | None:
    """The promotion metric at each backtest cutoff, model against baselines."""
    rows = metrics[metrics["metric"] == metric]
    if rows.empty:
        return None
    fig = _figure()
    ax = fig.subplots()
    for model, part in rows.groupby("model", sort=False):
        part = part.sort_values("cutoff")
        ax.plot(part["cutoff"], part["value"], marker="o", label=model)
    ax.set(xlabel="backtest cutoff", ylabel=metric)
    ax.set_title(f"{metric} per backtest cutoff")
    ax.legend(fontsize="small")
    ax.tick_params(axis="x", labelrotation=20)
    return fig


def importance_figure(importance: pd.Series, *, top: int = 25) -> Any | None:
    """Total gain of the ``top`` most important features."""
    if importance is None or len(importance) == 0:
        return None
    shown = importance.sort_values(ascending=False).head(top)[::-1]
    height = 0.25 * len(shown) + 1.2
    fig = _figure(8.0, height, left=0.4)
    fig.subplots_adjust(bottom=0.55 / height, top=1 - 0.35 / height)
    ax = fig.subplots()
    ax.barh([str(i) for i in shown.index], shown.to_numpy(dtype=float))
    ax.set(xlabel="total gain")
    ax.set_title("feature importance")
    ax.tick_params(axis="y", labelsize="small")
    return fig


# ------------------------------------------------------------------------------ logging


@dataclass(frozen=True)
class RegisteredVersion:
    """A registered model version and its aliases after a training run was logged."""

    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...]
    model_uri: str


def _config_yaml(config: ProjectConfig) -> str:
    raw = config.model_dump(mode="json", exclude={"root"})
    return yaml.safe_dump(raw, sort_keys=False)


def log_training_run(
    config: ProjectConfig,
    task_name: str,
    result: Any,
    *,
    tables: Tables,
    bundle_dir: str | os.PathLike[str] | None = None,
    tracking_uri: str | None = None,
    loader: str | None = None,
) -> RegisteredVersion:
    """Log a training run, register its model as ``challenger`` (and ``champion`` if first).

    Logged: the config (YAML), parameters, the data fingerprint, the as-of date and training
    cutoffs, backtest metrics of the model and every baseline (per cutoff as a tidy CSV of
    aggregates and as stepped metrics, means as metrics), the per-cutoff evaluation keys used
    by :func:`promote`, plots (gains and lift, calibration, feature importance, the promotion
    metric per cutoff), the feature catalogue version, a model card, and the model: a pyfunc
    whose artifact is the bundle directory, with a signature and a synthesised input example.

    Parameters
    ----------
    result
        The training result: ``as_of``, ``metrics`` (``cutoff``, ``model``, ``metric``,
        ``value``), ``training_cutoffs``, ``catalogue_version`` and the ``bundle``.
    tables
        The tables the run was trained on; only fingerprints of their rows before the as-of
        date (all that training reads) are logged.
    bundle_dir
        The saved model bundle (booster text and JSON metadata); when ``None``,
        ``result.bundle`` is saved to a temporary folder and logged from there.
    loader
        The function that reads ``bundle_dir`` (``"module:attribute"``), recorded with the
        model; the trainer's by default.
    """

    from cxpredict import serving

    uri = _uri(config, tracking_uri)
    facts = run_facts(config, task_name, result)
    name = model_name(config, task_name)
    metric, _ = promotion_metric(config, facts.task.kind)
    known = tables.before(facts.as_of)
    fingerprint = data_fingerprint(known)
    keys = {
        c.isoformat(): evaluation_key(known, c, facts.task, label_days=facts.label_days)
        for c in facts.backtest_cutoffs
    }
    loader = loader or serving.DEFAULT_LOADER
    with ExitStack() as stack:
        if bundle_dir is None:
            bundle_dir = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "bundle"
            result.bundle.save(bundle_dir)
        return _log_and_register(
            config, facts, fingerprint, keys, metric, name, uri, Path(bundle_dir), loader
        )


def _log_and_register(
    config: ProjectConfig,
    facts: RunFacts,
    fingerprint: Mapping[str, Any],
    keys: Mapping[str, str],
    metric: str,
    name: str,
    uri: str,
    bundle_dir: Path,
    loader: str,
) -> RegisteredVersion:
    import mlflow

    from cxpredict import serving

    task_name = facts.task_name
    bundle = serving.load_bundle(bundle_dir, loader)
    if facts.features and list(bundle.features) != list(facts.features):
        raise ValueError("the bundle's features differ from the training result's features")
    facts = _with_bundle(facts, bundle)
    with tracking(uri) as client:
        experiment_id = ensure_experiment(client, experiment_name(config), uri)
        with mlflow.start_run(
            experiment_id=experiment_id,
            run_name=f"{task_name} as of {facts.as_of:%Y-%m-%d}",
            tags={
                "task": task_name,
                "kind": facts.task.kind,
                "project": config.project,
                "cxpredict_version": __version__,
            },
        ) as run:
            _log_run_contents(config, facts, fingerprint, keys, metric)
            info = serving.log_pyfunc(bundle_dir, bundle, registered_model_name=name, loader=loader)
        version = str(info.registered_model_version)
        card = model_card(facts, fingerprint, metric=metric, name=name, version=version)
        client.update_model_version(name, version, description=card)
        version_tags = {
            "task": task_name,
            "kind": facts.task.kind,
            "catalogue_version": facts.catalogue_version,
            "as_of": facts.as_of.isoformat(),
            "data_hash": fingerprint["hash"],
            "promotion_metric": metric,
            "backtest_cutoffs": ",".join(f"{c:%Y-%m-%d}" for c in facts.backtest_cutoffs),
            "cxpredict_version": __version__,
        }
        for key, value in version_tags.items():
            client.set_model_version_tag(name, version, key, value)
        client.set_registered_model_alias(name, CHALLENGER, version)
        aliases = [CHALLENGER]
        if _alias_version(client, name, CHAMPION) is None:
            client.set_registered_model_alias(name, CHAMPION, version)
            client.set_registered_model_tag(name, HISTORY_TAG, json.dumps([version]))
            aliases.append(CHAMPION)
    return RegisteredVersion(
        name=name,
        version=version,
        run_id=run.info.run_id,
        aliases=tuple(aliases),
        model_uri=f"models:/{name}/{version}",
    )


def _with_bundle(facts: RunFacts, bundle: Any) -> RunFacts:
    from dataclasses import replace

    importance = facts.importance
    if importance is None and hasattr(bundle, "feature_importance"):
        importance = bundle.feature_importance()
    return replace(
        facts,
        features=facts.features or tuple(str(f) for f in bundle.features),
        catalogue_version=facts.catalogue_version or str(bundle.catalogue_version),
        fingerprints=facts.fingerprints or dict(getattr(bundle, "feature_fingerprints", {})),
        importance=importance,
        calibrated=(
            None
            if not hasattr(bundle, "calibration_method")
            else bundle.calibration_method not in (None, "none")
        ),
    )


def _log_run_contents(
    config: ProjectConfig,
    facts: RunFacts,
    fingerprint: Mapping[str, Any],
    keys: Mapping[str, str],
    metric: str,
) -> None:
    import mlflow

    params: dict[str, Any] = {
        "task": facts.task_name,
        "kind": facts.task.kind,
        "horizon_days": facts.task.horizon_days,
        "as_of": facts.as_of.isoformat(),
        "n_cutoffs": config.training.n_cutoffs,
        "step_days": config.training.step_days,
        "n_backtest_cutoffs": config.training.n_backtest_cutoffs,
        "seed": config.training.seed,
        "catalogue_version": facts.catalogue_version,
        "n_features": len(facts.features),
        "promotion_metric": metric,
        "data_hash": fingerprint["hash"],
    }
    params.update({f"lightgbm.{k}": v for k, v in sorted(facts.params.items())})
    mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
    mlflow.log_text(_config_yaml(config), "config/cxpredict.yaml")
    mlflow.log_dict(dict(fingerprint), "data/fingerprint.json")
    mlflow.log_dict(
        {
            "as_of": facts.as_of.isoformat(),
            "training_cutoffs": [c.isoformat() for c in facts.training_cutoffs],
            "validation_cutoff": (
                facts.validation_cutoff.isoformat() if facts.validation_cutoff else None
            ),
            "backtest_cutoffs": [c.isoformat() for c in facts.backtest_cutoffs],
            "horizon_days": facts.task.horizon_days,
        },
        "training/cutoffs.json",
    )
    mlflow.log_dict(
        {
            "horizon_days": facts.task.horizon_days,
            "label_days": facts.label_days,
            "evaluation_keys": dict(keys),
        },
        CUTOFFS_ARTIFACT,
    )
    tidy = facts.metrics[["cutoff", "model", "metric", "value"]].copy()
    tidy["cutoff"] = tidy["cutoff"].map(lambda c: c.isoformat())
    mlflow.log_text(tidy.to_csv(index=False), METRICS_ARTIFACT)
    summary = summary_table(facts.metrics)
    mlflow.log_text(summary.to_csv(), "backtest/summary.csv")
    means = {
        metric_key(model, name): float(value)
        for name, row in summary.iterrows()
        for model, value in row.items()
        if pd.notna(value) and math.isfinite(float(value))
    }
    mlflow.log_metrics(means)
    for step, cutoff in enumerate(facts.backtest_cutoffs):
        at = facts.metrics[facts.metrics["cutoff"] == cutoff]
        stepped = {
            f"cutoff/{metric_key(r.model, r.metric)}": float(r.value)
            for r in at.itertuples(index=False)
            if math.isfinite(float(r.value))
        }
        mlflow.log_metrics(stepped, step=step)
    if facts.importance is not None and len(facts.importance):
        frame = facts.importance.rename("gain").rename_axis("feature").reset_index()
        mlflow.log_text(frame.to_csv(index=False), "model/feature_importance.csv")
    mlflow.set_tag("catalogue_version", facts.catalogue_version)
    mlflow.log_dict(
        {
            "catalogue_version": facts.catalogue_version,
            "features": list(facts.features),
            "fingerprints": dict(facts.fingerprints),
        },
        FEATURES_ARTIFACT,
    )
    figures = {
        "plots/gains_lift.png": gains_figure(facts.metrics),
        "plots/calibration.png": calibration_figure(facts.calibration),
        "plots/feature_importance.png": importance_figure(facts.importance),
        f"plots/{metric_key('backtest', metric).replace('/', '_')}.png": per_cutoff_figure(
            facts.metrics, metric
        ),
    }
    for path, figure in figures.items():
        if figure is not None:
            mlflow.log_figure(figure, path)


# ------------------------------------------------------------------------------ aliases


def _alias_version(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _history(client: Any, name: str) -> list[str]:
    tags = client.get_registered_model(name).tags
    return [str(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]


#: MLflow's error codes for a registered model or alias that does not exist.
NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def _unavailable(uri: str, exc: Exception) -> RegistryUnavailable:
    detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return RegistryUnavailable(
        f"the MLflow store {uri} cannot be read ({detail}); check that the tracking server is "
        "running and that MLFLOW_TRACKING_URI / mlflow.tracking_uri is right "
        "(sqlite:////path/to/mlflow.db, or http://host:port)"
    )


def _require_store(uri: str, task: str, config: ProjectConfig) -> None:
    """Fail before touching a SQLite store that does not exist (MLflow would create it).

    The project's own store not there yet means nothing was trained; a store named
    elsewhere (``mlflow.tracking_uri``, ``MLFLOW_TRACKING_URI``) whose folder is missing
    means a share not mounted or a wrong address.
    """
    name = model_name(config, task)
    database = Path(uri.removeprefix("sqlite:///"))
    named = uri != f"sqlite:///{Path(config.root).resolve() / 'mlruns' / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and named and not database.parent.is_dir():
        raise RegistryUnavailable(
            f"the MLflow store {uri} cannot be read: its folder {str(database.parent)!r} does "
            "not exist (a share not mounted, or a wrong mlflow.tracking_uri / "
            "MLFLOW_TRACKING_URI)"
        )
    if uri.startswith("sqlite:///") and not database.is_file():
        raise ModelNotFound(
            f"no champion of task {task!r} (registered model {name!r}): there is no MLflow "
            f"store at {uri}; run `cxpredict train --config <config> --task {task}` first, or "
            "point mlflow.tracking_uri in the config (MLFLOW_TRACKING_URI on the command line, "
            "tracking_uri= in Python) at the store the models were logged to"
        )


def _require_model(client: Any, config: ProjectConfig, task: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    name = model_name(config, task)
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in NOT_FOUND_CODES:
            raise _unavailable(uri, exc) from None
        raise ModelNotFound(
            f"no registered model {name!r} in {uri}; run `cxpredict train --task {task}` first "
            "(or point mlflow.tracking_uri in the config, MLFLOW_TRACKING_URI on the command "
            "line or tracking_uri= in Python at the store it was logged to)"
        ) from None
    return name


@dataclass(frozen=True)
class Comparison:
    """The promotion metric of both versions on the backtest cutoffs they share."""

    metric: str
    higher_is_better: bool
    cutoffs: tuple[pd.Timestamp, ...]
    champion: float
    challenger: float
    method: str

    @property
    def challenger_better(self) -> bool:
        """Strictly better in the metric's direction."""
        if self.higher_is_better:
            return self.challenger > self.champion
        return self.challenger < self.champion

    def describe(self, champion: str, challenger: str) -> str:
        """Both figures and where they come from, in one sentence."""
        days = ", ".join(f"{c:%Y-%m-%d}" for c in self.cutoffs)
        direction = "higher" if self.higher_is_better else "lower"
        return (
            f"{self.metric} ({direction} is better) on the backtest cutoffs {days}: "
            f"champion v{champion} {self.champion:.4f}, challenger v{challenger} "
            f"{self.challenger:.4f} ({self.method})"
        )


@dataclass(frozen=True)
class PromotionResult:
    """What :func:`promote` did."""

    name: str
    champion: str
    previous_champion: str | None
    promoted: bool
    comparison: Comparison | None
    forced: bool
    reason: str | None
    message: str


def _backtest(client: Any, version: Any) -> tuple[pd.DataFrame, dict[str, str], int | None]:
    """A version's backtest figures, its evaluation keys by cutoff and its label window."""
    with tempfile.TemporaryDirectory() as tmp:
        metrics_path = client.download_artifacts(version.run_id, METRICS_ARTIFACT, tmp)
        keys_path = client.download_artifacts(version.run_id, CUTOFFS_ARTIFACT, tmp)
        metrics = pd.read_csv(metrics_path)
        logged = json.loads(Path(keys_path).read_text(encoding="utf-8"))
    metrics["cutoff"] = pd.to_datetime(metrics["cutoff"], utc=True)
    keys = {to_utc(k).isoformat(): str(v) for k, v in logged["evaluation_keys"].items()}
    return metrics, keys, logged.get("label_days")


def _outdated(client: Any, name: str, champion: str, challenger: str) -> str | None:
    """Why the champion cannot score the features the challenger was trained on, or None.

    Versions logged before :data:`FEATURES_ARTIFACT` existed are compared by catalogue
    version alone (their ``catalogue_version`` tags).
    """
    from mlflow.exceptions import MlflowException

    from cxpredict.features.catalogue import what_changed

    def features(number: str) -> dict[str, Any]:
        version = client.get_model_version(name, number)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = client.download_artifacts(version.run_id, FEATURES_ARTIFACT, tmp)
                return dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (MlflowException, OSError):  # logged before the artifact existed
            tag = version.tags.get("catalogue_version", "")
            return {"catalogue_version": tag, "features": [], "fingerprints": {}}

    old, new = features(champion), features(challenger)
    if not new["fingerprints"]:
        return None  # nothing to tell what today's features are: keep the metric's verdict
    return what_changed(
        old["features"],
        version=old["catalogue_version"],
        fingerprints=old["fingerprints"],
        built_version=new["catalogue_version"],
        built=new["fingerprints"],
    )


def _task_changed(
    client: Any, name: str, version: str, config: ProjectConfig, task: str
) -> str | None:
    """How the config's definition of ``task`` differs from the one ``version`` was trained
    for (its run's ``config/cxpredict.yaml``), or None: such a version cannot score."""
    from mlflow.exceptions import MlflowException

    run_id = client.get_model_version(name, version).run_id
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, "config/cxpredict.yaml", tmp)
            trained = (yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}).get("tasks")
    except (MlflowException, OSError, yaml.YAMLError):
        return None
    before = (trained or {}).get(task) or {}
    changed = task_changes(before, config.task(task).model_dump(mode="json"))
    return f"the task is now defined with {', '.join(changed)}" if changed else None


def compare_versions(
    client: Any,
    name: str,
    champion: str,
    challenger: str,
    *,
    metric: str,
    higher_is_better: bool,
    n_cutoffs: int,
) -> Comparison:
    """Compare two versions on their most recent shared backtest cutoffs with equal data.

    A cutoff counts when both runs evaluated it and saw the same data and task definition
    there (equal evaluation keys, see :func:`evaluation_key`); each figure comes from a fold
    model that only saw events before that cutoff. The metric is averaged over the at most
    ``n_cutoffs`` most recent such cutoffs where both figures are defined.

    Raises
    ------
    PromotionRefused
        When the versions share no such cutoff, saying what each was evaluated on.
    """
    runs = {}
    for label, number in (("champion", champion), ("challenger", challenger)):
        runs[label] = _backtest(client, client.get_model_version(name, number))
    keys_a, keys_b = runs["champion"][1], runs["challenger"][1]
    shared = sorted(c for c in set(keys_a) & set(keys_b) if keys_a[c] == keys_b[c])
    values = {}
    for label, (metrics, _, _) in runs.items():
        rows = metrics[(metrics["model"] == MODEL) & (metrics["metric"] == metric)]
        values[label] = rows.set_index(rows["cutoff"].map(lambda c: c.isoformat()))["value"]
    usable = [
        c
        for c in shared
        if c in values["champion"].index
        and c in values["challenger"].index
        and np.isfinite(values["champion"][c])
        and np.isfinite(values["challenger"][c])
    ][-n_cutoffs:]
    if not usable:
        days = {
            label: ", ".join(sorted(k[:10] for k in keys)) or "none"
            for label, keys in (("champion", keys_a), ("challenger", keys_b))
        }
        windows = (runs["champion"][2], runs["challenger"][2])
        if None not in windows and windows[0] != windows[1]:
            advice = (
                f"their label windows differ ({windows[0]} and {windows[1]} days: while the "
                "history is too short for the horizon, each training labels the longest window "
                "it has, so no cutoff compares until both label the same window); promote "
                "with --force --reason if the challenger's own backtest convinces you"
            )
        elif not client.get_model_version(name, champion).tags.get("cxpredict_version"):
            advice = (
                "the champion was logged by an earlier cxpredict, whose backtest dates (now on "
                "a calendar grid) and evaluation keys differ; after checking the challenger's "
                'own backtest, promote it once with --force --reason "upgrade"'
            )
        elif set(keys_a) & set(keys_b):
            advice = (
                "they were evaluated on the same dates but saw different data or task "
                "definitions there (a corrected feed, a changed horizon); promote with --force "
                "--reason if the challenger's own backtest convinces you"
            )
        else:
            advice = (
                "their backtests do not overlap in time (training.n_backtest_cutoffs cutoffs, "
                "training.step_days apart); retrain the challenger closer to the champion's "
                "--as-of, or promote with --force --reason"
            )
        raise PromotionRefused(
            f"{name}: champion v{champion} and challenger v{challenger} share no backtest "
            f"cutoff evaluated on the same data with a defined {metric} (champion: "
            f"{days['champion']}; challenger: {days['challenger']}), so their figures are not "
            f"comparable; {advice}"
        )
    stamps = tuple(to_utc(c) for c in usable)
    return Comparison(
        metric=metric,
        higher_is_better=higher_is_better,
        cutoffs=stamps,
        champion=float(np.mean([values["champion"][c] for c in usable])),
        challenger=float(np.mean([values["challenger"][c] for c in usable])),
        method="logged backtest figures on shared cutoffs with identical data",
    )


def promote(
    config: ProjectConfig,
    task: str,
    *,
    force: bool = False,
    reason: str | None = None,
    at: pd.Timestamp | None = None,
    tracking_uri: str | None = None,
) -> PromotionResult:
    """Move ``champion`` to the challenger if it is better on the same cutoffs and data.

    The promotion metric (``training.promotion_metric``, else PR-AUC for churn and
    repurchase, spend normalised Gini for value, NDCG@3 for preference) is compared on the
    most recent backtest cutoffs both versions were evaluated on with identical data (see
    :func:`compare_versions`). A challenger that is not better (or not comparable) still
    replaces a champion that cannot score the features it was trained on: one that uses a
    feature no longer built or redefined (``model/features.json`` of both runs), or trained
    for an earlier definition of the task; the reason is recorded as a tag of the version. A
    challenger trained for an earlier definition of the task is refused, whatever its figures.
    With ``force``, the champion moves regardless and ``reason`` (required) is recorded.

    Parameters
    ----------
    at
        The moment of the promotion, recorded as the version's ``promoted_at`` tag (the
        command line passes its clock reading); no such tag when ``None``.

    Raises
    ------
    ModelNotFound
        When the task has no registered model or no challenger.
    PromotionRefused
        When the challenger is not better (the message gives both figures) or the versions
        cannot be compared; when the challenger was trained for an earlier definition of the
        task; when ``force`` is given without a reason.
    """
    if force and not (reason and reason.strip()):
        raise PromotionRefused(
            '--force needs --reason "...": say why the challenger replaces the champion '
            "without beating it; the reason is recorded on the version"
        )
    uri = _uri(config, tracking_uri)
    _require_store(uri, task, config)
    with tracking(uri) as client:
        name = _require_model(client, config, task, uri)
        challenger = _alias_version(client, name, CHALLENGER)
        champion = _alias_version(client, name, CHAMPION)
        if challenger is None:
            raise ModelNotFound(
                f"{name} has no challenger to promote; train a new version with "
                f"`cxpredict train --task {task}` first"
            )
        if champion == challenger:
            return PromotionResult(
                name=name,
                champion=challenger,
                previous_champion=None,
                promoted=False,
                comparison=None,
                forced=False,
                reason=None,
                message=f"{name}: v{challenger} is already the champion; nothing to promote",
            )
        stale = None if force else _task_changed(client, name, challenger, config, task)
        if stale is not None:
            raise PromotionRefused(
                f"{name}: challenger v{challenger} was trained for an earlier definition of the "
                f"task ({stale}) and could not score it; retrain with `cxpredict train --task "
                f"{task}`"
            )
        kind = client.get_model_version(name, challenger).tags.get("kind") or config.task(task).kind
        metric, higher = promotion_metric(config, kind)
        comparison: Comparison | None = None
        outdated: str | None = None
        if champion is not None:
            refusal: PromotionRefused | None = None
            try:
                comparison = compare_versions(
                    client,
                    name,
                    champion,
                    challenger,
                    metric=metric,
                    higher_is_better=higher,
                    n_cutoffs=config.training.n_backtest_cutoffs,
                )
            except PromotionRefused as exc:
                refusal = exc
            if comparison is not None and not comparison.challenger_better:
                refusal = PromotionRefused(
                    f"{name}: challenger v{challenger} is not better than champion "
                    f"v{champion}; champion stays v{champion}. "
                    + comparison.describe(champion, challenger)
                    + '. To replace it anyway: --force --reason "..."'
                )
            if refusal is not None and not force:
                outdated = _outdated(client, name, champion, challenger) or _task_changed(
                    client, name, champion, config, task
                )
                if outdated is None:
                    raise refusal
                reason = f"champion v{champion} can no longer score: {outdated}"
        _move_champion(
            client,
            name,
            challenger,
            previous=champion,
            at=at,
            reason=reason,
            forced=force,
            comparison=comparison,
        )
    evidence = comparison.describe(champion or "-", challenger) if comparison else "no comparison"
    verb = "forced" if force else "promoted"
    if outdated is not None:
        evidence = f"v{champion} can no longer score the current features ({outdated}); {evidence}"
    return PromotionResult(
        name=name,
        champion=challenger,
        previous_champion=champion,
        promoted=True,
        comparison=comparison,
        forced=force,
        reason=reason,
        message=f"{name}: v{challenger} {verb} to champion (was v{champion}); {evidence}",
    )


def _move_champion(
    client: Any,
    name: str,
    version: str,
    *,
    previous: str | None,
    at: pd.Timestamp | None,
    reason: str | None,
    forced: bool,
    comparison: Comparison | None,
) -> None:
    history = _history(client, name)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps([*history, version]))
    if previous is not None:
        client.set_registered_model_tag(name, PREVIOUS_TAG, previous)
    if _alias_version(client, name, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    tags = {"promoted_from": previous or "", "promotion_forced": str(forced).lower()}
    if at is not None:
        tags["promoted_at"] = to_utc(at).isoformat()
    if reason:
        tags["promotion_reason"] = reason
    if comparison is not None:
        tags["promotion_evidence"] = comparison.describe(previous or "-", version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    # what an earlier promotion or rollback of this version said no longer holds
    stale = {"rolled_back", "promoted_at", "promotion_reason", "promotion_evidence"} - set(tags)
    for key in stale & set(client.get_model_version(name, version).tags):
        client.delete_model_version_tag(name, version, key)


def rollback(
    config: ProjectConfig,
    task: str,
    *,
    at: pd.Timestamp | None = None,
    tracking_uri: str | None = None,
) -> PromotionResult:
    """Point ``champion`` back at the previous champion (from the promotion history).

    The current champion is tagged ``rolled_back`` (with ``at`` when given) and taken off
    the history, so a second rollback goes one step further back.

    Raises
    ------
    ModelNotFound
        When the task has no registered model or no earlier champion.
    """
    uri = _uri(config, tracking_uri)
    _require_store(uri, task, config)
    with tracking(uri) as client:
        name = _require_model(client, config, task, uri)
        current = _alias_version(client, name, CHAMPION)
        history = _history(client, name)
        if current is not None and history and history[-1] == current:
            history = history[:-1]
        if current is None or not history:
            raise ModelNotFound(
                f"{name}: no earlier champion to roll back to (champion: "
                f"{'v' + current if current else 'none'}; no champion before it in the "
                "promotion history)"
            )
        previous = history[-1]
        client.set_registered_model_alias(name, CHAMPION, previous)
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
        earlier = history[-2] if len(history) > 1 else None
        if earlier is None:
            client.delete_registered_model_tag(name, PREVIOUS_TAG)
        else:
            client.set_registered_model_tag(name, PREVIOUS_TAG, earlier)
        client.set_model_version_tag(
            name, current, "rolled_back", to_utc(at).isoformat() if at is not None else "true"
        )
    return PromotionResult(
        name=name,
        champion=previous,
        previous_champion=current,
        promoted=False,
        comparison=None,
        forced=False,
        reason=None,
        message=f"{name}: champion rolled back from v{current} to v{previous}",
    )


# ------------------------------------------------------------------------------ loading


@dataclass(frozen=True)
class Champion:
    """The loaded champion of a task: the pyfunc model and what it was trained with."""

    name: str
    version: str
    run_id: str
    catalogue_version: str
    features: tuple[str, ...]
    model: Any

    @property
    def bundle(self) -> Any:
        """The model bundle inside the pyfunc (booster, vocabulary, calibration)."""
        return self.model.unwrap_python_model().bundle

    def check_features(
        self,
        features: pd.DataFrame,
        *,
        catalogue: pd.DataFrame | None = None,
        catalogue_version: str | None = None,
    ) -> None:
        """Refuse features the model was not trained on, or missing its columns.

        Give the ``catalogue`` the features were built with: the model then scores when each
        feature it uses is built as it was in training, even if features were added since.
        A ``catalogue_version`` alone must equal the model's.

        Raises
        ------
        FeatureMismatch
            Naming the features no longer built or redefined (or both catalogue versions),
            or the missing columns, and the fix.
        """
        from cxpredict import serving
        from cxpredict.features import check_trained_features

        if catalogue is not None:
            check_trained_features(
                catalogue,
                features=self.features,
                version=self.catalogue_version,
                fingerprints=getattr(self.bundle, "feature_fingerprints", None),
                model=self.name,
            )
        elif catalogue_version is not None:
            serving.check_catalogue(self.catalogue_version, catalogue_version, model=self.name)
        else:
            raise TypeError("check_features needs catalogue= or catalogue_version=")
        serving.check_columns(features, self.features, model=self.name)

    def predict(
        self,
        features: pd.DataFrame,
        *,
        catalogue: pd.DataFrame | None = None,
        catalogue_version: str | None = None,
    ) -> pd.DataFrame:
        """Score customer features built with ``catalogue`` or ``catalogue_version``.

        Both are checked first, as in :meth:`check_features`. Returns the pyfunc's output:
        probabilities, expected values or top-k preferences.
        """
        self.check_features(features, catalogue=catalogue, catalogue_version=catalogue_version)
        frame = features.copy()
        if "customer_id" not in frame.columns and frame.index.name == "customer_id":
            frame = frame.reset_index()
        columns = (
            ["customer_id", *self.features]
            if "customer_id" in frame.columns
            else list(self.features)
        )
        # checked above: the features are the model's, whichever catalogue they came with
        params = {"catalogue_version": self.catalogue_version}
        return self.model.predict(frame[columns], params=params)


def champion_uri(config: ProjectConfig, task: str, *, tracking_uri: str | None = None) -> str:
    """``models:/<project>-<task>@champion``, after checking that the champion exists.

    Raises
    ------
    ModelNotFound
        When the task has no champion: run ``cxpredict train`` first.
    """
    uri = _uri(config, tracking_uri)
    _require_store(uri, task, config)
    name = model_name(config, task)
    with tracking(uri) as client:
        if _alias_version(client, name, CHAMPION) is None:
            raise ModelNotFound(_no_champion(task, name, uri))
    return f"models:/{name}@{CHAMPION}"


def _no_champion(task: str, name: str, uri: str) -> str:
    return (
        f"no champion of task {task!r} (registered model {name!r}) in {uri}; run "
        f"`cxpredict train --config <config> --task {task}` first, or point "
        "MLFLOW_TRACKING_URI / mlflow.tracking_uri at the store it was logged to"
    )


def load_champion(config: ProjectConfig, task: str, *, tracking_uri: str | None = None) -> Champion:
    """Load ``models:/<project>-<task>@champion``.

    Raises
    ------
    ModelNotFound
        When the task has no registered model or no champion: run ``cxpredict train`` first.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = _uri(config, tracking_uri)
    _require_store(uri, task, config)
    name = model_name(config, task)
    with tracking(uri) as client:
        try:
            version = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException as exc:
            if exc.error_code in NOT_FOUND_CODES:
                raise ModelNotFound(_no_champion(task, name, uri)) from None
            raise _unavailable(uri, exc) from None
        model = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    bundle = model.unwrap_python_model().bundle
    return Champion(
        name=name,
        version=str(version.version),
        run_id=str(version.run_id),
        catalogue_version=str(bundle.catalogue_version),
        features=tuple(str(f) for f in bundle.features),
        model=model,
    )


def version_artifacts(
    config: ProjectConfig,
    task: str,
    version: str,
    dst: str | os.PathLike[str],
    *,
    tracking_uri: str | None = None,
) -> Path:
    """Download everything logged for a version: its run's artifacts and its model files.

    Returns the folder, with ``run/`` and ``model/`` inside (for audits and tests).
    """
    import mlflow

    uri = _uri(config, tracking_uri)
    name = model_name(config, task)
    out = Path(dst)
    with tracking(uri) as client:
        mv = client.get_model_version(name, version)
        (out / "run").mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(
            run_id=mv.run_id, dst_path=str(out / "run"), tracking_uri=uri
        )
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(out / "model")
        )
    return out
