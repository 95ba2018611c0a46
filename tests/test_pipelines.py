"""The scheduled jobs in pipelines/: the commands they run, the exit codes they pass on.

A stand-in ``cxpredict`` on PATH records each call and answers with the exit code the test
asks of it, so the scripts' own logic is checked without training or scoring anything.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
SAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "data" / "sample" / "cxpredict.yaml"

STANDIN = """#!/usr/bin/env bash
# `tasks` is the real command (it only reads the config). Any other command records its
# arguments; `score` writes a file into --out; each exits with the code asked for.
if [[ "$1" == tasks ]]; then
    exec python -c 'from cxpredict.cli import main; main()' "$@"
fi
echo "$*" >> "$CALLS"
if [[ "$1" == score ]]; then
    out=""
    while [[ $# -gt 0 ]]; do
        if [[ "$1" == --out ]]; then out="$2"; fi
        shift
    done
    if [[ -z "${FAIL_SCORE:-}" ]]; then
        mkdir -p "$out" && echo ranked > "$out/churn.csv"
    fi
    exit "${FAIL_SCORE:-0}"
fi
if [[ "$1" == promote ]]; then exit "${PROMOTE_EXIT:-0}"; fi
exit "${TRAIN_EXIT:-0}"
"""


def run_pipeline(script: str, tmp_path: Path, **env: str) -> tuple[int, list[str], str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    standin = bin_dir / "cxpredict"
    standin.write_text(STANDIN, encoding="utf-8")
    standin.chmod(0o755)
    calls = tmp_path / "calls.txt"
    calls.unlink(missing_ok=True)
    environment = {
        **os.environ,
        # the stand-in first; then this interpreter (for `python -c` reading the config)
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), "/usr/bin:/bin"]),
        "CALLS": str(calls),
        **env,
    }
    done = subprocess.run(
        ["bash", str(PIPELINES / script)],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = calls.read_text().splitlines() if calls.exists() else []
    return done.returncode, lines, done.stdout + done.stderr


def run_folder(call: str) -> Path:
    """The --out folder of a recorded score call."""
    return Path(re.search(r"--out (\S+)", call).group(1))  # type: ignore[union-attr]


def test_weekly_scoring_passes_its_settings_and_points_latest_at_the_new_week(
    tmp_path: Path,
) -> None:
    scores = tmp_path / "scores"
    settings = {"CONFIG": "p.yaml", "OUT_ROOT": str(scores)}
    code, calls, output = run_pipeline(
        "score_weekly.sh",
        tmp_path,
        **settings,
        AS_OF="2026-01-05",
        TASKS="churn value",
        REASONS_FOR="all",
    )
    assert code == 0, output
    (call,) = calls
    run = run_folder(call)
    assert call == (
        f"score --config p.yaml --as-of 2026-01-05 --out {run} --task churn --task value "
        "--reasons-for all"
    )
    # each run writes a folder of its own, published under the week's name once done
    assert run.parent == scores / ".runs" and run.name.startswith("2026-01-05.")
    assert os.readlink(scores / "2026-01-05") == f".runs/{run.name}"
    latest = scores / "latest"
    assert os.readlink(latest) == "2026-01-05"
    assert (latest / "churn.csv").read_text() == "ranked\n"
    code, calls, output = run_pipeline("score_weekly.sh", tmp_path, **settings, AS_OF="2026-01-12")
    assert code == 0, output
    assert run_folder(calls[0]).name.startswith("2026-01-12.")
    assert os.readlink(latest) == "2026-01-12"
    assert not list(scores.glob(".*.tmp"))


def test_a_rerun_week_is_published_whole_and_a_failed_rerun_changes_nothing(
    tmp_path: Path,
) -> None:
    scores = tmp_path / "scores"
    settings = {"CONFIG": "p.yaml", "OUT_ROOT": str(scores), "AS_OF": "2026-01-05"}
    code, first, output = run_pipeline("score_weekly.sh", tmp_path, **settings)
    assert code == 0, output
    code, failed, _ = run_pipeline("score_weekly.sh", tmp_path, **settings, FAIL_SCORE="9")
    assert code == 9
    assert os.readlink(scores / "2026-01-05") == f".runs/{run_folder(first[0]).name}"
    code, again, output = run_pipeline("score_weekly.sh", tmp_path, **settings)
    assert code == 0, output
    assert os.readlink(scores / "2026-01-05") == f".runs/{run_folder(again[0]).name}"
    assert run_folder(first[0]).exists()  # earlier runs stay until removed


def test_a_week_written_in_place_before_is_kept_aside_when_rerun(tmp_path: Path) -> None:
    scores = tmp_path / "scores"
    (scores / "2026-01-05").mkdir(parents=True)
    (scores / "2026-01-05" / "churn.csv").write_text("before\n")
    code, calls, output = run_pipeline(
        "score_weekly.sh", tmp_path, CONFIG="p.yaml", OUT_ROOT=str(scores), AS_OF="2026-01-05"
    )
    assert code == 0, output
    assert (scores / "2026-01-05" / "churn.csv").read_text() == "ranked\n"
    (kept,) = scores.glob(".runs/2026-01-05.in-place.*")
    assert (kept / "churn.csv").read_text() == "before\n"


def test_a_failed_scoring_week_keeps_latest_and_passes_the_exit_code_on(tmp_path: Path) -> None:
    settings = {"CONFIG": "p.yaml", "OUT_ROOT": str(tmp_path / "scores")}
    code, _, output = run_pipeline("score_weekly.sh", tmp_path, **settings, AS_OF="2026-01-05")
    assert code == 0, output
    code, _, _ = run_pipeline(
        "score_weekly.sh", tmp_path, **settings, AS_OF="2026-01-12", FAIL_SCORE="6"
    )
    assert code == 6  # no champion
    assert os.readlink(tmp_path / "scores" / "latest") == "2026-01-05"


def test_a_backfilled_week_leaves_latest_on_the_newest_week(tmp_path: Path) -> None:
    settings = {"CONFIG": "p.yaml", "OUT_ROOT": str(tmp_path / "scores")}
    for as_of in ("2026-01-12", "2026-01-05"):
        code, _, output = run_pipeline("score_weekly.sh", tmp_path, **settings, AS_OF=as_of)
        assert code == 0, output
    assert (tmp_path / "scores" / "2026-01-05" / "churn.csv").exists()
    assert os.readlink(tmp_path / "scores" / "latest") == "2026-01-12"
    assert "stays on the newer 2026-01-12" in output


def test_a_latest_that_is_not_a_link_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "scores" / "latest").mkdir(parents=True)
    code, calls, output = run_pipeline(
        "score_weekly.sh", tmp_path, CONFIG="p.yaml", OUT_ROOT=str(tmp_path / "scores")
    )
    assert code == 13
    assert "is not a link" in output
    assert calls == []  # refused before scoring
    assert not list((tmp_path / "scores").glob(".*.tmp"))


def test_monthly_retraining_with_a_broken_config_stops_with_the_config_code(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("project: p\ndata: {orders: {path: o.csv}}\ntaks: {}\n", encoding="utf-8")
    code, calls, output = run_pipeline("retrain_monthly.sh", tmp_path, CONFIG=str(broken))
    assert code == 3, output
    assert calls == []
    assert "Traceback" not in output and "did you mean 'tasks'" in output


def test_weekly_scoring_needs_a_config(tmp_path: Path) -> None:
    code, calls, output = run_pipeline("score_weekly.sh", tmp_path)
    assert code != 0 and calls == []
    assert "set CONFIG" in output


def test_monthly_retraining_trains_and_promotes_every_configured_task(tmp_path: Path) -> None:
    code, calls, output = run_pipeline(
        "retrain_monthly.sh", tmp_path, CONFIG=str(SAMPLE_CONFIG), AS_OF="2026-01-01"
    )
    assert code == 0, output
    tasks = ["churn", "repurchase", "next_category", "best_channel", "value"]
    expected = []
    for task in tasks:
        expected += [
            f"train --config {SAMPLE_CONFIG} --as-of 2026-01-01 --task {task}",
            f"promote --config {SAMPLE_CONFIG} --task {task}",
        ]
    assert calls == expected


@pytest.mark.parametrize(("promote", "expected"), [("11", 0), ("3", 3)])
def test_a_refused_promotion_keeps_the_champion_and_other_failures_stop_the_job(
    tmp_path: Path, promote: str, expected: int
) -> None:
    code, calls, output = run_pipeline(
        "retrain_monthly.sh",
        tmp_path,
        CONFIG="p.yaml",
        AS_OF="2026-01-01",
        TASKS="churn value",
        PROMOTE_EXIT=promote,
    )
    assert code == expected, output
    if expected == 0:
        assert (
            len(calls) == 4 and "churn: promotion refused (reason above); champion kept" in output
        )
    else:
        assert calls == [
            "train --config p.yaml --as-of 2026-01-01 --task churn",
            "promote --config p.yaml --task churn",
        ]
