"""scripts/setup.sh checks for room before it makes a new .venv, instead of pip failing halfway."""

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the check guards the locked (x86_64) install")
def test_a_new_venv_without_room_is_one_line_before_anything_is_installed(tmp_path):
    (tmp_path / "scripts").mkdir()
    for name in ("scripts/setup.sh", "pyproject.toml", "requirements.lock"):
        shutil.copy(REPO / name, tmp_path / name)
    env = {**os.environ, "MAE_SETUP_MIN_FREE_GIB": str(1 << 30)}  # more than any disk has
    env.pop("TORCH_SPEC", None)
    out = subprocess.run(["bash", "scripts/setup.sh", "main"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"setup: a new .venv needs about {1 << 30} GiB free on /"), out.stderr
    assert "GiB are: free some space and run again" in lines[0]
    assert not (tmp_path / ".venv").exists()


def test_a_repository_path_with_whitespace_is_one_line_before_anything_is_installed(tmp_path):
    """.venv would live under it, and Snakemake cannot run script rules from such an environment."""
    repo = tmp_path / "My Projects" / "mae"
    (repo / "scripts").mkdir(parents=True)
    for name in ("scripts/setup.sh", "pyproject.toml", "requirements.lock"):
        shutil.copy(REPO / name, repo / name)
    out = subprocess.run(["bash", "scripts/setup.sh", "main"], cwd=repo, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert lines == [f"error: repository path='{repo}' is invalid: allowed a path without whitespace (.venv goes "
                     "there, and Snakemake cannot run script rules from such an environment: snakemake/snakemake#2645)"]
    assert not (repo / ".venv").exists()
