"""Frozen-encoder features, a linear probe trained on them, and k-NN accuracy.

The paper's linear probe trains BatchNorm1d(affine=False) + Linear on the cls token of a frozen encoder
with LARS, on augmented images (`linprobe.features: augmented`, `mae.recipes.Linprobe`). Here the
frozen encoder's features are computed once (eval transform, no augmentation, `torch.no_grad`) and
reused: by the same head and optimizer trained to convergence in seconds (`linprobe.features: cached`),
and by a k-NN classifier (DINO's `eval_knn.py`: cosine similarity, k = 20, votes weighted by
exp(similarity / 0.07)), measured at the end of every pretraining (`knn_top1` in metrics.json).

A pretraining whose config probes on cached features keeps the k-NN features it computed
(`features.pth` beside its model.pth), and the probe of its model.pth reads them instead of computing
them again: they are the same bits, checked by a key of everything that decides them (the encoder's
weights, the images, pooling, batch, processes, device type); on any difference the probe computes.

    mae features --checkpoint runs/x/model.pth --config C.yaml --out feats.pth   # or feats.npz (NumPy)
    mae knn --checkpoint runs/x/model.pth --config C.yaml [--linprobe]
    mae knn --checkpoint random --config C.yaml          # a randomly initialised encoder of the arch
    mae knn --raw-pixels --config C.yaml                 # normalised raw pixels
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from mae.choices import RANDOM_CHECKPOINT
from mae.config import Config
from mae.errors import UserError
from mae.seeding import generator

log = logging.getLogger("mae")

KNN_K = 20
KNN_TEMPERATURE = 0.07
FEATURE_BATCH = 256
PROGRESS_EVERY_S = 30.0  # without a terminal (cluster logs): one progress line this often
FEATURES_FILE = "features.pth"  # a pretraining's k-NN features, beside its model.pth, for its cached probe
# Convergence of the cached probe (see `train_cached_probe`).
PROBE_TOL = 1e-3
PROBE_PATIENCE = 3
PROBE_PLATEAUS = 3


@dataclass
class Features:
    """Features of the config's training and evaluation splits.

    Args:
        train / val: float32 [N, D] (not normalised).
        train_labels / val_labels: int64 [N].
        num_classes: K.
        source: checkpoint path, 'random' or 'raw_pixels'.
        pool: 'token' (cls token, the paper's probe feature), 'avg' (mean of the patch tokens) or 'pixels'.
        extract_s: seconds spent computing them (or reading them, when `reused_from` is set).
        key: what decides their bits (`features_key`); None for raw pixels.
        reused_from: the features file they were read from, else None.
    """

    train: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    num_classes: int
    source: str
    pool: str
    extract_s: float = 0.0
    key: dict[str, Any] | None = None
    reused_from: str | None = None

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def save_features(path: str | Path, features: Features) -> Path:
    """Write `features` atomically: a `.npz` path as a NumPy archive (arrays, and the rest as 0-d arrays;
    `key` as JSON text; loads with numpy.load's default allow_pickle=False), any other path as a torch file
    (a dict of tensors and plain values, loadable with weights_only)."""
    import io

    from mae.checkpoint import atomic_write_bytes
    buffer = io.BytesIO()
    if _is_numpy_file(path):
        import numpy as np
        state = features.state_dict()
        arrays = {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray("" if v is None else v))
                  for k, v in state.items() if k != "key"}
        np.savez(buffer, **arrays, key=np.asarray(json.dumps(features.key)))
    else:
        torch.save(features.state_dict(), buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def load_features(path: str | Path) -> Features:
    """Read a file written by `save_features` (UserError if it is not one)."""
    try:
        if _is_numpy_file(path):
            import numpy as np
            with np.load(path) as archive:
                state = {k: archive[k] for k in archive.files}
            tensors = {k: torch.from_numpy(state.pop(k)) for k in ("train", "train_labels", "val", "val_labels")}
            return Features(**tensors, num_classes=int(state["num_classes"]), source=str(state["source"]),
                            pool=str(state["pool"]), extract_s=float(state["extract_s"]),
                            key=json.loads(str(state["key"])), reused_from=str(state["reused_from"]) or None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        return Features(**state)
    except (OSError, RuntimeError, TypeError, EOFError, pickle.UnpicklingError, ValueError, KeyError) as exc:
        raise UserError.message("features", f"{path} is not a features file written by `mae features` "
                                f"({type(exc).__name__})") from None


def _is_numpy_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".npz"


def weights_digest(module: nn.Module) -> str:
    """sha256 of a module's state: every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(tensor.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def features_key(cfg: Config, encoder: nn.Module, pool: str, device: torch.device | str, world_size: int,
                 batch_size: int) -> dict[str, Any]:
    """Everything that decides the bits of `compute_features`' output for an encoder: its weights, the
    images (data keys, input size), the pooling, the batch, the processes sharing the images (each
    computes its own batches) and the device type."""
    data = cfg.data
    return {"encoder_sha256": weights_digest(encoder), "pool": pool, "batch_size": batch_size,
            "world_size": world_size, "device_type": torch.device(device).type,
            "data": {"name": data.name, "root": str(data.root), "train_subset": data.train_subset,
                     "val_subset": data.val_subset, "val_split": data.val_split,
                     "img_size": cfg.model.img_size, "in_chans": cfg.model.in_chans}}


def _reusable_features(path: Path, key: dict[str, Any]) -> Features | None:
    """The features saved at `path` when their key equals `key`; None (logged) when absent or different."""
    if not path.is_file():
        return None
    try:
        features = load_features(path)
    except UserError as exc:
        log.warning("features not reused: %s", exc)
        return None
    if features.key != key:
        log.info("features not reused: %s was computed %s", path,
                 "by an older version" if features.key is None else "for other weights, images or settings")
        return None
    return features


# ---- encoders --------------------------------------------------------------------------------------


def build_encoder(cfg: Config, checkpoint: str | Path | dict[str, torch.Tensor] | None) -> nn.Module:
    """The config's encoder as a timm ViT without head (global_pool 'token'), frozen, in eval mode.

    Args:
        cfg: resolved config (its `model` section gives the encoder's shape).
        checkpoint: a model.pth path, a state dict (an MAE's, for the k-NN of a pretraining), or
            'random' / None for the initialisation seeded by `run.seed`.
    """
    from mae.checkpoint import load_model_state
    from mae.downstream import ENCODER_KEYS, create_vit, load_encoder_weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.run.seed)
        vit = create_vit(cfg.model.arch, 1, global_pool="token", **{k: getattr(cfg.model, k) for k in ENCODER_KEYS})
    vit.reset_classifier(0)  # no head: forward_features is all we use
    if checkpoint is not None and checkpoint != RANDOM_CHECKPOINT:
        if isinstance(checkpoint, (str, Path)):
            if not Path(checkpoint).is_file():
                raise UserError("--checkpoint", str(checkpoint), "an existing model.pth, or 'random'")
            state_dict, _ = load_model_state(checkpoint)
            source = str(checkpoint)
        else:
            state_dict, source = checkpoint, "the pretrained model"
        load_encoder_weights(vit, state_dict, source=source)
    vit.requires_grad_(False)
    return vit.eval()


def _pool(encoder: nn.Module, images: torch.Tensor, pool: str) -> torch.Tensor:
    tokens = encoder.forward_features(images)  # [B, prefix + L, D], after the final norm
    if pool == "token":
        return tokens[:, 0]
    return tokens[:, encoder.num_prefix_tokens:].mean(1)


@torch.no_grad()
def extract_features(encoder: nn.Module | None, loader, pool: str = "token", device: torch.device | str = "cpu",
                     world_size: int = 1, num_samples: int | None = None, what: str = "features",
                     show_progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of every image of an 'eval' loader, in dataset order, with progress (`_Progress`,
    named `what`) where `show_progress` (the main process).

    Args:
        encoder: a frozen ViT (`build_encoder`), or None for the normalised pixels flattened.
        loader: `mae.data.build_loader(dataset, 'eval', ...)` (no shuffle, no drop_last); with several
            processes each rank's shard, gathered here (DistributedSampler's padding is cut off).
        pool: 'token' or 'avg'.
        world_size: processes sharing the dataset; num_samples: the dataset's size (needed when > 1).
    Returns:
        float32 [N, D] on the CPU, int64 [N].
    """
    feats, labels = [], []
    progress = _Progress(what, math.ceil(len(loader.dataset) / world_size), show_progress)
    for images, targets in loader:
        images = images.to(device)
        out = images.flatten(1) if encoder is None else _pool(encoder, images, pool)
        feats.append(out.float())
        labels.append(targets.to(device))
        progress.update(images.shape[0])
    progress.close()
    x, y = torch.cat(feats), torch.cat(labels)
    if world_size > 1:
        # rank r holds samples r, r + W, r + 2W, ... (equal counts after padding): interleave them back
        xs, ys = [torch.empty_like(x) for _ in range(world_size)], [torch.empty_like(y) for _ in range(world_size)]
        dist.all_gather(xs, x)
        dist.all_gather(ys, y)
        x = torch.stack(xs, 1).flatten(0, 1)[:num_samples]
        y = torch.stack(ys, 1).flatten(0, 1)[:num_samples]
    return x.cpu(), y.cpu()


class _Progress:
    """Progress over `total` images: a bar on a terminal, else (a cluster log) a line every PROGRESS_EVERY_S."""

    def __init__(self, what: str, total: int, enabled: bool):
        self.what, self.total, self.enabled, self.done = what, total, enabled, 0
        self.started = self.last = time.perf_counter()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=what, unit="img", file=sys.stderr, dynamic_ncols=True, leave=False)

    def update(self, images: int) -> None:
        self.done += images
        if self.bar is not None:
            self.bar.update(images)
            return
        now = time.perf_counter()
        if self.enabled and now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            log.info("%s: %d of %d images (%.0f s)", self.what, self.done, self.total, now - self.started)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def compute_features(cfg: Config, checkpoint: str | Path | dict[str, torch.Tensor] | None, *, pool: str = "token",
                     raw_pixels: bool = False, device: torch.device | str = "cpu", rank: int = 0,
                     world_size: int = 1, batch_size: int = FEATURE_BATCH, reuse: str | Path | None = None,
                     save: str | Path | None = None, encoder: nn.Module | None = None) -> Features:
    """Features of the config's 'train' and 'val' splits (subsets, `data.val_split` as configured).

    Args:
        cfg: resolved config.
        checkpoint: as in `build_encoder`; ignored with `raw_pixels`.
        pool: 'token' or 'avg'.
        raw_pixels: the normalised pixels instead of an encoder's features.
        reuse: a features file (`save`'s) to read instead of computing, when its key is this call's.
        save: where to write the computed features with their key (the caller's main process only).
        encoder: `build_encoder(cfg, checkpoint)`, when the caller built it already (to check the weights
            before it writes anything).
    """
    from mae.data import build_loader
    from mae.recipes import config_dataset
    started = time.perf_counter()
    if raw_pixels:
        encoder = None
    else:
        encoder = (build_encoder(cfg, checkpoint) if encoder is None else encoder).to(device)
    if raw_pixels:
        source = "raw_pixels"
    elif checkpoint is None:
        source = RANDOM_CHECKPOINT
    else:
        source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "model"
    key = None if encoder is None else features_key(cfg, encoder, pool, device, world_size, batch_size)
    reused = None if reuse is None or key is None else _reusable_features(Path(reuse), key)
    if reused is not None:
        reused.source, reused.reused_from, reused.extract_s = source, str(reuse), time.perf_counter() - started
        return reused
    out: dict[str, Any] = {}
    num_classes = None
    for split in ("train", "val"):
        dataset = config_dataset(cfg, split)
        num_classes = num_classes or cfg.data.num_classes or dataset.num_classes
        loader = build_loader(dataset, "eval", batch_size=min(batch_size, len(dataset)), img_size=cfg.model.img_size,
                              in_chans=cfg.model.in_chans, rank=rank, world_size=world_size,
                              num_workers=cfg.data.num_workers, device=device)
        if rank == 0:
            log.info("features: %s split, %d images (%s)", split, len(dataset),
                     "raw pixels" if raw_pixels else f"encoder {source}, pool {pool}")
        out[split], out[f"{split}_labels"] = extract_features(encoder, loader, pool, device, world_size, len(dataset),
                                                              what=f"features: {split}", show_progress=rank == 0)
    features = Features(num_classes=num_classes, source=source, pool="pixels" if raw_pixels else pool,
                        extract_s=time.perf_counter() - started, key=key, **out)
    if save is not None:
        save_features(save, features)
    return features


# ---- k-NN ------------------------------------------------------------------------------------------


@torch.no_grad()
def knn_classify(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, k: int = KNN_K, temperature: float = KNN_TEMPERATURE,
                 chunk: int = 256) -> dict[str, float]:
    """Weighted k-NN accuracy (percent), as DINO's `eval_knn.knn_classifier`.

    Features are L2-normalised; each test image takes its k most cosine-similar training images, each
    votes for its label with weight exp(similarity / temperature); the class with the largest sum wins.
    Test images go `chunk` at a time, so memory is O(chunk x N_train) beyond the features.

    Args:
        train_x: [N, D]; train_y: [N]; test_x: [M, D]; test_y: [M].
        num_classes: K. k: neighbours (at most N). temperature: vote temperature.
    """
    k = min(k, train_x.shape[0])
    train_t = nn.functional.normalize(train_x.float(), dim=1).t()
    test_x = nn.functional.normalize(test_x.float(), dim=1)
    top1 = top5 = 0
    for start in range(0, test_x.shape[0], chunk):
        sims, idx = (test_x[start:start + chunk] @ train_t).topk(k, dim=1)   # [b, k]
        votes = torch.zeros(sims.shape[0], num_classes, dtype=sims.dtype, device=sims.device)
        votes.scatter_add_(1, train_y[idx], (sims / temperature).exp())
        pred = votes.topk(min(5, num_classes), dim=1).indices
        correct = pred.eq(test_y[start:start + chunk].view(-1, 1))
        top1 += int(correct[:, 0].sum())
        top5 += int(correct.any(1).sum())
    m = max(test_x.shape[0], 1)
    return {"top1": 100.0 * top1 / m, "top5": 100.0 * top5 / m}


def knn_of_features(features: Features, k: int = KNN_K, temperature: float = KNN_TEMPERATURE) -> dict[str, float]:
    """k-NN accuracy of the val split against the train split, with its cost (seconds)."""
    started = time.perf_counter()
    result = knn_classify(features.train, features.train_labels, features.val, features.val_labels,
                          features.num_classes, k, temperature)
    return {**result, "time_s": time.perf_counter() - started}


# ---- the cached-feature linear probe ------------------------------------------------------------------


@dataclass
class ProbeResult:
    """What `train_cached_probe` returns: accuracies in percent on the val features, the head."""

    top1: float
    top5: float
    val_loss: float
    epochs: int
    steps: int
    final_loss: float
    converged: bool
    time_s: float
    head: nn.Module
    records: list[dict[str, Any]] = field(default_factory=list)


def probe_head(dim: int, num_classes: int) -> nn.Module:
    """The paper's probe head: BatchNorm1d(affine=False, eps=1e-6) + Linear (std 0.01, bias 0)."""
    from mae.downstream import linear_probe_head
    return linear_probe_head(dim, num_classes)


def train_cached_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                       num_classes: int, *, lr: float, batch_size: int, weight_decay: float = 0.0,
                       warmup_epochs: float = 0.0, max_epochs: int = 100, seed: int = 0,
                       on_epoch: Callable[[dict[str, Any]], None] | None = None) -> ProbeResult:
    """The paper's probe (BatchNorm without affine + Linear, LARS, momentum 0.9) on cached features.

    Each epoch is one pass over the training features in a fresh order (from `seed` and the epoch).
    The lr rises linearly over `warmup_epochs`, then stays at `lr` until the training loss plateaus.
    Convergence is decided on the mean training loss of each epoch: when it has not fallen by more than
    `PROBE_TOL` (relative) below its best for `PROBE_PATIENCE` epochs, training returns to the state of
    its best epoch (head and optimizer) and the lr is divided by 10; the `PROBE_PLATEAUS`-th plateau
    (at lr / 100) returns to the best state once more and ends training as converged. Returning matters
    when the lr is too high: the loss can rise for several epochs, and without it a run that diverged
    would count its plateaus above its best loss as convergence (seen in the tiny grid: LARS lr 16, a
    training loss of 2.2 where the run's best was 0.96). `max_epochs` bounds it; stopping there is
    reported as `converged=False`. `final_loss` is the loss of the epoch whose head is returned.

    Args:
        train_x / val_x: features [N, D] (as extracted); train_y / val_y: labels [N].
        num_classes: K. lr: absolute peak lr (LARS). batch_size: features per step.
        weight_decay: LARS weight decay. seed: init and order.
        on_epoch: called with each epoch's record {"step", "epoch", "loss", "lr", "images_per_s"}.
    """
    from mae.engine import evaluate
    from mae.optim import build_lars_optimizer
    started = time.perf_counter()
    n = train_x.shape[0]
    if batch_size > n:
        raise UserError("linprobe.batch_size", batch_size, f"at most the {n} training images")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = probe_head(train_x.shape[1], num_classes)
    optimizer = build_lars_optimizer(head, lr, weight_decay)
    criterion = nn.CrossEntropyLoss()
    steps_per_epoch = n // batch_size
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    best, since_best, plateaus, scale, step = math.inf, 0, 0, 1.0, 0
    best_state: tuple[dict, dict] | None = None  # head and optimizer at the epoch of the lowest loss
    records: list[dict[str, Any]] = []
    converged, epoch, loss_mean = False, 0, math.nan
    head.train()
    for epoch in range(max_epochs):
        epoch_start = time.perf_counter()
        order = torch.randperm(n, generator=generator(seed, epoch))[:steps_per_epoch * batch_size]
        loss_sum = torch.zeros((), dtype=torch.float64)
        for idx in order.view(steps_per_epoch, batch_size):
            step_lr = lr * scale * min(1.0, (step + 1) / warmup_steps) if warmup_steps else lr * scale
            for group in optimizer.param_groups:
                group["lr"] = step_lr
            loss = criterion(head(train_x[idx]), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double()
            step += 1
        loss_mean = float(loss_sum) / steps_per_epoch
        if not math.isfinite(loss_mean):
            raise UserError.message("linprobe", f"the cached probe's loss is not finite at epoch {epoch} "
                                    f"(lr {lr}): lower linprobe.blr / linprobe.lr")
        record = {"step": step, "epoch": epoch, "loss": loss_mean, "lr": step_lr,
                  "images_per_s": steps_per_epoch * batch_size / max(time.perf_counter() - epoch_start, 1e-9)}
        records.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if step < warmup_steps:
            continue
        if loss_mean < best * (1 - PROBE_TOL):
            best, since_best = loss_mean, 0
            best_state = (copy.deepcopy(head.state_dict()), copy.deepcopy(optimizer.state_dict()))
        else:
            since_best += 1
        if since_best >= PROBE_PATIENCE:
            plateaus += 1
            head.load_state_dict(best_state[0])
            optimizer.load_state_dict(best_state[1])
            loss_mean = best
            if plateaus >= PROBE_PLATEAUS:
                converged = True
                break
            scale, since_best = scale / 10, 0
    batches = list(zip(val_x.split(FEATURE_BATCH * 4), val_y.split(FEATURE_BATCH * 4)))
    result = evaluate(head, batches, torch.device("cpu"))
    return ProbeResult(top1=result["top1"], top5=result["top5"], val_loss=result["loss"], epochs=epoch + 1,
                       steps=step, final_loss=loss_mean, converged=converged,
                       time_s=time.perf_counter() - started, head=head, records=records)


def probe_of_features(features: Features, cfg: Config, on_epoch: Callable | None = None) -> ProbeResult:
    """The cached probe with the config's `linprobe` recipe: lr (blr x batch / 256 unless `lr`), batch,
    weight decay, warmup; `linprobe.epochs` is the upper bound on epochs."""
    from mae.optim import absolute_lr
    section = cfg.linprobe
    return train_cached_probe(features.train, features.train_labels, features.val, features.val_labels,
                              features.num_classes, lr=absolute_lr(section.blr, section.batch_size, section.lr),
                              batch_size=section.batch_size, weight_decay=section.weight_decay,
                              warmup_epochs=section.warmup_epochs, max_epochs=section.epochs, seed=cfg.run.seed,
                              on_epoch=on_epoch)
