"""Gather run folders into one tidy long table: results/{preset}/runs.csv.

The run folders are the record (config.yaml, metrics.json; see mae/run_folder.py); MLflow only mirrors
them and is not read. One CSV row per (run, metric). A run without a readable metrics.json is listed
once with status "missing" (no metrics.json: failed, preempted or not finished) or "invalid"
(unreadable), and an empty metric, so a partial grid never stops the aggregation.
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
