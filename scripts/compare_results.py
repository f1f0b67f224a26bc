#!/usr/bin/env python3
"""Compare two regenerations of results/<preset>/: did a rerun give the same numbers?

Runs are content-addressed (the run id is a hash of the resolved config), so the same run id in two
runs.csv files is the same configuration and seed. For every accuracy metric (top1 by default) of a
run present in both files this prints how many are identical and the largest differences, per stage,
and lists runs only one side has. Each side is a results folder (its runs.csv) or a runs CSV itself,
e.g. one ablation's results/<preset>/runs/<name>.csv.

Exit status: 0 when the runs in both compare (within --tolerance, when given); 1 when a difference
exceeds --tolerance, or when no completed run of --metric is in both sides (nothing was compared, so
nothing says the rerun gave the same numbers); 2 for a user mistake, one line on stderr: a side that is
not a results folder or runs CSV, a --metric that neither side holds, a negative --tolerance or --show.

    .venv/bin/python scripts/compare_results.py results/tiny /path/to/fresh-clone/results/tiny
    .venv/bin/python scripts/compare_results.py results/tiny/runs/fig5_mask_ratio.csv results/tiny/rerun_zen3/runs.csv
    .venv/bin/python scripts/compare_results.py results/tiny other/results/tiny --tolerance 1.0
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mae.errors import UserError  # noqa: E402

COLUMNS = ["run_id", "stage", "status", "metric", "value", "ablations"]
RESULTS_ALLOWED = ("a results folder holding runs.csv (e.g. results/tiny) or a runs CSV "
                   "(e.g. results/tiny/runs/fig5_mask_ratio.csv)")


def runs_csv(results: Path) -> Path:
    """The runs CSV a side names: `results` itself when it is a .csv, else results/runs.csv; a UserError
    naming the path when there is none (a missing path, a folder without runs.csv, any other file)."""
    if results.suffix == ".csv":
        if not results.is_file():
            raise UserError.message("results", f"{results} is not a file: allowed {RESULTS_ALLOWED}")
        return results
    if results.is_dir():
        if not (results / "runs.csv").is_file():
            raise UserError.message("results", f"{results / 'runs.csv'} is not a file: allowed {RESULTS_ALLOWED}")
        return results / "runs.csv"
    if results.exists():
        raise UserError.message("results", f"{results} is invalid: allowed {RESULTS_ALLOWED}")
    raise UserError.message("results", f"{results} does not exist: allowed {RESULTS_ALLOWED}")


def read_completed(results: Path) -> pd.DataFrame:
    """The rows of completed runs of a side's runs CSV (columns COLUMNS); a UserError when the file is not
    a runs CSV (unreadable, not CSV, or without the columns of one, e.g. a table of results/<preset>/tables)."""
    path = runs_csv(results)
    try:
        header = pd.read_csv(path, nrows=0).columns
        missing = [column for column in COLUMNS if column not in header]
        if missing:
            raise UserError.message("results", f"{path} is invalid: allowed {RESULTS_ALLOWED}; "
                                    f"it lacks the column(s) {', '.join(missing)}")
        runs = pd.read_csv(path, usecols=COLUMNS)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UserError.message("results", f"{path} is invalid: allowed {RESULTS_ALLOWED}; "
                                f"it cannot be read as CSV ({reason})") from None
    except OSError as exc:
        raise UserError.message("results", f"{path} cannot be read: {exc.strerror or exc}") from None
    return runs[runs.status == "completed"]


def metric_values(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The value and ablations of `metric` per (stage, run_id) of completed runs."""
    return runs[runs.metric == metric].set_index(["stage", "run_id"])[["value", "ablations"]]


def compare(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    both = old.rename(columns={"value": "value_old"}).join(new[["value"]].rename(columns={"value": "value_new"}),
                                                           how="inner")
    both["diff"] = both.value_new - both.value_old
    return both


def check_arguments(args: argparse.Namespace) -> None:
    """A UserError for a --tolerance or --show that cannot mean anything (negative, or not a number)."""
    if args.tolerance is not None and not (args.tolerance >= 0):  # `not >=` also refuses nan
        raise UserError("--tolerance", args.tolerance, "a number of points >= 0")
    if args.show < 0:
        raise UserError("--show", args.show, "a whole number >= 0")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="exit status: 0 same (within --tolerance), 1 a difference beyond "
                                            "--tolerance or no run in both, 2 a user mistake")
    parser.add_argument("old", type=Path, help="results/<preset> of one run (or its runs CSV), e.g. the committed results/tiny")
    parser.add_argument("new", type=Path, help="results/<preset> of the rerun (or its runs CSV)")
    parser.add_argument("--metric", default="top1", help="metric of runs.csv to compare (default top1)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="exit 1 if any |new - old| exceeds this many points (>= 0)")
    parser.add_argument("--show", type=int, default=5, help="largest differences listed per stage (>= 0)")
    args = parser.parse_args(argv)
    try:
        check_arguments(args)
        old_runs, new_runs = read_completed(args.old), read_completed(args.new)
        metrics = sorted(set(old_runs.metric.astype(str)) | set(new_runs.metric.astype(str)))
        if args.metric not in metrics:
            raise UserError("--metric", args.metric, "a metric of the completed runs of either side: "
                            + (", ".join(metrics) or "none (neither side has a completed run)"))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    old, new = metric_values(old_runs, args.metric), metric_values(new_runs, args.metric)
    both = compare(old, new)
    print(f"{args.metric}: {len(both)} runs in both, {len(old) - len(both)} only in {args.old}, "
          f"{len(new) - len(both)} only in {args.new}")
    for stage, group in both.groupby(level="stage"):
        identical = int((group["diff"] == 0).sum())
        print(f"  {stage}: {len(group)} runs, {identical} identical, max |diff| {group['diff'].abs().max():.2f}, "
              f"mean |diff| {group['diff'].abs().mean():.2f}")
        for (_, run_id), row in group.reindex(group["diff"].abs().sort_values(ascending=False).index).head(args.show).iterrows():
            if row["diff"] != 0:
                print(f"    {run_id} {row.ablations}: {row.value_old:.2f} -> {row.value_new:.2f} ({row['diff']:+.2f})")
    for side, frame, other in ((args.old, old, new), (args.new, new, old)):
        for stage, run_id in frame.index.difference(other.index):
            print(f"  only in {side}: {stage}/{run_id} ({frame.loc[(stage, run_id), 'ablations']})")
    if both.empty:
        print(f"no completed run with {args.metric} is in both {args.old} and {args.new}: nothing was compared",
              file=sys.stderr)
        return 1
    if args.tolerance is not None:
        beyond = both[both["diff"].abs() > args.tolerance]
        if len(beyond):
            print(f"{len(beyond)} run(s) differ by more than {args.tolerance} points", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
