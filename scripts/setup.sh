#!/usr/bin/env bash
# Create .venv (once) and install uhnas with its test extras. Idempotent: re-running only checks.
# torch is pinned to 2.13.0 and installed first: on this project's CPU machines pip finds a local CPU
# build; set UHNAS_TORCH_SPEC (e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
# to choose another build elsewhere. The ray extra is installed too, so the Ray executor test runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install --quiet ${UHNAS_TORCH_SPEC:-torch==2.13.0} 2>&1 | grep -v "^WARNING: Location" || true
fi
stamp=.venv/.uhnas-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet -e ".[test,ray]" 2>&1 | grep -v "^WARNING: Location" || true
  if ! .venv/bin/python -c "import uhnas, torch, optuna"; then
    echo "setup failed: uhnas and its dependencies did not install into .venv (see pip's messages above)" >&2
    exit 1
  fi
  touch "$stamp"
fi
