#!/usr/bin/env bash
# Run the whole test suite: unit, workflow and integration tests (a real single-node SLURM cluster,
# a real MLflow server, headless Chromium). Installs what it needs first. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
export MLFLOW_DISABLE_TELEMETRY=true
exec .venv/bin/python -m pytest "$@"
