#!/usr/bin/env bash
# Weekly batch scoring: every task's champion scores every customer as of a date.
#
#   CONFIG=path/to/cxpredict.yaml pipelines/score_weekly.sh            # as of today (UTC)
#   CONFIG=... AS_OF=2026-01-05 OUT_ROOT=/srv/scores TASKS="churn value" pipelines/score_weekly.sh
#   CONFIG=... REASONS_FOR=top pipelines/score_weekly.sh    # reasons for the top of each list only
#
# Each run writes a folder of its own, OUT_ROOT/.runs/<as-of>.<time>.<pid>/ (ranked lists,
# customers.csv, report.html, drift.csv, manifest.json). Only once it succeeded is it published:
# OUT_ROOT/<as-of> is pointed at it, then OUT_ROOT/latest at the newest week, each in one
# rename and under one lock, so readers never see a half-written or mixed week, a rerun of the
# same week included, and two runs at once cannot leave `latest` on the older week. A backfill
# of an earlier week leaves `latest` on the newest one. A failed run's folder stays under .runs
# (its drift.csv and validation report say why), as do earlier runs of a rerun week: remove
# them at will. Rerunning for the same date writes the same bytes. The exit code is the
# command's: 0 ok, 3 config, 4 unreadable data, 5 too many rejected rows, 6 no champion, 8
# feature mismatch or a changed task, 9 drift beyond scoring.drift_fail_psi, 13 an output
# cannot be written, 14 the MLflow store cannot be read, 143 stopped by SIGTERM.
set -euo pipefail

CONFIG=${CONFIG:?set CONFIG to the project config file}
AS_OF=${AS_OF:-$(date -u +%Y-%m-%d)}
OUT_ROOT=${OUT_ROOT:-scores}
RUN_NAME="$AS_OF.$(date -u +%Y%m%dT%H%M%SZ).$$"
RUN="$OUT_ROOT/.runs/$RUN_NAME"

task_args=()
for task in ${TASKS:-}; do  # empty: every configured task
    task_args+=(--task "$task")
done
if [[ -n "${REASONS_FOR:-}" ]]; then  # empty: scoring.reasons_for of the config
    task_args+=(--reasons-for "$REASONS_FOR")
fi

latest="$OUT_ROOT/latest"
if [[ -e "$latest" && ! -L "$latest" ]]; then
    echo "error: $latest is not a link; move it away so that it can point at the newest week" >&2
    exit 13
fi

mkdir -p "$OUT_ROOT/.runs"
cxpredict score --config "$CONFIG" --as-of "$AS_OF" --out "$RUN" ${task_args[@]+"${task_args[@]}"}

# Publish under one lock: the week's link, then `latest`, each swapped by one rename.
exec 9>"$OUT_ROOT/.publish.lock"
if command -v flock > /dev/null; then
    flock 9
else
    echo "warning: no flock on this machine: publishing without a lock" >&2
fi
week="$OUT_ROOT/$AS_OF"
if [[ -d "$week" && ! -L "$week" ]]; then  # a week written in place by an earlier version
    mv -T "$week" "$OUT_ROOT/.runs/$AS_OF.in-place.$$"
fi
ln -sfn ".runs/$RUN_NAME" "$OUT_ROOT/.$AS_OF.$$.tmp"
mv -Tf "$OUT_ROOT/.$AS_OF.$$.tmp" "$week"

current=$(readlink "$latest" 2>/dev/null || true)
if [[ -n "$current" && "$current" > "$AS_OF" ]]; then  # ISO dates sort as text
    echo "scores as of $AS_OF: $week ($latest stays on the newer $current)"
    exit 0
fi
ln -sfn "$AS_OF" "$OUT_ROOT/.latest.$$.tmp"
mv -Tf "$OUT_ROOT/.latest.$$.tmp" "$latest"
echo "scores as of $AS_OF: $week (also $latest)"
