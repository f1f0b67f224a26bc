"""A real `mlflow server` (127.0.0.1, sqlite backend) receives `mae pretrain` runs through the
tracking URI; read back with MlflowClient: params, tags and the full metric histories."""
from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.integration


def test_server_health_and_backend(mlflow_server):
    import urllib.request

    with urllib.request.urlopen(f"{mlflow_server.uri}/health", timeout=10) as r:
        assert r.read().strip() == b"OK"
    assert (mlflow_server.state_dir / "mlflow.db").is_file(), "the server must use the sqlite backend in its state dir"


def test_pretrain_runs_reach_the_server(mlflow_server, pretrain_runs):
    client = mlflow_server.client()
    exp = client.get_experiment_by_name("it-server")
    assert exp is not None, "experiment it-server missing on the server"
    on_server = {r.info.run_id: r for r in client.search_runs([exp.experiment_id])}
    assert len(on_server) == len(pretrain_runs)

    for run in pretrain_runs:
        summary = run.metrics
        assert summary["status"] == "completed"
        run_id = summary.get("mlflow_run_id")
        assert run_id in on_server, f"{run.name}: metrics.json mlflow_run_id={run_id!r} is not on the server"
        assert (run.out / "mlflow_run_id").read_text().strip() == run_id
        mlrun = client.get_run(run_id)
        assert mlrun.info.status == "FINISHED"
        assert mlrun.info.run_name == run.name

        # params: the flattened resolved config, values as strings
        params = mlrun.data.params
        ratio = next(o.split("=", 1)[1] for o in run.overrides if o.startswith("model.mask_ratio="))
        assert float(params["model.mask_ratio"]) == float(ratio)
        assert params["model.arch"] == "mae_vit_micro_patch7_dec64d1b"
        assert int(params["pretrain.epochs"]) == summary["epochs"]
        assert params["data.name"] == "synthetic"

        tags = mlrun.data.tags
        assert tags["mae.stage"] == "pretrain"
        assert tags["mae.run_id"] == summary["run_id"]
        assert tags["mae.host"] == summary["host"]

        # metric histories: one point per metrics.jsonl line, same steps, same values
        steps = run.steps
        assert len(steps) == summary["steps"] > 0
        for key in ("loss", "lr"):
            local = [(s["step"], s[key]) for s in steps if key in s]
            history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
            assert [m.step for m in history] == [st for st, _ in local], f"{run.name}: {key} steps differ"
            for m, (_, v) in zip(history, local):
                assert math.isclose(m.value, v, rel_tol=1e-6, abs_tol=1e-12), (key, m.step, m.value, v)
        final = client.get_metric_history(run_id, "final/final_loss")
        assert final and math.isclose(final[-1].value, summary["final_loss"], rel_tol=1e-6)

    # the two runs differ in what they were asked to differ in
    ratios = {client.get_run(r.metrics["mlflow_run_id"]).data.params["model.mask_ratio"] for r in pretrain_runs}
    assert len(ratios) == 2
