"""Masked autoencoder with a ViT backbone (He et al., CVPR 2022), built on timm's Block and PatchEmbed.

State-dict keys and shapes equal the official `models_mae.py` ones for the default (pixel) target:
`cls_token, pos_embed, mask_token, decoder_pos_embed, patch_embed.proj.*, blocks.*, norm.*,
decoder_embed.*, decoder_blocks.*, decoder_norm.*, decoder_pred.*`. The encoder's names are timm
VisionTransformer's, so the encoder loads into `timm` for fine-tuning (see downstream.py).
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from .archs import MAE_ARCHS
from .choices import (
    MASK_SAMPLINGS, TARGETS, check_img_size, check_mask_grid, check_mask_ratio, check_positive_int, check_width,
)
from .config import ModelConfig
from .errors import UserError, check_choice
from .masking import apply_masking, sample_ids_shuffle
from .pos_embed import get_2d_sincos_pos_embed
from .targets import create_target


class MaskedAutoencoderViT(nn.Module):
    """Masked autoencoder: ViT encoder on visible patches, lightweight ViT decoder on all patches.

    The shape arguments have no defaults: named shapes are `mae.archs.MAE_ARCHS` (`create_mae_model`);
    the method's defaults are `mae.config.ModelConfig`'s.

    Args:
        img_size: input size, int or (H, W), each a multiple of patch_size.
        patch_size: patch side p.
        in_chans: image channels C.
        embed_dim: encoder width D.
        depth: encoder blocks.
        num_heads: encoder attention heads.
        decoder_embed_dim: decoder width.
        decoder_depth: decoder blocks.
        decoder_num_heads: decoder attention heads.
        mlp_ratio: MLP hidden width / block width.
        mask_ratio: default fraction of patches removed, in [0, 1).
        mask_sampling: 'random' (official), 'block' (BEiT-style) or 'grid' (keep 1 of each 2x2 cell).
        encoder_mask_tokens: the "encoder w/ [M]" variant: mask tokens replace removed patches before
            the encoder, which then processes all L positions.
        target: 'pixel', 'norm_pixel', 'pca' or 'token'.
        pca_components: k for the 'pca' target.
        tokenizer: imgs [N, C, H, W] -> ids [N, L] module for the 'token' target (kept frozen).
        token_vocab_size: number of token ids for the 'token' target.
        norm_layer: normalisation layer (LayerNorm, eps 1e-6).
    """

    def __init__(
            self,
            img_size: int | tuple[int, int],
            patch_size: int,
            in_chans: int,
            embed_dim: int,
            depth: int,
            num_heads: int,
            decoder_embed_dim: int,
            decoder_depth: int,
            decoder_num_heads: int,
            mlp_ratio: float,
            mask_ratio: float = ModelConfig.mask_ratio,
            mask_sampling: str = ModelConfig.mask_sampling,
            encoder_mask_tokens: bool = ModelConfig.encoder_mask_tokens,
            target: str = ModelConfig.target,
            pca_components: int = ModelConfig.pca_components,
            tokenizer: nn.Module | None = None,
            token_vocab_size: int | None = None,
            norm_layer: type[nn.Module] = partial(nn.LayerNorm, eps=1e-6),
    ):
        super().__init__()
        check_positive_int("model.patch_size", patch_size)
        check_positive_int("model.in_chans", in_chans)
        img_hw = check_img_size(img_size, patch_size)
        check_width("model.embed_dim", embed_dim, "model.num_heads", num_heads)
        check_width("model.decoder_embed_dim", decoder_embed_dim, "model.decoder_num_heads", decoder_num_heads)
        check_positive_int("model.depth", depth)
        if not isinstance(decoder_depth, int) or decoder_depth < 0:
            raise UserError("model.decoder_depth", decoder_depth, "a non-negative integer")
        check_choice("model.mask_sampling", mask_sampling, MASK_SAMPLINGS)
        check_mask_ratio(mask_ratio, mask_sampling)
        check_choice("model.target", target, TARGETS)
        self.mask_ratio = mask_ratio
        self.mask_sampling = mask_sampling
        self.encoder_mask_tokens = bool(encoder_mask_tokens)
        self.target = target
        self.in_chans = in_chans

        self.patch_embed = PatchEmbed(img_hw, patch_size, in_chans, embed_dim)
        self.grid_size: tuple[int, int] = tuple(self.patch_embed.grid_size)
        check_mask_grid(mask_sampling, self.grid_size)
        num_patches = self.patch_embed.num_patches
        self.patch_dim = patch_size ** 2 * in_chans
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim if self.encoder_mask_tokens else decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)])
        self.norm = norm_layer(embed_dim)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        recon_target = create_target(target, self.patch_dim, pca_components, tokenizer, token_vocab_size)
        self.decoder_pred = nn.Linear(decoder_embed_dim, recon_target.out_dim, bias=True)
        self.initialize_weights()
        self.recon_target = recon_target  # after init: a user tokenizer keeps its own weights

    def initialize_weights(self) -> None:
        """Official init: fixed sin-cos tables, xavier-uniform Linear / patch-embed, tokens N(0, 0.02)."""
        with torch.no_grad():
            self.pos_embed.copy_(get_2d_sincos_pos_embed(
                self.pos_embed.shape[-1], self.grid_size, cls_token=True, device=self.pos_embed.device)[None])
            self.decoder_pos_embed.copy_(get_2d_sincos_pos_embed(
                self.decoder_pos_embed.shape[-1], self.grid_size, cls_token=True,
                device=self.decoder_pos_embed.device)[None])
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size[0]

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: [N, C, H, W] -> x: [N, L, p*p*C], patches h-major, channel innermost."""
        p = self.patch_size
        n, c, hp, wp = imgs.shape
        h, w = hp // p, wp // p
        x = imgs.reshape(n, c, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, h * w, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, L, p*p*C] -> imgs: [N, C, H, W] at the model's grid."""
        p = self.patch_size
        h, w = self.grid_size
        n, c = x.shape[0], self.in_chans
        x = x.reshape(n, h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(n, c, h * p, w * p)

    def fit_pca(self, patches: torch.Tensor) -> None:
        """Fit the 'pca' target's basis. patches: [M, p*p*C] training patches (e.g. `patchify(imgs).flatten(0, 1)`)."""
        if self.target != "pca":
            raise UserError("model.target", self.target, "'pca' to call fit_pca")
        self.recon_target.fit(patches)

    def _check_imgs(self, imgs: torch.Tensor) -> None:
        expected = (self.in_chans, *self.patch_embed.img_size)
        if imgs.ndim != 4 or tuple(imgs.shape[1:]) != expected:
            raise UserError("imgs", list(imgs.shape), f"a batch [N, {expected[0]}, {expected[1]}, {expected[2]}] "
                            "(model.in_chans, model.img_size)")

    def forward_encoder(
            self,
            imgs: torch.Tensor,
            mask_ratio: float | None = None,
            noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches.

        Args:
            imgs: [N, C, H, W].
            mask_ratio: fraction removed (None = the model's).
            noise: optional [N, L] scores for a deterministic random mask.

        Returns:
            latent: [N, 1 + len_keep, D] ([N, 1 + L, D] with encoder_mask_tokens);
            mask: [N, L], 0 = kept, 1 = removed; ids_restore: [N, L].
        """
        self._check_imgs(imgs)
        mask_ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        x = self.patch_embed(imgs)
        noise = noise.to(x.device) if noise is not None else None
        ids_shuffle, len_keep = sample_ids_shuffle(
            self.mask_sampling, x.shape[0], self.grid_size, mask_ratio, noise, x.device)
        if self.encoder_mask_tokens:
            ids_restore = torch.argsort(ids_shuffle, dim=1)
            mask = (ids_restore >= len_keep).float()
            x = torch.where(mask.bool().unsqueeze(-1), self.mask_token.to(x.dtype), x)
            x = x + self.pos_embed[:, 1:, :]
            ids_restore = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        else:
            x = x + self.pos_embed[:, 1:, :]
            x, mask, ids_restore = apply_masking(x, ids_shuffle, len_keep)
        cls_tokens = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls_tokens, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return x, mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Decode all patches.

        Args:
            x: [N, 1 + len_keep, D] encoder output (cls first).
            ids_restore: [N, L] permutation back to original patch order.

        Returns:
            pred: [N, L, out_dim] (out_dim = p*p*C for pixel targets).
        """
        x = self.decoder_embed(x)
        num_missing = ids_restore.shape[1] + 1 - x.shape[1]
        if num_missing > 0:
            mask_tokens = self.mask_token.to(x.dtype).expand(x.shape[0], num_missing, -1)
            x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
            x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
            x = torch.cat([x[:, :1, :], x_], dim=1)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        x = self.decoder_pred(x)
        return x[:, 1:, :]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """imgs: [N, C, H, W]; pred: [N, L, out_dim]; mask: [N, L], 1 = removed -> mean loss on removed patches."""
        target = self.recon_target(imgs, self.patchify(imgs))
        return self.recon_target.loss(pred, target, mask)

    def forward(
            self,
            imgs: torch.Tensor,
            mask_ratio: float | None = None,
            noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs: [N, C, H, W] normalised -> (loss, pred [N, L, out_dim], mask [N, L])."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask


def create_mae_model(arch: str, **overrides: Any) -> MaskedAutoencoderViT:
    """Build a named MAE architecture.

    Args:
        arch: a key of MAE_ARCHS.
        overrides: MaskedAutoencoderViT arguments; None values keep the arch's setting.
    """
    check_choice("model.arch", arch, tuple(MAE_ARCHS))
    allowed = tuple(inspect.signature(MaskedAutoencoderViT).parameters)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise UserError("model", unknown[0], "an argument of MaskedAutoencoderViT: " + ", ".join(allowed))
    kwargs = dict(MAE_ARCHS[arch])
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return MaskedAutoencoderViT(**kwargs)
