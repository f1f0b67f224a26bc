#!/usr/bin/env bash
# An MLflow tracking server on 127.0.0.1 with a database backend (default: a sqlite file in the state
# dir), for the integration tests and for runs on a cluster (jobs get MLFLOW_TRACKING_URI=http://...).
#
#   scripts/mlflow_server.sh start  [--port P] [--backend-store-uri URI] [--state-dir DIR]
#   scripts/mlflow_server.sh status [--port P] [--state-dir DIR]    # exit 0 when /health answers
#   scripts/mlflow_server.sh stop   [--state-dir DIR]
#
# State dir (default .services/mlflow in the repo): mlflow.db, artifacts/, server.log, server.pid,
# server.port. Prints the tracking URI (http://127.0.0.1:P) as its last line on start.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}; shift || true
state=$repo/.services/mlflow
port=""
backend=""
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=$2; shift 2 ;;
    --port=*) port=${1#*=}; shift ;;
    --backend-store-uri) backend=$2; shift 2 ;;
    --backend-store-uri=*) backend=${1#*=}; shift ;;
    --state-dir) state=$2; shift 2 ;;
    --state-dir=*) state=${1#*=}; shift ;;
    *) echo "mlflow_server: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$cmd" in start|stop|status) ;; *)
  echo "usage: scripts/mlflow_server.sh start|stop|status [--port P] [--backend-store-uri URI] [--state-dir DIR]" >&2; exit 2 ;;
esac
mkdir -p "$state"; state=$(cd "$state" && pwd)
pidf=$state/server.pid
[ -n "$port" ] || port=$(cat "$state/server.port" 2>/dev/null || echo 5000)
[ -n "$backend" ] || backend=sqlite:///$state/mlflow.db

# The venv's mlflow (the project's pinned version), else one on PATH.
mlflow=$repo/.venv/bin/mlflow
[ -x "$mlflow" ] || mlflow=$(command -v mlflow || true)
python=$repo/.venv/bin/python
[ -x "$python" ] || python=python3

t0=$(date +%s%N)
say() { local ms=$(( ($(date +%s%N) - t0) / 1000000 )); printf 'mlflow_server: [%3d.%01ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"; }
die() { echo "mlflow_server: error: $*" >&2; exit 1; }
pid_alive() { [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; }
# No curl/ss on a bare Debian image: bash's /dev/tcp and Python's urllib instead.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
healthy() {
  "$python" - "$1" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=3) as r:
    sys.exit(0 if r.read().strip() == b"OK" else 1)
PY
}

status() {
  if pid_alive && healthy "$port"; then
    echo "mlflow server: running (pid $(cat "$pidf")) at http://127.0.0.1:$port"; return 0
  fi
  echo "mlflow server: not running (state dir $state)"; return 1
}

start() {
  [ -n "$mlflow" ] || die "mlflow not found (run scripts/setup.sh main first)"
  if pid_alive; then
    local p; p=$(cat "$state/server.port")
    if healthy "$p"; then say "already running (pid $(cat "$pidf"))"; echo "http://127.0.0.1:$p"; return 0; fi
    die "a server (pid $(cat "$pidf")) is alive but /health on port $p does not answer; run stop first"
  fi
  if port_open "$port"; then
    die "port $port is taken by another process (use --port)"
  fi
  mkdir -p "$state/artifacts"
  say "starting on 127.0.0.1:$port (backend $backend, artifacts $state/artifacts)"
  # Job execution spawns a huey worker per server: not wanted on 2 shared cores; one gunicorn worker.
  # setsid: own process group, so `stop` takes gunicorn and its worker down together.
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true \
    setsid "$mlflow" server --host 127.0.0.1 --port "$port" --workers 1 \
      --backend-store-uri "$backend" --artifacts-destination "$state/artifacts" \
      </dev/null >"$state/server.log" 2>&1 &
  echo $! >"$pidf"; echo "$port" >"$state/server.port"
  local end=$(( $(date +%s) + ${MAE_MLFLOW_START_TIMEOUT:-120} ))
  until healthy "$port"; do
    if ! pid_alive; then tail -n 30 "$state/server.log" >&2; rm -f "$pidf"; die "the server exited during start"; fi
    if [ "$(date +%s)" -ge "$end" ]; then tail -n 30 "$state/server.log" >&2; die "no answer from /health"; fi
    sleep 0.5
  done
  say "up: http://127.0.0.1:$port/health answers (pid $(cat "$pidf"))"
  echo "http://127.0.0.1:$port"
}

stop() {
  if ! pid_alive; then rm -f "$pidf"; say "not running"; return 0; fi
  local pid i; pid=$(cat "$pidf")
  say "stopping (pid $pid and its process group)"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then say "still alive, sending KILL"; fi
  kill -KILL -- "-$pid" 2>/dev/null || true   # leftover workers of the group, if any
  rm -f "$pidf"
  say "stopped"
}

"$cmd"
