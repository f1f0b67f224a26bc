"""Gather the manifest's run folders into one long table, results/{preset}/runs.csv (workflow/results/runs.py).

Snakemake rule (workflow/rules/aggregate.smk, see docs/DESIGN.md, "Results"):
    rule collect_runs:
        input:  manifest="runs/{preset}/manifest.json", metrics=<every run's metrics.json>
        output: runs="results/{preset}/runs.csv"
        log:    "runs/{preset}/logs/collect_runs.log"
By hand: python workflow/scripts/collect_runs.py runs/tiny/manifest.json results/tiny/runs.csv
"""

import sys

from workflow.results import setup_logging
from workflow.results.runs import write_runs_table

if "snakemake" in globals():
    setup_logging(snakemake.log[0] if snakemake.log else None)  # noqa: F821
    write_runs_table(snakemake.input.manifest, snakemake.output.runs)  # noqa: F821
elif __name__ == "__main__":
    setup_logging(None)
    if len(sys.argv) != 3:
        sys.exit("usage: collect_runs.py MANIFEST_JSON OUTPUT_CSV")
    write_runs_table(sys.argv[1], sys.argv[2])
