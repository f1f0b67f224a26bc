"""Downstream backbones: a timm VisionTransformer for fine-tuning / linear probing, fed MAE encoder weights.

Fine-tuning follows the official recipe: global average pooling + fc_norm (the encoder's final norm is
dropped), head trunc_normal(std 2e-5). Linear probing uses the cls token, keeps the final norm, and puts
BatchNorm1d(affine=False) before a Linear head (std 0.01) on a frozen encoder.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import VisionTransformer

from .archs import MAE_ARCHS
from .choices import check_img_size, check_trainable_blocks, image_hw, torchvision_size
from .checkpoint import load_model_state
from .errors import UserError, check_choice

ENCODER_KEYS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")
MAE_ONLY_KEYS = ("decoder_embed_dim", "decoder_depth", "decoder_num_heads", "mask_ratio", "mask_sampling",
                 "encoder_mask_tokens", "target", "pca_components", "tokenizer", "token_vocab_size")
_PRETRAIN_ONLY = re.compile(r"^(decoder_|mask_token$|recon_target\.)")


@dataclass
class LoadReport:
    """What load_encoder_weights did.

    Args:
        source: the checkpoint's name (file path or '<state_dict>').
        loaded: keys copied into the model.
        missing: model keys left at their init (the new head / fc_norm).
        dropped: checkpoint keys deliberately not loaded (decoder, mask token, encoder norm for avg pool).
        pos_embed_resampled: (old grid, new grid) when the position table was resampled, else None.
    """

    source: str
    loaded: list[str]
    missing: list[str]
    dropped: list[str]
    pos_embed_resampled: tuple[tuple[int, int], tuple[int, int]] | None = None

    def summary(self) -> str:
        """One short log line: counts, the keys left at init by name, the dropped ones by module.

        A ViT-L checkpoint has close to 400 keys; the dataclass's own repr would put every one on one line."""
        modules = Counter(key.split(".")[0] for key in self.dropped)  # in the order of first appearance
        dropped = ", ".join(f"{name} ({count})" if count > 1 else name for name, count in modules.items())
        line = (f"{len(self.loaded)} tensors loaded; left at init: {', '.join(self.missing) or 'none'}; "
                f"not loaded: {dropped or 'none'}")
        if self.pos_embed_resampled is not None:
            (oh, ow), (nh, nw) = self.pos_embed_resampled
            line += f"; pos_embed resampled from {oh}x{ow} to {nh}x{nw} patches"
        return line


def create_vit(
        arch: str,
        num_classes: int,
        global_pool: str = "avg",
        drop_path_rate: float = 0.0,
        **overrides: Any,
) -> VisionTransformer:
    """timm ViT with the encoder of a named MAE architecture.

    Args:
        arch: a key of MAE_ARCHS (its encoder part is used).
        num_classes: classifier outputs.
        global_pool: 'avg' (fine-tuning: mean of patch tokens + fc_norm) or 'token' (cls token + norm).
        drop_path_rate: stochastic depth rate.
        overrides: encoder settings (img_size, patch_size, in_chans, embed_dim, depth, num_heads,
            mlp_ratio); None keeps the arch's; pretraining-only settings (decoder_*, mask_*, target...) are ignored.
    """
    check_choice("model.arch", arch, tuple(MAE_ARCHS))
    check_choice("finetune.global_pool", global_pool, ("avg", "token"))
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserError("data.num_classes", num_classes, "a positive integer")
    unknown = sorted(set(overrides) - set(ENCODER_KEYS) - set(MAE_ONLY_KEYS))
    if unknown:
        raise UserError("model", unknown[0], "an encoder setting: " + ", ".join(ENCODER_KEYS))
    cfg = {k: v for k, v in MAE_ARCHS[arch].items() if k in ENCODER_KEYS}
    cfg.update({k: v for k, v in overrides.items() if k in ENCODER_KEYS and v is not None})
    check_img_size(cfg["img_size"], cfg["patch_size"])
    vit = VisionTransformer(
        img_size=torchvision_size(cfg["img_size"]), patch_size=cfg["patch_size"], in_chans=cfg["in_chans"],
        num_classes=num_classes,
        global_pool=global_pool, embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_ratio"], qkv_bias=True, class_token=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), drop_path_rate=drop_path_rate)
    with torch.no_grad():
        trunc_normal_(vit.head.weight, std=2e-5)
        nn.init.zeros_(vit.head.bias)
    return vit


def _encoder_shape(sd: Mapping[str, torch.Tensor]) -> str:
    dim = sd["cls_token"].shape[-1] if "cls_token" in sd else "?"
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    depth = max(blocks) + 1 if blocks else 0
    proj = sd.get("patch_embed.proj.weight")
    patch, chans = (proj.shape[-1], proj.shape[1]) if proj is not None else ("?", "?")
    return f"embed_dim {dim} / depth {depth} / patch {patch} / in_chans {chans}"


def _old_grid(num_tokens: int, obj: Any) -> tuple[int, int] | None:
    """The checkpoint's patch grid: from the config it carries (ours record img_size and patch_size), else
    the square of `num_tokens` (official files), else None."""
    model_cfg = obj.get("config", {}).get("model", {}) if isinstance(obj, Mapping) else {}
    img, p = model_cfg.get("img_size"), model_cfg.get("patch_size")
    if img is not None and p:
        h, w = image_hw(img)
        if (h // p) * (w // p) == num_tokens:
            return h // p, w // p
    side = int(round(num_tokens ** 0.5))
    if side * side == num_tokens:
        return side, side
    return None


def load_encoder_weights(vit: VisionTransformer, state_dict_or_path: Mapping[str, Any] | str | os.PathLike,
                         source: str | None = None) -> LoadReport:
    """Load MAE encoder weights into a timm ViT from create_vit / attach_linear_probe.

    Accepts a state dict, `{'model': state_dict, ...}` (ours and the official format) or a file path
    (read by `mae.checkpoint.load_model_state`, weights_only=True). Decoder keys, the mask token and target buffers are stripped; the
    encoder's `norm.*` is dropped when the model pools with fc_norm; pos_embed is resampled when the patch
    grid differs. The missing keys must be exactly the new head (+ fc_norm); anything else raises UserError.

    Args:
        vit: the model to fill.
        state_dict_or_path: checkpoint or path to one.
        source: the file a given state dict was read from, for messages (default: the path, or '<state_dict>').

    Returns:
        LoadReport.
    """
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        source = str(state_dict_or_path)
        state_dict, config = load_model_state(state_dict_or_path)
        obj = {"model": state_dict, "config": config or {}}
    else:
        source, obj = source or "<state_dict>", state_dict_or_path
    sd = obj.get("model", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError.message("checkpoint", f"checkpoint {source!r} is not a state dict (or {{'model': state_dict}}) "
                                "of tensors")

    if any(k.startswith("head.") for k in sd):  # e.g. an official main_finetune.py checkpoint-N.pth
        raise UserError.message("checkpoint", f"checkpoint {source!r} is a fine-tuned classifier (it holds head.*), "
                                "not an MAE encoder: allowed a pretrained MAE (a model.pth of `mae pretrain`, an "
                                "official mae_pretrain_*.pth or a main_pretrain.py checkpoint-N.pth)")
    model_sd = vit.state_dict()
    uses_fc_norm = not isinstance(vit.fc_norm, nn.Identity)
    new_keys = {k for k in model_sd if k.startswith("head.") or (uses_fc_norm and k.startswith("fc_norm."))}
    expected_missing = {k for k in new_keys if not k.endswith(".num_batches_tracked")}  # BatchNorm tolerates it
    drop = {k for k in sd if _PRETRAIN_ONLY.match(k)}
    if uses_fc_norm:
        drop |= {k for k in sd if k.startswith("norm.")}
    sd = {k: v for k, v in sd.items() if k not in drop}

    expected = set(model_sd) - new_keys
    if set(sd) != expected or any(sd[k].shape != model_sd[k].shape for k in expected if k != "pos_embed") or (
            "pos_embed" in sd and sd["pos_embed"].shape[-1] != model_sd["pos_embed"].shape[-1]):
        if "cls_token" in sd and "patch_embed.proj.weight" in sd and _encoder_shape(sd) != _encoder_shape(model_sd):
            raise UserError.message("checkpoint", f"checkpoint {source!r} is for {_encoder_shape(sd)}, "
                                    f"the model expects {_encoder_shape(model_sd)}")
        got = set(sd)
        raise UserError.message("checkpoint", (
            f"checkpoint {source!r} does not match the model's encoder: missing {sorted(expected - got)}, "
            f"unexpected {sorted(got - expected)}, wrong shape "
            f"{sorted(k for k in expected & got if k != 'pos_embed' and sd[k].shape != model_sd[k].shape)}; "
            f"expected exactly the model keys minus {sorted(expected_missing)}"))

    resampled = None
    new_grid = tuple(vit.patch_embed.grid_size)
    old_grid = _old_grid(sd["pos_embed"].shape[1] - vit.num_prefix_tokens, obj)
    # Another token count, or as many tokens in another grid (2x8 pretrained, 4x4 fine-tuned): resample.
    if sd["pos_embed"].shape != model_sd["pos_embed"].shape or old_grid not in (None, new_grid):
        if old_grid is None:
            raise UserError.message("checkpoint", f"checkpoint {source!r}: cannot tell the patch grid of its pos_embed "
                                    f"{list(sd['pos_embed'].shape)}; save it with config.model.img_size/patch_size")
        sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], new_size=list(new_grid), old_size=list(old_grid),
                                                 num_prefix_tokens=vit.num_prefix_tokens)
        resampled = (old_grid, new_grid)

    result = vit.load_state_dict(sd, strict=False)
    if set(result.missing_keys) != expected_missing or result.unexpected_keys:
        raise UserError.message("checkpoint", f"checkpoint {source!r}: missing {sorted(result.missing_keys)}, "
                                f"unexpected {sorted(result.unexpected_keys)}; expected missing {sorted(expected_missing)}")
    return LoadReport(source=source, loaded=sorted(sd), missing=sorted(result.missing_keys), dropped=sorted(drop),
                      pos_embed_resampled=resampled)


def linear_probe_head(dim: int, num_classes: int) -> nn.Sequential:
    """BatchNorm1d(dim, affine=False, eps=1e-6) + Linear(dim, num_classes) (trunc_normal std 0.01, bias 0)."""
    linear = nn.Linear(dim, num_classes)
    with torch.no_grad():
        trunc_normal_(linear.weight, std=0.01)
        nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


def attach_linear_probe(vit: VisionTransformer, num_classes: int) -> VisionTransformer:
    """Linear probe: head = BatchNorm1d(D, affine=False, eps=1e-6) + Linear(D, K) (std 0.01, bias 0); encoder frozen.

    Args:
        vit: backbone (global_pool='token' as in the paper).
        num_classes: K.

    Returns:
        the same model, only `head.*` trainable.
    """
    vit.head = linear_probe_head(vit.embed_dim, num_classes)
    vit.num_classes = num_classes
    for name, p in vit.named_parameters():
        p.requires_grad = name.startswith("head.")
    return vit


def set_trainable_blocks(vit: VisionTransformer, n: float) -> VisionTransformer:
    """Partial fine-tuning (Fig. 9): train only the last n blocks plus the final norm(s) and the head.

    Args:
        vit: backbone.
        n: number of trailing blocks; 0 = head and norms only; 0.5 = the last block's MLP (+ norm2) only.

    Returns:
        the same model with requires_grad set.
    """
    check_trainable_blocks(n, len(vit.blocks))
    for p in vit.parameters():
        p.requires_grad = False
    trainable: list[nn.Module] = [vit.head, vit.fc_norm, vit.norm]
    if n == 0.5:
        trainable += [vit.blocks[-1].norm2, vit.blocks[-1].mlp]
    elif n >= 1:
        trainable += list(vit.blocks[len(vit.blocks) - int(n):])
    for module in trainable:
        for p in module.parameters():
            p.requires_grad = True
    return vit
