"""scripts/setup.sh: the checks before anything is installed (room for a new .venv, the repository path),
and the install itself (uv, or pip where uv fails)."""

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


def _probe_repo(root: Path) -> Path:
    """A project shaped like this one (setup.sh, pyproject.toml, a lock) whose lock holds one small package."""
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup.sh", root / "scripts" / "setup.sh")
    (root / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=68"]\n'
                                         'build-backend = "setuptools.build_meta"\n\n'
                                         '[project]\nname = "setup-probe"\nversion = "0"\n\n'
                                         '[tool.setuptools]\npy-modules = []\n')
    (root / "requirements.lock").write_text("six==1.17.0\n")
    return root


def _installer(venv: Path, dist: str) -> str:
    return next((venv / "lib").glob(f"python3*/site-packages/{dist}.dist-info/INSTALLER")).read_text().strip()


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the locked (x86_64) install")
@pytest.mark.parametrize("uv_works", [True, False])
def test_the_lock_is_installed_by_uv_or_else_by_pip(tmp_path, uv_works):
    """uv installs the lock and the project, bytecode compiled (its cache removed after); where uv fails,
    pip installs both."""
    repo = _probe_repo(tmp_path / "repo")
    # PYTHONDONTWRITEBYTECODE: no process writes .pyc files later, so the install must compile them
    env = {**{k: v for k, v in os.environ.items() if k not in ("TORCH_SPEC", "VIRTUAL_ENV")},
           "PYTHONDONTWRITEBYTECODE": "1"}
    if not uv_works:
        env["UV_OFFLINE"] = "1"  # read by uv only: with its cache empty, uv can install nothing
    out = subprocess.run(["bash", "scripts/setup.sh", "main"], cwd=repo, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    venv = repo / ".venv"
    assert subprocess.run([venv / "bin" / "python", "-c", "import six"]).returncode == 0
    assert _installer(venv, "six-1.17.0") == ("uv" if uv_works else "pip")
    assert _installer(venv, "setup_probe-0") == ("uv" if uv_works else "pip")
    assert list((venv / "lib").glob("python3*/site-packages/__pycache__/six.cpython-3*.pyc"))  # compiled once
    assert not (venv / ".uv-cache").exists()
    assert list(venv.glob(".installed-*-test")), list(venv.iterdir())
    fallbacks = [line for line in out.stderr.splitlines() if "trying pip" in line]
    assert fallbacks == ([] if uv_works else ["setup: uv could not install -r requirements.lock; trying pip",
                                              "setup: uv could not install --no-deps -e .; trying pip"]), out.stderr
