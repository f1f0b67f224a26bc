"""Datasets: in-memory uint8 sets (Fashion-MNIST idx files, CIFAR, synthetic gratings) and image folders.

Fashion-MNIST is read from the idx files themselves (`train-images-idx3-ubyte.gz`, ... as Debian's
fashion-mnist package installs them): torchvision's `FashionMNIST` wants uncompressed files under
`root/FashionMNIST/raw/` (it would download and unpack into the read-only system folder), and its
`read_image_file` opens plain files only, so neither reads `/usr/share/datasets/fashion-mnist`.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mae.choices import (CIFAR_FOLDERS, DATASETS, DEFAULT_ROOTS, check_data_root, check_img_size, check_in_chans,
                         cifar_folder_error, data_root_error, fashion_mnist_files, image_hw)
from mae.errors import UserError, check_choice
from mae.seeding import generator, mix_seed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# per-channel statistics of each training set, on [0, 1] pixels
_STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
SYNTHETIC_SIZES = {"train": 4096, "val": 1024}
# A synthetic set is generated in memory: at most this many bytes of uint8 pixels (data.*_subset x
# in_chans x img_size^2), generated in chunks of about _SYNTHETIC_CHUNK_BYTES so the float64 work
# arrays stay small. 2 GiB = 2.7 M images of 28x28x1, 14 k of 224x224x3.
SYNTHETIC_MAX_BYTES = 2 * 2**30
_SYNTHETIC_CHUNK_BYTES = 16 * 2**20
SYNTHETIC_CLASSES = 10
# The held-out permutation of `data.val_split` depends on this constant and the pool size only (never
# on run.seed), so every arm of an ablation and every seed holds out the same images.
VAL_SPLIT_SEED = 0x7661_6C73  # "vals"


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
        try:
            return self.folder.loader(path), label
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for damaged files
            raise UserError.message("data.root", f"image {path} cannot be read: {type(exc).__name__}: "
                                    f"{' '.join(str(exc).split())[:200]}") from None

    def check_headers(self, limit: int = 50_000) -> None:
        """Open the header of every image (up to `limit` of them), so a file that is not an image is
        named before training starts; damage past the header is named when the image is loaded."""
        from PIL import Image
        for i in self.indices[:limit]:
            path = self.folder.samples[i][0]
            try:
                with Image.open(path) as img:
                    img.size  # noqa: B018 - the header is parsed on open
            except Exception as exc:  # noqa: BLE001
                raise UserError.message("data.root", f"image {path} cannot be read: {type(exc).__name__}: "
                                        f"{' '.join(str(exc).split())[:200]}") from None

    def __getitem__(self, i: int):
        return self.load(i)


def _read_idx(path: Path) -> np.ndarray:
    """Read one idx file (MNIST format, optionally gzipped) into a numpy array; a damaged file is a
    UserError naming it and what is wrong."""
    def bad(what: str) -> UserError:
        return UserError.message("data.root", f"{path} is not a valid idx file: {what}")

    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except gzip.BadGzipFile as exc:
        raise bad(f"not a gzip file ({exc})") from None
    except EOFError:
        raise bad("the gzip stream is truncated") from None
    except (OSError, zlib.error) as exc:
        raise bad(f"cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    if len(data) < 4:
        raise bad(f"{len(data)} bytes, shorter than the 4-byte header")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise bad(f"header {data[:4].hex()} is not a uint8 idx header (0000 08 0N)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise bad("truncated inside the header")
    shape = struct.unpack(">" + "I" * ndim, data[4:header])
    expected = math.prod(shape)
    if len(data) - header != expected:
        raise bad(f"holds {len(data) - header} bytes of data, the header promises {expected} "
                  f"({'x'.join(map(str, shape))}): truncated or damaged")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _load_fashion_mnist(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    images, labels = (_read_idx(path) for path in fashion_mnist_files(root, split))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise data_root_error("fashion_mnist", root, f"{prefix} images [N, H, W] and labels [N] of one length "
                              f"(found {list(images.shape)} and {list(labels.shape)})")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _load_cifar(name: str, root: Path, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision import datasets
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        ds = cls(str(root), train=split == "train", download=download)
    except RuntimeError:  # torchvision's integrity check (a damaged folder), or a failed download
        raise cifar_folder_error(name, root) from None
    except OSError as exc:  # the download: no network (a cluster's compute node), a proxy, a full disk
        if not download:
            raise
        reason = " ".join(str(getattr(exc, "reason", exc)).split())
        raise UserError.message("data.download", f"data.download=true could not fetch {name} into {root} ({reason}): "
                                "allowed a machine that reaches the download server, or torchvision's folder "
                                f"{CIFAR_FOLDERS[name]}/ there with data.download=false") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(ds.targets, dtype=torch.int64)


def _synthetic(n: int, img_size: int | tuple[int, int], in_chans: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Oriented sinusoidal gratings, one orientation per class, with random frequency, phase,
    contrast, colour tint and pixel noise: learnable, not trivially separable per pixel. `img_size`:
    a square's side or (height, width).

    The pixel noise is drawn chunk by chunk from the same generator; chunks of a multiple of 16 values
    give exactly the values of one draw of the whole tensor (torch's CPU normal sampler works in blocks
    of 16), so the images do not depend on the chunk size.
    """
    height, width = image_hw(img_size)
    # A square keeps the generator of the square-only version (its images are unchanged).
    g = generator(seed, n, height, in_chans) if height == width else generator(seed, n, height, width, in_chans)
    labels = torch.randint(0, SYNTHETIC_CLASSES, (n,), generator=g)
    theta = labels.double() * math.pi / SYNTHETIC_CLASSES + torch.randn(n, generator=g).double() * math.radians(4)
    freq = 1.5 + 3.0 * torch.rand(n, generator=g).double()       # cycles per image side
    phase = 2 * math.pi * torch.rand(n, generator=g).double()
    contrast = 0.25 + 0.2 * torch.rand(n, generator=g).double()
    y, x = torch.meshgrid((torch.arange(height, dtype=torch.float64) + 0.5) / height,
                          (torch.arange(width, dtype=torch.float64) + 0.5) / width, indexing="ij")
    tint = 0.6 + 0.4 * torch.rand(n, in_chans, 1, 1, generator=g).double()
    images = torch.empty(n, in_chans, height, width, dtype=torch.uint8)
    per_image = in_chans * height * width
    chunk = max(16, _SYNTHETIC_CHUNK_BYTES // per_image // 16 * 16)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        if 0 < n - b < 16:  # the last chunk keeps at least 16 images, as one draw would end
            b = n
        proj = x[None] * torch.cos(theta[a:b])[:, None, None] + y[None] * torch.sin(theta[a:b])[:, None, None]
        wave = torch.sin(2 * math.pi * freq[a:b, None, None] * proj + phase[a:b, None, None])
        img = 0.5 + contrast[a:b, None, None, None] * wave[:, None] * tint[a:b]
        img = img + 0.08 * torch.randn(b - a, in_chans, height, width, generator=g).double()
        images[a:b] = (img.clamp(0, 1) * 255).round().to(torch.uint8)
        if b == n:
            break
    return images, labels


def _synthetic_stats(img_size: int | tuple[int, int], in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std measured on a fixed 512-image reference draw (independent of split, seed, subset)."""
    images, _ = _synthetic(512, img_size, in_chans, seed=-1)
    x = images.double() / 255
    return tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).tolist())


def build_dataset(
        name: str,
        root: str | os.PathLike | None,
        split: str,
        *,
        img_size: int | tuple[int, int],
        in_chans: int,
        subset: int | None = None,
        download: bool = False,
        seed: int = 0,
        val_split: int | None = None,
) -> InMemoryDataset | FolderDataset:
    """Build one split of a dataset.

    Args:
        name: one of `DATASETS`.
        root: dataset folder; None uses `DEFAULT_ROOTS` (fashion_mnist) and is an error otherwise
            (except for `synthetic`, which needs none). ImageFolder sets need `root/{train,val}/<class>/`.
        split: `train` or `val` (the test split of fashion_mnist / cifar).
        img_size: model input side, or (height, width); in-memory images keep their size (the loader
            resizes), synthetic images are generated at this size.
        in_chans: model input channels; 1 <-> 3 is adapted by the loader, anything else must match.
        subset: keep N images: the first N for in-memory sets, N evenly spaced over the sorted folder
            for ImageFolder sets; for `synthetic`, the number generated (default 4096 train / 1024 val).
        download: let torchvision download CIFAR into `root`.
        seed: synthetic data seed (keep it fixed across runs that are compared).
        val_split: hold out this many training images (a fixed permutation, `held_out_indices`): `train`
            is the rest and `val` the held-out images; the test split is never read. `subset` then keeps
            the first N of the part (evenly spaced N for ImageNet folders); synthetic data generates
            its default training size (4096) and carves both parts from it.
    """
    check_choice("data.name", name, DATASETS)
    check_choice("split", split, ("train", "val"))
    height, width = check_img_size(img_size)
    check_in_chans(in_chans)
    if subset is not None and (not isinstance(subset, int) or subset < 1):
        raise UserError(f"data.{split}_subset", subset, "a positive integer or null")
    if val_split is not None and (not isinstance(val_split, int) or isinstance(val_split, bool) or val_split < 1):
        raise UserError("data.val_split", val_split, "a positive integer or null")
    # With a validation split both parts come from the training files.
    source_split = "train" if val_split is not None else split

    if name == "synthetic":
        n = SYNTHETIC_SIZES["train"] if val_split is not None else (subset or SYNTHETIC_SIZES[split])
        if n * in_chans * height * width > SYNTHETIC_MAX_BYTES:
            most = SYNTHETIC_MAX_BYTES // (in_chans * height * width)
            raise UserError(f"data.{split}_subset", n, f"at most {most} synthetic images of {in_chans}x{height}x"
                            f"{width} ({SYNTHETIC_MAX_BYTES // 2**30} GiB generated in memory)")
        images, labels = _synthetic(n, img_size, in_chans, seed=mix_seed(seed, 0 if source_split == "train" else 1))
        mean, std = _synthetic_stats(img_size, in_chans)
        if val_split is not None:
            part = _split_part(n, val_split, split)
            images, labels = images[part][:subset], labels[part][:subset]
        return InMemoryDataset(images, labels, SYNTHETIC_CLASSES, mean, std, name)

    root = check_data_root(name, root, source_split, download)
    if name in ("imagenet", "image_folder"):
        from torchvision.datasets import ImageFolder
        split_dir = root / source_split
        try:
            folder = ImageFolder(str(split_dir))
        except (FileNotFoundError, RuntimeError) as e:
            raise data_root_error(name, root, f"class sub-folders with images in {source_split}/",
                                  f"torchvision: {e}") from None
        pool = list(range(len(folder))) if val_split is None else _split_part(len(folder), val_split, split).tolist()
        indices = None if val_split is None else pool
        _check_subset(subset, len(pool), name, split)
        if subset is not None and subset < len(pool):
            indices = [pool[i] for i in np.linspace(0, len(pool) - 1, subset).round().astype(int).tolist()]
        dataset = FolderDataset(folder, indices, IMAGENET_MEAN, IMAGENET_STD)
        dataset.check_headers()
        return dataset

    if name == "fashion_mnist":
        images, labels = _load_fashion_mnist(root, source_split)
        num_classes = 10
    else:
        images, labels = _load_cifar(name, root, source_split, download)
        num_classes = 10 if name == "cifar10" else 100
    if val_split is not None:
        part = _split_part(len(images), val_split, split)
        images, labels = images[part], labels[part]
    _check_subset(subset, len(images), name, split)
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    mean, std = _STATS[name]
    return InMemoryDataset(images, labels, num_classes, mean, std, name)


def _check_subset(subset: int | None, size: int, name: str, split: str) -> None:
    """A subset larger than the split is an error, not a silent clamp (the run would not be what it says)."""
    if subset is not None and subset > size:
        raise UserError(f"data.{split}_subset", subset, f"at most the {size} images of {name}'s {split} split "
                        f"(or null for all of them)")


def held_out_indices(n: int, val_split: int) -> torch.Tensor:
    """The `val_split` indices (sorted) of a training pool of `n` images held out as the validation split.

    A fixed permutation of `VAL_SPLIT_SEED` and `n` (not of run.seed): every run over the same pool
    holds out the same images.
    """
    if val_split >= n:
        raise UserError("data.val_split", val_split, f"less than the {n} training images it is carved from")
    perm = torch.randperm(n, generator=generator(VAL_SPLIT_SEED, n))
    return perm[:val_split].sort().values


def _split_part(n: int, val_split: int, split: str) -> torch.Tensor:
    """Indices (sorted) of `split` in a pool of `n` training images: the held-out ones for 'val', the rest for 'train'."""
    held = held_out_indices(n, val_split)
    if split == "val":
        return held
    keep = torch.ones(n, dtype=torch.bool)
    keep[held] = False
    return keep.nonzero().flatten()


def check_num_classes(dataset: InMemoryDataset | FolderDataset, num_classes: int | None) -> int:
    """The number of classes a model head needs: `data.num_classes` when set (it must cover every label
    of the dataset), else the dataset's own count."""
    if num_classes is None:
        return dataset.num_classes
    if isinstance(dataset, InMemoryDataset):
        needed = int(dataset.labels.max()) + 1 if len(dataset) else 0
    else:
        needed = dataset.num_classes
    if num_classes < needed:
        raise UserError("data.num_classes", num_classes,
                        f"null or at least {needed} (the labels of {getattr(dataset, 'name', '') or 'the dataset'} go up to {needed - 1})")
    return num_classes
