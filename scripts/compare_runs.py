#!/usr/bin/env python3
"""Compare two run folders of one config: did the rerun give the same bits?

    .venv/bin/python scripts/compare_runs.py runs/tuning/pretrain/18410f3bfeb1 /tmp/rerun/pretrain

For model.pth: how many tensors are bitwise equal and the largest absolute difference of the others
(a linear probe keeps no model.pth: its records and metrics are compared);
for metrics.json: every metric that differs, with both values (timing and provenance fields are left
out: they always differ); for metrics.jsonl: whether the per-step records (losses, lrs) are equal and
the first step where they part. Exit 0 when everything compared is equal, 1 otherwise. Run folders on
two machines (or with two thread counts) are expected to part by float rounding; this says by how much.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from mae.run_folder import METRICS_JSON, METRICS_JSONL, MODEL_PTH, PROVENANCE_FIELDS, TIMING_FIELDS, read_jsonl

IGNORED = TIMING_FIELDS | PROVENANCE_FIELDS


def compare_weights(a: Path, b: Path) -> tuple[int, int, float]:
    """(tensors, bitwise-equal tensors, largest absolute difference) of two model.pth files."""
    wa = torch.load(a / MODEL_PTH, map_location="cpu", weights_only=True)["model"]
    wb = torch.load(b / MODEL_PTH, map_location="cpu", weights_only=True)["model"]
    if wa.keys() != wb.keys():
        sys.exit(f"error: {a / MODEL_PTH} and {b / MODEL_PTH} hold different tensors: not runs of one config")
    equal = sum(torch.equal(wa[k], wb[k]) for k in wa)
    largest = max(((wa[k].double() - wb[k].double()).abs().max().item() for k in wa if wa[k].numel()), default=0.0)
    return len(wa), equal, largest


def differing_metrics(a: Path, b: Path) -> dict[str, tuple]:
    """{metric: (value in a, value in b)} of metrics.json, timing and provenance fields left out."""
    ma, mb = (json.loads((d / METRICS_JSON).read_text()) for d in (a, b))
    keys = [k for k in dict.fromkeys([*ma, *mb]) if k not in IGNORED]
    return {k: (ma.get(k), mb.get(k)) for k in keys if ma.get(k) != mb.get(k)}


def first_differing_record(a: Path, b: Path) -> int | None:
    """Index of the first metrics.jsonl record that differs (timing left out), None when all are equal."""
    ra, rb = ([{k: v for k, v in r.items() if k not in IGNORED} for r in read_jsonl(d / METRICS_JSONL)] for d in (a, b))
    for i, (x, y) in enumerate(zip(ra, rb)):
        if x != y:
            return i
    return None if len(ra) == len(rb) else min(len(ra), len(rb))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="a finished run folder")
    parser.add_argument("b", type=Path, help="a finished run folder of the same config")
    args = parser.parse_args(argv)
    for folder in (args.a, args.b):
        for name in (METRICS_JSON, METRICS_JSONL):
            if not (folder / name).is_file():
                sys.exit(f"error: {folder / name} is not a file (expected a finished `mae` run folder)")
    a_has_weights, b_has_weights = ((folder / MODEL_PTH).is_file() for folder in (args.a, args.b))
    if a_has_weights != b_has_weights:
        only = args.a if a_has_weights else args.b
        sys.exit(f"error: only {only / MODEL_PTH} exists: not runs of one config")
    tensors, equal, largest = compare_weights(args.a, args.b) if a_has_weights else (0, 0, 0.0)
    metrics = differing_metrics(args.a, args.b)
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
