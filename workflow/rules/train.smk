# The training rules pretrain, finetune and linprobe: one definition, `mae <stage>` on a rendered config.
# A fine-tune or linear probe starts from its cell's pretraining (model.pth, an input), or from the
# row's own checkpoint (null = a randomly initialised encoder).
#
# The config is ancient(): its path already names its content (the run id), so a re-rendered config
# (new tracking tags) does not retrain. metrics.json (and model.pth) are the only outputs, so a failed or
# preempted job (exit 75) keeps its checkpoint.pth in the run folder and resumes from it on retry.
# workflow/scripts/train_job.sh runs the job: exit 2 (a user error) is not retried, exit 75 inside a
# SLURM job requeues the job, so that a run longer than the time limit is a chain of allocations.
# Retries (profiles/default: retries: 2) remain for crashes, for exit 75 outside SLURM, and for a requeue
# that SLURM refused (then the job ends FAILED and the retry resumes the same way).
# Logs: runs/{preset}/logs/{stage}/{run_id}.log holds the job's stdout and stderr (the rule's log);
# runs/{preset}/{stage}/{run_id}/train.log is `mae`'s own log, next to metrics.jsonl and metrics.json.

import shlex

from mae.config import STAGES

TRAIN_JOB = ROOT / "workflow/scripts/train_job.sh"


# A function, not a bare loop: Snakemake evaluates the shell string again when the job runs, and a
# loop variable would by then hold the last stage; the function's argument keeps each rule's own.
def training_rule(stage):
    rule:
        name:
            stage
        input:
            config=ancient(f"{RUNS}/configs/{stage}/{{run_id}}.yaml"),
            mlflow=ancient(f"{RUNS}/mlflow.ready"),
            pretrained=get_pretrained_model(stage),
        output:
            **get_training_outputs(stage),
        params:
            out_dir=lambda wildcards, output: os.path.dirname(output.metrics),
            launcher=get_launcher,
        log:
            f"{RUNS}/logs/{stage}/{{run_id}}.log",
        threads: get_threads(stage)
        resources:
            **get_resources(stage),
            slurm_extra=get_slurm_extra(),
            mae_attempt=lambda wildcards, attempt: attempt,
        shell:
            f"{shlex.quote(str(TRAIN_JOB))} {{resources.mae_attempt}} {{log}} "
            f"{{params.launcher}} {stage} --config {{input.config}} --out {{params.out_dir}}"


for _stage in STAGES:
    training_rule(_stage)
