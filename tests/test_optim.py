"""Pin mae.optim against re-statements of the official MAE rules (util/lr_sched.py, lr_decay.py, lars.py)."""

import logging
import math

import pytest
import torch
from torch import nn
from timm.models.vision_transformer import VisionTransformer
from timm.optim import create_optimizer_v2

from mae.errors import UserError
from mae.optim import (
    absolute_lr, build_finetune_optimizer, build_lars_optimizer, build_pretrain_optimizer, build_scheduler,
    official_lr, param_groups_layer_decay, param_groups_weight_decay,
)


def _vit(global_pool="avg", depth=3):
    return VisionTransformer(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=depth, num_heads=2,
                             num_classes=10, global_pool=global_pool)


class _TinyMae(nn.Module):
    """Parameter layout of the official MAE pretraining model, at toy size."""

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 8), requires_grad=False)
        self.patch_embed = nn.Conv2d(1, 8, 2, 2)
        self.norm = nn.LayerNorm(8)
        self.decoder_embed = nn.Linear(8, 4)
        self.decoder_pred = nn.Linear(4, 4)


def _official_layer_scales(model, layer_decay):
    """Official lr_decay.param_groups_lrd: name -> (lr_scale, weight_decay applies)."""
    num_layers = len(model.blocks) + 1
    no_wd = model.no_weight_decay()
    out = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if n in ("cls_token", "pos_embed") or n.startswith("patch_embed"):
            lid = 0
        elif n.startswith("blocks"):
            lid = int(n.split(".")[1]) + 1
        else:
            lid = num_layers
        out[n] = (layer_decay ** (num_layers - lid), not (p.ndim == 1 or n in no_wd))
    return out


def _scales_of(model, groups):
    by_id = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in groups:
        for p in g["params"]:
            out[by_id[id(p)]] = (g.get("lr_scale", 1.0), g["weight_decay"] > 0)
    return out


def test_absolute_lr():
    assert absolute_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)
    assert absolute_lr(1.5e-4, 4096, lr=0.01) == 0.01


def test_pretrain_groups_match_official():
    m = _TinyMae()
    groups = param_groups_weight_decay(m, 0.05)
    decayed = {n for n, (_, wd) in _scales_of(m, groups).items() if wd}
    assert decayed == {"cls_token", "mask_token", "patch_embed.weight", "decoder_embed.weight", "decoder_pred.weight"}
    names = set(_scales_of(m, groups))
    assert "pos_embed" not in names  # frozen
    opt = build_pretrain_optimizer(m, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["betas"] == (0.9, 0.95) for g in opt.param_groups)
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.05]


@pytest.mark.parametrize("global_pool", ["avg", "token"])
def test_layer_decay_matches_official(global_pool):
    m = _vit(global_pool)
    m.blocks[0].requires_grad_(False)  # frozen params are left out, as officially
    ref = _official_layer_scales(m, 0.75)
    opt = build_finetune_optimizer(m, lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    got = _scales_of(m, opt.param_groups)
    assert set(got) == set(ref)
    mismatches = [n for n in ref if not (math.isclose(got[n][0], ref[n][0], rel_tol=1e-12) and got[n][1] == ref[n][1])]
    assert mismatches == []
    assert {g["betas"] for g in opt.param_groups} == {(0.9, 0.999)}


def test_timm_layer_decay_agrees_for_avg_pool_only():
    """timm's own layer map equals the official one with avg pooling; with token pooling `norm` differs."""
    for global_pool, expected in (("avg", []), ("token", ["norm.bias", "norm.weight"])):
        m = _vit(global_pool)
        timm_opt = create_optimizer_v2(m, "adamw", lr=1.0, weight_decay=0.05, layer_decay=0.75)
        ref = _official_layer_scales(m, 0.75)
        got = _scales_of(m, timm_opt.param_groups)
        assert sorted(n for n in ref if not math.isclose(got[n][0], ref[n][0], rel_tol=1e-12)) == expected
        assert param_groups_layer_decay(m, 0.05, 0.75)  # our groups exist for both


def _official_lars_step(params, state, lr, wd, momentum=0.9, trust=0.001):
    for p in params:
        dp = p.grad
        if p.ndim > 1:
            dp = dp.add(p, alpha=wd)
            pn, un = torch.norm(p), torch.norm(dp)
            one = torch.ones_like(pn)
            q = torch.where(pn > 0.0, torch.where(un > 0, trust * pn / un, one), one)
            dp = dp.mul(q)
        mu = state.setdefault(id(p), torch.zeros_like(p))
        mu.mul_(momentum).add_(dp)
        p.add_(mu, alpha=-lr)


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_lars_matches_official(wd):
    torch.manual_seed(0)
    head = nn.Sequential(nn.BatchNorm1d(16, affine=False), nn.Linear(16, 5))
    ref = nn.Sequential(nn.BatchNorm1d(16, affine=False), nn.Linear(16, 5))
    ref.load_state_dict(head.state_dict())
    opt = build_lars_optimizer(head, lr=0.5, weight_decay=wd)
    assert [g["always_adapt"] for g in opt.param_groups] == [True, False]
    state = {}
    for step in range(5):
        x = torch.randn(32, 16)
        y = torch.randint(0, 5, (32,))
        for model in (head, ref):
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
        grad_before = head[1].weight.grad.clone()
        opt.step()
        assert torch.equal(head[1].weight.grad, grad_before)  # p.grad left unchanged
        with torch.no_grad():
            _official_lars_step(list(ref.parameters()), state, lr=0.5, wd=wd)
    for a, b in zip(head.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_scheduler_equals_official_over_whole_schedule():
    epochs, warmup, ipe, peak, min_lr = 7, 2, 13, 2.4e-3, 1e-6
    m = _vit()
    opt = build_finetune_optimizer(m, lr=peak, weight_decay=0.05, layer_decay=0.75)
    sched = build_scheduler(opt, epochs=epochs, warmup_epochs=warmup, iters_per_epoch=ipe, min_lr=min_lr)
    worst = 0.0
    for it in range(epochs * ipe + 1):
        sched.step_update(it)
        want = official_lr(it, lr=peak, min_lr=min_lr, epochs=epochs, warmup_epochs=warmup, iters_per_epoch=ipe)
        for g in opt.param_groups:
            ref = want * g["lr_scale"]
            worst = max(worst, abs(g["lr"] - ref) / max(abs(ref), 1e-30))
    assert worst < 1e-9, worst
    assert official_lr(warmup * ipe, lr=peak, min_lr=min_lr, epochs=epochs, warmup_epochs=warmup,
                       iters_per_epoch=ipe) == pytest.approx(peak)


def test_a_one_step_schedule_prints_no_timm_warning(caplog):
    # timm warns that cosine annealing "will have no effect" when the cosine part is one step long: noise
    # in the user's output (a one-epoch run of one step, tune.py's short sweeps)
    m = _TinyMae()
    with caplog.at_level("WARNING"):
        build_scheduler(build_pretrain_optimizer(m, lr=1.0), epochs=1, warmup_epochs=0, iters_per_epoch=1)
    assert [r.getMessage() for r in caplog.records] == []
    assert logging.getLogger("timm.scheduler.cosine_lr").level == logging.NOTSET  # as it was


def test_scheduler_is_stateless_given_step():
    m = _TinyMae()
    a = build_pretrain_optimizer(m, lr=1.0)
    b = build_pretrain_optimizer(m, lr=1.0)
    sa = build_scheduler(a, epochs=4, warmup_epochs=1, iters_per_epoch=10)
    sb = build_scheduler(b, epochs=4, warmup_epochs=1, iters_per_epoch=10)
    for it in range(25):
        sa.step_update(it)
    sb.load_state_dict(sa.state_dict())
    sb.step_update(25)  # a resumed job jumps straight to the global step
    sa.step_update(25)
    assert [g["lr"] for g in a.param_groups] == [g["lr"] for g in b.param_groups]
    assert 0 < a.param_groups[0]["lr"] < 1.0


def test_scheduler_rejects_bad_warmup():
    with pytest.raises(UserError, match="warmup_epochs"):
        build_scheduler(build_pretrain_optimizer(_TinyMae(), lr=1.0), epochs=2, warmup_epochs=2, iters_per_epoch=5)
