#!/usr/bin/env bash
# Run the whole test suite: unit, workflow and integration tests (a real two-node SLURM cluster on this machine,
# a real MLflow server, headless Chromium). Installs what it needs first. Extra args go to pytest,
# e.g. scripts/test.sh -m "not integration"   or   scripts/test.sh tests/integration -x   or   -n 0 --pdb
#
# The pytest session fixtures (tests/integration/conftest.py) start the services through
# scripts/slurm_cluster.sh and scripts/mlflow_server.sh and stop them at the end; the trap below stops
# whatever they left behind if pytest itself dies. Exit status: pytest's, except that "no tests
# collected" (5) is a failure too. With CI=true a service that cannot start fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
export MLFLOW_DISABLE_TELEMETRY=true

# Services started by this run, for the trap: the SLURM cluster only if it was not up before, and
# every MLflow server the tests started (the fixtures list their state dirs in this file).
slurm_was_up=0
scripts/slurm_cluster.sh status >/dev/null 2>&1 && slurm_was_up=1
MAE_TEST_SERVICES_FILE=$(mktemp /tmp/mae-test-services.XXXXXX)
export MAE_TEST_SERVICES_FILE

cleanup() {
  local dir
  while read -r dir; do
    [ -n "$dir" ] && [ -f "$dir/server.pid" ] && scripts/mlflow_server.sh stop --state-dir "$dir" >/dev/null 2>&1 || true
  done <"$MAE_TEST_SERVICES_FILE"
  rm -f "$MAE_TEST_SERVICES_FILE"
  if [ "$slurm_was_up" = 0 ] && [ -z "${MAE_TEST_KEEP_SERVICES:-}" ] && [ -d .services/slurm/run ] \
     && ls .services/slurm/run/*.pid >/dev/null 2>&1; then
    echo "test.sh: stopping the SLURM cluster left running"
    scripts/slurm_cluster.sh stop || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Two pytest-xdist workers: run in one process the suite kept the 2 cores of a CI machine only 60 % busy
# (it waits on SLURM allocations, servers and subprocesses), 35 min of pytest; with two, 88 % and 26 min.
# tests/conftest.py keeps a file whole on one worker and the integration tests together on one (they
# share the SLURM cluster and MLflow server). `-n 0` runs everything in this process (e.g. with --pdb).
rc=0
.venv/bin/python -m pytest -n 2 --dist loadfile "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests: failing" >&2
  rc=1
fi
exit "$rc"
