"""Datasets, transforms and resumable loaders for pretraining, fine-tuning and linear probing.

Two paths, one interface:

* Small datasets (`fashion_mnist`, `cifar10`, `cifar100`, `synthetic`) are held in memory as uint8
  `[N, C, H, W]` (`InMemoryDataset`). `InMemoryLoader` draws batches of indices and augments the
  whole batch with tensor ops (`TensorTransform`: crops and flips as one `affine_grid` /
  `grid_sample`), in the main process, with no workers.
* Image folders (`imagenet`, `image_folder`: `root/{train,val}/<class>/<image>`) go through a torch
  `DataLoader` with workers and per-image torchvision v2 / timm transforms (`FolderLoader`).

Both loaders yield `(images, labels)`: images float32 `[B, in_chans, H, W]` (`img_size`: a side or [H, W]),
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

Modules: `datasets` (what is read), `batch_transforms` (in-memory augmentation), `image_transforms`
(image-folder augmentation, Mixup), `loaders` (order, sharding, resume); every name is exported here.
"""

from mae.choices import AUGMENTATIONS, DATASETS, TRANSFORM_KINDS

from .batch_transforms import EVAL_CROP_PCT, TensorTransform, build_tensor_transform, rrc_scale
from .datasets import (
    DEFAULT_ROOTS, IMAGENET_MEAN, IMAGENET_STD, SYNTHETIC_CLASSES, SYNTHETIC_SIZES, VAL_SPLIT_SEED, FolderDataset,
    InMemoryDataset, build_dataset, held_out_indices,
)
from .image_transforms import build_folder_transform, build_mixup
from .loaders import FolderLoader, InMemoryLoader, build_loader

__all__ = [
    "DATASETS", "AUGMENTATIONS", "TRANSFORM_KINDS", "DEFAULT_ROOTS", "InMemoryDataset", "FolderDataset",
    "build_dataset", "held_out_indices", "TensorTransform", "build_tensor_transform", "build_folder_transform", "build_mixup",
    "InMemoryLoader", "FolderLoader", "build_loader",
]
