"""Repeatable runs: the same command on the same machine gives bitwise-identical weights and metrics.

A smoke-sized cell is trained twice, each time in a fresh `mae` process, for pretraining and
fine-tuning, with run.threads unset and with run.threads=2; the model.pth tensors must be equal and
metrics.jsonl / metrics.json equal except for timing fields.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "workflow" / "presets" / "smoke.yaml"
TIMING = {"images_per_s", "train_time_s", "knn_time_s", "feature_time_s"}
VOLATILE = TIMING | {"host", "git_revision", "mlflow_run_id", "slurm_job_id"}
CELL = ["data.train_subset=128", "data.val_subset=64", "run.log_every_steps=1", "run.checkpoint_every_steps=0"]


def _mae(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "mae.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]


def _records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _metrics(run_dir):
    return {k: v for k, v in json.loads((run_dir / "metrics.json").read_text()).items() if k not in VOLATILE}


def _assert_same_run(a, b):
    sa = torch.load(a / "model.pth", weights_only=True)["model"]
    sb = torch.load(b / "model.pth", weights_only=True)["model"]
    assert sa.keys() == sb.keys()
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"{len(differ)}/{len(sa)} tensors differ: {differ[:5]}"
    assert _records(a) == _records(b)
    assert _metrics(a) == _metrics(b)


@pytest.mark.parametrize("threads", [None, 2])
def test_pretrain_and_finetune_bitwise_repeatable(tmp_path, threads):
    extra = [] if threads is None else [f"run.threads={threads}"]
    for copy in ("a", "b"):
        _mae("pretrain", "--config", str(SMOKE), *CELL, *extra, "--out", str(tmp_path / copy / "pretrain"), cwd=tmp_path)
    pretrained = tmp_path / "a" / "pretrain" / "model.pth"  # the same input (and run id) for both fine-tunings
    for copy in ("a", "b"):
        _mae("finetune", "--config", str(SMOKE), *CELL, *extra, f"finetune.checkpoint={pretrained}",
             "--out", str(tmp_path / copy / "finetune"), cwd=tmp_path)
    for stage in ("pretrain", "finetune"):
        _assert_same_run(tmp_path / "a" / stage, tmp_path / "b" / stage)
    metrics = json.loads((tmp_path / "a" / "pretrain" / "metrics.json").read_text())
    assert "knn_top1" in metrics  # the k-NN of the pretraining is part of what must repeat
    if threads is not None:
        assert metrics["threads"] == threads
