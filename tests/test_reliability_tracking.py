"""Tracking server down (nothing listens on 127.0.0.1:9) or very slow (a local HTTP server that sleeps
before answering): training goes on, the time it costs is bounded, and the run folder is complete and
equal to a run without tracking."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from test_reliability_common import (LONG_SMOKE, assert_same_weights, fault, metrics, pretrain_cmd,  # noqa: F401
                                     records, reference_run, run)

SLOW_S = 8.0  # longer than mae's MLFLOW_HTTP_REQUEST_TIMEOUT (5 s); the server never holds a request longer
# Tracker: start waits at most 30 s for the run id, finish drains at most 10 s; plus start-up noise
# on a shared 2-core machine.
MAX_EXTRA_S = 45.0


class _SlowHandler(BaseHTTPRequestHandler):
    def _slow(self):
        self.server.hits += 1
        time.sleep(SLOW_S)
        body = b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "slow test server"}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _slow

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    server.daemon_threads = True
    server.hits = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _check(kind: str, uri: str, tmp_path, tmp_path_factory, fault) -> None:
    reference, reference_s = reference_run(tmp_path_factory, *LONG_SMOKE)
    out = tmp_path / "run"
    result = run(pretrain_cmd(out, *LONG_SMOKE, "tracking.enabled=true", f"tracking.uri={uri}"))
    assert result.returncode == 0, result.explain()
    extra = result.seconds - reference_s
    train_extra = (json.loads((out / "metrics.json").read_text())["train_time_s"]
                   - json.loads((reference / "metrics.json").read_text())["train_time_s"])
    print(f"[reliability] tracking {kind}: wall {result.seconds:.1f} s vs {reference_s:.1f} s untracked "
          f"(+{extra:.1f} s); training loop +{train_extra:.2f} s")
    assert extra < MAX_EXTRA_S, f"tracking {kind} cost {extra:.1f} s"
    # the local record is complete and the same as without tracking
    for name in ("config.yaml", "metrics.jsonl", "metrics.json", "model.pth", "recon.png", "train.log"):
        assert (out / name).is_file(), f"{name} missing"
    assert records(out) == records(reference)
    assert metrics(out) == metrics(reference)
    assert_same_weights(reference / "model.pth", out / "model.pth")
    log = (out / "train.log").read_text()
    warnings = [line for line in log.splitlines() if "WARNING" in line and "tracking" in line]
    assert warnings, "no warning says tracking is off"
    fault.observe(f"exit 0; wall +{extra:.1f} s (bound {MAX_EXTRA_S:.0f} s), training loop +{train_extra:.2f} s; "
                  f"run folder complete and equal to an untracked run; {len(warnings)} warning line(s): "
                  f"'{warnings[0].split('WARNING ', 1)[-1][:120]}'")


@pytest.mark.slow
def test_tracking_server_down(tmp_path, tmp_path_factory, fault):
    fault.describe("tracking", "tracking.uri=http://127.0.0.1:9 (nothing listens)",
                   f"training completes; extra time < {MAX_EXTRA_S:.0f} s; local records complete")
    _check("down", "http://127.0.0.1:9", tmp_path, tmp_path_factory, fault)


@pytest.mark.slow
def test_tracking_server_very_slow(tmp_path, tmp_path_factory, slow_server, fault):
    fault.describe("tracking", f"tracking server on 127.0.0.1 that sleeps {SLOW_S:.0f} s before every answer",
                   f"training completes; extra time < {MAX_EXTRA_S:.0f} s; local records complete")
    _check("slow", f"http://127.0.0.1:{slow_server.server_address[1]}", tmp_path, tmp_path_factory, fault)
    assert slow_server.hits >= 1, "the slow server was never asked"


UNUSABLE = "sqlite:////proc/mae-reliability/x.db"  # /proc takes no new files or folders, even for root
MAX_UNUSABLE_EXTRA_S = 20.0  # generous on a shared 2-core machine; it cost 40 s before the probe


@pytest.mark.slow
def test_unusable_sqlite_store_warns_at_once_and_replay_takes_uri_and_env(tmp_path, tmp_path_factory, fault):
    fault.describe("tracking", f"tracking.uri={UNUSABLE} (a path where no file can be created); then "
                   "`mae replay DIR --uri <good store>` and `MLFLOW_TRACKING_URI=<other store> mae replay DIR`",
                   f"exit 0, one tracking warning naming `mae replay`, extra time < {MAX_UNUSABLE_EXTRA_S:.0f} s, run "
                   "folder equal to an untracked run; replay honours --uri and MLFLOW_TRACKING_URI")
    from mlflow.tracking import MlflowClient

    from test_reliability_common import MAE, mae_env
    reference, reference_s = reference_run(tmp_path_factory, *LONG_SMOKE)
    out = tmp_path / "run"
    result = run(pretrain_cmd(out, *LONG_SMOKE, "tracking.enabled=true", f"tracking.uri={UNUSABLE}"))
    assert result.returncode == 0, result.explain()
    extra = result.seconds - reference_s
    print(f"[reliability] unusable store: wall {result.seconds:.1f} s vs {reference_s:.1f} s untracked (+{extra:.1f} s)")
    assert extra < MAX_UNUSABLE_EXTRA_S, f"an unusable store cost {extra:.1f} s"
    assert records(out) == records(reference) and metrics(out) == metrics(reference)
    assert_same_weights(reference / "model.pth", out / "model.pth")
    warnings = [line for line in (out / "train.log").read_text().splitlines() if "WARNING" in line and "tracking" in line]
    assert len(warnings) == 1 and "mae replay" in warnings[0] and "/proc/mae-reliability" in warnings[0], warnings

    # the run folder has everything: replay it where the user says
    good, other = tmp_path / "good.db", tmp_path / "other.db"
    by_flag = run([MAE, "replay", str(out), "--uri", f"sqlite:///{good}"])
    assert by_flag.returncode == 0, by_flag.explain()
    by_env = run([MAE, "replay", str(out)], env=mae_env(MLFLOW_TRACKING_URI=f"sqlite:///{other}"))
    assert by_env.returncode == 0, by_env.explain()
    logged = {}
    for db in (good, other):
        client = MlflowClient(tracking_uri=f"sqlite:///{db}")
        run_ids = [r.info.run_id for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
        assert len(run_ids) == 1, f"{db.name}: {run_ids}"
        history = client.get_metric_history(run_ids[0], "loss")
        assert sorted(m.step for m in history) == [r["step"] for r in records(out) if "loss" in r]
        logged[db.name] = len(history)
    fault.observe(f"exit 0; wall +{extra:.1f} s (was +40 s; bound {MAX_UNUSABLE_EXTRA_S:.0f} s); run folder equal to an "
                  f"untracked run; 1 warning: '{warnings[0].split('WARNING ', 1)[-1][:150]}'; replay --uri and "
                  f"MLFLOW_TRACKING_URI each got every loss point ({logged})")
