"""Helpers for the integration tests (imported by conftest.py and the test modules): a real SLURM cluster and real MLflow servers, started
and stopped through scripts/slurm_cluster.sh and scripts/mlflow_server.sh.

A service that genuinely cannot start here (not root, no SLURM) skips its tests with the reason;
with CI=true the same situation FAILS the tests: CI must run them all.
Set MAE_TEST_KEEP_SERVICES=1 to leave the services running after the session (for debugging).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent          # the venv running pytest: mae, snakemake, mlflow
TEST_OUTPUT = REPO_ROOT / "test-output"          # gitignored: screenshots, timings, logs
TIMINGS: dict[str, float] = {}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> None:
    """Skip (locally) or fail (CI=true) a test whose service cannot run on this machine."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: integration services must start, not skip)", pytrace=False)
    pytest.skip(reason)


def record_timing(name: str, seconds: float) -> None:
    TIMINGS[name] = round(seconds, 1)
    TEST_OUTPUT.mkdir(exist_ok=True)
    (TEST_OUTPUT / "timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")


def service_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: the venv first on PATH (SLURM jobs inherit it), MLflow offline."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_logged(cmd: list[str], log: Path, timeout: float, **kw) -> subprocess.CompletedProcess:
    """Run cmd with stdout+stderr into log; on failure the assertion message carries the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, **kw)
    return proc


def stop_session(proc: subprocess.Popen, grace_s: float = 120) -> None:
    """End a command started in its own session (start_new_session=True), e.g. a Snakemake that must cancel
    its SLURM jobs: SIGTERM to the whole process group, SIGKILL after `grace_s`."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return f"({path} missing)"


# SLURM
@dataclass
class SlurmCluster:
    state_dir: Path
    started_here: bool
    env: dict[str, str] = field(default_factory=dict)

    def sacct(self, *args: str) -> str:
        return subprocess.run(["sacct", *args], capture_output=True, text=True, check=True,
                              env=self.env, timeout=60).stdout


# MLflow
class MlflowServer:
    """One `mlflow server` on 127.0.0.1 with a sqlite backend in its own state dir."""

    script = REPO_ROOT / "scripts" / "mlflow_server.sh"

    def __init__(self, state_dir: Path, port: int | None = None):
        self.state_dir = state_dir
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self, timing: str | None = None) -> None:
        if not (VENV_BIN / "mlflow").exists() and shutil.which("mlflow") is None:
            unavailable("mlflow is not installed (scripts/setup.sh test installs it)")
        registry = os.environ.get("MAE_TEST_SERVICES_FILE")  # scripts/test.sh's trap stops what is listed
        if registry:
            with open(registry, "a") as f:
                f.write(f"{self.state_dir}\n")
        log = self.state_dir.parent / f"{self.state_dir.name}_start.log"
        t0 = time.monotonic()
        proc = run_logged([str(self.script), "start", "--port", str(self.port),
                           "--state-dir", str(self.state_dir)], log, timeout=300, env=service_env())
        if timing:
            record_timing(timing, time.monotonic() - t0)
        if proc.returncode != 0:
            pytest.fail(f"scripts/mlflow_server.sh start failed (exit {proc.returncode}):\n{tail(log)}\n"
                        f"server.log:\n{tail(self.state_dir / 'server.log')}", pytrace=False)

    def stop(self) -> None:
        subprocess.run([str(self.script), "stop", "--state-dir", str(self.state_dir)],
                       env=service_env(), timeout=120, capture_output=True)

    def kill9(self) -> None:
        """SIGKILL the server's whole process group (the gunicorn/uvicorn master and its worker)."""
        pid = int((self.state_dir / "server.pid").read_text())
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.2)
        raise AssertionError(f"port {self.port} still answers after SIGKILL of the server group")

    def client(self):
        from mlflow.tracking import MlflowClient
        return MlflowClient(tracking_uri=self.uri)


# `mae` runs
def mae_cmd() -> list[str]:
    exe = VENV_BIN / "mae"
    if not exe.exists():
        pytest.fail(f"{exe} missing: the project is not installed in the venv running pytest", pytrace=False)
    return [str(exe)]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class PretrainRun:
    out: Path
    name: str
    overrides: list[str]
    config: dict = field(default_factory=dict)  # the rendered grid config it ran, when it came from the grid

    @property
    def metrics(self) -> dict:
        return json.loads((self.out / "metrics.json").read_text())

    @property
    def steps(self) -> list[dict]:
        return read_jsonl(self.out / "metrics.jsonl")


SMOKE = REPO_ROOT / "workflow" / "presets" / "smoke.yaml"


def mae_pretrain(out: Path, overrides: list[str], uri: str, timeout: float = 600, wait: bool = True,
                 config: Path = SMOKE, **env_extra: str) -> subprocess.CompletedProcess | subprocess.Popen:
    """`mae pretrain --config CONFIG --out OUT k=v ...` (CONFIG: smoke.yaml) logging to the MLflow server at uri,
    with `env_extra` in its environment."""
    cmd = [*mae_cmd(), "pretrain", "--config", str(config), "--out", str(out), *overrides]
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.parent / f"{out.name}.stdout.log"
    env = service_env(MLFLOW_TRACKING_URI=uri, **env_extra)
    if wait:
        return run_logged(cmd, log, timeout=timeout, env=env)
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)


