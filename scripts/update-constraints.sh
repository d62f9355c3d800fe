#!/usr/bin/env bash
# Regenerates constraints.txt, the exact set segbeam is tested with: resolves setup.py's ranges
# afresh, with segbeam/versions.py's Beam and TensorFlow (the worker image's) and every extra, in
# a new virtual environment of versions.py's Python, and writes `pip freeze` below the file's
# comment header. Then run `python -m pytest tests/deploy/deploy_test.py` and CI (.ci/run).
#   scripts/update-constraints.sh [OUTPUT]      (default: constraints.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-constraints.txt}"
version() { python3 -c "import runpy; print(runpy.run_path('segbeam/versions.py')['$1'])"; }
python="python$(version PYTHON_VERSION)"
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e ".[test,demo,bench]" \
  "apache-beam[gcp]==$(version BEAM_VERSION)" "tensorflow==$(version TENSORFLOW_VERSION)"
"$venv/bin/python" -m pip check
header=$(sed -n '/^#/!q;p' constraints.txt)
{ printf '%s\n' "$header"; "$venv/bin/python" -m pip freeze --exclude-editable; } > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out ($(grep -vc '^#' "$out") pins)"
