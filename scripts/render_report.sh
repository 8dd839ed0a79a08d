#!/usr/bin/env bash
# Render a `sparsify-onnx run --report` HTML page to a PNG with headless Chromium (Debian's `chromium`),
# to check it in a real browser: scripts/render_report.sh REPORT.html OUT.png
# Installs `chromium` with apt-get when it is missing (needs root or sudo). No network access is made by
# the browser: the page is self-contained and background networking is off.
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 REPORT.html OUT.png" >&2
  exit 2
fi
report=$(realpath "$1")
out=$(realpath -m "$2")
[ -f "$report" ] || { echo "error: no such report: $1" >&2; exit 1; }
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
  echo "chromium not found: installing it with apt-get" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium >&2
  browser=$(command -v chromium)
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
rm -f "$out"
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --disable-sync --no-first-run --user-data-dir="$profile" --screenshot="$out" --window-size=1200,2000 \
  "file://$report" >&2
[ -s "$out" ] || { echo "error: chromium wrote no screenshot at $out" >&2; exit 1; }
echo "wrote $out"
