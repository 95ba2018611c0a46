"""The project config: one YAML file, read into typed, frozen objects.

This is the only module that knows the file format. Everything else receives the objects
defined here, passed explicitly. Unknown keys are errors that suggest the closest valid
key; relative paths resolve against the folder of the config file.

A minimal config::

    project: demo
    data:
      orders:
        path: orders.csv
        columns: {customer_id: CustomerID, timestamp: InvoiceDate, amount: Revenue}
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cxpredict.errors import ConfigError, did_you_mean
from cxpredict.schemas import COLUMNS

DEFAULT_WINDOWS: tuple[int, ...] = (7, 30, 90, 180, 365)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TableConfig(_Frozen):
    """Where one table lives and how its columns map to the canonical names.

    ``columns`` maps canonical names to the file's own names; unmapped canonical columns are
    looked up under their canonical name. ``timezone`` is the zone of naive timestamps (UTC
    when omitted). ``timestamp_format`` is a ``strftime`` pattern for unusual date formats
    (``"%Y%m%d"``); ``sep`` is the CSV delimiter, or ``"whitespace"``. ``encoding`` is the
    text encoding of a CSV file (``"latin-1"``, ``"cp1252"``; UTF-8 when omitted).
    ``numeric`` (customers only) lists attribute columns to read as numbers: other attribute
    columns of a CSV file are categories, while Parquet number columns are numbers already.
    """

    path: Path
    columns: dict[str, str] = Field(default_factory=dict)
    numeric: list[str] = Field(default_factory=list)
    encoding: str = "utf-8"
    timezone: str = "UTC"
    timestamp_format: str | None = None
    sep: str = ","
    format: Literal["csv", "parquet"] | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown timezone {value!r}; use an IANA name such as 'UTC' or 'Europe/Paris'"
            ) from exc
        return value

    @field_validator("timestamp_format")
    @classmethod
    def _known_directives(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            datetime.strptime("", value)
        except ValueError as exc:
            if "directive" in str(exc):
                raise ValueError(
                    f"timestamp_format {value!r}: {exc}; use strftime directives such as "
                    "'%Y-%m-%d %H:%M:%S' or '%Y%m%d'"
                ) from None
        return value

    @field_validator("sep")
    @classmethod
    def _one_character(cls, value: str) -> str:
        if value in ("\\t", "tab"):  # '\t' in single quotes, or the word
            return "\t"
        if len(value) != 1 and value != "whitespace":
            raise ValueError(
                f"sep {value!r} must be one character (',', ';', '|', \"\\t\" for a tab) or "
                "'whitespace'"
            )
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(
                f"unknown encoding {value!r}; use a Python codec name such as 'utf-8', "
                "'latin-1' or 'cp1252'"
            ) from None
        return value

    @property
    def file_format(self) -> Literal["csv", "parquet"]:
        """The format given, or the one the path's extension implies (a folder is Parquet)."""
        if self.format is not None:
            return self.format
        suffixes = "".join(self.path.suffixes).lower()
        if ".parquet" in suffixes or ".pq" in suffixes or self.path.is_dir():
            return "parquet"
        return "csv"


class DataConfig(_Frozen):
    """The project's tables: ``orders`` is required, the other two are optional."""

    orders: TableConfig
    interactions: TableConfig | None = None
    customers: TableConfig | None = None

    @model_validator(mode="after")
    def _canonical_keys(self) -> DataConfig:
        for name in ("orders", "interactions", "customers"):
            table = getattr(self, name)
            if table is None:
                continue
            required, optional = COLUMNS[name]
            known = required + optional
            if table.numeric and name != "customers":
                raise ValueError(
                    f"data.{name}.numeric: only customer attributes can be listed as numeric"
                )
            canonical = [c for c in table.numeric if c in known]
            if canonical:
                raise ValueError(
                    f"data.{name}.numeric: {canonical[0]!r} is a canonical column, not an "
                    "attribute; list only attribute columns"
                )
            for key in table.columns:
                if key not in known and name != "customers":
                    raise ValueError(
                        f"data.{name}.columns: {key!r} is not a canonical column of {name}"
                        f"{did_you_mean(key, known)} (canonical: {', '.join(known)})"
                    )
        return self

    def tables(self) -> dict[str, TableConfig]:
        """The configured tables by canonical name."""
        return {
            name: table
            for name in ("orders", "interactions", "customers")
            if (table := getattr(self, name)) is not None
        }


class ValidationConfig(_Frozen):
    """How strict validation is: a run stops when a table's rejected share exceeds this."""

    max_reject_fraction: float = Field(0.01, ge=0.0, le=1.0)


class SqlFeatureConfig(_Frozen):
    """A feature written as a SQL aggregate over one event table's rows before the cutoff."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    table: Literal["orders", "interactions"]
    expression: str
    description: str
    where: str | None = None
    window_days: int | None = Field(None, gt=0)


class PythonFeatureConfig(_Frozen):
    """A feature family written in pandas: ``module:function`` taking ``(tables, cutoff)``.

    ``columns`` declares the columns it returns: they are listed in the feature catalogue
    and checked at build time. ``folder`` is where the module is looked for when Python's
    path does not have it: a config file sets it to its own folder, so that a module beside
    the config file can be named.
    """

    function: str = Field(pattern=r"^[\w.]+:\w+$")
    description: str = ""
    columns: tuple[str, ...] = ()
    folder: Path | None = None


class FeaturesConfig(_Frozen):
    """Feature windows, user-defined features and the limits of the feature engine.

    ``duckdb_temp_directory`` is where DuckDB spills when the data exceed
    ``duckdb_memory_limit`` (a fresh temporary folder when unset; a relative path resolves
    against the config file's folder). ``vocabulary_max_values`` caps the values one-hot
    encoded per categorical column (the most frequent ones; the rest count as ``other``).
    ``vocabulary_min_customers`` is the fewest customers a customer attribute value needs to
    be one of them: rarer values (and attributes such as e-mail addresses, where every value
    is rare) are never stored with a model.
    """

    windows: tuple[int, ...] = DEFAULT_WINDOWS
    sql: tuple[SqlFeatureConfig, ...] = ()
    python: tuple[PythonFeatureConfig, ...] = ()
    duckdb_memory_limit: str | None = None
    duckdb_threads: int | None = Field(None, gt=0)
    duckdb_temp_directory: Path | None = None
    vocabulary_max_values: int = Field(10, ge=1)
    vocabulary_min_customers: int = Field(10, ge=1)

    @field_validator("windows")
    @classmethod
    def _positive_sorted(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(w <= 0 for w in value):
            raise ValueError("windows must be a non-empty list of positive day counts")
        return tuple(sorted(set(value)))

    @field_validator("duckdb_memory_limit")
    @classmethod
    def _memory_size(cls, value: str | None) -> str | None:
        if value is not None and not _MEMORY_SIZE.fullmatch(value.strip()):
            raise ValueError(
                f"duckdb_memory_limit {value!r} is not a size; give a number and a unit, "
                "e.g. '4GB', '500MB' or '80%'"
            )
        return value


#: The settings of a task that define its labels: a model trained with other values answers
#: another question (``top_k`` and ``description`` only shape the outputs).
TASK_DEFINITION = ("kind", "horizon_days", "active_days", "attribute", "table")


def task_definition(task: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of :data:`TASK_DEFINITION` that a task (dumped as a mapping) has."""
    return {key: task[key] for key in TASK_DEFINITION if key in task}


def task_changes(trained: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The settings of :data:`TASK_DEFINITION` whose value changed since a model was trained,
    each as ``"horizon_days 49 (trained with 56)"``; a setting either side lacks is not
    compared."""
    before, now = task_definition(trained), task_definition(current)
    return [
        f"{key} {now[key]!r} (trained with {before[key]!r})"
        for key in now
        if key in before and now[key] != before[key]
    ]


#: A memory size as DuckDB reads it: a number and a unit (``4GB``, ``1.5 GiB``, ``4G``,
#: ``500 megabytes``), a share of the machine's memory (``80%``), or ``-1`` for no limit.
_MEMORY_SIZE = re.compile(
    r"-1|\d+(\.\d+)?\s*(%|[KMGT]i?B|[KMGT]|B|bytes|(kilo|mega|giga|tera)bytes)", re.IGNORECASE
)


class _TaskBase(_Frozen):
    horizon_days: int = Field(gt=0)
    description: str = ""


class ChurnTask(_TaskBase):
    """No order in ``[cutoff, cutoff + horizon)`` among customers active in ``active_days``."""

    kind: Literal["churn"]
    active_days: int = Field(180, gt=0)


class RepurchaseTask(_TaskBase):
    """At least one order in ``[cutoff, cutoff + horizon)`` among customers who ordered before."""

    kind: Literal["repurchase"]


#: The text columns of the data contract a preference can rank, per table.
PREFERENCE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "orders": ("category", "channel"),
    "interactions": ("channel", "kind"),
}


class PreferenceTask(_TaskBase):
    """Which values of an attribute the customer buys (or uses) in the window; ranked top-k."""

    kind: Literal["preference"]
    attribute: str = "category"
    table: Literal["orders", "interactions"] = "orders"
    top_k: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _known_attribute(self) -> PreferenceTask:
        allowed = PREFERENCE_ATTRIBUTES[self.table]
        if self.attribute not in allowed:
            other = "interactions" if self.table == "orders" else "orders"
            raise ValueError(
                f"attribute {self.attribute!r} is not a column of {self.table} that cxpredict "
                f"reads: a preference ranks {' or '.join(allowed)} of {self.table} (or, with "
                f"table: {other}, {' or '.join(PREFERENCE_ATTRIBUTES[other])})"
                f"{did_you_mean(self.attribute, allowed)}"
            )
        return self


class ValueTask(_TaskBase):
    """Spend, and separately the number of orders, in ``[cutoff, cutoff + horizon)``."""

    kind: Literal["value"]


TaskConfig = Annotated[
    ChurnTask | RepurchaseTask | PreferenceTask | ValueTask, Field(discriminator="kind")
]


class TrainingConfig(_Frozen):
    """How training sets and backtests are laid out in time, and model defaults.

    ``max_feed_gap_days``: training stops when the latest order or interaction is more days
    than this before the as-of date (a feed that stopped would label every customer as lost).
    ``min_positives`` / ``min_negatives`` count training rows (a customer at each cutoff);
    ``min_customers`` counts the distinct customers behind each class's rows.
    """

    n_cutoffs: int = Field(12, ge=3)
    step_days: int = Field(30, gt=0)
    n_backtest_cutoffs: int = Field(3, ge=1)
    min_positives: int = Field(30, ge=1)
    min_negatives: int = Field(30, ge=1)
    min_customers: int = Field(10, ge=1)
    max_feed_gap_days: int = Field(14, gt=0)
    seed: int = 0
    lightgbm: dict[str, Any] = Field(default_factory=dict)
    promotion_metric: str | None = None


class MlflowConfig(_Frozen):
    """Where runs and models are tracked; ``MLFLOW_TRACKING_URI`` overrides ``tracking_uri``."""

    tracking_uri: str | None = None
    experiment: str | None = None


class ScoringConfig(_Frozen):
    """Cut points and limits for batch scoring."""

    tier_cuts: tuple[float, float] = (0.8, 0.5)
    drift_warn_psi: float = Field(0.1, gt=0)
    drift_fail_psi: float = Field(0.25, gt=0)
    reasons_for: Literal["all", "top"] = "top"
    reasons_top_fraction: float = Field(0.2, gt=0, le=1)

    @field_validator("tier_cuts")
    @classmethod
    def _cuts_high_first(cls, cuts: tuple[float, float]) -> tuple[float, float]:
        if not 0 < cuts[1] < cuts[0] < 1:
            raise ValueError(
                "two percentile cut points, high first, both strictly between 0 and 1 "
                "(e.g. [0.8, 0.5])"
            )
        return cuts


class ProjectConfig(_Frozen):
    """A whole project: its data, features, tasks, tracking and scoring settings."""

    project: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data: DataConfig
    validation: ValidationConfig = ValidationConfig()
    features: FeaturesConfig = FeaturesConfig()
    tasks: dict[str, TaskConfig] = Field(default_factory=dict)
    training: TrainingConfig = TrainingConfig()
    mlflow: MlflowConfig = MlflowConfig()
    scoring: ScoringConfig = ScoringConfig()
    root: Path = Path(".")

    def task_names(self) -> list[str]:
        """The configured task names in config order, or a ``ConfigError`` when there is none."""
        if not self.tasks:
            raise ConfigError(
                "no task is configured; add at least one under 'tasks:' in the config "
                "(for instance churn: {kind: churn, horizon_days: 90})"
            )
        return list(self.tasks)

    def task(self, name: str) -> ChurnTask | RepurchaseTask | PreferenceTask | ValueTask:
        """The task called ``name``, or a ``ConfigError`` naming the configured ones."""
        if name not in self.tasks:
            known = ", ".join(self.tasks) or "none"
            raise ConfigError(
                f"task {name!r} is not configured{did_you_mean(name, self.tasks)}; "
                f"configured tasks: {known}. Add it under 'tasks:' in the config."
            )
        return self.tasks[name]


def _model_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names valid at ``loc`` inside ``model`` (best effort, for suggestions)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return []
        annotation = fields[part].annotation
        current = _first_model(annotation)
    return list(getattr(current, "model_fields", {}) or [])


def _first_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


_TASK_KINDS: dict[str, type[BaseModel]] = {
    "churn": ChurnTask,
    "repurchase": RepurchaseTask,
    "preference": PreferenceTask,
    "value": ValueTask,
}


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    task_model = None
    if len(loc) >= 3 and loc[0] == "tasks" and loc[2] in _TASK_KINDS:
        task_model = _TASK_KINDS[str(loc[2])]
        loc = loc[:2] + loc[3:]  # drop the union tag pydantic inserts
    where = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        key = str(loc[-1])
        if task_model is not None:
            valid = list(task_model.model_fields)
        else:
            valid = [f for f in _model_fields(ProjectConfig, loc[:-1]) if f != "root"]
        hint = did_you_mean(key, valid)
        listing = f" (valid keys here: {', '.join(valid)})" if valid else ""
        return f"{where}: unknown key {key!r}{hint}{listing}"
    if error["type"] == "missing":
        return f"{where}: required key is missing"
    if error["type"] == "union_tag_invalid" and loc and loc[0] == "tasks":
        tag = str(error.get("ctx", {}).get("tag", ""))
        kinds = list(_TASK_KINDS)
        return (
            f"{where}: kind {tag!r} is not a task kind{did_you_mean(tag, kinds)} (kinds: "
            f"{', '.join(kinds)})"
        )
    message = error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    # a check of a whole section names its values itself
    return (
        f"{where}: {message}" if isinstance(given, dict) else f"{where}: {message} (got {given!r})"
    )


def parse_config(raw: dict[str, Any], *, root: Path, source: str = "config") -> ProjectConfig:
    """Validate a config mapping; relative table paths resolve against ``root``.

    Raises
    ------
    ConfigError
        Listing every problem, each with its key path and fix.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {raw!r}")
    try:
        config = ProjectConfig.model_validate({**raw, "root": root})
    except ValidationError as exc:
        problems = "\n  ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{source} is not a valid cxpredict config:\n  {problems}") from None
    resolved = {
        name: table.model_copy(update={"path": (root / table.path).resolve()})
        for name, table in config.data.tables().items()
    }
    features = config.features
    if features.duckdb_temp_directory is not None:
        spill = (root / features.duckdb_temp_directory).resolve()
        features = features.model_copy(update={"duckdb_temp_directory": spill})
    python = tuple(
        p.model_copy(update={"folder": (root / (p.folder or ".")).resolve()})
        for p in features.python
    )
    features = features.model_copy(update={"python": python})
    return config.model_copy(
        update={"data": config.data.model_copy(update=resolved), "features": features}
    )


def load_config(path: str | Path) -> ProjectConfig:
    """Read and validate the YAML config at ``path``.

    Raises
    ------
    ConfigError
        If the file is missing, is not YAML, or is not a valid config.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass --config with its path")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc}); save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}); fix the syntax at that line") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: a config is a mapping of settings (project:, data:, tasks: ...), got a "
            f"{type(raw).__name__}; see data/sample/cxpredict.yaml"
        )
    if "root" in (raw or {}):
        raise ConfigError(f"{path}: 'root' is set from the config file's folder; remove the key")
    return parse_config(raw or {}, root=path.resolve().parent, source=str(path))
