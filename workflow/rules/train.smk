# The training rules pretrain, finetune and linprobe: one definition, `mae <stage>` on a rendered config.
# A fine-tune or linear probe starts from its cell's pretraining (model.pth, an input), or from the
# row's own checkpoint (null = a randomly initialised encoder).
#
# The config is ancient(): its path already names its content (the run id), so a re-rendered config
# (new tracking tags) does not retrain. metrics.json (and model.pth) are the only outputs, so a failed or
# preempted job (exit 75) keeps its checkpoint.pth in the run folder and resumes from it on retry.
# Retries (profiles/default: retries: 2) are for exit 75 (checkpointed) and crashes: a job that exits 2
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
            mae_attempt=lambda wildcards, attempt: attempt,
        conda:
            "../../environment.yml"
        shell:
            "if [ {resources.mae_attempt} -gt 1 ] && [ -f {log}.exit2 ]; then "
            "echo 'not retried: the previous attempt exited 2 (user error), see {log}' >&2; exit 2; fi; "
            "rm -f {log}.exit2; "
            f"{{params.launcher}} {stage} --config {{input.config}} --out {{params.out_dir}} > {{log}} 2>&1 "
            "|| {{ code=$?; if [ $code -eq 2 ]; then touch {log}.exit2; fi; exit $code; }}"


for _stage in STAGES:
    training_rule(_stage)
