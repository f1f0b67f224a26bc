import pytest
import torch
import torch.nn as nn

from mae.errors import UserError
from mae.model import create_mae_model
from mae.targets import normalize_patches


class RandomProjectionTokenizer(nn.Module):
    """Fixed random projection of each patch onto a codebook; id = argmax. imgs [N, C, H, W] -> [N, L]."""

    def __init__(self, patch_size: int, in_chans: int, vocab_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.register_buffer("codebook", torch.randn(patch_size * patch_size * in_chans, vocab_size,
                                                     generator=torch.Generator().manual_seed(0)))

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        patches = nn.functional.unfold(imgs, p, stride=p).transpose(1, 2)  # [N, L, C*p*p]
        return (patches @ self.codebook).argmax(-1)


def micro(**kw):
    torch.manual_seed(0)
    return create_mae_model("mae_vit_micro_patch4_dec64d1b", **kw)


def test_norm_pixel_matches_direct_computation():
    model = micro(target="norm_pixel")
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 64)
    loss, pred, mask = model(imgs, noise=noise)
    patches = model.patchify(imgs)
    P = patches.shape[-1]
    mean = patches.sum(-1, keepdim=True) / P
    var = ((patches - mean) ** 2).sum(-1, keepdim=True) / (P - 1)
    target = (patches - mean) / torch.sqrt(var + 1e-6)
    per_patch = ((pred - target) ** 2).mean(-1)
    expected = (per_patch * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(normalize_patches(patches), target)


def test_pixel_loss_is_mse_on_removed_patches():
    model = micro()
    imgs = torch.randn(2, 3, 32, 32)
    loss, pred, mask = model(imgs)
    per_patch = ((pred - model.patchify(imgs)) ** 2).mean(-1)
    torch.testing.assert_close(loss, per_patch[mask.bool()].mean())


def test_pca_target_predicts_top_k_coefficients():
    model = micro(target="pca", pca_components=8)
    imgs = torch.randn(4, 3, 32, 32)
    with pytest.raises(UserError, match="fit_pca"):
        model(imgs)
    patches = model.patchify(torch.randn(16, 3, 32, 32)).flatten(0, 1)
    model.fit_pca(patches)
    assert model.decoder_pred.out_features == 8
    comps = model.recon_target.components
    torch.testing.assert_close(comps @ comps.t(), torch.eye(8), atol=1e-5, rtol=0)
    # basis equals the top eigenvectors of the covariance (up to sign)
    centered = patches.double() - patches.double().mean(0)
    evals, evecs = torch.linalg.eigh(centered.t() @ centered)
    top = evecs[:, -8:].flip(1).t().float()
    torch.testing.assert_close((comps * top).sum(1).abs(), torch.ones(8), atol=1e-4, rtol=0)
    loss, pred, mask = model(imgs)
    assert pred.shape == (4, 64, 8) and torch.isfinite(loss)
    assert {"recon_target.mean", "recon_target.components", "recon_target.fitted"} <= set(model.state_dict())


def test_pca_components_bounded_by_patch_dim():
    with pytest.raises(UserError, match=r"model.pca_components=96 is invalid: allowed an integer in \[1, 49\]"):
        create_mae_model("mae_vit_micro_patch7_dec64d1b", target="pca")


def test_token_target_cross_entropy_on_removed_patches():
    vocab = 32
    tokenizer = RandomProjectionTokenizer(4, 3, vocab)
    model = micro(target="token", tokenizer=tokenizer, token_vocab_size=vocab)
    assert torch.equal(model.recon_target.tokenizer.codebook, tokenizer.codebook)  # init left it alone
    imgs = torch.randn(2, 3, 32, 32)
    loss, pred, mask = model(imgs)
    assert pred.shape == (2, 64, vocab)
    ids = tokenizer(imgs)
    expected = nn.functional.cross_entropy(pred[mask.bool()], ids[mask.bool()])
    torch.testing.assert_close(loss, expected)
    model.train()
    assert not model.recon_target.tokenizer.training
    assert not any(p.requires_grad for p in model.recon_target.parameters())


def test_token_target_without_tokenizer():
    with pytest.raises(UserError, match=r"model.tokenizer=None is invalid: allowed an nn.Module"):
        micro(target="token", token_vocab_size=16)
    with pytest.raises(UserError, match=r"model.token_vocab_size=None"):
        micro(target="token", tokenizer=RandomProjectionTokenizer(4, 3, 8))


def test_token_ids_shape_checked():
    class Bad(nn.Module):
        def forward(self, imgs):
            return torch.zeros(imgs.shape[0], 3, dtype=torch.long)

    model = micro(target="token", tokenizer=Bad(), token_vocab_size=8)
    with pytest.raises(UserError, match=r"model.tokenizer='Bad'.*\[N, L\] = \[2, 64\]"):
        model(torch.randn(2, 3, 32, 32))


def test_unknown_target():
    with pytest.raises(UserError, match=r"model.target='hog' is invalid: allowed one of 'pixel', 'norm_pixel', 'pca', 'token'"):
        micro(target="hog")


@pytest.mark.parametrize("target", ["pixel", "norm_pixel", "pca"])
def test_float64_model_computes_its_loss_in_float64(target):
    """The loss is never computed below the input dtype: a float64 forward gives a float64 loss that
    equals a float64 reference to 1e-12 (a float32 cast would leave ~1e-7)."""
    model = micro(target=target, **({"pca_components": 16} if target == "pca" else {})).double()
    imgs = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    if target == "pca":
        model.fit_pca(model.patchify(torch.randn(64, 3, 32, 32, dtype=torch.float64)).flatten(0, 1))
    loss, pred, mask = model(imgs, noise=torch.rand(2, 64, dtype=torch.float64))
    assert loss.dtype == pred.dtype == torch.float64
    patches = model.patchify(imgs)
    if target == "norm_pixel":
        patches = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6) ** 0.5
    elif target == "pca":
        rt = model.recon_target
        patches = (patches - rt.mean) @ rt.components.t()
    expected = (((pred - patches) ** 2).mean(-1) * mask).sum() / mask.sum()
    assert abs(loss.item() - expected.item()) < 1e-12


def test_low_precision_predictions_give_a_float32_loss():
    model = micro()
    imgs = torch.randn(2, 3, 32, 32)
    _, pred, mask = model(imgs)
    loss = model.recon_target.loss(pred.bfloat16(), model.patchify(imgs).bfloat16(), mask)
    assert loss.dtype == torch.float32
