"""The smoke workflow through the real local SLURM cluster (`snakemake --profile slurm`), tracked
by a real MLflow server: every job is COMPLETED in `sacct`, and each run folder's metrics.json and
MLflow tags carry the SLURM job id it ran under.

The workflow runs in a copy of the working tree (`git ls-files` + untracked, not ignored files), so
it never races teammates' runs or locks in the checkout; the venv (and the editable `mae`) is kept.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from integration_support import REPO_ROOT, TEST_OUTPUT, VENV_BIN, read_jsonl, record_timing, service_env, tail

pytestmark = pytest.mark.integration

ABLATION = "table1c_mask_token"  # 2 rows x (pretrain, finetune, linprobe) = 6 training jobs + aggregation
TIMEOUT_S = 1500


def copy_worktree(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO_ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        src = REPO_ROOT / name
        if src.is_file():  # skips files deleted in the working tree but still in the index
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def sacct_jobs(cluster, since: str, workdir: Path) -> dict[str, dict[str, str]]:
    """Allocations (not steps) started since `since` whose working directory is `workdir`."""
    out = cluster.sacct("-X", "-n", "-P", "-S", since, "-o", "JobID,JobName,State,ExitCode,WorkDir")
    jobs = {}
    for line in out.splitlines():
        job_id, name, state, exit_code, wd = line.split("|", 4)
        if Path(wd) == workdir:
            jobs[job_id] = {"name": name, "state": state, "exit_code": exit_code}
    return jobs


def cancel_leftovers(cluster, workdir: Path) -> None:
    out = subprocess.run(["squeue", "-h", "-o", "%i|%Z"], capture_output=True, text=True, env=cluster.env).stdout
    ids = [line.split("|")[0] for line in out.splitlines() if line.split("|")[-1] == str(workdir)]
    if ids:
        subprocess.run(["scancel", *ids], env=cluster.env)


def test_cluster_runs_a_batch_job(slurm_cluster, tmp_path):
    """sbatch -> the job sees its SLURM_JOB_ID, srun works inside it with every SLURM_* variable
    stripped (as the jobstep plugin does: pitfall 1), and sacct reports it COMPLETED."""
    out = tmp_path / "job.out"
    script = ('echo "$SLURM_JOB_ID" > job_id; '
              'env $(env | sed -n "s/^\\(SLURM_[A-Za-z0-9_]*\\)=.*/-u \\1/p") srun -n1 hostname > srun.out')
    job_id = subprocess.run(["sbatch", "--parsable", "-o", str(out), "-D", str(tmp_path), "--wrap", script],
                            capture_output=True, text=True, check=True, env=slurm_cluster.env,
                            timeout=60).stdout.strip().split(";")[0]
    deadline = time.monotonic() + 120
    state = ""
    while time.monotonic() < deadline:
        state = slurm_cluster.sacct("-X", "-n", "-P", "-j", job_id, "-o", "State").strip()
        if state and state not in ("PENDING", "RUNNING", "COMPLETING"):
            break
        time.sleep(1)
    assert state == "COMPLETED", f"job {job_id}: {state!r}; output:\n{out.read_text() if out.exists() else ''}"
    assert (tmp_path / "job_id").read_text().strip() == job_id
    assert (tmp_path / "srun.out").read_text().strip(), "srun without SLURM_* variables printed nothing"


def test_smoke_workflow_through_slurm(slurm_cluster, mlflow_server, tmp_path):
    snakemake = VENV_BIN / "snakemake"
    assert snakemake.exists(), f"{snakemake} missing"
    work = copy_worktree(tmp_path / "my repo").resolve()  # a space in the path: the job commands quote it
    log = TEST_OUTPUT / "slurm_workflow.log"
    log.parent.mkdir(exist_ok=True)
    since = datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    cmd = ["timeout", "-k", "30", str(TIMEOUT_S),  # pitfall 3: a hung snakemake ignores plain SIGTERM
           str(snakemake), "--profile", "slurm",
           "--config", "preset=smoke", f"ablations=[{ABLATION}]", f"mlflow_uri={mlflow_server.uri}",
           "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "5",
           "--retries", "0", "--slurm-no-account"]  # no --account: jobs run under root's default account
    t0 = time.monotonic()
    try:
        with open(log, "w") as f:
            proc = subprocess.run(cmd, cwd=work, stdout=f, stderr=subprocess.STDOUT, env=slurm_cluster.env,
                                  timeout=TIMEOUT_S + 60)
    finally:
        cancel_leftovers(slurm_cluster, work)
    record_timing("smoke workflow through SLURM", time.monotonic() - t0)
    assert proc.returncode == 0, f"snakemake --profile slurm exited {proc.returncode}:\n{tail(log, 80)}"

    # every job snakemake submitted ran under SLURM and is COMPLETED in the accounting database
    submitted = set(re.findall(r"submitted with SLURM jobid (\d+)", log.read_text()))
    assert len(submitted) >= 6, f"expected at least 6 SLURM jobs, the log names {sorted(submitted)}"
    deadline = time.monotonic() + 60  # slurmctld hands job records to slurmdbd asynchronously
    while True:
        jobs = sacct_jobs(slurm_cluster, since, work)
        if set(jobs) >= submitted and all(j["state"] == "COMPLETED" for j in jobs.values()):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(2)
    assert set(jobs) == submitted, f"sacct jobs {sorted(jobs)} != submitted {sorted(submitted)}"
    bad = {k: v for k, v in jobs.items() if v["state"] != "COMPLETED" or v["exit_code"] != "0:0"}
    assert not bad, f"jobs not COMPLETED with 0:0: {bad}"

    # each run folder: slurm_job_id in metrics.json, the same id as an MLflow tag, full metric history
    manifest = json.loads((work / "runs/smoke/manifest.json").read_text())
    run_dirs = sorted({work / e["run_dir"] for e in manifest})
    assert len(run_dirs) == 6, run_dirs
    client = mlflow_server.client()
    for run_dir in run_dirs:
        summary = json.loads((run_dir / "metrics.json").read_text())
        assert summary["status"] == "completed"
        job_id = str(summary.get("slurm_job_id"))
        assert job_id in submitted, f"{run_dir}: slurm_job_id={job_id} is not one of this workflow's jobs"
        assert jobs[job_id]["state"] == "COMPLETED"
        run_id = summary.get("mlflow_run_id")
        assert run_id, f"{run_dir}: no mlflow_run_id in metrics.json (tracking off?)"
        mlrun = client.get_run(run_id)
        assert mlrun.info.status == "FINISHED"
        tags = mlrun.data.tags
        assert tags["mae.slurm_job_id"] == job_id
        assert tags["mae.stage"] == summary["stage"]
        assert tags["mae.preset"] == "smoke"
        assert ABLATION in tags["mae.ablations"].split(",")
        lines = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
        assert len(client.get_metric_history(run_id, "loss")) == len(lines) > 0
    assert len({json.loads((d / "metrics.json").read_text())["slurm_job_id"] for d in run_dirs}) == 6

    # the aggregation ran too (its jobs are among the COMPLETED ones above)
    assert (work / f"results/smoke/tables/{ABLATION}.csv").is_file()


def test_data_missing_on_the_submitting_machine_is_a_warning_and_the_jobs_say_why(slurm_cluster, tmp_path):
    """Jobs sent to a cluster read their data on its nodes, which may see paths this machine does not:
    a data_root missing here is one warning line, not a refusal (run locally it is exit 2 before any
    job: test_workflow.py), and the jobs say on their own where it is missing."""
    work = copy_worktree(tmp_path / "wf").resolve()
    missing = tmp_path / "not-here"
    cmd = ["timeout", "-k", "30", "600", str(VENV_BIN / "snakemake"), "--profile", "slurm",
           "--config", "preset=tiny", f"data_root={missing}", "ablations=[fig5_mask_ratio]", "seeds=0",
           "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "5",
           "--retries", "0", "--slurm-no-account"]
    try:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=slurm_cluster.env, timeout=660)
    finally:
        cancel_leftovers(slurm_cluster, work)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    line = (f"data.root='{missing}' is invalid for data.name='fashion_mnist': expected an existing folder there")
    assert f"warning: not on this machine, so the jobs must find it on theirs: {line}" in output, output[-3000:]
    assert re.search(r"submitted with SLURM jobid \d+", output), output[-3000:]
    job_logs = sorted((work / "runs/tiny/logs/pretrain").glob("*.log"))
    assert job_logs and all(f"error: {line}" in log.read_text() for log in job_logs), job_logs
