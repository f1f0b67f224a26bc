"""Repeatable runs: the same command on the same machine gives bitwise-identical weights and metrics.

A cell is trained twice, each time in a fresh `mae` process, for pretraining, fine-tuning and (tiny) the
cached linear probe: the smoke preset with run.threads unset and with run.threads=2, and the tiny preset
(real Fashion-MNIST, the workflow's recipe) on a few hundred images; the model.pth tensors must be equal
and metrics.jsonl / metrics.json equal except for timing fields.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mae.run_folder import PROVENANCE_FIELDS, TIMING_FIELDS

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "workflow" / "presets"
TIMING = TIMING_FIELDS
VOLATILE = TIMING_FIELDS | PROVENANCE_FIELDS
CELL = ["data.train_subset=128", "data.val_subset=64", "run.log_every_steps=1", "run.checkpoint_every_steps=0"]
TINY_CELL = ["data.train_subset=512", "data.val_subset=256", "pretrain.epochs=1", "finetune.epochs=1",
             "linprobe.epochs=5", "tracking.enabled=false", "run.log_every_steps=1", "run.checkpoint_every_steps=0"]


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
    if not (a / "model.pth").exists():  # the cached probe keeps no weights: its records and metrics must repeat
        assert not (b / "model.pth").exists() and (a / "metrics.json").exists()
        assert _records(a) == _records(b) and _metrics(a) == _metrics(b)
        return
    sa = torch.load(a / "model.pth", weights_only=True)["model"]
    sb = torch.load(b / "model.pth", weights_only=True)["model"]
    assert sa.keys() == sb.keys()
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"{len(differ)}/{len(sa)} tensors differ: {differ[:5]}"
    assert _records(a) == _records(b)
    assert _metrics(a) == _metrics(b)


@pytest.mark.parametrize("preset, threads", [("smoke", None), ("smoke", 2), ("tiny", None)])
def test_pretrain_and_finetune_bitwise_repeatable(tmp_path, preset, threads):
    config = str(PRESETS / f"{preset}.yaml")
    cell = (TINY_CELL if preset == "tiny" else CELL) + ([] if threads is None else [f"run.threads={threads}"])
    stages = ("pretrain", "finetune", "linprobe") if preset == "tiny" else ("pretrain", "finetune")
    for copy in ("a", "b"):
        _mae("pretrain", "--config", config, *cell, "--out", str(tmp_path / copy / "pretrain"), cwd=tmp_path)
    pretrained = tmp_path / "a" / "pretrain" / "model.pth"  # the same input (and run id) for both evaluations
    for stage in stages[1:]:
        for copy in ("a", "b"):
            _mae(stage, "--config", config, *cell, f"{stage}.checkpoint={pretrained}",
                 "--out", str(tmp_path / copy / stage), cwd=tmp_path)
    for stage in stages:
        _assert_same_run(tmp_path / "a" / stage, tmp_path / "b" / stage)
    metrics = json.loads((tmp_path / "a" / "pretrain" / "metrics.json").read_text())
    assert "knn_top1" in metrics  # the k-NN of the pretraining is part of what must repeat
    if threads is not None:
        assert metrics["threads"] == threads
    if preset == "tiny":  # the cached probe's own k-NN and features repeat too
        assert "knn_top1" in json.loads((tmp_path / "a" / "linprobe" / "metrics.json").read_text())
