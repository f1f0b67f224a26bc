"""The one registry of figures: which figure stems exist, which paper item each mirrors, and which a
grid produces. Free of matplotlib, so the workflow imports it at parse time; plots.py draws them.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

# Figure stem (results/{preset}/figures/{stem}.{png,pdf}) -> the paper item it mirrors (an ablation's
# paper_ref). The workflow requests a figure when one of its selected ablations has that paper_ref.
FIGURES: dict[str, str] = {"fig5_mask_ratio": "Fig. 5", "fig7_schedule": "Fig. 7", "fig9_partial_ft": "Fig. 9",
                           "table2_wallclock": "Table 2"}
# Figures drawn for every grid, whatever ablations it holds.
ALWAYS_FIGURES = ("reconstruction", "loss_curves", "findings")
FIGURE_NAMES = [*FIGURES, *ALWAYS_FIGURES]


def figure_stems(ablations: dict[str, dict]) -> list[str]:
    """The figure stems a grid of these ablations (name -> parsed file) produces: the registry's figures
    whose paper_ref is among theirs, in registry order, one per ablation the paper does not have (named
    by its file), then ALWAYS_FIGURES."""
    refs = {ablation.get("paper_ref") for ablation in ablations.values()}
    return ([stem for stem, ref in FIGURES.items() if ref in refs] + own_ablations(ablations)
            + list(ALWAYS_FIGURES))


def own_ablations(ablations: dict[str, dict]) -> list[str]:
    """The ablations the paper does not have (no paper_file), in order: each has a figure named by its file."""
    return [name for name, ablation in ablations.items() if not ablation.get("paper_file")]


def paper_ref_key(paper_ref: str) -> str:
    """'Fig. 5' -> 'fig5', 'Table 1a' -> 'table1a' (spacing and dots do not matter)."""
    return re.sub(r"[^a-z0-9]", "", str(paper_ref).lower())


def find_ablation(ablations: dict[str, dict], paper_ref: str) -> str | None:
    key = paper_ref_key(paper_ref)
    for name, ablation in ablations.items():
        if paper_ref_key(ablation.get("paper_ref", "")) == key:
            return name
    return None


def read_ablation_files(folder: str | Path) -> dict[str, dict]:
    """{stem: parsed YAML} of every ablations/*.yaml that parses to a mapping with rows (others skipped)."""
    ablations = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and isinstance(data.get("rows"), list):
            ablations[path.stem] = data
    return ablations
