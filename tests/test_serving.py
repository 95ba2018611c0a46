"""The served model: input validation, error mapping, and the real scoring server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from test_registry import AS_OF, CATALOGUE, FEATURES, LOADER, Trained, tiny_bundle
from test_registry import backtest_metrics as metrics_for

from cxpredict import registry, serving
from cxpredict.config import load_config
from cxpredict.errors import FeatureMismatch
from cxpredict.sample import generate_sample
from cxpredict.serving import InvalidInput, ScoringModel, validate_input

TESTS = Path(__file__).resolve().parent


def frame(**columns: list) -> pd.DataFrame:
    base = {f: [1.0, 2.0] for f in FEATURES}
    return pd.DataFrame({**base, **columns})


# ------------------------------------------------------------------------------ validation


def test_valid_input_becomes_floats_in_training_order_with_ids_kept() -> None:
    given = frame(customer_id=["a", "b"], orders_lifetime=[True, None])[
        ["spend_lifetime", "customer_id", "orders_lifetime", "days_since_last_order"]
    ]
    out = validate_input(given, FEATURES)
    assert list(out.columns) == ["customer_id", *FEATURES]
    assert list(out["customer_id"]) == ["a", "b"]
    np.testing.assert_array_equal(out["orders_lifetime"], [1.0, np.nan])
    assert all(out[f].dtype == float for f in FEATURES)


def test_numbers_sent_as_text_are_read_as_numbers() -> None:
    out = validate_input(frame(spend_lifetime=["12.5", None]), FEATURES)
    np.testing.assert_array_equal(out["spend_lifetime"], [12.5, np.nan])


def test_an_empty_payload_is_refused() -> None:
    with pytest.raises(InvalidInput, match="empty payload: no rows to score"):
        validate_input(frame().iloc[:0], FEATURES)


def test_a_missing_column_is_named() -> None:
    with pytest.raises(FeatureMismatch, match=r"missing column\(s\) 'orders_lifetime'"):
        validate_input(frame().drop(columns="orders_lifetime"), FEATURES)


@pytest.mark.parametrize("bad", ["many", [1, 2], {"a": 1}])
def test_a_value_of_the_wrong_type_is_named_with_its_column(bad: object) -> None:
    with pytest.raises(InvalidInput, match=r"column 'spend_lifetime': expected a number or null"):
        validate_input(frame(spend_lifetime=[1.0, bad]), FEATURES)


def test_infinite_values_and_unknown_columns_are_refused() -> None:
    with pytest.raises(InvalidInput, match="column 'orders_lifetime': infinite value in row 1"):
        validate_input(frame(orders_lifetime=[1.0, np.inf]), FEATURES)
    with pytest.raises(InvalidInput, match="'email' are not inputs of the model"):
        validate_input(frame(email=["x", "y"]), FEATURES)


def test_a_repeated_column_is_refused_by_name() -> None:
    given = pd.concat([frame(), frame()[["orders_lifetime"]]], axis=1)
    with pytest.raises(InvalidInput, match=r"column\(s\) 'orders_lifetime' appear more than once"):
        validate_input(given, FEATURES)


def test_cells_of_instances_requests_are_read_as_their_values() -> None:
    # MLflow hands "instances" rows over as zero-dimensional arrays, nulls included
    cells = [np.array(None, dtype=object), np.array(2.5, dtype=object)]
    out = validate_input(frame(spend_lifetime=cells), FEATURES)
    np.testing.assert_array_equal(out["spend_lifetime"], [np.nan, 2.5])


def test_another_catalogue_is_a_feature_mismatch() -> None:
    serving.check_catalogue(CATALOGUE, None)
    serving.check_catalogue(CATALOGUE, "")
    with pytest.raises(FeatureMismatch, match="built with 'features-1-other'"):
        serving.check_catalogue(CATALOGUE, "features-1-other")


class _Context:
    artifacts: dict[str, str] = {}
    model_config: dict[str, str] = {}


def scoring_model(bundle) -> ScoringModel:
    model = ScoringModel()
    model.bundle = bundle
    return model


def test_input_problems_become_400_without_a_stack_trace() -> None:
    model = scoring_model(tiny_bundle())
    with pytest.raises(MlflowException) as caught:
        model.predict(_Context(), frame(spend_lifetime=["x", 1.0]))
    assert caught.value.get_http_status_code() == 400
    body = caught.value.serialize_as_json()
    assert "spend_lifetime" in body and "stack_trace" not in body and "Traceback" not in body
    with pytest.raises(MlflowException, match="built with 'other'") as caught:
        model.predict(_Context(), frame(), params={"catalogue_version": "other"})
    assert caught.value.get_http_status_code() == 400


def test_a_fault_of_the_bundle_becomes_500_without_a_stack_trace() -> None:
    class Broken:
        kind = "churn"
        features = FEATURES
        catalogue_version = CATALOGUE

        def predict(self, X: pd.DataFrame) -> pd.DataFrame:
            raise KeyError("booster")

    with pytest.raises(MlflowException, match="scoring failed") as caught:
        scoring_model(Broken()).predict(_Context(), frame())
    assert caught.value.get_http_status_code() == 500
    assert "stack_trace" not in caught.value.serialize_as_json()


def test_preferences_are_answered_as_the_top_k_values() -> None:
    scores = pd.DataFrame({"bags": [0.1, 0.7], "shoes": [0.5, 0.7], "toys": [0.3, 0.2]})
    top = serving.top_choices(scores, k=2)
    assert list(top.columns) == ["top_1", "top_1_probability", "top_2", "top_2_probability"]
    assert list(top["top_1"]) == ["shoes", "bags"]
    assert list(top["top_2"]) == ["toys", "shoes"]
    np.testing.assert_allclose(top["top_2_probability"], [0.3, 0.7])


def test_a_value_answer_dates_the_next_order_when_the_bundle_can() -> None:
    class Dating:
        kind, features = "value", ["f"]

        def predict(self, X: pd.DataFrame) -> pd.DataFrame:
            return pd.DataFrame({"spend": X["f"] * 10, "orders": X["f"]}, index=X.index)

        def next_order(self, X: pd.DataFrame) -> pd.DataFrame:
            soon = X["f"].to_numpy() > 1
            note = np.where(soon, "", "not expected within 90 days")
            days = np.where(soon, 12.5, np.nan)
            return pd.DataFrame({"next_order_days": days, "next_order_note": note}, index=X.index)

    given = pd.DataFrame({"customer_id": ["a", "b"], "f": [1.0, 3.0]}, index=[7, 9])
    out = serving.score(Dating(), given)  # type: ignore[arg-type]
    assert list(out.columns) == [
        "customer_id",
        "spend",
        "orders",
        "next_order_days",
        "next_order_note",
    ]
    assert out["next_order_note"].tolist() == ["not expected within 90 days", ""]
    np.testing.assert_array_equal(out["next_order_days"], [np.nan, 12.5])


def test_the_input_example_is_made_up() -> None:
    example = serving.input_example(tiny_bundle())
    assert list(example["customer_id"]) == ["example-1", "example-2"]
    assert list(example.columns) == ["customer_id", *FEATURES]


def test_the_signature_says_customer_id_is_optional_in_and_out() -> None:
    bundle = tiny_bundle()
    signature = serving.signature(bundle, serving.input_example(bundle))
    for schema in (signature.inputs, signature.outputs):
        (spec,) = [c for c in schema.inputs if c.name == "customer_id"]
        assert not spec.required


def test_a_csv_body_is_read_as_text_so_every_cell_can_be_checked() -> None:
    body = b"customer_id,orders_lifetime,days_since_last_order,spend_lifetime\n007,1,,many\n"
    request = serving.read_request(body, "text/csv; charset=utf-8")
    assert list(request["customer_id"]) == ["007"]
    with pytest.raises(InvalidInput, match="column 'spend_lifetime': expected a number or null"):
        validate_input(request, FEATURES)


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"", "text/csv", "empty payload"),
        (b"\xff\xfe", "text/csv", "not UTF-8"),
        (b"a,b\n1,2,3,4\n", "text/csv", "could not be read"),
        (b'a,b\n1,"2\n', "text/csv", "could not be read"),
        (b"PAR1 not really", "application/vnd.apache.parquet", "not a Parquet file"),
    ],
)
def test_an_unreadable_body_is_invalid_input(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        serving.read_request(body, content_type)


def test_a_csv_line_shorter_than_its_header_is_refused_and_na_cells_are_missing() -> None:
    header = "customer_id," + ",".join(FEATURES)
    with pytest.raises(InvalidInput, match="CSV row 1 has fewer fields than the header's 4"):
        serving.read_request(f"{header}\nc-1,1,2,3\nc-2,1\n", "text/csv")
    request = serving.read_request(f"{header}\nNA,NA,,null\n", "text/csv")
    checked = validate_input(request, FEATURES)
    assert checked["customer_id"].tolist() == ["NA"]
    assert checked[FEATURES].isna().all(axis=None)
    empty_id = serving.read_request(f"{header}\n,1,2,3\n", "text/csv")
    with pytest.raises(InvalidInput, match="a customer_id is null"):
        validate_input(empty_id, FEATURES)


def test_a_parquet_body_holds_its_ids_as_a_column_or_as_its_index(tmp_path: Path) -> None:
    features = frame(customer_id=["a", "b"]).set_index("customer_id")
    features.to_parquet(tmp_path / "f.parquet")
    request = serving.read_request((tmp_path / "f.parquet").read_bytes(), serving.PARQUET)
    assert request["customer_id"].tolist() == ["a", "b"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"dataframe_split": {}, "params": {"catalog_version": "x"}}, "'catalog_version'"),
        ({"dataframe_records": [{"a": 1, "b": 2}, {"a": 1}]}, "record 1 lacks column\\(s\\) 'b'"),
    ],
)
def test_json_requests_name_unknown_parameters_and_incomplete_records(
    body: dict, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        serving._check_json_request(json.dumps(body))


def test_missing_numbers_are_answered_as_json_null() -> None:
    answer = pd.DataFrame({"next_order_days": [np.nan, 12.5], "note": ["none", ""]})
    records = serving._jsonable(answer).to_dict(orient="records")
    assert json.loads(json.dumps(records, allow_nan=False))[0]["next_order_days"] is None


def test_a_purchase_summary_no_customer_can_have_is_a_400_naming_it() -> None:
    from cxpredict.baselines import BaselineInputError

    class Summing:
        kind, features, catalogue_version = "value", FEATURES, CATALOGUE

        def predict(self, X: pd.DataFrame) -> pd.DataFrame:
            raise BaselineInputError("2 of 2 customers have recency > T (rows 0, 1)")

    with pytest.raises(MlflowException, match="recency > T \\(rows 0, 1\\)") as caught:
        scoring_model(Summing()).predict(_Context(), frame())
    assert caught.value.get_http_status_code() == 400


def test_the_guarded_server_answers_without_trace_or_echo(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.pyfunc import scoring_server

    seen: list[str] = []

    def mlflow_invocations(data, content_type, model, input_schema):
        seen.append(data)
        raise MlflowException(
            f"Failed to predict data '{data}'. \nError: schema broke\nInput: \n{data!r}\n",
            error_code=INVALID_PARAMETER_VALUE,
            stack_trace="Traceback (most recent call last): ...",
        )

    monkeypatch.setattr(scoring_server, "invocations", mlflow_invocations)
    for name in ("predictions_to_json", "unwrapped_predictions_to_json"):
        monkeypatch.setattr(scoring_server, name, getattr(scoring_server, name))
    monkeypatch.setenv("MLFLOW_DISABLE_SCHEMA_DETAILS", "false")
    serving.guard_scoring_server(FEATURES)
    serving.guard_scoring_server(FEATURES)
    guarded = scoring_server.invocations
    extra = b"orders_lifetime,days_since_last_order,spend_lifetime,email\n1,2,3,a@b.c\n"
    with pytest.raises(MlflowException, match="'email' are not inputs") as caught:
        guarded(extra, "text/csv", None, None)
    assert caught.value.get_http_status_code() == 400 and seen == []
    valid = b"orders_lifetime,days_since_last_order,spend_lifetime\nsecret-row,2,3\n"
    with pytest.raises(MlflowException, match="orders_lifetime"):
        guarded(valid, "text/csv", None, None)
    good = b"orders_lifetime,days_since_last_order,spend_lifetime\n1,2,3\n"
    with pytest.raises(MlflowException) as caught:
        guarded(good, "text/csv", None, None)
    # the checked numbers go on to MLflow, as JSON
    assert [json.loads(d) for d in seen] == [
        {"dataframe_split": {"columns": FEATURES, "data": [[2.0, 1.0, 3.0]]}}
    ]
    body = caught.value.serialize_as_json()
    assert json.loads(body)["message"] == "schema broke"
    assert caught.value.get_http_status_code() == 400
    assert "stack_trace" not in body and "Traceback" not in body


def test_the_server_runs_from_this_environment_on_loopback() -> None:
    command = serving.server_command("models:/shop-churn@champion", port=5123)
    assert command[:3] == [sys.executable, "-m", "mlflow"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--env-manager") + 1] == "local"
    env = serving.server_environment("sqlite:////x/mlflow.db", {"PATH": "/usr/bin"})
    assert env["PATH"].split(os.pathsep) == [str(Path(sys.executable).parent), "/usr/bin"]
    assert env["MLFLOW_TRACKING_URI"] == "sqlite:////x/mlflow.db"
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"


# ------------------------------------------------------------------------------ the server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def post(url: str, body: str | bytes, content_type: str = "application/json") -> tuple[int, str]:
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(
        f"{url}/invocations", data=data, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """``cxpredict serve`` on a free loopback port, run without the virtualenv on PATH."""
    root = tmp_path_factory.mktemp("served")
    raw = {
        "project": "shop",
        "data": {"orders": {"path": "orders.csv"}},
        "tasks": {"churn": {"kind": "churn", "horizon_days": 56}},
    }
    config_path = root / "cxpredict.yaml"
    config_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    config = load_config(config_path)
    bundle = tiny_bundle()
    result = Trained(AS_OF, metrics_for(0.5), [AS_OF], CATALOGUE, bundle)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        registry.log_training_run(
            config,
            "churn",
            result,
            tables=generate_sample(300, seed=1),
            bundle_dir=bundle.save(root / "bundle"),
            loader=LOADER,
        )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PATH="/usr/bin:/bin", PYTHONPATH=str(TESTS))
    log = (root / "server.log").open("wb")
    cli = Path(sys.executable).parent / "cxpredict"
    process = subprocess.Popen(
        [str(cli), "serve", "--config", str(config_path), "--task", "churn", "--port", str(port)],
        env=env,
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            serving.wait_until_ready(process, url, timeout=80)
        except RuntimeError as exc:
            log.flush()
            pytest.fail(f"{exc}:\n{(root / 'server.log').read_text(errors='replace')}")
        yield url, process, bundle
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        log.close()
        output = (root / "server.log").read_text(errors="replace")
        assert process.returncode is not None, output


def split(columns: list[str], rows: list[list]) -> str:
    return json.dumps({"dataframe_split": {"columns": columns, "data": rows}})


def with_params(**params: str) -> str:
    """One valid row with the request parameters ``params``."""
    rows = {"columns": FEATURES, "data": [[1.0, 2.0, 3.0]]}
    return json.dumps({"dataframe_split": rows, "params": params})


def assert_clean(body: str) -> None:
    assert "Traceback" not in body and "stack_trace" not in body, body


@pytest.mark.slow
def test_the_server_scores_valid_rows(server) -> None:
    url, _, bundle = server
    rows = [["c-1", 3.0, 1.0, 10.0], ["c-2", -1.0, None, 0.0]]
    status, body = post(url, split(["customer_id", *FEATURES], rows))
    assert status == 200, body
    predictions = json.loads(body)["predictions"]
    assert [p["customer_id"] for p in predictions] == ["c-1", "c-2"]
    X = pd.DataFrame([r[1:] for r in rows], columns=FEATURES, dtype=float)
    expected = bundle.predict(X)["probability"].to_numpy()
    np.testing.assert_allclose([p["probability"] for p in predictions], expected)
    records = json.dumps({"dataframe_records": [dict(zip(FEATURES, [1.0, 2.0, 3.0], strict=True))]})
    status, body = post(url, records)
    assert status == 200 and len(json.loads(body)["predictions"]) == 1
    instances = json.dumps({"instances": [dict(zip(FEATURES, [1.0, None, 3.0], strict=True))]})
    status, body = post(url, instances)
    assert status == 200 and len(json.loads(body)["predictions"]) == 1, body
    record = {"customer_id": "c-3", **dict(zip(FEATURES, [1, 2, 3], strict=True))}
    inputs = json.dumps({"inputs": [record]})
    status, body = post(url, inputs)
    assert status == 200 and json.loads(body)["predictions"][0]["customer_id"] == "c-3", body


@pytest.mark.slow
@pytest.mark.parametrize(
    ("payload", "named"),
    [
        pytest.param(split(FEATURES, []), "empty payload", id="no rows"),
        pytest.param("{}", "dataframe_split", id="empty object"),
        pytest.param("", "valid JSON", id="empty body"),
        pytest.param("not json", "valid JSON", id="not JSON"),
        pytest.param(split(FEATURES[:2], [[1.0, 2.0]]), "spend_lifetime", id="missing column"),
        pytest.param(split(FEATURES, [[1.0, 2.0, "many"]]), "spend_lifetime", id="text"),
        pytest.param(split(FEATURES, [[1.0, [2], 3.0]]), "orders_lifetime", id="list"),
        pytest.param(
            split([*FEATURES, FEATURES[0]], [[1.0, 2.0, 3.0, 1.0]]),
            "appear more than once",
            id="repeated column",
        ),
        pytest.param(
            with_params(catalogue_version="features-1-other"),
            "features-1-other",
            id="other catalogue",
        ),
        pytest.param(
            with_params(catalog_version="features-1-other"),
            "unknown parameter(s) 'catalog_version'",
            id="misspelt parameter",
        ),
        pytest.param(
            json.dumps({"dataframe_records": [{"customer_id": "c-1"}]}),
            "orders_lifetime",
            id="record of an id only",
        ),
        pytest.param(
            json.dumps({"instances": [[1.0, 2.0, 3.0]]}), "no column names", id="rows unnamed"
        ),
    ],
)
def test_bad_requests_get_400_naming_the_problem_and_no_trace(
    server, payload: str, named: str
) -> None:
    url, _, _ = server
    status, body = post(url, payload)
    assert status == 400, body
    assert named in body
    assert_clean(body)


CSV_HEADER = "customer_id," + ",".join(FEATURES)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("payload", "content_type", "named"),
    [
        pytest.param(f"{CSV_HEADER}\nc-1,1,2,many\n", "text/csv", "spend_lifetime", id="csv text"),
        pytest.param(f"{CSV_HEADER}\n", "text/csv", "empty payload", id="csv no rows"),
        pytest.param("", "text/csv", "empty payload", id="csv empty"),
        pytest.param(
            f"{CSV_HEADER},email\nc-1,1,2,3,a@b.c\n", "text/csv", "'email'", id="csv extra column"
        ),
        pytest.param(
            split([*FEATURES, "email"], [[1.0, 2.0, 3.0, "a@b.c"]]),
            "application/json",
            "'email'",
            id="json extra column",
        ),
        pytest.param("PAR1 garbage", "application/vnd.apache.parquet", "Parquet", id="parquet"),
        pytest.param(
            json.dumps({"inputs": {**{f: [1.0] for f in FEATURES}, "email": ["a@b.c"]}}),
            "application/json",
            "'email'",
            id="inputs extra column",
        ),
    ],
)
def test_csv_parquet_and_extra_columns_get_400_naming_the_problem_and_no_trace(
    server, payload: str, content_type: str, named: str
) -> None:
    url, _, _ = server
    status, body = post(url, payload, content_type)
    assert status == 400, body
    assert named in body
    assert_clean(body)


@pytest.mark.slow
def test_the_server_scores_csv(server) -> None:
    url, _, bundle = server
    status, body = post(url, f"{CSV_HEADER}\n007,3,1,10\n", "text/csv")
    assert status == 200, body
    (prediction,) = json.loads(body)["predictions"]
    assert prediction["customer_id"] == "007"
    X = pd.DataFrame([[3.0, 1.0, 10.0]], columns=FEATURES)
    assert prediction["probability"] == pytest.approx(bundle.predict(X)["probability"].iloc[0])


@pytest.mark.slow
def test_the_server_scores_parquet_of_any_number_type_with_ids_in_the_index(
    server, tmp_path: Path
) -> None:
    url, _, bundle = server
    sent = pd.DataFrame(
        {
            FEATURES[0]: pd.array([3, None], dtype="Int64"),
            FEATURES[1]: [True, False],
            FEATURES[2]: ["10", "0.5"],
        },
        index=pd.Index(["c-1", "c-2"], name="customer_id"),
    )
    sent.to_parquet(tmp_path / "rows.parquet")
    status, body = post(url, (tmp_path / "rows.parquet").read_bytes(), serving.PARQUET)
    assert status == 200, body
    predictions = json.loads(body)["predictions"]
    assert [p["customer_id"] for p in predictions] == ["c-1", "c-2"]
    X = pd.DataFrame({FEATURES[0]: [3.0, np.nan], FEATURES[1]: [1.0, 0.0], FEATURES[2]: [10, 0.5]})
    np.testing.assert_allclose(
        [p["probability"] for p in predictions], bundle.predict(X)["probability"]
    )


@pytest.mark.slow
def test_the_server_stops_by_its_process_id(server) -> None:
    url, process, _ = server
    assert process.poll() is None
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=20)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/ping", timeout=2)
