"""SIGTERM / SIGUSR1 as SLURM sends them (to the job's process group: preemption, `--signal=USR1@300`
before the time limit): `mae pretrain` writes a checkpoint within seconds and exits 75; the same
command again completes equal to an undisturbed run."""
from __future__ import annotations

import signal
import time

import pytest

from test_reliability_common import (LONG_SMOKE, assert_same_run, fault, kill_group, metrics,  # noqa: F401
                                     pretrain_cmd, read_jsonl, reference_run, run, start, wait_for_records)

# A few seconds: finish the step, write the checkpoint of the micro model; then the interpreter exits.
# Generous for a 2-core machine shared by several test runs.
MAX_SECONDS_TO_CHECKPOINT = 10.0
MAX_SECONDS_TO_EXIT = 20.0


@pytest.mark.slow
@pytest.mark.parametrize("sig,after", [(signal.SIGTERM, 3), (signal.SIGUSR1, 11), (signal.SIGTERM, 7)],
                         ids=["SIGTERM-mid-epoch", "SIGUSR1-mid-epoch", "SIGTERM-near-epoch-end"])
def test_signal_checkpoints_exits_75_and_rerun_completes_equal(sig, after, tmp_path, tmp_path_factory, fault):
    from mae.checkpoint import load_checkpoint
    fault.describe("signals", f"{sig.name} to the process group after step {after} of 24 (as SLURM sends it)",
                   f"checkpoint within {MAX_SECONDS_TO_CHECKPOINT:.0f} s, exit 75; rerun completes equal to undisturbed")
    reference, _ = reference_run(tmp_path_factory, *LONG_SMOKE)
    out = tmp_path / "run"
    cmd = pretrain_cmd(out, *LONG_SMOKE)
    proc = start(cmd, tmp_path / "signalled.log")
    wait_for_records(proc, out / "metrics.jsonl", after)
    t0, wall0 = time.monotonic(), time.time()
    kill_group(proc, sig)
    code = proc.wait(120)
    took = time.monotonic() - t0
    log = (tmp_path / "signalled.log").read_text()
    assert code == 75, log[-3000:]
    assert took < MAX_SECONDS_TO_EXIT, f"{took:.1f} s from {sig.name} to exit"
    to_checkpoint = (out / "checkpoint.pth").stat().st_mtime - wall0
    assert 0 < to_checkpoint < MAX_SECONDS_TO_CHECKPOINT, f"checkpoint written {to_checkpoint:.1f} s after {sig.name}"
    last_logged = max(r["step"] for r in read_jsonl(out / "metrics.jsonl"))
    saved = load_checkpoint(out / "checkpoint.pth")["loop"]["global_step"]
    assert saved == last_logged, "the checkpoint is not at the step the process stopped at"
    assert f"received {sig.name}" in log and f"checkpointed at step {saved}" in log
    assert not (out / "metrics.json").exists() and not (out / "model.pth").exists()

    rerun = run(cmd)
    assert rerun.returncode == 0, rerun.explain()
    assert metrics(out, drop=set())["resumed_from_step"] == saved
    tensors = assert_same_run(reference, out)
    fault.observe(f"{sig.name} after step {after}: checkpoint at step {saved} written {to_checkpoint:.1f} s later, exit 75 after {took:.1f} s; rerun resumed "
                  f"at step {saved} and matched the undisturbed run ({tensors} tensors torch.equal, metrics equal)")


def _wait_until(predicate, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the process ended before the moment to signal it"
        assert time.monotonic() < deadline, "the moment to signal never came"
        time.sleep(0.005)


def _importing_torch(pid: int) -> bool:
    try:
        return "libtorch" in open(f"/proc/{pid}/maps").read()
    except OSError:
        return False


# (moment, signal, extra overrides): during the imports (torch is being loaded; the config is parsed, nothing built
# yet), during the build of a large synthetic training set (train.log exists: the run folder is set up).
EARLY = {
    "SIGTERM-during-import": (signal.SIGTERM, ()),
    "SIGUSR1-during-import": (signal.SIGUSR1, ()),
    "SIGTERM-during-dataset-build": (signal.SIGTERM, ("data.train_subset=400000",)),
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(EARLY))
def test_signal_before_training_exits_75_with_one_line_and_nothing_half_written(moment, tmp_path, tmp_path_factory,
                                                                                  fault):
    sig, extra = EARLY[moment]
    fault.describe("signals", f"{sig.name} {moment.split('-', 1)[1].replace('-', ' ')} (before the model, the "
                   "tracker and the loop's own handler exist)",
                   "exit 75 (was 143 and no message); one 'stopped:' line; no checkpoint, metrics.json, "
                   "model.pth or temporary file; rerun completes equal to undisturbed")
    out = tmp_path / "run"
    cmd = pretrain_cmd(out, *LONG_SMOKE, *extra)
    proc = start(cmd, tmp_path / "signalled.log")
    if "import" in moment:
        _wait_until(lambda: _importing_torch(proc.pid), proc)
    else:
        _wait_until(lambda: (out / "train.log").exists(), proc)
    t0 = time.monotonic()
    kill_group(proc, sig)
    code = proc.wait(120)
    took = time.monotonic() - t0
    log = (tmp_path / "signalled.log").read_text()
    assert code == 75, log[-3000:]
    stopped = [line for line in log.splitlines() if line.startswith("stopped:")]
    assert len(stopped) == 1 and f"received {sig.name}" in stopped[0] and "Traceback" not in log, log[-3000:]
    left = sorted(p.name for p in out.rglob("*") if p.is_file()) if out.exists() else []
    assert set(left) <= {"train.log"}, f"left behind: {left}"
    if left:
        assert f"received {sig.name}" in (out / "train.log").read_text()
    note = ""
    if not extra:  # the small run: the same command again completes and equals an undisturbed run
        reference, _ = reference_run(tmp_path_factory, *LONG_SMOKE)
        rerun = run(cmd)
        assert rerun.returncode == 0, rerun.explain()
        tensors = assert_same_run(reference, out)
        note = f"; rerun completed equal to undisturbed ({tensors} tensors torch.equal)"
    fault.observe(f"exit 75 {took:.1f} s after {sig.name}; '{stopped[0][:110]}'; files left: {left or 'none'}{note}")
