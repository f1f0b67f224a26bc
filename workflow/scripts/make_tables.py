"""Paper-vs-ours tables, one per ablation, in Markdown, LaTeX and CSV (workflow/results/tables.py), and
the paper's findings with intervals and verdicts (workflow/results/findings.py), from runs.csv.

Snakemake rule (workflow/rules/aggregate.smk, see docs/DESIGN.md, "Results"):
    rule make_tables:
        input:  manifest="runs/{preset}/manifest.json", runs="results/{preset}/runs.csv"
        output: results/{preset}/tables/{ablation}.{md,tex,csv} (the stem names the ablation, the suffix the
                format), results/{preset}/findings.{md,csv}
        params: ablations={name: parsed ablation YAML, every file}, preset="{preset}", paper_dir="paper"
        log:    "runs/{preset}/logs/make_tables.log"
"""

import sys
from pathlib import Path

from workflow.results import setup_logging
from workflow.results.findings import write_findings
from workflow.results.runs import manifest_from_runs, read_runs_table
from workflow.results.tables import make_tables

if "snakemake" in globals():
    setup_logging(snakemake.log[0] if snakemake.log else None)  # noqa: F821
    ablations = dict(snakemake.params.ablations)  # noqa: F821
    runs = read_runs_table(snakemake.input.runs)  # noqa: F821
    manifest = manifest_from_runs(runs, ablations)  # runs.csv holds earlier runs of other ablations too
    outputs = [Path(path) for path in snakemake.output]  # noqa: F821
    findings = [path for path in outputs if path.stem == "findings"]
    make_tables(manifest, runs, ablations, snakemake.params.paper_dir, snakemake.params.preset,  # noqa: F821
                [path for path in outputs if path not in findings])
    write_findings(manifest, runs, ablations, snakemake.params.paper_dir, snakemake.params.preset,  # noqa: F821
                   findings)
elif __name__ == "__main__":
    sys.exit("make_tables.py runs under Snakemake (rule make_tables); call workflow.results.tables.make_tables directly")
