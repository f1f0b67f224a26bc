"""Multi-node training without a cluster: `python -m mae.launch` started twice on this machine with the
environment srun gives each task of a 2-node step (SLURM_JOB_ID, SLURM_NNODES=2, SLURM_NODEID=0/1,
SLURM_STEP_NODELIST), one gloo process per "node". It must equal one node x 2 processes bitwise
(augmentation none, as in test_ddp.py), and a SIGUSR1 to one node's launcher mid-run must stop every
rank at the same step (exit 75 on both nodes) and resume, with the node ids swapped and a new job id,
to the same bits. The same launcher runs under the real cluster (tests/integration)."""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch.distributed import TCPStore

from mae import launch
from mae.checkpoint import load_checkpoint
from mae.choices import batch_geometry
from mae.config import load_config
from mae.run_folder import read_jsonl
from micro_config import MICRO_MODEL
from test_workflow import SNAKEMAKE, copy_workflow

REPO = Path(__file__).resolve().parents[1]

# 256 images / batch 16 = 16 steps per epoch, 2 epochs; a log record (a sync point of every rank) each step
CONFIG = [
    *MICRO_MODEL, "data.train_subset=256", "data.val_subset=16", "data.num_workers=0",
    "pretrain.epochs=2", "pretrain.warmup_epochs=1", "pretrain.batch_size=16", "pretrain.blr=1e-3",
    "pretrain.augmentation=none",  # crops are drawn per process; masks are not
    "run.log_every_steps=1", "run.checkpoint_every_steps=0", "run.threads=1", "tracking.enabled=false",
    "run.device=cpu",
]
TOTAL_STEPS = 32


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    # torchrun sets one thread per worker only when it starts several; the same threads in every layout
    env.update(OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true", **extra)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


# `scontrol show hostnames` for plain lists and one bracket of numbers: gpu07,gpu09 / gpu[01-03,07]
_SCONTROL_STAND_IN = """import re, sys
assert sys.argv[1:3] == ["show", "hostnames"]
for name in re.findall(r"[^,\\[]+(?:\\[[^\\]]*\\])?", sys.argv[3]):
    prefix, _, spec = name.partition("[")
    for part in spec.rstrip("]").split(",") if spec else [""]:
        lo, _, hi = part.partition("-")
        print("\\n".join(f"{prefix}{n:0{len(lo)}d}" for n in range(int(lo), int(hi or lo) + 1)) if lo else prefix)
"""


@pytest.fixture(scope="module")
def scontrol_path(tmp_path_factory) -> str:
    """PATH with SLURM's scontrol, or where it is not installed (or finds no slurm.conf: no cluster up) a
    stand-in that expands plain lists and one bracket of numbers."""
    if shutil.which("scontrol") and subprocess.run(["scontrol", "show", "hostnames", "a,b"],
                                                   capture_output=True).returncode == 0:
        return os.environ["PATH"]
    bin_dir = tmp_path_factory.mktemp("bin")
    stand_in = bin_dir / "scontrol"
    stand_in.write_text(f"#!{sys.executable}\n" + _SCONTROL_STAND_IN)
    stand_in.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def _free_job_id() -> str:
    """A job id whose rendezvous port (mae.launch.rendezvous_port) is free on this machine now."""
    for _ in range(200):
        with socket.socket() as s:
            port = launch.RDZV_PORT_BASE + int.from_bytes(os.urandom(2), "little") % launch.RDZV_PORT_SPAN
            try:
                s.bind(("", port))
            except OSError:
                continue
        return str(7 * launch.RDZV_PORT_SPAN + port - launch.RDZV_PORT_BASE)
    raise RuntimeError("no free port for the rendezvous")


def _start_nodes(out: Path, job_id: str, path: str, node_ids=(0, 1), wrap=None) -> list[subprocess.Popen]:
    """One launcher per node, as srun starts them (each its own process group, like a task); `wrap`:
    node id -> a prefix of that node's worker command line."""
    procs = []
    for node_id in node_ids:
        env = _env(PATH=path, SLURM_JOB_ID=job_id, SLURM_NNODES="2", SLURM_NODEID=str(node_id),
                   SLURM_STEP_NODELIST="localhost,localhost", SLURM_JOB_NODELIST="localhost,localhost")
        log = open(out.parent / f"{out.name}-node{node_id}.log", "w")
        cmd = [sys.executable, "-m", "mae.launch", "--nproc-per-node=1", "--", *(wrap or {}).get(node_id, []),
               sys.executable, "-m", "mae.cli", "pretrain", "--out", str(out), *CONFIG]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float = 240) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)


def _logs(out: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(out.parent.glob(f"{out.name}-node*.log")))


def _assert_bitwise(a: Path, b: Path) -> None:
    wa = torch.load(a / "model.pth", weights_only=True)["model"]
    wb = torch.load(b / "model.pth", weights_only=True)["model"]
    assert wa.keys() == wb.keys()
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []
    curve = lambda run: [(r["step"], r["loss"], r["lr"]) for r in read_jsonl(run / "metrics.jsonl")]  # noqa: E731
    assert curve(a) == curve(b) and len(curve(a)) == TOTAL_STEPS


@pytest.fixture(scope="module")
def one_node_two_processes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one_node") / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mae.cli", "pretrain", "--out", str(out), *CONFIG]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_torchrun_arguments_come_from_the_step(scontrol_path, monkeypatch):
    monkeypatch.setenv("PATH", scontrol_path)
    env = {"SLURM_JOB_ID": "123456", "SLURM_NNODES": "4", "SLURM_NODEID": "2",
           "SLURM_STEP_NODELIST": "gpu07,gpu09,gpu11,gpu12", "SLURM_JOB_NODELIST": "gpu[01-12]"}
    args = launch.torchrun_args(env, 8, ["mae", "pretrain", "--out", "DIR"])
    port = launch.RDZV_PORT_BASE + 123456 % launch.RDZV_PORT_SPAN
    assert args == ["--nnodes=4", "--nproc-per-node=8", "--rdzv-backend=c10d", f"--rdzv-endpoint=gpu07:{port}",
                    "--rdzv-id=123456", "--rdzv-conf=is_host=0", "--max-restarts=0", "--no-python",
                    "mae", "pretrain", "--out", "DIR"]
    # node 0's agent is a client too (its launcher serves the store: _StoreHost); without a step node
    # list the job's is used
    del env["SLURM_STEP_NODELIST"]
    assert launch.torchrun_args({**env, "SLURM_NODEID": "0"}, 1, ["mae"])[3:6] == [
        f"--rdzv-endpoint=gpu01:{port}", "--rdzv-id=123456", "--rdzv-conf=is_host=0"]


def test_outside_a_step_is_one_line_and_exit_2(scontrol_path):
    env = _env(PATH=scontrol_path, SLURM_JOB_ID="5", SLURM_NNODES="2")
    proc = subprocess.run([sys.executable, "-m", "mae.launch", "--", "mae", "pretrain"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: SLURM_NODEID is not set: without --nodes, mae.launch runs once per node inside a SLURM job "
        "step (srun --ntasks-per-node=1 ... python -m mae.launch ...)"]


def test_nodes_outside_a_job_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "mae.launch", "--nodes=2", "--", "mae", "pretrain"], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --nodes=2 runs only inside a SLURM job (SLURM_JOB_ID is not set): use snakemake --profile slurm, "
        "or sbatch --nodes"]


def test_nodes_starts_one_task_per_node_with_srun_and_keeps_its_exit_code(tmp_path):
    """In the job's shell: srun (a stand-in recording its arguments, exiting as the tasks did) with the
    job id given outright, since Snakemake's jobstep leaves no other SLURM_* variable behind."""
    (tmp_path / "srun").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$(dirname "$0")/argv"\nexit 75\n')
    (tmp_path / "srun").chmod(0o755)
    env = _env(PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_ID="4242")
    proc = subprocess.run([sys.executable, "-m", "mae.launch", "--nodes=2", "--nproc-per-node=8", "--cpus-per-task=16",
                           "--", "mae", "pretrain", "--out", "DIR"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 75, proc.stderr
    assert (tmp_path / "argv").read_text().splitlines() == [
        "--jobid=4242", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpus-per-task=16", "--overlap",
        "--kill-on-bad-exit=0", "--wait=120", sys.executable, "-m", "mae.launch", "--nproc-per-node=8", "--",
        "mae", "pretrain", "--out", "DIR"]


def test_exit_code_is_the_workers_own():
    failure = lambda code: SimpleNamespace(exitcode=code)  # noqa: E731
    assert launch._exit_code({0: failure(75), 1: failure(75)}) == 75
    assert launch._exit_code({0: failure(2), 3: failure(-15)}) == 2  # the rest ended by torchrun
    # torchrun's SIGTERM reached rank 1 before its own check of the input that rank 0 refused
    assert launch._exit_code({0: failure(2), 1: failure(75)}) == 2
    assert launch._exit_code({0: failure(2), 1: failure(75), 2: failure(1)}) == 1
    assert launch._exit_code({0: failure(75), 1: failure(3)}) == 1
    assert launch._exit_code({0: failure(-9)}) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=lambda sig: sig.name)
def test_relay_passes_a_signal_on_once_the_worker_catches_it(sig, capfd):
    """A worker still starting (no handler yet) is not killed by the signal: it gets it once it catches it.
    The job's log says when the signal came and when it was passed on."""
    worker = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys, time\n"
        "time.sleep(1.0)  # still importing: the default action would end it\n"
        "signal.signal(signal.%s, lambda s, f: sys.exit(75))\n"
        "time.sleep(30)\n") % sig.name], start_new_session=True)
    with _relay_installed(worker):
        os.kill(os.getpid(), sig)  # what srun's task, this process, receives
        assert worker.wait(timeout=20) == 75
    err = capfd.readouterr().err
    assert f"mae.launch: received {sig.name}: passing it on to the workers as they catch it" in err
    assert f"mae.launch: passing {sig.name} on to worker {worker.pid}" in err


def test_relay_does_not_wait_for_the_main_thread():
    """The signal reaches the worker while the launcher's main thread (torchrun's agent) is inside a C call
    that does not return for seconds (a rendezvous store wait): a Python handler would run only after it."""
    worker = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGUSR1, lambda s, f: sys.exit(75))\n"
        "time.sleep(30)\n")], start_new_session=True)
    ended = []
    waiter = threading.Thread(target=lambda: ended.append((worker.wait(), time.monotonic())), daemon=True)
    waiter.start()
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    with _relay_installed(worker):
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        with pytest.raises(Exception, match="timeout|Timeout|timed out"):
            store.wait(["never set"], timedelta(seconds=4))  # the main thread, stuck in C++ for 4 s
        returned_at = time.monotonic()
        waiter.join(5)
    assert ended and ended[0][0] == 75
    assert ended[0][1] < returned_at - 2, "the worker got the signal only after the main thread's C call"


@contextlib.contextmanager
def _relay_installed(worker: subprocess.Popen):
    """The launcher's relay in this process; the previous handlers back and the worker gone afterwards."""
    previous = {s: signal.getsignal(s) for s in launch.STOP_SIGNALS}
    relay = launch._SignalRelay().install()
    try:
        yield relay
    finally:
        relay.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
        if worker.poll() is None:
            worker.kill()


_STUCK_AGENT = """
import subprocess, sys, time
from mae import launch
watch = launch._ExitWatch(grace_s=1.0, poll_s=0.1).start()
workers = [subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(%s)"]) for _ in range(2)]
%s
time.sleep(%s)  # the agent, stuck: it neither reaps the workers nor returns (20 s), or done reaping (3 s)
print("the launcher outlived the watch")
"""


@pytest.mark.parametrize("code", [75, 2])
def test_exit_watch_ends_a_launcher_whose_agent_is_stuck_with_the_workers_code(code):
    """Workers exited, agent never returns: the launcher exits with their code within the grace period and
    prints its threads' stacks (where the agent is stuck)."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _STUCK_AGENT % (code, "", 20)], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == code, proc.stderr
    assert time.monotonic() - t0 < 15
    assert f"the workers ended 1 s ago (exit {code}) but torchrun's agent has not returned" in proc.stderr
    assert "Current thread" in proc.stderr or "Thread 0x" in proc.stderr  # faulthandler's stacks
    assert "the launcher outlived the watch" not in proc.stdout


def test_exit_watch_stands_down_while_the_agent_reaps_its_workers():
    """An agent that has collected its workers' exits is running: the watch does nothing."""
    proc = subprocess.run([sys.executable, "-c", _STUCK_AGENT % (75, "[w.wait() for w in workers]", 3)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "the launcher outlived the watch" in proc.stdout and "has not returned" not in proc.stderr


def test_two_nodes_equal_one_node_bitwise(tmp_path, scontrol_path, one_node_two_processes):
    out = tmp_path / "run"
    codes = _wait(_start_nodes(out, _free_job_id(), scontrol_path))
    assert codes == [0, 0], _logs(out)
    assert (out / "metrics.json").exists()
    _assert_bitwise(out, one_node_two_processes)


@pytest.mark.slow
def test_signal_to_one_node_stops_every_rank_and_resumes_elsewhere(tmp_path, scontrol_path, one_node_two_processes):
    out = tmp_path / "run"
    node0, node1 = procs = _start_nodes(out, _free_job_id(), scontrol_path)
    deadline = time.monotonic() + 180
    while len(read_jsonl(out / "metrics.jsonl")) < 3 and node0.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    # What slurmstepd does to one task (its process group); the workers are in sessions of their own
    os.killpg(node1.pid, signal.SIGUSR1)
    codes = _wait(procs)
    assert codes == [75, 75], _logs(out)
    assert not (out / "metrics.json").exists(), "finished before the signal arrived: " + _logs(out)
    stopped_at = load_checkpoint(out / "checkpoint.pth")["loop"]["global_step"]
    assert 3 <= stopped_at < TOTAL_STEPS

    # The retry: another job id (rendezvous port), the nodes in the other order
    codes = _wait(_start_nodes(out, _free_job_id(), scontrol_path, node_ids=(1, 0)))
    assert codes == [0, 0], _logs(out)
    metrics = (out / "metrics.json").read_text()
    assert f'"resumed_from_step": {stopped_at}' in metrics
    _assert_bitwise(out, one_node_two_processes)



@pytest.mark.slow
def test_a_node_whose_workers_outlive_the_first_nodes_agent_still_exits_as_they_do(tmp_path, scontrol_path):
    """torchrun's host agent ends as soon as its workers have; another node's agent, whose worker is
    still exiting, then lost the store while it polled it (seen once in three runs of the test above:
    exit 1 there, 75 on node 0), so the first node's launcher serves the store until every node has
    left. Node 1's worker is made to take 5 s more to exit: node 1 must still exit 75, its worker's code."""
    out = tmp_path / "run"
    slow_exit = ["sh", "-c", '"$@"; code=$?; sleep 5; exit $code', "worker"]
    node0, node1 = procs = _start_nodes(out, _free_job_id(), scontrol_path, wrap={1: slow_exit})
    deadline = time.monotonic() + 180
    while len(read_jsonl(out / "metrics.jsonl")) < 3 and node0.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(node0.pid, signal.SIGUSR1)  # node 1's worker stops at the same step through the collective
    assert _wait(procs) == [75, 75], _logs(out)


def _one_node(out: Path, *overrides: str) -> list[str]:
    """What the workflow runs for a 1-node GPU job, behind the job's bash, which ignores the stop signals
    (workflow/rules/common.smk) as its children inherit."""
    return ["bash", "-c", "trap '' USR1 TERM; exec \"$@\"", "job", sys.executable, "-m", "mae.launch", "--standalone",
            "--nproc-per-node=2", "--", sys.executable, "-m", "mae.cli", "pretrain", "--out", str(out), *CONFIG,
            *overrides]


def test_a_stop_signal_pending_before_the_launcher_is_exit_75_without_starting_torchrun(tmp_path):
    """The job step remembered a time-limit signal before the rule's shell ran (mae.signals): the launcher
    stops at once, as `mae` would, instead of starting torchrun for workers that would each stop."""
    proc = subprocess.run(_one_node(tmp_path / "run"), cwd=REPO, env=_env(MAE_PENDING_STOP_SIGNAL="SIGUSR1"),
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (75, "stopped: received SIGUSR1 before training started: nothing to "
                                              "save, nothing written that looks finished; run the same command again\n")
    assert not (tmp_path / "run").exists()


def test_one_node_user_error_is_exit_2_not_torchruns_1(tmp_path):
    proc = subprocess.run(_one_node(tmp_path / "run", "pretrain.batch_size=15"), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: pretrain.batch_size=15 is invalid" in proc.stderr


@pytest.mark.slow
def test_one_node_signal_to_the_job_reaches_the_workers_and_resumes(tmp_path, one_node_two_processes):
    """torchrun's workers sit in sessions of their own: a signal to the job's process group (what
    slurmstepd sends with proctrack/pgid) reaches them only through mae.launch."""
    out = tmp_path / "run"
    job = subprocess.Popen(_one_node(out), cwd=REPO, env=_env(), stdout=open(tmp_path / "job.log", "w"),
                           stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while len(read_jsonl(out / "metrics.jsonl")) < 3 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGUSR1)
    log = lambda: (tmp_path / "job.log").read_text()[-3000:]  # noqa: E731
    assert _wait([job]) == [75], log()
    assert not (out / "metrics.json").exists(), "finished before the signal arrived: " + log()
    stopped_at = load_checkpoint(out / "checkpoint.pth")["loop"]["global_step"]
    resumed = subprocess.run(_one_node(out), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'"resumed_from_step": {stopped_at}' in (out / "metrics.json").read_text()
    _assert_bitwise(out, one_node_two_processes)

def _job_blocks(output: str, rule: str) -> list[tuple[str, str]]:
    """(resources line, shell command) of every `rule` job a (dry) run printed."""
    blocks = re.findall(rf"^(?:local)?rule {rule}:\n(.*?)^Shell command: (.*?)$", output, flags=re.M | re.S)
    return [(re.search(r"^\s+resources: (.*)$", body, flags=re.M)[1], shell) for body, shell in blocks]


def test_paper_jobs_ask_slurm_for_nodes_and_start_mae_launch(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    result = subprocess.run([SNAKEMAKE, "-n", "--config", "preset=paper", "data_root=/datasets/imagenet",
                             "ablations=[table1c_mask_token]"], cwd=workdir, env=_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for rule, nodes in (("pretrain", 8), ("linprobe", 4)):
        jobs = _job_blocks(result.stdout, rule)
        assert jobs, result.stdout[-3000:]
        for resources, shell in jobs:
            resources = dict(item.split("=", 1) for item in resources.split(", "))
            # per-node GPUs as gres (the executor's `gpu` would be a total for the whole job)
            assert resources["nodes"] == str(nodes) and resources["gres"] == "gpu:8" and "gpu" not in resources
            assert re.search(rf" -m mae\.launch --nodes={nodes} --nproc-per-node=8 --cpus-per-task=\d+ -- \S+/mae "
                             rf"{rule} --config ", shell), shell


def test_several_nodes_without_slurm_is_a_user_error_not_retried(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    (workdir / "two_nodes.yaml").write_text(
        "resources:\n  smoke:\n    pretrain: {threads: 1, gpu: 0, nodes: 2, mem_mb: 2000, runtime: 10}\n")
    result = subprocess.run([SNAKEMAKE, "--configfile", "two_nodes.yaml", "--config", "preset=smoke",
                             "ablations=[table1c_mask_token]", "--until", "pretrain"], cwd=workdir, env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    resources, _ = _job_blocks(result.stdout + result.stderr, "pretrain")[0]
    assert "nodes=2" in resources and "tasks=2" in resources  # one task per node, not sbatch's --ntasks=1
    # the first attempt's log, shown by Snakemake (show-failed-logs), is the one line; it exited 2
    assert ("=" * 80 + "\nerror: --nodes=2 runs only inside a SLURM job (SLURM_JOB_ID is not set): use snakemake "
            "--profile slurm, or sbatch --nodes\n" + "=" * 80) in result.stderr
    assert len(list((workdir / "runs/smoke/logs/pretrain").glob("*.log.exit2"))) == 2
    assert "not retried: the previous attempt exited 2" in result.stderr
    assert not list((workdir / "runs/smoke/pretrain").glob("*/train.log"))  # mae never started


def test_every_preset_layout_keeps_the_recipe_batch():
    """nodes x gpu processes x micro batch x accumulation = the recipe's global batch, for every preset
    and training rule of workflow/config.yaml (mae.train's own rule; a layout that does not divide it
    would stop the job with exit 2)."""
    resources = yaml.safe_load((REPO / "workflow/config.yaml").read_text())["resources"]
    for preset, rules in resources.items():
        cfg = load_config(REPO / f"workflow/presets/{preset}.yaml").resolved()
        for stage, spec in rules.items():
            world = spec["nodes"] * max(spec["gpu"], 1)
            section = cfg.stage(stage)
            micro, accum = batch_geometry(stage, section.batch_size, section.micro_batch_size, world)
            assert world * micro * accum == section.batch_size, (preset, stage)
    paper = load_config(REPO / "workflow/presets/paper.yaml").resolved()
    # the official repository's per-GPU batches on its node counts: no accumulation
    assert [batch_geometry(s, paper.stage(s).batch_size, paper.stage(s).micro_batch_size,
                           resources["paper"][s]["nodes"] * 8)[1] for s in ("pretrain", "finetune", "linprobe")] == [1, 1, 1]
