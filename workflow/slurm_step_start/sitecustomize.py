"""Stop signals from a SLURM job step's first moment (imported by Python's `site` at start-up).

Inside a SLURM job the jobstep executor runs every job as `srun ... python -m snakemake ...`: a new job
step whose Python starts with the default action (terminate) for SIGUSR1 and SIGTERM, and used to be
protected only once it had parsed workflow/rules/common.smk, seconds later (more on a loaded node). A
time-limit SIGUSR1, a preemption's SIGTERM or an `scancel --signal` in those seconds killed the step
before `mae` ran: the job ended FAILED and spent a retry instead of requeueing. common.smk therefore puts
this folder on PYTHONPATH and sets MAE_REMEMBER_STOP_SIGNALS=1 in the environment the step inherits; then,
before any other import, this module makes the interpreter remember both signals instead of dying
(mae.signals.remember_stop_signals: the `mae` the step starts later stops at once and the job requeues;
a `mae` started with these settings remembers them from its own first moment), consumes the two settings
(the processes this Python starts see the environment they would have seen), and runs the
`sitecustomize` this one hides, if any. Without the variable it changes nothing.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _consume_settings():
    if os.environ.pop("MAE_REMEMBER_STOP_SIGNALS", None) == "1":
        from mae.signals import remember_stop_signals  # the workflow's environment has mae (it parses with it)

        remember_stop_signals()
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    kept = [entry for entry in entries if not entry or os.path.abspath(entry) != _HERE]  # "" is the cwd: kept
    if any(kept):
        os.environ["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        os.environ.pop("PYTHONPATH", None)


def _run_hidden_sitecustomize():
    import importlib.machinery
    import importlib.util

    search = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", search)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


_consume_settings()
_run_hidden_sitecustomize()
