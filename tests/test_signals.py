"""mae.signals: a stop signal before the training loop raises StopRequested; held for the few lines that
attach train.log's handler, so that train.log always says why a run stopped; one that a launching process
received before `mae` ran comes in the environment, and `mae` stops at once."""

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mae import signals
from mae.signals import (PENDING_STOP_SIGNAL, STOP_SIGNALS, StopRequested, install_stop_handlers, raise_pending_stop,
                         remember_stop_signals, stop_signals_held)
from mae.train import _run_logging


@pytest.fixture
def stop_handlers():
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    assert install_stop_handlers()
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def test_a_held_signal_is_raised_at_the_end_of_the_block(stop_handlers):
    reached_the_end = False
    with pytest.raises(StopRequested, match="received SIGUSR1"):
        with stop_signals_held():
            os.kill(os.getpid(), signal.SIGUSR1)
            reached_the_end = True
    assert reached_the_end and signals._held is None
    with pytest.raises(StopRequested, match="received SIGTERM"):  # not held any more: raised at once
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_block_without_a_signal_raises_nothing(stop_handlers):
    with stop_signals_held():
        pass
    assert signals._held is None


def test_a_signal_while_train_log_is_attached_is_logged_in_it(stop_handlers, tmp_path, monkeypatch):
    # The signal lands right after train.log was created and before its handler is attached: the log must
    # still end with why the run stopped (it stayed empty before the hold).
    class SignalledFileHandler(logging.FileHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(logging, "FileHandler", SignalledFileHandler)
    train_log = tmp_path / "train.log"
    body_ran = False
    with pytest.raises(StopRequested):
        with _run_logging(train_log, is_main=True):
            body_ran = True
    assert not body_ran
    assert "received SIGTERM before training started" in train_log.read_text()
    assert not [h for h in logging.getLogger("mae").handlers if isinstance(h, SignalledFileHandler)]


def test_a_signal_during_the_run_is_logged_in_train_log(stop_handlers, tmp_path):
    train_log = tmp_path / "train.log"
    with pytest.raises(StopRequested):
        with _run_logging(train_log, is_main=True):
            os.kill(os.getpid(), signal.SIGUSR1)
    assert "received SIGUSR1 before training started" in train_log.read_text()


def test_a_remembered_signal_is_passed_on_to_the_processes_started_later(monkeypatch):
    monkeypatch.delenv(PENDING_STOP_SIGNAL, raising=False)
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        remember_stop_signals()
        child = [sys.executable, "-c", f"import os; print(os.environ.get({PENDING_STOP_SIGNAL!r}))"]
        assert subprocess.run(child, capture_output=True, text=True).stdout == "None\n"
        os.kill(os.getpid(), signal.SIGUSR1)  # not fatal
        os.kill(os.getpid(), signal.SIGTERM)
        assert os.environ[PENDING_STOP_SIGNAL] == "SIGUSR1"  # the first one
        assert subprocess.run(child, capture_output=True, text=True).stdout == "SIGUSR1\n"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.environ.pop(PENDING_STOP_SIGNAL, None)


def test_mae_stops_at_once_for_a_pending_stop_signal(monkeypatch, tmp_path, capsys):
    """Exit 75 (run it again: inside SLURM the job requeues itself), one line, nothing made, the variable
    consumed (a child of this process would not stop again for it)."""
    from mae import cli
    monkeypatch.setenv(PENDING_STOP_SIGNAL, "SIGUSR1")
    smoke = Path(__file__).resolve().parents[1] / "workflow" / "presets" / "smoke.yaml"
    code = cli.main(["pretrain", "--config", str(smoke), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 75 and err.startswith("stopped: received SIGUSR1 before training started") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists() and PENDING_STOP_SIGNAL not in os.environ


def test_a_pending_value_that_is_not_a_stop_signal_is_dropped(monkeypatch):
    for value in ("SIGKILL", "", "1"):
        monkeypatch.setenv(PENDING_STOP_SIGNAL, value)
        raise_pending_stop()
        assert PENDING_STOP_SIGNAL not in os.environ
