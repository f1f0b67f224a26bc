"""Everything results/{preset}/ holds, from a manifest: runs.csv, the tables, the findings, the figures.

The same functions the rules' scripts call; the workflow's `onerror` handler calls `aggregate` so a
partial grid still gets its tables, findings and figures ("—" and a note for the runs that did not finish).
"""

from __future__ import annotations

from pathlib import Path


def aggregate(manifest_path: str | Path, runs_csv: str | Path, ablations: dict[str, dict], paper_dir: str | Path,
              preset: str, table_paths: list[str | Path], figure_paths: list[str | Path],
              findings_paths: list[str | Path] = ()) -> None:
    """Write runs/{ablation}.csv for the manifest's ablations and merge runs.csv (next to it), then every
    table, findings and figure path from the merged runs.csv.

    Args:
        manifest_path: runs/{preset}/manifest.json (run_dir paths relative to the working directory).
        runs_csv: where runs.csv goes; the per-ablation files go to its folder's runs/.
        ablations: {name: parsed ablation YAML} of every ablation file (earlier runs of ablations not
            selected now stay in runs.csv and need theirs).
        paper_dir: the folder of the paper's CSV files.
        preset: the preset name (captions, labels).
        table_paths: results/{preset}/tables/{ablation}.{md,tex,csv}.
        figure_paths: results/{preset}/figures/{stem}.{png,pdf}.
        findings_paths: results/{preset}/findings.{md,csv}.
    """
    # Imported here, not at the top: the workflow imports this module at parse time, where matplotlib
    # and seaborn would double the time every `snakemake` call (and every cluster job) spends parsing.
    import matplotlib.pyplot as plt

    from workflow.results.findings import write_findings
    from workflow.results.plots import make_figures
    from workflow.results.runs import manifest_from_runs, write_runs_tables
    from workflow.results.tables import make_tables

    runs, _, _ = write_runs_tables(manifest_path, runs_csv, Path(runs_csv).parent / "runs")
    manifest = manifest_from_runs(runs, ablations)
    make_tables(manifest, runs, ablations, paper_dir, preset, table_paths)
    write_findings(manifest, runs, ablations, paper_dir, preset, list(findings_paths))
    for figure in make_figures(manifest, runs, ablations, paper_dir, preset, figure_paths).values():
        plt.close(figure)
