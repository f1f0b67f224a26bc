"""Reconstruction grids in the paper's style (Figs. 2-4).

Each row is one image: the original, then for every mask ratio the masked input, the reconstruction
and the reconstruction with the visible patches pasted back. A norm_pixel model predicts each patch
normalised by its own mean and variance; as in the official demo, the prediction is mapped back to
pixels with the statistics of the original image's patch. A pca model's coefficients go back through
its basis. A token-target model predicts no pixels and cannot be drawn.

    mae visualize --checkpoint runs/tiny/pretrain/abc/model.pth --out recon.png --mask-ratios 0.75,0.85,0.95
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from mae.choices import check_figure_request
from mae.distributed import check_device_present
from mae.errors import UserError


@torch.no_grad()
def reconstruct(model: nn.Module, images: torch.Tensor, mask_ratio: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """Mask, encode, decode and map the prediction back to the model's input space.

    Args:
        model: a MaskedAutoencoderViT (pixel, norm_pixel or pca target).
        images: [N, C, H, W] normalised like the model's training data.
        mask_ratio: fraction of patches removed.
        seed: the mask's seed (same seed, same masks).

    Returns:
        `masked`, `reconstruction`, `pasted`: [N, C, H, W] in the input space (masked patches are 0 in
        `masked`); `mask`: [N, L], 1 = removed.
    """
    target = getattr(model, "target", "pixel")
    if target == "token":
        raise UserError("model.target", target, "pixel, norm_pixel or pca to draw reconstructions")
    was_training = model.training
    model.eval()
    g = torch.Generator(device=images.device).manual_seed(seed)
    noise = torch.rand(images.shape[0], model.num_patches, generator=g, device=images.device)
    kwargs = {"noise": noise} if getattr(model, "mask_sampling", "random") == "random" else {}
    _, pred, mask = model(images, mask_ratio=mask_ratio, **kwargs)
    pred = pred.float()
    patches = model.patchify(images).float()
    if target == "norm_pixel":
        mean = patches.mean(dim=-1, keepdim=True)
        var = patches.var(dim=-1, keepdim=True, unbiased=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    elif target == "pca":
        basis = model.recon_target
        pred = pred @ basis.components.float() + basis.mean.float()
    removed = mask.unsqueeze(-1)
    model.train(was_training)
    return {
        "masked": model.unpatchify(patches * (1 - removed)),
        "reconstruction": model.unpatchify(pred),
        "pasted": model.unpatchify(patches * (1 - removed) + pred * removed),
        "mask": mask,
    }


def _to_display(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[C, H, W] normalised -> [H, W, C] (or [H, W]) in [0, 1]."""
    c = x.shape[0]
    mean_t = torch.tensor(list(mean)[:c] if len(mean) >= c else list(mean) * c, dtype=x.dtype).view(-1, 1, 1)
    std_t = torch.tensor(list(std)[:c] if len(std) >= c else list(std) * c, dtype=x.dtype).view(-1, 1, 1)
    img = (x.cpu() * std_t + mean_t).clamp(0, 1)
    return img[0] if c == 1 else img.permute(1, 2, 0)


def save_reconstruction_grid(model: nn.Module, images: torch.Tensor, path: str | Path, *,
                             mask_ratios: Sequence[float] = (0.75,), seed: int = 0,
                             mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> Path:
    """Draw rows of (original | per ratio: masked, reconstruction, reconstruction + visible) to an image.

    Args:
        model: a MaskedAutoencoderViT.
        images: [N, C, H, W] normalised images (one row each).
        path: the image to write, in the format its suffix names (.png, .pdf, .svg, .jpg).
        mask_ratios: one column group per ratio (the paper's Fig. 4 uses 0.75, 0.85, 0.95).
        seed: mask seed.
        mean / std: the normalisation of `images`, undone for display.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [reconstruct(model, images, r, seed=seed) for r in mask_ratios]
    n = images.shape[0]
    columns = [("original", None, None)]
    for r, result in zip(mask_ratios, results):
        pct = ratio_label(r, result["mask"])
        columns += [(f"masked {pct}", result, "masked"), (f"reconstruction {pct}", result, "reconstruction"),
                    (f"+ visible {pct}", result, "pasted")]
    cell_h = 1.6 * images.shape[-2] / images.shape[-1]  # rows as tall as the images' aspect asks
    fig, axes = plt.subplots(n, len(columns), figsize=(1.6 * len(columns), cell_h * n + 0.3), squeeze=False)
    for i in range(n):
        for j, (title, result, key) in enumerate(columns):
            x = images[i] if result is None else result[key][i]
            ax = axes[i][j]
            img = _to_display(x.float(), mean, std)
            ax.imshow(img.numpy(), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")  # matplotlib writes the format the suffix names
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def ratio_label(mask_ratio: float, mask: torch.Tensor) -> str:
    """'75%', or '85% (14/16)' when the patches removed are not exactly that share: the model keeps
    int(L * (1 - ratio)) patches, so 85% of 16 removes 14 (87.5%), 95% all 16."""
    removed, total = int(mask[0].sum()), mask.shape[1]
    label = f"{round(100 * mask_ratio)}%"
    return label if removed == round(mask_ratio * total, 6) else f"{label} ({removed}/{total})"


def check_request(mask_ratios: Sequence[float], num_images: int, seed: int, device: str) -> None:
    """Refuse, in one line, a grid that cannot be drawn or would not fit a figure, or a device that is not
    there (before anything is loaded)."""
    check_figure_request(mask_ratios, num_images, seed, device)
    check_device_present(device)


def visualize_checkpoint(checkpoint: str | Path, out: str | Path, *, mask_ratios: Sequence[float] = (0.75, 0.85, 0.95),
                         num_images: int = 4, seed: int = 0, device: str = "cpu", overrides: Sequence[str] = ()) -> Path:
    """Rebuild the model stored in a pretraining `model.pth`, take `num_images` validation images of
    its dataset and draw the reconstruction grid.

    Args:
        checkpoint: a `model.pth` written by `mae pretrain` (it carries the config), or an official
            training checkpoint-N.pth (its `args` give the model and the data folder).
        out: the image to write (its suffix names the format: .png, .pdf, .svg, .jpg).
        mask_ratios: column groups.
        num_images: rows.
        seed: mask seed.
        device: where to run the model.
        overrides: `section.key=value` changes to the checkpoint's config (e.g. `data.root=...`).
    """
    from mae.checkpoint import load_model_and_config, load_whole_state
    from mae.data import build_dataset, build_loader
    from mae.recipes import build_mae

    check_request(mask_ratios, num_images, seed, device)
    state_dict, cfg = load_model_and_config(checkpoint, overrides)
    if cfg is None:
        raise UserError.message("--checkpoint", f"{checkpoint} carries no config: use a model.pth written by `mae pretrain`")
    model = build_mae(cfg.model)
    load_whole_state(model, state_dict, "--checkpoint", str(checkpoint),
                     "the pretraining model.pth its config describes (not a fine-tuned model)")
    model.to(device)
    try:
        dataset = build_dataset(cfg.data.name, cfg.data.root, "val", img_size=cfg.model.img_size,
                                in_chans=cfg.model.in_chans, subset=num_images)
    except UserError:
        dataset = build_dataset(cfg.data.name, cfg.data.root, "train", img_size=cfg.model.img_size,
                                in_chans=cfg.model.in_chans, subset=num_images)
    loader = build_loader(dataset, "eval", batch_size=min(num_images, len(dataset)), img_size=cfg.model.img_size,
                          in_chans=cfg.model.in_chans, device=device)
    images, _ = next(iter(loader))
    return save_reconstruction_grid(model, images.to(device), out, mask_ratios=mask_ratios, seed=seed,
                                    mean=dataset.mean, std=dataset.std)
