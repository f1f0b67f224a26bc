# The grid and the get_* helpers. At parse time, before any job, workflow.grid validates the config and
# the selected ablation files (schemas, then mae.config for every key, value and cross-field rule),
# names each cell by mae.config.identity and collapses cells with the same resolved configuration.

import os
import shlex
import shutil
import signal
import sys
from pathlib import Path

from workflow.grid import GridError, build_grid
from workflow.results.figures import figure_stems, read_ablation_files

ROOT = Path(workflow.main_snakefile).parent  # the repository: presets, ablations, paper numbers

# Inside a SLURM job, `scancel --signal=USR1`, the training jobs' `--signal=USR1@300` (time limit ahead) and
# the SIGTERM of a cancel, preemption or requeue reach every process of the job step: the jobstep
# `python -m snakemake` that parses this file, the job's bash and `mae` (or mae.launch, which passes
# them on to its torchrun workers). Only `mae` acts on them: it checkpoints and exits 75 for the retry.
# The others do not die of them, so that none dies first and makes slurmstepd kill `mae` before its
# checkpoint is written (SLURM's SIGKILL after KillWait still ends everything): this Snakemake ignores them
# and the job's shell too. `mae` and mae.launch install their own handlers. Outside SLURM nothing changes.
# The jobstep Snakemake is a job step of its own (`srun`) that starts with the default actions; its
# interpreter is protected from its first moment by workflow/slurm_step_start (a sitecustomize on
# PYTHONPATH, enabled by MAE_REMEMBER_STOP_SIGNALS, both set here and inherited through srun), which
# remembers a signal instead of ignoring it (mae.signals.remember_stop_signals: the `mae` it starts then
# stops at once and the job requeues); that handler is kept.
if "SLURM_JOB_ID" in os.environ:
    for _signal in (signal.SIGUSR1, signal.SIGTERM):
        if signal.getsignal(_signal) == signal.SIG_DFL:
            signal.signal(_signal, signal.SIG_IGN)
    shell.prefix("set -euo pipefail; trap '' USR1 TERM; ")
    os.environ.update(  # written, not read: no `envvars:` to declare
        MAE_REMEMBER_STOP_SIGNALS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT / "workflow" / "slurm_step_start"),
                                    *filter(None, [os.environ.get("PYTHONPATH")])]),
    )

# Snakemake runs script: rules as `<python path> <script>`, the interpreter unquoted
# (snakemake/snakemake#2645): from an environment whose path holds whitespace every such job would fail
# with "No such file or directory". The repository's own path may hold spaces (the job command quotes it).
if any(c.isspace() for c in sys.executable):
    print(f"error: Snakemake's python={sys.executable!r} is invalid: allowed an environment at a path without "
          "whitespace (Snakemake cannot run script rules from there: snakemake/snakemake#2645)", file=sys.stderr)
    sys.exit(2)

try:
    GRID = build_grid(config, ROOT)
except GridError as err:
    # A user mistake: one line and exit 2, as `mae` does (a WorkflowError would get Snakemake's own header
    # and this file's location around the line).
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
PRESET, RUNS, ABLATIONS = GRID.preset, GRID.runs_dir, GRID.ablations
MANIFEST = f"{RUNS}/manifest.json"  # the grid's runs (write_manifest), which the aggregation reads
RUNS_CSV = f"results/{PRESET}/runs.csv"  # every run's config and metrics, one row each (collect_runs)
# Every ablation file, for the aggregation: runs.csv keeps earlier runs of ablations not selected now,
# and their rows need titles and default flags (unreadable files are skipped: the selected ones were
# validated by build_grid).
ALL_ABLATIONS = {**read_ablation_files(ROOT / "ablations"), **ABLATIONS}


def get_rendered_config(wildcards):
    """The full `mae` config of one run (params of render_config)."""
    return GRID.cells[wildcards.stage, wildcards.run_id].config


def get_manifest():
    return GRID.manifest


def get_metrics():
    return [f"{e['run_dir']}/metrics.json" for e in GRID.manifest]


def get_pretrained_model(stage):
    """Input function: the pretraining a `stage` run starts from ([] for a pretraining, a checkpoint set
    by its row, or training from scratch)."""

    def pretrained_model(wildcards):
        model = GRID.pretrained_model(stage, wildcards.run_id) if stage != "pretrain" else None
        return [model] if model else []

    return pretrained_model


def get_training_outputs(stage):
    """metrics.json (written last: the run is finished) and, but for a linear probe, model.pth."""
    outputs = {"metrics": f"{RUNS}/{stage}/{{run_id}}/metrics.json"}
    if stage != "linprobe":
        outputs["model"] = f"{RUNS}/{stage}/{{run_id}}/model.pth"
    return outputs


def get_resources(stage):
    """nodes, gpu, mem_mb and runtime of `stage` under the preset (workflow/config.yaml `resources`), as
    the SLURM executor reads them: on several nodes the GPUs of each are asked as `gres: gpu:<n>` (its
    `gpu` becomes --gpus, a total for the whole job), and a CPU job asks one task per node (without
    `tasks` it submits --ntasks=1, which holds the job to one node)."""
    spec = {name: value for name, value in config["resources"][PRESET][stage].items() if name != "threads"}
    if spec["nodes"] > 1 and spec["gpu"] > 0:
        spec["gres"] = f"gpu:{spec.pop('gpu')}"
    elif spec["gpu"] == 0:
        spec["tasks"] = spec["nodes"]
    return spec


def get_threads(stage):
    return config["resources"][PRESET][stage]["threads"]


def get_slurm_extra():
    """sbatch options of every training job (the SLURM plugin's `slurm_extra`; ignored elsewhere): SIGUSR1
    before the time limit, and --requeue so the job may requeue itself at that signal (scripts/train_job.sh)
    even where the site's JobRequeue=0 makes jobs non-requeueable. A rule resource, not a profile's
    default-resources: a site's own default-resources (partition, account) replace that whole list."""
    return f"--signal=USR1@{config['slurm_signal_before_s']} --requeue"


def _executable(name):
    """`name` from PATH, else from the environment that runs Snakemake (.venv/bin need not be on PATH)."""
    return shutil.which(name) or str(Path(sys.executable).parent / name)


def _gpus_per_node(resources):
    if "gres" in resources.keys():  # gpu[:type]:<n>, set by get_resources on several nodes
        return int(resources.gres.rsplit(":", 1)[1])
    return resources.get("gpu", 0)


def get_launcher(wildcards, resources, threads):
    """`mae` on a CPU; with GPUs, mae.launch: torchrun with one process per GPU (on several nodes, SLURM
    only: one torchrun per node started through srun, rendezvous on the first node), stop signals passed
    on to every worker (torchrun starts them out of reach of the job's signals), the workers' exit code."""
    mae = _executable("mae")
    gpus = _gpus_per_node(resources)
    if resources.nodes == 1 and gpus == 0:
        return shlex.quote(mae)  # a shell word: the repository's path may hold spaces
    python = Path(mae).with_name("python")  # the interpreter that has `mae` (venv or conda env bin/)
    launch = f"{shlex.quote(str(python if python.exists() else sys.executable))} -m mae.launch"
    if resources.nodes > 1:
        return (f"{launch} --nodes={resources.nodes} --nproc-per-node={max(gpus, 1)} --cpus-per-task={threads} "
                f"-- {shlex.quote(mae)}")
    return f"{launch} --standalone --nproc-per-node={gpus} -- {shlex.quote(mae)}"


def get_mlflow_uri():
    return config.get("mlflow_uri") or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def get_experiments():
    return sorted({c.config["tracking"]["experiment"] for c in GRID.cells.values() if c.config["tracking"]["enabled"]})


def get_tables(for_report=False):
    """results/{preset}/tables/{ablation}.{md,tex,csv}; for_report: flagged for `snakemake --report`."""
    paths = [(name, f"results/{PRESET}/tables/{name}.{ext}") for name in ABLATIONS for ext in ("md", "tex", "csv")]
    if not for_report:
        return [path for _, path in paths]
    return [report(path, caption=f"../report/{report_caption('table', name)}", category="Tables",
                   subcategory=ABLATIONS[name].get("paper_ref", "Not in the paper")) for name, path in paths]


def report_caption(kind, name):
    """The report caption of a table or figure: its own file in workflow/report/ ({kind}_{name}.rst), else
    the one for any ablation's ({kind}_ablation.rst: an ablation of the user's own, or a new paper file)."""
    own = f"{kind}_{name}.rst"
    return own if (ROOT / "workflow/report" / own).is_file() else f"{kind}_ablation.rst"


def get_ablation_runs():
    """results/{preset}/runs/{ablation}.csv of the selected ablations (merged into runs.csv)."""
    return [f"results/{PRESET}/runs/{name}.csv" for name in ABLATIONS]


def get_findings(for_report=False):
    """results/{preset}/findings.{md,csv}: the paper's findings with intervals and verdicts."""
    paths = [f"results/{PRESET}/findings.{ext}" for ext in ("md", "csv")]
    if not for_report:
        return paths
    return [report(path, caption="../report/findings.rst", category="Findings") for path in paths]


def get_figures(for_report=False):
    """results/{preset}/figures/{name}.{png,pdf}: the selected paper figures, reconstructions, losses."""
    names = figure_stems(ABLATIONS)
    paths = [(name, f"results/{PRESET}/figures/{name}.{ext}") for name in names for ext in ("png", "pdf")]
    if not for_report:
        return [path for _, path in paths]
    return [report(path, caption=f"../report/{report_caption('figure', name)}", category="Figures")
            for name, path in paths]


def check_data_before_jobs():
    """Before the first job (onstart): the training data every run reads, checked by name as `mae` checks
    it. Run here, a wrong data_root is one line and exit 2 instead of every job failing on it; for jobs
    that run elsewhere (a cluster's nodes may see other paths) it is a warning."""
    problem = GRID.data_problem()
    if problem is None:
        return
    if workflow.local_exec:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    logger.warning(f"warning: not on this machine, so the jobs must find it on theirs: {problem}")


def aggregate_partial_results():
    """After failed jobs (onerror): the same tables and figures from the runs that finished, with
    "—" and a note for the rest, so a partial grid still aggregates."""
    manifest = Path(MANIFEST)
    if not manifest.exists():
        return
    from workflow.results.aggregate import aggregate  # pandas and matplotlib: not at parse time
    from workflow.results.runs import write_manifest

    write_manifest(manifest, get_manifest())  # this grid's, also when the rule has not run yet

    aggregate(manifest, RUNS_CSV, ALL_ABLATIONS, ROOT / "paper", PRESET, get_tables(), get_figures(),
              get_findings())
    logger.warning(f"Not every job finished (one failed, or the run was interrupted): results/{PRESET}/ holds "
                   "the tables and figures of the runs that finished (missing cells show '—' with a note). "
                   "Rerun the same command to complete them.")
