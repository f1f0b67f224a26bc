"""Through the real local SLURM cluster: a running workflow job is signalled as SLURM does before a time
limit (`scancel --signal=USR1 JOBID`) or requeued (`scontrol requeue JOBID`), and the workflow still
completes with results equal to an undisturbed run (official MAE pain 9). Also: the cluster's daemons
and its MariaDB listen on 127.0.0.1 only.

The workflow runs from a throw-away copy (tests/test_reliability_common.py: workflow_copy)
with one extra ablation file: a single pretraining cell, long enough (64 steps) to be hit mid-run.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_reliability_common import (MAE, assert_same_run, fault, read_jsonl, run, workflow_copy)  # noqa: E402,F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ABLATION = "zz_reliability_slurm"
ABLATION_YAML = """\
title: "reliability: one pretraining cell hit by SLURM mid-run"
paper_ref: "Table 1a"
paper_file: table1_ablations.csv
evaluations: [finetune]
seeds: [%d]
rows:
  - label: "1"
    paper_where: {subtable: "1a", value: "1"}
    set: {data.train_subset: 256, pretrain.epochs: 8, run.checkpoint_every_steps: 3, run.log_every_steps: 1}
    evaluations: []
"""
WORKFLOW_TIMEOUT_S = 900


def _workflow_copy(root: Path, seed: int) -> Path:
    copy = workflow_copy(root / "wf")
    (copy / "ablations" / f"{ABLATION}.yaml").write_text(ABLATION_YAML % seed)
    return copy


def _jobs_in(cluster, folder: Path) -> list[tuple[str, str]]:
    out = subprocess.run(["squeue", "-h", "-o", "%i|%Z|%T"], capture_output=True, text=True, env=cluster.env,
                         timeout=60).stdout
    return [(job, state) for job, workdir, state in (line.split("|") for line in out.splitlines() if line.count("|") == 2)
            if Path(workdir).resolve() == folder.resolve()]


def _run_dir(copy: Path) -> Path:
    dirs = list((copy / "runs" / "smoke" / "pretrain").glob("*"))
    return dirs[0] if len(dirs) == 1 else Path("/nonexistent")


ACTIONS = ["scancel --signal=USR1", "scontrol requeue"]


@pytest.fixture(scope="module", params=ACTIONS)
def hit_workflow(request, slurm_cluster, tmp_path_factory) -> dict:
    """Run the one-cell workflow through SLURM and hit its pretrain job mid-run with `action`."""
    action = request.param
    tmp = tmp_path_factory.mktemp("slurm_" + action.split()[0])
    copy = _workflow_copy(tmp, 11 if action.startswith("scancel") else 12)
    log = tmp / "snakemake.log"
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--profile", "slurm", "--config", "preset=smoke",
           f"ablations=[{ABLATION}]", "--until", "pretrain", "--slurm-init-seconds-before-status-checks", "2",
           "--seconds-between-status-checks", "3"]
    t0 = time.monotonic()
    proc = subprocess.Popen(["timeout", "-k", "30", str(WORKFLOW_TIMEOUT_S), *cmd], cwd=copy, env=slurm_cluster.env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    job, hit_at, run_dir = None, None, Path("/nonexistent")
    try:
        deadline = time.monotonic() + WORKFLOW_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            run_dir = _run_dir(copy)
            running = [j for j, state in _jobs_in(slurm_cluster, copy) if state == "RUNNING"]
            if running and len(read_jsonl(run_dir / "metrics.jsonl")) >= 10:
                job = running[0]
                break
            time.sleep(0.5)
        if job is not None:
            hit_at = max(r["step"] for r in read_jsonl(run_dir / "metrics.jsonl"))
            hit = subprocess.run([*action.split(), job], capture_output=True, text=True, env=slurm_cluster.env,
                                 timeout=60)
            assert hit.returncode == 0, hit.stderr
        code = proc.wait(WORKFLOW_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    states = (slurm_cluster.sacct("-n", "-P", "-j", job, "-o", "JobID,State,ExitCode").strip().replace("\n", " / ")
              if job else "")
    return {"action": action, "copy": copy, "log": log, "code": code, "job": job, "hit_at": hit_at,
            "run_dir": run_dir, "seconds": time.monotonic() - t0, "sacct": states}


def test_slurm_signal_or_requeue_mid_run_completes_equal(hit_workflow, tmp_path, fault):
    h = hit_workflow
    fault.describe("SLURM", f"`{h['action']} JOBID` on the running pretrain job of a workflow "
                   "(snakemake --profile slurm)",
                   "the workflow completes; the run resumed from a checkpoint; weights and metrics equal "
                   "to an undisturbed run")
    assert h["job"] is not None, f"no running job reached step 10\n{h['log'].read_text()[-4000:]}"
    assert h["code"] == 0, f"workflow exit {h['code']}\n{h['log'].read_text()[-5000:]}"
    run_dir = h["run_dir"]
    done = json.loads((run_dir / "metrics.json").read_text())
    assert done["steps"] == 64
    assert 0 < done.get("resumed_from_step", 0) <= h["hit_at"] + 20, f"no resume recorded: {done}"
    reference = tmp_path / "undisturbed"
    config = h["copy"] / "runs" / "smoke" / "configs" / "pretrain" / f"{run_dir.name}.yaml"
    result = run([MAE, "pretrain", "--config", str(config), "--out", str(reference)])
    assert result.returncode == 0, result.explain()
    tensors = assert_same_run(reference, run_dir, ignore={"slurm_job_id"})  # the reference ran outside SLURM
    fault.observe(f"hit job {h['job']} after step {h['hit_at']}; sacct: {h['sacct']}; workflow exit 0 after "
                  f"{h['seconds']:.0f} s; resumed from step {done['resumed_from_step']}; {tensors} tensors "
                  f"torch.equal and metrics equal to an undisturbed run")


def test_slurm_signalled_mae_checkpoints_at_the_signal(hit_workflow, fault):
    """The jobstep snakemake and the job's shell ignore SIGUSR1 and SIGTERM (workflow/rules/common.smk),
    so `mae` is the one process of the step that acts on them: it checkpoints at the signalled step, exits
    75, and the next allocation (the job requeues itself after USR1; after an outside requeue's SIGTERM,
    that requeue's) resumes from exactly that step: nothing is recomputed."""
    h = hit_workflow
    signal_name = "SIGUSR1" if h["action"].startswith("scancel") else "SIGTERM"  # a requeue terminates the step
    fault.describe("SLURM", f"`{h['action']} JOBID`: how the hit job step ends",
                   f"mae handles {signal_name}: checkpoint at the signalled step, exit 75; the retry resumes "
                   "from that step (no step recomputed)")
    assert h["job"] is not None and h["code"] == 0
    log = (h["run_dir"] / "train.log").read_text()  # appended by every attempt
    stopped = [line.split(" WARNING ", 1)[-1] for line in log.splitlines() if f"received {signal_name}" in line]
    assert stopped, f"mae never handled {signal_name} (killed before its checkpoint); sacct: {h['sacct']}"
    at_step = int(stopped[0].split("checkpointed at step ", 1)[1].split()[0])
    done = json.loads((h["run_dir"] / "metrics.json").read_text())
    assert done["resumed_from_step"] == at_step, (at_step, done)
    assert h["hit_at"] <= at_step <= h["hit_at"] + 20, (h["hit_at"], at_step)
    fault.observe(f"sacct: {h['sacct']}; mae: {stopped[0][:70]}...; the retry resumed from step "
                  f"{done['resumed_from_step']} (signal sent after step {h['hit_at']}): 0 steps recomputed")


def _step_snakemake(copy: Path):
    """The job step's `python -m snakemake` of the workflow in `copy` (started by slurmstepd), or None."""
    import psutil
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if ("snakemake" in cmdline and "--target-jobs" in cmdline and proc.info["cwd"]
                    and Path(proc.info["cwd"]).resolve() == copy.resolve() and proc.parent().name() == "slurmstepd"):
                return proc
        except psutil.Error:
            continue
    return None


def _caught_signals(pid: int) -> set[int]:
    mask = int(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("SigCgt:")), 16)
    return {sig for sig in range(1, 65) if mask >> (sig - 1) & 1}


def test_slurm_signal_at_the_job_steps_start_requeues_the_job(slurm_cluster, tmp_path, fault):
    """The signal lands while the job step's `python -m snakemake` is still starting, before it has parsed
    workflow/rules/common.smk and before `mae` exists. Before workflow/slurm_step_start this killed the
    step: the job ended FAILED and spent a retry (reproduced: `scancel --signal=USR1` 3.0 and 3.6 s after
    RUNNING; this test failed so). Now the step's interpreter remembers the signal from its first moment,
    the `mae` it starts stops at once (exit 75), and the job requeues itself as at any other moment; the
    next allocation runs the pretraining to its end. No retry is spent (`--retries 0`)."""
    fault.describe("SLURM", "`scancel --signal=USR1 JOBID` 0.3 s after the job step's `python -m snakemake` "
                   "started (before it parsed the workflow; `mae` not yet started)",
                   "the step does not die of it: `mae` stops at once (exit 75), the job requeues itself "
                   "(REQUEUED, then COMPLETED), no retry spent, the run finishes")
    copy = _workflow_copy(tmp_path, 13)
    log = tmp_path / "snakemake.log"
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--profile", "slurm", "--config", "preset=smoke",
           f"ablations=[{ABLATION}]", "--until", "pretrain", "--retries", "0",
           "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "3"]
    proc = subprocess.Popen(["timeout", "-k", "30", str(WORKFLOW_TIMEOUT_S), *cmd], cwd=copy, env=slurm_cluster.env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    step, job, caught, started_children = None, None, set(), None
    try:
        deadline = time.monotonic() + WORKFLOW_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None and step is None:
            step = _step_snakemake(copy)
            time.sleep(0.05)
        assert step is not None, f"no job step started\n{log.read_text()[-4000:]}"
        time.sleep(0.3)
        caught, started_children = _caught_signals(step.pid), step.children()
        (job,) = [j for j, state in _jobs_in(slurm_cluster, copy) if state == "RUNNING"]
        hit = subprocess.run(["scancel", "--signal=USR1", job], capture_output=True, text=True,
                             env=slurm_cluster.env, timeout=60)
        assert hit.returncode == 0, hit.stderr
        code = proc.wait(WORKFLOW_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not started_children, f"signalled too late to test the start: the step had started {started_children}"
    deadline = time.monotonic() + 60  # slurmctld hands records to slurmdbd asynchronously
    while (states := slurm_cluster.sacct("-X", "-D", "-n", "-P", "-j", job, "-o", "State").split())[-1:] != ["COMPLETED"]:
        if time.monotonic() > deadline:
            break
        time.sleep(2)
    assert code == 0, f"workflow exit {code}; sacct {states}\n{log.read_text()[-5000:]}"
    assert states == ["REQUEUED", "COMPLETED"], states
    done = json.loads((_run_dir(copy) / "metrics.json").read_text())
    assert done["steps"] == 64 and "resumed_from_step" not in done, done  # the first allocation trained nothing
    assert {signal.SIGUSR1, signal.SIGTERM} <= caught, caught
    fault.observe(f"signalled job {job} 0.3 s after its step's snakemake (pid {step.pid}) started, before it "
                  f"had started the rule's shell (it already caught USR1 and TERM); sacct: {' / '.join(states)}; "
                  f"workflow exit 0 with --retries 0; {done['steps']} steps, trained in the second allocation")


def test_slurm_and_mariadb_listen_on_loopback_only(slurm_cluster, fault):
    import psutil
    fault.describe("security", "scripts/slurm_cluster.sh daemons: slurmctld 6817, slurmd 6818 (node1) and 6820 "
                   "(node2), slurmdbd 6819, MariaDB 33306", "every listening socket on those ports is bound to 127.0.0.1")
    ports = {6817: "slurmctld", 6818: "slurmd node1", 6820: "slurmd node2", 6819: "slurmdbd", 33306: "mariadb"}
    found = {}
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.laddr.port in ports:
            found.setdefault(ports[c.laddr.port], set()).add(c.laddr.ip)
    assert set(found) == set(ports.values()), f"not listening: {set(ports.values()) - set(found)}"
    wrong = {name: ips for name, ips in found.items() if ips != {"127.0.0.1"}}
    assert not wrong, wrong
    fault.observe("; ".join(f"{name}: {sorted(ips)}" for name, ips in sorted(found.items())))
