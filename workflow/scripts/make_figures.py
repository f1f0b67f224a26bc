"""Figures, ours against the paper, plus reconstructions and loss curves (workflow/results/plots.py).

Snakemake rule (workflow/rules/aggregate.smk, see docs/DESIGN.md, "Results"):
    rule make_figures:
        input:  manifest="runs/{preset}/manifest.json", runs="results/{preset}/runs.csv"
        output: results/{preset}/figures/{stem}.{png,pdf}: the stem picks the figure (the registry
                workflow.results.figures.FIGURES, plus reconstruction and loss_curves), each suffix is one copy
        params: ablations={name: parsed ablation YAML, every file}, preset="{preset}", paper_dir="paper"
        log:    "runs/{preset}/logs/make_figures.log"
The run folders (recon.png, metrics.jsonl) are read through the manifest's run_dir paths, relative to
the working directory.
"""

import sys

import matplotlib.pyplot as plt

from workflow.results import setup_logging
from workflow.results.plots import make_figures
from workflow.results.runs import manifest_from_runs, read_runs_table

if "snakemake" in globals():
    setup_logging(snakemake.log[0] if snakemake.log else None)  # noqa: F821
    ablations = dict(snakemake.params.ablations)  # noqa: F821
    runs = read_runs_table(snakemake.input.runs)  # noqa: F821
    # runs.csv holds earlier runs of ablations not selected now: the loss curves and the reconstruction show them too
    for built in make_figures(manifest_from_runs(runs, ablations), runs, ablations,
                              snakemake.params.paper_dir, snakemake.params.preset,  # noqa: F821
                              list(snakemake.output)).values():  # noqa: F821
        plt.close(built)
elif __name__ == "__main__":
    sys.exit("make_figures.py runs under Snakemake (rule make_figures); call workflow.results.plots.make_figures directly")
