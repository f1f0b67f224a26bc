"""Allowed values and the rules between settings, each written once and free of torch.

`mae.config` validates every config with these (a resolved config checks every rule, so a bad grid
row fails when the workflow is parsed); the model, masking, targets and data modules call the same
functions when they are built directly, so both report the same one-line `UserError`. Whether
data.root holds what data.name reads is checked by the `mae` CLI before torch and by the dataset
builder, not by the config: a workflow may be parsed on a machine that does not hold the data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mae.errors import UserError, check_choice, check_range

STAGES = ("pretrain", "finetune", "linprobe")
TRANSFORM_KINDS = (*STAGES, "eval")
MASK_SAMPLINGS = ("random", "block", "grid")
TARGETS = ("pixel", "norm_pixel", "pca", "token")
DATASETS = ("imagenet", "cifar10", "cifar100", "fashion_mnist", "image_folder", "synthetic")
AUGMENTATIONS = ("none", "crop_fixed", "crop_rand", "crop_rand_color_jitter")
GLOBAL_POOLS = ("avg", "token")
# linprobe.features: the paper's probe on augmented images, or one trained on frozen features computed once
LINPROBE_FEATURES = ("augmented", "cached", "pixels")  # pixels: the cached probe on raw pixels (a reference row)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
IN_CHANS = (1, 3)  # every dataset is adapted between grayscale and RGB
GRID_MASK_RATIO = 0.75  # grid masking keeps one patch of each 2x2 cell
# Bounds of model.img_size: 16x the paper's 224 per side, and a 256x256 patch grid (65,536 tokens; the
# paper's 224/16 is 14x14). Beyond them a few typed digits would allocate gigabytes.
MAX_IMG_SIDE = 4096
MAX_PATCHES = 256 * 256
# What one reconstruction figure can hold (`mae visualize`): each row is 1.6 inches at 120 dpi (32 rows = a
# 6144-pixel-high PNG), each ratio three columns. Larger requests are refused before anything is built
# (5000 rows took 18.5 GB).
MAX_FIGURE_IMAGES = 32
MAX_FIGURE_MASK_RATIOS = 8
# What a weights file named by `<stage>.checkpoint` must be (checked by the CLI before torch, and on reading).
CHECKPOINT_FILE_ALLOWED = "an existing checkpoint file (a model.pth or an official MAE .pth)"
RANDOM_CHECKPOINT = "random"  # `--checkpoint random`: the config's encoder at its seeded initialisation
# data.root when it is null: Debian's dataset-fashion-mnist package; every other dataset needs one.
DEFAULT_ROOTS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
# torchvision's CIFAR folder under data.root (its `base_folder`)
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
# RandomResizedCrop's official lower area bound per stage (`data.crop_min_scale: null`).
OFFICIAL_CROP_MIN_SCALE = {"pretrain": 0.2, "finetune": 0.08, "linprobe": 0.08, "eval": 0.08}


def check_positive_int(field: str, value: Any) -> int:
    """Return `value` if it is an integer >= 1, else raise UserError."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(field, value, "a positive integer")
    return value


def image_hw(img_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(height, width) of an `img_size` setting: an int is the side of a square, [H, W] a rectangle."""
    if isinstance(img_size, int):
        return img_size, img_size
    height, width = img_size
    return int(height), int(width)


def torchvision_size(img_size: int | tuple[int, int] | list[int]) -> int | tuple[int, int]:
    """`img_size` as torchvision and timm take it: the side of a square as an int (torchvision's Resize
    reads an int as the shorter side, keeping the aspect), a rectangle as (height, width)."""
    height, width = image_hw(img_size)
    return height if height == width else (height, width)


def check_img_size(img_size: Any, patch_size: int | None = None, field: str = "model.img_size") -> tuple[int, int]:
    """A side or [height, width] of at most MAX_IMG_SIDE pixels, each a multiple of `patch_size` when
    given, with at most MAX_PATCHES patches (a position table of gigabytes is a typo); returns (H, W)."""
    allowed = f"a positive integer up to {MAX_IMG_SIDE}, or [height, width]"
    if patch_size is not None:
        allowed = (f"a positive multiple of model.patch_size={patch_size} up to {MAX_IMG_SIDE} (an integer, or "
                   f"[height, width]) with at most {MAX_PATCHES} patches")
    sides = [img_size] if isinstance(img_size, int) else list(img_size) if isinstance(img_size, (list, tuple)) else []
    if (len(sides) not in (1, 2) or (len(sides) == 1 and not isinstance(img_size, int))
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= MAX_IMG_SIDE for s in sides)
            or (patch_size is not None and any(s % patch_size for s in sides))):
        raise UserError(field, img_size, allowed)
    height, width = image_hw(img_size)
    if patch_size is not None and (height // patch_size) * (width // patch_size) > MAX_PATCHES:
        raise UserError(field, img_size, allowed)
    return height, width


def check_sincos_width(field: str, dim: int) -> None:
    """A 2D sin-cos position table needs a width that is a multiple of 4."""
    if dim % 4:
        raise UserError(field, dim, "a multiple of 4 (2D sin-cos position table)")


def check_width(field: str, dim: int, heads_field: str, heads: int) -> None:
    """A transformer width: positive, divisible by its heads, a multiple of 4 (sin-cos table).

    Args:
        field: dotted name of the width (`model.embed_dim`).
        dim: the width.
        heads_field: dotted name of the head count (`model.num_heads`).
        heads: the head count.
    """
    check_positive_int(field, dim)
    check_positive_int(heads_field, heads)
    if dim % heads:
        raise UserError(heads_field, heads, f"a divisor of {field}={dim}")
    check_sincos_width(field, dim)


def check_mask_ratio(mask_ratio: float, mask_sampling: str = "random", field: str = "model.mask_ratio") -> float:
    """Validate a mask ratio for a sampling strategy; returns it."""
    check_range(field, mask_ratio, 0.0, 1.0)
    if mask_sampling == "grid" and mask_ratio != GRID_MASK_RATIO:
        raise UserError(field, mask_ratio, f"{GRID_MASK_RATIO} with model.mask_sampling='grid' "
                                           "(it keeps one patch of each 2x2 cell)")
    return mask_ratio


def check_mask_grid(mask_sampling: str, grid_size: tuple[int, int]) -> None:
    """Grid masking needs a patch grid with even sides.

    Args:
        mask_sampling: the strategy; only 'grid' has a rule.
        grid_size: (gh, gw) patches.
    """
    gh, gw = grid_size
    if mask_sampling == "grid" and (gh % 2 or gw % 2):
        raise UserError("model.mask_sampling", "grid", f"a patch grid with even sides, got {gh}x{gw} patches")


def check_pca_components(num_components: Any, patch_dim: int) -> int:
    """The 'pca' target keeps between 1 and p*p*C components; returns `num_components`."""
    if not isinstance(num_components, int) or not 1 <= num_components <= patch_dim:
        raise UserError("model.pca_components", num_components,
                        f"an integer in [1, {patch_dim}] (the patch dimension p*p*C)")
    return num_components


def check_in_chans(in_chans: Any) -> int:
    """Model input channels the data path can produce; returns `in_chans`."""
    if in_chans not in IN_CHANS:
        raise UserError("model.in_chans", in_chans, "1 or 3 (images are adapted between grayscale and RGB)")
    return in_chans


def check_pretrain_mask(mask_ratio: float, num_patches: int, field: str = "model.mask_ratio") -> float:
    """Pretraining learns from removed patches and sees kept ones: at least one of each per image.

    Args:
        mask_ratio: the configured ratio (already in [0, 1)).
        num_patches: patches per image, L = (H / patch_size) * (W / patch_size).
        field: dotted name in the message.
    """
    kept = int(num_patches * (1 - mask_ratio))  # mae.masking.num_kept: the official rule
    if kept < 1 or kept >= num_patches:
        lo, hi = 1 / num_patches, 1 - 1 / num_patches
        raise UserError(field, mask_ratio, f"a ratio that removes and keeps at least one of the {num_patches} patches "
                        f"when pretraining (about {lo:.3g} to {hi:.3g}; the loss is computed on removed patches)")
    return mask_ratio


# What `mae visualize --out` can write: matplotlib chooses the format by the suffix.
FIGURE_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def check_figure_file(out: str) -> None:
    """A figure path whose suffix names a format the figure is written in."""
    if Path(out).suffix.lower() not in FIGURE_FORMATS:
        raise UserError("--out", out, f"a file ending in {', '.join(FIGURE_FORMATS[:-1])} or {FIGURE_FORMATS[-1]} "
                        "(the format follows the suffix)")


FEATURE_FORMATS = (".pth", ".pt", ".npz")  # torch, torch, NumPy


def check_features_file(out: str) -> None:
    """A features path whose suffix names the format `mae features` writes it in."""
    if Path(out).suffix.lower() not in FEATURE_FORMATS:
        raise UserError("--out", out, "a file ending in .pth or .pt (torch, weights_only-loadable) or .npz "
                        "(NumPy: numpy.load without pickle)")


def check_figure_request(mask_ratios: Any, num_images: Any, seed: Any, device: Any) -> None:
    """A reconstruction grid that can be drawn and fits one figure, on a device named as torch names one
    (whether that device exists is `mae.visualize`'s check, which needs torch)."""
    if not 1 <= len(mask_ratios) <= MAX_FIGURE_MASK_RATIOS:
        raise UserError("--mask-ratios", f"{len(mask_ratios)} ratios", f"1 to {MAX_FIGURE_MASK_RATIOS} "
                        "comma-separated numbers in [0, 1) (three columns each)")
    for r in mask_ratios:
        if not 0 <= r < 1:
            raise UserError("--mask-ratios", r, "numbers in [0, 1)")
    if isinstance(num_images, bool) or not isinstance(num_images, int) or not 1 <= num_images <= MAX_FIGURE_IMAGES:
        raise UserError("--num-images", num_images, f"an integer from 1 to {MAX_FIGURE_IMAGES} (the rows of one figure)")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise UserError("--seed", seed, "an integer in [0, 2**63)")
    check_device_name(device)


# Tracking stores MLflow serves (a database URI may name its driver: postgresql+psycopg2://).
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


def check_tracking_uri(uri: Any, field: str = "tracking.uri") -> None:
    """An MLflow tracking URI whose scheme is a store MLflow has: a typo (`foo://`), or a bare path that MLflow
    would take for a folder of files (`mlflow.db`), is refused here instead of a warning in train.log."""
    if uri is None:
        return
    scheme = str(uri).split("://", 1)[0].split("+", 1)[0].lower() if "://" in str(uri) else ""
    if scheme not in TRACKING_SCHEMES:
        hint = f" (for a database file: sqlite:///{uri})" if not scheme and str(uri).endswith(".db") else ""
        raise UserError(field, uri, "a URI of an MLflow store: http(s)://host:port, sqlite:///path.db, "
                        f"postgresql://, mysql://, mssql://, file:///folder or databricks{hint}")


def check_trainable_blocks(n: Any, depth: int) -> None:
    """Partial fine-tuning's block count: 0.5 (the last block's MLP) or a whole number up to the depth."""
    valid = isinstance(n, (int, float)) and not isinstance(n, bool) and (n == 0.5 or (n == int(n) and 0 <= n <= depth))
    if not valid:
        shown = int(n) if isinstance(n, float) and n.is_integer() else n  # 10, not 10.0 (the field is a float)
        raise UserError("finetune.trainable_blocks", shown, f"0.5 or a whole number in [0, {depth}] (the model's depth)")


def check_device_name(device: Any, field: str = "--device") -> None:
    """A device named as torch names one that these commands use: cpu, cuda, cuda:N (whether it is there is
    `mae.distributed.check_device_present`'s question, which needs torch)."""
    kind, _, index = str(device).partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise UserError(field, device, "'cpu', 'cuda' or 'cuda:N'")


def batch_geometry(stage: str, batch_size: int, micro_batch_size: int | None, world_size: int) -> tuple[int, int]:
    """(micro batch per process, accumulation steps) for `stage`'s global `batch_size` over `world_size`
    processes: micro_batch_size, or else the whole share of each process (no accumulation)."""
    micro = micro_batch_size or batch_size // world_size
    if micro < 1 or batch_size % (world_size * micro):
        raise UserError(f"{stage}.batch_size", batch_size,
                        f"a multiple of world_size x micro_batch_size = {world_size} x {micro} (set "
                        f"{stage}.micro_batch_size to a divisor of batch_size / world_size)")
    return micro, batch_size // (world_size * micro)


def data_root_error(name: str, root: Path, expected: str, found: str | None = None) -> UserError:
    """The one line for a data.root that does not hold what data.name reads there (`found`: what the reader
    said it found instead)."""
    return UserError.message(
        "data.root", f"data.root={str(root)!r} is invalid for data.name={name!r}: expected {expected} there"
        + (f" ({found})" if found else ""))


def fashion_mnist_files(root: Path, split: str) -> tuple[Path, Path]:
    """(images, labels) idx files of a Fashion-MNIST split ('train', or 'val': the t10k files) under
    `root`, gzipped (as Debian installs them) or not."""
    prefix = "train" if split == "train" else "t10k"
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        path = next((p for p in (root / f"{prefix}-{kind}.gz", root / f"{prefix}-{kind}") if p.is_file()), None)
        if path is None:
            raise data_root_error("fashion_mnist", root,
                                  f"{prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz (idx files)")
        found.append(path)
    return found[0], found[1]


def check_data_root(name: str, root: str | os.PathLike | None, split: str, download: bool = False) -> Path | None:
    """The folder that `split` of data.name is read from ('train', or 'val': the test files or folder):
    `root`, else `DEFAULT_ROOTS`; None for synthetic data. Checks that the files or folders the split
    is read from are there, by name only: their contents are checked when they are read."""
    check_choice("data.name", name, DATASETS)
    if name == "synthetic":
        return None
    if root is None:
        root = DEFAULT_ROOTS.get(name)
        if root is None:
            raise UserError.message("data.root", f"data.root is required for data.name={name!r}")
    root = Path(root).expanduser()
    if name in ("imagenet", "image_folder"):
        if not (root / split).is_dir():
            raise data_root_error(name, root, f"a folder {split}/ with one sub-folder of images per class")
        return root
    if name in CIFAR_FOLDERS and download and not root.exists():
        return root  # torchvision makes it and downloads into it
    if not root.is_dir():
        download_hint = " (or set data.download=true)" if name in CIFAR_FOLDERS and not download else ""
        raise data_root_error(name, root, "an existing folder" + download_hint)
    if name == "fashion_mnist":
        fashion_mnist_files(root, split)
    elif not download and not (root / CIFAR_FOLDERS[name]).is_dir():
        raise cifar_folder_error(name, root)
    return root


def cifar_folder_error(name: str, root: Path) -> UserError:
    """The one line for a CIFAR data.root without torchvision's folder (missing, or failing its check)."""
    return data_root_error(name, root, f"the torchvision folder {CIFAR_FOLDERS[name]}/ (or set data.download=true)")
