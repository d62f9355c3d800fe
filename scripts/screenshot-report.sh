#!/usr/bin/env bash
# Renders a segbeam HTML report in headless Chromium and saves a PNG, to look at the page.
#   scripts/screenshot-report.sh report.html report.png [width height]
# Needs Debian's chromium (apt-get install chromium). The flags keep it off the network.
set -euo pipefail
report=$(realpath "$1")
png=$(realpath -m "$2")
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --user-data-dir="$profile" --window-size="${3:-1280},${4:-2600}" \
  --screenshot="$png" "file://$report" 2>/dev/null
echo "wrote $png"
