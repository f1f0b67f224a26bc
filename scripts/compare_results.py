#!/usr/bin/env python3
"""Compare two regenerations of results/<preset>/: did a rerun give the same numbers?

Runs are content-addressed (the run id is a hash of the resolved config), so the same run id in two
runs.csv files is the same configuration and seed. For every accuracy metric (top1 by default) of a
run present in both files this prints how many are identical and the largest differences, per stage,
and lists runs only one side has. With --tolerance it exits 1 when a difference exceeds it. Each side is
a results folder (its runs.csv) or a runs CSV itself, e.g. one ablation's results/<preset>/runs/<name>.csv.

    .venv/bin/python scripts/compare_results.py results/tiny /path/to/fresh-clone/results/tiny
    .venv/bin/python scripts/compare_results.py results/tiny/runs/fig5_mask_ratio.csv results/tiny/rerun_zen3/runs.csv
    .venv/bin/python scripts/compare_results.py results/tiny other/results/tiny --tolerance 1.0
"""

import argparse
import sys
from pathlib import Path

import pandas as pd


def read_metric(results: Path, metric: str) -> pd.Series:
    path = results if results.suffix == ".csv" else results / "runs.csv"
    if not path.is_file():
        sys.exit(f"error: {path} is not a file (expected results/<preset>/ of a workflow run, or a runs CSV)")
    runs = pd.read_csv(path, usecols=["run_id", "stage", "status", "metric", "value", "ablations"])
    runs = runs[(runs.metric == metric) & (runs.status == "completed")]
    return runs.set_index(["stage", "run_id"])[["value", "ablations"]]


def compare(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    both = old.rename(columns={"value": "value_old"}).join(new[["value"]].rename(columns={"value": "value_new"}),
                                                           how="inner")
    both["diff"] = both.value_new - both.value_old
    return both


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="results/<preset> of one run (or its runs CSV), e.g. the committed results/tiny")
    parser.add_argument("new", type=Path, help="results/<preset> of the rerun (or its runs CSV)")
    parser.add_argument("--metric", default="top1", help="metric of runs.csv to compare (default top1)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="exit 1 if any |new - old| exceeds this many points")
    parser.add_argument("--show", type=int, default=5, help="largest differences listed per stage")
    args = parser.parse_args(argv)

    old, new = read_metric(args.old, args.metric), read_metric(args.new, args.metric)
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
    if args.tolerance is not None:
        beyond = both[both["diff"].abs() > args.tolerance]
        if len(beyond):
            print(f"{len(beyond)} run(s) differ by more than {args.tolerance} points", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
