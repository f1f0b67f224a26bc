"""SIGKILL at a random step of `mae pretrain`, then the same command again: it resumes from the last
checkpoint and ends bitwise-identical to an undisturbed run (CPU, fp32)."""
from __future__ import annotations

import os
import random
import signal

import pytest

from test_reliability_common import (LONG_SMOKE, TOTAL_STEPS, assert_same_run, fault, kill_group,  # noqa: F401
                                     metrics, pretrain_cmd, read_jsonl, reference_run, run, start,
                                     wait_for_records)


@pytest.mark.slow
def test_sigkill_at_random_step_then_rerun_is_bitwise_identical(tmp_path, tmp_path_factory, fault):
    seed = int(os.environ.get("MAE_RELIABILITY_SEED", random.randrange(1 << 30)))
    kill_at = random.Random(seed).randint(6, TOTAL_STEPS - 3)  # after the first checkpoint (step 5)
    fault.describe("resume", f"SIGKILL of the process group at a random step (seed {seed}) of a "
                   f"{TOTAL_STEPS}-step run, checkpoints every 5 steps; same command rerun",
                   "rerun resumes from the newest checkpoint; model.pth bitwise equal, metrics equal")
    reference, _ = reference_run(tmp_path_factory, *LONG_SMOKE)
    out = tmp_path / "run"
    cmd = pretrain_cmd(out, *LONG_SMOKE)
    proc = start(cmd, tmp_path / "killed.log")
    wait_for_records(proc, out / "metrics.jsonl", kill_at)
    kill_group(proc, signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    reached = max(r["step"] for r in read_jsonl(out / "metrics.jsonl"))
    assert not (out / "metrics.json").exists() and not (out / "model.pth").exists()

    rerun = run(cmd)
    assert rerun.returncode == 0, rerun.explain()
    resumed_from = metrics(out, drop=set())["resumed_from_step"]
    recomputed = reached - resumed_from
    # checkpoints: every 5 steps and at each epoch end (8, 16); the kill may land between a step's log
    # record and its checkpoint, so the newest checkpoint is at `reached` or the one before it
    checkpoints = {s for s in range(1, TOTAL_STEPS + 1) if s % 5 == 0 or s % 8 == 0}
    assert resumed_from in checkpoints and resumed_from <= reached
    assert not [c for c in checkpoints if resumed_from < c < reached], "did not resume from the newest checkpoint"
    tensors = assert_same_run(reference, out)
    fault.observe(f"killed after step {reached} (target {kill_at}); rerun resumed from step {resumed_from}; "
                  f"{recomputed} step(s) recomputed; {tensors} tensors torch.equal, metrics.jsonl and "
                  f"metrics.json equal but timing")
