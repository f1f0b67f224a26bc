#!/usr/bin/env bash
# The main job: install what is needed, then run the ablation workflow (default: the `tiny` preset on
# Fashion-MNIST, local executor, embedded MLflow store). Extra args go to snakemake, e.g.
#   scripts/reproduce.sh --config preset=smoke
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh main
export MLFLOW_DISABLE_TELEMETRY=true
exec .venv/bin/snakemake "$@"
