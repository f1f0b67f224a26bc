"""workflow/slurm_step_start: inside a SLURM job, the jobstep `python -m snakemake` (a job step of its own,
started by slurmstepd with the default signal actions) does not die of SIGUSR1 or SIGTERM from its
interpreter's first moment, not only once it has parsed workflow/rules/common.smk: it remembers the signal
for the `mae` it starts (mae.signals), which stops at once. Through the real cluster:
tests/integration/test_slurm_requeue.py::test_slurm_signal_at_the_job_steps_start_requeues_the_job."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from test_reliability_common import REPO, workflow_copy

STEP_START = REPO / "workflow" / "slurm_step_start"
# Printed by a fresh interpreter as its first statement: what it started with.
REPORT = ("import json, os, signal, sys; print(json.dumps({"
          "'usr1': getattr(signal.getsignal(signal.SIGUSR1), '__name__', None), "
          "'term': getattr(signal.getsignal(signal.SIGTERM), '__name__', None), "
          "'variable': os.environ.get('MAE_REMEMBER_STOP_SIGNALS'), 'pythonpath': os.environ.get('PYTHONPATH'), "
          "'hidden': os.environ.get('HIDDEN_SITECUSTOMIZE_RAN')}))")


def _environment(**settings: str) -> dict[str, str]:
    """This process's environment without the two settings, then `settings`."""
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MAE_REMEMBER_STOP_SIGNALS")}
    return {**base, **settings}


def _default_stop_actions() -> None:
    """preexec_fn: the child starts with the default actions, as slurmstepd starts a step's task."""
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _start_python(env: dict[str, str], code: str = REPORT) -> dict:
    """What a fresh python reports at its first statement, started with the default stop actions."""
    out = subprocess.run([sys.executable, "-c", code], env=_environment(**env), capture_output=True, text=True,
                         timeout=60, preexec_fn=_default_stop_actions)
    assert out.returncode == 0 and not out.stderr, out.stderr
    return json.loads(out.stdout)


REMEMBER = "_remember_stop"  # mae.signals.remember_stop_signals' handler


def test_the_interpreter_remembers_the_stop_signals_from_its_first_statement(tmp_path):
    started = _start_python({"MAE_REMEMBER_STOP_SIGNALS": "1", "PYTHONPATH": f"{STEP_START}{os.pathsep}{tmp_path}"})
    assert started["usr1"] == started["term"] == REMEMBER, started
    # consumed: the processes it starts see the environment they would have seen (and inherit "ignore")
    assert started["variable"] is None and started["pythonpath"] == str(tmp_path), started


def test_the_rest_of_pythonpath_is_kept_as_it_was(tmp_path):
    for rest in (f"{tmp_path}{os.pathsep}", f"{os.pathsep}{tmp_path}", f"{tmp_path}{os.pathsep}{tmp_path}"):
        started = _start_python({"MAE_REMEMBER_STOP_SIGNALS": "1", "PYTHONPATH": f"{STEP_START}{os.pathsep}{rest}"})
        assert started["pythonpath"] == rest and started["usr1"] == REMEMBER, started


def test_without_the_variable_nothing_changes(tmp_path):
    started = _start_python({"PYTHONPATH": f"{tmp_path}{os.pathsep}{STEP_START}"})
    assert started["usr1"] is None and started["term"] is None, started  # SIG_DFL
    assert started["pythonpath"] == str(tmp_path), started


def test_a_sitecustomize_it_hides_still_runs(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import os\nos.environ['HIDDEN_SITECUSTOMIZE_RAN'] = 'yes'\n")
    started = _start_python({"MAE_REMEMBER_STOP_SIGNALS": "1", "PYTHONPATH": f"{STEP_START}{os.pathsep}{tmp_path}"})
    assert started["hidden"] == "yes" and started["usr1"] == REMEMBER, started


def test_a_signal_during_start_up_is_remembered_not_fatal(tmp_path):
    """The same as a behaviour: SIGUSR1 then SIGTERM sent while the interpreter is importing (a slow import
    stands in for Snakemake's seconds of imports and parsing) do not end it; the first is in the
    environment its children inherit. Without the setting they end it."""
    (tmp_path / "slow_import.py").write_text("import sys\nprint('importing', flush=True)\nsys.stdin.readline()\n")
    code = "import os, slow_import; print(os.environ.get('MAE_PENDING_STOP_SIGNAL'))"
    for variable, expected in (("1", (0, "SIGUSR1\n")), (None, (-signal.SIGUSR1, ""))):
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path,
            env=_environment(PYTHONPATH=f"{STEP_START}{os.pathsep}{tmp_path}",
                             **({"MAE_REMEMBER_STOP_SIGNALS": variable} if variable else {})),
            preexec_fn=_default_stop_actions)
        assert proc.stdout.readline() == "importing\n"
        proc.send_signal(signal.SIGUSR1)
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate("go\n", timeout=60)
        except BrokenPipeError:  # it died before reading
            out = proc.stdout.read()
            proc.wait(60)
        assert (proc.returncode, out) == expected, variable


def test_inside_a_slurm_job_the_workflow_sets_it_up_for_its_job_steps(tmp_path):
    """common.smk, parsed inside a SLURM job (the batch step's Snakemake, whose environment the jobstep
    plugin passes to the step's `srun`), puts workflow/slurm_step_start on PYTHONPATH and sets the variable;
    outside SLURM it sets neither. (A python started by the rule's shell, like `mae`, takes them up too.)"""
    copy = workflow_copy(tmp_path / "wf")
    (copy / "report.py").write_text(REPORT)
    (copy / "Snakefile.env").write_text(
        'configfile: "workflow/config.yaml"\n'
        'include: "workflow/rules/common.smk"\n'
        "rule step_environment:\n"
        '    output: "environment.json"\n'
        "    shell: 'printf \"%s\\\\n%s\\\\n\" \"${{MAE_REMEMBER_STOP_SIGNALS:-}}\" \"${{PYTHONPATH:-}}\" > environment.txt; "
        f"{sys.executable} report.py > {{output}}'\n")
    snakemake = str(Path(sys.executable).parent / "snakemake")
    for slurm in (True, False):
        env = {k: v for k, v in _environment().items() if not k.startswith("SLURM_")}
        if slurm:
            env["SLURM_JOB_ID"] = "4242"
        out = subprocess.run([snakemake, "-s", "Snakefile.env", "--cores", "1", "--forceall", "--config", "preset=smoke",
                              "ablations=[table1c_mask_token]"], cwd=copy, env=env, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        variable, pythonpath = (copy / "environment.txt").read_text().split("\n")[:2]
        started = json.loads((copy / "environment.json").read_text())
        if slurm:
            assert variable == "1" and pythonpath == str(copy.resolve() / "workflow" / "slurm_step_start"), (variable, pythonpath)
            assert started["usr1"] == started["term"] == REMEMBER, started
            assert started["variable"] is None and started["pythonpath"] is None, started
        else:
            assert variable == pythonpath == "", (variable, pythonpath)
            assert started["usr1"] is None and started["term"] is None, started
