"""The project config: typed, frozen, strict about unknown keys, paths relative to the file."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pydantic
import pytest

from cxpredict.config import ChurnTask, FeaturesConfig, PreferenceTask, load_config, parse_config
from cxpredict.errors import ConfigError

MINIMAL = "project: demo\ndata:\n  orders: {path: data/orders.csv}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cxpredict.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_relative_paths_resolve_against_the_config_files_folder(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.data.orders.path == (tmp_path / "data" / "orders.csv").resolve()
    assert config.root == tmp_path.resolve()


def test_the_duckdb_spill_folder_resolves_against_the_config_files_folder(tmp_path: Path) -> None:
    text = MINIMAL + "features: {duckdb_temp_directory: spill/duckdb}\n"
    config = load_config(write(tmp_path, text))
    assert config.features.duckdb_temp_directory == (tmp_path / "spill" / "duckdb").resolve()
    assert load_config(write(tmp_path, MINIMAL)).features.duckdb_temp_directory is None


def test_the_vocabulary_cap_is_ten_values_unless_set_and_at_least_one(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL)).features.vocabulary_max_values == 10
    capped = load_config(write(tmp_path, MINIMAL + "features: {vocabulary_max_values: 3}\n"))
    assert capped.features.vocabulary_max_values == 3
    with pytest.raises(ConfigError, match=r"features.vocabulary_max_values"):
        load_config(write(tmp_path, MINIMAL + "features: {vocabulary_max_values: 0}\n"))


def test_an_unknown_key_suggests_the_closest_valid_key(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"traning: unknown key 'traning'; did you mean 'training'"
    ):
        load_config(write(tmp_path, MINIMAL + "traning: {}\n"))


def test_an_unknown_task_key_suggests_the_key_of_that_task_kind(tmp_path: Path) -> None:
    text = MINIMAL + "tasks:\n  churn: {kind: churn, horizon_days: 90, active_dayz: 10}\n"
    with pytest.raises(
        ConfigError, match=r"tasks.churn.active_dayz: unknown key .*did you mean 'active_days'"
    ):
        load_config(write(tmp_path, text))


def test_a_misspelt_task_kind_suggests_the_closest_kind(tmp_path: Path) -> None:
    text = MINIMAL + "tasks:\n  gone: {kind: chrun, horizon_days: 90}\n"
    with pytest.raises(
        ConfigError, match=r"tasks.gone: kind 'chrun' is not a task kind; did you mean 'churn'"
    ):
        load_config(write(tmp_path, text))


def test_a_preference_must_rank_a_text_column_the_table_has(tmp_path: Path) -> None:
    text = MINIMAL + "tasks:\n  shop: {kind: preference, attribute: store, horizon_days: 90}\n"
    with pytest.raises(
        ConfigError, match=r"tasks.shop: attribute 'store' is not a column of orders .*category"
    ):
        load_config(write(tmp_path, text))
    on_interactions = "tasks:\n  k: {kind: preference, table: interactions, horizon_days: 9}\n"
    with pytest.raises(
        ConfigError,
        match=r"'category' is not a column of interactions .*: a preference ranks channel or "
        r"kind of interactions \(or, with table: orders, category or channel\)$",
    ):
        load_config(write(tmp_path, MINIMAL + on_interactions))
    kinds = (
        "tasks:\n  k: {kind: preference, table: interactions, attribute: kind, horizon_days: 9}\n"
    )
    assert load_config(write(tmp_path, MINIMAL + kinds)).tasks["k"].attribute == "kind"


def test_the_preference_attributes_are_the_text_columns_of_the_contract() -> None:
    from cxpredict.config import PREFERENCE_ATTRIBUTES
    from cxpredict.schemas import COLUMNS, NUMERIC_COLUMNS, TIMESTAMP_COLUMNS

    for table, attributes in PREFERENCE_ATTRIBUTES.items():
        required, optional = COLUMNS[table]
        numbers = {*NUMERIC_COLUMNS.get(table, ()), *TIMESTAMP_COLUMNS.get(table, ())}
        text = [c for c in (*required, *optional) if c not in numbers]
        assert set(text) - {"customer_id", "order_id"} == set(attributes)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        "project: demo\ndata:\n  orders: {path: a.csv}\n  interactons: {path: b.csv}\nscorng: {}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert "did you mean 'interactions'" in str(info.value)
    assert "did you mean 'scoring'" in str(info.value)


def test_a_column_mapping_must_name_a_canonical_column(tmp_path: Path) -> None:
    text = "project: d\ndata:\n  orders: {path: a.csv, columns: {timestmp: Date}}\n"
    with pytest.raises(ConfigError, match=r"'timestmp' is not a canonical column.*'timestamp'"):
        load_config(write(tmp_path, text))


def test_tasks_are_typed_by_their_kind(tmp_path: Path) -> None:
    text = MINIMAL + (
        "tasks:\n"
        "  churn: {kind: churn, horizon_days: 90}\n"
        "  best_channel: {kind: preference, attribute: channel, table: interactions,"
        " horizon_days: 60}\n"
    )
    config = load_config(write(tmp_path, text))
    assert isinstance(config.task("churn"), ChurnTask)
    assert config.task("churn").active_days == 180
    assert isinstance(config.task("best_channel"), PreferenceTask)


def test_asking_for_an_unconfigured_task_lists_the_configured_ones(tmp_path: Path) -> None:
    text = MINIMAL + "tasks:\n  churn: {kind: churn, horizon_days: 90}\n"
    config = load_config(write(tmp_path, text))
    with pytest.raises(ConfigError, match=r"task 'chrun' is not configured; did you mean 'churn'"):
        config.task("chrun")


def test_a_missing_file_and_broken_yaml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found; pass --config"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "project: [unclosed\n"))
    with pytest.raises(ConfigError, match="a config is a mapping of settings .* got a int"):
        load_config(write(tmp_path, "42\n"))
    (tmp_path / "latin.yaml").write_bytes(b"project: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(tmp_path / "latin.yaml")


def test_an_unknown_timezone_is_refused(tmp_path: Path) -> None:
    text = "project: d\ndata:\n  orders: {path: a.csv, timezone: Mars/Olympus}\n"
    with pytest.raises(ConfigError, match="unknown timezone 'Mars/Olympus'"):
        load_config(write(tmp_path, text))


def test_tier_cuts_in_the_wrong_order_are_refused_when_the_config_is_loaded(
    tmp_path: Path,
) -> None:
    text = "project: d\ndata:\n  orders: {path: a.csv}\nscoring: {tier_cuts: [0.5, 0.8]}\n"
    with pytest.raises(ConfigError, match=r"scoring.tier_cuts: two percentile cut points, high"):
        load_config(write(tmp_path, text))


def test_table_reading_options_are_checked_when_the_config_is_loaded(tmp_path: Path) -> None:
    def orders(options: str) -> Path:
        return write(tmp_path, f"project: d\ndata:\n  orders: {{path: a.csv, {options}}}\n")

    with pytest.raises(ConfigError, match="'Q' is a bad directive"):
        load_config(orders("timestamp_format: '%Q-%m'"))
    with pytest.raises(ConfigError, match="unknown encoding 'klingon'"):
        load_config(orders("encoding: klingon"))
    with pytest.raises(ConfigError, match="must be one character"):
        load_config(orders("sep: ';;'"))
    with pytest.raises(ConfigError, match="only customer attributes can be listed as numeric"):
        load_config(orders("numeric: [age]"))
    # a tab typed as the two characters of its escape, as YAML's single quotes keep it
    assert load_config(orders("sep: '\\t'")).data.orders.sep == "\t"


def test_the_config_is_frozen(tmp_path: Path) -> None:
    config = parse_config({"project": "d", "data": {"orders": {"path": "a.csv"}}}, root=tmp_path)
    with pytest.raises(pydantic.ValidationError):
        config.project = "other"  # type: ignore[misc]


def test_the_bundled_sample_config_is_valid() -> None:
    config = load_config(Path(__file__).resolve().parents[1] / "data/sample/cxpredict.yaml")
    assert config.data.orders.path.is_file()
    assert {t.kind for t in config.tasks.values()} == {"churn", "repurchase", "preference", "value"}


@pytest.mark.parametrize("size", ["lots", "4", "GB", "4Gi"])
def test_a_duckdb_memory_limit_must_be_a_size_duckdb_reads(size: str) -> None:
    with pytest.raises(ValueError, match="is not a size; give a number and a unit"):
        FeaturesConfig(duckdb_memory_limit=size)
    for given in ("1.5 GiB", "4G", "500 megabytes", "80%", "-1"):
        assert FeaturesConfig(duckdb_memory_limit=given).duckdb_memory_limit == given
        duckdb.connect(config={"memory_limit": given}).close()
