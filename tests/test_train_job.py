"""workflow/scripts/train_job.sh, the training rules' job: the command's output goes to the log, its exit
code is the job's; exit 2 is not retried within one Snakemake invocation; exit 75 requeues a RUNNING SLURM
job and only that. squeue and scontrol are stand-ins on PATH here; the real cluster runs the same script
in tests/integration/test_slurm_chain.py and test_slurm_requeue.py."""

import os
import subprocess
from pathlib import Path

import pytest

JOB = Path(__file__).resolve().parents[1] / "workflow/scripts/train_job.sh"


@pytest.fixture
def slurm_bin(tmp_path):
    """squeue answering the state in $FAKE_STATE, scontrol recording its arguments in $FAKE_CALLS."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text('#!/bin/sh\necho "$FAKE_STATE"\n')
    (bin_dir / "scontrol").write_text('#!/bin/sh\necho "$@" >> "$FAKE_CALLS"\necho "requeued by stand-in"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return bin_dir


def job(tmp_path, attempt, code, env=None, output="hello"):
    log = tmp_path / "logs" / "run.log"
    log.parent.mkdir(exist_ok=True)
    command = ["bash", "-c", f"echo {output}; echo to-stderr >&2; exit {code}"]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run([str(JOB), str(attempt), str(log), *command], capture_output=True, text=True,
                            env={**full_env, **(env or {})}, timeout=60)
    return result, log


def test_the_command_runs_with_its_output_in_the_log_and_its_exit_code(tmp_path):
    result, log = job(tmp_path, 1, 0)
    assert result.returncode == 0 and result.stdout == result.stderr == ""
    assert log.read_text() == "hello\nto-stderr\n"
    result, log = job(tmp_path, 2, 1)  # a crash is retried by Snakemake: it leaves no exit-2 mark
    assert result.returncode == 1 and not Path(f"{log}.exit2").exists()


def test_a_user_error_is_not_run_again_by_a_retry_but_by_a_new_invocation(tmp_path):
    result, log = job(tmp_path, 1, 2, output="error: bad value")
    assert result.returncode == 2 and Path(f"{log}.exit2").is_file()
    result, log = job(tmp_path, 2, 0, output="second attempt ran")
    assert result.returncode == 2
    assert result.stderr == f"not retried: the previous attempt exited 2 (user error), see {log}\n"
    assert log.read_text() == "error: bad value\nto-stderr\n"  # the first attempt's log is kept
    result, log = job(tmp_path, 1, 0, output="new invocation ran")  # attempt 1: runs, clears the mark
    assert result.returncode == 0 and log.read_text().startswith("new invocation ran")
    assert not Path(f"{log}.exit2").exists()


@pytest.mark.parametrize("state, requeued", [("RUNNING", True), ("COMPLETING", False)])
def test_exit_75_requeues_only_a_running_slurm_job(tmp_path, slurm_bin, state, requeued):
    calls = tmp_path / "scontrol.calls"
    env = {"PATH": f"{slurm_bin}:{os.environ['PATH']}", "SLURM_JOB_ID": "41", "FAKE_STATE": state,
           "FAKE_CALLS": str(calls)}
    result, log = job(tmp_path, 1, 75, env)
    assert result.returncode == 75  # the exit code stays: the plugin sees the requeue, Snakemake a retry otherwise
    if requeued:
        assert calls.read_text() == "requeue 41\n"
        assert log.read_text().endswith("exit 75: requeueing SLURM job 41, the next allocation resumes\n"
                                        "requeued by stand-in\n")
    else:
        assert not calls.exists() and "requeueing" not in log.read_text()


def test_exit_75_outside_slurm_is_left_to_snakemakes_retries(tmp_path, slurm_bin):
    calls = tmp_path / "scontrol.calls"
    env = {"PATH": f"{slurm_bin}:{os.environ['PATH']}", "FAKE_STATE": "RUNNING", "FAKE_CALLS": str(calls)}
    result, log = job(tmp_path, 1, 75, env)
    assert result.returncode == 75 and not calls.exists() and "requeueing" not in log.read_text()


def test_usage_without_a_command(tmp_path):
    result = subprocess.run([str(JOB), "1", str(tmp_path / "x.log")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("usage: ") and "ATTEMPT LOG COMMAND..." in result.stderr
