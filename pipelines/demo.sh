#!/usr/bin/env bash
# The whole product on the bundled sample data. Run through `make demo`, which puts the
# project's .venv first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
export MLFLOW_DISABLE_TELEMETRY=true

CONFIG=data/sample/cxpredict.yaml
AS_OF=${AS_OF:-2026-01-01}
OUT=${OUT:-demo-output}
mkdir -p "$OUT"

echo "== validate the sample data"
cxpredict validate --config "$CONFIG" --as-of "$AS_OF" --out "$OUT/validation"

echo "== build every customer's features as of $AS_OF"
cxpredict features --config "$CONFIG" --as-of "$AS_OF" --out "$OUT/features.parquet"

echo
echo "outputs:"
echo "  validation report: $OUT/validation/validation_report.json"
echo "  rejects:           $OUT/validation/rejects_<table>.csv"
echo "  features:          $OUT/features.parquet"
