"""MLflow mirror: sqlite store contents, never blocking on a dead or hung server, idempotent replay, redaction."""

import json
import os
import socket
import threading
import time

import pytest
import yaml

from mae.errors import UserError
from mae.run_folder import MLFLOW_RUN_ID as RUN_ID_FILE
from mae.redaction import REDACTED, redact
from mae.tracking import Tracker, replay, run_tags

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    """One sqlite store for the module: creating its schema takes seconds, so it is done once."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _history(uri, run_id, key):
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_run_with_params_metrics_tags_artifacts(uri, tmp_path):
    run_dir = tmp_path / "run"
    params = {"model.mask_ratio": 0.75, "pretrain.betas": [0.9, 0.95], "model.tokenizer": None,
              "tracking.run_name": "r1", "tracking.tags.mae.preset": "tiny"}
    tags = run_tags("abc123", "pretrain", git_revision="deadbeef", extra={"mae.preset": "tiny", "mae.ablations": "table1a"})
    tr = Tracker()
    run_id = tr.start(run_dir, params, tags, experiment="test-exp", run_name="r1", uri=uri)
    assert run_id and (run_dir / RUN_ID_FILE).read_text().strip() == run_id
    for step in range(1, 6):
        tr.log_metrics({"loss": 1.0 / step, "lr": 1e-3 * step, "note": "skipped"}, step=step)
    (run_dir / "metrics.json").write_text(json.dumps({"status": "completed", "top1": 80.0}))
    tr.log_artifact(run_dir / "metrics.json")
    tr.finish("FINISHED")

    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    assert run.data.params["model.mask_ratio"] == "0.75"
    assert run.data.params["pretrain.betas"] == "[0.9, 0.95]"
    assert not any(k.startswith("tracking.") for k in run.data.params)  # the run's name and tags say it
    assert run.data.tags["mae.run_id"] == "abc123" and run.data.tags["mae.ablations"] == "table1a"
    assert run.data.tags["mae.host"] == socket.gethostname()
    assert _history(uri, run_id, "loss") == [(s, 1.0 / s) for s in range(1, 6)]
    assert "note" not in run.data.metrics
    assert [a.path for a in MlflowClient(uri).list_artifacts(run_id)] == ["metrics.json"]

    # a resumed job continues the same run; identical params are fine, changed ones are kept as they were
    again = Tracker()
    assert again.start(run_dir, {**params, "model.mask_ratio": 0.5, "run.new_key": 1}, tags, uri=uri) == run_id
    again.log_metrics({"loss": 0.1}, step=6)
    again.finish("FINISHED")
    assert again.param_conflicts == ["model.mask_ratio"]
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.params["model.mask_ratio"] == "0.75" and run.data.params["run.new_key"] == "1"
    assert len(_history(uri, run_id, "loss")) == 6


def test_disabled_tracker_is_a_no_op(tmp_path):
    tr = Tracker(enabled=False)
    assert tr.start(tmp_path, {"a": 1}, {}, uri="http://127.0.0.1:9") is None
    tr.log_metrics({"loss": 1.0}, step=1)
    tr.finish()
    assert not (tmp_path / RUN_ID_FILE).exists() and not tr.active


def test_dead_server_never_blocks(tmp_path, caplog):
    tr = Tracker(drain_timeout_s=10)
    t0 = time.perf_counter()
    tr.start(tmp_path, {"a": 1}, {}, uri="http://127.0.0.1:9")
    t_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    for step in range(1000):
        tr.log_metrics({"loss": 1.0}, step=step)
    t_log = time.perf_counter() - t0
    t0 = time.perf_counter()
    tr.finish()
    t_finish = time.perf_counter() - t0
    print(f"dead server: start {t_start:.2f} s, 1000 log calls {t_log * 1e3:.1f} ms, finish {t_finish:.2f} s")
    assert tr.run_id is None and not tr.active
    assert not (tmp_path / RUN_ID_FILE).exists()
    assert sum("tracking" in r.getMessage() for r in caplog.records) == 1  # exactly one warning line
    assert t_finish < tr.drain_timeout_s + 5


def test_hung_server_gives_up_after_drain_timeout(tmp_path, caplog):
    """A server that accepts connections and never answers: start and finish return on their own timeouts."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    try:
        tr = Tracker(drain_timeout_s=1.0, start_timeout_s=0.5)
        t0 = time.perf_counter()
        assert tr.start(tmp_path, {"a": 1}, {}, uri=f"http://127.0.0.1:{srv.getsockname()[1]}") is None
        tr.log_metrics({"loss": 1.0}, step=1)
        tr.finish()
        elapsed = time.perf_counter() - t0
        print(f"hung server: start + log + finish returned after {elapsed:.2f} s")
        assert elapsed < 4.5  # well before MLflow's own 5 s request timeout would free the thread
        assert any("giving up" in r.getMessage() for r in caplog.records)
    finally:
        stop.set()
        for c in conns:
            c.close()
        srv.close()


def test_redact_keys_and_env_secrets(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "s3cr3t-value-xyz")
    out = redact({
        "model.tokenizer": "mod:fn", "model.encoder_mask_tokens": True, "model.patch_size": 16,
        "tracking.api_key": "abc", "tracking.token": "t", "x.db_password": "p", "run.note": "s3cr3t-value-xyz",
        "data.root": "/data/ghp_abcdefghijklmnopqrstuv", "y": "ghp_abcdefghijklmnopqrstuv",
        "tracking.uri": "https://user:hunter22@mlflow.example.org",
    })
    assert out["model.tokenizer"] == "mod:fn" and out["model.encoder_mask_tokens"] is True
    assert out["model.patch_size"] == 16 and out["data.root"] == "/data/ghp_abcdefghijklmnopqrstuv"
    for k in ("tracking.api_key", "tracking.token", "x.db_password", "run.note", "y"):
        assert out[k] == REDACTED, k
    assert out["tracking.uri"] == f"https://user:{REDACTED}@mlflow.example.org"


def test_secrets_from_env_do_not_reach_mlflow(uri, tmp_path, monkeypatch):
    secret = "mlflow-pass-8f3k2j"
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    tr = Tracker()
    run_id = tr.start(tmp_path, {"run.comment": f"pw={secret}", "model.depth": 2},
                      {"mae.run_id": "x", "custom": secret}, uri=uri)
    tr.finish()
    run = MlflowClient(uri).get_run(run_id)
    stored = list(run.data.params.values()) + list(run.data.tags.values())
    assert not any(secret in v for v in stored)
    assert run.data.params["model.depth"] == "2" and run.data.params["run.comment"] == REDACTED


def _run_folder(path, steps):
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"model": {"mask_ratio": 0.75, "depth": 2}, "pretrain": {"betas": [0.9, 0.95]},
           "tracking": {"experiment": "replayed", "tags": {"mae.preset": "tiny"}},
           "meta": {"git_revision": "cafe", "stage": "pretrain", "run_id": "rid42", "command": "mae pretrain"}}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    with open(path / "metrics.jsonl", "w") as f:
        for s in steps:
            f.write(json.dumps({"step": s, "epoch": s // 10, "loss": 1.0 / s, "lr": 1e-4}) + "\n")
        f.write('{"step": 99, "loss": ')  # a line cut by a crash is ignored


def test_replay_is_idempotent(uri, tmp_path):
    run_dir = tmp_path / "offline"
    _run_folder(run_dir, range(1, 11))
    first = replay(run_dir, uri=uri)
    run_id = first["run_id"]
    assert (run_dir / RUN_ID_FILE).read_text().strip() == run_id
    assert first["metrics_logged"] == 10 * 3  # loss, lr, epoch
    second = replay(run_dir, uri=uri)
    assert second["run_id"] == run_id and second["metrics_logged"] == 0
    assert _history(uri, run_id, "loss") == [(s, 1.0 / s) for s in range(1, 11)]
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.params["pretrain.betas"] == "[0.9, 0.95]" and "meta.command" not in run.data.params
    assert run.data.tags["mae.run_id"] == "rid42" and run.data.tags["mae.preset"] == "tiny"
    assert MlflowClient(uri).get_experiment(run.info.experiment_id).name == "replayed"
    assert run.info.run_name == "pretrain-rid42"  # the name a live run gets (it was MLflow's random one)
    assert run.info.status == "FAILED"  # no metrics.json: not a completed run

    # the job went on: only the new points go in, and the summary lands as final/*
    _run_folder(run_dir, range(1, 16))
    (run_dir / "metrics.json").write_text(json.dumps({"status": "completed", "top1": 71.5, "steps": 15}))
    third = replay(run_dir, uri=uri)
    assert third["metrics_logged"] == 5 * 3 + 2  # + final/top1, final/steps
    assert len(_history(uri, run_id, "loss")) == 15
    assert _history(uri, run_id, "final/top1") == [(15, 71.5)]
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"


def test_replay_completes_a_live_run(uri, tmp_path):
    run_dir = tmp_path / "live"
    _run_folder(run_dir, range(1, 7))
    tr = Tracker()
    run_id = tr.start(run_dir, {"model.mask_ratio": 0.75}, {"mae.run_id": "rid42"}, uri=uri)
    for s in range(1, 4):  # MLflow went away after step 3
        tr.log_metrics({"loss": 1.0 / s, "lr": 1e-4, "epoch": 0}, step=s)
    tr.finish("KILLED")
    out = replay(run_dir, uri=uri)
    assert out["run_id"] == run_id and out["metrics_logged"] == 3 * 3
    assert [s for s, _ in _history(uri, run_id, "loss")] == [1, 2, 3, 4, 5, 6]


def test_a_live_training_run_leaves_replay_nothing_to_add(uri, tmp_path):
    # the live mirror and a replay hold the same points: the live one left out `epoch`, so the first
    # replay of every tracked run logged one point per record
    from pathlib import Path

    from mae import train
    from mae.config import load_config
    smoke = Path(__file__).resolve().parents[1] / "workflow/presets/smoke.yaml"
    train.pretrain(load_config(smoke, ["tracking.enabled=true", f"tracking.uri={uri}"]), tmp_path / "run")
    out = replay(tmp_path / "run", uri=uri)
    assert out["metrics_logged"] == 0, out
    assert [s for s, _ in _history(uri, out["run_id"], "epoch")] == [1, 2, 3, 4]
    done = [line for line in (tmp_path / "run" / "train.log").read_text().splitlines() if " done: " in line]
    assert len(done) == 1 and "null" not in done[0] and '"knn_top1"' in done[0]  # a pretraining has no top1


def test_replay_errors(tmp_path):
    with pytest.raises(UserError, match="run_dir"):
        replay(tmp_path / "missing")
    _run_folder(tmp_path / "r", [1])
    with pytest.raises(UserError, match="tracking.uri"):
        replay(tmp_path / "r", uri="http://127.0.0.1:9")


def test_import_leaves_the_environment_alone():
    import subprocess
    import sys
    code = "import os; before = dict(os.environ); import mae.tracking; assert dict(os.environ) == before"
    subprocess.run([sys.executable, "-c", code], check=True, env={"PATH": "/usr/bin:/bin"})


def test_client_settings_only_while_a_session_is_open(monkeypatch):
    from mae.tracking import _client_settings
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # the user's own value is kept
    with _client_settings():
        with _client_settings():  # a second session (replay during a run) shares the settings
            pass
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"


def test_unusable_sqlite_store_is_reported_within_seconds(tmp_path, caplog):
    """sqlite:////proc/...: one warning in well under 5 s (MLflow itself retries for about 40 s)."""
    import time
    from mae.tracking import Tracker
    tracker = Tracker(enabled=True)
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="mae.tracking"):
        tracker.start(tmp_path, params={"a": 1}, tags={}, uri="sqlite:////proc/mae-test/x.db")
        deadline = time.monotonic() + 30
        while tracker.active and time.monotonic() < deadline:
            time.sleep(0.01)
        took = time.monotonic() - t0
        tracker.log_metrics({"loss": 1.0}, step=1)
        tracker.finish()
    warnings = [r.getMessage() for r in caplog.records if "tracking" in r.getMessage()]
    print(f"unusable store reported after {took:.2f} s")
    assert not tracker.active and took < 5.0, f"{took:.1f} s"
    assert len(warnings) == 1 and "/proc/mae-test/x.db" in warnings[0] and "mae replay" in warnings[0], warnings


def test_redaction_of_text_and_trees(monkeypatch):
    from mae.redaction import REDACTED, redact_text, redact_tree
    monkeypatch.setenv("MAE_API_TOKEN", "tok-0123456789-secret")
    line = ("mae pretrain tracking.uri=http://me:pw123@host:5000 tracking.tags.api_token=abc "
            "tracking.tags.note=tok-0123456789-secret x=ghp_abcdefghijklmnop1234")
    cleaned = redact_text(line)
    for secret in ("pw123", "=abc", "tok-0123456789-secret", "ghp_abcdefghijklmnop1234"):
        assert secret not in cleaned, cleaned
    assert cleaned.startswith("mae pretrain tracking.uri=http://me:" + REDACTED + "@host:5000")
    tree = {"tracking": {"uri": "http://me:pw123@host", "tags": {"api_token": "x", "note": "ok", "seed": 3}},
            "model": {"tokenizer": "pkg.mod:make", "encoder_mask_tokens": False, "ratios": [0.5, 0.75]}}
    out = redact_tree(tree)
    assert out["tracking"] == {"uri": f"http://me:{REDACTED}@host", "tags": {"api_token": REDACTED, "note": "ok", "seed": 3}}
    assert out["model"] == tree["model"]  # tokenizer / mask_tokens are not secrets; numbers untouched
    assert tree["tracking"]["uri"] == "http://me:pw123@host"  # a copy


def test_redaction_survives_a_variable_removed_while_it_reads_the_environment(monkeypatch):
    """mae.tracking removes its MLflow client settings from os.environ in the tracking thread when a
    failed server closes the session; a checkpoint save in the main thread was reading os.environ at that
    moment and died with KeyError (seen once in the outage test). Here the variable vanishes between the
    listing of the names and the read of its value, every time."""
    import collections.abc
    import types

    from mae import redaction
    from mae.redaction import REDACTED, redact_tree

    class VanishingEnviron(collections.abc.Mapping):
        def __init__(self, data, vanishing):
            self.data, self.vanishing = data, vanishing

        def __iter__(self):
            return iter([*self.data, self.vanishing])  # listed, then gone when read

        def __len__(self):
            return len(self.data) + 1

        def __getitem__(self, key):
            return self.data[key]

    environ = VanishingEnviron({"MAE_API_TOKEN": "tok-0123456789-secret"}, "MLFLOW_HTTP_REQUEST_MAX_RETRIES_TOKEN")
    monkeypatch.setattr(redaction, "os", types.SimpleNamespace(environ=environ))  # pytest itself needs os.environ
    out = redact_tree({"tracking": {"tags": {"note": "tok-0123456789-secret", "seed": 3}}})
    assert out == {"tracking": {"tags": {"note": REDACTED, "seed": 3}}}


def test_open_store_creates_a_new_store_once_under_concurrency(tmp_path):
    """Four processes open a store that does not exist yet at the same moment: all succeed, one schema."""
    import subprocess
    import sys
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    code = ("import sys; from mae.tracking import open_store; c = open_store(sys.argv[1], ['exp']); "
            "e = c.get_experiment_by_name('exp'); r = c.create_run(e.experiment_id); "
            "c.log_metric(r.info.run_id, 'x', 1.0, step=0); print(r.info.run_id)")
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert not any("already exists" in err or "duplicate column" in err for _, err in outs), outs
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("exp")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 4 and all(r.data.metrics == {"x": 1.0} for r in runs)
    assert exp.artifact_location.endswith("/new/mlartifacts/exp")


# ---------------------------------------------------------------- system metrics, experiment kind, UI links

@pytest.fixture
def fast_sampling(monkeypatch):
    """MLflow's own variables, as a user would set them: a sample every 0.2 s, each one a point."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")


def test_system_metrics_reach_the_run_folder_and_mlflow(uri, tmp_path, fast_sampling):
    import psutil

    from mae.run_folder import SYSTEM_METRICS_JSONL, read_jsonl
    run_dir = tmp_path / "run"
    tr = Tracker()
    run_id = tr.start(run_dir, {"a": 1}, {}, experiment="sysmetrics", uri=uri)
    busy_until = time.monotonic() + 1.5
    while time.monotonic() < busy_until:  # this process keeps a core busy: CPU utilisation is above 0
        pass
    tr.finish("FINISHED")
    points = read_jsonl(run_dir / SYSTEM_METRICS_JSONL)
    assert len(points) >= 4 and [p["step"] for p in points] == list(range(len(points)))
    total_mb = psutil.virtual_memory().total / 1e6
    for p in points:
        assert 0 < p["system/cpu_utilization_percentage"] <= 100
        assert 0 < p["system/system_memory_usage_megabytes"] < total_mb
        assert 0 < p["system/system_memory_usage_percentage"] < 100
        assert p["system/disk_usage_megabytes"] > 0
    # the same points, step by step, in MLflow (the UI's System metrics tab reads system/*)
    run = MlflowClient(uri).get_run(run_id)
    assert {k for k in run.data.metrics if k.startswith("system/")} == {k for k in points[0] if k.startswith("system/")}
    assert _history(uri, run_id, "system/system_memory_usage_megabytes") == \
        [(p["step"], p["system/system_memory_usage_megabytes"]) for p in points]

    # a resumed job continues the step axis of the same MLflow run
    again = Tracker()
    assert again.start(run_dir, {"a": 1}, {}, uri=uri) == run_id
    time.sleep(0.5)
    again.finish("FINISHED")
    more = read_jsonl(run_dir / SYSTEM_METRICS_JSONL)
    assert [p["step"] for p in more] == list(range(len(more))) and len(more) > len(points)
    assert [s for s, _ in _history(uri, run_id, "system/cpu_utilization_percentage")] == list(range(len(more)))


def test_system_metrics_outlive_an_outage_and_replay_sends_them(uri, tmp_path, fast_sampling):
    from mae.run_folder import SYSTEM_METRICS_JSONL, read_jsonl
    run_dir = tmp_path / "offline"
    _run_folder(run_dir, range(1, 4))
    tr = Tracker()
    assert tr.start(run_dir, {"a": 1}, {}, uri="http://127.0.0.1:9") is None  # nothing listens
    time.sleep(1.0)
    t0 = time.perf_counter()
    tr.finish("FINISHED")
    assert time.perf_counter() - t0 < 5.5 and not tr.active
    points = read_jsonl(run_dir / SYSTEM_METRICS_JSONL)
    assert len(points) >= 3, "sampling must go on while MLflow is down"
    out = replay(run_dir, uri=uri)
    keys = {k for k in points[0] if k.startswith("system/")}
    assert out["metrics_logged"] == 3 * 3 + len(points) * len(keys)
    assert [s for s, _ in _history(uri, out["run_id"], "system/cpu_utilization_percentage")] == \
        [p["step"] for p in points]
    assert replay(run_dir, uri=uri)["metrics_logged"] == 0


def test_system_metrics_switch_cadence_and_bad_settings(tmp_path, monkeypatch, caplog):
    from mae.system_metrics import MAX_PUBLISH_S, MIN_PUBLISH_S, SystemMetricsSampler, publish_interval
    # short CPU runs get a point a second, long cluster runs one a minute
    assert publish_interval(0) == publish_interval(10) == MIN_PUBLISH_S == 1.0
    assert publish_interval(100) == 10.0
    assert publish_interval(3 * 86400) == MAX_PUBLISH_S == 60.0
    # MLflow's own switch turns it off
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    sampler = SystemMetricsSampler(tmp_path / "off.jsonl")
    assert sampler.start() is False
    sampler.stop()
    assert not (tmp_path / "off.jsonl").exists()
    # a value MLflow cannot parse is one warning, and the default cadence is used
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "often")
    published = []
    sampler = SystemMetricsSampler(tmp_path / "on.jsonl", publish=lambda m, step: published.append(step))
    with caplog.at_level("WARNING", logger="mae.system_metrics"):
        assert sampler.start() is True
    time.sleep(0.6)  # more than half the default interval: stopping samples it as the last point
    sampler.stop()
    assert [r.getMessage() for r in caplog.records] == \
        ["system metrics: MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL='often' is invalid, using 1.0"]
    assert published == [0] and sampler.points == 1


def test_system_metrics_stopped_right_after_a_sample_log_no_empty_window(tmp_path, fast_sampling):
    """A stop a few milliseconds after a sample takes no sample of those milliseconds (psutil's CPU rate
    over less than a clock tick is 0.0 %, which was logged as the run's last point); a stop half an
    interval or more after the previous sample still samples the run's tail."""
    import threading

    from mae.run_folder import read_jsonl
    from mae.system_metrics import SystemMetricsSampler
    for attempt in range(3):
        published = threading.Event()
        sampler = SystemMetricsSampler(tmp_path / f"stop{attempt}.jsonl", publish=lambda m, step: published.set())
        assert sampler.start()
        while not published.is_set():  # keep a core busy until the first point (one sample) is logged
            pass
        sampler.stop()
        points = read_jsonl(sampler.path)
        assert len(points) == 1, f"a sample of the few milliseconds before stop() was logged: {points}"
        assert points[0]["system/cpu_utilization_percentage"] > 0
    # stopping 0.15 s (over half the 0.2 s interval) after a sample logs that tail as one more point
    published.clear()
    sampler = SystemMetricsSampler(tmp_path / "tail.jsonl", publish=lambda m, step: published.set())
    assert sampler.start()
    while not published.is_set():
        pass
    busy_until = time.monotonic() + 0.15
    while time.monotonic() < busy_until:
        pass
    sampler.stop()
    points = read_jsonl(sampler.path)
    assert [p["step"] for p in points] == [0, 1] and all(p["system/cpu_utilization_percentage"] > 0 for p in points)
    # a sampler stopped at once after its start has nothing measured to log
    sampler = SystemMetricsSampler(tmp_path / "instant.jsonl")
    assert sampler.start()
    sampler.stop()
    assert sampler.points == 0 and not sampler.path.exists()


def test_experiments_are_marked_as_model_training(uri):
    from mae.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING, open_store
    client = open_store(uri, ["kind-new"])
    assert client.get_experiment_by_name("kind-new").tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    # an experiment made before (or by hand) without a kind gets it; a kind the user chose stays
    old = client.create_experiment("kind-old")
    chosen = client.create_experiment("kind-chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    open_store(uri, ["kind-old", "kind-chosen"])
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_ui_url_opens_training_runs_without_credentials():
    from mae.tracking import ui_url
    assert ui_url("http://me:pw@host.example:5000/", "3", "abc") == \
        "http://host.example:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert ui_url("https://mlflow.example/prefix", "3") == \
        "https://mlflow.example/prefix/#/experiments/3?workflowType=machine_learning"
    assert ui_url("sqlite:////tmp/mlflow.db", "3") is None
