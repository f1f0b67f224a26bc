"""Stop signals from the first moment of a `mae` command (torch-free, installed before anything is imported).

SLURM sends SIGTERM on preemption and SIGUSR1 before the time limit (`--signal=USR1@300`), often to a
job that has only just started. `install_stop_handlers()` is the first thing `mae.cli.main` does:
from then on SIGTERM / SIGUSR1 raise `StopRequested` in the main thread, so a signal during imports,
argument parsing, the dataset or model build ends the command with exit 75 (`EXIT_PREEMPTED`: run it
again) and one line, having written nothing that looks finished. The training loop replaces these
handlers by its own flag (`mae.engine.PreemptionFlag`), which checkpoints at the next step boundary
and also exits 75, and puts them back when the loop ends. On several nodes, torchrun starts each worker
in a session of its own, out of reach of SLURM's signal to the task; `mae.launch` passes the signals on.
A signal that reached the job before `mae` existed (at its SLURM job step's start: the step's Snakemake
remembers it, `remember_stop_signals`) comes in the environment (`PENDING_STOP_SIGNAL`): `mae` stops at once.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager

__all__ = ["EXIT_PREEMPTED", "PENDING_STOP_SIGNAL", "STOP_SIGNALS", "StopRequested", "install_stop_handlers",
           "raise_pending_stop", "remember_stop_signals", "stop_signals_held"]

EXIT_PREEMPTED = 75  # checkpointed (or nothing started yet): run the same command again
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# An environment variable: the stop signal (its name) that a process starting `mae` received for it
# before `mae` could act on it (remember_stop_signals); `mae` stops at once (raise_pending_stop).
PENDING_STOP_SIGNAL = "MAE_PENDING_STOP_SIGNAL"


class StopRequested(BaseException):
    """A stop signal arrived outside the training loop (a BaseException, like KeyboardInterrupt, so that
    no `except Exception` on the way swallows it)."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, signal_name: str):
        self.signal_name = signal_name
        super().__init__(f"received {signal_name} before training started: nothing to save, nothing "
                         f"written that looks finished; run the same command again")


_held: list[int] | None = None  # the stop signals that arrived inside stop_signals_held(), else None


def _raise_stop(signum, frame) -> None:
    if _held is not None:
        _held.append(signum)
        return
    raise StopRequested(signal.Signals(signum).name)


@contextmanager
def stop_signals_held():
    """A stop signal inside the block raises `StopRequested` at its end instead of in the middle, for a few
    lines that must not be cut in half (attaching train.log's handler, so that the log says why the run
    stopped). Python runs signal handlers in the main thread, so this holds whichever thread the signal hit."""
    global _held
    _held = []
    try:
        yield
    finally:
        arrived, _held = _held, None
    if arrived:
        raise StopRequested(signal.Signals(arrived[0]).name)


def install_stop_handlers() -> bool:
    """SIGTERM / SIGUSR1 raise `StopRequested` from now on; False when not in the main thread (left alone)."""
    try:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _raise_stop)
    except ValueError:
        return False
    return True


def remember_stop_signals() -> None:
    """For a process that will start `mae` (a SLURM job step's Snakemake): a stop signal does not end it but
    is written into os.environ[PENDING_STOP_SIGNAL] (the first one), which the processes it starts from then
    on inherit, so the `mae` it starts later stops at once (exit 75) instead of the signal being lost."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _remember_stop)


def _remember_stop(signum, frame) -> None:
    os.environ.setdefault(PENDING_STOP_SIGNAL, signal.Signals(signum).name)


def raise_pending_stop() -> None:
    """`StopRequested` if a stop signal was received for this command before it could act on it."""
    pending = os.environ.pop(PENDING_STOP_SIGNAL, None)
    if pending in {signal.Signals(sig).name for sig in STOP_SIGNALS}:
        raise StopRequested(pending)
