import pytest
import torch

from mae.flops import training_flops_per_image
from mae.model import create_mae_model


def block_flops(tokens: int, dim: int) -> int:
    """Forward FLOPs of one ViT block: qkv, proj, fc1, fc2 (24 T D^2) + attention scores and mix (4 T^2 D)."""
    return 24 * tokens * dim ** 2 + 4 * tokens ** 2 * dim


def test_micro_flops_match_analytic_count():
    model = create_mae_model("mae_vit_micro_patch4_dec64d1b")
    keep, L, D, Dd, P = 16, 64, 128, 64, 48
    patch_embed = 2 * L * P * D
    forward = (patch_embed + 4 * block_flops(1 + keep, D) + 2 * (1 + keep) * D * Dd
               + block_flops(1 + L, Dd) + 2 * (1 + L) * Dd * P)
    # backward costs twice the forward, except the patch embedding which needs no input gradient
    expected = 3 * forward - patch_embed
    assert training_flops_per_image(model, batch_size=2) == expected
    assert all(p.grad is None for p in model.parameters())


def test_meta_and_cpu_counts_agree_and_mask_ratio_matters():
    cpu = create_mae_model("mae_vit_micro_patch4_dec64d1b", mask_sampling="grid")
    with torch.device("meta"):
        meta = create_mae_model("mae_vit_micro_patch4_dec64d1b", mask_sampling="block")
    assert training_flops_per_image(cpu) == training_flops_per_image(meta)
    assert meta.mask_sampling == "block"
    assert training_flops_per_image(meta, mask_ratio=0.5) > training_flops_per_image(meta, mask_ratio=0.75)


def test_encoder_with_mask_tokens_costs_over_3x_for_vit_large():
    with torch.device("meta"):
        default = create_mae_model("mae_vit_large_patch16_dec512d8b")
        with_m = create_mae_model("mae_vit_large_patch16_dec512d8b", encoder_mask_tokens=True)
    f_default = training_flops_per_image(default, mask_ratio=0.75)
    f_with_m = training_flops_per_image(with_m, mask_ratio=0.75)
    ratio = f_with_m / f_default
    print(f"ViT-L/16 training GFLOPs/image: default {f_default / 1e9:.1f}, encoder w/ [M] {f_with_m / 1e9:.1f}, "
          f"ratio {ratio:.2f}x (paper: 3.3x)")
    assert ratio >= 3.0
    assert ratio == pytest.approx(3.3, abs=0.2)
