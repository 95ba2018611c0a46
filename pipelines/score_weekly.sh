#!/usr/bin/env bash
# Weekly batch scoring: every task's champion scores every customer as of a date.
#
#   CONFIG=path/to/cxpredict.yaml pipelines/score_weekly.sh            # as of today (UTC)
#   CONFIG=... AS_OF=2026-01-05 OUT_ROOT=/srv/scores TASKS="churn value" pipelines/score_weekly.sh
#   CONFIG=... REASONS_FOR=top pipelines/score_weekly.sh    # reasons for the top of each list only
#
# Writes OUT_ROOT/<as-of>/ (ranked lists, customers.csv, report.html, drift.csv, manifest.json)
# and then points OUT_ROOT/latest at it in one rename, so readers never see a half-written week;
# a backfill of an earlier week leaves `latest` on the newest one. Rerunning for the same date
# rewrites the same bytes. The exit code is the command's: 0 ok, 3 config, 4 unreadable data,
# 5 too many rejected rows, 6 no champion, 8 feature mismatch or a changed task, 9 drift beyond
# scoring.drift_fail_psi, 10 another run holds the folder, 13 an output cannot be written,
# 14 the MLflow store cannot be read.
set -euo pipefail

CONFIG=${CONFIG:?set CONFIG to the project config file}
AS_OF=${AS_OF:-$(date -u +%Y-%m-%d)}
OUT_ROOT=${OUT_ROOT:-scores}
OUT="$OUT_ROOT/$AS_OF"

task_args=()
for task in ${TASKS:-}; do  # empty: every configured task
    task_args+=(--task "$task")
done
if [[ -n "${REASONS_FOR:-}" ]]; then  # empty: scoring.reasons_for of the config
    task_args+=(--reasons-for "$REASONS_FOR")
fi

cxpredict score --config "$CONFIG" --as-of "$AS_OF" --out "$OUT" ${task_args[@]+"${task_args[@]}"}

latest="$OUT_ROOT/latest"
if [[ -e "$latest" && ! -L "$latest" ]]; then
    echo "error: $latest is not a link; move it away so that it can point at the newest week" >&2
    exit 13
fi
current=$(readlink "$latest" 2>/dev/null || true)
if [[ -n "$current" && "$current" > "$AS_OF" ]]; then  # ISO dates sort as text
    echo "scores as of $AS_OF: $OUT ($latest stays on the newer $current)"
    exit 0
fi
# Swap the "latest" link atomically: make the new link beside it, then rename over the old one.
ln -sfn "$AS_OF" "$OUT_ROOT/.latest.tmp"
mv -Tf "$OUT_ROOT/.latest.tmp" "$latest"
echo "scores as of $AS_OF: $OUT (also $latest)"
