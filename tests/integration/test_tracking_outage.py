"""The tracking server dies (kill -9) in the middle of a run: training goes on and finishes, the run
folder is complete (system metrics sampled through the outage included), and after a restart
`mae replay DIR` brings MLflow up to date."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from integration_support import MlflowServer, mae_cmd, mae_pretrain, read_jsonl, record_timing, service_env, tail

pytestmark = pytest.mark.integration

EPOCHS = 30  # 2 steps per epoch on the smoke data: long enough to outlive the kill (the test checks)


def test_server_killed_mid_run_then_replay(tmp_path):
    server = MlflowServer(tmp_path / "mlflow")
    server.start(timing="mlflow server start (outage test)")
    out = tmp_path / "run"
    log = tmp_path / "run.stdout.log"
    proc = None
    try:
        overrides = ["tracking.enabled=true", f"tracking.uri={server.uri}", "tracking.experiment=it-outage",
                     "tracking.run_name=outage", f"pretrain.epochs={EPOCHS}", "pretrain.warmup_epochs=1",
                     "run.checkpoint_every_steps=1000"]
        t0 = time.monotonic()
        proc = mae_pretrain(out, overrides, server.uri, wait=False)
        client = server.client()

        # wait until the server holds the first metric points of this run, then kill it
        deadline = time.monotonic() + 300
        run_id, seen = None, []
        while time.monotonic() < deadline and proc.poll() is None:
            if run_id is None and (out / "mlflow_run_id").is_file():
                run_id = (out / "mlflow_run_id").read_text().strip()
            if run_id:
                seen = client.get_metric_history(run_id, "loss")
                if seen:
                    break
            time.sleep(0.5)
        assert seen, f"no metric reached the server before the run ended or 300 s passed:\n{tail(log)}"
        assert proc.poll() is None, "the run finished before the kill: the test would prove nothing"
        server.kill9()
        killed_at, killed_at_step = time.time(), max(m.step for m in seen)

        rc = proc.wait(timeout=600)
        record_timing("outage run (kill -9 mid-run, finish)", time.monotonic() - t0)
        assert rc == 0, f"mae pretrain exited {rc} after the tracking server died:\n{tail(log)}"

        # the local records are complete
        summary = json.loads((out / "metrics.json").read_text())
        lines = read_jsonl(out / "metrics.jsonl")
        assert summary["status"] == "completed"
        assert summary["epochs"] == EPOCHS
        assert summary["steps"] == 2 * EPOCHS
        assert [r["step"] for r in lines] == list(range(1, summary["steps"] + 1)), "metrics.jsonl has gaps"
        assert summary["mlflow_run_id"] == run_id
        assert (out / "model.pth").is_file()
        losses = [r["step"] for r in lines if "loss" in r]
        assert max(losses) > killed_at_step, "no step was logged after the kill"
        system = read_jsonl(out / "system_metrics.jsonl")
        assert [p["step"] for p in system] == list(range(len(system)))
        assert max(p["time"] for p in system) > killed_at + 1, "system metrics stopped with the server"

        # restart on the same backend: MLflow lags behind the run folder ...
        server.start()
        history = client.get_metric_history(run_id, "loss")
        assert len(history) < len(losses), "MLflow already had every point: the kill happened too late"

        # ... until `mae replay DIR`
        replay = subprocess.run([*mae_cmd(), "replay", str(out)], capture_output=True, text=True, timeout=300,
                                env=service_env(MLFLOW_TRACKING_URI=server.uri))
        assert replay.returncode == 0, replay.stdout + replay.stderr
        for key in ("loss", "lr", "images_per_s"):
            steps = sorted(m.step for m in client.get_metric_history(run_id, key))
            assert steps == [r["step"] for r in lines if key in r], f"{key}: MLflow history != metrics.jsonl"
        assert len(client.get_metric_history(run_id, "loss")) == len(losses)
        cpu = sorted(m.step for m in client.get_metric_history(run_id, "system/cpu_utilization_percentage"))
        assert cpu == [p["step"] for p in system], "MLflow's system metrics != system_metrics.jsonl"
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert float(run.data.params["pretrain.epochs"]) == EPOCHS

        # idempotent: a second replay adds nothing
        again = subprocess.run([*mae_cmd(), "replay", str(out)], capture_output=True, text=True, timeout=300,
                               env=service_env(MLFLOW_TRACKING_URI=server.uri))
        assert again.returncode == 0, again.stdout + again.stderr
        assert len(client.get_metric_history(run_id, "loss")) == len(losses)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        server.stop()
