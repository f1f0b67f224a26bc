"""A pretraining longer than its SLURM time limit runs as a chain of allocations (issue #19 item 3) and
ends equal to an uninterrupted run.

One smoke pretraining cell, sized from this machine's measured throughput to need several minutes of
compute, runs through the real cluster with a 1-minute time limit (`--set-resources pretrain:runtime=1`)
and SIGUSR1 1 s before it (`slurm_signal_before_s=1`; SLURM sends it up to a minute early, here between
about 30 and 60 s into the allocation). Each allocation: `mae` checkpoints at the signal and exits 75, the
job requeues itself (workflow/scripts/train_job.sh), the next allocation resumes. Snakemake runs with
`--retries 0`, so every segment after the first is a requeue of the one SLURM job (a FAILED allocation
would end the workflow); the test asks for at least 3 segments, all but the last REQUEUED. Each checkpoint
at the signal is resumed by a later allocation; an allocation signalled before `mae` trained (its start-up)
requeues without a resume line.

The site values come the README's way: a profile `mysite` in the user's config folder (XDG_CONFIG_HOME
here) given after `--profile slurm`, naming partition `batch` and the project account `mae` (not the
user's default account), on a cluster that enforces associations.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from integration_support import REPO_ROOT, TEST_OUTPUT, VENV_BIN, read_jsonl, record_timing, stop_session, tail

sys.path.insert(0, str(REPO_ROOT / "tests"))
from test_reliability_common import MAE, assert_same_run, mae_env, run, start, workflow_copy  # noqa: E402

pytestmark = pytest.mark.slow

ABLATION = "zz_slurm_chain"
TRAIN_SUBSET, BATCH = 512, 32          # smoke batch size 32: 16 steps per epoch
COMPUTE_S = 170                        # uninterrupted compute to aim for, at the measured speed: > 3 segments
                                       # of at most ~50 s of compute (signal by 59 s, minus the job's startup)
TIMEOUT_S = 1500
SITE = {"default-resources": {"slurm_partition": "batch", "slurm_account": "mae"}}


def steps_per_second(tmp: Path) -> float:
    """This machine's smoke pretraining speed now (a short run; its steps after the first epoch)."""
    out = tmp / "calibrate"
    result = run([MAE, "pretrain", "--config", str(REPO_ROOT / "workflow/presets/smoke.yaml"), "--out", str(out),
                  f"data.train_subset={TRAIN_SUBSET}", "pretrain.epochs=6", "run.log_every_steps=1"])
    assert result.returncode == 0, result.explain()
    speeds = [r["images_per_s"] for r in read_jsonl(out / "metrics.jsonl") if r["step"] > TRAIN_SUBSET // BATCH]
    return sum(speeds) / len(speeds) / BATCH


def ablation_yaml(epochs: int) -> str:
    return yaml.safe_dump({
        "title": "time-limit chain: one pretraining cell longer than its 1-minute SLURM time limit",
        "paper_ref": "Table 1a", "paper_file": "table1_ablations.csv", "evaluations": ["finetune"], "seeds": [13],
        "rows": [{"label": "1", "paper_where": {"subtable": "1a", "value": "1"}, "evaluations": [],
                  "set": {"data.train_subset": TRAIN_SUBSET, "pretrain.epochs": epochs,
                          "run.checkpoint_every_steps": 500, "run.log_every_steps": 10}}]})


def test_run_longer_than_the_time_limit_chains_allocations_and_equals_an_uninterrupted_run(slurm_cluster, tmp_path):
    speed = steps_per_second(tmp_path)
    epochs = math.ceil(COMPUTE_S * speed / (TRAIN_SUBSET // BATCH))
    copy = workflow_copy(tmp_path / "wf").resolve()
    (copy / "ablations" / f"{ABLATION}.yaml").write_text(ablation_yaml(epochs))
    config_home = tmp_path / "config"
    (config_home / "snakemake" / "mysite").mkdir(parents=True)
    (config_home / "snakemake" / "mysite" / "config.v8+.yaml").write_text(yaml.safe_dump(SITE))
    env = {**slurm_cluster.env, "XDG_CONFIG_HOME": str(config_home)}
    log = TEST_OUTPUT / "slurm_chain.log"
    log.parent.mkdir(exist_ok=True)
    cmd = ["timeout", "-k", "30", str(TIMEOUT_S), str(VENV_BIN / "snakemake"), "--profile", "slurm", "--profile",
           "mysite", "--config", "preset=smoke", f"ablations=[{ABLATION}]", "slurm_signal_before_s=1",
           "--set-resources", "pretrain:runtime=1", "--until", "pretrain", "--retries", "0",
           "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "3"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=copy, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    reference = None
    try:
        # The uninterrupted reference runs meanwhile (outside SLURM), from the config the workflow rendered
        # (complete once the pretrain job is submitted).
        configs = copy / "runs" / "smoke" / "configs" / "pretrain"
        while proc.poll() is None and reference is None:
            rendered = list(configs.glob("*.yaml")) if "submitted with SLURM jobid" in log.read_text() else []
            if rendered:
                reference = (tmp_path / "reference", rendered[0])
                # niced: it catches up while the chain's job waits between allocations and does not slow
                # the segments (fewer steps per segment would only add segments and minutes)
                ref_proc = start(["nice", "-n", "19", MAE, "pretrain", "--config", str(rendered[0]), "--out", str(reference[0])],
                                 tmp_path / "reference.log", env=mae_env())
            time.sleep(1)
        code = proc.wait(TIMEOUT_S + 60)
    finally:
        stop_session(proc)
        out = subprocess.run(["squeue", "-h", "-o", "%i|%Z"], capture_output=True, text=True, env=env).stdout
        leftovers = [line.split("|")[0] for line in out.splitlines() if line.split("|")[-1] == str(copy)]
        if leftovers:
            subprocess.run(["scancel", *leftovers], env=env)
    seconds = time.monotonic() - t0
    record_timing("SLURM time-limit chain (workflow)", seconds)
    assert code == 0, f"snakemake exited {code}:\n{tail(log, 80)}"
    assert reference is not None, "the workflow never rendered its config"
    assert ref_proc.wait(600) == 0, tail(tmp_path / "reference.log")

    (run_dir,) = (copy / "runs" / "smoke" / "pretrain").iterdir()
    done = json.loads((run_dir / "metrics.json").read_text())
    assert done["steps"] == epochs * TRAIN_SUBSET // BATCH
    train_log = (run_dir / "train.log").read_text()
    resumes = train_log.count("resuming from ")
    signalled = re.findall(r"received SIGUSR1: checkpointed at step (\d+)", train_log)

    # Every allocation of every submitted job: `sacct --duplicates` lists the requeued ones too.
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", log.read_text())
    deadline = time.monotonic() + 60  # slurmctld hands records to slurmdbd asynchronously
    while True:
        rows = [line.split("|") for line in slurm_cluster.sacct(
            "-X", "-D", "-n", "-P", "-j", ",".join(submitted), "-o", "JobID,State,Account,Partition,Elapsed").splitlines()]
        if rows and rows[-1][1] == "COMPLETED" or time.monotonic() > deadline:
            break
        time.sleep(2)
    states = [state for _, state, *_ in rows]
    assert states[-1] == "COMPLETED", rows
    assert {(acct, part) for _, _, acct, part, _ in rows} == {("mae", "batch")}, rows
    segments = len(rows)
    assert segments >= 3 and len(signalled) >= 2 and len(signalled) <= resumes <= segments - 1, (
        segments, resumes, signalled, rows)
    assert states == ["REQUEUED"] * (segments - 1) + ["COMPLETED"] and len(submitted) == 1, (submitted, rows)

    tensors = assert_same_run(reference[0], run_dir, ignore={"slurm_job_id"})
    print(f"{speed:.1f} steps/s measured -> {done['steps']} steps; {segments} allocations of job(s) "
          f"{','.join(submitted)} ({', '.join(f'{s} {e}' for _, s, _, _, e in rows)}); checkpointed at steps "
          f"{', '.join(signalled)}; {tensors} tensors torch.equal to the uninterrupted run; {seconds:.0f} s")


def test_a_cancelled_job_does_not_requeue_itself(slurm_cluster, tmp_path):
    """`scancel` sends SIGTERM too: `mae` checkpoints and exits 75 as at the time-limit signal, but the job
    is COMPLETING by then, so the rule does not requeue it (a naive `scontrol requeue` at exit 75 brings a
    cancelled job back: measured). The job stays CANCELLED. (The plugin, 2.8.0, does not take sacct's
    "CANCELLED by 0" for a failure and waits on: the test stops Snakemake itself.)"""
    copy = workflow_copy(tmp_path / "wf").resolve()
    (copy / "ablations" / f"{ABLATION}.yaml").write_text(ablation_yaml(epochs=200))
    log = tmp_path / "snakemake.log"
    cmd = ["timeout", "-k", "30", "600", str(VENV_BIN / "snakemake"), "--profile", "slurm", "--config", "preset=smoke",
           f"ablations=[{ABLATION}]", "--until", "pretrain", "--retries", "0",
           "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "3"]
    proc = subprocess.Popen(cmd, cwd=copy, env=slurm_cluster.env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    job = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and job is None:
            runs = list((copy / "runs" / "smoke" / "pretrain").glob("*/metrics.jsonl"))
            submitted = re.findall(r"submitted with SLURM jobid (\d+)", log.read_text())
            if submitted and runs and len(read_jsonl(runs[0])) >= 5:
                job = submitted[0]
            time.sleep(0.5)
        assert job is not None, f"the pretrain job never got going:\n{tail(log, 40)}"
        subprocess.run(["scancel", job], env=slurm_cluster.env, check=True, timeout=60)
        time.sleep(20)  # past cred_expire (10 s) and a scheduling pass: a requeued job would be back by now
        queued = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True,
                                env=slurm_cluster.env, timeout=60).stdout.split()
    finally:
        stop_session(proc)
    assert not set(queued) & {"PENDING", "RUNNING", "REQUEUED"}, (job, queued)
    (run_dir,) = (copy / "runs" / "smoke" / "pretrain").iterdir()
    assert "received SIGTERM: checkpointed at step" in (run_dir / "train.log").read_text()
    assert "requeueing SLURM job" not in (copy / "runs/smoke/logs/pretrain" / f"{run_dir.name}.log").read_text()
    deadline = time.monotonic() + 60
    # one allocation, ended "CANCELLED by 0" (no REQUEUED record before it)
    while not re.fullmatch(r"CANCELLED( by \d+)?", states := slurm_cluster.sacct(
            "-X", "-D", "-n", "-P", "-j", job, "-o", "State").strip()):
        assert time.monotonic() < deadline, states
        time.sleep(2)
