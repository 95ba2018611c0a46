#!/usr/bin/env bash
# Monthly retraining: train a challenger for every task, promote it when it beats the champion.
#
#   CONFIG=path/to/cxpredict.yaml pipelines/retrain_monthly.sh          # as of today (UTC)
#   CONFIG=... AS_OF=2026-01-01 TASKS="churn value" pipelines/retrain_monthly.sh
#   CONFIG=... TRAIN_ROOT=/srv/training pipelines/retrain_monthly.sh  # bundles in TRAIN_ROOT/<as-of>
#
# Backtest cutoffs lie on one calendar grid (every training.step_days days from 1970-01-01),
# so a challenger trained a month after its champion is compared with it on the cutoffs their
# backtests share.
#
# Each task is trained as a new registered version (alias "challenger"), then `promote`
# compares it with the champion on the same backtest cutoffs and data and moves "champion"
# only if it is better, or if the champion can no longer score (a feature it uses is no
# longer built or was redefined, e.g. after a cxpredict upgrade). A refused promotion (exit code 11) is the normal outcome when the
# new model is no better, or cannot be compared (promote says why): the champion stays and the
# job goes on. Any other failure stops
# the job with that command's exit code; tasks already promoted stay promoted.
set -euo pipefail

CONFIG=${CONFIG:?set CONFIG to the project config file}
AS_OF=${AS_OF:-$(date -u +%Y-%m-%d)}
PROMOTION_REFUSED=11

if [[ -z "${TASKS:-}" ]]; then
    TASKS=$(cxpredict tasks --config "$CONFIG")  # a bad config stops here with exit code 3
fi

out_args=()
if [[ -n "${TRAIN_ROOT:-}" ]]; then  # empty: training/<as-of> beside the config
    out_args+=(--out "$TRAIN_ROOT/$AS_OF")
fi

for task in $TASKS; do
    echo "== $task: train as of $AS_OF"
    cxpredict train --config "$CONFIG" --as-of "$AS_OF" --task "$task" ${out_args[@]+"${out_args[@]}"}
    echo "== $task: promote if better than the champion"
    status=0
    cxpredict promote --config "$CONFIG" --task "$task" || status=$?
    if [[ $status -eq $PROMOTION_REFUSED ]]; then
        echo "$task: promotion refused (reason above); champion kept"
    elif [[ $status -ne 0 ]]; then
        exit "$status"
    fi
done
