from pathlib import Path

import pytest
import torch
import torch.nn as nn

from mae.errors import UserError
from mae.model import MAE_ARCHS, MaskedAutoencoderViT, create_mae_model
from mae.pos_embed import get_2d_sincos_pos_embed

FIXTURES = Path(__file__).parent / "fixtures" / "official_keys"
OFFICIAL = ["mae_vit_base_patch16_dec512d8b", "mae_vit_large_patch16_dec512d8b", "mae_vit_huge_patch14_dec512d8b"]


def read_fixture(arch: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in (FIXTURES / f"{arch}.txt").read_text().splitlines():
        name, shape = line.split()
        rows.append((name, tuple(int(s) for s in shape.split(","))))
    return rows


def micro(arch="mae_vit_micro_patch4_dec64d1b", **kw) -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    return create_mae_model(arch, **kw)


@pytest.mark.parametrize("arch", OFFICIAL)
def test_state_dict_equals_official_keys_and_shapes(arch):
    with torch.device("meta"):
        model = create_mae_model(arch)
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == read_fixture(arch)


@pytest.mark.parametrize("arch", OFFICIAL)
def test_official_format_checkpoint_loads_strict(arch, tmp_path):
    sd = {name: torch.empty(shape, device="meta") for name, shape in read_fixture(arch)}
    with torch.device("meta"):
        model = create_mae_model(arch)
    path = tmp_path / "official.pth"
    torch.save({"model": sd}, path)
    loaded = torch.load(path, map_location="meta", weights_only=True)
    result = model.load_state_dict(loaded["model"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_official_format_roundtrip_with_values(tmp_path):
    model = micro()
    torch.save({"model": model.state_dict()}, tmp_path / "m.pth")
    other = micro()
    nn.init.zeros_(other.decoder_pred.weight)
    other.load_state_dict(torch.load(tmp_path / "m.pth", weights_only=True)["model"], strict=True)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    torch.testing.assert_close(model(imgs, noise=noise)[0], other(imgs, noise=noise)[0])


def test_position_tables_fixed_and_official():
    model = micro()
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    torch.testing.assert_close(model.pos_embed[0], get_2d_sincos_pos_embed(128, 8, cls_token=True))
    torch.testing.assert_close(model.decoder_pos_embed[0], get_2d_sincos_pos_embed(64, 8, cls_token=True))
    assert torch.all(model.pos_embed[0, 0] == 0)


def test_official_init():
    model = micro()
    assert isinstance(model.norm, nn.LayerNorm) and model.norm.eps == 1e-6
    assert model.blocks[0].norm1.eps == 1e-6 and model.blocks[0].attn.qkv.bias is not None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            assert torch.all(m.bias == 0)
            bound = (6 / (m.in_features + m.out_features)) ** 0.5
            assert m.weight.abs().max() <= bound
            assert m.weight.abs().max() > 0.8 * bound  # uniform over the whole xavier range
        elif isinstance(m, nn.LayerNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    w = model.patch_embed.proj.weight
    assert w.abs().max() <= (6 / (w.shape[0] + w[0].numel())) ** 0.5
    for token in (model.cls_token, model.mask_token):
        assert 0.005 < token.std() < 0.05


def test_patchify_order_channel_innermost_and_inverse():
    model = micro(img_size=(8, 12))
    imgs = torch.randn(2, 3, 8, 12)
    x = model.patchify(imgs)
    assert x.shape == (2, 6, 4 * 4 * 3)
    # patch (row 1, col 2) is index 1 * 3 + 2; pixel (py, px, c) sits at (py * p + px) * C + c
    assert x[0, 5, (1 * 4 + 3) * 3 + 2] == imgs[0, 2, 4 + 1, 8 + 3]
    assert torch.equal(model.unpatchify(x), imgs)


@pytest.mark.parametrize("arch,shape", [("mae_vit_micro_patch4_dec64d1b", (2, 3, 32, 32)),
                                        ("mae_vit_micro_patch7_dec64d1b", (2, 1, 28, 28))])
def test_forward_shapes(arch, shape):
    model = micro(arch)
    loss, pred, mask = model(torch.randn(shape))
    L = (shape[2] // model.patch_size) * (shape[3] // model.patch_size)
    assert pred.shape == (2, L, model.patch_dim) and mask.shape == (2, L) and loss.ndim == 0


def test_non_square_images():
    model = micro(img_size=(16, 32))
    assert model.grid_size == (4, 8)
    loss, pred, mask = model(torch.randn(2, 3, 16, 32))
    assert pred.shape == (2, 32, 48) and torch.isfinite(loss)
    torch.testing.assert_close(model.pos_embed[0], get_2d_sincos_pos_embed(128, (4, 8), cls_token=True))


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.9])
def test_encoder_receives_only_visible_tokens(ratio):
    model = micro()
    seen = []
    hooks = [blk.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1])) for blk in model.blocks]
    _, _, mask = model(torch.randn(3, 3, 32, 32), mask_ratio=ratio)
    for h in hooks:
        h.remove()
    keep = int(64 * (1 - ratio))
    assert seen == [1 + keep] * len(model.blocks)
    assert torch.all((mask == 0).sum(1) == keep)


def test_encoder_mask_tokens_variant_processes_all_positions():
    model = micro(encoder_mask_tokens=True)
    assert model.mask_token.shape == (1, 1, 128)
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    noise = torch.rand(2, 64)
    imgs = torch.randn(2, 3, 32, 32)
    loss, pred, mask = model(imgs, noise=noise)
    x = seen[0]
    assert x.shape == (2, 65, 128) and torch.all(mask.sum(1) == 48)
    removed = mask[0].bool()
    expected = model.mask_token[0, 0] + model.pos_embed[0, 1:][removed]
    torch.testing.assert_close(x[0, 1:][removed], expected)
    visible = model.patch_embed(imgs)[0][~removed] + model.pos_embed[0, 1:][~removed]
    torch.testing.assert_close(x[0, 1:][~removed], visible)


def test_visible_patches_get_no_gradient():
    model = micro(target="norm_pixel")
    imgs = torch.randn(2, 3, 32, 32)
    latent, mask, ids_restore = model.forward_encoder(imgs, 0.75)
    pred = model.forward_decoder(latent, ids_restore)
    pred.retain_grad()
    model.forward_loss(imgs, pred, mask).backward()
    visible = mask == 0
    assert torch.all(pred.grad[visible] == 0)
    assert torch.all(pred.grad[~visible].abs().sum(-1) > 0)


def test_noise_gives_deterministic_mask_and_ratio_zero_no_shuffle():
    model = micro()
    noise = torch.rand(2, 64)
    imgs = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(imgs, noise=noise)[2], model(imgs, noise=noise)[2])
    latent, mask, ids_restore = model.forward_encoder(imgs, 0.0, noise=noise)
    assert mask.sum() == 0 and torch.equal(ids_restore, torch.arange(64).expand(2, -1))
    tokens = model.patch_embed(imgs) + model.pos_embed[:, 1:]
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model.forward_encoder(imgs, 0.0, noise=noise)
    torch.testing.assert_close(seen[0][:, 1:], tokens)


@pytest.mark.parametrize("sampling", ["block", "grid"])
def test_other_samplings_forward(sampling):
    model = micro(mask_sampling=sampling)
    loss, pred, mask = model(torch.randn(2, 3, 32, 32))
    assert torch.all(mask.sum(1) == 48) and torch.isfinite(loss)


def test_named_archs():
    assert set(OFFICIAL) <= set(MAE_ARCHS)
    m = MAE_ARCHS["mae_vit_micro_patch7_dec64d1b"]
    assert (m["img_size"], m["in_chans"], m["patch_size"], m["decoder_embed_dim"], m["decoder_depth"]) == (28, 1, 7, 64, 1)
    model = micro(decoder_depth=2, decoder_embed_dim=32, decoder_num_heads=2)
    assert len(model.decoder_blocks) == 2 and model.decoder_embed.out_features == 32


@pytest.mark.parametrize("kwargs,match", [
    (dict(mask_ratio=1.0), r"model.mask_ratio=1.0 is invalid: allowed a number in \[0.0, 1.0\)"),
    (dict(mask_ratio=-0.2), r"model.mask_ratio=-0.2 is invalid"),
    (dict(img_size=30), r"model.img_size=30 is invalid: allowed a positive multiple of model.patch_size=4"),
    (dict(img_size=(32, 30)), r"model.img_size=\(32, 30\) is invalid"),
    (dict(mask_sampling="checker"), r"model.mask_sampling='checker' is invalid: allowed one of 'random', 'block', 'grid'"),
    (dict(target="hog"), r"model.target='hog' is invalid: allowed one of"),
    (dict(target="token"), r"model.tokenizer=None is invalid"),
    (dict(mask_sampling="grid", mask_ratio=0.5), r"model.mask_ratio=0.5 is invalid: allowed 0.75 with"),
    (dict(num_heads=5), r"model.num_heads=5 is invalid: allowed a divisor of model.embed_dim=128"),
    (dict(decoder_width=3), r"model=.decoder_width. is invalid: allowed an argument of MaskedAutoencoderViT"),
])
def test_bad_config_raises_user_error(kwargs, match):
    with pytest.raises(UserError, match=match):
        micro(**kwargs)


def test_unknown_arch_and_bad_runtime_input():
    with pytest.raises(UserError, match=r"model.arch='mae_vit_tiny' is invalid: allowed one of 'mae_vit_base"):
        create_mae_model("mae_vit_tiny")
    model = micro()
    with pytest.raises(UserError, match=r"model.mask_ratio=1.0"):
        model(torch.randn(1, 3, 32, 32), mask_ratio=1.0)
    with pytest.raises(UserError, match=r"imgs=\[1, 3, 28, 28\] is invalid: allowed a batch \[N, 3, 32, 32\]"):
        model(torch.randn(1, 3, 28, 28))
