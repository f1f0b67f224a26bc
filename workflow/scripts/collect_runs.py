"""Gather the manifest's run folders into results/{preset}/runs/{ablation}.csv per selected ablation and
merge every such file into results/{preset}/runs.csv (workflow/results/runs.py): ablations not selected
in this run keep their earlier results.

Snakemake rule (workflow/rules/aggregate.smk, see docs/DESIGN.md, "Results"):
    rule collect_runs:
        input:  manifest="runs/{preset}/manifest.json", metrics=<every run's metrics.json>
        output: runs="results/{preset}/runs.csv", ablation_runs=results/{preset}/runs/{ablation}.csv
                (the per-ablation files go to the runs/ folder next to runs.csv)
        log:    "runs/{preset}/logs/collect_runs.log"
By hand: python workflow/scripts/collect_runs.py runs/tiny/manifest.json results/tiny/runs.csv
"""

import sys
from pathlib import Path

from workflow.results import setup_logging
from workflow.results.runs import write_runs_tables


def collect(manifest: str, runs_csv: str) -> None:
    runs_dir = str(Path(runs_csv).parent / "runs")
    _, updated, kept = write_runs_tables(manifest, runs_csv, runs_dir)
    # on the console too: a subset run says what it changed
    print(f"{runs_csv}: updated {', '.join(updated) or 'nothing'}; kept from earlier runs: "
          f"{', '.join(kept) or 'nothing'} ({runs_dir}/<ablation>.csv)", file=sys.stderr)


if "snakemake" in globals():
    setup_logging(snakemake.log[0] if snakemake.log else None)  # noqa: F821
    collect(snakemake.input.manifest, snakemake.output.runs)  # noqa: F821
elif __name__ == "__main__":
    setup_logging(None)
    if len(sys.argv) != 3:
        sys.exit("usage: collect_runs.py MANIFEST_JSON OUTPUT_CSV")
    collect(sys.argv[1], sys.argv[2])
