"""The shared look of the results: number formats, display names, one seaborn theme, one palette,
ours-vs-paper styles."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

MISSING = "—"
REFERENCE = "reference"  # the row a table's differences and speedups are taken against

DATASET_NAMES = {"imagenet": "ImageNet-1K", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10",
                 "cifar100": "CIFAR-100", "synthetic": "synthetic images", "image_folder": "image folder"}
ARCH_SIZES = {"base": "B", "large": "L", "huge": "H"}
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


def format_mean_std(mean: float | None, std: float | None, n: int, decimals: int = 2, signed: bool = False) -> str:
    """'90.30 ± 0.20 (n=3)'; one seed: '89.00 (n=1)'; no seed: '—'; signed: '+1.20 ± 0.30 (n=2)'."""
    if not n or mean is None or mean != mean:
        return MISSING
    sign = "+" if signed else ""
    if n > 1 and std == std and std is not None:
        return f"{mean:{sign}.{decimals}f} ± {std:.{decimals}f} (n={n})"
    return f"{mean:{sign}.{decimals}f} (n={n})"


def format_ratio(value: float, spec: str = ".2f") -> str:
    """'1.50×'; NaN: '—'."""
    return f"{value:{spec}}×" if value == value else MISSING


def format_flops(value: float) -> str:
    """'1.23 G', '456 M', '7.8 k'; NaN: '—'."""
    if value != value:
        return MISSING
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g}"


def save_figure(figure: plt.Figure, paths: list[str | Path]) -> None:
    """Write one Figure to every requested path (.png, .pdf), creating folders."""
    for path in paths:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
