"""Per-image transforms of the image-folder path (torchvision v2, timm `create_transform`) and timm `Mixup`."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from mae.choices import AUGMENTATIONS, TRANSFORM_KINDS, torchvision_size
from mae.config import FinetuneConfig, PretrainConfig
from mae.errors import check_choice

from .batch_transforms import EVAL_CROP_PCT, _adapt_stats, rrc_scale
from .datasets import IMAGENET_MEAN, IMAGENET_STD


def build_folder_transform(
        kind: str,
        *,
        img_size: int | tuple[int, int],
        in_chans: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augmentation: str = PretrainConfig.augmentation,
        randaug: str | None = FinetuneConfig.randaug,
        reprob: float = FinetuneConfig.reprob,
        crop_min_scale: float | None = None,
) -> Callable:
    """A PIL -> float tensor `[in_chans, H, W]` transform for a stage (bicubic).

    Args: as `build_tensor_transform`; fine-tuning uses `timm.data.create_transform` with the
    official arguments (no colour jitter, pixel-mode random erasing). Evaluation resizes the shorter
    side to img_size / 0.875 and center-crops; for a rectangle [H, W] it resizes to (H, W) / 0.875 and
    center-crops (H, W), as timm does.
    """
    from torchvision.transforms import v2
    from torchvision.transforms import InterpolationMode
    check_choice("kind", kind, TRANSFORM_KINDS)
    bicubic = InterpolationMode.BICUBIC
    mean, std = _adapt_stats(mean, std, in_chans)
    gray = [v2.Grayscale(num_output_channels=1)] if in_chans == 1 else []
    size = torchvision_size(img_size)
    resize_side = int(size / EVAL_CROP_PCT) if isinstance(size, int) else tuple(int(s / EVAL_CROP_PCT) for s in size)
    scale = rrc_scale(kind, crop_min_scale)
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if kind == "finetune":
        from timm.data import create_transform
        t = create_transform(input_size=size, is_training=True, scale=scale, color_jitter=None, auto_augment=randaug or None,
                             interpolation="bicubic", re_prob=reprob, re_mode="pixel", re_count=1,
                             mean=mean, std=std)
        return v2.Compose(gray + [t]) if gray else t
    if kind == "eval" or (kind == "pretrain" and check_choice(
            "pretrain.augmentation", augmentation, AUGMENTATIONS) == "none"):
        ops = [v2.Resize(resize_side, interpolation=bicubic, antialias=True), v2.CenterCrop(size)]
    elif kind == "pretrain" and augmentation == "crop_fixed":
        ops = [v2.Resize(resize_side, interpolation=bicubic, antialias=True), v2.RandomCrop(size),
               v2.RandomHorizontalFlip()]
    else:
        ops = [v2.RandomResizedCrop(size, scale=scale, interpolation=bicubic, antialias=True),
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
