#!/usr/bin/env bash
# Screenshots a report.html (from a sweep, or `mtl-train-report DIR --html`) in headless Chromium, offline.
#   bash scripts/screenshot_report.sh multirun/<date>/<time>/report.html docs/img/report.png [WIDTH] [HEIGHT]
# Needs Debian's chromium (apt-get install -y chromium). The page is 1200 px wide at most; the default window,
# 1280 x 2400, shows its top: the title, the contents, the tables and the first plots.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 REPORT_HTML OUT_PNG [WIDTH] [HEIGHT]" >&2
  exit 2
fi
html="$(realpath "$1")"
png="$(realpath -m "$2")"
browser="$(command -v chromium || command -v chromium-browser || true)"
if [ -z "$browser" ]; then
  echo "error: chromium not found; install it with: apt-get install -y chromium" >&2
  exit 1
fi
mkdir -p "$(dirname "$png")"
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --screenshot="$png" \
  --window-size="${3:-1280},${4:-2400}" "file://$html" 2>/dev/null
echo "wrote $png"
