# Per-cell configs, the run manifest, the MLflow store, and pretraining.


rule render_config:
    output:
        f"{RUNS}/configs/{{stage}}/{{run_id}}.yaml",
    params:
        data=get_rendered_config,
    log:
        f"{RUNS}/logs/render_config/{{stage}}/{{run_id}}.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/render_config.py"


rule write_manifest:
    output:
        f"{RUNS}/manifest.json",
    params:
        data=get_manifest(),
    log:
        f"{RUNS}/logs/write_manifest.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/render_config.py"


# Creates the embedded sqlite store and the experiments once, before jobs write to it in parallel
# (a fresh store breaks under concurrent first writers); nothing to do for a tracking server.
rule prepare_mlflow:
    output:
        f"{RUNS}/mlflow.ready",
    params:
        uri=get_mlflow_uri(),
        experiments=get_experiments(),
    log:
        f"{RUNS}/logs/prepare_mlflow.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/prepare_mlflow.py"


# The config is ancient(): its path already names its content (the run id), so a re-rendered config
# (new tracking tags) does not retrain; metrics.json and model.pth are the only outputs, so a failed or
# preempted job (exit 75) keeps its checkpoint.pth in the run folder and resumes from it on retry.
rule pretrain:
    input:
        config=ancient(f"{RUNS}/configs/pretrain/{{run_id}}.yaml"),
        mlflow=ancient(f"{RUNS}/mlflow.ready"),
    output:
        metrics=f"{RUNS}/pretrain/{{run_id}}/metrics.json",
        model=f"{RUNS}/pretrain/{{run_id}}/model.pth",
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.metrics),
        launcher=get_launcher,
    log:
        f"{RUNS}/logs/pretrain/{{run_id}}.log",
    threads: get_resource("pretrain", "threads")
    resources:
        gpu=get_resource("pretrain", "gpu"),
        mem_mb=get_resource("pretrain", "mem_mb"),
        runtime=get_resource("pretrain", "runtime"),
    conda:
        "../../environment.yml"
    shell:
        "{params.launcher} pretrain --config {input.config} --out {params.out_dir} > {log} 2>&1"
