"""Batch scoring: drift, ranking, tiers, lifecycle, actions, locking and atomic writes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ADDED_FEATURE
from typer.testing import CliRunner

from cxpredict import serving
from cxpredict.cli import app
from cxpredict.config import ProjectConfig, parse_config
from cxpredict.errors import (
    ConfigError,
    DriftFailed,
    IneligibleTask,
    ModelNotFound,
    OutputLocked,
    TaskMismatch,
)
from cxpredict.features import build_features
from cxpredict.io import atomic_path, load_tables
from cxpredict.sample import generate_sample, write_sample
from cxpredict.schemas import Tables
from cxpredict.scoring import (
    CUSTOMER_COLUMNS,
    LIST_COLUMNS,
    LOCK_NAME,
    PREFERENCE_COLUMNS,
    LifecycleRules,
    OutputLock,
    Reference,
    ScoringRun,
    assign_tiers,
    bin_shares,
    check_drift,
    customer_table,
    drift_report,
    eligible,
    lifecycle_stages,
    psi,
    ranked,
    reference_from_values,
    run_scoring,
    suggest_actions,
    task_list,
    write_list,
)

AS_OF = pd.Timestamp("2025-06-01", tz="UTC")

# ------------------------------------------------------------------------------ drift


def test_psi_matches_a_hand_computed_example() -> None:
    # Training: half at or below 1, half above. Now: three quarters at or below 1.
    reference = Reference(edges=(1.0,), proportions=(0.5, 0.5))
    expected = 0.25 * math.log(0.75 / 0.5) + (-0.25) * math.log(0.25 / 0.5)
    assert psi(reference, np.array([0.0, 0.5, 1.0, 2.0])) == pytest.approx(expected)
    assert expected == pytest.approx(0.274653, abs=1e-6)


def test_psi_counts_missing_values_as_their_own_bin() -> None:
    reference = Reference(edges=(1.0,), proportions=(0.5, 0.5), missing=0.0)
    # Half the values are now missing: the missing bin goes from 0 (floored at 1e-4) to 0.5.
    values = np.array([0.0, 2.0, np.nan, np.nan])
    expected = 2 * (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert psi(reference, values) == pytest.approx(expected)


def test_bins_are_closed_on_the_right_with_infinities_at_the_ends_and_missing_apart() -> None:
    values = np.array([-np.inf, 1.0, 1.5, 2.0, 2.0, 7.0, np.inf, np.nan])
    shares, missing = bin_shares((1.0, 2.0), values)
    np.testing.assert_array_equal(shares * len(values), [2, 3, 2])
    assert missing == 1 / 8
    assert bin_shares((1.0,), np.array([]))[0].tolist() == [0.0, 0.0]


def test_psi_of_the_training_values_against_their_own_reference_is_zero() -> None:
    values = np.random.default_rng(0).gamma(2.0, 10.0, size=5000)
    assert psi(reference_from_values(values), values) == pytest.approx(0.0, abs=1e-12)


def test_a_discrete_variable_gets_one_bin_per_value_not_empty_duplicates() -> None:
    reference = reference_from_values(np.array([0.0] * 70 + [1.0] * 20 + [2.0] * 10))
    assert reference.edges == (0.0, 1.0)
    assert reference.proportions == pytest.approx((0.7, 0.2, 0.1))


def test_a_reference_survives_its_json_form() -> None:
    reference = reference_from_values(np.array([1.0, 2.0, np.nan, 4.0, 8.0]), n_bins=4)
    assert Reference.from_dict(reference.to_dict()) == reference


def test_a_reference_with_the_wrong_number_of_proportions_is_refused() -> None:
    with pytest.raises(ValueError, match="2 edges needs 3 proportions; got 2"):
        Reference(edges=(1.0, 2.0), proportions=(0.5, 0.5))


def test_a_shifted_feature_is_flagged_and_a_large_shift_fails_the_run() -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(0.0, 1.0, 20_000)
    references = {"a": reference_from_values(train), "b": reference_from_values(train)}
    current = {
        "a": rng.normal(0.0, 1.0, 20_000),  # same distribution
        "b": rng.normal(0.4, 1.0, 20_000),  # a moderate shift: PSI about 0.16
        "c": rng.normal(0.0, 1.0, 20_000),  # no reference stored
    }
    report = drift_report("churn", references, current, warn=0.1, fail=0.25)
    assert report.set_index("variable")["status"].to_dict() == {
        "a": "ok",
        "b": "warn",
        "c": "not checked",
    }
    check_drift(report, fail=0.25)  # warnings do not stop the run
    current["b"] = rng.normal(1.5, 1.0, 20_000)
    report = drift_report("churn", references, current, warn=0.1, fail=0.25)
    with pytest.raises(DriftFailed, match=r"churn/b \(\d+\.\d\d\).*drift.csv"):
        check_drift(report, fail=0.25)


def test_customer_age_features_warn_but_never_fail_the_run() -> None:
    train = np.arange(100.0)
    report = drift_report(
        "churn",
        {"tenure_days": reference_from_values(train), "orders_90d": reference_from_values(train)},
        {"tenure_days": train + 500, "orders_90d": train + 500},
        warn=0.1,
        fail=0.25,
    )
    assert report.set_index("variable")[["kind", "status"]].to_dict("index") == {
        "tenure_days": {"kind": "age", "status": "warn"},
        "orders_90d": {"kind": "feature", "status": "fail"},
    }


def drift_of(variable: str, trained: np.ndarray, scored: np.ndarray) -> pd.DataFrame:
    """The churn task's drift report for one variable (warn at 0.1, fail at 0.25)."""
    reference = {variable: reference_from_values(trained)}
    return drift_report("churn", reference, {variable: scored}, warn=0.1, fail=0.25)


def test_the_season_is_never_checked_for_drift() -> None:
    trained = np.full(100, 1.0)  # trained as of 1 January, scored on 1 June
    report = drift_of("cutoff_day_of_year", trained, trained + 151)
    assert report[["variable", "kind", "status"]].values.tolist() == [
        ["cutoff_day_of_year", "season", "not checked"]
    ]
    check_drift(report, fail=0.25)


def test_drift_from_a_stopped_feed_says_first_that_the_feed_stopped() -> None:
    trained = np.linspace(0, 60, 200)
    report = drift_of("days_since_last_order", trained, trained + 40)
    stale = ("the latest order or interaction is on 2025-12-30, 21 days before the as-of date",)
    with pytest.raises(DriftFailed, match=r"^The latest order .* 21 days before .*\. 1 variable"):
        check_drift(report, fail=0.25, stale=stale)


# ------------------------------------------------------------------------------ ranking


def test_ranks_break_ties_by_customer_id_and_tied_scores_share_a_percentile() -> None:
    scores = pd.DataFrame({"customer_id": ["c", "a", "b", "d"], "score": [0.5, 0.9, 0.5, 0.1]})
    out = ranked(scores)
    assert out["customer_id"].tolist() == ["a", "b", "c", "d"]
    assert out["rank"].tolist() == [1, 2, 3, 4]
    assert out["percentile"].tolist() == [1.0, 0.75, 0.75, 0.25]


def test_percentiles_are_shares_of_the_customers_with_a_score() -> None:
    scores = pd.DataFrame({"customer_id": ["a", "b", "c", "d"], "score": [3.0, np.nan, 1.0, 2.0]})
    out = ranked(scores)
    assert out["customer_id"].tolist() == ["a", "d", "c", "b"]
    np.testing.assert_allclose(out["percentile"], [1.0, 2 / 3, 1 / 3, np.nan], atol=1e-6)


def test_scores_equal_after_rounding_are_ties() -> None:
    scores = pd.DataFrame({"customer_id": ["b", "a"], "score": [0.3000000001, 0.3]})
    assert ranked(scores)["customer_id"].tolist() == ["a", "b"]


def test_tiers_cut_the_percentile_so_the_top_fifth_is_high() -> None:
    percentile = 1 - np.arange(10) / 10  # ranks 1..10 of 10
    tiers = assign_tiers(percentile, (0.8, 0.5))
    assert tiers.tolist() == ["high"] * 2 + ["medium"] * 3 + ["low"] * 5


def test_tier_cuts_in_the_wrong_order_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"scoring.tier_cuts .* got \[0.5, 0.8\]"):
        assign_tiers(np.array([0.3]), (0.5, 0.8))


def test_a_task_list_has_the_documented_columns_in_priority_order() -> None:
    scored = pd.DataFrame({"customer_id": ["x", "y"], "score": [0.2, 0.7]})
    reasons = pd.DataFrame({"reason_1": ["no order for 90 days"]}, index=["y"])
    out = task_list(
        scored,
        kind="churn",
        model_version="4",
        as_of=AS_OF,
        tier_cuts=(0.8, 0.5),
        reasons=reasons,
    )
    expected = pd.DataFrame(
        {
            "customer_id": ["y", "x"],
            "rank": [1, 2],
            "score": [0.7, 0.2],
            "percentile": [1.0, 0.5],
            "tier": ["high", "low"],
            "reason_1": ["no order for 90 days", ""],
            "reason_2": ["", ""],
            "reason_3": ["", ""],
            "model_version": ["4", "4"],
            "as_of": ["2025-06-01", "2025-06-01"],
        }
    )
    pd.testing.assert_frame_equal(out, expected, check_dtype=False)


def test_a_next_order_is_dated_on_the_day_its_median_falls() -> None:
    scored = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d"],
            "score": [4.0, 3.0, 2.0, 1.0],
            "expected_orders": [1.0, 1.0, 1.0, 0.1],
            "next_order_days": [2.3, 0.0001, 179.96, np.nan],
            "next_order_note": ["", "", "", "not expected within 180 days"],
        }
    )
    as_of = pd.Timestamp("2026-01-01", tz="UTC")
    out = task_list(scored, kind="value", model_version="1", as_of=as_of, tier_cuts=(0.8, 0.5))
    # the date is as_of plus the days as the list rounds them (179.96 days: 180.0, June 30)
    assert out["next_order_date"].tolist() == ["2026-01-03", "2026-01-01", "2026-06-30", ""]
    np.testing.assert_array_equal(out["next_order_days"], [2.3, 0.0, 180.0, np.nan])
    assert out["next_order_note"].tolist()[3] == "not expected within 180 days"


def test_a_preference_list_carries_the_top_three_values_with_probabilities() -> None:
    scored = pd.DataFrame(
        {
            "customer_id": ["x"],
            "score": [0.6],
            "pref_1": ["books"],
            "pref_1_probability": [0.6],
            "pref_2": ["toys"],
            "pref_2_probability": [0.3],
        }
    )
    out = task_list(scored, kind="preference", model_version="1", as_of=AS_OF, tier_cuts=(0.8, 0.5))
    assert out.columns[-6:].tolist() == [
        "pref_1",
        "pref_1_probability",
        "pref_2",
        "pref_2_probability",
        "pref_3",
        "pref_3_probability",
    ]
    assert out.loc[0, "pref_3"] == ""
    assert np.isnan(out.loc[0, "pref_3_probability"])


# ------------------------------------------------------------------------------ lifecycle


def test_lifecycle_stages_follow_each_customers_own_rhythm() -> None:
    features = pd.DataFrame(
        {
            "days_since_first_order": [20, 400, 400, 400, 400, np.nan, np.nan, 100],
            "days_since_last_order": [20, 40, 100, 200, 40, np.nan, np.nan, 100],
            "gap_mean_days": [np.nan, 30, 50, 50, 10, np.nan, np.nan, np.nan],
            "days_since_signup": [25, 500, 500, 500, 500, 10, 300, 300],
        },
        index=pd.Index(["new", "active", "risk", "lapsed", "floor", "fresh", "never", "once"]),
    )
    stages = lifecycle_stages(features, LifecycleRules())
    assert stages.to_dict() == {
        "new": "new",  # first order 20 days ago
        "active": "active",  # 40 days since last, usual gap 30: 1.33 gaps
        "risk": "at risk",  # 100 / 50 = 2 gaps
        "lapsed": "lapsed",  # 200 / 50 = 4 gaps
        "floor": "at risk",  # usual gap 10 raised to the 14-day floor: 40 / 14 = 2.9
        "fresh": "new",  # no order yet, signed up 10 days ago
        "never": "lapsed",  # no order, signed up 300 days ago
        # one purchase day: the median usual gap of the others (30, 50, 50, 10 -> 40) applies
        "once": "at risk",  # 100 / 40 = 2.5 gaps
    }


def test_suggested_action_is_the_first_rule_that_applies() -> None:
    customers = pd.DataFrame(
        {
            "lifecycle_stage": ["at risk", "at risk", "lapsed", "lapsed", "new", "active"],
            "value_tier": ["high", "high", "high", "low", "low", "high"],
            "open_issues": [2, 0, 0, 5, 0, 0],
            "preferred_category_1": ["books", "toys", None, "home", "beauty", "sports"],
            "best_channel": ["email", "app", "web", None, "email", "app"],
        }
    )
    out = suggest_actions(customers)
    assert out["action"].tolist() == [
        "care call",
        "retention offer",
        "win-back",
        "win-back",  # low value: complaints alone do not warrant a call
        "welcome",
        "loyalty",
    ]
    assert out.loc[0, "contact_channel"] == "phone"
    assert out.loc[2, "offer"] == "win-back offer in their usual categories"
    assert out.loc[3, "contact_channel"] == "email"


def test_customers_without_a_churn_reason_are_told_why_their_value_is_high() -> None:
    tasks = parse_config(
        {
            "project": "t",
            "data": {"orders": {"path": "o.csv"}},
            "tasks": {
                "churn": {"kind": "churn", "horizon_days": 90, "active_days": 180},
                "value": {"kind": "value", "horizon_days": 180},
            },
        },
        root=Path("."),
    ).tasks
    ids = ["a", "b", "c"]
    features = pd.DataFrame(
        {"days_since_last_order": [10.0, 20.0, 30.0], "days_since_first_order": [300.0] * 3},
        index=pd.Index(ids, name="customer_id"),
    )
    scored = pd.DataFrame({"customer_id": ids, "score": [0.9, 0.2, 0.1]})
    why = pd.DataFrame({"reason_1": ["no order for 10 days"]}, index=pd.Index(["a"]))
    worth = pd.DataFrame({"reason_1": ["spent 900 so far", "spent 5 so far"]}, index=["a", "b"])
    options = {"model_version": "1", "as_of": AS_OF, "tier_cuts": (0.8, 0.5)}
    lists = {
        "churn": task_list(scored, kind="churn", reasons=why, **options),
        "value": task_list(
            scored.assign(score=[10.0, 900.0, 5.0]), kind="value", reasons=worth, **options
        ),
    }
    customers = customer_table(features, lists, tasks, as_of=AS_OF, tier_cuts=(0.8, 0.5))
    told = customers.set_index("customer_id")["reason_1"]
    assert told.to_dict() == {"a": "no order for 10 days", "b": "spent 5 so far", "c": ""}


def test_a_customer_who_never_ordered_shows_no_usual_gap() -> None:
    tasks = parse_config(
        {"project": "t", "data": {"orders": {"path": "o.csv"}}, "tasks": {}}, root=Path(".")
    ).tasks
    features = pd.DataFrame(
        {
            "days_since_last_order": [10.0, np.nan],
            "gap_mean_days": [20.0, np.nan],
            "days_since_first_order": [300.0, np.nan],
            "days_since_signup": [400.0, 30.0],
        },
        index=pd.Index(["a", "b"], name="customer_id"),
    )
    customers = customer_table(features, {}, tasks, as_of=AS_OF, tier_cuts=(0.8, 0.5))
    gaps = customers.set_index("customer_id")["usual_gap_days"]
    assert gaps["a"] == 20.0 and np.isnan(gaps["b"])


def test_a_message_stays_an_open_issue_until_it_is_answered() -> None:
    from cxpredict.scoring import _open_issues

    features = pd.DataFrame(
        {
            "complaints_90d": [0.0, 1.0, 0.0],
            "unanswered_messages_90d": [0.0, 0.0, 1.0],
            "unanswered_messages_lifetime": [1.0, 0.0, 1.0],  # the first waits since long ago
        }
    )
    np.testing.assert_array_equal(_open_issues(features), [1.0, 1.0, 1.0])
    recent_only = features.drop(columns="unanswered_messages_lifetime")
    np.testing.assert_array_equal(_open_issues(recent_only), [0.0, 1.0, 1.0])


def actions_of(stages: list[str], tiers: list[str], **columns: list) -> list[str]:
    """The suggested actions of customers in home and on the app, without open issues."""
    n = len(stages)
    customers = pd.DataFrame(
        {
            "lifecycle_stage": stages,
            "value_tier": tiers,
            "open_issues": [0] * n,
            "preferred_category_1": ["home"] * n,
            "best_channel": ["app"] * n,
            **columns,
        }
    )
    return suggest_actions(customers)["action"].tolist()


def test_a_lapsed_customer_the_model_expects_back_gets_a_reminder_not_a_discount() -> None:
    stages, tiers = ["lapsed"] * 3, ["low"] * 3
    back = actions_of(stages, tiers, repurchase_probability=[0.8, 0.2, np.nan])
    assert back == ["reminder", "win-back", "win-back"]


def test_a_new_customer_who_ordered_again_gets_no_second_order_incentive() -> None:
    again = actions_of(["new"] * 3, ["low", "low", "high"], repeat_buyer=[False, True, True])
    assert again == ["welcome", "nurture", "loyalty"]


def test_a_customer_who_never_ordered_is_offered_a_first_order_not_a_win_back() -> None:
    customers = pd.DataFrame(
        {
            "lifecycle_stage": ["lapsed", "new", "lapsed"],
            "value_tier": ["low", "low", "low"],
            "open_issues": [0, 0, 0],
            "preferred_category_1": [None, None, "home"],
            "best_channel": ["app", None, "web"],
            "ever_ordered": [False, False, True],
        }
    )
    out = suggest_actions(customers)
    assert out["action"].tolist() == ["first order", "first order", "win-back"]
    assert out.loc[0, "offer"] == "first-order incentive on bestsellers"
    assert out["contact_channel"].tolist() == ["app", "email", "web"]


# ------------------------------------------------------------------------------ locking


def test_a_second_run_on_a_locked_folder_is_refused_naming_the_holder_pid(
    tmp_path: Path,
) -> None:
    with OutputLock(tmp_path), pytest.raises(OutputLocked, match=f"pid={os.getpid()}"):
        OutputLock(tmp_path).__enter__()


def test_a_lock_held_by_another_live_process_is_refused(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from cxpredict.scoring import OutputLock
                with OutputLock({str(tmp_path)!r}):
                    print("locked", flush=True)
                    time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            OutputLocked, match=f"locked by another scoring run \\(pid={holder.pid}"
        ):
            OutputLock(tmp_path).__enter__()
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(tmp_path) as lock:  # released by the kernel when the holder died
        assert lock.took_over == holder.pid


def test_a_lock_file_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(f"pid={dead.pid} host=elsewhere as_of=2025-01-01\n")
    with OutputLock(tmp_path) as lock:
        assert lock.took_over == dead.pid
        assert (tmp_path / LOCK_NAME).read_text().startswith(f"pid={os.getpid()} ")


# ------------------------------------------------------------------------------ atomic writes


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"customer_id": [f"C{i:07d}" for i in range(n)], "score": 1 / (1 + np.arange(n))}
    )


def test_the_same_list_is_written_to_the_same_bytes(tmp_path: Path) -> None:
    for suffix in ("csv", "parquet"):
        a = write_list(_frame(100), tmp_path / f"a.{suffix}")
        b = write_list(_frame(100), tmp_path / f"b.{suffix}")
        assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a.csv").read_text().splitlines()[1] == "C0000000,1.000000"


def test_a_failure_while_writing_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    target = write_list(_frame(3), tmp_path / "churn.csv")
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as temporary:
        temporary.write_text("customer_id,score\nhalf a li")
        raise RuntimeError("disk full")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["churn.csv"]


def test_a_run_killed_while_writing_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    target = write_list(_frame(3), tmp_path / "churn.csv")
    before = target.read_bytes()
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time
                from pathlib import Path
                from cxpredict.io import atomic_path
                with atomic_path(Path({str(target)!r})) as temporary:
                    with open(temporary, "w") as handle:
                        handle.write("customer_id,score\\n")
                        handle.flush()
                        print("writing", flush=True)
                        time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL
    time.sleep(0.05)
    assert target.read_bytes() == before


# ------------------------------------------------------------------------------ the job
# Stand-in champions score with fixed formulas, so that these tests exercise the job itself
# (files, locking, drift, idempotence) in seconds; the trained models are tested end to end
# in the slow test below.

STANDIN_FEATURES = (
    "days_since_last_order",
    "orders_lifetime",
    "spend_lifetime",
    "complaints_90d",
)


@dataclass
class StandInBundle:
    kind: str
    values: tuple[str, ...] = ()
    reference: dict[str, Any] | None = None
    features: tuple[str, ...] = STANDIN_FEATURES
    vocabulary: None = None

    def _churn(self, X: pd.DataFrame) -> np.ndarray:
        z = (X["days_since_last_order"] - 90) / 40 - 0.2 * np.sqrt(X["orders_lifetime"])
        return 1 / (1 + np.exp(-z.to_numpy(dtype=float)))

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        if self.kind in ("churn", "repurchase"):
            p = self._churn(X) if self.kind == "churn" else 1 - self._churn(X)
            return pd.DataFrame({"probability": p}, index=X.index)
        if self.kind == "value":
            spend = X["spend_lifetime"].to_numpy(dtype=float) / 4 * (1 - self._churn(X))
            return pd.DataFrame({"spend": spend, "orders": spend / 50}, index=X.index)
        digits = np.array([int(c[-1]) for c in X.index])  # a fixed, id-driven preference
        matrix = np.stack([(digits + 3 * k) % 10 + 1.0 for k in range(len(self.values))], 1)
        return pd.DataFrame(
            matrix / matrix.sum(1, keepdims=True), index=X.index, columns=self.values
        )

    def next_order(self, X: pd.DataFrame) -> pd.DataFrame:
        days = X["days_since_last_order"].to_numpy(dtype=float) / 2
        soon = days <= 30
        return pd.DataFrame(
            {
                "next_order_days": np.where(soon, days, np.nan),
                "next_order_note": np.where(soon, "", "not expected within 30 days"),
            },
            index=X.index,
        )

    def explain(self, X: pd.DataFrame, *, catalogue: pd.DataFrame, top: int) -> pd.DataFrame:
        reason = catalogue.set_index("name")["reason"]
        return pd.DataFrame(
            {
                "reason_1": [reason["days_since_last_order"].format(**r) for _, r in X.iterrows()],
                "reason_2": [reason["orders_lifetime"].format(**r) for _, r in X.iterrows()],
            },
            index=X.index,
        )


@dataclass
class StandInChampion:
    name: str
    version: str
    bundle: StandInBundle
    features: tuple[str, ...] = STANDIN_FEATURES

    def check_features(self, features: pd.DataFrame, *, catalogue: pd.DataFrame) -> None:
        serving.check_columns(features, self.features, model=self.name)


def standin_loader(reference: pd.DataFrame | None = None) -> Any:
    def load(config: ProjectConfig, task: str, *, tracking_uri: str | None = None) -> Any:
        spec = config.task(task)
        values = ("books", "home", "toys") if spec.kind == "preference" else ()
        if spec.kind == "preference" and spec.attribute == "channel":
            values = ("app", "email", "web")
        stored = None
        if reference is not None:  # like training: the distribution over the task's population
            population = reference[eligible(reference, spec)]
            stored = {
                "features": {
                    f: reference_from_values(population[f].to_numpy(dtype=float)).to_dict()
                    for f in STANDIN_FEATURES
                }
            }
        return StandInChampion(f"shop-{task}", "3", StandInBundle(spec.kind, values, stored))

    return load


SHOP_AS_OF = pd.Timestamp("2025-10-01", tz="UTC")
RUN_AT = pd.Timestamp("2025-10-02 06:00", tz="UTC")
#: The five tasks of the bundled sample project, one of every kind.
SHOP_TASKS = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "data" / "sample" / "cxpredict.yaml").read_text(
        encoding="utf-8"
    )
)["tasks"]


def shop_project(folder: Path, *, spend_factor: float = 1.0) -> ProjectConfig:
    """A 400-customer synthetic shop written as CSV files, with its config."""
    tables = generate_sample(400, seed=5, start="2024-01-01", days=640)
    orders = tables.orders.assign(amount=tables.orders["amount"] * spend_factor)
    write_sample(Tables(orders, tables.interactions, tables.customers), folder)
    raw = {
        "project": "shop",
        "data": {
            "orders": {"path": "orders.csv"},
            "interactions": {"path": "interactions.csv"},
            "customers": {"path": "customers.csv"},
        },
        "tasks": SHOP_TASKS,
    }
    return parse_config(raw, root=folder)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> ProjectConfig:
    return shop_project(tmp_path_factory.mktemp("shop"))


def score_shop(config: ProjectConfig, out: Path, **options: Any) -> ScoringRun:
    return run_scoring(
        config,
        as_of=SHOP_AS_OF,
        out_dir=out,
        run_at=RUN_AT,
        load_model=options.pop("load_model", standin_loader()),
        log_run=False,
        **options,
    )


def test_a_rerun_with_the_same_inputs_writes_byte_identical_files(
    shop: ProjectConfig, tmp_path: Path
) -> None:
    first = score_shop(shop, tmp_path / "a")
    second = score_shop(shop, tmp_path / "b")
    names = sorted(p.name for p in first.files)
    assert names == sorted(p.name for p in second.files)
    assert {"churn.csv", "customers.parquet", "report.html", "manifest.json"} <= set(names)
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    third = score_shop(shop, tmp_path / "a")  # into the same folder: the same bytes again
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (
        tmp_path / "b" / "manifest.json"
    ).read_bytes()
    assert third.versions == {name: "3" for name in SHOP_TASKS}
    text = (tmp_path / "a" / "churn.csv").read_text() + (tmp_path / "a" / "report.html").read_text()
    assert "2025-10-02" not in text  # the moment of the run is nowhere in the outputs


def test_reasons_for_all_explains_every_customer_and_top_only_the_top_share(
    shop: ProjectConfig, tmp_path: Path
) -> None:
    assert shop.scoring.reasons_for == "top"  # the default
    score_shop(shop, tmp_path / "all", reasons_for="all")
    churn = pd.read_csv(tmp_path / "all" / "churn.csv", dtype={"customer_id": str})
    assert churn["reason_1"].notna().all()
    assert churn["reason_1"].str.startswith("no order for").all()


def test_the_lists_have_the_documented_columns_and_every_eligible_customer(
    shop: ProjectConfig, tmp_path: Path
) -> None:
    run = score_shop(shop, tmp_path)
    churn = pd.read_csv(tmp_path / "churn.csv", dtype={"customer_id": str})
    assert churn.columns.tolist() == list(LIST_COLUMNS)
    assert churn["rank"].tolist() == list(range(1, len(churn) + 1))
    assert churn["score"].is_monotonic_decreasing
    explained = math.ceil(len(churn) * shop.scoring.reasons_top_fraction)
    assert churn["reason_1"].notna().tolist() == [True] * explained + [False] * (
        len(churn) - explained
    )
    assert churn["reason_1"].head(explained).str.startswith("no order for").all()
    parquet = pd.read_parquet(tmp_path / "churn.parquet")
    assert parquet["customer_id"].tolist() == churn["customer_id"].tolist()
    category = pd.read_csv(tmp_path / "next_category.csv")
    assert category.columns[-6:].tolist() == list(PREFERENCE_COLUMNS)
    value = pd.read_csv(tmp_path / "value.csv", dtype={"customer_id": str}, keep_default_na=False)
    dated = ["expected_orders", "next_order_date", "next_order_days", "next_order_note"]
    assert value.columns[-4:].tolist() == dated
    # the stand-in expects the next order in half the days since the last one, up to 30
    soon = value["next_order_date"] != ""
    assert soon.any() and (~soon).any()
    assert (value.loc[~soon, "next_order_note"] == "not expected within 30 days").all()
    assert (value.loc[soon, "next_order_note"] == "").all()
    days = pd.to_numeric(value.loc[soon, "next_order_days"])
    assert days.between(0, 30).all()
    customers = pd.read_csv(tmp_path / "customers.csv", dtype={"customer_id": str})
    assert customers.columns.tolist() == list(CUSTOMER_COLUMNS)
    assert customers["customer_id"].is_unique and len(customers) >= run.rows_out["repurchase"]
    at_risk = customers["churn_probability"] * customers["expected_value"]
    assert np.allclose(customers["value_at_risk"], at_risk, equal_nan=True, atol=1e-5)


def test_the_report_shows_the_top_customers_of_the_customer_list(
    shop: ProjectConfig, tmp_path: Path
) -> None:
    score_shop(shop, tmp_path)
    customers = pd.read_csv(tmp_path / "customers.csv", dtype={"customer_id": str})
    html = (tmp_path / "report.html").read_text()
    table = html[html.index('id="top-customers"') :].split("</table>")[0]
    for customer in customers["customer_id"].head(25):
        assert f">{customer}<" in table


def test_a_run_into_a_folder_another_run_holds_is_refused(
    shop: ProjectConfig, tmp_path: Path
) -> None:
    with OutputLock(tmp_path), pytest.raises(OutputLocked, match=f"pid={os.getpid()}"):
        score_shop(shop, tmp_path)
    assert not (tmp_path / "churn.csv").exists()


def test_a_shifted_dataset_raises_a_drift_warning(shop: ProjectConfig, tmp_path: Path) -> None:
    reference = build_features(
        load_tables(shop, run_at=RUN_AT, as_of=SHOP_AS_OF).tables, SHOP_AS_OF
    )
    same = score_shop(shop, tmp_path / "same", load_model=standin_loader(reference))
    assert set(same.drift.loc[same.drift["kind"] == "feature", "status"]) == {"ok"}
    assert not same.warnings
    # Every amount doubled: spend moves about one decile (PSI near 0.2), counts do not move.
    shifted = shop_project(tmp_path / "shifted", spend_factor=2.0)
    run = score_shop(shifted, tmp_path / "out", load_model=standin_loader(reference))
    flagged = run.drift[run.drift["status"].isin(["warn", "fail"])]
    assert set(flagged["variable"]) == {"spend_lifetime"}
    assert set(flagged["status"]) == {"warn"}
    assert any("spend_lifetime" in w for w in run.warnings)
    assert "spend_lifetime" in (tmp_path / "out" / "report.html").read_text()


def test_drift_beyond_the_fail_level_stops_the_run_and_keeps_the_previous_lists(
    shop: ProjectConfig, tmp_path: Path
) -> None:
    reference = build_features(
        load_tables(shop, run_at=RUN_AT, as_of=SHOP_AS_OF).tables, SHOP_AS_OF
    )
    score_shop(shop, tmp_path / "out")
    before = (tmp_path / "out" / "churn.csv").read_bytes()
    shifted = shop_project(tmp_path / "shifted", spend_factor=4.0)
    with pytest.raises(DriftFailed, match=r"spend_lifetime \(\d+\.\d\d\)"):
        score_shop(shifted, tmp_path / "out", load_model=standin_loader(reference))
    assert (tmp_path / "out" / "churn.csv").read_bytes() == before
    drift = pd.read_csv(tmp_path / "out" / "drift.csv")
    assert "fail" in set(drift["status"])


def test_a_run_stopped_by_drift_is_logged_as_failed_with_its_drift_report(
    shop: ProjectConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cxpredict.scoring as scoring

    reference = build_features(
        load_tables(shop, run_at=RUN_AT, as_of=SHOP_AS_OF).tables, SHOP_AS_OF
    )
    logged: list[dict] = []
    monkeypatch.setattr(scoring, "_log_run", lambda config, **kw: logged.append(kw) or "run")
    shifted = shop_project(tmp_path / "shifted", spend_factor=4.0)
    with pytest.raises(DriftFailed):
        run_scoring(
            shifted,
            as_of=SHOP_AS_OF,
            out_dir=tmp_path / "out",
            run_at=RUN_AT,
            load_model=standin_loader(reference),
            log_run=True,
        )
    (run,) = logged
    assert run["status"] == "FAILED"
    assert [f.name for f in run["files"]] == ["drift.csv"]
    assert "fail" in set(run["drift"]["status"])


def test_a_champion_trained_for_another_task_definition_is_refused_before_reading(
    shop: ProjectConfig, tmp_path: Path
) -> None:
    standin = standin_loader()

    def trained_with(**settings: Any) -> Any:
        def load(config: ProjectConfig, task: str, *, tracking_uri: str | None = None) -> Any:
            model = standin(config, task, tracking_uri=tracking_uri)
            model.bundle.task = {**config.task(task).model_dump(mode="json"), **settings}
            return model

        return load

    with pytest.raises(TaskMismatch) as info:
        score_shop(shop, tmp_path / "a", load_model=trained_with(horizon_days=180), tasks=["churn"])
    assert str(info.value).startswith(
        "task 'churn': the config now says horizon_days 90 (trained with 180), so champion v3 "
        "answers another question; retrain the task"
    )
    assert info.value.exit_code == 8
    assert not (tmp_path / "a" / "validation").exists()  # refused before the tables are read
    # the number of values listed only shapes the output: no retraining needed
    run = score_shop(
        shop, tmp_path / "b", load_model=trained_with(top_k=5), tasks=["next_category"]
    )
    assert run.rows_out["next_category"] > 0


def test_a_run_of_fewer_tasks_removes_the_lists_of_the_others_and_nothing_else(
    shop: ProjectConfig, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    score_shop(shop, out)
    assert (out / "value.csv").exists()
    (out / "notes.txt").write_text("mine")
    run = score_shop(shop, out, tasks=["churn"])
    listed = json.loads((out / "manifest.json").read_text())["files"]
    assert not (out / "value.csv").exists() and not (out / "value.parquet").exists()
    assert sorted(p.name for p in out.iterdir() if p.is_file() and p.name != ".cxpredict.lock") == (
        sorted([*listed, "manifest.json", "notes.txt"])
    )
    assert run.rows_out.keys() == {"churn"}


def test_a_feed_that_ended_long_before_the_as_of_date_is_warned_about(
    shop: ProjectConfig, tmp_path: Path
) -> None:
    on_time = score_shop(shop, tmp_path / "a", tasks=["churn"])
    assert not [w for w in on_time.warnings if "feed" in w]
    late = run_scoring(
        shop,
        as_of=SHOP_AS_OF + pd.Timedelta(days=400),
        out_dir=tmp_path / "b",
        run_at=RUN_AT + pd.Timedelta(days=400),
        load_model=standin_loader(),
        log_run=False,
        tasks=["churn"],
    )
    assert [w for w in late.warnings if "is the feed up to date?" in w]


def test_scoring_without_a_champion_exits_with_the_missing_model_code(
    shop: ProjectConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = Path(shop.root) / "cxpredict.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "project": "shop",
                "data": {"orders": {"path": "orders.csv"}},
                "tasks": {"churn": SHOP_TASKS["churn"]},
            }
        )
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    args = ["score", "--config", str(config), "--as-of", "2025-10-01", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == ModelNotFound.exit_code == 6, result.output
    assert "no champion of task 'churn'" in result.output
    result = CliRunner().invoke(app, [*args, "--task", "churm"])
    assert result.exit_code == 3
    assert "did you mean 'churn'" in result.output


@pytest.mark.slow
def test_trained_champions_score_the_sample_reproducibly_and_the_run_is_logged(
    tmp_path: Path,
) -> None:
    import mlflow

    from cxpredict import registry
    from cxpredict.training import train_task

    tables = generate_sample(1500, seed=11, start="2024-01-01", days=640)
    write_sample(tables, tmp_path / "data")
    raw = {
        "project": "shop",
        "data": {
            "orders": {"path": "orders.csv"},
            "interactions": {"path": "interactions.csv"},
            "customers": {"path": "customers.csv"},
        },
        "tasks": {"churn": SHOP_TASKS["churn"], "repurchase": SHOP_TASKS["repurchase"]},
        "training": {"n_cutoffs": 4, "step_days": 28},
        "scoring": {"drift_fail_psi": 10.0},
    }
    config = parse_config(raw, root=tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    known = load_tables(config, run_at=RUN_AT, as_of=SHOP_AS_OF).tables
    for task in config.tasks:
        result = train_task(config, task, as_of=SHOP_AS_OF, tables=known, backtest=False)
        # The registry synthesises its input example from the training medians; a median
        # repeat-purchase count can be fractional, which the BTYD model rightly refuses.
        medians = result.bundle.feature_medians
        if medians.get("btyd_frequency") is not None:
            medians["btyd_frequency"] = float(np.floor(medians["btyd_frequency"]))
        registry.log_training_run(config, task, result, tables=known, tracking_uri=uri)

    runs = [
        run_scoring(
            config, as_of=SHOP_AS_OF, out_dir=tmp_path / name, run_at=RUN_AT, tracking_uri=uri
        )
        for name in ("a", "b")
    ]
    assert runs[0].versions == {"churn": "1", "repurchase": "1"}
    for file in runs[0].files:
        assert file.read_bytes() == (tmp_path / "b" / file.name).read_bytes(), file.name
    churn = pd.read_csv(tmp_path / "a" / "churn.csv")
    top = churn.head(math.ceil(len(churn) * config.scoring.reasons_top_fraction))
    assert (top["reason_1"].fillna("") != "").mean() > 0.9  # reasons for the top share
    assert churn["score"].between(0, 1).all()
    checked = runs[0].drift[runs[0].drift["status"] != "not checked"]
    assert {"score"} <= set(checked["variable"])  # the bundle stores its training reference

    # a feature added after training (as by a cxpredict upgrade): the champions still score,
    # with the same lists
    extra = ADDED_FEATURE.model_dump(exclude_none=True)
    wider = parse_config({**raw, "features": {"sql": [extra]}}, root=tmp_path / "data")
    later = run_scoring(
        wider, as_of=SHOP_AS_OF, out_dir=tmp_path / "c", run_at=RUN_AT, tracking_uri=uri
    )
    assert later.versions == runs[0].versions
    for name in ("churn.csv", "repurchase.csv"):
        assert (tmp_path / "c" / name).read_bytes() == (tmp_path / "a" / name).read_bytes()

    with registry.tracking(uri):
        logged = mlflow.get_run(runs[0].mlflow_run_id)
    assert logged.data.params["model.churn"] == "shop-churn v1"
    assert logged.data.metrics["rows_out.churn"] == len(churn)
    assert "runtime.total_seconds" in logged.data.metrics


def test_scoring_before_the_first_order_says_so_instead_of_a_drift(
    shop: ProjectConfig, tmp_path: Path
) -> None:
    with pytest.raises(IneligibleTask, match="is --as-of before the data start"):
        run_scoring(
            shop,
            as_of=pd.Timestamp("2023-06-01", tz="UTC"),
            out_dir=tmp_path / "early",
            run_at=RUN_AT,
            load_model=standin_loader(),
            log_run=False,
        )
    assert not (tmp_path / "early" / "drift.csv").exists()
