"""Named MAE architectures: the official sizes (`models_mae.py`) and CPU-sized ones.

Kept free of torch so that configs resolve (and the workflow builds its DAG) without importing it.
"""

from __future__ import annotations

from typing import Any

MAE_ARCHS: dict[str, dict[str, Any]] = {
    "mae_vit_base_patch16_dec512d8b": dict(
        img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
        decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0),
    "mae_vit_large_patch16_dec512d8b": dict(
        img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24, num_heads=16,
        decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0),
    "mae_vit_huge_patch14_dec512d8b": dict(
        img_size=224, patch_size=14, in_chans=3, embed_dim=1280, depth=32, num_heads=16,
        decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0),
    "mae_vit_micro_patch7_dec64d1b": dict(
        img_size=28, patch_size=7, in_chans=1, embed_dim=128, depth=4, num_heads=4,
        decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=4, mlp_ratio=4.0),
    "mae_vit_micro_patch4_dec64d1b": dict(
        img_size=32, patch_size=4, in_chans=3, embed_dim=128, depth=4, num_heads=4,
        decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=4, mlp_ratio=4.0),
}
