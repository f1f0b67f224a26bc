"""Paper-vs-ours tables, one per ablation, in Markdown, LaTeX and CSV (workflow/results/tables.py).

Snakemake rule (workflow/rules/aggregate.smk, see docs/DESIGN.md, "Results"):
    rule make_tables:
        input:  manifest="runs/{preset}/manifest.json", runs="results/{preset}/runs.csv"
        output: results/{preset}/tables/{ablation}.{md,tex,csv} (the stem names the ablation, the suffix the format)
        params: ablations={name: parsed ablation YAML}, preset="{preset}", paper_dir="paper"
        log:    "runs/{preset}/logs/make_tables.log"
"""

import sys

from workflow.results import setup_logging
from workflow.results.runs import read_manifest, read_runs_table
from workflow.results.tables import make_tables

if "snakemake" in globals():
    setup_logging(snakemake.log[0] if snakemake.log else None)  # noqa: F821
    make_tables(read_manifest(snakemake.input.manifest), read_runs_table(snakemake.input.runs),  # noqa: F821
                dict(snakemake.params.ablations), snakemake.params.paper_dir,  # noqa: F821
                snakemake.params.preset, list(snakemake.output))  # noqa: F821
elif __name__ == "__main__":
    sys.exit("make_tables.py runs under Snakemake (rule make_tables); call workflow.results.tables.make_tables directly")
