"""The paper's numbers: paper/<file>.csv, the row an ablation row compares with, what they measured."""

from __future__ import annotations

import fnmatch
import math
import re
from pathlib import Path

import pandas as pd

PAPER_CITATION = ('He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 '
                  "(arXiv:2111.06377)")
PAPER_BIBKEY = "he2022masked"

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

# Which paper column holds the number an evaluation is compared with (first one present wins):
# Fig. 9's CSV has a single top1 column for its (partial) fine-tuning.
PAPER_COLUMNS = {"finetune": ["ft_top1", "top1"], "linprobe": ["lin_top1"]}
# Table 1c's rows print their training FLOPs relative to the default in the `extra` column.
FLOPS_PATTERN = re.compile(r"relative_training_FLOPs=([0-9.]+)x")


def paper_setting(paper_file: str) -> str:
    return PAPER_SETTINGS.get(paper_file, f"see paper/{paper_file}")


def yaml_text(value) -> str:
    """A paper_where value as the CSV spells it (YAML true -> 'true', 8 -> '8')."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def load_paper_table(paper_dir: str | Path, paper_file: str) -> pd.DataFrame:
    return pd.read_csv(Path(paper_dir) / paper_file, dtype=str, keep_default_na=False)


def match_paper_row(paper: pd.DataFrame, where: dict, paper_file: str) -> tuple[pd.Series | None, str]:
    """The one paper row whose columns equal or glob-match every paper_where value; (None, why) otherwise."""
    if where is None:
        return None, "not in the paper (a point added at this scale)"
    unknown = [column for column in where if column not in paper.columns]
    if unknown:
        return None, f"paper_where names columns {unknown} that paper/{paper_file} lacks"
    selected = pd.Series(True, index=paper.index)
    for column, pattern in where.items():
        # equal text first, so literal brackets ("encoder w/ [M]") are not read as a glob character class
        selected &= paper[column].map(lambda cell, p=yaml_text(pattern): cell == p or fnmatch.fnmatchcase(cell, p))
    matches = paper[selected]
    if len(matches) == 1:
        return matches.iloc[0], ""
    if matches.empty:
        return None, f"paper_where {where} matches no row of paper/{paper_file}"
    return None, f"paper_where {where} matches {len(matches)} rows of paper/{paper_file}"


def paper_number(paper_row: pd.Series | None, columns: list[str]) -> float:
    """The first of `columns` the row has, as a number; NaN without a row, a column or a value."""
    if paper_row is None:
        return math.nan
    for column in columns:
        if column in paper_row.index:
            text = paper_row[column].strip()
            return float(text) if text else math.nan
    return math.nan


def paper_flops_ratio(paper_row: pd.Series | None) -> float:
    """Table 1c's printed training-FLOPs ratio of the row (3.3 for '3.3x'); NaN when it prints none."""
    match = FLOPS_PATTERN.search(paper_row.get("extra", "")) if paper_row is not None else None
    return float(match.group(1)) if match else math.nan


def parse_speedup(printed: str) -> float:
    """Table 2's printed speedup ('2.8×', '3.5x') as a number; NaN when it is not one."""
    match = re.match(r"\s*([0-9.]+)\s*[x×]", str(printed))
    return float(match.group(1)) if match else math.nan
