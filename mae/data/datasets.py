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

from mae.choices import DATASETS, check_in_chans
from mae.errors import UserError, check_choice

from mae.seeding import generator, mix_seed

DEFAULT_ROOTS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# per-channel statistics of each training set, on [0, 1] pixels
_STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
SYNTHETIC_SIZES = {"train": 4096, "val": 1024}
SYNTHETIC_CLASSES = 10


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


def _missing_root(name: str, root: Path, expected: str) -> UserError:
    return UserError.message(
        "data.root", f"data.root={str(root)!r} is invalid for data.name={name!r}: expected {expected} there")


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
    found = {}
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = [root / f"{prefix}-{kind}.gz", root / f"{prefix}-{kind}"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise _missing_root("fashion_mnist", root,
                                f"{prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz (idx files)")
        found[kind] = _read_idx(path)
    images, labels = found["images-idx3-ubyte"], found["labels-idx1-ubyte"]
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise _missing_root("fashion_mnist", root, f"{prefix} images [N, H, W] and labels [N] of one length "
                            f"(found {list(images.shape)} and {list(labels.shape)})")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


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
    g = generator(seed, n, img_size, in_chans)
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
    check_in_chans(in_chans)
    if subset is not None and (not isinstance(subset, int) or subset < 1):
        raise UserError(f"data.{split}_subset", subset, "a positive integer or null")

    if name == "synthetic":
        n = subset or SYNTHETIC_SIZES[split]
        images, labels = _synthetic(n, img_size, in_chans, seed=mix_seed(seed, 0 if split == "train" else 1))
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
        dataset = FolderDataset(folder, indices, IMAGENET_MEAN, IMAGENET_STD)
        dataset.check_headers()
        return dataset

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
