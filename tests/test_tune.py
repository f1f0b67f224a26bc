"""scripts/tune.py: sweeps on the validation split, winners picked by code, runs done once."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import tune  # noqa: E402

SPEC = """\
preset: workflow/presets/smoke.yaml
base: {data.val_split: 32, tracking.enabled: false, run.threads: 1}
seeds: [0]
sweeps:
  - name: lr
    stages: [pretrain, finetune]
    set: {}
    vary: finetune.blr
    values: [1.0e-3, 4.0e-3]
  - name: epochs
    curve: true
    stages: [pretrain, linprobe]
    set: {linprobe.features: cached}
    best_of: {finetune.blr: lr}
    vary: pretrain.epochs
    values: [2, 3]
"""


def test_winner_is_the_best_mean_of_the_last_stage_ties_to_the_earlier_value():
    sweep = {"name": "s", "stages": ["pretrain", "finetune"], "values": [0.1, 0.2, 0.3]}
    rows = pd.DataFrame([
        {"sweep": "s", "stage": "pretrain", "value": "0.3", "val_top1": 99.0},  # not the last stage: ignored
        {"sweep": "s", "stage": "finetune", "value": "0.1", "val_top1": 60.0},
        {"sweep": "s", "stage": "finetune", "value": "0.1", "val_top1": 70.0},
        {"sweep": "s", "stage": "finetune", "value": "0.2", "val_top1": 66.0},
        {"sweep": "s", "stage": "finetune", "value": "0.3", "val_top1": 65.0},
        {"sweep": "other", "stage": "finetune", "value": "0.3", "val_top1": 100.0},
    ])
    assert tune.winner(rows, sweep) == 0.2  # means 65, 66, 65
    rows.loc[rows.value == "0.2", "val_top1"] = 65.0
    assert tune.winner(rows, sweep) == 0.1  # a tie goes to the earlier value


def test_sweeps_run_once_and_report(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    command = [sys.executable, str(ROOT / "scripts" / "tune.py"), str(spec), "--runs", str(tmp_path / "runs"),
               "--out", str(tmp_path / "out")]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    rows = pd.read_csv(tmp_path / "out" / "tuning.csv", dtype={"value": str})
    assert len(rows) == 8 and set(rows.sweep) == {"lr", "epochs"}
    finetune = rows[rows.stage == "finetune"].set_index("value").val_top1
    best = "0.001" if finetune["0.001"] >= finetune["0.004"] else "0.004"
    assert f"best finetune.blr = {float(best)}" in first.stdout
    # the second sweep ran with the first one's winner
    probe_dirs = rows[rows.stage == "linprobe"].run_dir
    assert all(f"blr: {float(best)}" in (Path(d) / "config.yaml").read_text() for d in probe_dirs)
    # both sweeps share the pretraining of the same settings: one folder, run once
    assert (tmp_path / "runs" / "pretrain").is_dir() and len(list((tmp_path / "runs" / "pretrain").iterdir())) == 2
    report = (tmp_path / "out" / "tuning.md").read_text()
    assert f"| **{best}** |" in report and "test set is not read" in report
    assert report.split("## epochs")[1].count("**") == 0  # a curve has no winner
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "tune: /" not in again.stdout  # every run was already finished


@pytest.mark.parametrize("text, needle", [
    (SPEC.replace("data.val_split: 32, ", ""), "base.data.val_split=None is invalid"),
    (SPEC.replace("best_of: {finetune.blr: lr}", "best_of: {finetune.blr: later}"), "best_of.finetune.blr='later'"),
    (SPEC.replace("stages: [pretrain, linprobe]", "stages: [pretrain, probe]"), "stages='probe'"),
    (SPEC + "  - {name: late, stages: [finetune], vary: finetune.blr, values: [1], best_of: {run.seed: epochs}}\n",
     "best_of.run.seed='epochs'"),
])
def test_bad_sweep_files_are_one_line_errors(tmp_path, text, needle):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "tune.py"), str(spec), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and needle in out.stderr and out.stderr.count("\n") == 1, out.stderr
