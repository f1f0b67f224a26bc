"""Training FLOPs per image (forward + backward), counted with torch.utils.flop_counter."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .model import MaskedAutoencoderViT


def training_flops_per_image(
        model: MaskedAutoencoderViT,
        batch_size: int = 1,
        mask_ratio: float | None = None,
) -> float:
    """FLOPs of one training step (forward + backward) divided by the batch size.

    Counted on the model's device with a random batch; a model built on the `meta` device costs no
    compute. The mask count, not the mask pattern, sets the cost, so block/grid masks are counted as
    random masks of the same ratio. Attention is counted through the math backend. Parameter gradients are cleared afterwards.

    Args:
        model: the pretraining model.
        batch_size: images in the counted batch.
        mask_ratio: fraction removed (None = the model's).

    Returns:
        FLOPs per image (a multiply-add counts as 2).
    """
    param = next(model.parameters())
    imgs = torch.randn(batch_size, model.in_chans, *model.patch_embed.img_size, device=param.device, dtype=param.dtype)
    sampling, was_training = model.mask_sampling, model.training
    model.mask_sampling = "random"
    model.train()
    try:
        # the math attention backend decomposes into matmuls, so attention is counted on every device
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            loss, _, _ = model(imgs, mask_ratio=mask_ratio)
            loss.backward()
    finally:
        model.mask_sampling = sampling
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch_size
