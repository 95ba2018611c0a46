#!/usr/bin/env bash
# The whole product on the bundled sample data: validate, build features, train and backtest
# every task against its baselines, register and promote, score, and write the ranked lists
# and the report. Run through `make demo`, which puts the project's .venv first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
export MLFLOW_DISABLE_TELEMETRY=true

CONFIG=data/sample/cxpredict.yaml
AS_OF=${AS_OF:-2026-01-01}
OUT=${OUT:-demo-output}
[[ "$OUT" == /* ]] || OUT="$PWD/$OUT"  # absolute: the store URI and the paths printed below
# The demo keeps its own MLflow store beside its outputs, so that it starts from scratch
# every time; a real project uses the store configured under `mlflow:` (or
# MLFLOW_TRACKING_URI).
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$OUT/mlruns/mlflow.db}
rm -rf "$OUT"
mkdir -p "$OUT/mlruns"

echo "== 1/5 validate the sample data"
cxpredict validate --config "$CONFIG" --as-of "$AS_OF" --out "$OUT/validation"

echo "== 2/5 build every customer's features as of $AS_OF"
cxpredict features --config "$CONFIG" --as-of "$AS_OF" --out "$OUT/features.parquet"

echo "== 3/5 train and backtest every task against its baselines; register as challenger"
cxpredict train --config "$CONFIG" --as-of "$AS_OF" --out "$OUT/training"

echo "== 4/5 promote: the first version of each task is already champion"
tasks=$(cxpredict tasks --config "$CONFIG")  # a bad config stops here with exit code 3
for task in $tasks; do
    cxpredict promote --config "$CONFIG" --task "$task" || [[ $? -eq 11 ]]
done

echo "== 5/5 score every customer with each champion"
cxpredict score --config "$CONFIG" --as-of "$AS_OF" --out "$OUT/scores"

echo
echo "outputs:"
echo "  validation report: $OUT/validation/validation_report.json"
echo "  features:          $OUT/features.parquet"
echo "  backtests:         $OUT/training/"
echo "  MLflow store:      $MLFLOW_TRACKING_URI  (mlflow ui --backend-store-uri '$MLFLOW_TRACKING_URI')"
echo "  ranked lists:      $OUT/scores/<task>.csv"
echo "  customers:         $OUT/scores/customers.csv"
echo "  report:            $OUT/scores/report.html"
