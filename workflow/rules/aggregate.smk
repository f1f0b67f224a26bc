# Results: one long table of every run, then paper-vs-ours tables, the findings and figures
# (workflow/scripts/, see results/README.md). A run of some ablations rewrites only their
# results/{preset}/runs/{ablation}.csv; runs.csv merges every such file on disk, and the tables,
# findings and figures are drawn from it, so other ablations' results stay as they were.


rule collect_runs:
    input:
        manifest=MANIFEST,
        metrics=get_metrics(),
    output:
        runs=report(RUNS_CSV, caption="../report/runs.rst", category="Runs"),
        ablation_runs=get_ablation_runs(),
    log:
        f"{RUNS}/logs/collect_runs.log",
    script:
        "../scripts/collect_runs.py"


rule make_tables:
    input:
        manifest=MANIFEST,
        runs=RUNS_CSV,
    output:
        get_tables(for_report=True),
        get_findings(for_report=True),
    params:
        ablations=ALL_ABLATIONS,
        preset=PRESET,
        paper_dir=str(ROOT / "paper"),
    log:
        f"{RUNS}/logs/make_tables.log",
    script:
        "../scripts/make_tables.py"


rule make_figures:
    input:
        manifest=MANIFEST,
        runs=RUNS_CSV,
    output:
        get_figures(for_report=True),
    params:
        ablations=ALL_ABLATIONS,
        preset=PRESET,
        paper_dir=str(ROOT / "paper"),
    log:
        f"{RUNS}/logs/make_figures.log",
    script:
        "../scripts/make_figures.py"
