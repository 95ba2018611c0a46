#!/usr/bin/env bash
# Render a scoring report in headless Chromium: a screenshot to look at, and a check that the
# customers to contact first are in the rendered page.
#
#   scripts/check_report.sh scores/2026-01-05            # the folder of a scoring run
#   scripts/check_report.sh scores/2026-01-05 shot.png   # where to put the screenshot
#
# Needs Debian's chromium (as root: apt-get update && apt-get install -y chromium). Exits 1
# when a top customer is missing from the rendered page, 2 when Chromium is not installed.
set -euo pipefail

RUN=${1:?usage: check_report.sh <scoring output folder> [screenshot.png]}
SHOT=${2:-$RUN/report.png}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
TOP=${TOP:-10}

if [[ ! -x "$CHROMIUM" ]]; then
    echo "chromium not found at $CHROMIUM; as root: apt-get update && apt-get install -y chromium" >&2
    exit 2
fi
REPORT=$(realpath "$RUN/report.html")
PROFILE=$(mktemp -d)
trap 'rm -rf "$PROFILE"' EXIT
FLAGS=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
       --disable-background-networking --disable-component-update --disable-sync
       --user-data-dir="$PROFILE" --window-size=1280,2000)

"$CHROMIUM" "${FLAGS[@]}" --screenshot="$SHOT" "file://$REPORT" 2>/dev/null
"$CHROMIUM" "${FLAGS[@]}" --dump-dom "file://$REPORT" 2>/dev/null > "$PROFILE/dom.html"

missing=0
# The first column of customers.csv, rows 2 .. TOP+1: the customers to contact first.
while IFS= read -r customer; do
    if ! grep -qF ">$customer<" "$PROFILE/dom.html"; then
        echo "missing from the rendered report: $customer" >&2
        missing=1
    fi
done < <(sed -n "2,$((TOP + 1))p" "$RUN/customers.csv" | cut -d, -f1)

[[ $missing -eq 0 ]] && echo "ok: the top $TOP customers are in the rendered report; screenshot: $SHOT"
exit $missing
