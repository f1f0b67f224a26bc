"""Results: run folders -> runs.csv -> per-ablation summaries -> paper-vs-ours tables and figures.

    runs.py       manifest + run folders -> the long table runs.csv
    paper.py      the paper's numbers: paper/<file>.csv, row matching by an ablation row's paper_where
    summary.py    one ablation's runs joined with the paper: AblationSummary (structured fields)
    tables.py     AblationSummary -> Markdown, LaTeX, CSV
    figures.py    the figure registry (stem -> paper_ref) and the figure builders
    style.py      the shared look: citation, number formats, theme, palette
    aggregate.py  all of the above from a manifest, as the rules and the workflow's onerror call it

The rule scripts in workflow/scripts/ are thin Snakemake entry points over these modules.
"""
