"""torchrun for `mae`, with stop signals that reach every worker: on several nodes of a SLURM job (one
torchrun per node, started by srun), or on one machine.

    # in the job's shell (an sbatch script, or the Snakemake rule of a job with `nodes` > 1):
    python -m mae.launch --nodes=4 --nproc-per-node=8 --cpus-per-task=64 -- mae pretrain --config C.yaml --out DIR
    # one node, with or without SLURM (torchrun --standalone, the same signal relay and exit code):
    python -m mae.launch --standalone --nproc-per-node=8 -- mae pretrain --config C.yaml --out DIR

That runs `srun --nodes=4 --ntasks-per-node=1 ... python -m mae.launch --nproc-per-node=8 -- mae ...`, and
srun runs this module once per node with SLURM_JOB_ID, SLURM_NNODES, SLURM_NODEID and SLURM_STEP_NODELIST
set for its task (Snakemake's SLURM jobstep removes SLURM_* from the job's shell, so they are read there,
never in the rule). Every node joins torchrun's c10d rendezvous hosted by the first node of the step
(`scontrol show hostnames`; node names must resolve, as they do on clusters), whose launcher keeps the
store until every node's launcher has left (_StoreHost), on a port derived from
the job id: jobs sharing a node get different ports unless their ids are a multiple of 10000 apart (a
port in use fails the job, and its retry, a new job, gets another). Global ranks are assigned by the
rendezvous; nothing depends on which node holds which rank (a checkpoint holds every rank's state, and
the retry of a preempted job may land on other nodes).

Signals: slurmstepd signals each task's process group (proctrack/pgid), but torchrun starts every worker
in a session of its own, and torchrun itself answers SIGTERM by killing its workers 30 s later. So
torchrun here handles neither SIGTERM nor SIGUSR1; this process receives them and passes each one on to
its workers once they have installed `mae`'s handlers (mae.signals); where cgroups deliver the signal to
the workers too, the second delivery changes nothing. The workers agree on the stop at their next sync point
(mae.engine), rank 0 checkpoints, every rank exits 75, and so does this process, and srun. Neither the
relay nor the exit code waits on torchrun's agent (the main thread): the relay reads the signals from a
wakeup fd, and a launcher whose agent has not returned a minute after its workers exited ends itself
with their exit code, printing its threads' stacks (_ExitWatch).
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

from mae.errors import UserError
from mae.signals import EXIT_PREEMPTED, STOP_SIGNALS, StopRequested, raise_pending_stop

__all__ = ["RDZV_PORT_BASE", "RDZV_PORT_SPAN", "first_host", "main", "rendezvous_port", "srun_command", "srun_env",
           "standalone_args", "torchrun_args"]

# Rendezvous ports: below Linux's ephemeral range (32768-60999, where outgoing connections get theirs)
# and above the well-known ones; jobs whose ids differ by less than the span get different ports.
RDZV_PORT_BASE = 20000
RDZV_PORT_SPAN = 10000

# torchrun's agent registers handlers for the signals named here (default SIGTERM, SIGINT, SIGHUP,
# SIGQUIT) and shuts its workers down on any of them; the stop signals are left to this process.
_AGENT_SIGNALS = "SIGINT,SIGHUP,SIGQUIT"


def rendezvous_port(job_id: str) -> int:
    """The c10d rendezvous port of SLURM job `job_id`."""
    return RDZV_PORT_BASE + int(job_id) % RDZV_PORT_SPAN


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (`node[01-04]` -> `node01`), expanded by SLURM's own scontrol."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True).stdout.split()
    except FileNotFoundError:
        raise UserError.message("scontrol", "scontrol is not on PATH: mae.launch runs inside a SLURM job step "
                                "(srun) on a node with SLURM's client commands") from None
    except subprocess.CalledProcessError as err:
        raise UserError.message("SLURM_STEP_NODELIST", f"scontrol show hostnames {nodelist!r} failed: "
                                f"{err.stderr.strip() or err.returncode}") from None
    if not out:
        raise UserError("SLURM_STEP_NODELIST", nodelist, "a SLURM node list with at least one host")
    return out[0]


def _slurm(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if not value:
        raise UserError.message(name, f"{name} is not set: without --nodes, mae.launch runs once per node inside "
                                "a SLURM job step (srun --ntasks-per-node=1 ... python -m mae.launch ...)")
    return value


def srun_command(env: Mapping[str, str], nodes: int, nproc_per_node: int, cpus_per_task: int | None,
                 command: Sequence[str]) -> list[str]:
    """The srun command line that starts this module once on each of `nodes` nodes of the job in `env`.

    The job is named (--jobid) and the step sized (--nodes, --ntasks) outright: srun runs with none of
    the caller's SLURM_* / SRUN_* variables (srun_env), which inside the Snakemake jobstep's own one-node
    step (`srun -n1`) would shrink it to that node. --overlap: that step holds the first node's CPUs and
    GPUs (it changes nothing in a plain batch script). --wait: once one node's task has ended
    (done, checkpointed, crashed), the others get 120 s to end too instead of waiting in a collective for
    its 30-minute timeout. --kill-on-bad-exit=0 (whatever the site's KillOnBadExit): killing the step on
    the first non-zero exit would end rank 0 while it finishes after exit 75.
    """
    job_id = env.get("SLURM_JOB_ID")
    if not job_id:
        raise UserError.message("--nodes", f"--nodes={nodes} runs only inside a SLURM job (SLURM_JOB_ID is not "
                                "set): use snakemake --profile slurm, or sbatch --nodes")
    if nodes < 1:
        raise UserError("--nodes", nodes, "an integer >= 1")
    cpus = [f"--cpus-per-task={cpus_per_task}"] if cpus_per_task else []
    return ["srun", f"--jobid={job_id}", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", *cpus,
            "--overlap", "--kill-on-bad-exit=0", "--wait=120", sys.executable, "-m", "mae.launch",
            f"--nproc-per-node={nproc_per_node}", "--", *command]


def srun_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without SLURM_* (but SLURM_CONF) and SRUN_*: the variables of the step srun is called from.
    Inside the jobstep's one-node step, srun takes SLURM_NODELIST as the nodes it may use and
    SLURM_NTASKS=1 as its task count ("Only allocated 1 nodes asked for 2", or "can't run 1 processes on
    2 nodes, setting nnodes to 1": measured on SLURM 22.05); the job's own allocation is what it should see.
    """
    return {name: value for name, value in env.items()
            if not name.startswith(("SLURM_", "SRUN_")) or name == "SLURM_CONF"}


def standalone_args(nproc_per_node: int, command: Sequence[str]) -> list[str]:
    """torchrun's arguments for `nproc_per_node` workers on this machine alone."""
    _check_workers(nproc_per_node, command)
    return ["--standalone", f"--nproc-per-node={nproc_per_node}", "--max-restarts=0", "--no-python", *command]


def _check_workers(nproc_per_node: int, command: Sequence[str]) -> None:
    if nproc_per_node < 1:
        raise UserError("--nproc-per-node", nproc_per_node, "an integer >= 1")
    if not command:
        raise UserError.message("command", "no worker command after `--` (e.g. -- mae pretrain --config C.yaml ...)")


def torchrun_args(env: Mapping[str, str], nproc_per_node: int, command: Sequence[str]) -> list[str]:
    """torchrun's arguments for this node of the SLURM step described by `env`.

    Args:
        env: the task's environment (SLURM_JOB_ID, SLURM_NNODES, SLURM_NODEID, SLURM_STEP_NODELIST or
            SLURM_JOB_NODELIST).
        nproc_per_node: worker processes on this node (its GPUs, or 1 on a CPU).
        command: the worker's command line (`mae pretrain ...`), run without torchrun's python.
    """
    job_id = _slurm(env, "SLURM_JOB_ID")
    if not job_id.isdigit():
        raise UserError("SLURM_JOB_ID", job_id, "a number")
    nnodes = _slurm(env, "SLURM_NNODES")
    _slurm(env, "SLURM_NODEID")  # not an argument of torchrun's, but main's _StoreHost needs it
    # The step's nodes (SLURM_NODEID counts within the step); the job's when srun did not say.
    nodelist = env.get("SLURM_STEP_NODELIST") or _slurm(env, "SLURM_JOB_NODELIST")
    _check_workers(nproc_per_node, command)
    endpoint = f"{first_host(nodelist)}:{rendezvous_port(job_id)}"
    # Every agent is a client of the rendezvous store; this module serves it on the first node (main:
    # _StoreHost), said outright, not guessed from host names and addresses.
    return [f"--nnodes={nnodes}", f"--nproc-per-node={nproc_per_node}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}", f"--rdzv-id={job_id}", "--rdzv-conf=is_host=0",
            "--max-restarts=0", "--no-python", *command]


class _SignalRelay:
    """Pass each stop signal this process receives on to its children (the workers) once they catch it.

    A worker still starting Python has the default action (terminate) for SIGTERM / SIGUSR1; it gets the
    signal as soon as `mae` has installed its handlers, so a stop during start-up still ends in exit 75.
    The signals are read from a wakeup fd (written by the interpreter's C-level handler the moment one
    arrives), not by a Python handler: those run only in the main thread, which is torchrun's agent and
    may be inside a C call (a rendezvous store request) for as long as that lasts (measured: a Python
    handler waited the whole 3 s of a store wait).
    """

    def __init__(self, poll_s: float = 0.05):
        self._poll_s = poll_s
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._previous_fd = -1
        self._received: set[int] = set()
        self._delivered: set[tuple[int, int]] = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mae-signal-relay", daemon=True)

    def install(self) -> "_SignalRelay":
        for sig in STOP_SIGNALS:
            signal.signal(sig, _ignore_in_main_thread)  # a Python handler, so that the C handler writes the fd
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno())
        self._thread.start()
        return self

    def close(self) -> None:
        self._done.set()
        try:
            self._writer.send(b"\0")  # wakes the thread's select
        except OSError:
            pass
        signal.set_wakeup_fd(self._previous_fd)

    def _read_signals(self, timeout_s: float | None) -> None:
        ready, _, _ = select.select([self._reader], [], [], timeout_s)
        if not ready:
            return
        try:
            data = self._reader.recv(256)
        except BlockingIOError:
            return
        for sig in {s for s in data if s in STOP_SIGNALS} - self._received:  # STOP_SIGNALS are ints
            self._received.add(sig)
            _say(f"received {signal.Signals(sig).name}: passing it on to the workers as they catch it")

    def _run(self) -> None:
        while not self._done.is_set() and not self._received:  # nothing to pass on yet: wait for a signal
            self._read_signals(None)
        while not self._done.is_set():
            for pid in _children(os.getpid()):
                for sig in self._received:
                    if (pid, sig) not in self._delivered and _catches(pid, sig):
                        _say(f"passing {signal.Signals(sig).name} on to worker {pid}")
                        try:
                            os.kill(pid, sig)
                        except ProcessLookupError:
                            pass
                        self._delivered.add((pid, sig))
            self._read_signals(self._poll_s)


def _ignore_in_main_thread(signum, frame) -> None:
    """The stop signals' Python handler in the launcher: nothing to do there (the relay reads the fd)."""


class _ExitWatch:
    """End this launcher with its workers' exit code if torchrun's agent has not returned `grace_s` after
    the last of them exited, printing the launcher's threads first (the agent's stack says where it is).

    Measured twice on the 2-node test (once in CI): every rank stopped at the same step and exited 75,
    one node's agent never noticed its worker's exit, and srun ended that node's task 120 s later
    (--wait), which failed the job instead of requeueing it. The exit codes are read without reaping
    (waitid WNOWAIT), so the agent still sees them if it is only slow; once the agent has reaped a
    worker it is evidently running, and the watch stands down.
    """

    def __init__(self, store: "_StoreHost | None" = None, grace_s: float = 60.0, poll_s: float = 2.0):
        self.store = store  # left (counted out) before exiting, like main does
        self.grace_s = grace_s
        self._poll_s = poll_s
        self._codes: dict[int, int | None] = {}  # worker pid -> exit code, None while it runs
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mae-exit-watch", daemon=True)

    def start(self) -> "_ExitWatch":
        self._thread.start()
        return self

    def close(self) -> None:
        self._done.set()

    def _run(self) -> None:
        all_exited_at = None
        while not self._done.wait(self._poll_s):
            for pid in _children(os.getpid()):
                self._codes.setdefault(pid, None)
            for pid in self._codes:
                status = _exit_status(pid)
                if status == _REAPED:  # the agent collects its workers' exits: it is running
                    return
                self._codes[pid] = status
            if not self._codes or None in self._codes.values():
                all_exited_at = None
                continue
            all_exited_at = all_exited_at or time.monotonic()
            if time.monotonic() - all_exited_at >= self.grace_s:
                self._exit(_exit_code({pid: SimpleNamespace(exitcode=c) for pid, c in self._codes.items()}))
                return

    def _exit(self, code: int) -> None:
        _say(f"the workers ended {self.grace_s:.0f} s ago (exit {code}) but torchrun's agent has not returned; "
             f"this launcher's threads follow, then it exits {code}")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        if self.store is not None:
            self.store.leave()
        os._exit(code)


_REAPED = "reaped"


def _exit_status(pid: int) -> int | str | None:
    """The exit code of child `pid` once it has exited (negative: the signal that ended it), None while it
    runs, or _REAPED when its parent's own wait has collected it; the child is never reaped here."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return _REAPED
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _say(text: str) -> None:
    """One timestamped line on stderr (the job's log), naming this node of the SLURM step."""
    node = os.environ.get("SLURM_NODEID")
    where = f" (node {node})" if node is not None else ""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} mae.launch{where}: {text}", file=sys.stderr, flush=True)


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc: torchrun keeps no list one could ask for)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def _catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (SigCgt of /proc/pid/status)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        pass
    return False


def _exit_code(failures: Mapping) -> int:
    """The workers' own exit code when they agree (75 checkpointed, 2 user error, 3 non-finite loss), else 1.
    Workers killed by a signal are left out: torchrun ends a node's other workers once one has exited.
    A user error beside stops stays a user error: torchrun's SIGTERM can reach a worker before it has
    checked the same input, and that worker then stops (75) rather than fails; every retry would end
    the same way, so the job must not look retryable."""
    codes = {failure.exitcode for failure in failures.values() if failure.exitcode > 0}
    if codes == {2, 75}:
        return 2
    return codes.pop() if len(codes) == 1 else 1


class _StoreHost:
    """The rendezvous store, served by the first node's launcher rather than by its torchrun agent, and
    kept until every node's launcher has left (or `timeout_s`).

    torchrun's own host agent ends as soon as its workers have, and an agent whose workers are still
    exiting (after a stop every rank agreed on) then loses the store while it polls it and ends with
    exit 1 instead of its workers' 75 (measured), its workers stopped by SIGTERM. Each launcher counts
    itself out in the store (`leave`); the first node's waits for all of them.
    """

    KEY = "mae.launch/left"

    def __init__(self, env: Mapping[str, str], timeout_s: float = 120):
        from datetime import timedelta

        from torch.distributed import TCPStore

        self.nnodes = int(env["SLURM_NNODES"])
        self.timeout_s = timeout_s
        host = first_host(env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"])
        port = rendezvous_port(env["SLURM_JOB_ID"])
        if env["SLURM_NODEID"] == "0":  # the server, before any agent connects to it
            self.store = TCPStore(host, port, is_master=True, wait_for_workers=False, multi_tenant=True)
            self.serving = True
        else:
            self.store, self.serving = None, False
            self._client = lambda: TCPStore(host, port, is_master=False, timeout=timedelta(seconds=30))

    def leave(self) -> None:
        """Count this node out; on the first node, wait until every node has (at most timeout_s)."""
        try:
            store = self.store if self.serving else self._client()
            store.add(self.KEY, 1)
            deadline = time.monotonic() + self.timeout_s
            while self.serving and store.add(self.KEY, 0) < self.nnodes and time.monotonic() < deadline:
                time.sleep(0.2)
        except Exception as err:  # the first node gone: nobody left to wait for
            print(f"mae.launch: rendezvous store: {err}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mae.launch", description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--nodes", type=int, help="in the job's shell: start one task per node with srun")
    where.add_argument("--standalone", action="store_true", help="one node, no rendezvous to find (no SLURM needed)")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="worker processes on each node (its GPUs)")
    parser.add_argument("--cpus-per-task", type=int, help="with --nodes: CPUs of each node's task")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the worker's command line (mae <stage> ...)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:  # a signal its job step received before it could act (mae.signals): no srun, no torchrun started
        raise_pending_stop()
    except StopRequested as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        return EXIT_PREEMPTED
    try:
        if args.nodes is not None:
            srun = srun_command(os.environ, args.nodes, args.nproc_per_node, args.cpus_per_task, command)
        elif args.standalone:
            torchrun = standalone_args(args.nproc_per_node, command)
        else:
            torchrun = torchrun_args(os.environ, args.nproc_per_node, command)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.nodes is not None:
        try:
            # srun's exit code is the highest of its tasks': the workers' own
            os.execvpe(srun[0], srun, srun_env(os.environ))
        except FileNotFoundError:
            print("error: srun is not on PATH: --nodes needs SLURM's client commands", file=sys.stderr)
            return 2
    os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = _AGENT_SIGNALS
    relay = _SignalRelay().install()
    # torch only now: the arguments above are checked in a fraction of a second, without it.
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    store = None if args.standalone else _StoreHost(os.environ)
    watch = _ExitWatch(store).start()
    try:
        run(parse_args(torchrun))
    except ChildFailedError as err:
        print(err, file=sys.stderr)
        return _exit_code(err.failures)
    finally:
        watch.close()
        relay.close()
        if store is not None:
            store.leave()
    return 0


if __name__ == "__main__":
    sys.exit(main())
