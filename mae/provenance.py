"""What produced a run: code revision, package versions and the machine.

`environment_record()` is written to the run folder as `environment.json` (`mae.run_folder`) and
mirrored to MLflow as `mae.env.*` tags, so a number can always be traced to the software and hardware
that made it. Every probe is best-effort: a missing tool gives None, never an error.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "torchvision", "timm", "numpy", "mlflow", "snakemake")


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.cache
def git_revision() -> str:
    """`git rev-parse HEAD` of the repository holding this package, or 'unknown' (asked once per process:
    config.yaml, metrics.json and the MLflow tags all name it)."""
    return _run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent) or "unknown"


def git_dirty() -> bool | None:
    """True when tracked files of the repository differ from HEAD; None outside a git checkout."""
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).resolve().parent)
    return None if status is None else bool(status)


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpuinfo_field(name: str) -> str | None:
    """The first `name` line of /proc/cpuinfo (`model name`, `vendor_id`, `flags`), None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (else platform.processor(), else the machine type)."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def gpu_record() -> dict[str, Any]:
    """CUDA / cuDNN versions, the GPU model and the driver, when torch sees a GPU."""
    import torch

    record: dict[str, Any] = {"cuda": torch.version.cuda, "cudnn": None, "gpu": None, "gpu_count": 0, "driver": None}
    if torch.cuda.is_available():
        record.update(cudnn=torch.backends.cudnn.version(), gpu=torch.cuda.get_device_name(0),
                      gpu_count=torch.cuda.device_count())
        driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        record["driver"] = driver.splitlines()[0] if driver else None
    return record


def cpu_kernels() -> str:
    """The vector instruction set torch's CPU kernels run with (AVX512, AVX2, ...): the CPU's best, or less
    where ATEN_CPU_CAPABILITY says so. Runs on two machines repeat bit for bit only with the same set."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def environment_record() -> dict[str, Any]:
    """The record written as environment.json: git, packages, python, host, CPU (and its kernels), GPU."""
    return {
        "git_revision": git_revision(),
        "git_dirty": git_dirty(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_kernels": cpu_kernels(),
        **gpu_record(),
    }


def environment_tags(record: dict[str, Any]) -> dict[str, str]:
    """The record as flat MLflow tags (`mae.env.torch`, `mae.env.gpu`, ...); None values left out."""
    flat = {**{k: v for k, v in record.items() if k != "packages"}, **record.get("packages", {})}
    return {f"mae.env.{key}": str(value) for key, value in flat.items() if value is not None}
