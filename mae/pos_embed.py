"""Fixed 2D sin-cos position tables in the official MAE layout.

Layout (what official checkpoints were trained with): a meshgrid with the w coordinate first, the first
half of the channels encodes w and the second half h, each half is `[sin | cos]` (not interleaved),
frequencies `1 / 10000 ** (arange(D/4) / (D/4))`, and an all-zero row for the cls token.
timm's `build_sincos2d_pos_embed` uses another layout and does not load official weights correctly.
"""

from __future__ import annotations

import torch

from .choices import check_sincos_width
from .errors import UserError


def _to_2tuple(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def get_1d_sincos_pos_embed(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """1D sin-cos table.

    Args:
        embed_dim: output channels D (even).
        pos: positions, any shape with M elements.

    Returns:
        [M, D] float64 table, `[sin(pos * omega) | cos(pos * omega)]`.
    """
    if embed_dim % 2:
        raise UserError("embed_dim", embed_dim, "an even number for a sin-cos position table")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64, device=pos.device) / (embed_dim / 2.0)
    omega = 1.0 / 10000.0 ** omega
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([out.sin(), out.cos()], dim=1)


def get_2d_sincos_pos_embed(
        embed_dim: int,
        grid_size: int | tuple[int, int],
        cls_token: bool = False,
        device: torch.device | str | None = None,
) -> torch.Tensor:
    """2D sin-cos table in the official MAE layout.

    Args:
        embed_dim: output channels D (a multiple of 4).
        grid_size: patch grid, `gh` or `(gh, gw)`; rows are ordered h-major like patchify.
        cls_token: prepend an all-zero row for the cls token.
        device: where to build the table.

    Returns:
        [gh * gw (+1), D] float32 table.
    """
    check_sincos_width("embed_dim", embed_dim)
    gh, gw = _to_2tuple(grid_size)
    grid_h = torch.arange(gh, dtype=torch.float64, device=device)
    grid_w = torch.arange(gw, dtype=torch.float64, device=device)
    w_coord, h_coord = torch.meshgrid(grid_w, grid_h, indexing="xy")  # each [gh, gw]
    emb = torch.cat([
        get_1d_sincos_pos_embed(embed_dim // 2, w_coord),
        get_1d_sincos_pos_embed(embed_dim // 2, h_coord),
    ], dim=1)
    if cls_token:
        emb = torch.cat([emb.new_zeros(1, embed_dim), emb], dim=0)
    return emb.float()
