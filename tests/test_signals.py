"""mae.signals: a stop signal before the training loop raises StopRequested; held for the few lines that
attach train.log's handler, so that train.log always says why a run stopped."""

import logging
import os
import signal

import pytest

from mae import signals
from mae.signals import STOP_SIGNALS, StopRequested, install_stop_handlers, stop_signals_held
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
