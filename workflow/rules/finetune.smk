# End-to-end / partial fine-tuning and linear probing of a pretrained (or, with checkpoint null,
# randomly initialised) encoder. Same retry and resume contract as pretrain.


rule finetune:
    input:
        config=ancient(f"{RUNS}/configs/finetune/{{run_id}}.yaml"),
        mlflow=ancient(f"{RUNS}/mlflow.ready"),
        pretrained=lambda wildcards: get_pretrained_model(wildcards, "finetune"),
    output:
        metrics=f"{RUNS}/finetune/{{run_id}}/metrics.json",
        model=f"{RUNS}/finetune/{{run_id}}/model.pth",
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.metrics),
        launcher=get_launcher,
    log:
        f"{RUNS}/logs/finetune/{{run_id}}.log",
    threads: get_resource("finetune", "threads")
    resources:
        gpu=get_resource("finetune", "gpu"),
        mem_mb=get_resource("finetune", "mem_mb"),
        runtime=get_resource("finetune", "runtime"),
    conda:
        "../../environment.yml"
    shell:
        "{params.launcher} finetune --config {input.config} --out {params.out_dir} > {log} 2>&1"


rule linprobe:
    input:
        config=ancient(f"{RUNS}/configs/linprobe/{{run_id}}.yaml"),
        mlflow=ancient(f"{RUNS}/mlflow.ready"),
        pretrained=lambda wildcards: get_pretrained_model(wildcards, "linprobe"),
    output:
        metrics=f"{RUNS}/linprobe/{{run_id}}/metrics.json",
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.metrics),
        launcher=get_launcher,
    log:
        f"{RUNS}/logs/linprobe/{{run_id}}.log",
    threads: get_resource("linprobe", "threads")
    resources:
        gpu=get_resource("linprobe", "gpu"),
        mem_mb=get_resource("linprobe", "mem_mb"),
        runtime=get_resource("linprobe", "runtime"),
    conda:
        "../../environment.yml"
    shell:
        "{params.launcher} linprobe --config {input.config} --out {params.out_dir} > {log} 2>&1"
