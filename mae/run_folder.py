"""The run folder contract: what `mae <stage> --out DIR` writes, and how to read it back.

Torch-free, so the workflow, the results scripts and `mae replay` read run folders without importing
torch. Training writes these files; nothing else names them.

    DIR/config.yaml        resolved config + `meta: {git_revision, git_dirty, stage, run_id, command}`
    DIR/environment.json   what produced the run: packages, python, git, host, CPU, GPU (mae.provenance)
    DIR/train.log          the log (also on stdout)
    DIR/metrics.jsonl      one JSON object per logged step
    DIR/system_metrics.jsonl  CPU, memory, disk, network, GPU means over time (mae.system_metrics)
    DIR/checkpoint.pth     resumable state (atomic; the previous one kept as checkpoint.prev.pth until the end)
    DIR/model.pth          final weights, official format {"model": state_dict, "config": {...}}
    DIR/recon.png          pretraining only: reconstruction grid
    DIR/mlflow_run_id      the MLflow run this folder mirrors to (a resumed job continues it)
    DIR/metrics.json       written last, atomically: the run is finished when it exists
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_YAML = "config.yaml"
ENVIRONMENT_JSON = "environment.json"
TRAIN_LOG = "train.log"
METRICS_JSONL = "metrics.jsonl"
SYSTEM_METRICS_JSONL = "system_metrics.jsonl"
METRICS_JSON = "metrics.json"
CHECKPOINT_PTH = "checkpoint.pth"
PREVIOUS_CHECKPOINT_PTH = "checkpoint.prev.pth"
MODEL_PTH = "model.pth"
RECON_PNG = "recon.png"
MLFLOW_RUN_ID = "mlflow_run_id"

WEIGHT_FILES = (MODEL_PTH, CHECKPOINT_PTH, PREVIOUS_CHECKPOINT_PTH)  # what a run cannot be remade without

# Small files mirrored to MLflow as artifacts (when present).
# Fields of metrics.json / metrics.jsonl that measure wall-clock time, and fields that say where and when a
# run happened: the only ones two runs of one config on one machine may differ in (tests/test_determinism.py).
TIMING_FIELDS = frozenset({"images_per_s", "train_time_s", "knn_time_s", "feature_time_s"})
PROVENANCE_FIELDS = frozenset({"host", "git_revision", "mlflow_run_id", "slurm_job_id",
                               "features_reused"})  # a cached probe's features read from its pretraining

ARTIFACTS = (CONFIG_YAML, ENVIRONMENT_JSON, METRICS_JSON, RECON_PNG)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file; [] when it does not exist. Blank lines, a line torn by a
    killed writer and lines that are not JSON objects are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{'model': {'mask_ratio': 0.75}}` -> `{'model.mask_ratio': 0.75}`, through every level of
    nesting; lists and other leaves are kept as values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def read_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """metrics.json of a finished run; None when the run has not finished (no metrics.json).

    Raises ValueError when the file exists but is not a JSON object."""
    path = Path(run_dir) / METRICS_JSON
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: not a JSON object")
    return metrics


def finished_metrics(run_dir: str | Path, stage: str, run_id: str) -> dict[str, Any] | None:
    """metrics.json when `run_dir` already holds this finished run (`stage`, `run_id`), else None.

    Raises:
        UserError: the folder holds a finished *other* run, or a metrics.json that cannot be read.
    """
    from mae.errors import UserError

    try:
        metrics = read_metrics(run_dir)
    except (OSError, ValueError) as exc:  # damaged, not JSON, unreadable
        raise UserError.message("--out", f"{Path(run_dir) / METRICS_JSON} cannot be read ({type(exc).__name__}: "
                                f"{' '.join(str(exc).split())[:120]}): allowed a run folder without one or with a "
                                "valid metrics.json; remove it or choose another --out") from None
    if metrics is None:
        return None
    if metrics.get("run_id") != run_id or metrics.get("stage") != stage:
        raise UserError.message("--out", f"{run_dir} holds a finished {metrics.get('stage')} run "
                                f"{metrics.get('run_id')}, not this config ({stage} {run_id}); choose another --out")
    return metrics


def is_finished(run_dir: str | Path) -> bool:
    """A run is finished when its folder holds metrics.json (written last, atomically)."""
    return (Path(run_dir) / METRICS_JSON).is_file()
