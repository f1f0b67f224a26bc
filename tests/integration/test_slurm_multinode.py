"""Two nodes through the real local SLURM cluster (issue #19 item 1): the workflow itself, `snakemake
--profile slurm` with `resources.smoke.pretrain.nodes: 2` (a --configfile), submits one 2-node job whose
rule starts `python -m mae.launch --nodes=2 --nproc-per-node=1`: one torchrun per node through srun, one
gloo process each, rendezvous on node1.

- Undisturbed, it equals one node x 2 processes (`mae.launch --standalone`, no SLURM) bitwise: weights,
  metrics curve, metrics.json. Augmentation none, as in tests/test_multinode.py (crops are drawn per
  process; masks are not).
- `scancel --signal=USR1 JOBID` after a few records: both nodes' tasks exit 75 at the step rank 0
  checkpointed, the job requeues itself (workflow/scripts/train_job.sh), and the next allocation resumes from
  that step and ends equal to the undisturbed run.

Both workflows run at once (each job holds one of the two CPUs of each node), then the reference.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from integration_support import VENV_BIN, record_timing, stop_session, tail

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# read_jsonl: a file not yet there, or with its last line half written, reads as the records so far
from test_reliability_common import MAE, assert_same_run, mae_env, read_jsonl, run, workflow_copy  # noqa: E402

pytestmark = pytest.mark.slow

ABLATION = "zz_two_nodes"
ABLATION_YAML = """\
title: "two nodes: one smoke pretraining cell on a 2-node SLURM job"
paper_ref: "Table 1a"
paper_file: table1_ablations.csv
evaluations: [finetune]
seeds: [21]
rows:
  - label: "1"
    paper_where: {subtable: "1a", value: "1"}
    set: {data.train_subset: 256, pretrain.epochs: 8, pretrain.augmentation: none, run.log_every_steps: 1,
          run.checkpoint_every_steps: 0}
    evaluations: []
"""
TOTAL_STEPS = 64  # 256 images / batch 32 x 8 epochs; a log record (a sync point of both ranks) each step
TWO_NODES = "resources:\n  smoke:\n    pretrain: {threads: 1, gpu: 0, nodes: 2, mem_mb: 1000, runtime: 10}\n"
TIMEOUT_S = 600


def _start_workflow(root: Path, cluster) -> tuple[subprocess.Popen, Path, Path]:
    copy = workflow_copy(root / "wf").resolve()
    (copy / "ablations" / f"{ABLATION}.yaml").write_text(ABLATION_YAML)
    (copy / "two_nodes.yaml").write_text(TWO_NODES)
    log = root / "snakemake.log"
    # --retries 0: a stopped job must come back by requeueing itself, not as a Snakemake retry
    cmd = ["timeout", "-k", "30", str(TIMEOUT_S), str(VENV_BIN / "snakemake"), "--profile", "slurm",
           "--configfile", "two_nodes.yaml", "--config", "preset=smoke", f"ablations=[{ABLATION}]",
           "--until", "pretrain", "--retries", "0", "--slurm-init-seconds-before-status-checks", "2",
           "--seconds-between-status-checks", "3"]
    proc = subprocess.Popen(cmd, cwd=copy, env=cluster.env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, copy, log


def _run_dir(copy: Path) -> Path:
    dirs = list((copy / "runs" / "smoke" / "pretrain").glob("*"))
    return dirs[0] if len(dirs) == 1 else copy / "no-run-dir-yet"


def _job_id(log: Path) -> str | None:
    found = re.findall(r"submitted with SLURM jobid (\d+)", log.read_text())
    return found[0] if found else None


def _allocations(cluster, job: str) -> list[list[dict]]:
    """Every allocation of `job` (sacct --duplicates: the requeued ones too), each a list of rows: the
    allocation, then its steps. Waits until the last allocation is COMPLETED (slurmctld hands records to
    slurmdbd asynchronously) or 60 s have passed."""
    fields = ["JobID", "State", "ExitCode", "NodeList", "NNodes", "NTasks"]
    deadline = time.monotonic() + 60
    while True:
        allocations = []
        for line in cluster.sacct("-D", "-n", "-P", "-j", job, "-o", ",".join(fields)).splitlines():
            row = dict(zip(fields, line.split("|")))
            if "." not in row["JobID"]:
                allocations.append([])
            allocations[-1].append(row)
        if allocations and allocations[-1][0]["State"] == "COMPLETED" or time.monotonic() > deadline:
            return allocations
        time.sleep(2)


def _training_step(allocation: list[dict]) -> dict:
    """The step that ran mae.launch's srun: the one that is not the batch shell or the jobstep's own."""
    steps = [row for row in allocation[1:] if not row["JobID"].endswith((".batch", ".extern", ".0"))]
    assert len(steps) == 1, allocation
    return steps[0]


@pytest.fixture(scope="module")
def two_node_workflows(slurm_cluster, tmp_path_factory) -> dict:
    """An undisturbed and a signalled 2-node workflow, at the same time, then the 1-node reference."""
    t0 = time.monotonic()
    plain, plain_copy, plain_log = _start_workflow(tmp_path_factory.mktemp("undisturbed"), slurm_cluster)
    hit, hit_copy, hit_log = _start_workflow(tmp_path_factory.mktemp("signalled"), slurm_cluster)
    job = hit_at = first_allocation_log = None
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while hit.poll() is None and time.monotonic() < deadline:
            if len(read_jsonl(_run_dir(hit_copy) / "metrics.jsonl")) >= 3 and _job_id(hit_log):
                job = _job_id(hit_log)
                break
            time.sleep(0.05)
        assert job is not None, f"the signalled job never got to step 3:\n{tail(hit_log, 60)}"
        hit_at = max(r["step"] for r in read_jsonl(_run_dir(hit_copy) / "metrics.jsonl"))
        subprocess.run(["scancel", "--signal=USR1", job], env=slurm_cluster.env, check=True, timeout=60)
        # The rule's log of this allocation: the next one (cred_expire, 10 s, after the requeue) rewrites it
        rule_log = hit_copy / "runs/smoke/logs/pretrain" / f"{_run_dir(hit_copy).name}.log"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and hit.poll() is None:
            text = rule_log.read_text() if rule_log.exists() else ""
            if "requeueing SLURM job" in text:
                first_allocation_log = text
                break
            time.sleep(0.1)
        codes = {"undisturbed": plain.wait(TIMEOUT_S + 60), "signalled": hit.wait(TIMEOUT_S + 60)}
    finally:
        stop_session(plain, 60)
        stop_session(hit, 60)
    workflows_s = time.monotonic() - t0
    assert codes == {"undisturbed": 0, "signalled": 0}, (
        f"{codes}\n--- undisturbed:\n{tail(plain_log, 40)}\n--- signalled:\n{tail(hit_log, 40)}")

    # One node x 2 processes, no SLURM, from the config the workflow rendered and ran
    run_id = _run_dir(plain_copy).name
    config = plain_copy / "runs/smoke/configs/pretrain" / f"{run_id}.yaml"
    reference = tmp_path_factory.mktemp("one_node") / "run"
    result = run([str(VENV_BIN / "python"), "-m", "mae.launch", "--standalone", "--nproc-per-node=2", "--", MAE,
                  "pretrain", "--config", str(config), "--out", str(reference)], env=mae_env())
    assert result.returncode == 0, result.explain()
    record_timing("SLURM 2-node workflows (undisturbed + signalled)", workflows_s)
    record_timing("SLURM 2-node: 1-node reference", result.seconds)
    return {"undisturbed": (plain_copy, plain_log), "signalled": (hit_copy, hit_log), "job": job, "hit_at": hit_at,
            "first_allocation_log": first_allocation_log, "reference": reference}


def test_two_node_slurm_job_equals_one_node_two_processes_bitwise(two_node_workflows, slurm_cluster):
    copy, log = two_node_workflows["undisturbed"]
    job = _job_id(log)
    (allocation,) = _allocations(slurm_cluster, job)
    assert allocation[0]["State"] == "COMPLETED" and allocation[0]["NodeList"] == "node[1-2]", allocation
    # the training ran as one task on each node, not two on node1 (a step shrunk to one node runs 1 process)
    step = _training_step(allocation)
    assert (step["State"], step["NodeList"], step["NNodes"], step["NTasks"]) == ("COMPLETED", "node[1-2]", "2", "2")
    run_dir = _run_dir(copy)
    assert "batch 32 = 2 processes x 16 micro x 1 accumulation" in (run_dir / "train.log").read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == TOTAL_STEPS
    tensors = assert_same_run(two_node_workflows["reference"], run_dir, ignore={"slurm_job_id"})
    assert tensors > 0


def test_two_node_slurm_job_signalled_stops_every_rank_requeues_and_resumes_equal(two_node_workflows, slurm_cluster):
    copy, log = two_node_workflows["signalled"]
    job = two_node_workflows["job"]
    assert re.findall(r"submitted with SLURM jobid (\d+)", log.read_text()) == [job]  # no second submission
    first, *rest = allocations = _allocations(slurm_cluster, job)
    assert len(allocations) == 2 and first[0]["State"] == "REQUEUED" and rest[0][0]["State"] == "COMPLETED", allocations
    # the signalled allocation: one task per node, ended by exit 75 (the highest of its tasks')
    step = _training_step(first)
    assert (step["ExitCode"], step["NodeList"], step["NTasks"]) == ("75:0", "node[1-2]", "2"), first
    assert (_training_step(rest[0])["State"], _training_step(rest[0])["NodeList"]) == ("COMPLETED", "node[1-2]")
    # every task, on each node, exited 75 (srun reports each non-zero task), none sooner or otherwise
    first_log = two_node_workflows["first_allocation_log"]
    assert first_log is not None, "the job never requeued itself"
    tasks = sorted(re.findall(r"srun: error: (node\d): task (\d): Exited with exit code (\d+)", first_log))
    assert tasks == [("node1", "0", "75"), ("node2", "1", "75")], first_log[-3000:]

    run_dir = _run_dir(copy)
    train_log = (run_dir / "train.log").read_text()
    stopped = re.findall(r"received SIGUSR1: checkpointed at step (\d+)", train_log)
    assert len(stopped) == 1, train_log[-3000:]
    stopped_at = int(stopped[0])
    assert two_node_workflows["hit_at"] <= stopped_at < TOTAL_STEPS
    done = json.loads((run_dir / "metrics.json").read_text())
    assert done["resumed_from_step"] == stopped_at and done["steps"] == TOTAL_STEPS
    undisturbed = _run_dir(two_node_workflows["undisturbed"][0])
    assert_same_run(undisturbed, run_dir, ignore={"slurm_job_id"})
    assert_same_run(two_node_workflows["reference"], run_dir, ignore={"slurm_job_id"})
