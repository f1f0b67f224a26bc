"""scripts/compare_results.py: a check that compared nothing fails, user mistakes are one line and exit 2.

The comparison itself (identical, changed and one-sided runs, --tolerance) is tested in test_results.py.
"""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = [sys.executable, str(REPO / "scripts" / "compare_results.py")]


def _results_dir(root: Path, name: str, top1: dict[tuple[str, str], float]) -> Path:
    """results/<name>/runs.csv with a completed top1 and steps row per (stage, run id)."""
    rows = [{"run_id": run_id, "stage": stage, "status": "completed", "metric": metric, "value": value,
             "ablations": "fig5_mask_ratio:75"}
            for (stage, run_id), value in top1.items() for metric, value in (("top1", value), ("steps", 10))]
    path = root / name
    path.mkdir()
    pd.DataFrame(rows).to_csv(path / "runs.csv", index=False)
    return path


def _compare(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*SCRIPT, *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=120)


def _assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_no_run_in_both_is_not_a_pass(tmp_path):
    """Two results of different presets share no run id: nothing was compared, so the check fails (exit 1)."""
    old = _results_dir(tmp_path, "old", {("linprobe", "aaa"): 60.0})
    new = _results_dir(tmp_path, "new", {("linprobe", "bbb"): 60.0})
    for extra in ([], ["--tolerance", "0"]):
        result = _compare(old, new, *extra)
        assert result.returncode == 1, (result.returncode, result.stderr)
        assert "top1: 0 runs in both, 1 only in" in result.stdout
        assert result.stderr == f"no completed run with top1 is in both {old} and {new}: nothing was compared\n"


def test_a_metric_only_one_side_holds_compares_nothing(tmp_path):
    old = _results_dir(tmp_path, "old", {("linprobe", "aaa"): 60.0})
    new = tmp_path / "new"
    new.mkdir()
    pd.read_csv(old / "runs.csv").query("metric != 'top1'").to_csv(new / "runs.csv", index=False)
    result = _compare(old, new, "--tolerance", "0")
    assert result.returncode == 1 and "nothing was compared" in result.stderr, result.stderr


def test_a_metric_neither_side_holds_is_a_user_error(tmp_path):
    old = _results_dir(tmp_path, "old", {("linprobe", "aaa"): 60.0})
    result = _compare(old, old, "--metric", "top2", "--tolerance", "0")
    _assert_one_line_error(result, "error: --metric='top2' is invalid: allowed a metric of the completed runs of "
                                   "either side: steps, top1")
    assert result.stdout == ""


@pytest.mark.parametrize("option, value, allowed", [
    ("--tolerance", "-1", "--tolerance=-1.0 is invalid: allowed a number of points >= 0"),
    ("--tolerance", "nan", "--tolerance=nan is invalid: allowed a number of points >= 0"),
    ("--show", "-3", "--show=-3 is invalid: allowed a whole number >= 0"),
])
def test_negative_tolerance_and_show_are_refused(tmp_path, option, value, allowed):
    old = _results_dir(tmp_path, "old", {("linprobe", "aaa"): 60.0})
    _assert_one_line_error(_compare(old, old, option, value), allowed)


def test_identical_results_still_pass(tmp_path):
    old = _results_dir(tmp_path, "old", {("linprobe", "aaa"): 60.0, ("finetune", "bbb"): 70.0})
    result = _compare(old, old, "--tolerance", "0", "--show", "0")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "top1: 2 runs in both, 0 only in" in result.stdout


def test_a_side_that_is_not_a_results_folder_is_one_line_exit_2(tmp_path):
    old = _results_dir(tmp_path, "old", {("linprobe", "aaa"): 60.0})
    allowed = "allowed a results folder holding runs.csv (e.g. results/tiny) or a runs CSV"
    table = tmp_path / "fig5_mask_ratio.csv"  # a table of results/<preset>/tables: a CSV, but not of runs
    table.write_text("mask_ratio,top1\n75,60.0\n")
    _assert_one_line_error(_compare(old, table), f"error: {table} is invalid: {allowed}",
                           "lacks the column(s) run_id, stage, status, metric, value, ablations")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _assert_one_line_error(_compare(old, empty), f"error: {empty} is invalid: {allowed}", "cannot be read as CSV")
    readme = tmp_path / "README.md"
    readme.write_text("# notes\n")
    _assert_one_line_error(_compare(old, readme), f"error: {readme} is invalid: {allowed}")


def test_a_missing_side_is_a_user_error_exit_2(tmp_path):
    """Exit 1 means "compared and found different": a path that is not there is the user's mistake, exit 2."""
    old = _results_dir(tmp_path, "old", {("linprobe", "aaa"): 60.0})
    allowed = "allowed a results folder holding runs.csv (e.g. results/tiny) or a runs CSV"
    _assert_one_line_error(_compare(tmp_path / "nosuch", old),
                           f"error: {tmp_path / 'nosuch'} does not exist: {allowed}")
    _assert_one_line_error(_compare(old, tmp_path), f"error: {tmp_path / 'runs.csv'} is not a file: {allowed}")
    _assert_one_line_error(_compare(old, tmp_path / "nosuch.csv"), f"error: {tmp_path / 'nosuch.csv'} is not a file")
