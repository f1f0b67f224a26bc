"""Damaged checkpoints: a truncated, bit-flipped or missing checkpoint.pth is detected, reported in the
log, and checkpoint.prev.pth is used; with no valid checkpoint left the run fails loudly (exit 2)
instead of silently restarting from step 0."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from test_reliability_common import (LONG_SMOKE, MAE, SMOKE, assert_no_finished_outputs, assert_same_run,  # noqa: F401
                                     fault, metrics, one_error_line, pretrain_cmd, reference_run, run, run_many)

STOP = 12  # checkpoints at 10 (every 5) and at 12 (stop): checkpoint.pth = step 12, prev = step 10


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def _empty(path):
    path.write_bytes(b"")


def _remove(path):
    path.unlink()


def _garbage(path):
    path.write_text("this is not a checkpoint\n")


DAMAGE = {"truncated": _truncate, "bit-flipped": _flip, "empty": _empty, "missing": _remove, "garbage-text": _garbage}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run folder stopped (exit 75) at step 12 with both checkpoints in place."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    result = run(pretrain_cmd(out, *LONG_SMOKE, f"run.stop_after_steps={STOP}"))
    assert result.returncode == 75, result.explain()
    return out


@pytest.fixture(scope="module")
def outcomes(stopped, tmp_path_factory):
    """Every damage case rerun at once (each needs a torch start-up; they overlap well)."""
    base = tmp_path_factory.mktemp("damaged")
    cases = {}
    for name, damage in DAMAGE.items():
        out = base / name / "run"
        shutil.copytree(stopped, out)
        damage(out / "checkpoint.pth")
        cases[name] = out
    both = base / "both" / "run"
    shutil.copytree(stopped, both)
    _truncate(both / "checkpoint.pth")
    _flip(both / "checkpoint.prev.pth")
    cases["both"] = both
    results = run_many([pretrain_cmd(out, *LONG_SMOKE) for out in cases.values()])
    return {name: (out, res) for (name, out), res in zip(cases.items(), results)}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_previous(damage, outcomes, tmp_path_factory, fault):
    fault.describe("checkpoint", f"checkpoint.pth {damage} (step {STOP}); checkpoint.prev.pth (step 10) intact; rerun",
                   "damage reported in the log, resume from checkpoint.prev.pth, result equal to undisturbed")
    reference, _ = reference_run(tmp_path_factory, *LONG_SMOKE)
    out, result = outcomes[damage]
    assert result.returncode == 0, result.explain()
    log = (out / "train.log").read_text()
    note = next((line for line in log.splitlines() if "resuming from" in line), "")
    assert "checkpoint.prev.pth" in note, log[-2000:]
    assert "checkpoint.pth" in note.split("checkpoint.prev.pth", 1)[1], f"the reason is not logged: {note}"
    assert metrics(out, drop=set())["resumed_from_step"] == 10
    assert_same_run(reference, out)
    note = note.split(" INFO ", 1)[-1].replace(f"{out}/", "")
    fault.observe(f"log: '{note[:160]}'; resumed at step 10, "
                  f"{STOP - 10} steps recomputed, result equal to undisturbed")


@pytest.mark.slow
def test_no_valid_checkpoint_fails_loudly_and_keeps_progress(outcomes, stopped, fault):
    fault.describe("checkpoint", "checkpoint.pth truncated and checkpoint.prev.pth bit-flipped; rerun",
                   "exit 2 with one line naming both files; no restart from step 0; files and records kept")
    out, result = outcomes["both"]
    assert result.returncode == 2, result.explain()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "checkpoint.pth" in lines[0] and "checkpoint.prev.pth" in lines[0]
    assert "Traceback" not in result.stderr
    # progress is not thrown away: the records and both (damaged) files stay for a human to look at
    assert (out / "metrics.jsonl").read_text() == (stopped / "metrics.jsonl").read_text()
    assert (out / "checkpoint.pth").exists() and (out / "checkpoint.prev.pth").exists()
    assert "epoch 0 step 1/" not in result.stdout, "it started training again"
    assert_no_finished_outputs(out)
    fault.observe(f"exit 2: {lines[0].replace(f'{out}/', '').replace(str(out), 'DIR')[:260]}")


def test_stale_checkpoint_temporaries_are_removed_on_resume(tmp_path, fault):
    """#17 item 5: a kill during a checkpoint write leaves `.checkpoint.pth.tmp.<pid>` (gigabytes at
    ViT-L size); the next start removes those of dead writers and keeps a live writer's."""
    import subprocess
    import sys

    from mae.checkpoint import find_resume_checkpoint, save_checkpoint
    fault.describe("checkpoint hygiene", "`.checkpoint.pth.tmp.<pid>` / `.model.pth.tmp.<pid>` of a killed writer "
                   "(and one of a live process) in the run folder; start again",
                   "temporaries of dead writers removed, a live writer's kept, resume from checkpoint.pth")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    save_checkpoint(tmp_path, {"stage": "pretrain", "run_id": "x", "loop": {}})
    stale = [tmp_path / f".checkpoint.pth.tmp.{dead}", tmp_path / f".model.pth.tmp.{dead}"]
    live = tmp_path / f".checkpoint.pth.tmp.{os.getppid()}"
    for path in [*stale, live]:
        path.write_bytes(b"\0" * 4096)
    resume = find_resume_checkpoint(tmp_path)
    assert resume is not None and resume.path.name == "checkpoint.pth"
    assert not any(p.exists() for p in stale) and live.exists()
    fault.observe(f"removed {[p.name for p in stale]}, kept {live.name} (pid alive); resumed from checkpoint.pth")


def test_failed_checkpoint_write_leaves_no_temporary(tmp_path, monkeypatch, fault):
    """#17 item 5: ENOSPC (or any error) during the write removes the temporary and names it."""
    import errno

    from mae import checkpoint as ckpt
    fault.describe("checkpoint hygiene", "ENOSPC raised by fsync while checkpoint.pth is written (monkeypatched)",
                   "OSError naming the temporary, temporary removed, previous checkpoint.pth intact")
    ckpt.save_checkpoint(tmp_path, {"stage": "pretrain", "run_id": "x", "loop": {"step": 1}})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(ckpt.os, "fsync", full)
    with pytest.raises(OSError) as info:
        ckpt.save_checkpoint(tmp_path, {"stage": "pretrain", "run_id": "x", "loop": {"step": 2}})
    monkeypatch.undo()
    assert ".checkpoint.pth.tmp." in info.value.filename
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]
    assert ckpt.load_checkpoint(tmp_path / "checkpoint.pth")["loop"] == {"step": 1}
    fault.observe(f"{info.value.strerror} at {Path(info.value.filename).name}; folder holds only checkpoint.pth (step 1)")


def test_official_training_checkpoint_through_the_cli(tmp_path, fault):
    """#19 item 6: an official main_pretrain.py checkpoint-N.pth (model, optimizer, epoch, scaler, args) is
    taken by every command that reads weights; one with any other non-tensor type is refused in one line."""
    import argparse
    import functools

    import torch

    from official_checkpoints import official_pretraining_checkpoint
    fault.describe("checkpoint", "official checkpoint-0.pth (args as argparse.Namespace) given to finetune, "
                   "linprobe, visualize and pretrain (pretrain.checkpoint); the same file with a set or a "
                   "functools.partial added", "the four commands complete (pretraining continues at epoch 1); "
                   "the altered files: exit 2, one line, nothing finished-looking written")
    official = tmp_path / "checkpoint-0.pth"
    official_pretraining_checkpoint(official, epoch=0, target="pixel", epochs=2)
    bad = {}
    for name, extra in (("set", {"classes": {1, 2}}), ("partial", {"loader": functools.partial(int, "3")})):
        state = torch.load(official, weights_only=False)  # the test's own file
        bad[name] = tmp_path / f"checkpoint-{name}.pth"
        torch.save({**state, "args": argparse.Namespace(**vars(state["args"]), **extra)}, bad[name])
    common = ["--config", str(SMOKE), "tracking.enabled=false", "run.threads=1"]
    cmds = {
        "finetune": [MAE, "finetune", *common, "--out", str(tmp_path / "ft"), f"finetune.checkpoint={official}"],
        "linprobe": [MAE, "linprobe", *common, "--out", str(tmp_path / "lin"), f"linprobe.checkpoint={official}"],
        "visualize": [MAE, "visualize", "--checkpoint", str(official), "--out", str(tmp_path / "recon.png"),
                      "--num-images", "2", "data.name=synthetic"],
        "pretrain": [MAE, "pretrain", *common, "--out", str(tmp_path / "pt"), f"pretrain.checkpoint={official}"],
        "set": [MAE, "finetune", *common, "--out", str(tmp_path / "bad-set"), f"finetune.checkpoint={bad['set']}"],
        "partial": [MAE, "pretrain", *common, "--out", str(tmp_path / "bad-partial"),
                    f"pretrain.checkpoint={bad['partial']}"],
    }
    results = dict(zip(cmds, run_many(list(cmds.values()))))
    for name in ("finetune", "linprobe", "visualize", "pretrain"):
        assert results[name].returncode == 0, results[name].explain()
    assert (tmp_path / "recon.png").stat().st_size > 1000
    assert "at epoch 1 of 2: weights, AdamW moments" in (tmp_path / "pt" / "train.log").read_text()
    lines = {name: one_error_line(results[name], 2, [bad[name].name, "refused"]) for name in ("set", "partial")}
    assert "holds a set at ['args']['classes']" in lines["set"] and "arbitrary code" in lines["partial"]
    for name in ("set", "partial"):
        assert_no_finished_outputs(tmp_path / f"bad-{name}")
    fault.observe(f"finetune / linprobe / visualize / pretrain exit 0; set: {lines['set'][:120]}...; partial: "
                  f"{lines['partial'][:100]}...")
