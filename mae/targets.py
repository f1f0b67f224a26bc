"""Reconstruction targets (Table 1d of the paper): pixel, norm_pixel, pca, token.

A target turns images and their patches into what the decoder predicts per patch, and scores the
prediction on removed patches only. The decoder's output width is `target.out_dim`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .choices import TARGETS, check_pca_components
from .errors import UserError, check_choice


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalisation with the unbiased variance (official `norm_pix_loss`).

    Args:
        patches: [..., P] patch pixels.
        eps: added to the variance.

    Returns:
        [..., P] `(t - mean) / sqrt(var + eps)`.
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=True)
    return (patches - mean) / (var + eps) ** 0.5


def loss_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype a loss is computed in: at least float32, never below any input (float64 stays float64)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype) if t.is_floating_point() else dtype
    return dtype


def masked_mean(per_patch: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of a [N, L] per-patch loss over removed patches (mask 1); 0 when nothing is removed."""
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


class PixelTarget(nn.Module):
    """Raw (normalised-image) pixels of each patch; MSE on removed patches.

    Args:
        patch_dim: p * p * C.
    """

    def __init__(self, patch_dim: int):
        super().__init__()
        self.out_dim = patch_dim

    def forward(self, imgs: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """imgs: [N, C, H, W]; patches: [N, L, P] -> target [N, L, out_dim]."""
        return patches

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """pred, target: [N, L, out_dim]; mask: [N, L], 1 = removed."""
        dtype = loss_dtype(pred, target)
        return masked_mean(((pred.to(dtype) - target.to(dtype)) ** 2).mean(dim=-1), mask)


class NormPixelTarget(PixelTarget):
    """Pixels normalised per patch by their own mean and unbiased variance."""

    def forward(self, imgs: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        return normalize_patches(patches.to(loss_dtype(patches)))


class PCATarget(PixelTarget):
    """Top-k PCA coefficients of each patch; the basis is fitted on training patches by `fit`.

    Args:
        patch_dim: p * p * C.
        num_components: k (at most patch_dim).
    """

    def __init__(self, patch_dim: int, num_components: int):
        super().__init__(patch_dim)
        self.out_dim = check_pca_components(num_components, patch_dim)
        self.register_buffer("mean", torch.zeros(patch_dim))
        self.register_buffer("components", torch.zeros(num_components, patch_dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, patches: torch.Tensor) -> None:
        """patches: [M, P] training patches (M >= k)."""
        patches = patches.reshape(-1, patches.shape[-1]).to(torch.float64)
        if patches.shape[-1] != self.mean.numel() or patches.shape[0] < self.out_dim:
            raise UserError("patches", tuple(patches.shape),
                            f"a tensor [M, {self.mean.numel()}] with M >= pca_components={self.out_dim}")
        mean = patches.mean(dim=0)
        _, _, vh = torch.linalg.svd(patches - mean, full_matrices=False)
        self.mean.copy_(mean)
        self.components.copy_(vh[: self.out_dim])
        self.fitted.fill_(True)

    def forward(self, imgs: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        if patches.device.type != "meta" and not bool(self.fitted):
            raise UserError.message("model.target", "model.target='pca' needs a basis: call model.fit_pca(patches) first")
        dtype = loss_dtype(patches)
        return (patches.to(dtype) - self.mean.to(dtype)) @ self.components.t().to(dtype)


class TokenTarget(nn.Module):
    """Discrete token ids from a frozen tokenizer; cross-entropy on removed patches.

    Args:
        tokenizer: module mapping imgs [N, C, H, W] to ids [N, L] long in [0, vocab_size).
        vocab_size: number of token ids (the decoder's output width).
    """

    def __init__(self, tokenizer: nn.Module | None, vocab_size: int | None):
        super().__init__()
        if not isinstance(tokenizer, nn.Module):
            raise UserError("model.tokenizer", tokenizer, "an nn.Module mapping imgs [N, C, H, W] to ids [N, L] "
                            "when model.target='token'")
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 2:
            raise UserError("model.token_vocab_size", vocab_size, "an integer >= 2 when model.target='token'")
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.out_dim = vocab_size

    def train(self, mode: bool = True) -> "TokenTarget":
        super().train(mode)
        self.tokenizer.eval()
        return self

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        ids = self.tokenizer(imgs)
        if tuple(ids.shape) != tuple(patches.shape[:2]) or ids.dtype != torch.long:
            raise UserError("model.tokenizer", type(self.tokenizer).__name__,
                            f"a module returning long ids of shape [N, L] = {list(patches.shape[:2])}, "
                            f"got {ids.dtype} {list(ids.shape)}")
        return ids

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """pred: [N, L, vocab] logits; target: [N, L] ids; mask: [N, L], 1 = removed."""
        per_patch = F.cross_entropy(pred.to(loss_dtype(pred)).flatten(0, 1), target.flatten(), reduction="none")
        return masked_mean(per_patch.view_as(mask), mask)


def create_target(
        target: str,
        patch_dim: int,
        pca_components: int = 96,
        tokenizer: nn.Module | None = None,
        token_vocab_size: int | None = None,
) -> nn.Module:
    """Build a reconstruction target by name.

    Args:
        target: 'pixel', 'norm_pixel', 'pca' or 'token'.
        patch_dim: p * p * C.
        pca_components: k for 'pca'.
        tokenizer: imgs -> ids module for 'token'.
        token_vocab_size: vocabulary size for 'token'.
    """
    check_choice("model.target", target, TARGETS)
    if target == "pixel":
        return PixelTarget(patch_dim)
    if target == "norm_pixel":
        return NormPixelTarget(patch_dim)
    if target == "pca":
        return PCATarget(patch_dim, pca_components)
    return TokenTarget(tokenizer, token_vocab_size)
