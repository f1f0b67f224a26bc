"""MLflow mirror of a run folder that never blocks or kills training (nanochat's DummyWandb idea).

The run folder (`config.yaml`, `metrics.jsonl`, `metrics.json`) is the record; MLflow is a copy.
`Tracker` sends everything from one background thread through a queue: `log_metrics` only enqueues.
The first MLflow error prints one warning and turns tracking off for the rest of the run; `finish`
waits at most `drain_timeout_s`. `Tracker(enabled=False)` (or a non-main rank) is a no-op.
`replay(run_dir)` pushes a finished, crashed or offline run folder into MLflow afterwards, into the
same MLflow run when it exists on that server, and logs only the (metric, step) points it lacks.
While a run is tracked, `mae.system_metrics` samples the machine (CPU, memory, disk, network, GPU) into
`system_metrics.jsonl` and the same queue, as MLflow's `system/*` metrics.

Experiments the harness creates or uses are tagged `mlflow.experimentKind=custom_model_development`,
the tag MLflow's UI writes when a user marks an experiment as model training. MLflow 3.17's UI opens an
experiment by its sidebar switch (GenAI / Model training, kept per browser, GenAI by default), so the
links the harness prints (`ui_url`) carry `?workflowType=machine_learning`: they open on the runs list.

    tracker = Tracker(enabled=cfg.tracking.enabled and is_main)
    tracker.start(out_dir, params=run_folder.flatten(cfg.resolved().to_dict()), tags=run_tags(...),
                  experiment=cfg.tracking.experiment, run_name=cfg.tracking.run_name, uri=cfg.tracking.uri)
    tracker.log_metrics({"loss": 0.71, "lr": 1e-4}, step=20)
    tracker.log_artifact(out_dir / "metrics.json")
    tracker.finish("FINISHED")

The MLflow client is set to fail fast and stay quiet (`MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`,
`MLFLOW_HTTP_REQUEST_TIMEOUT=5`, `MLFLOW_DISABLE_TELEMETRY=true`, `MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true`,
each unless already set). MLflow reads these only from the environment, so they are set while an MLflow
session is open (the tracker's
thread, a replay) and removed again after it; importing this module changes nothing. URI: the `uri`
argument, else `MLFLOW_TRACKING_URI`, else `sqlite:///<cwd>/mlflow.db`. Params and tags pass through `redact`;
`mae.redaction` cleans the config, the command line and log lines that the run writes.

An embedded sqlite store is opened through `open_store`: a quick probe (a store that cannot be used
is reported in well under a second, not after MLflow's 10 connection retries) and, around the first
creation or migration of its tables and the creation of experiments, an exclusive lock on
`<db>.lock` next to the file, so that parallel first writers (four `mae pretrain` started at once on
a new store, or the workflow's `prepare_mlflow`) neither lose runs nor race the schema migration.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import queue
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .errors import UserError
from .redaction import REDACTED, redact, redact_text, redacted_yaml
from .run_folder import (ARTIFACTS, CONFIG_YAML, METRICS_JSONL, MLFLOW_RUN_ID, SYSTEM_METRICS_JSONL, flatten,
                         read_jsonl, read_metrics)
from .system_metrics import SystemMetricsSampler

__all__ = ["Tracker", "replay", "run_tags", "default_uri", "open_store", "ensure_experiment", "ui_url",
           "StoreUnusable", "EXPERIMENT_KIND_TAG", "MODEL_TRAINING"]

_log = logging.getLogger(__name__)

_MAX_PARAM_LEN = 6000  # MLflow's limit on a param value
_BATCH = 100  # params / tags per log_batch call; metrics go 1000 at a time

STORE_LOCK_TIMEOUT_S = 120.0  # a store whose lock is held longer than this is reported as unusable

# The experiment kind as MLflow's UI stores it (mlflow exports no Python constant for it; its JS
# `ExperimentKind` enum has custom_model_development, genai_development, ...).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
# The UI's workflow switch as a URL parameter: MLflow 3.17 picks the landing tab from it, not from the tag.
_UI_QUERY = "workflowType=machine_learning"

# MLflow client settings it reads only from the environment: the HTTP ones at every request, telemetry
# when mlflow is first imported. A value the user set is left alone.
# MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT: MLflow prints "View run ... at: <tracking URI>/#/..." on stdout when
# a run ends, with any password the URI holds (the run id is in the run folder's mlflow_run_id).
_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
               "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
_client_env_lock = threading.Lock()
_client_env_users = 0
_client_env_added: list[str] = []


@contextmanager
def _client_settings() -> Iterator[None]:
    """Set `_CLIENT_ENV`'s defaults while an MLflow session is open; the last session to close removes them."""
    global _client_env_users
    with _client_env_lock:
        if _client_env_users == 0:
            _client_env_added[:] = [k for k in _CLIENT_ENV if k not in os.environ]
            os.environ.update({k: _CLIENT_ENV[k] for k in _client_env_added})
        _client_env_users += 1
    try:
        yield
    finally:
        with _client_env_lock:
            _client_env_users -= 1
            if _client_env_users == 0:
                for key in _client_env_added:
                    os.environ.pop(key, None)
                _client_env_added.clear()


def default_uri(uri: str | None = None) -> str:
    """`uri`, else env `MLFLOW_TRACKING_URI`, else `sqlite:///<cwd>/mlflow.db` (absolute)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def _param_str(value: Any) -> str:
    """The string MLflow stores for a param (the same for live logging and replay)."""
    if isinstance(value, str):
        s = value
    elif isinstance(value, (list, tuple, dict)) or value is None or isinstance(value, bool):
        s = json.dumps(value, sort_keys=True, default=str)
    else:
        s = str(value)
    return s[:_MAX_PARAM_LEN]


def run_tags(run_id: str, stage: str, git_revision: str | None = None,
             extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The DESIGN.md tags: `mae.run_id, mae.stage, mae.git_revision, mae.host, mae.slurm_job_id` (host
    and SLURM job id read here), plus `extra` (`tracking.tags`: the workflow puts `mae.preset` and
    `mae.ablations` there)."""
    tags = {
        "mae.run_id": run_id, "mae.stage": stage,
        "mae.git_revision": git_revision, "mae.host": socket.gethostname(),
        "mae.slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
    tags.update(extra or {})
    return {k: str(v) for k, v in tags.items() if v is not None}


def _run_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The MLflow params of a flattened config: all but `tracking.*`, which say how the run is filed (its
    name and tags, already on the run, and the store), not what it computes, and as params would fill
    the compare view's parallel coordinates with names. Live logging and replay both use this."""
    return {k: v for k, v in flat.items() if not k.startswith("tracking.")}


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


# ---------------------------------------------------------------- the store


class StoreUnusable(RuntimeError):
    """The tracking store cannot be used (found by the probe, before MLflow is imported)."""


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///path` URI (None for other URIs and in-memory databases)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def _probe_sqlite(path: Path) -> None:
    """Fail in milliseconds, with the reason, when `path` cannot hold an sqlite database."""
    import sqlite3
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not path.is_file():
            raise StoreUnusable(f"sqlite store {path} is not a file")
        con = sqlite3.connect(str(path), timeout=5)
        try:
            con.execute("pragma schema_version").fetchone()
        finally:
            con.close()
    except (OSError, sqlite3.Error) as e:
        raise StoreUnusable(f"sqlite store {path} cannot be used ({type(e).__name__}: {e})") from None


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Exclusive lock on `<db>.lock` next to an sqlite store (nothing for other stores)."""
    path = _sqlite_path(uri)
    if path is None:
        yield
        return
    lock_path = path.with_name(path.name + ".lock")
    try:
        handle = open(lock_path, "a")
    except OSError as e:
        raise StoreUnusable(f"cannot create the lock file {lock_path} ({e.strerror})") from None
    with handle:
        deadline = time.monotonic() + STORE_LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreUnusable(f"{lock_path} held by another process for {STORE_LOCK_TIMEOUT_S:.0f} s")
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_store(uri: str, experiments: Sequence[str] = ()):
    """An `MlflowClient` on `uri` whose store exists and is migrated, with `experiments` created.

    For an sqlite store: probe the file first (`StoreUnusable` at once when it cannot work), then create
    or migrate the tables and create the experiments under the store's lock, so that concurrent first
    users are serialised. A tracking server needs neither. The one route for training, `mae replay` and
    the workflow's `prepare_mlflow`.

    Args:
        uri: tracking URI (`sqlite:///abs/path/mlflow.db`, `http://host:5000`, ...).
        experiments: experiment names to create when missing.
    """
    path = _sqlite_path(uri)
    if path is not None:
        _probe_sqlite(path)
    with _client_settings():
        from mlflow.tracking import MlflowClient
        with _store_lock(uri):
            client = MlflowClient(tracking_uri=uri)  # an sqlite store is created / migrated here or at the next call
            if path is not None:
                client.search_experiments(max_results=1)
            for name in experiments:
                ensure_experiment(client, uri, name, locked=True)
    return client


def ensure_experiment(client, uri: str, name: str, locked: bool = False) -> str:
    """The id of experiment `name`, created when missing (artifacts of an sqlite store next to the
    database), marked as a model-training experiment (`EXPERIMENT_KIND_TAG`) unless it names a kind."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if EXPERIMENT_KIND_TAG not in exp.tags:  # made by an older harness or by hand: mark it too
            try:
                client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
            except Exception as e:  # noqa: BLE001 - a label for the UI: not worth losing the run's tracking
                _log.debug("tracking: experiment %s keeps no kind tag (%s)", name, e)
        return exp.experiment_id
    if not locked and _sqlite_path(uri) is not None:
        with _store_lock(uri):
            return ensure_experiment(client, uri, name, locked=True)
    location = None
    path = _sqlite_path(uri)
    if path is not None:
        # keep artifacts next to the database, not in whatever folder the job was started from
        location = (path.parent / "mlartifacts" / name).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    except Exception:
        exp = client.get_experiment_by_name(name)  # created by a concurrent job (a tracking server)
        if exp is None:
            raise
        return exp.experiment_id


def ui_url(uri: str, experiment_id: str, run_id: str | None = None) -> str | None:
    """The MLflow UI page of an experiment (or one of its runs) on a tracking server, opening on the
    training runs; None for a store without a UI (sqlite: `mlflow ui --backend-store-uri URI` serves one).
    Credentials in `uri` are left out of the link."""
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return None
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    page = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{base}/{page}?{_UI_QUERY}"


class _Session:
    """The MLflow side: a client bound to one run. Every method may raise."""

    def __init__(self, uri: str):
        self.uri = uri
        self.client = open_store(uri)
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    def _experiment_id(self, name: str) -> str:
        return ensure_experiment(self.client, self.uri, name)

    def open(self, run_dir: Path, experiment: str, run_name: str | None, tags: Mapping[str, str]) -> str:
        """Resume the run named in `run_dir/mlflow_run_id` if this server has it, else create one."""
        id_file = run_dir / MLFLOW_RUN_ID
        if id_file.is_file():
            run_id = id_file.read_text().strip()
            try:
                run = self.client.get_run(run_id)
            except Exception as e:  # not on this server: a new run
                if "RESOURCE_DOES_NOT_EXIST" not in str(e) and "not found" not in str(e).lower():
                    raise
                run = None
            if run is not None and run.info.lifecycle_stage == "active":
                self.run_id, self.experiment_id = run_id, run.info.experiment_id
                if run.info.status != "RUNNING":
                    self.client.update_run(run_id, status="RUNNING")
                return run_id
        run = self.client.create_run(self._experiment_id(experiment), tags=dict(tags), run_name=run_name)
        self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = id_file.with_suffix(".tmp")
        tmp.write_text(self.run_id + "\n")
        tmp.replace(id_file)
        return self.run_id

    def log_params(self, params: Mapping[str, Any]) -> list[str]:
        """Log params not yet on the run; returns the keys whose logged value differs (left as they are)."""
        from mlflow.entities import Param
        existing = self.client.get_run(self.run_id).data.params
        new, conflicts = [], []
        for k, v in params.items():
            s = _param_str(v)
            if k not in existing:
                new.append(Param(k, s))
            elif existing[k] != s:
                conflicts.append(k)
        for i in range(0, len(new), _BATCH):
            self.client.log_batch(self.run_id, params=new[i:i + _BATCH], synchronous=True)
        return conflicts

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, tags=items[i:i + _BATCH], synchronous=True)

    def log_metrics(self, points: list[tuple[str, float, int, int]]) -> None:
        """points: (key, value, timestamp_ms, step)."""
        from mlflow.entities import Metric
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in points]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000], synchronous=True)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).suffix not in (".yaml", ".yml"):
            self.client.log_artifact(self.run_id, str(path), artifact_path)
            return
        # config.yaml holds tracking.tags and the command line: upload a redacted copy (same name)
        import tempfile
        with tempfile.TemporaryDirectory() as folder:
            copy = Path(folder) / Path(path).name
            copy.write_text(redacted_yaml(Path(path).read_text()))
            self.client.log_artifact(self.run_id, str(copy), artifact_path)

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


_STOP = ("stop",)


class Tracker:
    """Mirror a run into MLflow from a background thread; every method returns immediately.

    While started, a `SystemMetricsSampler` writes `run_dir/system_metrics.jsonl` and queues the
    `system/*` metrics like any other (an outage leaves them in the file for `replay`).

    Args:
        enabled: False gives a no-op tracker (tracking off, or not the main rank).
        drain_timeout_s: how long `finish` waits for queued calls before giving up.
        start_timeout_s: how long `start` waits for the MLflow run id before continuing without it
            (the run is still created in the background; `run_id` is then filled in later).
    """

    def __init__(self, enabled: bool = True, drain_timeout_s: float = 10.0, start_timeout_s: float = 30.0):
        self.enabled = enabled
        self.drain_timeout_s = drain_timeout_s
        self.start_timeout_s = start_timeout_s
        self.run_id: str | None = None
        self.uri: str | None = None
        self.param_conflicts: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._failed = False
        self._run_dir: Path | None = None
        self._sampler: SystemMetricsSampler | None = None
        self.url: str | None = None  # the run's page in the MLflow UI (tracking servers only)

    @property
    def active(self) -> bool:
        """True while calls are being sent (enabled, started, no error so far)."""
        return self.enabled and self._thread is not None and not self._failed

    def start(self, run_dir: str | os.PathLike, params: Mapping[str, Any], tags: Mapping[str, Any],
              experiment: str = "mae", run_name: str | None = None, uri: str | None = None) -> str | None:
        """Open (or resume) the MLflow run of `run_dir` and log params once; returns the run id or None.

        Args:
            run_dir: the run folder; holds `mlflow_run_id`.
            params: flattened config (`model.mask_ratio`: 0.75, ...); redacted before logging; `tracking.*`
                keys are not logged.
            tags: run tags (see `run_tags`); redacted before logging.
            experiment: MLflow experiment name (created if missing).
            run_name: MLflow run name for a new run.
            uri: tracking URI (see `default_uri`).
        """
        if not self.enabled or self._thread is not None:
            return self.run_id
        self.uri = default_uri(uri)
        self._run_dir = Path(run_dir)
        self._thread = threading.Thread(target=self._worker, name="mae-mlflow", daemon=True)
        self._thread.start()
        self._queue.put(("start", Path(run_dir), redact(_run_params(params)),
                         redact({k: str(v) for k, v in tags.items()}), experiment,
                         redact_text(run_name) if run_name else run_name))
        self._started.wait(self.start_timeout_s)
        # sampled from now on, whatever MLflow does: the file is the record, the queue the mirror
        # (under the client settings: the monitors import mlflow, which reads its telemetry switch then)
        with _client_settings():
            self._sampler = SystemMetricsSampler(Path(run_dir) / SYSTEM_METRICS_JSONL, publish=self.log_metrics)
            self._sampler.start()
        return self.run_id

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Queue the numeric entries of `metrics` at `step` (non-numeric ones are skipped)."""
        if not self.active:
            return
        ts = int(time.time() * 1000)
        points = [(k, v, ts, int(step)) for k, v in ((k, _numeric(v)) for k, v in metrics.items()) if v is not None]
        if points:
            self._queue.put(("metrics", points))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Queue a small file (config.yaml, metrics.json, recon.png) for upload."""
        if self.active:
            self._queue.put(("artifact", Path(path), artifact_path))

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run `status` (FINISHED, FAILED, KILLED) and wait at most `drain_timeout_s` for the queue."""
        if self._thread is None:
            return
        if self._sampler is not None:  # its last point goes into the queue before the run is closed
            self._sampler.stop(timeout_s=min(5.0, self.drain_timeout_s))
            self._sampler = None
        if not self._failed:
            self._queue.put(("finish", status))
        self._queue.put(None)
        self._thread.join(self.drain_timeout_s)
        if self._thread.is_alive():
            self._warn(f"MLflow did not take the queued calls within {self.drain_timeout_s:.0f} s; giving up "
                       f"(the run folder has everything: `{self._replay_command()}` sends it later)")
            self._failed = True
        self._thread = None

    def _replay_command(self) -> str:
        return f"mae replay {self._run_dir or '<run dir>'} --uri {self.uri}"

    # ---------------------------------------------------------------- background thread

    def _warn(self, text: str) -> None:
        _log.warning("tracking: %s", redact_text(text))

    def _worker(self) -> None:
        with _client_settings():
            self._work()

    def _work(self) -> None:
        session = None
        pending = None
        try:
            while True:
                item, pending = (pending, None) if pending is not None else (self._queue.get(), None)
                if item is None:
                    return
                if self._failed:
                    continue
                kind = item[0]
                if kind == "start":
                    _, run_dir, params, tags, experiment, run_name = item
                    session = _Session(self.uri)
                    self.run_id = session.open(run_dir, experiment, run_name, tags)
                    self.url = ui_url(self.uri, session.experiment_id, self.run_id)
                    if self.url:
                        _log.info("tracking: MLflow run %s", self.url)
                    self._started.set()
                    session.set_tags(tags)
                    self.param_conflicts = session.log_params(params)
                    if self.param_conflicts:
                        self._warn(f"params already logged with other values, kept as they were: "
                                   f"{', '.join(sorted(self.param_conflicts)[:10])}")
                elif kind == "metrics":
                    points = list(item[1])
                    # coalesce the metric calls waiting behind this one into one request
                    while True:
                        try:
                            nxt = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if nxt is not None and nxt[0] == "metrics":
                            points += nxt[1]
                        else:
                            pending = nxt if nxt is not None else _STOP
                            break
                    session.log_metrics(points)
                    if pending is _STOP:
                        return
                elif kind == "artifact":
                    session.log_artifact(item[1], item[2])
                elif kind == "finish":
                    session.finish(item[1])
        except Exception as e:  # noqa: BLE001 - any MLflow failure only turns tracking off
            self._failed = True
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            self._warn(f"MLflow at {self.uri} failed ({type(e).__name__}: {msg[:200]}); tracking is off for the "
                       f"rest of this run, the run folder stays complete (`{self._replay_command()}` sends it later)")
        finally:
            self._started.set()


# ---------------------------------------------------------------- replay

def replay(run_dir: str | os.PathLike, uri: str | None = None, experiment: str | None = None) -> dict[str, Any]:
    """Push a run folder into MLflow; running it again adds nothing.

    Params come from `config.yaml` (flattened, `meta` excluded), tags from its `meta` and
    `tracking.tags`, metric points from `metrics.jsonl` and `system_metrics.jsonl` (every numeric key
    except `step` and `time`, at `step`),
    final numbers from `metrics.json` (as `final/<key>` at the last step, as `mae.train` logs them), and `config.yaml`,
    `metrics.json`, `recon.png` as artifacts. The MLflow run is the one in `mlflow_run_id` if this
    server has it, else a new one (whose id is written there).

    Args:
        run_dir: the run folder.
        uri: tracking URI; default env `MLFLOW_TRACKING_URI`, then `tracking.uri` of the config (unless its
            password was redacted when the run wrote it), then `sqlite:///<cwd>/mlflow.db`.
        experiment: experiment for a new run; default `tracking.experiment` of the config, then `mae`.

    Returns:
        `{"run_id", "metrics_logged", "metrics_skipped", "params_logged", "param_conflicts"}`.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError.message("run_dir", f"run_dir={str(run_dir)!r} is invalid: not a folder")
    config: dict[str, Any] = {}
    if (run_dir / CONFIG_YAML).is_file():
        from mae.config import read_yaml  # bounded and strict; a damaged file is one UserError line
        config = read_yaml(run_dir / CONFIG_YAML, "run_dir")
    meta = config.pop("meta", None) or {}
    tracking = config.get("tracking") or {}
    try:
        summary = read_metrics(run_dir) or {}
    except (OSError, ValueError) as exc:
        raise UserError.message("run_dir", f"{run_dir}/metrics.json cannot be read ({type(exc).__name__}): "
                                "allowed a valid metrics.json or none") from None
    records = read_jsonl(run_dir / METRICS_JSONL)
    system_records = read_jsonl(run_dir / SYSTEM_METRICS_JSONL)  # system/* keys: no clash with training keys
    if not config and not records and not summary:
        raise UserError.message("run_dir", f"run_dir={str(run_dir)!r} is invalid: no config.yaml, metrics.jsonl "
                                           f"or metrics.json there")

    params = _run_params(flatten(config))
    # host and SLURM job come from the run's record, never from the process that replays it
    tags = {
        "mae.run_id": meta.get("run_id") or summary.get("run_id") or run_dir.name,
        "mae.stage": meta.get("stage") or summary.get("stage"),
        "mae.git_revision": meta.get("git_revision") or summary.get("git_revision"),
        "mae.host": summary.get("host"), "mae.slurm_job_id": summary.get("slurm_job_id"),
        **(tracking.get("tags") or {}),
    }
    tags = {k: str(v) for k, v in tags.items() if v is not None}

    points: dict[tuple[str, int], tuple[float, int]] = {}
    now_ms = int(time.time() * 1000)
    for rec in records + system_records:
        if "step" not in rec:
            continue
        step = int(rec["step"])
        ts = int(float(rec["time"]) * 1000) if _numeric(rec.get("time")) is not None else now_ms
        for key, value in rec.items():
            v = _numeric(value)
            if key in ("step", "time") or v is None:
                continue
            points.setdefault((key, step), (v, ts))
    # the training step axis (system metrics count their own points)
    last_step = int(summary.get("steps") or max([int(r["step"]) for r in records if "step" in r] or [0]))
    for key, value in summary.items():
        v = _numeric(value)
        if v is not None and not math.isnan(v):
            points.setdefault((f"final/{key}", last_step), (v, now_ms))

    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.get("uri") or default_uri()
    if REDACTED in uri:
        raise UserError.message("--uri", f"tracking.uri={uri!r} of {run_dir / CONFIG_YAML} had its password "
                                         f"redacted: pass the real one with `mae replay {run_dir} --uri URI` "
                                         f"(or MLFLOW_TRACKING_URI)")
    try:
        with _client_settings():
            session = _Session(uri)
            run_id = session.open(run_dir, experiment or tracking.get("experiment") or "mae",
                                  tracking.get("run_name") or f"{tags.get('mae.stage')}-{tags.get('mae.run_id')}",
                                  redact(tags))  # the name a live run gets (mae.train)
            session.set_tags(redact(tags))
            conflicts = session.log_params(redact(params))
            keys = sorted({k for k, _ in points})
            have = {(k, m.step) for k in keys for m in session.client.get_metric_history(run_id, k)}
            missing = [(k, v, ts, s) for (k, s), (v, ts) in sorted(points.items()) if (k, s) not in have]
            session.log_metrics(missing)
            present = {a.path for a in session.client.list_artifacts(run_id)}
            for name in ARTIFACTS:
                if (run_dir / name).is_file() and name not in present:
                    session.log_artifact(run_dir / name)
            session.finish("FINISHED" if summary.get("status") == "completed" else "FAILED")
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - report the server problem in one line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError.message("tracking.uri", redact_text(f"tracking.uri={uri!r}: replay of {run_dir} failed: "
                                                            f"{type(e).__name__}: {msg[:300]}")) from None
    if conflicts:
        _log.warning("tracking: params already logged with other values, kept as they were: %s",
                     ", ".join(sorted(conflicts)[:10]))
    return {"run_id": run_id, "metrics_logged": len(missing), "metrics_skipped": len(points) - len(missing),
            "params_logged": len(params) - len(conflicts), "param_conflicts": conflicts}
