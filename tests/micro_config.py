"""The micro MAE the training tests run (a 2-block, 32-wide ViT on 28x28 synthetic images): a few
seconds per run on a CPU. Each test adds its own data sizes and recipe."""

MICRO_MODEL = [
    "model.arch=mae_vit_micro_patch7_dec64d1b", "model.embed_dim=32", "model.depth=2", "model.num_heads=2",
    "model.decoder_embed_dim=32", "model.decoder_num_heads=2", "model.target=norm_pixel", "data.name=synthetic",
]
