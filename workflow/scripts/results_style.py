"""Shared look of the results: citation, number formats, one seaborn theme, one palette, ours-vs-paper styles.

Imported by make_tables.py and make_figures.py (Snakemake puts the script's folder on sys.path).
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

PAPER_CITATION = ('He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 '
                  "(arXiv:2111.06377)")
PAPER_BIBKEY = "he2022masked"
MISSING = "—"

# What the paper's numbers were measured on, by paper/ file (from the paper's table and figure captions).
PAPER_SETTINGS = {
    "table1_ablations.csv": "ImageNet-1K 224×224, ViT-L/16, 800-epoch pre-training (Table 1 caption)",
    "fig5_mask_ratio.csv": "ImageNet-1K 224×224, ViT-L/16, 800-epoch pre-training (Fig. 5, Table 1 default)",
    "fig7_schedule.csv": "ImageNet-1K 224×224, ViT-L/16, Table 1 default setting (Fig. 7)",
    "fig9_partial_ft.csv": "ImageNet-1K 224×224, ViT-L/16, 800-epoch pre-training (Fig. 9, Table 1 default)",
    "table2_wallclock.csv": ("ImageNet-1K, 800-epoch pre-training on 128 TPU-v3 cores in TensorFlow "
                             "(Table 2 caption)"),
    "table3_imagenet.csv": ("ImageNet-1K 224×224, normalized-pixel target, 1600-epoch pre-training "
                            "(Table 3)"),
}

DATASET_NAMES = {"imagenet": "ImageNet-1K", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10",
                 "cifar100": "CIFAR-100", "synthetic": "synthetic images", "image_folder": "image folder"}
ARCH_SIZES = {"base": "B", "large": "L", "huge": "H"}

EVALUATION_SHORT = {"finetune": "ft", "linprobe": "lin"}
EVALUATION_NAMES = {"finetune": "fine-tuning", "linprobe": "linear probing"}

# One palette for everything; ours and the paper keep their colour and their line/marker style everywhere.
PALETTE = sns.color_palette("colorblind")
OURS_COLOR, PAPER_COLOR = PALETTE[0], PALETTE[1]
OURS_LINE = dict(color=OURS_COLOR, linestyle="-", marker="o", markersize=6, linewidth=2)
PAPER_LINE = dict(color=PAPER_COLOR, linestyle="--", marker="s", markersize=6, linewidth=1.5,
                  markerfacecolor="none", markeredgewidth=1.5)
OURS_BAR = dict(color=OURS_COLOR, edgecolor=OURS_COLOR)
PAPER_BAR = dict(facecolor="none", edgecolor=PAPER_COLOR, hatch="///", linewidth=1.5)


def apply_theme() -> None:
    """The one theme every figure uses."""
    sns.set_theme(context="paper", style="whitegrid", palette=PALETTE, font_scale=1.15,
                  rc={"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight",
                      "axes.titleweight": "bold", "legend.frameon": True})


def arch_display(arch: str | None) -> str:
    """mae_vit_large_patch16_dec512d8b -> ViT-L/16; mae_vit_micro_patch7_dec64d1b -> ViT-micro/7."""
    if not arch:
        return "unknown architecture"
    match = re.match(r"(?:mae_)?vit_([a-z]+)_patch(\d+)", str(arch))
    if not match:
        return str(arch)
    size, patch = match.groups()
    return f"ViT-{ARCH_SIZES.get(size, size)}/{patch}"


def dataset_display(name: str | None) -> str:
    return DATASET_NAMES.get(str(name), str(name)) if name else "unknown data"


def format_number(value: float | None, decimals: int = 2) -> str:
    if value is None or value != value:  # NaN
        return MISSING
    return f"{value:.{decimals}f}"


def format_signed(value: float | None, decimals: int = 2) -> str:
    if value is None or value != value:
        return MISSING
    return f"{value:+.{decimals}f}"


def format_mean_std(mean: float | None, std: float | None, n: int, decimals: int = 2,
                    plus_minus: str = "±") -> str:
    """'90.30 ± 0.20 (n=3)'; one seed: '89.00 (n=1)'; no seed: '—'."""
    if not n or mean is None or mean != mean:
        return MISSING
    if n > 1 and std == std and std is not None:
        return f"{mean:.{decimals}f} {plus_minus} {std:.{decimals}f} (n={n})"
    return f"{mean:.{decimals}f} (n={n})"


def save_figure(figure: plt.Figure, paths: list[str | Path]) -> None:
    """Write one Figure to every requested path (.png, .pdf), creating folders."""
    for path in paths:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
