"""Shared helpers for the benchmarks: machine / load description, timers, peak memory, host syncs, CSV output."""

from __future__ import annotations

import csv
import os
import platform
import resource
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

from mae.provenance import cpu_kernels, cpu_model

REPO_ROOT = Path(__file__).resolve().parents[1]


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """Host, CPU (its model name, and the vector instruction set torch's kernels use: inside a VM the name
    may be only "AMD EPYC", and AVX2 or AVX512 tells a Zen 3 from a Zen 4), core count, torch threads and
    the 1/5/15-minute load averages right now."""
    import torch
    load = os.getloadavg()
    return {"host": platform.node(), "cpu": cpu_model(), "cpu_kernels": cpu_kernels(), "cpu_count": os.cpu_count(),
            "threads": threads if threads is not None else torch.get_num_threads(),
            "load1": round(load[0], 2), "load5": round(load[1], 2), "load15": round(load[2], 2),
            "torch": torch.__version__}


def set_threads(threads: int | None) -> int:
    """Set torch intra-op threads (None = one per core) and return the number in use."""
    import torch
    torch.set_num_threads(threads or os.cpu_count() or 1)
    return torch.get_num_threads()


class Timer:
    """Wall time and this process's CPU time (all threads) of a block.

    `cpu_s` counts only the time our threads actually ran, so `cpu_s / threads` is what the block
    would take on idle cores: a contention-robust companion to `wall_s` on a shared machine.
    """

    def __enter__(self) -> "Timer":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self._wall
        self.cpu_s = time.process_time() - self._cpu


def rss_mib() -> float:
    """Resident set size of this process now (psutil)."""
    import psutil
    return psutil.Process().memory_info().rss / 2 ** 20


def peak_rss_mib() -> float:
    """High-water resident set size of this process since it started (getrusage ru_maxrss)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if platform.system() == "Darwin" else peak / 2 ** 10


def median(values: Iterable[float]) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else 0.5 * (v[mid - 1] + v[mid])


def write_csv(rows: list[dict[str, Any]], path: str | Path, key: tuple[str, ...] | None = None,
              append: bool = False) -> Path:
    """Write `rows` as CSV. With `append`, rows already in the file are kept unless a new row has
    the same values in the `key` columns (a rerun of one configuration replaces its row)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0]) if rows else []
    old: list[dict[str, Any]] = []
    if append and path.exists():
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
        new_keys = {tuple(str(r.get(k, "")) for k in key or ()) for r in rows}
        old = [r for r in old if key is None or tuple(r.get(k, "") for k in key) not in new_keys]
        for r in old:
            fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(old + rows)
    return path


def count_host_syncs(work: Callable[[], Any]) -> int:
    """How many times `work()` made the host wait for the GPU (torch.cuda's sync debug mode warnings)."""
    import torch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            work()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)
