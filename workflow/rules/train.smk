# The training rules pretrain, finetune and linprobe: one definition, `mae <stage>` on a rendered config.
# A fine-tune or linear probe starts from its cell's pretraining (model.pth, an input), or from the
# row's own checkpoint (null = a randomly initialised encoder).
#
# The config is ancient(): its path already names its content (the run id), so a re-rendered config
# (new tracking tags) does not retrain. metrics.json (and model.pth) are the only outputs, so a failed or
# preempted job (exit 75) keeps its checkpoint.pth in the run folder and resumes from it on retry.
# Exit 75 (checkpointed at a signal) inside a SLURM job: the job requeues itself (`scontrol requeue`,
# allowed by the --requeue of get_slurm_extra) and the next allocation resumes from checkpoint.pth. A run
# longer than the time limit is thus a chain of allocations of one SLURM job, as long as it needs: the
# plugin sees REQUEUED / PENDING / RUNNING, states it waits on, and one COMPLETED at the end; Snakemake's
# retries are not spent. Measured on SLURM 22.05: the requeued job is eligible again cred_expire seconds
# later (AuthInfo, default 120 s) and then waits for a scheduling pass. Only a RUNNING job requeues: a
# SIGTERM of scancel, of the time limit or of an outside requeue leaves the job COMPLETING (measured), and
# requeueing then would bring back a cancelled job or duplicate the retry of a timed-out one.
# Retries (profiles/default: retries: 2) remain for crashes, for exit 75 outside SLURM, and for a requeue
# that SLURM refused (then the job ends FAILED and the retry resumes the same way). A job that exits 2
# (a user error: it cannot succeed by running again) leaves {log}.exit2, and its retries stop at once
# with exit 2 instead of running `mae` again. A new Snakemake invocation (attempt 1) always runs `mae`.
# Logs: runs/{preset}/logs/{stage}/{run_id}.log holds the job's stdout and stderr (the rule's log);
# runs/{preset}/{stage}/{run_id}/train.log is `mae`'s own log, next to metrics.jsonl and metrics.json.

from mae.config import STAGES


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
            "if [ {resources.mae_attempt} -gt 1 ] && [ -f {log}.exit2 ]; then "
            "echo 'not retried: the previous attempt exited 2 (user error), see {log}' >&2; exit 2; fi; "
            "rm -f {log}.exit2; "
            f"{{params.launcher}} {stage} --config {{input.config}} --out {{params.out_dir}} > {{log}} 2>&1 "
            "|| {{ code=$?; if [ $code -eq 2 ]; then touch {log}.exit2; fi; "
            "if [ $code -eq 75 ] && [ -n \"${{SLURM_JOB_ID:-}}\" ] && [ \"$(squeue -h -j $SLURM_JOB_ID -o %T)\" = RUNNING ]; "
            "then echo \"exit 75: requeueing SLURM job $SLURM_JOB_ID, the next allocation resumes\" >> {log}; "
            "scontrol requeue $SLURM_JOB_ID >> {log} 2>&1 || true; fi; "
            "exit $code; }}"


for _stage in STAGES:
    training_rule(_stage)
