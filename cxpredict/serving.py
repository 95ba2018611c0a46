"""The served model: a pyfunc over a model bundle that checks its input, and the server.

The pyfunc's one artifact is the bundle directory (booster text and JSON metadata). Its
input is one row per customer: an optional ``customer_id`` and the model's feature columns;
its output is one row per input row: calibrated probabilities, expected values or top-k
preferences, with the ``customer_id`` when given.

Every input problem is answered as an ``MlflowException`` with ``INVALID_PARAMETER_VALUE``,
which MLflow's scoring server turns into HTTP 400 with a JSON body naming the column; any
other failure becomes HTTP 500 with a one-line message. Neither carries a stack trace.

MLflow's server reads a request with the signature's types before the model sees it: a CSV
cell that is not a number fails there with a stack trace in the answer, and columns the
signature does not name are dropped without a word. Inside a server, the model therefore
checks each request body itself first (:func:`guard_scoring_server`): read as text, checked
by :func:`validate_input`, and any error MLflow raises afterwards is answered without its
stack trace and without echoing the request.

The server is ``mlflow models serve --env-manager local``, bound to 127.0.0.1 unless told
otherwise, with this interpreter's ``bin`` folder first on ``PATH`` so that it finds
``uvicorn`` in an unactivated virtual environment.
"""

from __future__ import annotations

import csv
import functools
import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Mapping, Sequence
from io import BytesIO, StringIO
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from cxpredict.baselines import BaselineInputError
from cxpredict.errors import DataError, FeatureMismatch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ID_COLUMN = "customer_id"
#: The content type of a Parquet body.
PARQUET = "application/vnd.apache.parquet"
CATALOGUE_PARAM = "catalogue_version"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5001
_SHOWN = 8


class InvalidInput(DataError):
    """A scoring request that cannot be scored: empty, or a value of the wrong type."""


class ScoringBundle(Protocol):
    """What the pyfunc needs from a model bundle."""

    kind: str
    features: Sequence[str]
    catalogue_version: str

    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        """One output row per input row, same index."""
        ...


#: The function that reads a bundle directory, recorded in each logged model's config.
DEFAULT_LOADER = "cxpredict.training:ModelBundle.load"


def load_bundle(path: str | os.PathLike[str], loader: str | None = None) -> ScoringBundle:
    """Read a bundle directory with ``loader`` (``"module:attribute"``, default the trainer's).

    Each logged model records its loader in its model config, so a model keeps loading with
    the function it was logged with.
    """
    module_name, _, attribute = (loader or DEFAULT_LOADER).partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target(Path(path))


# ------------------------------------------------------------------------------ validation


def _names(columns: Sequence[str]) -> str:
    shown = ", ".join(repr(c) for c in columns[:_SHOWN])
    more = len(columns) - _SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def check_catalogue(expected: str, got: str | None, *, model: str = "the model") -> None:
    """Refuse features from another catalogue version (``None`` or ``""``: not checked).

    Raises
    ------
    FeatureMismatch
        Naming both versions and the fix.
    """
    if got and got != expected:
        raise FeatureMismatch(
            f"{model} was trained with feature catalogue {expected!r} but the features were "
            f"built with {got!r}; rebuild them with the model's vocabulary and feature "
            "settings, or retrain the model on the current features"
        )


def check_columns(
    frame: pd.DataFrame, features: Sequence[str], *, model: str = "the model"
) -> None:
    """Refuse a frame that lacks any of the model's feature columns.

    Raises
    ------
    FeatureMismatch
        Naming the missing columns (and the unexpected ones) and the fix.
    """
    missing = [f for f in features if f not in frame.columns]
    if missing:
        extra = [str(c) for c in frame.columns if c not in set(features) and c != ID_COLUMN]
        also = f"; columns it does not know: {_names(extra)}" if extra else ""
        raise FeatureMismatch(
            f"{model} needs {len(features)} feature columns; missing column(s) "
            f"{_names(missing)}{also}. Build the features with the catalogue and vocabulary "
            "the model was trained with"
        )


def validate_input(frame: Any, features: Sequence[str]) -> pd.DataFrame:
    """The model's input as float columns in training order, with ``customer_id`` when given.

    Missing values (null) are allowed: the model treats them as unknown. Booleans count as
    0/1, and text that reads as a number is taken as that number.

    Raises
    ------
    InvalidInput
        When there is no row, when a feature holds something that is not a number (naming
        the column and the first offending value) or an infinite value, or when a column is
        not known to the model.
    FeatureMismatch
        When feature columns are missing.
    """
    if isinstance(frame, Mapping):
        frame = pd.DataFrame(frame)
    if not isinstance(frame, pd.DataFrame):
        raise InvalidInput(
            f"expected a table of customer features, got {type(frame).__name__}; send "
            '{"dataframe_split": {"columns": [...], "data": [[...]]}}'
        )
    if len(frame) == 0:
        raise InvalidInput(
            "empty payload: no rows to score; send one row per customer with the columns "
            f"{_names(['customer_id', *features])}"
        )
    frame = frame.rename(columns=str)
    repeated = sorted(set(frame.columns[frame.columns.duplicated()]))
    if repeated:
        raise InvalidInput(
            f"column(s) {_names(repeated)} appear more than once; send each column once",
            column=repeated[0],
        )
    check_columns(frame, features)
    unknown = [c for c in frame.columns if c not in set(features) and c != ID_COLUMN]
    if unknown:
        raise InvalidInput(
            f"column(s) {_names(unknown)} are not inputs of the model; send only "
            f"{ID_COLUMN!r} and the model's feature columns",
            column=unknown[0],
        )
    out = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    if ID_COLUMN in frame.columns:
        ids = frame[ID_COLUMN].to_numpy(dtype=object)
        if pd.isna(ids).any():
            raise InvalidInput(f"column {ID_COLUMN!r}: a customer_id is null", column=ID_COLUMN)
        out[ID_COLUMN] = [str(v) for v in ids]
    values = {f: _numeric(frame[f], f) for f in features}
    return pd.concat([out, pd.DataFrame(values, index=out.index)], axis=1)


def _numeric(column: pd.Series, name: str) -> np.ndarray:
    series = column.reset_index(drop=True)
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.astype(float).to_numpy()
    if pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(dtype=float, na_value=np.nan)
    else:
        cells = series.to_numpy(dtype=object)
        values = np.full(len(cells), np.nan)
        for i, cell in enumerate(cells):
            if isinstance(cell, np.ndarray) and cell.ndim == 0:  # "instances" cells
                cell = cell.item()
            if cell is None or (isinstance(cell, float) and np.isnan(cell)):
                continue
            if isinstance(cell, bool | np.bool_):
                values[i] = float(cell)
                continue
            try:
                values[i] = float(cell)
            except (TypeError, ValueError):
                raise InvalidInput(
                    f"column {name!r}: expected a number or null, got {_short(cell)} in row {i}",
                    column=name,
                ) from None
    if np.isinf(values).any():
        row = int(np.flatnonzero(np.isinf(values))[0])
        raise InvalidInput(
            f"column {name!r}: infinite value in row {row}; send a finite number or null",
            column=name,
        )
    return values


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------------------------ the pyfunc


def bad_request(problem: InvalidInput | FeatureMismatch) -> Exception:
    """An input problem as the ``MlflowException`` MLflow's server answers with HTTP 400."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(str(problem), error_code=INVALID_PARAMETER_VALUE)


class ScoringModel(PythonModel):
    """An MLflow pyfunc that scores customer features with a cxpredict model bundle."""

    def load_context(self, context: Any) -> None:
        """Read the bundle from the model's ``bundle`` artifact with the recorded loader.

        Inside MLflow's scoring server (its module is loaded before the model), requests are
        checked against this model before MLflow reads them (:func:`guard_scoring_server`).
        """
        loader = (context.model_config or {}).get("loader")
        self.bundle = load_bundle(context.artifacts["bundle"], loader)
        if SERVER_MODULE in sys.modules:
            guard_scoring_server(list(self.bundle.features))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None):
        """Validate ``model_input`` and score it; problems become HTTP 400, never a trace.

        ``params["catalogue_version"]``, when given, must equal the model's.
        """
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

        try:
            given = (params or {}).get(CATALOGUE_PARAM)
            check_catalogue(self.bundle.catalogue_version, given, model="this model")
            frame = validate_input(model_input, list(self.bundle.features))
            return score(self.bundle, frame)
        except (InvalidInput, FeatureMismatch) as exc:
            raise bad_request(exc) from None
        except BaselineInputError as exc:
            # the purchase summary of some rows cannot be a customer's (recency beyond age...)
            raise bad_request(InvalidInput(f"the purchase summary columns: {exc}")) from None
        except Exception as exc:
            raise MlflowException(
                f"scoring failed ({type(exc).__name__}: {_short(str(exc))}); the input passed "
                "validation, so this is a fault of the model bundle: report it",
                error_code=INTERNAL_ERROR,
            ) from None


def score(bundle: ScoringBundle, frame: pd.DataFrame) -> pd.DataFrame:
    """The bundle's predictions for a validated frame, with ``customer_id`` first when given.

    Churn and repurchase: ``probability``; value: ``spend``, ``orders``, ``next_order_days``
    and ``next_order_note`` (when the bundle dates next orders); preference: the task's
    ``top_k`` values as ``top_1``, ``top_1_probability``, ``top_2``, ...
    """
    features = frame[list(bundle.features)]
    predictions = bundle.predict(features).reset_index(drop=True)
    dating = getattr(bundle, "next_order", None)
    if bundle.kind == "value" and dating is not None:
        dated = dating(features).reset_index(drop=True)
        predictions = pd.concat([predictions, dated], axis=1)
    if bundle.kind == "preference":
        task = getattr(bundle, "task", None) or {}
        predictions = top_choices(predictions, k=int(task.get("top_k", 3)))
    if ID_COLUMN in frame.columns:
        predictions.insert(0, ID_COLUMN, frame[ID_COLUMN].to_numpy())
    return predictions


def top_choices(scores: pd.DataFrame, *, k: int) -> pd.DataFrame:
    """The ``k`` highest-scored columns of each row and their scores (ties: column order)."""
    matrix = scores.to_numpy(dtype=float)
    names = np.asarray([str(c) for c in scores.columns], dtype=object)
    order = np.argsort(-matrix, axis=1, kind="stable")
    out = pd.DataFrame(index=scores.index)
    for j in range(min(k, matrix.shape[1])):
        out[f"top_{j + 1}"] = names[order[:, j]]
        out[f"top_{j + 1}_probability"] = np.take_along_axis(matrix, order[:, [j]], 1)[:, 0]
    return out


def input_example(bundle: ScoringBundle) -> pd.DataFrame:
    """Two made-up customers: nothing from the training data but aggregate statistics.

    Feature values are the training medians when the bundle records them, else zeros; the
    ids are ``example-1`` and ``example-2``, which no real customer has.
    """
    features = list(bundle.features)
    medians = getattr(bundle, "feature_medians", None) or {}
    typical = [float(medians.get(f, 0.0)) if medians.get(f) is not None else 0.0 for f in features]
    rows = [typical, [0.0] * len(features)]
    frame = pd.DataFrame(rows, columns=features, dtype=float)
    frame.insert(0, ID_COLUMN, ["example-1", "example-2"])
    return frame


def signature(bundle: ScoringBundle, example: pd.DataFrame) -> Any:
    """Inputs: optional string ``customer_id`` and a double per feature; outputs as predicted."""
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema(
        [ColSpec("string", ID_COLUMN, required=False)]
        + [ColSpec("double", str(f)) for f in bundle.features]
    )
    inferred = infer_signature(example, score(bundle, validate_input(example, bundle.features)))
    # the answer carries customer_id only when the request did
    outputs = Schema(
        [
            ColSpec(spec.type, spec.name, required=spec.required and spec.name != ID_COLUMN)
            for spec in inferred.outputs.inputs
        ]
    )
    params = ParamSchema([ParamSpec(CATALOGUE_PARAM, "string", "")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


_ENTRY_POINT = """\
# The cxpredict scoring model, logged as code: MLflow imports this file to build the model.
from mlflow.models import set_model

from cxpredict.serving import ScoringModel

set_model(ScoringModel())
"""


def requirements() -> list[str]:
    """The packages the served model imports, pinned to the versions in this environment."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for package in ("mlflow", "lightgbm", "pandas", "numpy", "scikit-learn", "cxpredict"):
        try:
            out.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            out.append(package)
    return out


def log_pyfunc(
    bundle_dir: str | os.PathLike[str],
    bundle: ScoringBundle,
    *,
    registered_model_name: str | None = None,
    loader: str = DEFAULT_LOADER,
) -> Any:
    """Log the bundle as a pyfunc model in the active run (optionally registering it).

    The model is logged from code (no pickle): a three-line entry point that builds
    :class:`ScoringModel`; the bundle directory is its artifact and ``loader`` (the function
    that reads it, ``"module:attribute"``) is recorded in its model config.
    """
    import mlflow

    example = input_example(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        entry = Path(tmp) / "cxpredict_model.py"
        entry.write_text(_ENTRY_POINT, encoding="utf-8")
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(entry),
            artifacts={"bundle": str(Path(bundle_dir).resolve())},
            signature=signature(bundle, example),
            input_example=example,
            pip_requirements=requirements(),
            model_config={"loader": loader},
            registered_model_name=registered_model_name,
        )


# ------------------------------------------------------------------------------ requests

SERVER_MODULE = "mlflow.pyfunc.scoring_server"
#: MLflow's messages that quote the request: a prefix before the error, or a suffix after it.
_ECHO = re.compile(
    r"^Failed to predict data .*?\nError: |^Failed to enforce schema of data .*?Error: |"
    r"\nInput: .*$",
    re.DOTALL,
)


def read_request(data: bytes | str, content_type: str, model: Any = None) -> pd.DataFrame | None:
    """A request body as MLflow's server would receive it, read as a table without types.

    CSV cells stay text (:func:`validate_input` reads numbers from them), Parquet is read as
    stored and JSON goes through MLflow's own parser without the signature's schema, so no
    column is coerced or dropped. ``None`` when the body is JSON that MLflow reads as
    something other than a table (its own checks then apply).

    Raises
    ------
    InvalidInput
        When the body is empty or cannot be read in its content type.
    """
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime == "text/csv":
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
        except UnicodeDecodeError:
            raise InvalidInput("the CSV body is not UTF-8 text; send it encoded as UTF-8") from None
        if not text.strip():
            raise InvalidInput("empty payload: the CSV body has no header and no rows")
        try:
            with warnings.catch_warnings():
                # A line longer than the header is an error, not an index column.
                warnings.simplefilter("error", pd.errors.ParserWarning)
                frame = pd.read_csv(StringIO(text), dtype=str, index_col=False, na_filter=False)
        except (ValueError, pd.errors.ParserError, pd.errors.ParserWarning) as exc:
            raise InvalidInput(
                f"the CSV body could not be read ({_short(str(exc).splitlines()[0])}); send a "
                "header line of column names and one line per customer"
            ) from None
        row = _short_row(text, frame.shape[1])
        if row is not None:
            raise InvalidInput(
                f"CSV row {row} has fewer fields than the header's {frame.shape[1]}; send every "
                "column on every line (an empty field is a missing value)"
            )
        features = [c for c in frame.columns if c != ID_COLUMN]
        missing = dict.fromkeys(features, {value: None for value in _CSV_NULLS})
        if ID_COLUMN in frame.columns:
            missing[ID_COLUMN] = {"": None}  # an empty id is no id; "NA" may be one
        return frame.replace(missing)
    if mime == PARQUET:
        try:
            frame = pd.read_parquet(BytesIO(data if isinstance(data, bytes) else data.encode()))
        except Exception:
            raise InvalidInput(
                "the body is not a Parquet file; send a table written by "
                "pandas.DataFrame.to_parquet"
            ) from None
        if ID_COLUMN not in frame.columns and ID_COLUMN in frame.index.names:
            # a features file as cxpredict writes it: the ids are its index
            frame = frame.reset_index(level=ID_COLUMN)
        return frame.reset_index(drop=True)
    if mime == "application/json" and model is not None:
        from mlflow.pyfunc import scoring_server

        _check_json_request(data)
        parsed = scoring_server._parse_json_data(data, model.metadata, None).data
        if isinstance(parsed, list) and parsed and all(isinstance(r, dict) for r in parsed):
            parsed = pd.DataFrame(parsed)  # records under "inputs" or "instances"
        if isinstance(parsed, list | np.ndarray):
            raise InvalidInput(
                "the rows have no column names; send "
                '{"dataframe_split": {"columns": [...], "data": [[...]]}} or '
                '{"dataframe_records": [{"customer_id": ..., ...}]}'
            )
        if (
            isinstance(parsed, dict)
            and parsed
            and all(isinstance(v, list | np.ndarray) for v in parsed.values())
        ):
            parsed = pd.DataFrame(parsed)
        return parsed if isinstance(parsed, pd.DataFrame) else None
    return None


#: CSV cells read as missing values, besides the empty one.
_CSV_NULLS = ("", "NA", "N/A", "n/a", "null", "NULL", "None", "<NA>", "#N/A")


def _short_row(text: str, width: int) -> int | None:
    """The first data row (0 for the first after the header) with fewer than ``width`` fields
    (a CSV reader fills them in as empty), or ``None``."""
    if '"' in text:
        lengths = [len(fields) for fields in csv.reader(StringIO(text)) if fields]
    else:
        lengths = [line.count(",") + 1 for line in text.splitlines() if line.strip()]
    short = [k for k, n in enumerate(lengths[1:]) if n < width]
    return short[0] if short else None


def _check_json_request(data: bytes | str) -> None:
    """Refuse parameters the model does not take and records without every column.

    Raises
    ------
    InvalidInput
        Naming the unknown parameter, or the record and the columns it lacks.
    """
    try:
        body = json.loads(data)
    except ValueError:
        return  # MLflow's own answer names the problem
    if not isinstance(body, dict):
        return
    params = body.get("params")
    if isinstance(params, dict):
        unknown = sorted(str(k) for k in params if k != CATALOGUE_PARAM)
        if unknown:
            raise InvalidInput(
                f"unknown parameter(s) {_names(unknown)}; the model takes {CATALOGUE_PARAM!r} only"
            )
    records = body.get("dataframe_records")
    if isinstance(records, list) and records and all(isinstance(r, dict) for r in records):
        columns = set().union(*records)
        for row, record in enumerate(records):
            if len(record) != len(columns):
                lacking = sorted(columns - set(record))
                raise InvalidInput(
                    f"record {row} lacks column(s) {_names(lacking)}; send every column in "
                    "every record (null for a missing value)"
                )


def _jsonable(predictions: Any) -> Any:
    """Predictions whose missing numbers are ``None``, which JSON writes as ``null`` (a
    ``NaN`` is not JSON, and other services' parsers refuse it)."""
    if isinstance(predictions, pd.DataFrame):
        return predictions.astype(object).where(predictions.notna(), None)
    return predictions


def _dataframe_split(frame: pd.DataFrame) -> dict[str, Any]:
    """``frame`` in MLflow's ``dataframe_split`` form, missing values as ``None``."""
    values = _jsonable(frame).to_numpy().tolist()
    return {"columns": [str(c) for c in frame.columns], "data": values}


def guard_scoring_server(features: Sequence[str]) -> None:
    """Check each request to MLflow's scoring server in this process against ``features``.

    Wraps the server's request handler (``invocations``): the body is read as a table
    without types (:func:`read_request`) and checked by :func:`validate_input` before MLflow
    reads it, so a non-numeric CSV cell, an unknown column or an empty body is a 400 naming
    the column. Any ``MlflowException`` raised while answering is re-raised with its message
    only: no stack trace, no echo of the request's rows. Installing twice is harmless.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    original: Callable[..., Any] = scoring_server.invocations
    if getattr(original, "checks_cxpredict_input", False):
        return
    # MLflow's own schema errors would quote the request's rows
    os.environ["MLFLOW_DISABLE_SCHEMA_DETAILS"] = "true"
    for name in ("predictions_to_json", "unwrapped_predictions_to_json"):
        encode = getattr(scoring_server, name)
        setattr(
            scoring_server,
            name,
            functools.wraps(encode)(
                lambda raw, output, *args, _encode=encode, **kwargs: _encode(
                    _jsonable(raw), output, *args, **kwargs
                )
            ),
        )

    def invocations(data: Any, content_type: str, model: Any, input_schema: Any) -> Any:
        try:
            try:
                request = read_request(data, content_type, model)
            except MlflowException:
                request = None  # unreadable JSON: MLflow's own answer names the problem
            if request is not None:
                checked = validate_input(request, features)
                if not str(content_type).lower().startswith("application/json"):
                    # CSV and Parquet go on as the checked numbers, in MLflow's JSON form
                    data = json.dumps({"dataframe_split": _dataframe_split(checked)})
                    content_type = "application/json"
            return original(data, content_type, model, input_schema)
        except (InvalidInput, FeatureMismatch) as exc:
            raise bad_request(exc) from None
        except MlflowException as exc:
            exc.message = _ECHO.sub("", exc.message)
            exc.json_kwargs.pop("stack_trace", None)
            raise exc from None

    invocations.checks_cxpredict_input = True  # type: ignore[attr-defined]
    scoring_server.invocations = invocations


# ------------------------------------------------------------------------------ the server


def server_command(
    model_uri: str, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> list[str]:
    """``mlflow models serve`` for ``model_uri`` with the current interpreter's environment."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "--host",
        host,
        "--port",
        str(port),
    ]


def server_environment(tracking_uri: str, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` plus this interpreter's ``bin`` first on PATH, the store and no telemetry."""
    env = dict(environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")]).rstrip(os.pathsep)
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["MLFLOW_REGISTRY_URI"] = tracking_uri
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def start_server(
    model_uri: str,
    *,
    tracking_uri: str,
    environ: Mapping[str, str],
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    output: Any = subprocess.DEVNULL,
    own_group: bool = True,
) -> subprocess.Popen[bytes]:
    """Start the scoring server; stop it with :func:`stop_server`.

    ``output`` receives the server's stdout and stderr (``None``: this process's own). With
    ``own_group`` the server leads a new process group, which :func:`stop_server` signals as
    a whole; otherwise it shares this process's group (and its Ctrl-C).
    """
    return subprocess.Popen(
        server_command(model_uri, host=host, port=port),
        env=server_environment(tracking_uri, environ),
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        start_new_session=own_group,
    )


def port_in_use(host: str, port: int) -> bool:
    """Whether ``port`` on ``host`` is already taken (checked by binding it for a moment)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def run_server(
    model_uri: str,
    *,
    tracking_uri: str,
    environ: Mapping[str, str],
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
) -> int:
    """Run the scoring server in the foreground until it exits, Ctrl-C or SIGTERM.

    The server stays in this process's group so that Ctrl-C reaches it; a SIGTERM sent to
    this process alone is passed on to it. Returns the server's exit code (0 when stopped).
    """
    process = start_server(
        model_uri,
        tracking_uri=tracking_uri,
        environ=environ,
        host=host,
        port=port,
        output=None,
        own_group=False,
    )

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        return process.wait()
    except KeyboardInterrupt:
        stop_server(process)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_until_ready(process: subprocess.Popen[bytes], url: str, *, timeout: float = 60.0) -> None:
    """Wait for ``<url>/ping`` to answer 200.

    Raises
    ------
    RuntimeError
        When the server exits or does not answer within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the scoring server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the scoring server did not answer {url}/ping within {timeout:.0f} s")


def stop_server(process: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    """Stop a server started by :func:`start_server`, by its process id.

    A server leading its own group is stopped with its group; otherwise the server process
    is terminated and MLflow's worker, which dies with its parent, follows.
    """
    if process.poll() is not None:
        return

    def send(sig: int) -> None:
        try:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)
        except ProcessLookupError:
            pass

    send(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait(timeout=timeout)
