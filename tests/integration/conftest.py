"""Session fixtures for the integration tests: a real SLURM cluster and real MLflow servers, started
and stopped through scripts/slurm_cluster.sh and scripts/mlflow_server.sh (helpers in
integration_support.py).

A service that genuinely cannot start here (not root, no SLURM) skips its tests with the reason;
with CI=true the same situation FAILS the tests: CI must run them all.
Set MAE_TEST_KEEP_SERVICES=1 to leave the services running after the session (for debugging).
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from integration_support import (REPO_ROOT, TEST_OUTPUT, MlflowServer, PretrainRun, SlurmCluster,
                                 mae_pretrain, record_timing, run_logged, service_env, tail, unavailable)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


# ---------------------------------------------------------------------------------------------------
# SLURM
@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> SlurmCluster:
    script = REPO_ROOT / "scripts" / "slurm_cluster.sh"
    state = REPO_ROOT / ".services" / "slurm"
    env = service_env(SLURM_CONF=str(state / "etc" / "slurm.conf"))
    up = subprocess.run([script, "status", "--state-dir", state], capture_output=True, text=True, env=env)
    if up.returncode == 0:
        yield SlurmCluster(state, started_here=False, env=env)   # somebody's running cluster: keep it
        return
    if os.geteuid() != 0:
        unavailable("the single-node SLURM cluster needs root (daemons run as SlurmUser=root and "
                    "/etc/slurm/slurm.conf must point at the generated config)")
    log = TEST_OUTPUT / "slurm_cluster_start.log"
    t0 = time.monotonic()
    proc = run_logged([str(script), "start", "--state-dir", str(state)], log, timeout=600, env=env)
    record_timing("slurm cluster start", time.monotonic() - t0)
    if proc.returncode != 0 and not Path("/usr/sbin/slurmctld").exists():
        unavailable(f"SLURM is not installed and could not be installed here:\n{tail(log, 10)}")
    if proc.returncode != 0:
        pytest.fail(f"scripts/slurm_cluster.sh start failed (exit {proc.returncode}):\n{tail(log)}",
                    pytrace=False)
    try:
        yield SlurmCluster(state, started_here=True, env=env)
    finally:
        if not os.environ.get("MAE_TEST_KEEP_SERVICES"):
            subprocess.run([script, "stop", "--state-dir", state], env=env, timeout=120)


# ---------------------------------------------------------------------------------------------------
# MLflow
@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> MlflowServer:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow") / "server")
    server.start(timing="mlflow server start (fresh sqlite)")
    try:
        yield server
    finally:
        if not os.environ.get("MAE_TEST_KEEP_SERVICES"):
            server.stop()


# ---------------------------------------------------------------------------------------------------
# `mae` runs
PRETRAIN_ROWS = (("fig5_mask_ratio", "50"), ("fig5_mask_ratio", "75"))  # mask ratios 0.5 and 0.75


@pytest.fixture(scope="session")
def pretrain_runs(mlflow_server, tmp_path_factory) -> list[PretrainRun]:
    """Two smoke pretraining runs of the workflow's grid (Fig. 5's mask ratios 0.5 and 0.75), run as the
    workflow runs them (`mae pretrain --config <rendered cell config>`, `mlflow_uri` given to the grid),
    tracked by the session's MLflow server under the names and tags the workflow renders."""
    import yaml

    from workflow.grid import build_grid
    from workflow.scripts.render_config import write
    settings = yaml.safe_load((REPO_ROOT / "workflow" / "config.yaml").read_text())
    grid = build_grid({**settings, "preset": "smoke", "ablations": [PRETRAIN_ROWS[0][0]],
                       "mlflow_uri": mlflow_server.uri}, REPO_ROOT)
    base = tmp_path_factory.mktemp("pretrain_runs")
    runs = []
    t0 = time.monotonic()
    for ablation, row in PRETRAIN_ROWS:
        entry = next(e for e in grid.manifest if (e["ablation"], e["row"], e["stage"]) == (ablation, row, "pretrain"))
        cell = grid.cells["pretrain", entry["run_id"]]
        config = base / f"{cell.run_id}.yaml"
        write(str(config), cell.config)
        run = PretrainRun(base / cell.run_id, cell.config["tracking"]["run_name"], [], cell.config)
        # A smoke run samples for about a second on a fast CPU: at the default cadence (1 s) that is one
        # system-metrics point, which the UI draws as a bar without the line legend test_mlflow_ui reads
        # (seen once in CI). Five points a second (MLflow's own settings) give every run a curve.
        proc = mae_pretrain(run.out, [], mlflow_server.uri, config=config,
                            MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="0.2",
                            MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING="1")
        assert proc.returncode == 0, f"mae pretrain failed (exit {proc.returncode}):\n" \
                                     f"{tail(base / f'{cell.run_id}.stdout.log')}"
        assert run.metrics["run_id"] == cell.run_id, "the rendered tracking keys changed the run id"
        runs.append(run)
    record_timing("2 smoke pretrain runs to the server", time.monotonic() - t0)
    return runs
