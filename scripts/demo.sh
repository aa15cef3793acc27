#!/usr/bin/env bash
# Set everything up and run the main job: a hardware-aware search on the bundled digits dataset
# (offline, CPU, no LLM key needed). Extra arguments go to `uhnas search`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/uhnas search --config examples/digits_mzi.yaml --out runs/demo "$@"
