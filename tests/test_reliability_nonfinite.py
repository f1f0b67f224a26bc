"""A non-finite loss from a real cause (pretrain.lr=1e30: the first step after warmup's lr=0 blows the
weights up) stops the run on every rank with exit 3, naming the step and the last good checkpoint, and
leaves no metrics.json / model.pth. Two gloo DDP processes must not hang (official MAE pain 7)."""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from test_reliability_common import (assert_no_finished_outputs, fault, free_port, mae_env,  # noqa: F401
                                     pretrain_cmd, run)

BLOW_UP = ["pretrain.lr=1e30", "run.checkpoint_every_steps=1", "run.log_every_steps=1", "run.threads=1",
           "tracking.enabled=false"]
DDP_TIMEOUT_S = 300  # a hang (one rank exits, the other waits in a collective) fails here, not in CI's limit
MESSAGE = re.compile(r"loss is not finite at step (\d+) \(epoch \d+\); stopped on every rank; "
                     r"last good checkpoint: (\S+)")


def _check_checkpoint(path: str, bad_step: int) -> int:
    import torch

    from mae.checkpoint import load_checkpoint
    state = load_checkpoint(Path(path))
    step = state["loop"]["global_step"]
    assert step < bad_step, f"the 'last good' checkpoint is from step {step}, not before the bad step {bad_step}"
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    return step


def test_nonfinite_loss_single_process_exits_3_naming_step_and_checkpoint(tmp_path, fault):
    fault.describe("non-finite loss", "pretrain.lr=1e30 (1 process): the loss overflows at step 3",
                   "exit 3, message names the step and the last good checkpoint; no metrics.json / model.pth")
    out = tmp_path / "run"
    result = run(pretrain_cmd(out, *BLOW_UP))
    assert result.returncode == 3, result.explain()
    match = MESSAGE.search(result.stderr)
    assert match, result.explain()
    assert "Traceback" not in result.stderr
    bad_step, checkpoint = int(match.group(1)), match.group(2)
    saved = _check_checkpoint(checkpoint, bad_step)
    assert_no_finished_outputs(out)
    fault.observe(f"exit 3: 'loss is not finite at step {bad_step}', last good checkpoint = step {saved} "
                  f"({Path(checkpoint).name}, all weights finite); no metrics.json / model.pth")


@pytest.mark.slow
def test_nonfinite_loss_two_rank_ddp_stops_every_rank_without_hang(tmp_path, fault):
    fault.describe("non-finite loss", "pretrain.lr=1e30 under 2-process gloo DDP (ranks launched as torchrun would)",
                   f"both ranks exit 3 with the message within {DDP_TIMEOUT_S} s (no hang); no metrics.json")
    out = tmp_path / "run"
    port = str(free_port())
    procs, logs = [], []
    t0 = time.monotonic()
    for rank in range(2):
        env = mae_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        logs.append(tmp_path / f"rank{rank}.stderr")
        procs.append(subprocess.Popen(pretrain_cmd(out, *BLOW_UP), env=env, stdout=subprocess.DEVNULL,
                                      stderr=open(logs[-1], "w"), start_new_session=True))
    codes = []
    try:
        for proc in procs:
            codes.append(proc.wait(timeout=max(1.0, DDP_TIMEOUT_S - (time.monotonic() - t0))))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    took = time.monotonic() - t0
    stderrs = [log.read_text() for log in logs]
    assert codes == [3, 3], f"exit codes {codes}\n" + "\n".join(s[-2000:] for s in stderrs)
    steps = []
    for text in stderrs:
        match = MESSAGE.search(text)
        assert match, text[-2000:]
        assert "Traceback" not in text
        steps.append(int(match.group(1)))
    assert steps[0] == steps[1], "the ranks disagree on the bad step"
    saved = _check_checkpoint(MESSAGE.search(stderrs[0]).group(2), steps[0])
    assert_no_finished_outputs(out)
    fault.observe(f"both ranks exit 3 after {took:.0f} s (incl. start-up), both name step {steps[0]} and the "
                  f"checkpoint of step {saved}; no hang, no metrics.json")
