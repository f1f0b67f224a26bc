"""Exactly resumable, sharded loaders: in-memory batches or a DataLoader over image files."""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mae.choices import TRANSFORM_KINDS
from mae.config import FinetuneConfig, PretrainConfig
from mae.errors import UserError, check_choice

from mae.seeding import generator, global_rng_scope, mix_seed
from .batch_transforms import build_tensor_transform
from .datasets import FolderDataset, InMemoryDataset
from .image_transforms import build_folder_transform


def _rank_indices(n: int, shuffle: bool, seed: int, epoch: int, rank: int, world_size: int,
                  drop_last: bool) -> torch.Tensor:
    """`DistributedSampler`'s indices for one rank and epoch (its own arithmetic: the permutation of
    `seed + epoch`, padding by repetition or trimming to a multiple of `world_size`, every
    `world_size`-th index from `rank`)."""
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                 drop_last=drop_last)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.int64)


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
            g = generator(self.seed, self.epoch, self.rank, b)
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
        with global_rng_scope(seed):
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
        seeded = [[(int(i), mix_seed(self.seed, self.epoch, self.rank, start + b, j)) for j, i in enumerate(batch)]
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
        img_size: int | tuple[int, int],
        in_chans: int,
        augmentation: str = PretrainConfig.augmentation,
        randaug: str | None = FinetuneConfig.randaug,
        reprob: float = FinetuneConfig.reprob,
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
        img_size: model input side, or (height, width).
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
