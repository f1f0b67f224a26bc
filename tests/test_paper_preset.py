"""The paper preset equals the paper's recipes: every row of paper/hyperparams.csv that names a setting is
checked against every `paper` grid cell it governs (compiled by workflow.grid, as the workflow does).

Which recipe governs a cell (paper/README.md, "Recipes of the paper preset"):
    pretrain cells                     Table 8 (`pretrain` rows)
    linprobe cells                     Table 10 (`linprobe`)
    finetune from scratch              Table 11 (`scratch_supervised`)
    finetune of Table 3's MAE models   the official repository's per-size recipes (`finetune_repo`)
    finetune with trainable_blocks     Table 9 with Fig. 9's epochs (`finetune` + `partial_finetune`)
    any other finetune                 Table 9 (`finetune`)
A key that an ablation row varies (Table 1's decoder depth, Fig. 7's epochs, ...) is that row's own value,
not the recipe's; Table 3's rows set recipe values and are checked. Torch-free: only the grid compiler.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import yaml

from mae.archs import MAE_ARCHS
from workflow.grid import build_grid

REPO = Path(__file__).resolve().parents[1]
HYPERPARAMS = REPO / "paper" / "hyperparams.csv"
SIZES = {"mae_vit_base_patch16_dec512d8b": "B", "mae_vit_large_patch16_dec512d8b": "L",
         "mae_vit_huge_patch14_dec512d8b": "H"}

# hyperparams.csv `config` -> the key it sets, in the stage's section unless it names a section.
KEYS = {
    "base_lr": "blr", "blr": "blr", "weight_decay": "weight_decay", "optimizer_momentum": "betas",
    "batch_size": "batch_size", "eff. batch": "batch_size", "warmup_epochs": "warmup_epochs", "epochs": "epochs",
    "layer_wise_lr_decay": "layer_decay", "layer_decay": "layer_decay", "drop_path": "drop_path",
    "label_smoothing": "smoothing", "smoothing": "smoothing", "mixup": "mixup", "cutmix": "cutmix",
    "reprob": "reprob", "aa": "randaug", "min_lr": "min_lr", "EMA": "ema_decay", "pooling": "global_pool",
    "mask_ratio": "model.mask_ratio", "reconstruction_target": "model.target", "decoder": "model.decoder",
    "augmentation": "augmentation", "not_used": "not_used", "recipe": "recipe",
}
# Rows that are no setting of a config: each is fixed by code and tested there, or is not a harness run.
NOT_SETTINGS = {
    "optimizer": "fixed per stage by mae.recipes (AdamW / LARS; tests/test_optim.py)",
    "lr_schedule": "always warmup + half-cosine per step (mae.optim.build_scheduler; tests/test_optim.py)",
    "lr_scaling_rule": "mae.optim.absolute_lr (tests/test_optim.py)",
    "init": "mae.model (tests/test_model.py)", "pos_embed": "mae.pos_embed (tests/test_pos_embed.py)",
    "class_token": "mae.model / mae.downstream", "loss": "mae.targets (tests/test_targets.py)",
    "feature_norm": "mae.downstream.attach_linear_probe (tests/test_downstream.py)",
    "disabled": "the linear probe has no mixup / cutmix / drop path / colour settings (mae.recipes.Linprobe)",
    "alt_optimizer": "an alternative the paper did not use for its numbers",
    "top1 (w/ EMA / w/o EMA)": "results, not a setting (mae.train reports top1 and top1_without_ema)",
}
LINPROBE_FIXED = {"optimizer_momentum": "LARS momentum 0.9 is fixed in mae.optim.build_lars_optimizer",
                  "augmentation": "the linear probe's RandomResizedCrop + flip is fixed in mae.data"}
# hyperparams.csv stages no paper run follows, and why.
SKIPPED_STAGES = {
    "ade20k": "transfer recipe: the harness has no segmentation runs",
    "coco": "transfer recipe: the harness has no detection runs",
    "inat_places": "transfer recipe: the harness has no iNaturalist / Places runs",
    "linprobe_repo": "the official code's probe (50 epochs suffice for L/H); the paper preset follows Table 10",
    "architecture": "checked against mae.archs by test_architecture_rows_match_the_arch_table",
}


@pytest.fixture(scope="module")
def grid():
    config = yaml.safe_load((REPO / "workflow" / "config.yaml").read_text())
    return build_grid({**config, "preset": "paper", "data_root": "/data/imagenet"}, REPO)


@pytest.fixture(scope="module")
def rows():
    with HYPERPARAMS.open() as f:
        return list(csv.DictReader(f))


def recipe_of(grid, cell) -> str:
    """The hyperparams.csv stage that governs `cell` (see the module docstring)."""
    if cell.stage in ("pretrain", "linprobe"):
        return cell.stage
    section = cell.config["finetune"]
    if section["checkpoint"] is None:
        return "scratch_supervised"
    if all(a == "table3_model_sizes" and row.startswith("MAE ") for a, row in cell.rows):
        return "finetune_repo"
    return "partial_finetune" if section["trainable_blocks"] is not None else "finetune"


def varied_keys(grid, cell) -> set[str]:
    """Dotted keys the cell's ablation rows set as their variable: model and pre-training keys (an
    evaluation's recipe is never the variable; a row that sets one, e.g. a ViT-H drop path, is checked).
    Table 3's rows set recipe values (1600 epochs, normalized pixels) and are checked too."""
    keys = set()
    for ablation, label in cell.rows:
        if ablation == "table3_model_sizes":
            continue
        spec = grid.ablations[ablation]
        row = next(r for r in spec["rows"] if r["label"] == label)
        keys |= {k for k in {**spec.get("set", {}), **row.get("set", {})} if not k.startswith(("finetune.", "linprobe."))}
    return keys


def sizes_of(model: str) -> set[str]:
    """'all', 'ViT-B', 'ViT-L/ViT-H', 'ViT-B/ViT-L', 'ViT-L (ablations)' -> {'B', 'L', 'H'} subsets."""
    if model == "all":
        return {"B", "L", "H"}
    found = set(re.findall(r"ViT-([BLH])", model))
    assert found, f"hyperparams.csv model {model!r}: no size"
    return found


def per_size(text: str) -> dict[str, str]:
    """'300 (B), 200 (L/H)' -> {'B': '300', 'L': '200', 'H': '200'}; a plain value holds for every size."""
    parts = re.findall(r"([^,()]+?)\s*\(([BLH/]+)\)", text)
    if not parts:
        return {s: text.strip() for s in "BLH"}
    return {size: value.strip() for value, sizes in parts for size in sizes.split("/")}


def number(text: str) -> float:
    return float(text.split("(")[0].strip())


def expected_value(stage: str, config: str, text: str, size: str, cell) -> tuple[str, object] | None:
    """(dotted key, value the cell must hold) for one hyperparams.csv row, or None when the row holds
    nothing to compare for this cell."""
    key = KEYS[config]
    section = "finetune" if stage in ("finetune_repo", "partial_finetune", "scratch_supervised") else stage
    dotted = key if "." in key else f"{section}.{key}"
    value = per_size(text)[size]
    if key == "betas":
        return dotted, [float(x) for x in re.findall(r"beta\d=([\d.]+)", value)]
    if key == "randaug":
        return dotted, value
    if key == "augmentation":
        if section == "pretrain":
            assert value == "RandomResizedCrop"
            return dotted, "crop_rand"
        magnitude, std = re.fullmatch(r"RandAug \((\d+), ([\d.]+)\)", value).groups()
        return "finetune.randaug", f"rand-m{magnitude}-mstd{std}"  # prefix checked: timm adds options
    if key == "global_pool":
        assert value.startswith("--global_pool")
        return dotted, "avg"
    if key == "model.target":  # "unnormalized pixels (ablation default); normalized pixels for Table 3 models"
        return dotted, "norm_pixel" if cell.rows[0][0] == "table3_model_sizes" else "pixel"
    if key == "model.decoder":  # "8 blocks, 512-d (default)..."
        blocks, width = re.match(r"(\d+) blocks, (\d+)-d", value).groups()
        return dotted, (int(blocks), int(width))
    if key == "not_used":  # pre-training: "color jittering, drop path, gradient clip"
        return "pretrain.clip_grad", None
    if key == "recipe":  # partial fine-tuning: "Table 9 setting; fine-tuning epochs chosen from {50, 100, 200} ..."
        choices = {int(x) for x in re.search(r"\{([\d, ]+)\}", value).group(1).split(",")}
        return "finetune.epochs", choices
    if key == "epochs" and stage == "pretrain":  # "800 (ablation default, Table 1); 1600 for Table 3 models"
        return dotted, 1600 if cell.rows[0][0] == "table3_model_sizes" else int(number(value))
    return dotted, number(value)


def actual_value(cell, dotted: str):
    section, key = dotted.split(".", 1)
    if dotted == "model.decoder":
        return cell.config["model"]["decoder_depth"], cell.config["model"]["decoder_embed_dim"]
    return cell.config[section][key]


def compound(row: dict) -> list[tuple[str, str]]:
    """'blr / layer_decay / ...' with '5e-4 / 0.65 / ...' -> [(config, value), ...]; a plain row as it is."""
    configs = [c.strip() for c in row["config"].split(" / ")]
    if len(configs) == 1:
        return [(configs[0], row["value"])]
    values = [v.strip() for v in row["value"].split(" / ")]
    assert len(configs) == len(values), row
    return list(zip(configs, values))


def test_every_recipe_row_is_checked_against_every_cell_it_governs(grid, rows):
    """Line by line: each setting row of hyperparams.csv against each paper cell of its recipe and size."""
    cells_by_recipe: dict[str, list] = {}
    for cell in grid.cells.values():
        cells_by_recipe.setdefault(recipe_of(grid, cell), []).append(cell)
        if recipe_of(grid, cell) == "partial_finetune":  # Table 9 otherwise
            cells_by_recipe.setdefault("finetune", []).append(cell)
    checked, mismatches = 0, []
    for row in rows:
        stage = row["stage"]
        if stage in SKIPPED_STAGES:
            continue
        assert stage in cells_by_recipe, f"hyperparams.csv stage {stage!r} governs no paper run: map it or skip it"
        if stage == "pretrain" and row["config"].startswith("repo_"):
            continue  # the official code's pre-training defaults, restating the paper rows above them
        if row["config"] in NOT_SETTINGS:
            continue
        for config, text in compound(row):
            if config in NOT_SETTINGS or (stage == "linprobe" and config in LINPROBE_FIXED):
                continue
            assert config in KEYS, f"hyperparams.csv row {row}: map {config!r} in KEYS or NOT_SETTINGS"
            for cell in cells_by_recipe.get(stage, []):
                size = SIZES[cell.config["model"]["arch"]]
                if size not in sizes_of(row["model"]):
                    continue
                dotted, want = expected_value(stage, config, text, size, cell)
                if dotted in varied_keys(grid, cell) or dotted == "model.decoder" and varied_keys(grid, cell) & {
                        "model.decoder_depth", "model.decoder_embed_dim"}:
                    continue
                if stage == "finetune" and dotted == "finetune.epochs" and recipe_of(grid, cell) == "partial_finetune":
                    continue  # Fig. 9's epochs: the partial_finetune row
                got = actual_value(cell, dotted)
                ok = (got in want if isinstance(want, set) else got.startswith(want) if dotted == "finetune.randaug"
                      else got == want)
                checked += 1
                if not ok:
                    mismatches.append(f"{stage} {row['model']} {config}={text!r}: {cell.stage}/{cell.run_id} "
                                      f"{cell.rows[0]} has {dotted}={got!r}, expected {want!r}")
    assert not mismatches, "\n".join(mismatches)
    assert checked > 500, checked  # every cell of every recipe was reached


def test_every_recipe_governs_some_cell_and_every_size_is_covered(grid):
    recipes = {}
    for cell in grid.cells.values():
        recipes.setdefault(recipe_of(grid, cell), set()).add(SIZES[cell.config["model"]["arch"]])
    assert recipes == {"pretrain": {"B", "L", "H"}, "linprobe": {"L"}, "finetune": {"L", "H"},
                       "partial_finetune": {"L"}, "finetune_repo": {"B", "L", "H"},
                       "scratch_supervised": {"B", "L", "H"}}


def test_architecture_rows_match_the_arch_table(rows):
    for row in rows:
        if row["stage"] != "architecture":
            continue
        blocks, dim, heads = map(int, re.match(r"(\d+) blocks, (\d+)-d, (\d+) heads", row["value"]).groups())
        if row["config"] == "decoder":
            for arch in SIZES:
                shape = MAE_ARCHS[arch]
                assert (shape["decoder_depth"], shape["decoder_embed_dim"], shape["decoder_num_heads"]) == (
                    blocks, dim, heads), arch
            continue
        patch = int(re.search(r"patch (\d+)", row["value"]).group(1))
        size = re.match(r"ViT-([BLH])", row["model"]).group(1)
        arch = next(a for a, s in SIZES.items() if s == size)
        shape = MAE_ARCHS[arch]
        assert (shape["depth"], shape["embed_dim"], shape["num_heads"], shape["patch_size"]) == (
            blocks, dim, heads, patch), row


def test_table3_finetunes_use_the_official_per_size_recipe(grid):
    """The three differences #19 named, spelled out (the line-by-line test covers them too)."""
    got = {}
    for cell in grid.cells.values():
        if cell.stage == "finetune" and recipe_of(grid, cell) == "finetune_repo":
            s = cell.config["finetune"]
            got[SIZES[cell.config["model"]["arch"]]] = (s["blr"], s["layer_decay"], s["drop_path"], s["epochs"])
    assert got == {"B": (5e-4, 0.65, 0.1, 100), "L": (1e-3, 0.75, 0.2, 50), "H": (1e-3, 0.75, 0.3, 50)}


def test_from_scratch_cells_use_table11_with_ema(grid):
    scratch = [c for c in grid.cells.values() if recipe_of(grid, c) == "scratch_supervised"]
    assert len(scratch) == 3
    for cell in scratch:
        s = cell.config["finetune"]
        assert (s["betas"], s["ema_decay"], s["layer_decay"]) == ([0.9, 0.95], 0.9999, 1.0), cell.rows
