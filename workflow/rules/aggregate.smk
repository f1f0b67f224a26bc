# Results: one long table of every run in the manifest, then paper-vs-ours tables and figures
# (workflow/scripts/, see results/README.md). Inputs are the manifest and every run's metrics.json.


rule collect_runs:
    input:
        manifest=f"{RUNS}/manifest.json",
        metrics=get_metrics(),
    output:
        runs=report(f"results/{PRESET}/runs.csv", caption="../report/runs.rst", category="Runs"),
    log:
        f"{RUNS}/logs/collect_runs.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/collect_runs.py"


rule make_tables:
    input:
        manifest=f"{RUNS}/manifest.json",
        runs=f"results/{PRESET}/runs.csv",
    output:
        get_tables(for_report=True),
    params:
        ablations=ABLATIONS,
        preset=PRESET,
        paper_dir=str(ROOT / "paper"),
    log:
        f"{RUNS}/logs/make_tables.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/make_tables.py"


rule make_figures:
    input:
        manifest=f"{RUNS}/manifest.json",
        runs=f"results/{PRESET}/runs.csv",
    output:
        get_figures(for_report=True),
    params:
        ablations=ABLATIONS,
        preset=PRESET,
        paper_dir=str(ROOT / "paper"),
    log:
        f"{RUNS}/logs/make_figures.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/make_figures.py"

