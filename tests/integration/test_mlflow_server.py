"""A real `mlflow server` (127.0.0.1, sqlite backend) receives `mae pretrain` runs of the workflow's grid
through the tracking URI; read back with MlflowClient: the experiment's kind, run names, params, tags,
the full metric histories and the system metrics."""
from __future__ import annotations

import math

import psutil
import pytest

from integration_support import read_jsonl

pytestmark = pytest.mark.integration


def test_server_health_and_backend(mlflow_server):
    import urllib.request

    with urllib.request.urlopen(f"{mlflow_server.uri}/health", timeout=10) as r:
        assert r.read().strip() == b"OK"
    assert (mlflow_server.state_dir / "mlflow.db").is_file(), "the server must use the sqlite backend in its state dir"


def test_pretrain_runs_reach_the_server(mlflow_server, pretrain_runs):
    from mae.tracking import EXPERIMENT_KIND_TAG, ui_url
    client = mlflow_server.client()
    name = pretrain_runs[0].config["tracking"]["experiment"]
    exp = client.get_experiment_by_name(name)
    assert exp is not None, f"experiment {name} missing on the server"
    # a model-training experiment, as MLflow's UI marks one
    assert exp.tags.get(EXPERIMENT_KIND_TAG) == "custom_model_development", exp.tags
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
        # named by the workflow after what it is, e.g. "fig5_mask_ratio · 50 · seed 0 · pretrain"
        assert mlrun.info.run_name == run.name
        assert run.name.startswith(f"fig5_mask_ratio · {round(run.config['model']['mask_ratio'] * 100)}")
        assert run.name.endswith(" · seed 0 · pretrain")
        # the page the run's log links to opens on the training runs
        assert f"tracking: MLflow run {ui_url(mlflow_server.uri, exp.experiment_id, run_id)}" in \
            (run.out / "train.log").read_text()

        # params: the flattened resolved config, values as strings
        params = mlrun.data.params
        assert float(params["model.mask_ratio"]) == run.config["model"]["mask_ratio"]
        assert params["model.arch"] == "mae_vit_micro_patch7_dec64d1b"
        assert int(params["pretrain.epochs"]) == summary["epochs"]
        assert params["data.name"] == "synthetic"

        tags = mlrun.data.tags
        assert tags["mae.stage"] == "pretrain"
        assert tags["mae.run_id"] == summary["run_id"]  # the content-hash run id stays a tag
        assert tags["mae.host"] == summary["host"]
        assert tags["mae.seed"] == "0" and tags["mae.preset"] == "smoke"
        assert tags["mae.rows"].split("; ")[0] == f"fig5_mask_ratio: {round(run.config['model']['mask_ratio'] * 100)}"

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

        # system metrics: MLflow's own keys, every point of system_metrics.jsonl, plausible values
        system = read_jsonl(run.out / "system_metrics.jsonl")
        assert system, f"{run.name}: no system metrics sampled"
        for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
            history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
            assert [(m.step, m.value) for m in history] == [(p["step"], p[key]) for p in system], key
        assert 0 < mlrun.data.metrics["system/system_memory_usage_megabytes"] < psutil.virtual_memory().total / 1e6

    # the two runs differ in what they were asked to differ in
    ratios = {client.get_run(r.metrics["mlflow_run_id"]).data.params["model.mask_ratio"] for r in pretrain_runs}
    assert len(ratios) == 2
