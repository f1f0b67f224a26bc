"""Shared pytest fixtures and marker handling for the whole suite.

Markers (declared in pyproject.toml): `slow`, `gpu` (skipped here when no CUDA device is present),
`integration` (real SLURM cluster / MLflow server / Chromium; see tests/integration/conftest.py).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


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


def pytest_configure(config: pytest.Config) -> None:
    # Offline machines: no telemetry calls from MLflow in any test.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
