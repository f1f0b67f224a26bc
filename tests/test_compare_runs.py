"""scripts/compare_runs.py: equal folders, a changed tensor or metric, probe folders without weights."""

import json
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = [sys.executable, str(REPO / "scripts" / "compare_runs.py")]


def _run_folder(path, weights=None, top1=80.0, loss=0.5, host="a"):
    path.mkdir()
    if weights is not None:
        torch.save({"model": weights}, path / "model.pth")
    (path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": loss, "train_time_s": 3.0}) + "\n")
    (path / "metrics.json").write_text(json.dumps({"top1": top1, "host": host, "train_time_s": 9.0}))
    return path


def _compare(a, b):
    return subprocess.run([*SCRIPT, str(a), str(b)], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO)})


def test_equal_runs_differ_only_in_time_and_host(tmp_path):
    weights = {"w": torch.arange(6.0), "b": torch.zeros(2)}
    a = _run_folder(tmp_path / "a", weights)
    b = _run_folder(tmp_path / "b", {k: v.clone() for k, v in weights.items()}, host="b")
    result = _compare(a, b)
    assert result.returncode == 0, result.stderr
    assert "weights: 2 of 2 tensors bitwise equal; largest |difference| 0" in result.stdout
    assert "every record equal" in result.stdout and "every metric equal" in result.stdout


def test_a_changed_tensor_record_and_metric_are_reported(tmp_path):
    a = _run_folder(tmp_path / "a", {"w": torch.zeros(3)})
    b = _run_folder(tmp_path / "b", {"w": torch.tensor([0.0, 0.0, 0.25])}, top1=80.5, loss=0.6)
    result = _compare(a, b)
    assert result.returncode == 1
    assert "weights: 0 of 1 tensors bitwise equal; largest |difference| 0.25" in result.stdout
    assert "records part at record 0" in result.stdout and "top1: 80.0 -> 80.5 (Δ +0.5)" in result.stdout


def test_probe_folders_compare_without_weights(tmp_path):
    a, b = _run_folder(tmp_path / "a"), _run_folder(tmp_path / "b")
    result = _compare(a, b)
    assert result.returncode == 0, result.stderr
    assert "weights: none (a linear probe keeps no model.pth)" in result.stdout
    changed = _compare(a, _run_folder(tmp_path / "c", top1=81.0))
    assert changed.returncode == 1 and "top1: 80.0 -> 81.0" in changed.stdout
    one_sided = _compare(a, _run_folder(tmp_path / "d", {"w": torch.zeros(1)}))
    assert one_sided.returncode != 0 and "model.pth exists: not runs of one config" in one_sided.stderr
    assert "Traceback" not in one_sided.stderr


def _assert_user_error(result, *needles):
    """A user mistake: one line `error: ...` on stderr, exit 2 (exit 1 means "compared and found different")."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_paths_that_are_not_run_folders_are_user_errors_exit_2(tmp_path):
    a = _run_folder(tmp_path / "a")
    allowed = "allowed a finished `mae` run folder holding metrics.json and metrics.jsonl"
    _assert_user_error(_compare(a, tmp_path / "missing"), f"error: {tmp_path / 'missing'} does not exist: {allowed}")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a run\n")
    _assert_user_error(_compare(a_file, a), f"error: {a_file} is invalid: {allowed}")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "metrics.jsonl").write_text("")
    _assert_user_error(_compare(a, unfinished), f"error: {unfinished / 'metrics.json'} is not a file: {allowed}")


def test_runs_of_different_configs_and_broken_files_are_user_errors_exit_2(tmp_path):
    a = _run_folder(tmp_path / "a", {"w": torch.zeros(3)})
    _assert_user_error(_compare(a, _run_folder(tmp_path / "b", {"v": torch.zeros(3)})),
                       "hold different tensors: not runs of one config")
    _assert_user_error(_compare(a, _run_folder(tmp_path / "c")), "model.pth exists: not runs of one config")
    torn = _run_folder(tmp_path / "d", {"w": torch.zeros(3)})
    (torn / "model.pth").write_bytes((torn / "model.pth").read_bytes()[:40])
    _assert_user_error(_compare(a, torn), f"error: {torn / 'model.pth'} cannot be read as a `mae` model.pth")
    garbled = _run_folder(tmp_path / "e", {"w": torch.zeros(3)})
    (garbled / "metrics.json").write_text("{\"top1\": 80")
    _assert_user_error(_compare(a, garbled), f"error: {garbled / 'metrics.json'} is not JSON")
