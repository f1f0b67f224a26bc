"""Everything results/{preset}/ holds, from a manifest: runs.csv, the tables, the figures.

The same functions the rules' scripts call; the workflow's `onerror` handler calls `aggregate` so a
partial grid still gets its tables and figures ("—" and a note for the runs that did not finish).
"""

from __future__ import annotations

from pathlib import Path


def aggregate(manifest_path: str | Path, runs_csv: str | Path, ablations: dict[str, dict], paper_dir: str | Path,
              preset: str, table_paths: list[str | Path], figure_paths: list[str | Path]) -> None:
    """Write runs.csv from the manifest's run folders, then every table and figure path.

    Args:
        manifest_path: runs/{preset}/manifest.json (run_dir paths relative to the working directory).
        runs_csv: where runs.csv goes.
        ablations: {name: parsed ablation YAML} of the grid.
        paper_dir: the folder of the paper's CSV files.
        preset: the preset name (captions, labels).
        table_paths: results/{preset}/tables/{ablation}.{md,tex,csv}.
        figure_paths: results/{preset}/figures/{stem}.{png,pdf}.
    """
    # Imported here, not at the top: the workflow imports this module at parse time, where matplotlib
    # and seaborn would double the time every `snakemake` call (and every cluster job) spends parsing.
    import matplotlib.pyplot as plt

    from workflow.results.plots import make_figures
    from workflow.results.runs import read_manifest, write_runs_table
    from workflow.results.tables import make_tables

    manifest = read_manifest(manifest_path)
    runs = write_runs_table(manifest_path, runs_csv)
    make_tables(manifest, runs, ablations, paper_dir, preset, table_paths)
    for figure in make_figures(manifest, runs, ablations, paper_dir, preset, figure_paths).values():
        plt.close(figure)
