"""Shared pieces of the reliability tests (tests/test_reliability_*.py, tests/integration/test_slurm_requeue.py).

Every reliability test injects one real fault (a signal, a damaged file, a dead or slow server, a bad
input) into real `mae` / `snakemake` processes and checks the outcome the design promises
(docs/DESIGN.md: exit codes 0/2/3/75, run folder, metrics.json last). Each test records what it did
and what it saw through the `fault` fixture into test-output/reliability.json;
`python tests/make_reliability_table.py` renders that file as the table in docs/RELIABILITY.md.

    pytest tests/test_reliability_*.py -m "not slow"       # the quick ones
    pytest tests/test_reliability_*.py tests/integration/test_slurm_requeue.py
    python tests/make_reliability_table.py
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mae.run_folder import TIMING_FIELDS

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
MAE = str(VENV_BIN / "mae")
SMOKE = REPO / "workflow" / "presets" / "smoke.yaml"
TEST_OUTPUT = REPO / "test-output"
RELIABILITY_JSON = TEST_OUTPUT / "reliability.json"

# 256 synthetic images / batch 32 = 8 steps per epoch, 3 epochs = 24 steps; checkpoints every 5 steps
# fall off the epoch ends (8, 16) on purpose; one log record per step.
LONG_SMOKE = ["data.train_subset=256", "pretrain.epochs=3", "run.checkpoint_every_steps=5",
              "run.log_every_steps=1", "run.threads=1", "tracking.enabled=false"]
TOTAL_STEPS = 24

# metrics.json fields that measure wall-clock time, and ones that legitimately differ between an
# undisturbed and a resumed run (git_revision: teammates commit to this checkout while tests run).
TIMING_KEYS = TIMING_FIELDS  # wall-clock measurements
RESUME_KEYS = {"resumed_from_step", "git_revision"}


def mae_env(**extra: str) -> dict[str, str]:
    """Environment of a `mae` subprocess: the venv first on PATH, one thread, MLflow offline, no inherited URI."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def pretrain_cmd(out: Path, *overrides: str, config: Path | None = SMOKE) -> list[str]:
    cmd = [MAE, "pretrain"]
    if config is not None:
        cmd += ["--config", str(config)]
    return [*cmd, "--out", str(out), *overrides]


@dataclass
class Result:
    """A finished subprocess: exit code, captured output, wall time."""

    cmd: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def explain(self) -> str:
        return (f"$ {' '.join(self.cmd)}\nexit {self.returncode} after {self.seconds:.1f} s\n"
                f"--- stdout (tail)\n{self.stdout[-3000:]}\n--- stderr (tail)\n{self.stderr[-3000:]}")


def run(cmd: list[str], timeout: float = 600, env: dict[str, str] | None = None, cwd: Path | None = None) -> Result:
    """Run to completion (bounded by `timeout`: a hang fails the test instead of the suite)."""
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or mae_env(), cwd=cwd)
    return Result(cmd, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)


def run_many(cmds: list[list[str]], workers: int = 3, **kw) -> list[Result]:
    """Several independent commands at once (most of their time is importing torch)."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda c: run(c, **kw), cmds))


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start in its own process group (as SLURM's proctrack/pgid does), output into `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env or mae_env(),
                            start_new_session=True)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def wait_for_records(proc: subprocess.Popen, jsonl: Path, n: int, timeout: float = 300) -> int:
    """Poll until `jsonl` holds `n` records (or the process ended); returns the count seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = len(read_jsonl(jsonl))
        if count >= n or proc.poll() is not None:
            return count
        time.sleep(0.02)
    raise AssertionError(f"{jsonl} did not reach {n} records in {timeout} s")


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock field."""
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_jsonl(run_dir / "metrics.jsonl")]


def metrics(run_dir: Path, drop: set[str] = TIMING_KEYS | RESUME_KEYS) -> dict:
    data = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in data.items() if k not in drop}


def assert_same_weights(a: Path, b: Path) -> int:
    """torch.equal on every tensor of two model.pth files; returns the number of tensors compared."""
    import torch
    sd_a = torch.load(a, map_location="cpu", weights_only=True)["model"]
    sd_b = torch.load(b, map_location="cpu", weights_only=True)["model"]
    assert sd_a.keys() == sd_b.keys()
    different = [k for k in sd_a if not torch.equal(sd_a[k], sd_b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"
    return len(sd_a)


def assert_same_run(reference: Path, other: Path, ignore: set[str] = frozenset()) -> int:
    """Bitwise-equal weights, same metrics.jsonl (but images_per_s), same metrics.json (but timing and `ignore`)."""
    n = assert_same_weights(reference / "model.pth", other / "model.pth")
    assert records(other) == records(reference)
    drop = TIMING_KEYS | RESUME_KEYS | set(ignore)
    assert metrics(other, drop) == metrics(reference, drop)
    return n


def one_error_line(result, exit_code: int, expect) -> str:
    """The CLI's whole stderr for a user mistake: exactly one line, `error: ...`, holding every `expect`
    text, and the expected exit code. Returns the line."""
    assert result.returncode == exit_code, result.explain()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.explain()
    line = lines[0]
    assert line.startswith("error: "), result.explain()
    missing = [e for e in expect if e not in line]
    assert not missing, f"{missing} not in {line!r}"
    return line


def workflow_error_line(returncode: int, stdout: str, stderr: str) -> str:
    """Snakemake's output for a bad config or ablation file, which the workflow validates at parse time:
    exit 2, exactly one `error: ...` line on stderr (Snakemake's own notes, such as the profile in use,
    may stand around it) and none of Snakemake's exception context (`WorkflowError in file ...`, the
    `File "...", line ...` location) or a traceback. Returns the line without `error: `."""
    output = stdout + stderr
    assert returncode == 2, output[-3000:]
    for noise in ("Traceback", "WorkflowError", 'File "'):
        assert noise not in output, output[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, output[-3000:]
    return lines[0].removeprefix("error: ")


def assert_no_finished_outputs(folder: Path) -> None:
    """Nothing the workflow would take as a finished run (DESIGN.md: metrics.json, model.pth)."""
    found = [str(p) for name in ("metrics.json", "model.pth") for p in folder.rglob(name)] if folder.exists() else []
    assert not found, f"finished-looking outputs left behind: {found}"


WORKFLOW_FILES = ("Snakefile", "workflow", "ablations", "paper", "profiles", "slurm", "environment.yml")


def workflow_copy(dest: Path) -> Path:
    """A throw-away copy of the workflow (not of runs/ or results/), so tests never touch the checkout's."""
    import shutil
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        elif src.exists():
            shutil.copy(src, dest / name)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------
# one undisturbed reference run per set of overrides, shared by every module of the session

_REFERENCES: dict[tuple[str, ...], tuple[Path, float]] = {}


def reference_run(tmp_path_factory, *overrides: str) -> tuple[Path, float]:
    """(run folder, wall seconds) of an undisturbed `mae pretrain` smoke run with these overrides."""
    key = tuple(overrides)
    if key not in _REFERENCES:
        out = tmp_path_factory.mktemp("reference") / "run"
        result = run(pretrain_cmd(out, *overrides))
        assert result.returncode == 0, result.explain()
        _REFERENCES[key] = (out, result.seconds)
    return _REFERENCES[key]


# ---------------------------------------------------------------------------------------------------
# the fault record


class _ReportKeeper:
    """Keeps each phase's report on the item, so the `fault` fixture knows how its test ended."""

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        setattr(item, f"_reliability_{report.when}", report)


@dataclass
class FaultRecord:
    area: str = ""
    fault: str = ""
    expected: str = ""
    observed: list[str] = field(default_factory=list)

    def describe(self, area: str, fault: str, expected: str) -> "FaultRecord":
        self.area, self.fault, self.expected = area, fault, expected
        return self

    def observe(self, text: str) -> None:
        """What the test saw (printed, and kept for the table)."""
        print(f"[reliability] {self.area}: {text}")
        self.observed.append(text)


@pytest.fixture
def fault(request):
    """Record one fault and its outcome into test-output/reliability.json (merged by test id)."""
    plugins = request.config.pluginmanager
    if not plugins.has_plugin("reliability-report-keeper"):
        plugins.register(_ReportKeeper(), "reliability-report-keeper")
    record = FaultRecord()
    t0 = time.monotonic()
    yield record
    if not record.fault:
        return
    call = getattr(request.node, "_reliability_call", None)
    setup = getattr(request.node, "_reliability_setup", None)
    if call is not None:
        status = "pass" if call.passed else ("skip" if call.skipped else "FAIL")
        if hasattr(call, "wasxfail"):  # a known defect that is still there (strict xfail)
            status = "FAIL (known defect, xfail)" if call.skipped else "FAIL (xfail passed: remove the marker)"
        if call.failed:
            message = str(call.longrepr).strip().splitlines()
            record.observed.append("test failed: " + (message[-1] if message else "?")[:300])
    else:
        status = "skip" if setup is not None and setup.skipped else "FAIL"
    entry = {"test": request.node.nodeid, "area": record.area, "fault": record.fault,
             "expected": record.expected, "observed": record.observed, "status": status,
             "seconds": round(time.monotonic() - t0, 1), "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    TEST_OUTPUT.mkdir(exist_ok=True)
    with open(TEST_OUTPUT / "reliability.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(RELIABILITY_JSON.read_text()) if RELIABILITY_JSON.exists() else {}
        data[request.node.nodeid] = entry
        tmp = RELIABILITY_JSON.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        tmp.replace(RELIABILITY_JSON)
