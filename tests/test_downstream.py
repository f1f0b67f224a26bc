import pickle
import re

import pytest
import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from mae.downstream import attach_linear_probe, create_vit, load_encoder_weights, set_trainable_blocks
from mae.errors import UserError
from mae.model import create_mae_model

MICRO = "mae_vit_micro_patch4_dec64d1b"
FC_NORM_AND_HEAD = ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]


def pretrained(**kw):
    torch.manual_seed(0)
    return create_mae_model(MICRO, **kw)


def test_create_vit_fine_tune_and_probe_layouts():
    vit = create_vit(MICRO, 10, drop_path_rate=0.1)
    assert isinstance(vit, VisionTransformer)
    assert isinstance(vit.norm, nn.Identity) and isinstance(vit.fc_norm, nn.LayerNorm) and vit.fc_norm.eps == 1e-6
    assert vit.global_pool == "avg" and vit.num_prefix_tokens == 1 and vit.cls_token is not None
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert vit.head.weight.std() < 1e-4 and torch.all(vit.head.bias == 0)
    probe = create_vit(MICRO, 10, global_pool="token")
    assert isinstance(probe.norm, nn.LayerNorm) and isinstance(probe.fc_norm, nn.Identity)
    assert create_vit(MICRO, 10, img_size=48, decoder_depth=3).patch_embed.grid_size == (12, 12)


@pytest.mark.parametrize("wrap", [False, True])
def test_encoder_loads_into_fine_tune_model_with_exactly_fc_norm_and_head_missing(wrap, tmp_path):
    mae = pretrained()
    vit = create_vit(MICRO, 10)
    path = tmp_path / "model.pth"
    torch.save({"model": mae.state_dict(), "config": {"stage": "pretrain"}} if wrap else mae.state_dict(), path)
    report = load_encoder_weights(vit, path)
    assert report.missing == FC_NORM_AND_HEAD
    assert {"norm.weight", "norm.bias", "mask_token", "decoder_pos_embed", "decoder_pred.weight"} <= set(report.dropped)
    assert not any(k.startswith(("head.", "fc_norm.")) for k in report.loaded)
    for k in report.loaded:
        torch.testing.assert_close(vit.state_dict()[k], mae.state_dict()[k])
    assert report.summary() == (
        f"{len(report.loaded)} tensors loaded; left at init: fc_norm.bias, fc_norm.weight, head.bias, head.weight; "
        f"not loaded: decoder_blocks ({len([k for k in report.dropped if k.startswith('decoder_blocks.')])}), "
        "decoder_embed (2), decoder_norm (2), decoder_pos_embed, decoder_pred (2), mask_token, norm (2)")


def test_official_vit_base_checkpoint_loads_into_timm(tmp_path):
    with torch.device("meta"):
        mae = create_mae_model("mae_vit_base_patch16_dec512d8b")
        vit = create_vit("mae_vit_base_patch16_dec512d8b", 1000)
    report = load_encoder_weights(vit, {"model": mae.state_dict()})
    assert report.missing == FC_NORM_AND_HEAD and report.pos_embed_resampled is None
    # released encoder-only weights (no decoder keys) load the same way
    encoder_only = {k: v for k, v in mae.state_dict().items() if not k.startswith(("decoder_", "mask_token"))}
    assert load_encoder_weights(vit, {"model": encoder_only}).missing == FC_NORM_AND_HEAD


def test_linear_probe_keeps_norm_and_misses_only_head():
    mae = pretrained()
    vit = attach_linear_probe(create_vit(MICRO, 10, global_pool="token"), 10)
    report = load_encoder_weights(vit, mae.state_dict())
    assert report.missing == ["head.0.running_mean", "head.0.running_var", "head.1.bias", "head.1.weight"]
    torch.testing.assert_close(vit.norm.weight, mae.norm.weight)


def test_features_never_mask_or_shuffle():
    mae = pretrained()
    vit = create_vit(MICRO, 10, global_pool="token")
    load_encoder_weights(vit, mae.state_dict())
    imgs = torch.randn(2, 3, 32, 32)
    feats = vit.forward_features(imgs)
    assert feats.shape == (2, 65, 128)
    torch.testing.assert_close(feats, mae.forward_encoder(imgs, mask_ratio=0.0)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vit.forward_features(imgs), feats)


def test_pos_embed_resampled_when_grid_differs():
    mae = pretrained()
    vit = create_vit(MICRO, 10, img_size=48)
    report = load_encoder_weights(vit, mae.state_dict())
    assert report.pos_embed_resampled == ((8, 8), (12, 12))
    assert report.summary().endswith("; pos_embed resampled from 8x8 to 12x12 patches")
    assert vit.pos_embed.shape == (1, 145, 128)
    torch.testing.assert_close(vit.pos_embed[0, 0], mae.pos_embed[0, 0])


def test_non_square_checkpoint_grid_from_config():
    mae = pretrained(img_size=(16, 32))
    vit = create_vit(MICRO, 10, img_size=32)
    with pytest.raises(UserError, match="cannot tell the patch grid"):
        load_encoder_weights(vit, mae.state_dict())
    report = load_encoder_weights(vit, {"model": mae.state_dict(), "config": {"model": {"img_size": [16, 32],
                                                                                      "patch_size": 4}}})
    assert report.pos_embed_resampled == ((4, 8), (8, 8))


def test_as_many_tokens_in_another_grid_are_resampled():
    """16 tokens pretrained as 2x8 (16x64 pixels) are not the 4x4 grid of a 32x32 fine-tuning."""
    mae = pretrained(img_size=(8, 32))
    vit = create_vit(MICRO, 10, img_size=16)
    assert mae.pos_embed.shape == vit.pos_embed.shape
    report = load_encoder_weights(vit, {"model": mae.state_dict(), "config": {"model": {"img_size": [8, 32],
                                                                                      "patch_size": 4}}})
    assert report.pos_embed_resampled == ((2, 8), (4, 4))
    assert not torch.equal(vit.pos_embed, mae.pos_embed)
    same = create_vit(MICRO, 10, img_size=(8, 32))
    report = load_encoder_weights(same, {"model": mae.state_dict(), "config": {"model": {"img_size": [8, 32],
                                                                                       "patch_size": 4}}})
    assert report.pos_embed_resampled is None and torch.equal(same.pos_embed, mae.pos_embed)


def test_encoder_mask_token_and_target_buffers_are_stripped():
    mae = pretrained(encoder_mask_tokens=True, target="pca", pca_components=8)
    mae.fit_pca(torch.randn(100, 48))
    report = load_encoder_weights(create_vit(MICRO, 10), mae.state_dict())
    assert {"mask_token", "recon_target.mean", "recon_target.components"} <= set(report.dropped)


def test_wrong_size_checkpoint_is_a_user_error(tmp_path):
    with torch.device("meta"):
        mae_b = create_mae_model("mae_vit_base_patch16_dec512d8b")
        vit_l = create_vit("mae_vit_large_patch16_dec512d8b", 1000)
    path = tmp_path / "vit_b.pth"
    torch.save({"model": mae_b.state_dict()}, path)
    sd = torch.load(path, map_location="meta", weights_only=True)
    with pytest.raises(UserError, match=re.escape("checkpoint '<state_dict>' is for embed_dim 768 / depth 12 / patch 16 "
                                                  "/ in_chans 3, the model expects embed_dim 1024 / depth 24")):
        load_encoder_weights(vit_l, sd)


def test_unexpected_keys_are_listed():
    sd = pretrained().state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["blocks.0.norm1.bias"]
    with pytest.raises(UserError, match=r"missing \['blocks.0.norm1.bias'\], unexpected \['extra.weight'\]"):
        load_encoder_weights(create_vit(MICRO, 10), sd)


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_exploit_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": Exploit()}, f)
    with pytest.raises(UserError, match=r"checkpoint '.*evil.pth' was refused"):
        load_encoder_weights(create_vit(MICRO, 10), path)
    assert "pwned" not in capsys.readouterr().out


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(UserError, match=r"checkpoint='.*nope.pth' is invalid: allowed an existing checkpoint file"):
        load_encoder_weights(create_vit(MICRO, 10), tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"checkpoint '.*junk.pth'"):
        load_encoder_weights(create_vit(MICRO, 10), tmp_path / "junk.pth")


def test_attach_linear_probe_freezes_encoder():
    vit = attach_linear_probe(create_vit(MICRO, 5, global_pool="token"), 7)
    bn, linear = vit.head
    assert isinstance(bn, nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert linear.out_features == 7 and torch.all(linear.bias == 0) and 0.005 < linear.weight.std() < 0.015
    trainable = {n for n, p in vit.named_parameters() if p.requires_grad}
    assert trainable == {"head.1.weight", "head.1.bias"}
    assert vit(torch.randn(4, 3, 32, 32)).shape == (4, 7)


@pytest.mark.parametrize("n,blocks", [(0, []), (0.5, []), (1, [3]), (2, [2, 3]), (4, [0, 1, 2, 3])])
def test_set_trainable_blocks(n, blocks):
    vit = set_trainable_blocks(create_vit(MICRO, 10), n)
    trainable = {name for name, p in vit.named_parameters() if p.requires_grad}
    expected = {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    for i in blocks:
        expected |= {name for name, _ in vit.named_parameters() if name.startswith(f"blocks.{i}.")}
    if n == 0.5:
        expected |= {name for name, _ in vit.named_parameters()
                     if name.startswith(("blocks.3.mlp.", "blocks.3.norm2."))}
    assert trainable == expected


@pytest.mark.parametrize("n", [0.3, 5, -1, 1.5])
def test_set_trainable_blocks_rejects(n):
    with pytest.raises(UserError, match=r"finetune.trainable_blocks=.* is invalid: allowed 0.5 or a whole number in \[0, 4\]"):
        set_trainable_blocks(create_vit(MICRO, 10), n)


@pytest.mark.parametrize("kwargs,match", [
    (dict(arch="vit_b"), r"model.arch='vit_b' is invalid"),
    (dict(global_pool="max"), r"finetune.global_pool='max' is invalid: allowed one of 'avg', 'token'"),
    (dict(img_size=30), r"model.img_size=30 is invalid: allowed a positive multiple of model.patch_size=4"),
    (dict(dept=3), r"model='dept' is invalid: allowed an encoder setting"),
])
def test_create_vit_bad_input(kwargs, match):
    kwargs = {"arch": MICRO, "num_classes": 10, **kwargs}
    with pytest.raises(UserError, match=match):
        create_vit(**kwargs)
