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
    # each run names where its progress goes (its output is not shown without a terminal)
    logs = [line.split("(progress: ")[1].rstrip(")") for line in first.stdout.splitlines() if "(progress: " in line]
    assert len(logs) == 6 and all(Path(log).name == "train.log" and Path(log).is_file() for log in logs)
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
    (SPEC.replace("preset: workflow/presets/smoke.yaml\n", ""), "preset=None is invalid"),
    (SPEC.replace("smoke.yaml", "nosuch.yaml"), "preset='workflow/presets/nosuch.yaml' is invalid"),
    (SPEC.replace("    values: [2, 3]\n", ""), "sweeps[1] of"),
])
def test_bad_sweep_files_are_one_line_errors(tmp_path, text, needle):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "tune.py"), str(spec), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and needle in out.stderr and out.stderr.count("\n") == 1, out.stderr


LR_ROWS = [  # the lr sweep of SPEC, finished: 0.004 wins on the last stage (finetune)
    {"sweep": "lr", "key": "finetune.blr", "value": value, "seed": 0, "stage": stage, "val_top1": top1,
     "knn_top1": 20.0 if stage == "pretrain" else None, "train_time_s": 1.0, "chain_time_s": 2.0, "run_dir": "runs/x"}
    for value, top1 in (("0.001", 30.0), ("0.004", 40.0)) for stage in ("pretrain", "finetune")]


def _tune(tmp_path, *args, spec_text=SPEC) -> subprocess.CompletedProcess:
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "tune.py"), str(spec), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def _assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_report_only_without_tuning_csv_says_how_to_make_one(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_one_line_error(_tune(tmp_path, "--report-only", "--out", empty),
                           f"error: there is no tuning.csv in {empty} yet",
                           f"run the sweeps first, `scripts/tune.py {tmp_path / 'spec.yaml'} --out {empty}`")
    assert list(empty.iterdir()) == []
    _assert_one_line_error(_tune(tmp_path, "--report-only", "--out", tmp_path / "new"), "there is no tuning.csv")
    assert not (tmp_path / "new").exists()


def test_report_only_rewrites_tuning_md_from_tuning_csv(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    pd.DataFrame(LR_ROWS).to_csv(tmp_path / "tuning.csv", index=False)
    assert tune.main([str(spec), "--report-only", "--out", str(tmp_path)]) == 0
    assert "| **0.004** |" in (tmp_path / "tuning.md").read_text()


@pytest.mark.parametrize("rows", [[], LR_ROWS[:1]], ids=["no tuning.csv", "lr sweep unfinished"])
def test_a_sweep_whose_best_of_sweep_has_no_result_is_refused_before_anything_runs(tmp_path, rows):
    out, runs = tmp_path / "out", tmp_path / "runs"
    if rows:
        out.mkdir()
        pd.DataFrame(rows).to_csv(out / "tuning.csv", index=False)
    result = _tune(tmp_path, "--sweep", "epochs", "--runs", runs, "--out", out)
    command = f"scripts/tune.py {tmp_path / 'spec.yaml'} --runs {runs} --out {out} --sweep lr"
    _assert_one_line_error(result, "error: sweep 'epochs' takes finetune.blr from the winner of sweep 'lr', which has "
                           f"no finished runs in {out / 'tuning.csv'} yet: run it first, `{command}`, "
                           f"or together, `{command} --sweep epochs`")
    assert not runs.exists()  # nothing ran, nothing was created
    assert (sorted(p.name for p in out.iterdir()) == ["tuning.csv"]) if rows else not out.exists()
    assert result.stdout == ""


def test_a_sweep_takes_the_winner_of_a_finished_best_of_sweep_from_tuning_csv(tmp_path, monkeypatch):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    pd.DataFrame(LR_ROWS).to_csv(tmp_path / "tuning.csv", index=False)
    seen = {}

    def fake_run_sweep(spec, sweep, preset, runs, winners):  # no training: record what the sweep was given
        seen[sweep["name"]] = dict(winners)
        return [{**LR_ROWS[0], "sweep": sweep["name"], "key": sweep["vary"], "value": "2", "stage": stage}
                for stage in sweep["stages"]]

    monkeypatch.setattr(tune, "run_sweep", fake_run_sweep)
    assert tune.main([str(spec), "--sweep", "epochs", "--out", str(tmp_path)]) == 0
    assert seen == {"epochs": {"lr": 0.004}}
    assert set(pd.read_csv(tmp_path / "tuning.csv").sweep) == {"lr", "epochs"}


def test_an_unknown_sweep_creates_nothing(tmp_path):
    _assert_one_line_error(_tune(tmp_path, "--sweep", "nosuch", "--out", tmp_path / "x"),
                           "error: --sweep='nosuch' is invalid: allowed one of ['lr', 'epochs']")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("text, needle", [
    ("", "cannot be read as CSV"),
    ("name,top1\nlr,3\n", "has no column 'sweep': allowed a tuning.csv written by scripts/tune.py"),
])
def test_a_tuning_csv_that_is_not_one_is_a_user_error(tmp_path, text, needle):
    (tmp_path / "tuning.csv").write_text(text)
    _assert_one_line_error(_tune(tmp_path, "--report-only", "--out", tmp_path), needle)


def test_an_out_that_is_a_file_is_a_user_error(tmp_path):
    (tmp_path / "out").write_text("")
    _assert_one_line_error(_tune(tmp_path, "--sweep", "lr", "--runs", tmp_path / "runs", "--out", tmp_path / "out"),
                           f"error: {tmp_path / 'out'}: exists and is not a folder")
    assert not (tmp_path / "runs").exists()
