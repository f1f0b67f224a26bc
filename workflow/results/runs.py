"""Gather run folders into one tidy long table: results/{preset}/runs.csv.

The run folders are the record (config.yaml, metrics.json; see mae/run_folder.py); MLflow only mirrors
them and is not read. One CSV row per (run, metric). A run without a readable metrics.json is listed
once with status "missing" (no metrics.json: failed, preempted or not finished) or "invalid"
(unreadable), and an empty metric, so a partial grid never stops the aggregation.

A workflow run that selects only some ablations must not erase the others' results: each selected
ablation's runs go to results/{preset}/runs/{ablation}.csv, and runs.csv is the merge of every such file
on disk (this run's and earlier runs'). The aggregation then reads runs.csv alone: manifest_from_runs
rebuilds the (ablation, row, seed, stage, run) entries from it and the ablation files.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pandas as pd
import yaml

from mae.run_folder import CONFIG_YAML, TRAIN_LOG, flatten, read_metrics

log = logging.getLogger(__name__)

# Columns that come first in runs.csv; flattened config columns (model.mask_ratio, ...) follow, sorted.
LEADING_COLUMNS = [
    "run_id", "stage", "status", "status_reason", "metric", "value", "seed", "git_revision",
    "slurm_job_id", "host", "world_size", "ablations", "run_dir",
]
# metrics.json keys that describe the run rather than measure it; they become columns, not metric rows.
RUN_FIELDS = {"stage", "run_id", "status", "git_revision", "host", "slurm_job_id", "mlflow_run_id", "world_size"}


def write_manifest(path: str | Path, entries: list[dict]) -> bool:
    """Write the manifest `entries` to `path` (rule write_manifest) unless it holds them already; True when
    written. The aggregation after an interrupted run writes the grid's own manifest too: the rule may not
    have run yet, and the file then names the previous run's grid."""
    text = json.dumps(entries, indent=1) + "\n"
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


def read_manifest(path: str | Path) -> list[dict]:
    """The workflow's manifest: a JSON list of {ablation, paper_ref, row, default, seed, stage, run_id, run_dir}."""
    with open(path) as f:
        entries = json.load(f)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: manifest must be a JSON list, got {type(entries).__name__}")
    return entries


def config_columns(config: dict) -> dict:
    """A run's config as runs.csv columns: {"section.key": value}; a list becomes a JSON string so it
    fits one cell, an empty mapping gives no column."""
    return {name: json.dumps(list(value)) if isinstance(value, (list, tuple)) else value
            for name, value in flatten(config).items() if not isinstance(value, dict)}


def last_log_line(run_dir: Path, max_chars: int = 120) -> str | None:
    """Last non-empty line of train.log (why a run stopped), shortened; None without a log."""
    log_path = run_dir / TRAIN_LOG
    if not log_path.is_file():
        return None
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    if not lines:
        return None
    line = lines[-1]
    return line if len(line) <= max_chars else line[: max_chars - 1] + "…"


def read_run(run_dir: Path) -> dict:
    """One run folder -> {status, status_reason, metrics, config (flattened), meta}.

    status: "completed" (metrics.json read), "missing" (no metrics.json / no folder), "invalid"
    (metrics.json that is not a JSON object). Never raises for a broken run.
    """
    record = {"status": "completed", "status_reason": "", "metrics": {}, "config": {}, "meta": {}}
    config_path = run_dir / CONFIG_YAML
    if config_path.is_file():
        try:
            config = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError as error:
            log.warning("%s: unreadable config.yaml (%s)", run_dir, error)
            config = {}
        record["meta"] = config.pop("meta", {}) or {}
        record["config"] = config_columns(config)

    if not run_dir.is_dir():
        record.update(status="missing", status_reason="no run folder (not started)")
        return record
    try:
        metrics = read_metrics(run_dir)
    except ValueError as error:
        record.update(status="invalid", status_reason=f"unreadable metrics.json ({error})")
        return record
    if metrics is None:
        reason = "no metrics.json (failed or unfinished)"
        tail = last_log_line(run_dir)
        if tail:
            reason += f"; train.log ends: {tail!r}"
        record.update(status="missing", status_reason=reason)
    else:
        record["metrics"] = metrics
        record["status"] = str(metrics.get("status", "completed"))
    return record


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def collect_runs(manifest: list[dict], base_dir: str | Path = ".") -> pd.DataFrame:
    """Long table of every run the manifest names: one row per (run, numeric metric of metrics.json).

    Args:
        manifest: entries with at least run_id, stage, run_dir (relative paths resolve against base_dir).
        base_dir: directory the manifest's run_dir paths are relative to (the workflow's workdir).
    """
    runs: dict[str, dict] = {}
    memberships: dict[str, list[str]] = {}
    for entry in manifest:
        run_id = str(entry["run_id"])
        memberships.setdefault(run_id, [])
        member = f"{entry.get('ablation', '')}:{entry.get('row', '')}"
        if member not in memberships[run_id]:
            memberships[run_id].append(member)
        if run_id not in runs:
            runs[run_id] = entry

    rows = []
    for run_id, entry in runs.items():
        run_dir = Path(entry["run_dir"])
        record = read_run(run_dir if run_dir.is_absolute() else Path(base_dir) / run_dir)
        metrics, meta = record["metrics"], record["meta"]
        seed = record["config"].get("run.seed", entry.get("seed"))
        common = {
            "run_id": run_id,
            "stage": metrics.get("stage") or meta.get("stage") or entry.get("stage"),
            "status": record["status"],
            "status_reason": record["status_reason"],
            "seed": seed,
            "git_revision": metrics.get("git_revision") or meta.get("git_revision"),
            "slurm_job_id": metrics.get("slurm_job_id"),
            "host": metrics.get("host"),
            "world_size": metrics.get("world_size"),
            "ablations": ";".join(memberships[run_id]),
            "run_dir": str(entry["run_dir"]),
            **record["config"],
        }
        numeric = {k: v for k, v in metrics.items() if k not in RUN_FIELDS and is_number(v)}
        if not numeric:
            rows.append({**common, "metric": None, "value": float("nan")})
        for metric, value in sorted(numeric.items()):
            rows.append({**common, "metric": metric, "value": float(value)})
        if record["status"] != "completed":
            log.warning("run %s (%s): %s", run_id, common["stage"], record["status_reason"])

    frame = pd.DataFrame(rows)
    config_names = sorted(c for c in frame.columns if c not in LEADING_COLUMNS)
    frame = frame.reindex(columns=LEADING_COLUMNS + config_names)
    log.info("collected %d runs (%d completed) into %d rows", len(runs),
             frame.loc[frame.status == "completed", "run_id"].nunique() if len(frame) else 0, len(frame))
    return frame


def read_runs_table(path: str | Path) -> pd.DataFrame:
    """runs.csv back into a frame with the id-like columns kept as text (run ids may look numeric)."""
    return pd.read_csv(path, dtype={"run_id": str, "stage": str, "status": str, "metric": str,
                                    "git_revision": str, "slurm_job_id": str, "ablations": str})


def write_runs_table(manifest_path: str | Path, output_path: str | Path, base_dir: str | Path = ".") -> pd.DataFrame:
    """Collect the manifest's runs and write runs.csv; returns the frame as collected."""
    frame = collect_runs(read_manifest(manifest_path), base_dir=base_dir)
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    # nullable dtypes keep integer settings (decoder_depth 8) integers next to runs that lack them
    frame.convert_dtypes().to_csv(output_path, index=False)
    return frame


def memberships(text) -> list[tuple[str, str]]:
    """runs.csv's `ablations` cell ("name:row;name:row") as [(name, row)]."""
    if not isinstance(text, str) or not text:
        return []
    return [tuple(member.split(":", 1)) for member in text.split(";") if ":" in member]


def ablation_runs(frame: pd.DataFrame, ablation: str) -> pd.DataFrame:
    """The rows of runs.csv whose run belongs to `ablation`, their `ablations` cell cut to that ablation."""
    cut = frame["ablations"].map(lambda text: ";".join(f"{name}:{row}" for name, row in memberships(text)
                                                       if name == ablation))
    return frame[cut != ""].assign(ablations=cut[cut != ""])


def merge_runs_tables(paths: list[str | Path]) -> pd.DataFrame:
    """One runs.csv from per-ablation files: each run's rows from the newest file (mtime) that has it,
    its `ablations` cell the union of every file's memberships (sorted, as the manifest is)."""
    frames = []
    for order, path in enumerate(sorted(map(Path, paths), key=lambda p: p.stat().st_mtime_ns)):
        frame = read_runs_table(path)
        frames.append(frame.assign(_order=order))
    if not frames:
        return pd.DataFrame(columns=LEADING_COLUMNS)
    every = pd.concat(frames, ignore_index=True)
    members = {run_id: ";".join(sorted({f"{n}:{r}" for text in group for n, r in memberships(text)}))
               for run_id, group in every.groupby("run_id")["ablations"]}
    newest = every.groupby("run_id")["_order"].transform("max")
    merged = every[every["_order"] == newest].drop(columns="_order")
    merged = merged.assign(ablations=merged["run_id"].map(members))
    config_names = sorted(c for c in merged.columns if c not in LEADING_COLUMNS)
    return merged.reindex(columns=LEADING_COLUMNS + config_names).reset_index(drop=True)


def write_runs_tables(manifest_path: str | Path, runs_csv: str | Path, runs_dir: str | Path,
                      base_dir: str | Path = ".") -> tuple[pd.DataFrame, list[str], list[str]]:
    """Write runs_dir/{ablation}.csv for every ablation of the manifest, then runs.csv as the merge of
    every file in runs_dir (earlier runs' ablations kept as they are).

    Returns (the merged frame, the ablations updated from the manifest, the ablations kept from disk).
    """
    frame = collect_runs(read_manifest(manifest_path), base_dir=base_dir)
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    updated = sorted({name for text in frame.get("ablations", pd.Series(dtype=str)) for name, _ in memberships(text)})
    for name in updated:
        ablation_runs(frame, name).convert_dtypes().to_csv(runs_dir / f"{name}.csv", index=False)
    files = sorted(runs_dir.glob("*.csv"))
    kept = sorted(path.stem for path in files if path.stem not in updated)
    merged = merge_runs_tables(files)
    Path(runs_csv).parent.mkdir(parents=True, exist_ok=True)
    merged.convert_dtypes().to_csv(runs_csv, index=False)
    log.info("runs.csv: updated %s from this run's manifest; kept %s from %s", updated or "nothing",
             kept or "nothing", runs_dir)
    return merged, updated, kept


def manifest_from_runs(runs: pd.DataFrame, ablations: dict[str, dict]) -> list[dict]:
    """The manifest entries runs.csv stands for, {ablation, paper_ref, row, default, seed, stage, run_id,
    run_dir}, sorted by ablation, row, seed and stage (pretrain, finetune, linprobe); memberships of ablations or rows not in `ablations`
    (a renamed row, a removed file) are left out with a warning."""
    entries, unknown = [], set()
    for _, run in runs.drop_duplicates("run_id").iterrows():
        for name, label in memberships(run["ablations"]):
            rows = {str(row["label"]): row for row in ablations.get(name, {}).get("rows", [])}
            if label not in rows:
                unknown.add(f"{name}:{label}")
                continue
            seed = run["seed"]
            entries.append({"ablation": name, "paper_ref": ablations[name].get("paper_ref"), "row": label,
                            "default": bool(rows[label].get("default", False)),
                            "seed": int(seed) if seed == seed and seed is not None else 0,
                            "stage": str(run["stage"]), "run_id": str(run["run_id"]), "run_dir": str(run["run_dir"])})
    if unknown:
        log.warning("runs.csv names rows that no ablation file has (left out): %s", sorted(unknown))
    stages = {"pretrain": 0, "finetune": 1, "linprobe": 2}  # a row's notes read in pipeline order
    return sorted(entries, key=lambda e: (e["ablation"], e["row"], e["seed"], stages.get(e["stage"], 3)))
