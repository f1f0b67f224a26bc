"""Patch masking: random (official), block-wise (BEiT-style) and grid-wise (Fig. 6 of the paper).

Every strategy removes the same number of patches from every sample, `L - int(L * (1 - mask_ratio))`,
so the visible tokens of a batch form one rectangular tensor. Masks are 0 = kept, 1 = removed, in
original patch order. A strategy is expressed as `ids_shuffle` [N, L]: kept patch indices first.
"""

from __future__ import annotations

import math

import torch

from .choices import GRID_MASK_RATIO, MASK_SAMPLINGS, check_mask_grid, check_mask_ratio
from .errors import UserError, check_choice

_CROSS = torch.tensor([[[[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]]])


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Visible patches per sample, `int(L * (1 - mask_ratio))` as in the official code."""
    return int(num_patches * (1 - mask_ratio))


def random_masking(
        batch_size: int,
        num_patches: int,
        mask_ratio: float,
        noise: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Official per-sample random masking: argsort of uniform noise, small noise = kept.

    Args:
        batch_size: N.
        num_patches: L.
        mask_ratio: fraction removed; 0 keeps the original order (no shuffle).
        noise: optional [N, L] scores for a deterministic mask.
        device: device of the result.
        generator: RNG for the noise.

    Returns:
        ids_shuffle: [N, L] long, kept patches first.
    """
    if noise is not None:
        if tuple(noise.shape) != (batch_size, num_patches):
            raise UserError("noise", tuple(noise.shape), f"a tensor of shape [N, L] = [{batch_size}, {num_patches}]")
        device = noise.device
    if mask_ratio == 0:
        return torch.arange(num_patches, device=device).expand(batch_size, -1).contiguous()
    if noise is None:
        noise = torch.rand(batch_size, num_patches, device=device, generator=generator)
    return torch.argsort(noise, dim=1)


def block_masking(
        batch_size: int,
        grid_size: tuple[int, int],
        mask_ratio: float,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
        min_num_patches: int = 16,
        min_aspect: float = 0.3,
        max_fails: int = 10,
) -> torch.Tensor:
    """BEiT-style block-wise masking, evened out to exactly `L - int(L * (1 - r))` removed patches.

    Rectangles of random area (>= min_num_patches, <= what is left to mask) and aspect ratio in
    [min_aspect, 1/min_aspect] are added while each adds between 1 and the remaining count. A sample
    that still falls short grows its masked region by neighbouring patches (4-connected), so every
    removed region stays one contiguous piece.

    Args:
        batch_size: N.
        grid_size: (gh, gw) patch grid.
        mask_ratio: fraction removed.
        device: device of the result.
        generator: RNG (on `device`).
        min_num_patches: smallest rectangle area tried.
        min_aspect: smallest aspect ratio h/w tried.
        max_fails: consecutive rejected rectangles after which a sample stops proposing (as BEiT).

    Returns:
        mask: [N, gh * gw] bool, True = removed.
    """
    gh, gw = grid_size
    num_patches = gh * gw
    target = num_patches - num_kept(num_patches, mask_ratio)
    mask = torch.zeros(batch_size, gh, gw, dtype=torch.bool, device=device)
    if target == 0:
        return mask.flatten(1)
    rows = torch.arange(gh, device=device).view(1, gh, 1)
    cols = torch.arange(gw, device=device).view(1, 1, gw)
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(batch_size, device=device, generator=generator)

    fails = torch.zeros(batch_size, dtype=torch.long, device=device)
    while True:
        remaining = target - mask.flatten(1).sum(1)
        active = (remaining > 0) & (fails < max_fails)
        if not bool(active.any()):
            break
        area = uniform(torch.full_like(remaining, min(min_num_patches, target), dtype=torch.float), remaining.float())
        aspect = uniform(*log_aspect).exp()
        h = (area * aspect).sqrt().round().long()
        w = (area / aspect).sqrt().round().long()
        fits = (h >= 1) & (w >= 1) & (h < gh) & (w < gw)
        top = (uniform(0.0, 1.0) * (gh - h + 1).clamp_min(1)).floor().long()
        left = (uniform(0.0, 1.0) * (gw - w + 1).clamp_min(1)).floor().long()
        rect = ((rows >= top.view(-1, 1, 1)) & (rows < (top + h).view(-1, 1, 1))
                & (cols >= left.view(-1, 1, 1)) & (cols < (left + w).view(-1, 1, 1)))
        new = (rect & ~mask).flatten(1).sum(1)
        accept = active & fits & (new > 0) & (new <= remaining)
        mask |= rect & accept.view(-1, 1, 1)
        fails = torch.where(accept, 0, fails + 1)

    flat = mask.flatten(1)
    while True:
        remaining = target - flat.sum(1)
        if not bool((remaining > 0).any()):
            break
        grid = flat.view(batch_size, 1, gh, gw).float()
        cross = torch.nn.functional.conv2d(grid, _CROSS.to(device=grid.device), padding=1)
        frontier = (cross.flatten(1) > 0) & ~flat
        empty = flat.sum(1) == 0
        if bool(empty.any()):  # no rectangle fitted: grow from one random seed patch
            seed = torch.rand(batch_size, num_patches, device=device, generator=generator).argmax(1)
            frontier[empty] = torch.nn.functional.one_hot(seed[empty], num_patches).bool()
        score = torch.rand(batch_size, num_patches, device=device, generator=generator).masked_fill(~frontier, -1.0)
        order = score.argsort(dim=1, descending=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(num_patches, device=device).expand_as(order))
        take = (score >= 0) & (rank < remaining.view(-1, 1))
        flat = flat | take
    return flat


def grid_masking(
        batch_size: int,
        grid_size: tuple[int, int],
        mask_ratio: float = GRID_MASK_RATIO,
        device: torch.device | str | None = None,
) -> torch.Tensor:
    """Grid-wise masking: keep the top-left patch of every 2x2 cell.

    Args:
        batch_size: N.
        grid_size: (gh, gw) patch grid, both even.
        mask_ratio: must be 0.75.
        device: device of the result.

    Returns:
        mask: [N, gh * gw] bool, True = removed.
    """
    gh, gw = grid_size
    check_mask_ratio(mask_ratio, "grid")
    check_mask_grid("grid", grid_size)
    rows = torch.arange(gh, device=device).view(gh, 1)
    cols = torch.arange(gw, device=device).view(1, gw)
    keep = (rows % 2 == 0) & (cols % 2 == 0)
    return (~keep).flatten().expand(batch_size, -1).contiguous()


def ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """ids_shuffle for a boolean mask: kept patches first, each group in original order.

    Args:
        mask: [N, L] bool, True = removed.

    Returns:
        ids_shuffle: [N, L] long.
    """
    return torch.argsort(mask.to(torch.int8), dim=1, stable=True)


def sample_ids_shuffle(
        mask_sampling: str,
        batch_size: int,
        grid_size: tuple[int, int],
        mask_ratio: float,
        noise: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int]:
    """Sample one mask per image with the chosen strategy.

    Args:
        mask_sampling: 'random', 'block' or 'grid'.
        batch_size: N.
        grid_size: (gh, gw) patch grid.
        mask_ratio: fraction removed.
        noise: optional [N, L] scores (random sampling only; grid masks are fixed anyway).
        device: device of the result.
        generator: RNG.

    Returns:
        ids_shuffle: [N, L] long, kept patches first; len_keep: visible patches per sample.
    """
    check_choice("model.mask_sampling", mask_sampling, MASK_SAMPLINGS)
    check_mask_ratio(mask_ratio, mask_sampling)
    num_patches = grid_size[0] * grid_size[1]
    len_keep = num_kept(num_patches, mask_ratio)
    if mask_sampling == "random":
        return random_masking(batch_size, num_patches, mask_ratio, noise, device, generator), len_keep
    if mask_sampling == "block":
        if noise is not None:
            raise UserError("noise", "a tensor", "None with model.mask_sampling='block' (pass a torch.Generator instead)")
        return ids_from_mask(block_masking(batch_size, grid_size, mask_ratio, device, generator)), len_keep
    return ids_from_mask(grid_masking(batch_size, grid_size, mask_ratio, device)), len_keep


def apply_masking(x: torch.Tensor, ids_shuffle: torch.Tensor, len_keep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the first `len_keep` tokens of `ids_shuffle`.

    Args:
        x: [N, L, D] sequence.
        ids_shuffle: [N, L] long, kept patches first.
        len_keep: visible tokens per sample.

    Returns:
        x_kept: [N, len_keep, D]; mask: [N, L] float, 0 = kept, 1 = removed, original order;
        ids_restore: [N, L] long, the inverse permutation of ids_shuffle.
    """
    N, L, D = x.shape
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_kept = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).expand(-1, -1, D))
    mask = (ids_restore >= len_keep).float()
    return x_kept, mask, ids_restore
