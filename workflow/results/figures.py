"""Figures of ours against the paper, and the one registry of figure names."""

from __future__ import annotations

# Figure stem (results/{preset}/figures/{stem}.{png,pdf}) -> the paper item it mirrors (an ablation's
# paper_ref). The workflow requests a figure when one of its selected ablations has that paper_ref.
FIGURES: dict[str, str] = {"fig5_mask_ratio": "Fig. 5", "fig7_schedule": "Fig. 7", "fig9_partial_ft": "Fig. 9",
                           "table2_wallclock": "Table 2"}
# Figures drawn for every grid, whatever ablations it holds.
ALWAYS_FIGURES = ("reconstruction", "loss_curves")


def figure_stems(paper_refs) -> list[str]:
    """The figure stems a grid with these ablation paper_refs produces: the registry's figures whose
    paper_ref is among them, in registry order, then ALWAYS_FIGURES."""
    refs = set(paper_refs)
    return [stem for stem, ref in FIGURES.items() if ref in refs] + list(ALWAYS_FIGURES)
