"""Shared pytest fixtures and marker handling for the whole suite.

Markers (declared in pyproject.toml): `slow`, `gpu` (skipped here when no CUDA device is present),
`integration` (real SLURM cluster / MLflow server / Chromium; see tests/integration/conftest.py).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
INTEGRATION_TIMINGS = REPO_ROOT / "test-output" / "timings.json"  # written by tests/integration as they run
_STARTED = pytest.StashKey[float]()  # when this pytest session was configured


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the folder holding pyproject.toml)."""
    return REPO_ROOT


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # GPU tests skip cleanly without CUDA; torch is only imported when such tests were collected.
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadfile` (scripts/test.sh runs `-n 2 --dist loadfile`) with the integration tests as one
    file: a file runs whole on one worker, so its module fixtures (the hostile-input cases, ...) run once,
    and the integration tests share one worker, the only one that starts the session's SLURM cluster and
    MLflow server. (xdist_group marks would say this, but `--dist loadgroup` ignores them under pytest
    9.2: pytest-dev/pytest-xdist#1386.) The integration scope comes first in collection order, so the
    longest unit of work starts first."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FilesWithIntegrationAsOne(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return "tests/integration" if path.startswith("tests/integration/") else path

    return FilesWithIntegrationAsOne(config, log)


def pytest_configure(config: pytest.Config) -> None:
    # Offline machines: no telemetry calls from MLflow in any test.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    config.stash[_STARTED] = time.time()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """The integration tests' service timings, read from their file (under xdist they ran in a worker)."""
    if hasattr(config, "workerinput") or not INTEGRATION_TIMINGS.exists():
        return
    if INTEGRATION_TIMINGS.stat().st_mtime < config.stash[_STARTED]:
        return  # from an earlier session
    terminalreporter.section("integration timings (s)")
    for name, secs in json.loads(INTEGRATION_TIMINGS.read_text()).items():
        terminalreporter.write_line(f"{name:45s} {secs:8.1f}")
