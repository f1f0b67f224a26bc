"""The official MAE pretraining step as its users run it, for a side-by-side speed ratio (issue #18).

Written from the official repository's documented behaviour (facebookresearch/mae: main_pretrain.py,
engine_pretrain.py, util/misc.py's NativeScalerWithGradNormCount, its timm 0.3.2 Block), not copied:

- the model: the same MAE (this project's model is official-parity: same masking by argsort of
  `torch.rand` noise, same position tables, loss and weights), with timm's *unfused* attention
  (`q @ k^T * scale`, softmax, `@ v`), as timm 0.3.2's Block computes it;
- fp16 autocast (`torch.cuda.amp.autocast()`) and a GradScaler; every step unscales the gradients and
  computes their global norm (NativeScalerWithGradNormCount does so even without clipping);
- plain `torch.optim.AdamW` (torch's default implementation) over the official weight-decay groups;
- per step, as engine_pretrain.py: the lr set by hand, `loss.item()` with a finiteness check, and
  `torch.cuda.synchronize()`;
- no torch.compile.

`measure_official` times it like `bench.gpu_bench.measure` times ours (same batch, masking, warm-up and
timed steps), so the two images/s are comparable. On the CPU (the smoke test) autocast and the scaler
are off: fp32.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from bench.common import count_host_syncs


def use_unfused_attention(model: nn.Module) -> int:
    """Switch every timm Attention in `model` to its explicit (unfused) path; returns how many."""
    count = 0
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
            count += 1
    return count


def official_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.05) -> torch.optim.Optimizer:
    """torch's default AdamW over the official groups (timm's `add_weight_decay`, now
    `param_groups_weight_decay`: no decay for biases and 1-d weights)."""
    from timm.optim import param_groups_weight_decay
    return torch.optim.AdamW(param_groups_weight_decay(model, weight_decay), lr=lr, betas=(0.9, 0.95))


def official_steps(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   images: torch.Tensor, steps: int, lr: float, mask_ratio: float) -> float:
    """`steps` iterations of engine_pretrain.train_one_epoch's loop body; returns the last loss."""
    device = images.device
    cuda = device.type == "cuda"
    params = [p for p in model.parameters() if p.requires_grad]
    loss_value = float("nan")
    for _ in range(steps):
        for group in optimizer.param_groups:  # lr_sched.adjust_learning_rate, every iteration
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
            loss, _, _ = model(images, mask_ratio=mask_ratio)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise RuntimeError(f"loss is {loss_value}, stopping training")
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.norm(torch.stack([torch.norm(p.grad.detach(), 2.0) for p in params if p.grad is not None]), 2.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        if cuda:
            torch.cuda.synchronize()
    return loss_value


def measure_official(arch: str, variant_kwargs: dict[str, Any], batch: int, device: torch.device, warmup: int,
                     steps: int, mask_ratio: float = 0.75) -> dict[str, Any]:
    """Warm up, then time `steps` official steps; the same numbers as bench.gpu_bench.measure."""
    from mae.model import create_mae_model
    from mae.optim import absolute_lr

    torch.manual_seed(0)
    model = create_mae_model(arch, **variant_kwargs).to(device)
    unfused = use_unfused_attention(model)
    lr = absolute_lr(1.5e-4, batch)
    optimizer = official_optimizer(model, lr)
    cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=cuda)
    images = torch.randn(batch, model.in_chans, *model.patch_embed.img_size, device=device)
    model.train()
    t0 = time.perf_counter()
    official_steps(model, optimizer, scaler, images, warmup, lr, mask_ratio)
    warmup_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()  # every step ends in a synchronize, so the host clock is the GPU's time
    loss = official_steps(model, optimizer, scaler, images, steps, lr, mask_ratio)
    elapsed = time.perf_counter() - t0
    peak_mem = torch.cuda.max_memory_allocated(device) / 2 ** 30 if cuda else float("nan")
    syncs: float | str = ""
    if cuda:  # per step: 6 steps' syncs minus 2 steps', over 4 (as bench.gpu_bench counts ours)
        syncs = (count_host_syncs(lambda: official_steps(model, optimizer, scaler, images, 6, lr, mask_ratio))
                 - count_host_syncs(lambda: official_steps(model, optimizer, scaler, images, 2, lr, mask_ratio))) / 4
    del model, optimizer
    if cuda:
        torch.cuda.empty_cache()
    return {"images_per_s": batch * steps / elapsed, "step_s": elapsed / steps, "warmup_s": warmup_s,
            "peak_mem_gib": peak_mem, "host_syncs_per_step": syncs, "unfused_attention_modules": unfused,
            "final_loss": loss}
