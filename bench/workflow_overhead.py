"""Workflow overhead: Snakemake dry-run time of a preset's full grid, and per-job overhead of `mae` jobs.

    python -m bench.workflow_overhead                      # paper dry run x3, smoke pretrain job x2
    python -m bench.workflow_overhead --dry-run-presets paper tiny --repeats 2 --jobs 3

Rows written to results/bench/workflow_overhead.csv:
* `dry_run`: wall time of `snakemake -n --config preset=<p> data_root=<dir>` from the repo root (DAG of every
  ablation's runs; nothing is executed), median / min / max over repeats, and the number of jobs;
* `smoke_pretrain`: wall time of one `mae pretrain --config workflow/presets/smoke.yaml --out <tmp>`
  process (the shell line of the workflow's pretrain rule, without Snakemake) against the
  `train_time_s` it reports in metrics.json; overhead = wall - train_time_s (interpreter start,
  imports, dataset and model build, FLOP count, checkpoints and reconstruction figure);
* `python_import`: wall time of `python -c "import mae.train, mae.cli"`, the import part of that overhead.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO_ROOT, machine_info, median, write_csv
from mae.run_folder import read_metrics

VENV_BIN = Path(sys.executable).parent


def _timed(cmd: list[str], env: dict[str, str] | None = None, cwd: Path = REPO_ROOT) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, proc


def count_jobs(dry_run_output: str) -> int | None:
    """The `total` of Snakemake's job-stats table (None when absent, e.g. nothing to do)."""
    m = re.search(r"^total\s+(\d+)", dry_run_output, flags=re.MULTILINE)
    return int(m.group(1)) if m else None


def dry_run(preset: str, repeats: int, data_root: str) -> dict:
    snakemake = str(VENV_BIN / "snakemake")
    times, jobs = [], None
    for _ in range(repeats):
        wall, proc = _timed([snakemake, "-n", "--quiet", "rules", "--config", f"preset={preset}",
                             f"data_root={data_root}"])
        if proc.returncode != 0:
            raise RuntimeError(f"snakemake -n --config preset={preset} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        times.append(wall)
        jobs = count_jobs(proc.stdout + proc.stderr)
    return {"what": "dry_run", "preset": preset, "command": f"snakemake -n --config preset={preset} data_root=<dir>",
            "repeats": repeats, "wall_s_median": round(median(times), 3), "wall_s_min": round(min(times), 3),
            "wall_s_max": round(max(times), 3), "jobs": jobs if jobs is not None else "",
            "reported_s_median": "", "overhead_s_median": "", "overhead_s_min": "", "overhead_s_max": ""}


def smoke_jobs(repeats: int) -> list[dict]:
    mae = str(VENV_BIN / "mae")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}  # smoke jobs get 1 thread
    walls, reported = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "pretrain"
            wall, proc = _timed([mae, "pretrain", "--config", "workflow/presets/smoke.yaml", "--out", str(out)], env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"mae pretrain (smoke) failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            metrics = read_metrics(out)
            walls.append(wall)
            reported.append(float(metrics["train_time_s"]))
    overheads = [w - r for w, r in zip(walls, reported)]
    imports = []
    for _ in range(repeats):
        wall, proc = _timed([sys.executable, "-c", "import mae.train, mae.cli"], env=env)
        if proc.returncode == 0:
            imports.append(wall)
    rows = [{"what": "smoke_pretrain", "preset": "smoke",
             "command": "mae pretrain --config workflow/presets/smoke.yaml --out <tmp>", "repeats": repeats,
             "wall_s_median": round(median(walls), 3), "wall_s_min": round(min(walls), 3),
             "wall_s_max": round(max(walls), 3), "jobs": 1, "reported_s_median": round(median(reported), 3),
             "overhead_s_median": round(median(overheads), 3), "overhead_s_min": round(min(overheads), 3),
             "overhead_s_max": round(max(overheads), 3)}]
    if imports:
        rows.append({"what": "python_import", "preset": "", "command": "python -c 'import mae.train, mae.cli'",
                     "repeats": len(imports), "wall_s_median": round(median(imports), 3),
                     "wall_s_min": round(min(imports), 3), "wall_s_max": round(max(imports), 3), "jobs": "",
                     "reported_s_median": "", "overhead_s_median": "", "overhead_s_min": "", "overhead_s_max": ""})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run-presets", nargs="*", default=["paper"])
    p.add_argument("--repeats", type=int, default=3, help="dry runs per preset")
    p.add_argument("--data-root", default=None, help="data_root for the dry run (default: an empty temporary folder; "
                   "nothing is read in a dry run)")
    p.add_argument("--jobs", type=int, default=2, help="smoke pretrain jobs (0 = none)")
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "bench" / "workflow_overhead.csv"))
    args = p.parse_args(argv)
    info = machine_info()
    print(f"# {info['cpu']}, {info['cpu_count']} cores, load average {info['load1']} / {info['load5']} / {info['load15']}")
    rows = []
    tmp_root = tempfile.TemporaryDirectory()
    data_root = args.data_root or tmp_root.name
    for preset in args.dry_run_presets:
        r = dry_run(preset, args.repeats, data_root)
        rows.append(r)
        print(f"dry run preset={preset}: {r['wall_s_median']:.2f} s median ({r['wall_s_min']:.2f}-{r['wall_s_max']:.2f}), "
              f"{r['jobs']} jobs", flush=True)
    if args.jobs > 0:
        for r in smoke_jobs(args.jobs):
            rows.append(r)
            extra = (f", reports train_time_s {r['reported_s_median']:.2f} s -> overhead {r['overhead_s_median']:.2f} s "
                     f"({r['overhead_s_min']:.2f}-{r['overhead_s_max']:.2f})" if r["what"] == "smoke_pretrain" else "")
            print(f"{r['what']}: {r['wall_s_median']:.2f} s median wall{extra}", flush=True)
    load = os.getloadavg()
    for r in rows:
        r.update({"host": info["host"], "cpu_count": info["cpu_count"], "load1_start": info["load1"],
                  "load1_end": round(load[0], 2)})
    print(f"wrote {write_csv(rows, args.out)}")


if __name__ == "__main__":
    main()
