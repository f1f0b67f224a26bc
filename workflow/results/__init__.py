"""Results: run folders -> runs.csv -> per-ablation summaries -> paper-vs-ours tables and figures.

    runs.py       manifest + run folders -> runs/{ablation}.csv, merged into runs.csv; the manifest back from it
    paper.py      the paper's numbers: paper/<file>.csv, row matching by an ablation row's paper_where
    summary.py    one ablation's runs joined with the paper: AblationSummary (structured fields)
    tables.py     AblationSummary -> Markdown, LaTeX, CSV
    findings.py   the registry of the paper's findings -> effects, t intervals, verdicts (findings.{md,csv})
    stats.py      Student-t quantiles and the t interval of a mean (no scipy)
    figures.py    the figure registry (stem -> paper_ref); reading every ablation file
    plots.py      the figure builders
    style.py      the shared look: citation, number formats, theme, palette
    aggregate.py  all of the above from a manifest, as the rules and the workflow's onerror call it

The rule scripts in workflow/scripts/ are thin Snakemake entry points over these modules.
"""

import logging
import sys


def setup_logging(log_path: str | None) -> None:
    """Log to the rule's log file (or stderr without one), as every entry point of the results does."""
    handlers = [logging.FileHandler(log_path, mode="w")] if log_path else [logging.StreamHandler(sys.stderr)]
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
