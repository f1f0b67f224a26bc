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


def aggregate_partial_results():
    """After failed jobs (onerror): the same tables and figures from the runs that finished, with
    "—" and a note for the rest, so a partial grid still aggregates."""
    manifest_path = Path(f"{RUNS}/manifest.json")
    if not manifest_path.exists():
        return
    sys.path.insert(0, str(ROOT / "workflow/scripts"))
    try:
        import collect_runs, make_figures, make_tables
    finally:
        sys.path.pop(0)
    manifest = collect_runs.read_manifest(manifest_path)
    runs = collect_runs.write_runs_table(manifest_path, f"results/{PRESET}/runs.csv")
    make_tables.make_tables(manifest, runs, ABLATIONS, str(ROOT / "paper"), PRESET, get_tables())
    for figure in make_figures.make_figures(manifest, runs, ABLATIONS, str(ROOT / "paper"), PRESET,
                                            get_figures()).values():
        make_figures.plt.close(figure)
    logger.warning(f"Some jobs failed: results/{PRESET}/ holds the tables and figures of the runs that "
                   "finished (missing cells show '—' with a note). Rerun the same command to complete them.")
