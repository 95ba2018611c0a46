"""Extensions: features added in SQL or pandas are point-in-time like the built-in ones."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CUTOFF

from cxpredict.config import FeaturesConfig, PythonFeatureConfig, SqlFeatureConfig, load_config
from cxpredict.errors import ConfigError, ExtensionError
from cxpredict.features import (
    PythonFeature,
    SqlFeature,
    Vocabulary,
    build_features,
    build_training_features,
    feature_catalogue,
)
from cxpredict.schemas import Tables

STORE_SPEND = SqlFeature(
    "store_spend_30d",
    "orders",
    "sum(amount)",
    "Money spent in stores in the last 30 days.",
    where="channel = 'store'",
    window_days=30,
)
LATE_ANSWERS = SqlFeature(
    "late_answers",
    "interactions",
    "count(*) FILTER (WHERE responded_at IS NULL OR responded_at > timestamp + INTERVAL 12 HOUR)",
    "Messages answered after 12 hours, or not at all.",
    where="kind IN ('message', 'complaint')",
)
LATEST_ORDER_AGE = SqlFeature(
    "hours_since_latest_line",
    "orders",
    "date_diff('hour', max(timestamp), max(cutoff))",
    "Hours since the latest order line.",
)


def orders_per_weekday(tables: Tables, cutoff: pd.Timestamp) -> pd.DataFrame:
    """Orders on Saturdays and Sundays, per customer (a pandas extension)."""
    orders = tables.orders
    weekend = orders["timestamp"].dt.day_of_week >= 5
    counts = orders.assign(weekend=weekend).groupby("customer_id")["weekend"].sum()
    return counts.astype("float64").to_frame("weekend_order_lines")


def test_a_sql_feature_is_an_aggregate_over_rows_before_the_cutoff(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    got = build_features(
        tiny,
        CUTOFF,
        vocabulary=tiny_vocabulary,
        extensions=[STORE_SPEND, LATE_ANSWERS, LATEST_ORDER_AGE],
    )
    want = pd.DataFrame(
        {
            # c1's store order of 80 on 2024-02-10; nobody else bought in a store.
            "store_spend_30d": [80.0, float("nan"), float("nan")],
            # c1's complaint is answered only at the cutoff: not yet; c2's message never.
            "late_answers": [1.0, 1.0, 0.0],
            # c1's order at the cutoff is not seen; c2's one a microsecond before is.
            "hours_since_latest_line": [231.0, 1.0, float("nan")],
        },
        index=pd.Index(["c1", "c2", "c3"], dtype="str", name="customer_id"),
    )
    pd.testing.assert_frame_equal(got[list(want.columns)], want)


def test_sql_features_come_from_the_settings_too(tiny: Tables, tiny_vocabulary: Vocabulary) -> None:
    settings = FeaturesConfig(
        sql=(
            SqlFeatureConfig(
                name="store_spend_30d",
                table="orders",
                expression="sum(amount)",
                description="Money spent in stores in the last 30 days.",
                where="channel = 'store'",
                window_days=30,
            ),
        )
    )
    from_settings = build_features(tiny, CUTOFF, settings=settings, vocabulary=tiny_vocabulary)
    passed = build_features(tiny, CUTOFF, vocabulary=tiny_vocabulary, extensions=[STORE_SPEND])
    pd.testing.assert_frame_equal(from_settings, passed)
    catalogue = feature_catalogue(tiny, settings=settings, vocabulary=tiny_vocabulary)
    row = catalogue.set_index("name").loc["store_spend_30d"]
    assert row["family"] == "extensions"
    assert row["description"] == "Money spent in stores in the last 30 days."


def test_sql_features_are_the_same_alone_and_among_many_cutoffs(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    cutoffs = [pd.Timestamp("2024-02-11", tz="UTC"), CUTOFF]
    extensions = [STORE_SPEND, LATE_ANSWERS, LATEST_ORDER_AGE]
    many = build_training_features(tiny, cutoffs, vocabulary=tiny_vocabulary, extensions=extensions)
    for cutoff in cutoffs:
        alone = build_features(tiny, cutoff, vocabulary=tiny_vocabulary, extensions=extensions)
        pd.testing.assert_frame_equal(many.xs(cutoff, level="cutoff"), alone)


@pytest.mark.parametrize(
    ("table", "expression"),
    [("orders", "amount"), ("interactions", "count(*) + rating")],
)
def test_a_sql_feature_that_is_not_an_aggregate_of_its_columns_is_refused(
    tiny: Tables, tiny_vocabulary: Vocabulary, table: str, expression: str
) -> None:
    broken = SqlFeature("broken", table, expression, "Not an aggregate of the columns.")
    with pytest.raises(ValueError, match=f"'broken'.*not an aggregate over {table}"):
        build_features(tiny, CUTOFF, vocabulary=tiny_vocabulary, extensions=[broken])


def test_a_python_feature_sees_only_the_tables_before_the_cutoff(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    feature = PythonFeature(
        orders_per_weekday, "Order lines placed on a weekend.", ("weekend_order_lines",)
    )
    got = build_features(tiny, CUTOFF, vocabulary=tiny_vocabulary, extensions=[feature])
    # 2023-12-20 Wed, 2024-01-01 Mon, 2024-02-10 Sat (two lines), 2024-02-20 Tue for c1; the
    # order at the cutoff (a Friday) is not seen. c2 ordered on Thursday 2024-02-29.
    want = pd.Series(
        [2.0, 0.0, float("nan")],
        index=pd.Index(["c1", "c2", "c3"], dtype="str", name="customer_id"),
        name="weekend_order_lines",
    )
    pd.testing.assert_series_equal(got["weekend_order_lines"], want)
    catalogue = feature_catalogue(tiny, vocabulary=tiny_vocabulary, extensions=[feature])
    assert "weekend_order_lines" in set(catalogue["name"])


def test_python_features_come_from_the_settings_as_module_and_function(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    settings = FeaturesConfig(
        python=(PythonFeatureConfig(function="test_features_extensions:orders_per_weekday"),)
    )
    got = build_training_features(
        tiny, ["2024-02-11", CUTOFF], settings=settings, vocabulary=tiny_vocabulary
    )
    weekend = got["weekend_order_lines"]
    assert weekend.loc[("c1", pd.Timestamp("2024-02-11", tz="UTC"))] == 2.0
    assert weekend.loc[("c1", CUTOFF)] == 2.0


def test_a_python_feature_module_beside_the_config_file_is_found(
    tiny: Tables, tiny_vocabulary: Vocabulary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    module = f"beside_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "def lines(tables, cutoff):\n"
        "    counts = tables.orders.groupby('customer_id').size()\n"
        "    return counts.astype('float64').to_frame('order_line_count')\n",
        encoding="utf-8",
    )
    (tmp_path / "cxpredict.yaml").write_text(
        "project: t\ndata:\n  orders: {path: orders.csv}\nfeatures:\n  python:\n"
        f"    - {{function: '{module}:lines', columns: [order_line_count]}}\n",
        encoding="utf-8",
    )
    settings = load_config(tmp_path / "cxpredict.yaml").features
    got = build_features(tiny, CUTOFF, settings=settings, vocabulary=tiny_vocabulary)
    assert got.loc["c1", "order_line_count"] == 5.0  # the line at the cutoff is not seen
    broken = tmp_path / f"{module}_broken.py"
    broken.write_text("import not_installed_anywhere_xyz\n", encoding="utf-8")
    needs = settings.python[0].model_copy(update={"function": f"{module}_broken:lines"})
    with pytest.raises(ConfigError, match="imports 'not_installed_anywhere_xyz', which is not"):
        build_features(
            tiny,
            CUTOFF,
            settings=settings.model_copy(update={"python": (needs,)}),
            vocabulary=tiny_vocabulary,
        )
    missing = settings.python[0].model_copy(update={"function": f"{module}_gone:lines"})
    with pytest.raises(ConfigError, match=f"or in '{tmp_path.resolve()}'"):
        build_features(
            tiny,
            CUTOFF,
            settings=settings.model_copy(update={"python": (missing,)}),
            vocabulary=tiny_vocabulary,
        )


def test_a_python_feature_must_return_its_declared_columns(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    feature = PythonFeature(orders_per_weekday, "Weekend lines.", ("something_else",))
    with pytest.raises(ValueError, match="declares"):
        build_features(tiny, CUTOFF, vocabulary=tiny_vocabulary, extensions=[feature])


def test_a_sql_feature_name_must_be_snake_case() -> None:
    with pytest.raises(ValueError, match="'Store Spend' must be snake_case"):
        SqlFeature("Store Spend", "orders", "sum(amount)", "Spend.")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("orders", "count(*) / (SELECT count(*) FROM orders)"), "holds a subquery"),
        (("orders", "sum(amount) / (FROM orders SELECT count(*))"), "holds a subquery"),
        (("orders", "(PIVOT src_orders USING max(amount)) + 0 * count(*)"), "holds a subquery"),
        (("interactions", "max(len(ARRAY(TABLE interactions)))"), "holds a subquery"),
        (("orders", "count(*) FILTER (WHERE EXISTS (FROM orders))"), "holds a subquery"),
        (("customers", "count(*)"), "table must be 'orders' or 'interactions'"),
        # a window reads the other customers' and cutoffs' rows of the grouped query
        (("orders", "lead(count(*)) OVER (ORDER BY max(timestamp))"), "holds a window function"),
        (("orders", "sum(count(*)) OVER ()"), "holds a window function"),
        (("orders", "max(COLUMNS(*))"), r"holds \* or COLUMNS"),
        # the engine's own columns: the raw answer instant would tell an answer after the
        # cutoff from none, the cutoff's number differs alone and among many
        (("interactions", "count(responded_us)"), r"engine's own column\(s\) \['responded_us'\]"),
        (("orders", "max(j)"), r"engine's own column\(s\) \['j'\]"),
        (("orders", 'max(e.us) - max("C")'), r"engine's own column\(s\) \['C', 'us'\]"),
        (("orders", "   "), "the expression is empty"),
        # a lambda's own names are not columns, but a column of the engine's inside it is
        (("orders", "list_sum(list_filter(list(amount), lambda c: c > j))"), r"\['j'\]"),
    ],
)
def test_a_sql_feature_cannot_read_beyond_its_rows(arguments: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SqlFeature("x", *arguments, "X.")


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("amount > (TABLE src_orders LIMIT 1)", "holds a subquery"),
        # text closing the filter's parenthesis to add rows from outside the cutoff's
        (
            "false) GROUP BY customer_id, j UNION ALL BY NAME SELECT first(customer_id) AS "
            "customer_id, 0 AS j, max(amount) AS extension_x FROM orders WHERE (true",
            "is not one SQL expression",
        ),
        ("amount > 0) UNION (SELECT 1", "is not one SQL expression"),
        ("amount > 0) --", "holds a comment or a statement break"),
        # text closing the filter's parenthesis so that the window no longer applies
        ("true) OR (true", "is not one SQL expression"),
    ],
)
def test_a_row_filter_cannot_read_beyond_its_rows(where: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"the where .* {message}"):
        SqlFeature("x", "orders", "count(*)", "X.", where=where)


def test_a_lambda_may_name_its_parameters_as_it_likes() -> None:
    assert SqlFeature("x", "orders", "list_sum(list_filter(list(amount), lambda c: c > 20))", "X.")


def test_a_word_in_a_text_or_a_name_is_only_a_word() -> None:
    for where in ("channel = 'select from table'", "channel = 'SUBQUERY -- /*'"):
        assert SqlFeature("x", "orders", "count(*)", "X.", where=where)
    assert SqlFeature("x", "orders", 'sum("SUBQUERY")', "X.")
    with pytest.raises(ValueError, match="window_days must be a positive"):
        SqlFeature("x", "orders", "count(*)", "X.", window_days=0)
    # a keyword inside a text literal is text
    assert SqlFeature("x", "orders", "count(*)", "X.", where="channel = 'from select'")


@pytest.mark.parametrize("name", ["customer_id", "cutoff"])
def test_a_sql_feature_cannot_take_the_name_of_an_output_index(name: str) -> None:
    with pytest.raises(ExtensionError, match=f"'{name}': the name is the output's"):
        SqlFeature(name, "orders", "count(*)", "X.")


def test_an_extension_named_like_a_built_in_feature_is_refused(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    twin = SqlFeature("orders_lifetime", "orders", "count(*)", "Lines.")
    with pytest.raises(ExtensionError, match=r"defined twice: \['orders_lifetime'\]"):
        build_features(tiny, CUTOFF, vocabulary=tiny_vocabulary, extensions=[twin])


def test_a_broken_row_filter_names_its_feature(tiny: Tables, tiny_vocabulary: Vocabulary) -> None:
    broken = SqlFeature("store_lines", "orders", "count(*)", "Lines.", where="chanel = 'store'")
    with pytest.raises(ValueError, match="'store_lines': the row filter \"chanel = 'store'\""):
        build_features(tiny, CUTOFF, vocabulary=tiny_vocabulary, extensions=[broken])
    text = SqlFeature("channels", "orders", "string_agg(channel, ',')", "Channels.")
    with pytest.raises(ValueError, match="'channels'.*gives VARCHAR values, not numbers"):
        build_features(tiny, CUTOFF, vocabulary=tiny_vocabulary, extensions=[text])


@pytest.mark.parametrize(
    ("expression", "where", "message"),
    [
        ("list(amount)", None, "gives DOUBLE\\[\\] values, not numbers"),
        ("max(cutoff - timestamp)", None, "gives INTERVAL values, not numbers"),
        ("count(*)", "amount", "the row filter 'amount' is not a condition .*gives DOUBLE"),
        ("max(amount) / 0.0", None, "gives 2 infinite value\\(s\\); give a missing value"),
        ("count(*)", "'abc'", "the row filter \"'abc'\" is not a condition .*gives VARCHAR"),
    ],
)
def test_a_sql_feature_must_give_numbers_and_filter_on_conditions(
    tiny: Tables, tiny_vocabulary: Vocabulary, expression: str, where: str | None, message: str
) -> None:
    odd = SqlFeature("odd", "orders", expression, "Odd.", where=where)
    with pytest.raises(ExtensionError, match=f"'odd'.*{message}"):
        build_features(tiny, CUTOFF, vocabulary=tiny_vocabulary, extensions=[odd])


def test_a_sql_feature_failing_on_the_data_names_itself(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    # both run in one query: the error names the one whose expression failed
    fine = SqlFeature("spend", "orders", "sum(amount)", "X.")
    failing = SqlFeature("category_number", "orders", "sum(CAST(category AS INTEGER))", "X.")
    with pytest.raises(ExtensionError, match="^SqlFeature 'category_number'.*failed on the orders"):
        build_features(tiny, CUTOFF, vocabulary=tiny_vocabulary, extensions=[fine, failing])


def test_a_row_filter_holding_an_aggregate_is_refused_as_not_a_condition(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    summed = SqlFeature("big", "orders", "count(*)", "X.", where="sum(amount) > 0")
    with pytest.raises(ExtensionError, match="'big': the row filter .*not a condition.*aggregate"):
        build_features(tiny, CUTOFF, vocabulary=tiny_vocabulary, extensions=[summed])


def test_only_customers_without_rows_get_the_value_over_no_rows(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    # c1 has store lines, c2 has lines but none in a store, c3 has no lines at all
    stores = SqlFeature(
        "store_lines_or_none",
        "orders",
        "CASE WHEN count(*) = 0 THEN -1 ELSE max(CASE WHEN channel = 'store' THEN 1 END) END",
        "1 with a store line, missing without one, -1 without any line.",
    )
    got = build_features(tiny, CUTOFF, vocabulary=tiny_vocabulary, extensions=[stores])
    values = got["store_lines_or_none"]
    assert values["c1"] == 1.0
    assert np.isnan(values["c2"])
    assert values["c3"] == -1.0


def _by_position(tables: Tables, cutoff: pd.Timestamp) -> pd.DataFrame:
    return orders_per_weekday(tables, cutoff).reset_index(drop=True)


def _twice(tables: Tables, cutoff: pd.Timestamp) -> pd.DataFrame:
    once = orders_per_weekday(tables, cutoff)
    return pd.concat([once, once])


@pytest.mark.parametrize(
    ("function", "message"),
    [(_by_position, "an index of integer values"), (_twice, "not one row per customer")],
)
def test_a_python_feature_must_give_one_row_per_customer_id(
    tiny: Tables, tiny_vocabulary: Vocabulary, function: object, message: str
) -> None:
    feature = PythonFeature(function, "Weekend lines.")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        build_features(tiny, CUTOFF, vocabulary=tiny_vocabulary, extensions=[feature])


def test_columns_declared_in_the_settings_are_in_the_catalogue(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    settings = FeaturesConfig(
        python=(
            PythonFeatureConfig(
                function="test_features_extensions:orders_per_weekday",
                columns=("weekend_order_lines",),
            ),
        )
    )
    catalogue = feature_catalogue(tiny, settings=settings, vocabulary=tiny_vocabulary)
    assert "weekend_order_lines" in set(catalogue["name"])


def test_a_python_feature_works_on_naive_timestamps(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    naive = Tables(
        tiny.orders.assign(timestamp=tiny.orders["timestamp"].dt.tz_localize(None)),
        tiny.interactions,
        tiny.customers,
    )
    feature = PythonFeature(orders_per_weekday, "Weekend lines.", ("weekend_order_lines",))
    got = build_features(naive, CUTOFF, vocabulary=tiny_vocabulary, extensions=[feature])
    assert got.loc["c1", "weekend_order_lines"] == 2.0


def _weekend_again(tables: Tables, cutoff: pd.Timestamp) -> pd.DataFrame:
    return orders_per_weekday(tables, cutoff) * 2


def _named_customer_id(tables: Tables, cutoff: pd.Timestamp) -> pd.DataFrame:
    return orders_per_weekday(tables, cutoff).rename(columns=lambda _: "customer_id")


def _complex(tables: Tables, cutoff: pd.Timestamp) -> pd.DataFrame:
    return orders_per_weekday(tables, cutoff).astype("complex128")


def _infinite(tables: Tables, cutoff: pd.Timestamp) -> pd.DataFrame:
    return orders_per_weekday(tables, cutoff) / 0.0


def _failing(tables: Tables, cutoff: pd.Timestamp) -> pd.DataFrame:
    return tables.orders["colummn"].to_frame()


@pytest.mark.parametrize(
    ("functions", "message"),
    [
        (
            (orders_per_weekday, _weekend_again),
            r"_weekend_again returns column\(s\) \['weekend_order_lines'\] that the output has",
        ),
        ((_named_customer_id,), r"column\(s\) \['customer_id'\] that the output has"),
        ((_complex,), "'weekend_order_lines' has dtype complex128; features must be real numbers"),
        ((_failing,), "_failing failed at cutoff 2024-03-01 00:00:00\\+00:00 with KeyError"),
        ((_infinite,), r"_infinite \(column 'weekend_order_lines'\) gives 1 infinite value"),
    ],
)
def test_a_python_feature_that_cannot_be_a_column_names_itself(
    tiny: Tables, tiny_vocabulary: Vocabulary, functions: tuple, message: str
) -> None:
    features = [PythonFeature(f, "Weekend lines.") for f in functions]
    with pytest.raises(ExtensionError, match=message):
        build_features(tiny, CUTOFF, vocabulary=tiny_vocabulary, extensions=features)


def test_a_python_feature_may_be_indexed_by_categorical_ids(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    orders = tiny.orders.astype({"customer_id": "category"})
    tables = Tables(orders, tiny.interactions, tiny.customers)
    feature = PythonFeature(orders_per_weekday, "Weekend lines.")
    got = build_features(tables, CUTOFF, vocabulary=tiny_vocabulary, extensions=[feature])
    assert got["weekend_order_lines"].tolist()[:2] == [2.0, 0.0]


def test_a_python_feature_sees_whole_number_ids_as_the_features_hold_them(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    numbers = {c: k for k, c in enumerate(sorted(tiny.orders["customer_id"].unique()), 1)}
    orders = tiny.orders.assign(customer_id=tiny.orders["customer_id"].map(numbers))
    feature = PythonFeature(orders_per_weekday, "Weekend lines.")
    plain = build_features({"orders": tiny.orders}, CUTOFF, extensions=[feature])
    for ids in (orders, orders.astype({"customer_id": object})):
        got = build_features({"orders": ids}, CUTOFF, extensions=[feature])
        assert got.index.tolist() == [str(numbers[c]) for c in plain.index]
        assert got["weekend_order_lines"].tolist() == plain["weekend_order_lines"].tolist()


def _c2_only(tables: Tables, cutoff: pd.Timestamp) -> pd.DataFrame:
    index = pd.Index(["c2"], dtype="str", name="customer_id")
    return pd.DataFrame({"c2_flag": [1.0]}, index=index)


def test_a_python_feature_may_return_rows_of_customers_not_yet_known(
    tiny: Tables, tiny_vocabulary: Vocabulary
) -> None:
    # c2 orders first on 2024-02-29: at the early cutoff the function's one row is not a
    # customer yet, at the later one it is
    early = pd.Timestamp("2024-01-15", tz="UTC")
    feature = PythonFeature(_c2_only, "C2.")
    many = build_training_features(
        tiny, [early, CUTOFF], vocabulary=tiny_vocabulary, extensions=[feature]
    )
    assert many["c2_flag"].xs(early, level="cutoff").isna().all()
    assert many.loc[("c2", CUTOFF), "c2_flag"] == 1.0
    with pytest.raises(ExtensionError, match="returned 1 rows and none is a customer"):
        build_features(tiny, early, vocabulary=tiny_vocabulary, extensions=[feature])
