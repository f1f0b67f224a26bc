"""System metrics of a training run (CPU, memory, disk, network, GPU) sampled by MLflow's own monitors.

MLflow's `SystemMetricsMonitor` sends from its own thread with its own client and stops at the first
failed request, so during a tracking outage the numbers would be lost. Here the same monitors
(`mlflow.system_metrics.metrics`: CPU, disk and network, plus NVIDIA GPUs through `nvidia-ml-py` or AMD
ones through `pyrsmi` when present) are sampled by a small thread that appends each logged mean to the
run folder's `system_metrics.jsonl` (the record; `mae replay` sends it later) and hands it to a
callback (the `Tracker`'s queue). The keys are MLflow's (`system/cpu_utilization_percentage`,
`system/gpu_0_utilization_percentage`, ...), so the UI's "System metrics" tab shows them.

Cadence: one sample a second (0.1 ms of psutil reads); the mean of the samples is logged at an interval
that grows with the time since sampling started (a resumed segment starts again at 1 s),
`clip(elapsed / 10, 1 s, 60 s)`: a 30 s CPU run gets about 20 points,
a multi-day cluster run one point a minute (about 50 in the first 10 minutes). MLflow's own settings
are honoured: `MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL` (seconds between samples),
`MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING` (a fixed number of samples per logged point),
`MLFLOW_SYSTEM_METRICS_NODE_ID` (`system/<node>/...`), and `MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false`
turns sampling off.

    sampler = SystemMetricsSampler(run_dir / "system_metrics.jsonl", publish=tracker.log_metrics)
    sampler.start()
    ...
    sampler.stop()   # logs the mean of the samples taken since the last point

On stop, the time since the previous sample is sampled only when it spans at least half a sampling
interval (a rate over a few milliseconds is noise, and psutil's CPU rate over less than a clock tick is
0.0 %); a run stopped sooner than that after its start logs no point.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .run_folder import read_jsonl

__all__ = ["SystemMetricsSampler", "publish_interval", "enabled_by_env"]

_log = logging.getLogger(__name__)

SAMPLE_S = 1.0  # seconds between samples
MIN_PUBLISH_S = 1.0  # the first points of a short run come every second
MAX_PUBLISH_S = 60.0  # a long run logs one point a minute
PREFIX = "system/"


def publish_interval(elapsed_s: float) -> float:
    """Seconds between logged points for a run `elapsed_s` seconds old: about 10 points per decade of
    run time, between `MIN_PUBLISH_S` and `MAX_PUBLISH_S`."""
    return min(MAX_PUBLISH_S, max(MIN_PUBLISH_S, elapsed_s / 10.0))


def enabled_by_env() -> bool:
    """False only when the user set `MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING` to false (MLflow's own
    switch; unset means on here, as every training run should carry its system metrics)."""
    from mlflow.environment_variables import MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING as flag
    try:
        return not flag.is_set() or flag.get()
    except ValueError:
        return True


def _env_settings() -> tuple[float, int | None, str | None]:
    """(seconds between samples, fixed samples per point or None, node id) from MLflow's variables; a
    value MLflow cannot parse is reported and the default kept (a typo must not stop training)."""
    from mlflow.environment_variables import (MLFLOW_SYSTEM_METRICS_NODE_ID,
                                              MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING,
                                              MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL)
    values = []
    for var, default, ok in ((MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, SAMPLE_S, lambda v: v > 0),
                             (MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING, None, lambda v: v >= 1),
                             (MLFLOW_SYSTEM_METRICS_NODE_ID, None, bool)):
        try:
            value = var.get()
        except ValueError:
            value = None
        if var.is_set() and (value is None or not ok(value)):
            _log.warning("system metrics: %s=%r is invalid, using %r", var.name, var.get_raw(), default)
            value = None
        values.append(default if value is None else value)
    return values[0], values[1], values[2]


def _monitors() -> tuple[list, str]:
    """MLflow's default monitors (CPU + memory, disk, network, and the first GPU monitor that starts) and
    why GPUs are or are not sampled, for the log."""
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor
    from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor
    monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    reasons = []
    for gpu in (GPUMonitor, ROCMMonitor):  # the order SystemMetricsMonitor tries them in
        try:
            return [*monitors, gpu()], f"GPUs through {gpu.__name__}"
        except Exception as exc:  # noqa: BLE001 - no driver, no library, no device: CPU metrics only
            reasons.append(f"{gpu.__name__}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    return monitors, f"no GPU ({reasons[0]})"  # NVIDIA's reason: AMD's only says pyrsmi is missing


class SystemMetricsSampler:
    """Sample the machine in a daemon thread; append each logged mean to `path` and pass it to `publish`.

    Args:
        path: the run folder's `system_metrics.jsonl`; appended to, so a resumed run continues its steps.
        publish: called as `publish(metrics, step)` from the sampler thread; must not block (the
            Tracker only enqueues). An exception it raises is ignored.
    """

    def __init__(self, path: str | Path, publish: Callable[[dict[str, float], int], Any] | None = None):
        self.path = Path(path)
        self.publish = publish
        self.points = 0  # points logged by this sampler
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._monitors: list = []
        self._step = 0

    def start(self) -> bool:
        """Start sampling; False (with a warning) when the monitors cannot start or the user turned it off."""
        if self._thread is not None:
            return True
        try:
            if not enabled_by_env():
                return False
            self._sample_s, self._fixed, node = _env_settings()
            self._prefix = PREFIX + (f"{node}/" if node else "")
            self._monitors, gpus = _monitors()
            last = [r["step"] for r in read_jsonl(self.path) if isinstance(r.get("step"), int)]
            self._step = max(last) + 1 if last else 0  # a resumed run continues after its last point
        except Exception as exc:  # noqa: BLE001 - system metrics are extra; training goes on without them
            _log.warning("system metrics: not sampled (%s: %s)", type(exc).__name__, exc)
            return False
        self._thread = threading.Thread(target=self._run, name="mae-system-metrics", daemon=True)
        self._thread.start()
        _log.info("system metrics: CPU, memory, disk, network and %s, a sample every %g s, into %s",
                  gpus, self._sample_s, self.path.name)
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread; the samples since the last point (with one for the time since the previous
        sample, if it spans half a sampling interval) become one last point."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout_s)
        self._thread = None

    def _run(self) -> None:
        t0 = time.monotonic()
        last_point = last_sample = t0
        samples = 0
        try:
            import psutil
            # psutil keeps cpu_percent's reference per thread: the first call in a thread returns 0.0
            psutil.cpu_percent()
            while True:
                stopping = self._stop.wait(self._sample_s)
                now = time.monotonic()
                # CPU utilisation is a rate over the time since the previous sample; stopping within a few
                # clock ticks of it would measure nothing (psutil says 0.0 %), so on stop a window shorter
                # than half the sampling interval is not sampled: those milliseconds are left unrecorded
                if not stopping or now - last_sample >= self._sample_s / 2:
                    for monitor in self._monitors:
                        monitor.collect_metrics()
                    samples += 1
                    # the next CPU window starts when this sample was read, not when the thread woke:
                    # under load the reads can take tens of milliseconds
                    last_sample = time.monotonic()
                due = (samples >= self._fixed) if self._fixed else (now - last_point >= publish_interval(now - t0))
                if samples and (due or stopping):
                    self._point()
                    last_point, samples = now, 0
                if stopping:
                    return
        except Exception as exc:  # noqa: BLE001 - a failing monitor or a full disk ends sampling, not training
            _log.warning("system metrics: sampling stopped (%s: %s)", type(exc).__name__, exc)

    def _point(self) -> None:
        metrics: dict[str, float] = {}
        for monitor in self._monitors:
            metrics.update({self._prefix + k: float(v) for k, v in monitor.aggregate_metrics().items()})
            monitor.clear_metrics()
        if not metrics:
            return
        record = {"step": self._step, "time": round(time.time(), 3), **metrics}
        with open(self.path, "a") as f:  # one line per point: a killed run keeps what it sampled
            f.write(json.dumps(record) + "\n")
        step, self._step = self._step, self._step + 1
        self.points += 1
        if self.publish is not None:
            try:
                self.publish(metrics, step)
            except Exception as exc:  # noqa: BLE001 - the record is on disk; MLflow gets it by replay
                _log.debug("system metrics: publish failed (%s)", exc)
