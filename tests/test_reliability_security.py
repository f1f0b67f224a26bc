"""Security: checkpoints that would run code when unpickled are refused by every loading path (and the
payload provably does not run); servers started by the project's scripts listen on 127.0.0.1 only;
secrets in the environment or the config do not reach MLflow params or tags."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import time

import pytest

from test_reliability_common import (MAE, REPO, SMOKE, assert_no_finished_outputs, fault, free_port,  # noqa: F401
                                     mae_env, pretrain_cmd, run, run_many)


class _Payload:
    """Unpickling this calls os.system("touch <marker>"): what an attacker's checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_files(folder, marker):
    """model.pth-style, raw checkpoint.pth-style, and our own checkpoint format with an evil payload."""
    import hashlib
    import io

    import torch

    from mae.checkpoint import CHECKPOINT_FORMAT
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"cls_token": torch.zeros(1), "evil": _Payload(marker)}, "config": {}}, folder / "evil_model.pth")
    raw = folder / "raw_resume"
    raw.mkdir()
    torch.save({"stage": "pretrain", "model": _Payload(marker)}, raw / "checkpoint.pth")
    buffer = io.BytesIO()
    torch.save({"stage": "pretrain", "loop": _Payload(marker)}, buffer)
    payload = buffer.getvalue()
    wrapped = wrapped_dir = folder / "wrapped_resume"
    wrapped.mkdir()
    torch.save({"format": CHECKPOINT_FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
                "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}, wrapped / "checkpoint.pth")
    return folder / "evil_model.pth", raw, wrapped_dir


def test_the_payload_would_run_if_loaded_unsafely(tmp_path):
    """Control: the crafted file really executes code under weights_only=False (so the next test can fail)."""
    import torch
    marker = tmp_path / "control-marker"
    evil, _, _ = _evil_files(tmp_path / "files", marker)
    torch.load(evil, weights_only=False)
    assert marker.exists()


@pytest.mark.slow
def test_code_carrying_checkpoints_are_refused_everywhere(tmp_path, fault):
    fault.describe("security", "checkpoint with a __reduce__ payload (touch a marker): finetune.checkpoint, "
                   "linprobe.checkpoint, resume (raw and inside a valid checkpoint wrapper), mae visualize",
                   "every path refuses with exit 2 and one line; marker file never created")
    marker = tmp_path / "PWNED"
    evil, raw_dir, wrapped_dir = _evil_files(tmp_path / "files", marker)
    paths = {
        "finetune.checkpoint": [MAE, "finetune", "--config", str(SMOKE), "--out", str(tmp_path / "ft"),
                                f"finetune.checkpoint={evil}"],
        "linprobe.checkpoint": [MAE, "linprobe", "--config", str(SMOKE), "--out", str(tmp_path / "lp"),
                                f"linprobe.checkpoint={evil}"],
        "resume (raw checkpoint.pth)": pretrain_cmd(raw_dir),
        "resume (payload inside a valid wrapper)": pretrain_cmd(wrapped_dir),
        "mae visualize": [MAE, "visualize", "--checkpoint", str(evil), "--out", str(tmp_path / "vis" / "recon.png")],
    }
    results = run_many(list(paths.values()))
    seen = []
    for (name, _), result in zip(paths.items(), results):
        assert result.returncode == 2, f"{name}:\n{result.explain()}"
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "refused" in lines[0], f"{name}:\n{result.explain()}"
        assert "Traceback" not in result.stderr
        seen.append(f"{name}: exit 2")
    assert not marker.exists(), "the payload ran"
    for folder in (tmp_path / "ft", tmp_path / "lp", raw_dir, wrapped_dir):
        assert_no_finished_outputs(folder)
    fault.observe("; ".join(seen) + f"; marker absent (control: the same file creates it under weights_only=False); "
                  f"e.g. '{results[0].stderr.strip()[:150]}'")


def _listening(port: int) -> list[str]:
    import psutil
    return sorted({f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.net_connections(kind="inet")
                   if c.status == psutil.CONN_LISTEN and c.laddr.port == port})


@pytest.mark.slow
def test_mlflow_server_script_binds_loopback_only(tmp_path, fault):
    fault.describe("security", "scripts/mlflow_server.sh start (no host given)",
                   "the server listens on 127.0.0.1 only")
    script, port, state = REPO / "scripts" / "mlflow_server.sh", free_port(), tmp_path / "mlflow"
    started = subprocess.run([str(script), "start", "--port", str(port), "--state-dir", str(state)],
                             capture_output=True, text=True, timeout=300, env=mae_env())
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        listening = _listening(port)
        assert listening == [f"127.0.0.1:{port}"], listening
    finally:
        subprocess.run([str(script), "stop", "--state-dir", str(state)], capture_output=True, timeout=120)
    fault.observe(f"listening sockets on port {port}: {listening}")


SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "MLFLOW_TRACKING_PASSWORD": "hunter2-tracking-password",
    "HF_TOKEN": "hf_AbCdEfGhIjKlMnOpQrStUvWx",
}


@pytest.mark.slow
def test_secrets_do_not_reach_mlflow_params_or_tags(tmp_path, fault):
    fault.describe("security", "AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_PASSWORD, HF_TOKEN in the environment; "
                   "one pasted into tracking.tags, one under a secret-looking tag name, a password in a URL",
                   "none of the secret values in the MLflow store's params, tags or artifacts")
    db = tmp_path / "mlflow.db"
    out = tmp_path / "run"
    result = run(pretrain_cmd(out, "tracking.enabled=true", f"tracking.uri=sqlite:///{db}",
                              f"tracking.tags.note={SECRETS['AWS_SECRET_ACCESS_KEY']}",
                              "tracking.tags.api_token=plain-token-value-123",
                              f"tracking.tags.server=https://me:{SECRETS['MLFLOW_TRACKING_PASSWORD']}@example.org",
                              "run.threads=1"),
                 env=mae_env(**SECRETS))
    assert result.returncode == 0, result.explain()
    with sqlite3.connect(db) as con:
        params = con.execute("select key, value from params").fetchall()
        tags = con.execute("select key, value from tags").fetchall()
    assert len(params) > 50 and tags, "nothing was logged: the check below would prove nothing"
    secrets = [*SECRETS.values(), "plain-token-value-123"]
    leaks = [(k, v) for k, v in params + tags if any(s in str(v) for s in secrets)]
    assert not leaks, leaks
    redacted = sorted(k for k, v in params + tags if "<redacted>" in str(v))
    assert redacted, "nothing was redacted"
    # artifacts uploaded next to the store (config.yaml carries the config and the command line)
    artifacts = [p for p in tmp_path.rglob("*") if p.is_file() and "mlartifacts" in p.parts]
    assert any(p.name == "config.yaml" for p in artifacts), "config.yaml was not uploaded: nothing to check"
    in_artifacts = sorted({p.name for p in artifacts for s in secrets if s in p.read_text(errors="ignore")})
    assert not in_artifacts, f"secret values in MLflow artifacts: {in_artifacts}"
    fault.observe(f"{len(params)} params, {len(tags)} tags read back from sqlite and {len(artifacts)} artifacts: "
                  f"no secret value; redacted: {', '.join(redacted)}")


PLANTED = {"password": "Pw-planted-7f3a9c", "env_token": "tok_planted_51d2e8b6a0"}


@pytest.mark.slow
def test_credentials_never_reach_any_file_output_or_the_mlflow_store(tmp_path, fault):
    fault.describe("security", "a password in tracking.uri (http://mae:PW@127.0.0.1:port, a live MLflow server) "
                   "and an env-var token (MAE_SERVICE_TOKEN) also pasted into tracking.tags",
                   "neither value in any file of the run folder (config.yaml, train.log, checkpoints, model.pth: "
                   "binary grep), stdout / stderr, the server's store or its artifacts; the run is tracked")
    script, port, state = REPO / "scripts" / "mlflow_server.sh", free_port(), tmp_path / "server"
    started = subprocess.run([str(script), "start", "--port", str(port), "--state-dir", str(state)],
                             capture_output=True, text=True, timeout=300, env=mae_env())
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        out = tmp_path / "run"
        result = run(pretrain_cmd(out, "tracking.enabled=true", "run.threads=1",
                                  f"tracking.uri=http://mae:{PLANTED['password']}@127.0.0.1:{port}",
                                  f"tracking.tags.note={PLANTED['env_token']}"),
                     env=mae_env(MAE_SERVICE_TOKEN=PLANTED["env_token"]))
    finally:
        subprocess.run([str(script), "stop", "--state-dir", str(state)], capture_output=True, timeout=120)
    assert result.returncode == 0, result.explain()
    assert (out / "mlflow_run_id").is_file(), "the run was not tracked: the check below would prove nothing"
    files = [p for p in [*out.rglob("*"), *state.rglob("*")] if p.is_file()]
    names = {p.name for p in files}
    assert {"config.yaml", "train.log", "checkpoint.pth", "model.pth", "mlflow.db"} <= names, names
    secrets = [s.encode() for s in PLANTED.values()]
    leaks = sorted(str(p.relative_to(tmp_path)) for p in files for s in secrets if s in p.read_bytes())
    leaks += [name for name, text in (("stdout", result.stdout), ("stderr", result.stderr))
              if any(s.decode() in text for s in secrets)]
    assert not leaks, f"planted secrets found in: {leaks}"
    config = (out / "config.yaml").read_text()
    assert "<redacted>" in config and f"127.0.0.1:{port}" in config, config  # redacted, not dropped
    fault.observe(f"exit 0, tracked (MLflow run {(out / 'mlflow_run_id').read_text().strip()}); {len(files)} files "
                  f"grepped as bytes (run folder incl. checkpoint.pth / model.pth, server's mlflow.db and artifacts) "
                  f"and stdout / stderr: no planted value; config.yaml keeps the URI with the password <redacted>")
