"""Datasets, transforms and resumable loaders for pretraining, fine-tuning and linear probing.

Two paths, one interface:

* Small datasets (`fashion_mnist`, `cifar10`, `cifar100`, `synthetic`) are held in memory as uint8
  `[N, C, H, W]` (`InMemoryDataset`). `InMemoryLoader` draws batches of indices and augments the
  whole batch with tensor ops (`TensorTransform`: crops and flips as one `affine_grid` /
  `grid_sample`), in the main process, with no workers.
* Image folders (`imagenet`, `image_folder`: `root/{train,val}/<class>/<image>`) go through a torch
  `DataLoader` with workers and per-image torchvision v2 / timm transforms (`FolderLoader`).

Both loaders yield `(images, labels)`: images float32 `[B, in_chans, img_size, img_size]`,
normalised with the dataset mean/std; labels int64 `[B]`. Both shard like `DistributedSampler`
(one permutation of the dataset per epoch from `seed + epoch`, rank `r` takes every
`world_size`-th index starting at `r`) and are exactly resumable: the order comes from
`(seed, epoch)` and every random augmentation parameter from `(seed, epoch, batch or sample position)`,
never from the global RNG state, so a resumed run sees the same remaining batches, augmented the
same way, as an uninterrupted one.

Resume protocol::

    loader = build_loader(dataset, "pretrain", batch_size=256, img_size=28, in_chans=1, seed=0)
    loader.load_state_dict(ckpt["loader"])          # {"epoch": e, "batch": k}: k batches of e consumed
    for epoch in range(loader.epoch, epochs):
        loader.set_epoch(epoch)                      # same epoch: keeps the position; new epoch: rewinds
        for images, labels in loader:
            ...
            ckpt["loader"] = loader.state_dict()     # position after the batch just consumed

Pretraining augmentations (paper Table 1e): `none` (no crop for in-memory data / resize + center
crop 224/256 for folders, no flip), `crop_fixed` (random crop of 0.875 of the side + flip),
`crop_rand` (RandomResizedCrop scale 0.2-1 + flip; the default), `crop_rand_color_jitter` (+
brightness / contrast / saturation jitter 0.4; brightness / contrast only for grayscale).
Fine-tuning: RandomResizedCrop 0.08-1 + flip + RandAugment + random erasing (+ `build_mixup`); linear
probing: RandomResizedCrop 0.08-1 + flip; evaluation: resize + center crop 224/256 for folders,
resize only for in-memory data. Interpolation is bicubic throughout, as in the official code.
`data.crop_min_scale` replaces every RandomResizedCrop's lower area bound (the tiny preset uses 0.35).

Where the in-memory fine-tuning transform differs from timm's per-image one: RandAugment is
torchvision's (`num_magnitude_bins=11` so `m9` means 9/10 of the range, as in timm; no magnitude
noise `mstd`). timm `Mixup` draws from numpy's global RNG: restore that state to resume it exactly.
"""

from __future__ import annotations

import gzip
import math
import os
import random
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .errors import UserError, check_choice

__all__ = [
    "DATASETS", "AUGMENTATIONS", "TRANSFORM_KINDS", "DEFAULT_ROOTS", "InMemoryDataset", "FolderDataset",
    "build_dataset", "TensorTransform", "build_tensor_transform", "build_folder_transform", "build_mixup",
    "InMemoryLoader", "FolderLoader", "build_loader",
]

DATASETS = ("imagenet", "image_folder", "cifar10", "cifar100", "fashion_mnist", "synthetic")
AUGMENTATIONS = ("none", "crop_fixed", "crop_rand", "crop_rand_color_jitter")
TRANSFORM_KINDS = ("pretrain", "finetune", "linprobe", "eval")
DEFAULT_ROOTS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# per-channel statistics of each training set, on [0, 1] pixels
_STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
EVAL_CROP_PCT = 224 / 256  # official eval resize ratio (ImageNet); also the crop_fixed fraction
SYNTHETIC_SIZES = {"train": 4096, "val": 1024}
SYNTHETIC_CLASSES = 10
_LUMA = (0.299, 0.587, 0.114)


def _mix_seed(*values: int) -> int:
    """A 63-bit seed that depends on every value (order matters)."""
    state = np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values] + [len(values)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFF_FFFF_FFFF_FFFF


def _generator(*values: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(_mix_seed(*values))
    return g


@contextmanager
def _global_rng_scope(seed: int, device: torch.device | None = None):
    """Seed torch (CPU and `device`) / numpy / python global RNGs for code that only uses them,
    then restore them."""
    cuda = [device.index or 0] if device is not None and device.type == "cuda" else []
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


# ----------------------------------------------------------------------------------------------------
# datasets

class InMemoryDataset(Dataset):
    """A small labelled image dataset held as one uint8 tensor.

    Args:
        images: uint8 `[N, C, H, W]`.
        labels: int64 `[N]`.
        num_classes: number of classes.
        mean: per-channel mean of the training split on [0, 1] pixels (length C).
        std: per-channel standard deviation (length C).
        name: dataset name.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 mean: Sequence[float], std: Sequence[float], name: str = ""):
        assert images.dtype == torch.uint8 and images.ndim == 4, (images.dtype, images.shape)
        assert labels.shape == (images.shape[0],)
        assert len(mean) == len(std) == images.shape[1]
        self.images = images.contiguous()
        self.labels = labels.long()
        self.num_classes = int(num_classes)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.name = name

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


class FolderDataset(Dataset):
    """A torchvision `ImageFolder` (or a subset of it) with the dataset's mean/std attached.

    Args:
        folder: the ImageFolder, without a transform.
        indices: the samples used (None = all).
        mean: per-channel mean (RGB).
        std: per-channel standard deviation (RGB).
    """

    def __init__(self, folder, indices: Sequence[int] | None, mean: Sequence[float], std: Sequence[float]):
        self.folder = folder
        self.indices = list(range(len(folder))) if indices is None else list(indices)
        self.num_classes = len(folder.classes)
        self.mean, self.std = tuple(mean), tuple(std)
        self.root = folder.root

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i: int):
        """(PIL RGB image, label) of sample `i`."""
        path, label = self.folder.samples[self.indices[i]]
        return self.folder.loader(path), label

    def __getitem__(self, i: int):
        return self.load(i)


def _missing_root(name: str, root: Path, expected: str) -> UserError:
    return UserError.message(
        "data.root", f"data.root={str(root)!r} is invalid for data.name={name!r}: expected {expected} there")


def _read_idx(path: Path) -> np.ndarray:
    """Read one idx file (MNIST format, optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise UserError.message("data.root", f"{path} is not a uint8 idx file")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _load_fashion_mnist(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    found = {}
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = [root / f"{prefix}-{kind}.gz", root / f"{prefix}-{kind}"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise _missing_root("fashion_mnist", root,
                                f"{prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz (idx files)")
        found[kind] = _read_idx(path)
    images = torch.from_numpy(found["images-idx3-ubyte"].copy()).unsqueeze(1)
    labels = torch.from_numpy(found["labels-idx1-ubyte"].astype(np.int64))
    return images, labels


def _load_cifar(name: str, root: Path, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision import datasets
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        ds = cls(str(root), train=split == "train", download=download)
    except RuntimeError:
        folder = cls.base_folder
        raise _missing_root(name, root, f"the torchvision folder {folder}/ (or set data.download=true)") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(ds.targets, dtype=torch.int64)


def _synthetic(n: int, img_size: int, in_chans: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Oriented sinusoidal gratings, one orientation per class, with random frequency, phase,
    contrast, colour tint and pixel noise: learnable, not trivially separable per pixel."""
    g = _generator(seed, n, img_size, in_chans)
    labels = torch.randint(0, SYNTHETIC_CLASSES, (n,), generator=g)
    theta = labels.double() * math.pi / SYNTHETIC_CLASSES + torch.randn(n, generator=g).double() * math.radians(4)
    freq = 1.5 + 3.0 * torch.rand(n, generator=g).double()       # cycles per image side
    phase = 2 * math.pi * torch.rand(n, generator=g).double()
    contrast = 0.25 + 0.2 * torch.rand(n, generator=g).double()
    coords = (torch.arange(img_size, dtype=torch.float64) + 0.5) / img_size
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    proj = x[None] * torch.cos(theta)[:, None, None] + y[None] * torch.sin(theta)[:, None, None]
    wave = torch.sin(2 * math.pi * freq[:, None, None] * proj + phase[:, None, None])
    tint = 0.6 + 0.4 * torch.rand(n, in_chans, 1, 1, generator=g).double()
    img = 0.5 + contrast[:, None, None, None] * wave[:, None] * tint
    img = img + 0.08 * torch.randn(n, in_chans, img_size, img_size, generator=g).double()
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels


def _synthetic_stats(img_size: int, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std measured on a fixed 512-image reference draw (independent of split, seed, subset)."""
    images, _ = _synthetic(512, img_size, in_chans, seed=-1)
    x = images.double() / 255
    return tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).tolist())


def build_dataset(
        name: str,
        root: str | os.PathLike | None,
        split: str,
        *,
        img_size: int,
        in_chans: int,
        subset: int | None = None,
        download: bool = False,
        seed: int = 0,
) -> InMemoryDataset | FolderDataset:
    """Build one split of a dataset.

    Args:
        name: one of `DATASETS`.
        root: dataset folder; None uses `DEFAULT_ROOTS` (fashion_mnist) and is an error otherwise
            (except for `synthetic`, which needs none). ImageFolder sets need `root/{train,val}/<class>/`.
        split: `train` or `val` (the test split of fashion_mnist / cifar).
        img_size: model input side; in-memory images keep their size (the loader resizes), synthetic
            images are generated at this size.
        in_chans: model input channels; 1 <-> 3 is adapted by the loader, anything else must match.
        subset: keep N images: the first N for in-memory sets, N evenly spaced over the sorted folder
            for ImageFolder sets; for `synthetic`, the number generated (default 4096 train / 1024 val).
        download: let torchvision download CIFAR into `root`.
        seed: synthetic data seed (keep it fixed across runs that are compared).
    """
    check_choice("data.name", name, DATASETS)
    check_choice("split", split, ("train", "val"))
    if not isinstance(img_size, int) or isinstance(img_size, bool) or img_size < 1:
        raise UserError("model.img_size", img_size, "a positive integer")
    if in_chans not in (1, 3):
        raise UserError("model.in_chans", in_chans, "1 or 3 (images are adapted between grayscale and RGB)")
    if subset is not None and (not isinstance(subset, int) or subset < 1):
        raise UserError(f"data.{split}_subset", subset, "a positive integer or null")

    if name == "synthetic":
        n = subset or SYNTHETIC_SIZES[split]
        images, labels = _synthetic(n, img_size, in_chans, seed=_mix_seed(seed, 0 if split == "train" else 1))
        mean, std = _synthetic_stats(img_size, in_chans)
        return InMemoryDataset(images, labels, SYNTHETIC_CLASSES, mean, std, name)

    if root is None:
        root = DEFAULT_ROOTS.get(name)
        if root is None:
            raise UserError.message("data.root", f"data.root is required for data.name={name!r}")
    root = Path(root).expanduser()

    if name in ("imagenet", "image_folder"):
        from torchvision.datasets import ImageFolder
        split_dir = root / split
        if not split_dir.is_dir():
            raise _missing_root(name, root, f"a folder {split}/ with one sub-folder of images per class")
        try:
            folder = ImageFolder(str(split_dir))
        except (FileNotFoundError, RuntimeError) as e:
            raise _missing_root(name, root, f"class sub-folders with images in {split}/ ({e})") from None
        indices = None
        if subset is not None and subset < len(folder):
            indices = np.linspace(0, len(folder) - 1, subset).round().astype(int).tolist()
        return FolderDataset(folder, indices, IMAGENET_MEAN, IMAGENET_STD)

    if not root.is_dir():
        raise _missing_root(name, root, "an existing folder" + (" (or set data.download=true)" if "cifar" in name else ""))
    if name == "fashion_mnist":
        images, labels = _load_fashion_mnist(root, split)
        num_classes = 10
    else:
        images, labels = _load_cifar(name, root, split, download)
        num_classes = 10 if name == "cifar10" else 100
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    mean, std = _STATS[name]
    return InMemoryDataset(images, labels, num_classes, mean, std, name)


# ----------------------------------------------------------------------------------------------------
# batched tensor transforms (in-memory path)

def _adapt_stats(mean: Sequence[float], std: Sequence[float], in_chans: int) -> tuple[tuple, tuple]:
    if len(mean) == in_chans:
        return tuple(mean), tuple(std)
    if len(mean) == 1:
        return tuple(mean) * in_chans, tuple(std) * in_chans
    if len(mean) == 3 and in_chans == 1:
        return (sum(w * m for w, m in zip(_LUMA, mean)),), (sum(w * s for w, s in zip(_LUMA, std)),)
    raise UserError("model.in_chans", in_chans, f"{len(mean)} (the dataset's channels), or 1 / 3")


def _adapt_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """x: [N, C, H, W] float -> [N, in_chans, H, W] (grayscale repeated, or RGB to luma)."""
    c = x.shape[1]
    if c == in_chans:
        return x
    if c == 1:
        return x.expand(-1, in_chans, -1, -1).contiguous()
    if c == 3 and in_chans == 1:
        w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    raise UserError("model.in_chans", in_chans, f"{c} (the dataset's channels), or 1 / 3")


def _parse_randaug(spec: str | None) -> tuple[int, int] | None:
    """timm-style `rand-m9-mstd0.5-inc1` -> (num_ops, magnitude); None or '' -> None."""
    if not spec:
        return None
    parts = spec.split("-")
    if parts[0] != "rand":
        raise UserError("finetune.randaug", spec, "a timm RandAugment string like 'rand-m9-mstd0.5-inc1', or null")
    num_ops, magnitude = 2, 10
    for p in parts[1:]:
        if p.startswith("mstd") or p.startswith("inc") or p.startswith("mmax") or p.startswith("p"):
            continue
        if p.startswith("m") and p[1:].isdigit():
            magnitude = int(p[1:])
        elif p.startswith("n") and p[1:].isdigit():
            num_ops = int(p[1:])
        else:
            raise UserError("finetune.randaug", spec, "a timm RandAugment string like 'rand-m9-mstd0.5-inc1'")
    return num_ops, min(magnitude, 10)


class TensorTransform:
    """Augment a whole uint8 batch with tensor ops; randomness only from the given generator.

    Args:
        img_size: output side.
        in_chans: output channels (1 <-> 3 adapted).
        mean: dataset mean for the dataset's channels (adapted with the channels).
        std: dataset std.
        crop: `rrc` (RandomResizedCrop), `fixed` (random crop of `fixed_frac` of the side), `none`.
        scale: RandomResizedCrop area range.
        ratio: RandomResizedCrop aspect-ratio range.
        flip: random horizontal flip with probability 0.5.
        color_jitter: brightness / contrast (/ saturation for RGB) strength; 0 = off.
        randaug: timm RandAugment string (uint8 per image, torchvision's RandAugment); None = off.
        reprob: timm RandomErasing probability (pixel mode); 0 = off.
        fixed_frac: side fraction for `crop='fixed'`.
        interpolation: `bicubic` or `bilinear`.
    """

    def __init__(self, img_size: int, in_chans: int, mean: Sequence[float], std: Sequence[float], *,
                 crop: str = "rrc", scale: tuple[float, float] = (0.2, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True, color_jitter: float = 0.0,
                 randaug: str | None = None, reprob: float = 0.0, fixed_frac: float = EVAL_CROP_PCT,
                 interpolation: str = "bicubic"):
        check_choice("crop", crop, ("rrc", "fixed", "none"))
        self.img_size, self.in_chans = img_size, in_chans
        mean, std = _adapt_stats(mean, std, in_chans)
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.crop, self.scale, self.ratio, self.flip = crop, scale, ratio, flip
        self.color_jitter, self.fixed_frac, self.interpolation = color_jitter, fixed_frac, interpolation
        self.randaug = None
        ra = _parse_randaug(randaug)
        if ra is not None:
            from torchvision.transforms import v2
            self.randaug = v2.RandAugment(num_ops=ra[0], magnitude=ra[1], num_magnitude_bins=11)
        self.random_erasing = None
        if reprob > 0:
            from timm.data.random_erasing import RandomErasing
            self.random_erasing = RandomErasing(probability=reprob, mode="pixel", device="cpu")

    def _crop_boxes(self, n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
        """[n, 4] boxes (x0, y0, width, height) in pixels, float."""
        if self.crop == "none":
            return torch.tensor([[0.0, 0.0, w, h]]).expand(n, 4)
        if self.crop == "fixed":
            side = self.fixed_frac * min(h, w)
            u = torch.rand(n, 2, generator=g)
            return torch.stack([u[:, 0] * (w - side), u[:, 1] * (h - side),
                                torch.full((n,), side), torch.full((n,), side)], 1)
        # RandomResizedCrop.get_params, vectorised over 10 tries per image (torchvision's fallback)
        tries = 10
        area = h * w * (self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand(n, tries, generator=g))
        log_r = math.log(self.ratio[0]) + (math.log(self.ratio[1]) - math.log(self.ratio[0])) * torch.rand(
            n, tries, generator=g)
        aspect = torch.exp(log_r)
        cw, ch = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
        ok = (cw <= w) & (ch <= h)
        first = ok.int().argmax(1)
        cw, ch = cw.gather(1, first[:, None])[:, 0], ch.gather(1, first[:, None])[:, 0]
        any_ok = ok.any(1)
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            fw, fh = float(w), w / self.ratio[0]
        elif in_ratio > self.ratio[1]:
            fw, fh = h * self.ratio[1], float(h)
        else:
            fw, fh = float(w), float(h)
        cw = torch.where(any_ok, cw, torch.full_like(cw, fw))
        ch = torch.where(any_ok, ch, torch.full_like(ch, fh))
        u = torch.rand(n, 2, generator=g)
        x0 = torch.where(any_ok, u[:, 0] * (w - cw), (w - cw) / 2)
        y0 = torch.where(any_ok, u[:, 1] * (h - ch), (h - ch) / 2)
        return torch.stack([x0, y0, cw, ch], 1)

    def _resample(self, x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """x: [N, C, H, W] float in [0, 1]; boxes [N, 4]; flips [N] bool -> [N, C, S, S]."""
        n, c, h, w = x.shape
        s = self.img_size
        if self.crop == "none" and not flips.any():
            if (h, w) == (s, s):
                return x
            return F.interpolate(x, size=(s, s), mode=self.interpolation, align_corners=False,
                                 antialias=True).clamp_(0, 1)
        x0, y0, cw, ch = boxes.double().unbind(1)
        sx = cw / w * torch.where(flips, -1.0, 1.0).double()
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = sx
        theta[:, 0, 2] = (2 * x0 + cw) / w - 1
        theta[:, 1, 1] = ch / h
        theta[:, 1, 2] = (2 * y0 + ch) / h - 1
        grid = F.affine_grid(theta.to(x.dtype).to(x.device), [n, c, s, s], align_corners=False)
        return F.grid_sample(x, grid, mode=self.interpolation, padding_mode="border",
                             align_corners=False).clamp_(0, 1)

    def _jitter(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, c = x.shape[:2]
        lo, hi = 1 - self.color_jitter, 1 + self.color_jitter
        b, con, sat = (lo + (hi - lo) * torch.rand(3, n, generator=g)).to(x.device).view(3, n, 1, 1, 1)
        x = x * b
        gray = _adapt_channels(x, 1) if c == 3 else x
        x = (x - gray.mean((1, 2, 3), keepdim=True)) * con + gray.mean((1, 2, 3), keepdim=True)
        if c == 3:
            gray = _adapt_channels(x, 1)
            x = (x - gray) * sat + gray
        return x.clamp_(0, 1)

    def __call__(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """images: uint8 [N, C, H, W] -> float32 [N, in_chans, img_size, img_size], normalised."""
        n, _, h, w = images.shape
        boxes = self._crop_boxes(n, h, w, g)
        flips = (torch.rand(n, generator=g) < 0.5) if self.flip else torch.zeros(n, dtype=torch.bool)
        x = images.float().div_(255)
        x = _adapt_channels(self._resample(x, boxes, flips.to(x.device)), self.in_chans)
        if self.randaug is not None:
            x8 = x.mul(255).round_().to(torch.uint8)
            with _global_rng_scope(int(torch.randint(0, 2 ** 62, (1,), generator=g)), x.device):
                x8 = torch.stack([self.randaug(img) for img in x8])
            x = x8.float().div_(255)
        if self.color_jitter > 0:
            x = self._jitter(x, g)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        if self.random_erasing is not None:
            with _global_rng_scope(int(torch.randint(0, 2 ** 62, (1,), generator=g)), x.device):
                self.random_erasing.device = x.device
                x = self.random_erasing(x)
        return x


def rrc_scale(kind: str, crop_min_scale: float | None = None) -> tuple[float, float]:
    """RandomResizedCrop area range of a stage: official (0.2, 1) for pre-training, (0.08, 1) for
    fine-tuning and linear probing, unless `crop_min_scale` replaces the lower bound (small images such as
    28x28 Fashion-MNIST lose the object in an 8% crop)."""
    if crop_min_scale is not None:
        return (crop_min_scale, 1.0)
    return (0.2, 1.0) if kind == "pretrain" else (0.08, 1.0)


def build_tensor_transform(
        kind: str,
        *,
        img_size: int,
        in_chans: int,
        mean: Sequence[float],
        std: Sequence[float],
        augmentation: str = "crop_rand",
        randaug: str | None = "rand-m9-mstd0.5-inc1",
        reprob: float = 0.25,
        crop_min_scale: float | None = None,
) -> TensorTransform:
    """The in-memory transform for a stage.

    Args:
        kind: `pretrain` (uses `augmentation`), `finetune` (uses `randaug`, `reprob`), `linprobe`, `eval`.
        img_size: output side.
        in_chans: output channels.
        mean: dataset mean (dataset channels).
        std: dataset std.
        augmentation: one of `AUGMENTATIONS` (pretraining only).
        randaug: timm RandAugment string or None (fine-tuning only).
        reprob: random-erasing probability (fine-tuning only).
        crop_min_scale: lower bound of every RandomResizedCrop's area fraction; None = the official
            0.2 for pre-training and 0.08 for fine-tuning and linear probing.
    """
    check_choice("kind", kind, TRANSFORM_KINDS)
    scale = rrc_scale(kind, crop_min_scale)
    common = dict(img_size=img_size, in_chans=in_chans, mean=mean, std=std)
    if kind == "pretrain":
        check_choice("pretrain.augmentation", augmentation, AUGMENTATIONS)
        if augmentation == "none":
            return TensorTransform(**common, crop="none", flip=False)
        if augmentation == "crop_fixed":
            return TensorTransform(**common, crop="fixed")
        return TensorTransform(**common, crop="rrc", scale=scale,
                               color_jitter=0.4 if augmentation == "crop_rand_color_jitter" else 0.0)
    if kind == "finetune":
        return TensorTransform(**common, crop="rrc", scale=scale, randaug=randaug, reprob=reprob)
    if kind == "linprobe":
        return TensorTransform(**common, crop="rrc", scale=scale)
    return TensorTransform(**common, crop="none", flip=False)


# ----------------------------------------------------------------------------------------------------
# per-image transforms (ImageFolder path)

def build_folder_transform(
        kind: str,
        *,
        img_size: int,
        in_chans: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augmentation: str = "crop_rand",
        randaug: str | None = "rand-m9-mstd0.5-inc1",
        reprob: float = 0.25,
        crop_min_scale: float | None = None,
) -> Callable:
    """A PIL -> float tensor `[in_chans, img_size, img_size]` transform for a stage (bicubic).

    Args: as `build_tensor_transform`; fine-tuning uses `timm.data.create_transform` with the
    official arguments (no colour jitter, pixel-mode random erasing).
    """
    from torchvision.transforms import v2
    from torchvision.transforms import InterpolationMode
    check_choice("kind", kind, TRANSFORM_KINDS)
    bicubic = InterpolationMode.BICUBIC
    mean, std = _adapt_stats(mean, std, in_chans)
    gray = [v2.Grayscale(num_output_channels=1)] if in_chans == 1 else []
    resize_side = int(img_size / EVAL_CROP_PCT)
    scale = rrc_scale(kind, crop_min_scale)
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if kind == "finetune":
        from timm.data import create_transform
        t = create_transform(input_size=img_size, is_training=True, scale=scale, color_jitter=None, auto_augment=randaug or None,
                             interpolation="bicubic", re_prob=reprob, re_mode="pixel", re_count=1,
                             mean=mean, std=std)
        return v2.Compose(gray + [t]) if gray else t
    if kind == "eval" or (kind == "pretrain" and check_choice(
            "pretrain.augmentation", augmentation, AUGMENTATIONS) == "none"):
        ops = [v2.Resize(resize_side, interpolation=bicubic, antialias=True), v2.CenterCrop(img_size)]
    elif kind == "pretrain" and augmentation == "crop_fixed":
        ops = [v2.Resize(resize_side, interpolation=bicubic, antialias=True), v2.RandomCrop(img_size),
               v2.RandomHorizontalFlip()]
    else:
        ops = [v2.RandomResizedCrop(img_size, scale=scale, interpolation=bicubic, antialias=True),
               v2.RandomHorizontalFlip()]
        if kind == "pretrain" and augmentation == "crop_rand_color_jitter":
            ops.append(v2.ColorJitter(0.4, 0.4, 0.4))
    return v2.Compose(gray + ops + tail)


def build_mixup(mixup: float, cutmix: float, smoothing: float, num_classes: int):
    """timm `Mixup` with the official fine-tuning settings, or None when both alphas are 0.

    Args:
        mixup: mixup alpha (0.8 in the paper).
        cutmix: cutmix alpha (1.0).
        smoothing: label smoothing folded into the soft targets (0.1).
        num_classes: number of classes.
    """
    if mixup <= 0 and cutmix <= 0:
        return None
    from timm.data import Mixup
    return Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, cutmix_minmax=None, prob=1.0, switch_prob=0.5,
                 mode="batch", label_smoothing=smoothing, num_classes=num_classes)


# ----------------------------------------------------------------------------------------------------
# loaders

def _rank_indices(n: int, shuffle: bool, seed: int, epoch: int, rank: int, world_size: int,
                  drop_last: bool) -> torch.Tensor:
    """`DistributedSampler`'s indices for one rank and epoch."""
    if shuffle:
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    if drop_last and n % world_size:
        total = (n // world_size) * world_size
        order = order[:total]
    else:
        total = math.ceil(n / world_size) * world_size
        pad = total - n
        if pad:
            order = torch.cat([order, order.repeat(math.ceil(pad / n))[:pad]])
    return order[rank:total:world_size]


class _Resumable:
    """Epoch / position bookkeeping shared by both loaders."""

    def __init__(self, num_samples: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int,
                 rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        per_rank = len(_rank_indices(num_samples, False, 0, 0, rank, world_size, drop_last))
        self._per_rank = per_rank
        if len(self) == 0:
            raise UserError.message(
                "batch_size", f"batch_size={batch_size} is larger than the {per_rank} images per process "
                              f"of this split (drop_last): use a smaller batch or a larger subset")

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self._per_rank // self.batch_size if self.drop_last else math.ceil(self._per_rank / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a different epoch rewinds to its first batch, the same one keeps the position."""
        if epoch != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def skip(self, n_batches: int) -> None:
        """Start the current epoch at batch `n_batches` (they are not produced)."""
        if not 0 <= n_batches <= len(self):
            raise ValueError(f"cannot skip {n_batches} of {len(self)} batches")
        self.position = int(n_batches)

    def state_dict(self) -> dict[str, int]:
        """`{"epoch", "batch"}`: batches of `epoch` consumed so far."""
        return {"epoch": self.epoch, "batch": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.skip(int(state["batch"]))

    def _batches(self) -> list[torch.Tensor]:
        idx = _rank_indices(self.num_samples, self.shuffle, self.seed, self.epoch, self.rank, self.world_size,
                            self.drop_last)
        return list(idx[:len(self) * self.batch_size].split(self.batch_size)) if self.drop_last else list(
            idx.split(self.batch_size))


class InMemoryLoader(_Resumable):
    """Batches of an `InMemoryDataset`, augmented as whole batches.

    Args:
        dataset: the dataset.
        batch_size: images per batch on this process.
        shuffle: a new permutation each epoch (from `seed + epoch`).
        drop_last: drop the last incomplete batch (and trim to a multiple of `world_size`).
        seed: run seed: order and augmentation come from it.
        transform: `TensorTransform`-like callable `(uint8 [B, C, H, W], torch.Generator) -> float`.
        rank: this process's rank.
        world_size: number of processes.
        device: where the batch is augmented (the loader moves the uint8 batch there).
    """

    def __init__(self, dataset: InMemoryDataset, batch_size: int, shuffle: bool, drop_last: bool, seed: int,
                 transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor], rank: int = 0,
                 world_size: int = 1, device: str | torch.device = "cpu"):
        self.dataset, self.transform, self.device = dataset, transform, torch.device(device)
        super().__init__(len(dataset), batch_size, shuffle, drop_last, seed, rank, world_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self._batches()
        while self.position < len(batches):
            b = self.position
            idx = batches[b]
            g = _generator(self.seed, self.epoch, self.rank, b)
            images = self.dataset.images[idx].to(self.device, non_blocking=True)
            x = self.transform(images, g)
            y = self.dataset.labels[idx].to(self.device, non_blocking=True)
            self.position = b + 1
            yield x, y


class _SeededSamples(Dataset):
    """Applies the transform to sample `(index, seed)` with the global RNGs seeded from `seed`."""

    def __init__(self, dataset: FolderDataset, transform: Callable):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        i, seed = item
        img, label = self.dataset.load(i)
        with _global_rng_scope(seed):
            return self.transform(img), label


class FolderLoader(_Resumable):
    """Batches of a `FolderDataset` from a torch `DataLoader` with workers.

    Each image's augmentation is seeded from `(seed, epoch, its position in the epoch)`, so the
    result does not depend on the number of workers or on where a run was resumed.

    Args: as `InMemoryLoader`, with `transform` a per-image callable and `num_workers` DataLoader workers.
    """

    def __init__(self, dataset: FolderDataset, batch_size: int, shuffle: bool, drop_last: bool, seed: int,
                 transform: Callable, rank: int = 0, world_size: int = 1, num_workers: int = 8,
                 pin_memory: bool = False):
        self.dataset, self.transform = dataset, transform
        self.num_workers, self.pin_memory = num_workers, pin_memory
        super().__init__(len(dataset), batch_size, shuffle, drop_last, seed, rank, world_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = self.position
        batches = self._batches()[start:]
        seeded = [[(int(i), _mix_seed(self.seed, self.epoch, self.rank, start + b, j)) for j, i in enumerate(batch)]
                  for b, batch in enumerate(batches)]
        if not seeded:
            return
        loader = DataLoader(_SeededSamples(self.dataset, self.transform), batch_sampler=seeded,
                            num_workers=self.num_workers, pin_memory=self.pin_memory,
                            persistent_workers=False, prefetch_factor=2 if self.num_workers else None)
        for b, (x, y) in enumerate(loader):
            self.position = start + b + 1
            yield x, y


def build_loader(
        dataset: InMemoryDataset | FolderDataset,
        kind: str,
        *,
        batch_size: int,
        img_size: int,
        in_chans: int,
        augmentation: str = "crop_rand",
        randaug: str | None = "rand-m9-mstd0.5-inc1",
        reprob: float = 0.25,
        crop_min_scale: float | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 8,
        shuffle: bool | None = None,
        drop_last: bool | None = None,
        device: str | torch.device = "cpu",
) -> InMemoryLoader | FolderLoader:
    """The loader for a stage: in-memory batched augmentation, or a DataLoader over image files.

    Args:
        dataset: from `build_dataset`.
        kind: `pretrain`, `finetune`, `linprobe` or `eval` (selects the transform).
        batch_size: images per batch on this process.
        img_size: model input side.
        in_chans: model input channels.
        augmentation: pretraining augmentation (one of `AUGMENTATIONS`).
        randaug: fine-tuning RandAugment string, or None.
        reprob: fine-tuning random-erasing probability.
        crop_min_scale: RandomResizedCrop lower area bound (None = official per stage).
        seed: run seed.
        rank: this process's rank.
        world_size: number of processes.
        num_workers: DataLoader workers (folder path only).
        shuffle: default: True except for `eval`.
        drop_last: default: True except for `eval`.
        device: augmentation device (in-memory path only).
    """
    check_choice("kind", kind, TRANSFORM_KINDS)
    shuffle = kind != "eval" if shuffle is None else shuffle
    drop_last = kind != "eval" if drop_last is None else drop_last
    args = dict(img_size=img_size, in_chans=in_chans, mean=dataset.mean, std=dataset.std,
                augmentation=augmentation, randaug=randaug, reprob=reprob, crop_min_scale=crop_min_scale)
    if isinstance(dataset, InMemoryDataset):
        return InMemoryLoader(dataset, batch_size, shuffle, drop_last, seed, build_tensor_transform(kind, **args),
                              rank=rank, world_size=world_size, device=device)
    return FolderLoader(dataset, batch_size, shuffle, drop_last, seed, build_folder_transform(kind, **args),
                        rank=rank, world_size=world_size, num_workers=num_workers,
                        pin_memory=torch.cuda.is_available())
