"""Everything results/{preset}/ holds, from a manifest: runs.csv, the tables, the figures.

The same functions the rules' scripts call; the workflow's `onerror` handler calls `aggregate` so a
partial grid still gets its tables and figures ("—" and a note for the runs that did not finish).
"""

from __future__ import annotations

import sys
from pathlib import Path

_SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


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
    # Temporary: the scripts become modules of this package in the next commits.
    sys.path.insert(0, str(_SCRIPTS))
    try:
        import collect_runs
        import make_figures
        import make_tables
    finally:
        sys.path.pop(0)
    manifest = collect_runs.read_manifest(manifest_path)
    runs = collect_runs.write_runs_table(manifest_path, runs_csv)
    make_tables.make_tables(manifest, runs, ablations, str(paper_dir), preset, table_paths)
    for figure in make_figures.make_figures(manifest, runs, ablations, str(paper_dir), preset,
                                            figure_paths).values():
        make_figures.plt.close(figure)
