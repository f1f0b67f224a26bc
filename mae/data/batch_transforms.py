"""Batched tensor augmentations of the in-memory path: a whole uint8 batch per call, on any device."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from mae.choices import AUGMENTATIONS, OFFICIAL_CROP_MIN_SCALE, TRANSFORM_KINDS, image_hw
from mae.config import FinetuneConfig, PretrainConfig
from mae.errors import UserError, check_choice

from mae.seeding import global_rng_scope

EVAL_CROP_PCT = 224 / 256  # official eval resize ratio (ImageNet); also the crop_fixed fraction
_LUMA = (0.299, 0.587, 0.114)


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
        raise UserError("finetune.randaug", spec, f"a timm RandAugment string like {FinetuneConfig.randaug!r}, or null")
    num_ops, magnitude = 2, 10
    for p in parts[1:]:
        if p.startswith("mstd") or p.startswith("inc") or p.startswith("mmax") or p.startswith("p"):
            continue
        if p.startswith("m") and p[1:].isdigit():
            magnitude = int(p[1:])
        elif p.startswith("n") and p[1:].isdigit():
            num_ops = int(p[1:])
        else:
            raise UserError("finetune.randaug", spec, f"a timm RandAugment string like {FinetuneConfig.randaug!r}")
    return num_ops, min(magnitude, 10)


class TensorTransform:
    """Augment a whole uint8 batch with tensor ops; randomness only from the given generator.

    Args:
        img_size: output side, or (height, width).
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
        fixed_frac: side fraction for `crop='fixed'` (of the largest box of the output's shape).
        interpolation: `bicubic` or `bilinear`.
    """

    def __init__(self, img_size: int | tuple[int, int], in_chans: int, mean: Sequence[float], std: Sequence[float], *,
                 crop: str = "rrc", scale: tuple[float, float] = (0.2, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True, color_jitter: float = 0.0,
                 randaug: str | None = None, reprob: float = 0.0, fixed_frac: float = EVAL_CROP_PCT,
                 interpolation: str = "bicubic"):
        check_choice("crop", crop, ("rrc", "fixed", "none"))
        self.out_hw, self.in_chans = image_hw(img_size), in_chans
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
            out_h, out_w = self.out_hw
            if out_h == out_w:
                bw = bh = self.fixed_frac * min(h, w)
            else:  # the largest box of the output's aspect that fits, scaled by fixed_frac
                bw = self.fixed_frac * min(w, h * out_w / out_h)
                bh = bw * out_h / out_w
            u = torch.rand(n, 2, generator=g)
            return torch.stack([u[:, 0] * (w - bw), u[:, 1] * (h - bh),
                                torch.full((n,), bw), torch.full((n,), bh)], 1)
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
        """x: [N, C, H, W] float in [0, 1]; boxes [N, 4]; flips [N] bool -> [N, C, out_h, out_w]."""
        n, c, h, w = x.shape
        out_h, out_w = self.out_hw
        if self.crop == "none" and not flips.any():
            if (h, w) == (out_h, out_w):
                return x
            return F.interpolate(x, size=(out_h, out_w), mode=self.interpolation, align_corners=False,
                                 antialias=True).clamp_(0, 1)
        x0, y0, cw, ch = boxes.double().unbind(1)
        sx = cw / w * torch.where(flips, -1.0, 1.0).double()
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = sx
        theta[:, 0, 2] = (2 * x0 + cw) / w - 1
        theta[:, 1, 1] = ch / h
        theta[:, 1, 2] = (2 * y0 + ch) / h - 1
        grid = F.affine_grid(theta.to(x.dtype).to(x.device), [n, c, out_h, out_w], align_corners=False)
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
        """images: uint8 [N, C, H, W] -> float32 [N, in_chans, out_h, out_w], normalised."""
        n, _, h, w = images.shape
        boxes = self._crop_boxes(n, h, w, g)
        flips = (torch.rand(n, generator=g) < 0.5) if self.flip else torch.zeros(n, dtype=torch.bool)
        x = images.float().div_(255)
        x = _adapt_channels(self._resample(x, boxes, flips.to(x.device)), self.in_chans)
        if self.randaug is not None:
            x8 = x.mul(255).round_().to(torch.uint8)
            with global_rng_scope(int(torch.randint(0, 2 ** 62, (1,), generator=g)), x.device):
                x8 = torch.stack([self.randaug(img) for img in x8])
            x = x8.float().div_(255)
        if self.color_jitter > 0:
            x = self._jitter(x, g)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        if self.random_erasing is not None:
            with global_rng_scope(int(torch.randint(0, 2 ** 62, (1,), generator=g)), x.device):
                self.random_erasing.device = x.device
                x = self.random_erasing(x)
        return x


def rrc_scale(kind: str, crop_min_scale: float | None = None) -> tuple[float, float]:
    """RandomResizedCrop area range of a stage: official (0.2, 1) for pre-training, (0.08, 1) for
    fine-tuning and linear probing, unless `crop_min_scale` replaces the lower bound (small images such as
    28x28 Fashion-MNIST lose the object in an 8% crop)."""
    return (OFFICIAL_CROP_MIN_SCALE[kind] if crop_min_scale is None else crop_min_scale, 1.0)


def build_tensor_transform(
        kind: str,
        *,
        img_size: int | tuple[int, int],
        in_chans: int,
        mean: Sequence[float],
        std: Sequence[float],
        augmentation: str = PretrainConfig.augmentation,
        randaug: str | None = FinetuneConfig.randaug,
        reprob: float = FinetuneConfig.reprob,
        crop_min_scale: float | None = None,
) -> TensorTransform:
    """The in-memory transform for a stage.

    Args:
        kind: `pretrain` (uses `augmentation`), `finetune` (uses `randaug`, `reprob`), `linprobe`, `eval`.
        img_size: output side, or (height, width).
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
