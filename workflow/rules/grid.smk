# What the training jobs read: each cell's `mae` config, the run manifest, the MLflow store.


rule render_config:
    output:
        f"{RUNS}/configs/{{stage}}/{{run_id}}.yaml",
    params:
        data=get_rendered_config,
    log:
        f"{RUNS}/logs/render_config/{{stage}}/{{run_id}}.log",
    script:
        "../scripts/render_config.py"


rule write_manifest:
    output:
        MANIFEST,
    params:
        data=get_manifest(),
    log:
        f"{RUNS}/logs/write_manifest.log",
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
    script:
        "../scripts/prepare_mlflow.py"
