#!/usr/bin/env python3
"""Compare two run folders of one config: did the rerun give the same bits?

    .venv/bin/python scripts/compare_runs.py runs/tuning/pretrain/18410f3bfeb1 /tmp/rerun/pretrain

For model.pth: how many tensors are bitwise equal and the largest absolute difference of the others
(a linear probe keeps no model.pth: its records and metrics are compared);
for metrics.json: every metric that differs, with both values (timing and provenance fields are left
out: they always differ); for metrics.jsonl: whether the per-step records (losses, lrs) are equal and
the first step where they part. Run folders on two machines (or with two thread counts) are expected to
part by float rounding; this says by how much.

Exit status: 0 when everything compared is equal, 1 when something differs, 2 for a user mistake, one
line on stderr: a path that is not a finished run folder (missing, a file, no metrics.json), or two
folders that are not runs of one config (different tensors, only one holding model.pth).
"""

import argparse
import json
import pickle
import sys
from pathlib import Path

import torch

from mae.errors import UserError
from mae.run_folder import METRICS_JSON, METRICS_JSONL, MODEL_PTH, PROVENANCE_FIELDS, TIMING_FIELDS, read_jsonl

IGNORED = TIMING_FIELDS | PROVENANCE_FIELDS


def load_weights(path: Path) -> dict:
    """The `model` state dict of a model.pth; a UserError naming the file when it is not one (truncated,
    not a torch file, or without the `model` entry `mae` writes)."""
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError.message("run folder", f"{path} cannot be read as a `mae` model.pth ({reason})") from None
    if not isinstance(weights, dict) or not isinstance(weights.get("model"), dict):
        raise UserError.message("run folder", f"{path} is invalid: allowed a model.pth written by `mae` "
                                "(a dict with the entry 'model')")
    return weights["model"]


def compare_weights(a: Path, b: Path) -> tuple[int, int, float]:
    """(tensors, bitwise-equal tensors, largest absolute difference) of two model.pth files."""
    wa, wb = load_weights(a / MODEL_PTH), load_weights(b / MODEL_PTH)
    if wa.keys() != wb.keys():
        raise UserError.message("run folder", f"{a / MODEL_PTH} and {b / MODEL_PTH} hold different tensors: "
                                "not runs of one config")
    equal = sum(torch.equal(wa[k], wb[k]) for k in wa)
    largest = max(((wa[k].double() - wb[k].double()).abs().max().item() for k in wa if wa[k].numel()), default=0.0)
    return len(wa), equal, largest


def read_metrics_json(path: Path) -> dict:
    """The object of a metrics.json; a UserError naming the file when it is not a JSON object."""
    try:
        metrics = json.loads(path.read_text(errors="replace"))
    except ValueError as exc:
        raise UserError.message("run folder", f"{path} is not JSON ({exc}): allowed the metrics.json of a "
                                "finished `mae` run") from None
    if not isinstance(metrics, dict):
        raise UserError.message("run folder", f"{path} is invalid: allowed a JSON object of metrics")
    return metrics


def differing_metrics(a: Path, b: Path) -> dict[str, tuple]:
    """{metric: (value in a, value in b)} of metrics.json, timing and provenance fields left out."""
    ma, mb = (read_metrics_json(d / METRICS_JSON) for d in (a, b))
    keys = [k for k in dict.fromkeys([*ma, *mb]) if k not in IGNORED]
    return {k: (ma.get(k), mb.get(k)) for k in keys if ma.get(k) != mb.get(k)}


def first_differing_record(a: Path, b: Path) -> int | None:
    """Index of the first metrics.jsonl record that differs (timing left out), None when all are equal."""
    ra, rb = ([{k: v for k, v in r.items() if k not in IGNORED} for r in read_jsonl(d / METRICS_JSONL)] for d in (a, b))
    for i, (x, y) in enumerate(zip(ra, rb)):
        if x != y:
            return i
    return None if len(ra) == len(rb) else min(len(ra), len(rb))


def check_run_folder(folder: Path) -> None:
    """A UserError naming `folder` unless it is a folder holding metrics.json and metrics.jsonl."""
    allowed = (f"a finished `mae` run folder holding {METRICS_JSON} and {METRICS_JSONL} "
               "(e.g. runs/tiny/pretrain/<run id>)")
    if not folder.exists():
        raise UserError.message("run folder", f"{folder} does not exist: allowed {allowed}")
    if not folder.is_dir():
        raise UserError.message("run folder", f"{folder} is invalid: allowed {allowed}")
    for name in (METRICS_JSON, METRICS_JSONL):
        if not (folder / name).is_file():
            raise UserError.message("run folder", f"{folder / name} is not a file: allowed {allowed}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="exit status: 0 equal, 1 something differs, 2 a user mistake")
    parser.add_argument("a", type=Path, help="a finished run folder")
    parser.add_argument("b", type=Path, help="a finished run folder of the same config")
    args = parser.parse_args(argv)
    try:
        for folder in (args.a, args.b):
            check_run_folder(folder)
        a_has_weights, b_has_weights = ((folder / MODEL_PTH).is_file() for folder in (args.a, args.b))
        if a_has_weights != b_has_weights:
            only = args.a if a_has_weights else args.b
            raise UserError.message("run folder", f"only {only / MODEL_PTH} exists: not runs of one config")
        tensors, equal, largest = compare_weights(args.a, args.b) if a_has_weights else (0, 0, 0.0)
        metrics = differing_metrics(args.a, args.b)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    record = first_differing_record(args.a, args.b)
    print(f"weights: {equal} of {tensors} tensors bitwise equal; largest |difference| {largest:.3g}" if tensors
          else "weights: none (a linear probe keeps no model.pth)")
    print("metrics.jsonl: " + ("every record equal" if record is None else f"records part at record {record}"))
    print("metrics.json: " + ("every metric equal" if not metrics else f"{len(metrics)} differ"))
    for key, (va, vb) in metrics.items():
        delta = f" (Δ {vb - va:+.4g})" if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else ""
        print(f"  {key}: {va} -> {vb}{delta}")
    return 0 if equal == tensors and not metrics and record is None else 1


if __name__ == "__main__":
    sys.exit(main())
