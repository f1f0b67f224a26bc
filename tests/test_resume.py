"""Exact resume: a run stopped after k steps (mid-epoch, at an epoch end, by SIGTERM) and resumed ends
with bitwise-identical weights and the same metrics.jsonl as an uninterrupted run."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mae import train
from mae.run_folder import read_jsonl
from mae.config import load_config
from mae.run_folder import CHECKPOINT_PTH, PREVIOUS_CHECKPOINT_PTH
from mae.engine import EXIT_PREEMPTED, TrainingStopped
from micro_config import MICRO_MODEL

REPO = Path(__file__).resolve().parents[1]

TINY = [
    *MICRO_MODEL, "data.train_subset=128", "data.val_subset=32", "data.num_workers=0",
    "pretrain.epochs=2", "pretrain.warmup_epochs=1", "pretrain.batch_size=16", "pretrain.blr=1e-3",
    "finetune.epochs=2", "finetune.warmup_epochs=1", "finetune.batch_size=16", "finetune.drop_path=0.1",
    "finetune.randaug=null", "finetune.reprob=0.25",
    "run.log_every_steps=3", "run.checkpoint_every_steps=5", "run.threads=1", "tracking.enabled=false",
]  # 8 steps per epoch; logging (3) and checkpoints (5) fall off the stop points on purpose


def _records(run_dir: Path) -> list[dict]:
    # images_per_s is a wall-clock measurement: everything else must match exactly
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_jsonl(run_dir / "metrics.jsonl")]


def _assert_same_weights(a: Path, b: Path) -> None:
    sd_a = torch.load(a / "model.pth", weights_only=True)["model"]
    sd_b = torch.load(b / "model.pth", weights_only=True)["model"]
    assert sd_a.keys() == sd_b.keys()
    different = [k for k in sd_a if not torch.equal(sd_a[k], sd_b[k])]
    assert not different, different


def _run(stage: str, out: Path, extra: list[str] = ()):
    return getattr(train, stage)(load_config(None, [*TINY, *extra]), out)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    _run("pretrain", out / "pretrain")
    _run("finetune", out / "finetune", [f"finetune.checkpoint={out / 'pretrain' / 'model.pth'}"])
    return out


@pytest.mark.parametrize("stop_after", [7, 8], ids=["mid_epoch", "epoch_end"])
def test_pretrain_resume_is_exact(tmp_path, reference, stop_after):
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped) as stop:
        _run("pretrain", out, [f"run.stop_after_steps={stop_after}"])
    assert stop.value.exit_code == EXIT_PREEMPTED
    assert (out / CHECKPOINT_PTH).exists() and not (out / "metrics.json").exists() and not (out / "model.pth").exists()
    assert max(r["step"] for r in read_jsonl(out / "metrics.jsonl")) <= stop_after
    metrics = _run("pretrain", out)
    assert metrics["resumed_from_step"] == stop_after and metrics["steps"] == 16
    _assert_same_weights(out, reference / "pretrain")
    assert _records(out) == _records(reference / "pretrain")
    expected = json.loads((reference / "pretrain" / "metrics.json").read_text())
    assert metrics["final_loss"] == expected["final_loss"]


def test_finetune_resume_is_exact_with_mixup_and_drop_path(tmp_path, reference):
    # mixup / cutmix draw from numpy's global RNG and drop path from torch's: both must be restored
    out = tmp_path / "ft"
    extra = [f"finetune.checkpoint={reference / 'pretrain' / 'model.pth'}"]
    with pytest.raises(TrainingStopped):
        _run("finetune", out, [*extra, "run.stop_after_steps=4"])
    metrics = _run("finetune", out, extra)
    _assert_same_weights(out, reference / "finetune")
    assert _records(out) == _records(reference / "finetune")
    expected = json.loads((reference / "finetune" / "metrics.json").read_text())
    assert (metrics["top1"], metrics["top5"]) == (expected["top1"], expected["top5"])


def test_damaged_checkpoint_resumes_from_previous(tmp_path, reference):
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped):
        _run("pretrain", out, ["run.stop_after_steps=7"])
    assert (out / PREVIOUS_CHECKPOINT_PTH).exists()  # step 5; the newest is step 7
    newest = out / CHECKPOINT_PTH
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])
    metrics = _run("pretrain", out)
    assert metrics["resumed_from_step"] == 5
    _assert_same_weights(out, reference / "pretrain")
    assert _records(out) == _records(reference / "pretrain")
    assert "checkpoint.prev.pth" in (out / "train.log").read_text()
    # finished: the fallback is removed (4 GB for ViT-L with AdamW), checkpoint.pth stays to continue the run
    assert not (out / PREVIOUS_CHECKPOINT_PTH).exists() and (out / CHECKPOINT_PTH).exists()
    assert "(removed checkpoint.prev.pth, " in (out / "train.log").read_text().splitlines()[-1]


def test_finished_folder_is_not_retrained_and_other_config_is_refused(reference):
    before = (reference / "pretrain" / "metrics.json").read_text()
    assert _run("pretrain", reference / "pretrain")["steps"] == 16
    assert (reference / "pretrain" / "metrics.json").read_text() == before
    from mae.errors import UserError
    with pytest.raises(UserError, match="holds a finished pretrain run"):
        _run("pretrain", reference / "pretrain", ["model.mask_ratio=0.5"])


def test_sigterm_checkpoints_exits_75_and_resumes_exactly(tmp_path, reference):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mae.cli", "pretrain", "--out", str(out), *TINY]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # metrics.jsonl is opened once the signal handlers are installed, just before the first step
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived (machine too fast for this check)")
    assert proc.returncode == EXIT_PREEMPTED, stderr
    assert "SIGTERM" in stderr and "Traceback" not in stderr
    assert not (out / "metrics.json").exists()
    metrics = _run("pretrain", out)
    assert 0 < metrics["resumed_from_step"] < 16
    _assert_same_weights(out, reference / "pretrain")
    assert _records(out) == _records(reference / "pretrain")
