"""Several `mae pretrain` smoke jobs started at once, all logging to one embedded sqlite MLflow store that
does not exist yet (the README's by-hand default: nobody ran the workflow's prepare_mlflow first): the
jobs race to create and migrate the store and to create the experiment; no run and no metric point is
lost, no job warns that tracking failed, and each run's MLflow history equals its metrics.jsonl."""
from __future__ import annotations

import pytest

from test_reliability_common import (LONG_SMOKE, fault, mae_env, pretrain_cmd, read_jsonl,  # noqa: F401
                                     run_many)

JOBS = 4
EXPERIMENT = "reliability-concurrency"  # not created beforehand: the jobs race to create it too


@pytest.mark.slow
def test_parallel_jobs_on_a_new_sqlite_store_lose_no_run_or_metric(tmp_path, fault):
    fault.describe("concurrency", f"{JOBS} mae pretrain jobs started at once (24 steps, a record per step) "
                   "on a sqlite MLflow store that does not exist yet",
                   "every job exits 0 without a tracking warning; one FINISHED MLflow run per job; every "
                   "(metric, step) of every metrics.jsonl present with the same value")
    from mlflow.tracking import MlflowClient
    db = tmp_path / "store" / "mlflow.db"
    assert not db.exists()
    uri = f"sqlite:///{db}"
    outs = [tmp_path / f"job{seed}" for seed in range(JOBS)]
    cmds = [pretrain_cmd(out, *LONG_SMOKE, "tracking.enabled=true", f"tracking.uri={uri}",
                         f"tracking.experiment={EXPERIMENT}", f"run.seed={seed}") for seed, out in enumerate(outs)]
    results = run_many(cmds, workers=JOBS, env=mae_env())
    for result in results:
        assert result.returncode == 0, result.explain()
        warned = [line for line in (result.stdout + result.stderr).splitlines() if "tracking" in line.lower()
                  and ("WARNING" in line or "failed" in line)]
        assert not warned, f"tracking failed in a job: {warned}\n{result.explain()}"

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id], max_results=100)}
    assert len(runs) == JOBS, f"{len(runs)} MLflow runs for {JOBS} jobs"
    points = 0
    for out in outs:
        # the run folder's record of its MLflow run (metrics.json has it only when the run id came before the end)
        run_id = (out / "mlflow_run_id").read_text().strip()
        assert run_id in runs, f"{out.name}: its MLflow run {run_id} is missing"
        info = runs[run_id]
        assert info.info.status == "FINISHED", f"{out.name}: status {info.info.status}"
        for record in read_jsonl(out / "metrics.jsonl"):
            for key, value in record.items():
                if key in ("step", "epoch"):
                    continue
                history = {m.step: m.value for m in client.get_metric_history(run_id, key)}
                assert record["step"] in history, f"{out.name}: {key} at step {record['step']} lost"
                assert history[record["step"]] == pytest.approx(value, rel=1e-12), f"{out.name}: {key}@{record['step']}"
                points += 1
        assert "final/final_loss" in info.data.metrics
    fault.observe(f"{JOBS} jobs exit 0, no tracking warning; {len(runs)} FINISHED runs; all {points} (metric, step) points of the "
                  f"metrics.jsonl files found in MLflow with equal values; longest job {max(r.seconds for r in results):.0f} s")
