"""The three stages as recipes: what differs between MAE pretraining, fine-tuning and linear probing.

`mae.train` runs one loop for all three (parse -> build -> resume -> loop -> save). A recipe says what
that loop trains: the model, the optimizer and its parameter groups, the loss of one micro batch,
whether the stage is evaluated on the validation split, and the work around the loop (pretraining:
the PCA target's basis before the first step, FLOPs per image, `recon.png` at the end).

    recipe = RECIPES["finetune"]
    model = recipe.build_model(run, num_classes)
    optimizer = recipe.build_optimizer(run, model)
    objective = recipe.build_objective(run, model, micro_batch_size)
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from mae.config import Config, ModelConfig
from mae.distributed import DistInfo
from mae.errors import UserError
from mae.run_folder import RECON_PNG
from mae.seeding import generator

log = logging.getLogger("mae")

PCA_FIT_IMAGES = 4096

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, int, int], torch.Tensor]


def config_dataset(cfg: Config, split: str):
    """The config's dataset split ('train' or 'val'), subset as the config says; with data.val_split
    'val' is the held-out part of the training images, not the test set. `cfg` is resolved."""
    from mae.data import build_dataset
    return build_dataset(cfg.data.name, cfg.data.root, split, img_size=cfg.model.img_size,
                         in_chans=cfg.model.in_chans,
                         subset=cfg.data.train_subset if split == "train" else cfg.data.val_subset,
                         download=cfg.data.download, val_split=cfg.data.val_split)


@dataclass(frozen=True)
class Run:
    """Where and how this process trains; fixed before anything is built.

    Args:
        stage: 'pretrain', 'finetune' or 'linprobe'.
        cfg: the resolved config.
        out_dir: the run folder.
        run_id: `mae.config.identity(cfg, stage)`.
        device: where this process trains.
        dist: rank and world size.
        autocast_dtype: torch.bfloat16 / torch.float16, or None for fp32.
    """

    stage: str
    cfg: Config
    out_dir: Path
    run_id: str
    device: torch.device
    dist: DistInfo
    autocast_dtype: torch.dtype | None

    @property
    def section(self) -> Any:
        """The stage's config section (`cfg.pretrain`, `cfg.finetune` or `cfg.linprobe`)."""
        return self.cfg.stage(self.stage)

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def dataset(self, split: str):
        """The config's dataset split ('train' or 'val'): `config_dataset`."""
        return config_dataset(self.cfg, split)

    def loader(self, dataset, kind: str, batch_size: int):
        """This rank's loader over `dataset` with the augmentation of `kind` (a stage, or 'eval')."""
        from mae.data import build_loader
        cfg = self.cfg
        extra = {}
        if kind == "pretrain":
            extra["augmentation"] = cfg.pretrain.augmentation
        if kind == "finetune":
            extra.update(randaug=cfg.finetune.randaug or None, reprob=cfg.finetune.reprob)
        return build_loader(dataset, kind, batch_size=batch_size, img_size=cfg.model.img_size,
                            in_chans=cfg.model.in_chans, seed=cfg.run.seed, rank=self.dist.rank,
                            world_size=self.dist.world_size, num_workers=cfg.data.num_workers,
                            device=self.device, crop_min_scale=cfg.data.crop_min_scale, **extra)


@dataclass(frozen=True)
class Objective:
    """What one micro batch is trained on: `loss_fn(model, images, targets, step, micro)` after
    `batch_transform(images, targets)` (mixup / cutmix), if any."""

    loss_fn: LossFn
    batch_transform: Callable | None = None


class Recipe(abc.ABC):
    """What one stage trains; the loop in `mae.train` is shared. Subclasses implement the builders."""

    evaluates = True    # top-1 / top-5 on the validation split (every run.eval_every_epochs and at the end)
    saves_model = True  # model.pth at the end

    @abc.abstractmethod
    def build_model(self, run: Run, num_classes: int) -> nn.Module:
        """The model on the CPU, before it is moved, compiled or wrapped."""

    @abc.abstractmethod
    def build_optimizer(self, run: Run, model: nn.Module) -> torch.optim.Optimizer:
        """The optimizer over the trainable parameters, with the stage's parameter groups."""

    @abc.abstractmethod
    def build_objective(self, run: Run, model: nn.Module, micro_batch_size: int) -> Objective:
        """The loss of one micro batch and the batch transform, if any."""

    def build_ema(self, run: Run, model: nn.Module) -> nn.Module | None:
        """A moving average of `model`'s weights (on its device), updated after every optimizer step,
        evaluated and saved instead of the model; None when the stage keeps none."""
        return None

    def check_data(self, run: Run) -> None:
        """Data the stage reads only after training (e.g. an evaluation at the end), checked before it."""

    def start(self, run: Run, model: nn.Module, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler | None) -> int:
        """A fresh start only (not a resume), before `before_training`: fill the model (and optimizer and
        scaler) from a training checkpoint the stage continues; returns the epoch to start at."""
        return 0

    def before_training(self, run: Run, model: nn.Module) -> None:
        """A fresh start only (not a resume), after per-rank seeding, before the first step."""

    def extra_metrics(self, model: nn.Module) -> dict[str, Any]:
        """Numbers for metrics.json besides the loop's."""
        return {}

    def save_outputs(self, run: Run, model: nn.Module) -> None:
        """Extra files of the run folder, written by the main process after model.pth."""

    def final_metrics(self, run: Run, model: nn.Module) -> dict[str, Any]:
        """Numbers measured on the trained model after the loop, by every process (collective)."""
        return {}


# ---- pretraining ---------------------------------------------------------------------------------


def build_mae(model_cfg: ModelConfig) -> nn.Module:
    """The MaskedAutoencoderViT of a config's `model:` section (its `tokenizer` imported and called)."""
    from mae.model import create_mae_model
    model_args = dataclasses.asdict(model_cfg)
    arch = model_args.pop("arch")
    if model_cfg.tokenizer is not None:
        model_args["tokenizer"] = _import_callable("model.tokenizer", model_cfg.tokenizer)()
    return create_mae_model(arch, **model_args)


def pretrain_loss(model: nn.Module, images: torch.Tensor, _targets: torch.Tensor, step: int, micro: int, *,
                  seed: int, num_patches: int, batch_size: int, micro_batch_size: int, rank: int = 0,
                  world_size: int = 1, random_masks: bool = True) -> torch.Tensor:
    """The MAE loss of one micro batch (images: [n, C, H, W]) at global optimizer step `step`.

    With random masking, the mask of each image comes from (seed, step, its position in the global
    batch), so a run does not depend on how the global batch is split over processes and micro batches.
    Other samplings draw their masks inside the model.

    Args:
        model: the MaskedAutoencoderViT (possibly compiled / DDP-wrapped).
        images: this rank's micro batch.
        step: the global optimizer step being taken; micro: the micro batch within it.
        seed: run.seed. num_patches: L. batch_size: the global batch.
        micro_batch_size / rank / world_size: the loader's layout of the global batch.
        random_masks: model.mask_sampling == 'random'.
    """
    if not random_masks:
        return model(images)[0]
    device = images.device
    g = generator(seed, step, device=device)
    noise = torch.rand(batch_size, num_patches, generator=g, device=device)
    # Loader layout: rank r's j-th image of micro batch k sits at k*micro*world + r + world*j.
    rows = micro * micro_batch_size * world_size + rank + world_size * torch.arange(images.shape[0], device=device)
    return model(images, noise=noise[rows])[0]


class Pretrain(Recipe):
    """MAE pretraining: AdamW (no decay on norms / biases), the masked-patch loss, recon.png."""

    evaluates = False

    def build_model(self, run: Run, num_classes: int) -> nn.Module:
        return build_mae(run.cfg.model)

    def build_optimizer(self, run: Run, model: nn.Module) -> torch.optim.Optimizer:
        from mae.optim import absolute_lr, build_pretrain_optimizer
        section = run.cfg.pretrain
        lr = absolute_lr(section.blr, section.batch_size, section.lr)
        return build_pretrain_optimizer(model, lr, section.weight_decay, section.betas)

    def build_objective(self, run: Run, model: nn.Module, micro_batch_size: int) -> Objective:
        return Objective(partial(
            pretrain_loss, seed=run.cfg.run.seed, num_patches=model.num_patches,
            batch_size=run.cfg.pretrain.batch_size, micro_batch_size=micro_batch_size, rank=run.dist.rank,
            world_size=run.dist.world_size, random_masks=run.cfg.model.mask_sampling == "random"))

    def start(self, run: Run, model: nn.Module, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler | None) -> int:
        """`pretrain.checkpoint`: its weights; an official training checkpoint-N.pth continues as the
        official `--resume` does (AdamW moments and step counts, grad scaler, epoch N+1; the learning
        rate, betas and weight decay stay the config's)."""
        from mae.checkpoint import load_whole_state, read_weights_file
        path = run.cfg.pretrain.checkpoint
        if path is None:
            return 0
        weights = read_weights_file(path)
        load_whole_state(model, weights.model, "pretrain.checkpoint", path,
                         "an MAE of the same model.* settings (not a fine-tuned ViT)")
        if weights.optimizer is None or weights.epoch is None:
            log.info("pretraining starts from the weights of %s (%s)", path, weights.kind)
            return 0
        start = weights.epoch + 1
        if start >= run.cfg.pretrain.epochs:
            raise UserError("pretrain.epochs", run.cfg.pretrain.epochs,
                            f"more than the {start} epochs {path} has finished (it was saved after epoch {weights.epoch})")
        _load_official_optimizer_state(optimizer, weights.optimizer, path)
        if scaler is not None and weights.scaler:
            scaler.load_state_dict(weights.scaler)
        log.info("continuing %s (%s, model %s) at epoch %d of %d: weights, AdamW moments%s", path, weights.kind,
                 (weights.args or {}).get("model"), start, run.cfg.pretrain.epochs,
                 ", grad scaler" if scaler is not None and weights.scaler else "")
        planned = (weights.args or {}).get("epochs")
        if isinstance(planned, int) and planned != run.cfg.pretrain.epochs:  # the schedule is the config's
            log.warning("%s was written by a run of %d epochs; the learning-rate schedule continues over "
                        "pretrain.epochs=%d", path, planned, run.cfg.pretrain.epochs)
        changes = official_setting_changes(weights.args or {}, run.cfg)
        if changes:
            log.warning("%s was trained with other settings than this run continues with (the objective or "
                        "the recipe changes at epoch %d): %s", path, start, "; ".join(changes))
        return start

    def check_data(self, run: Run) -> None:
        """The split the final k-NN reads, before hours of training: a data.val_subset larger than it is a
        user error now (it was a warning after the last step, and metrics without knn_*); a split that is
        not there (an image folder without val/) only costs the k-NN, said now as at the end."""
        try:
            run.dataset("val")
        except UserError as exc:
            if exc.field == "data.val_subset":
                raise
            log.warning("knn will not be measured at the end: %s", exc)

    def before_training(self, run: Run, model: nn.Module) -> None:
        """The PCA target's basis, fitted on patches of (unaugmented) training images (unless the starting
        checkpoint brought one)."""
        if run.cfg.model.target != "pca" or bool(model.recon_target.fitted):
            return
        train_set = run.dataset("train")
        loader = run.loader(train_set, "eval", min(256, len(train_set)))
        patches, seen = [], 0
        with torch.no_grad():
            for images, _ in loader:
                patches.append(model.patchify(images.to(run.device)).flatten(0, 1))
                seen += images.shape[0]
                if seen >= PCA_FIT_IMAGES:
                    break
        model.fit_pca(torch.cat(patches))
        log.info("pca target: basis fitted on the patches of %d training images", seen)

    def extra_metrics(self, model: nn.Module) -> dict[str, Any]:
        """train_flops_per_image; needs the PCA basis (fitted or restored) when the target is pca."""
        try:
            from mae.flops import training_flops_per_image
            return {"train_flops_per_image": int(training_flops_per_image(model))}
        except (ImportError, TypeError, RuntimeError) as exc:
            log.warning("train_flops_per_image not measured: %s", exc)
            return {}

    def final_metrics(self, run: Run, model: nn.Module) -> dict[str, Any]:
        """k-NN accuracy of the frozen encoder (cls token; k 20, cosine, T 0.07) of the config's 'val'
        split against its 'train' split: `knn_top1`, `knn_top5`, `knn_time_s` (extraction + votes). When
        the config probes on cached features, the features are kept for that probe (`FEATURES_FILE`)."""
        from mae.features import FEATURES_FILE, KNN_K, KNN_TEMPERATURE, compute_features, knn_of_features
        keep = run.is_main and run.cfg.linprobe.features == "cached"
        try:
            features = compute_features(run.cfg, model.state_dict(), device=run.device, rank=run.dist.rank,
                                        world_size=run.dist.world_size,
                                        save=run.out_dir / FEATURES_FILE if keep else None)
        except UserError as exc:  # e.g. an image folder without val/: the pretraining itself is fine
            log.warning("knn not measured: %s", exc)
            return {}
        knn = knn_of_features(features)
        log.info("knn: top1 %.2f top5 %.2f (k %d, cosine, T %.2f; %d train / %d val images): features %.1f s, "
                 "votes %.1f s", knn["top1"], knn["top5"], KNN_K, KNN_TEMPERATURE, len(features.train_labels),
                 len(features.val_labels), features.extract_s, knn["time_s"])
        return {"knn_top1": knn["top1"], "knn_top5": knn["top5"], "knn_time_s": features.extract_s + knn["time_s"]}

    def save_outputs(self, run: Run, model: nn.Module) -> None:
        """recon.png: reconstructions of a few validation (else training) images; token ids cannot be drawn."""
        if run.cfg.model.target == "token":
            return
        from mae.masking import num_kept
        from mae.visualize import save_reconstruction_grid
        try:
            images_set = run.dataset("val")
        except UserError:
            images_set = run.dataset("train")
        loader = run.loader(images_set, "eval", min(4, len(images_set)))
        images, _ = next(iter(loader))
        # The training ratio, and for random masking also the paper's Fig. 4 ratios that keep a patch.
        ratios = {run.cfg.model.mask_ratio}
        if run.cfg.model.mask_sampling == "random":
            ratios |= {r for r in (0.75, 0.85, 0.95) if num_kept(model.num_patches, r) >= 1}
        save_reconstruction_grid(model, images.to(run.device), run.out_dir / RECON_PNG, seed=run.cfg.run.seed,
                                 mask_ratios=sorted(ratios), mean=images_set.mean, std=images_set.std)


def official_setting_changes(args: dict[str, Any], cfg: Config) -> list[str]:
    """What a main_pretrain.py run (its saved `args`) set otherwise than `cfg` continues with: the loss
    target (norm_pix_loss), mask ratio, base learning rate and weight decay; ['norm_pix_loss=True -> model.target
    'pixel'', ...]. An argument the file does not carry is not compared."""
    ours = {"norm_pix_loss": ("model.target", cfg.model.target, cfg.model.target == "norm_pixel"),
            "mask_ratio": ("model.mask_ratio", cfg.model.mask_ratio, cfg.model.mask_ratio),
            **({"blr": ("pretrain.blr", cfg.pretrain.blr, cfg.pretrain.blr)} if cfg.pretrain.lr is None else {}),
            "weight_decay": ("pretrain.weight_decay", cfg.pretrain.weight_decay, cfg.pretrain.weight_decay)}
    changes = []
    for name, (field_name, shown, comparable) in ours.items():
        if name in args and args[name] is not None and args[name] != comparable:
            changes.append(f"{name}={args[name]!r} -> {field_name}={shown!r}")
    return changes


def _load_official_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any], path: str) -> None:
    """The per-parameter AdamW state (moments, step counts) of an official checkpoint, into `optimizer`.

    Both programs order the parameters alike: timm's weight-decay groups [no decay, decay], each in
    `named_parameters` order, over the same state-dict names; the shapes are checked one by one.
    """
    ours = [p for group in optimizer.param_groups for p in group["params"]]
    theirs = [i for group in saved.get("param_groups", []) for i in group.get("params", [])]
    state = saved.get("state", {})
    bad = [k for k, i in enumerate(theirs[:len(ours)]) if i in state
           and isinstance(state[i].get("exp_avg"), torch.Tensor) and state[i]["exp_avg"].shape != ours[k].shape]
    if len(theirs) != len(ours) or bad:
        raise UserError.message("pretrain.checkpoint", f"pretrain.checkpoint={path!r}: its optimizer state does not "
                                f"match this model's parameters ({len(theirs)} parameters saved, {len(ours)} here"
                                f"{f', wrong shape at positions {bad[:5]}' if bad else ''}); allowed: an official "
                                "main_pretrain.py checkpoint of the same model")
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": {k: state[i] for k, i in enumerate(theirs) if i in state},
                               "param_groups": current["param_groups"]})


# ---- fine-tuning and linear probing ----------------------------------------------------------------


def _downstream_vit(run: Run, num_classes: int, global_pool: str, without: str, **kwargs: Any) -> nn.Module:
    """A timm ViT with the config's encoder, loaded from `<stage>.checkpoint` (`without` is logged when null)."""
    from mae.checkpoint import load_model_state
    from mae.downstream import ENCODER_KEYS, create_vit, load_encoder_weights
    cfg, path = run.cfg, run.section.checkpoint
    vit = create_vit(cfg.model.arch, num_classes, global_pool=global_pool,
                     **kwargs, **{k: getattr(cfg.model, k) for k in ENCODER_KEYS})
    if path is None:
        log.info("%s.checkpoint is null: %s", run.stage, without)
        return vit
    state_dict, _ = load_model_state(path)
    report = load_encoder_weights(vit, state_dict, source=str(path))
    log.info("encoder weights from %s: %s", path, report.summary())
    return vit


def _classification(criterion: nn.Module, batch_transform: Callable | None = None) -> Objective:
    def loss_fn(model, images, targets, _step, _micro):
        return criterion(model(images), targets)
    return Objective(loss_fn, batch_transform)


class Finetune(Recipe):
    """End-to-end fine-tuning: layer-wise lr decay, mixup / cutmix, label smoothing, drop path."""

    def build_model(self, run: Run, num_classes: int) -> nn.Module:
        from mae.downstream import set_trainable_blocks
        section = run.cfg.finetune
        vit = _downstream_vit(run, num_classes, section.global_pool, "training from scratch",
                              drop_path_rate=section.drop_path)
        if section.trainable_blocks is not None:
            set_trainable_blocks(vit, section.trainable_blocks)
        return vit

    def build_ema(self, run: Run, model: nn.Module) -> nn.Module | None:
        """`finetune.ema_decay`: timm's ModelEmaV3 over the weights and buffers (Table 11's EMA, constant decay)."""
        if run.cfg.finetune.ema_decay is None:
            return None
        from timm.utils import ModelEmaV3
        return ModelEmaV3(model, decay=run.cfg.finetune.ema_decay)

    def build_optimizer(self, run: Run, model: nn.Module) -> torch.optim.Optimizer:
        from mae.optim import absolute_lr, build_finetune_optimizer
        section = run.cfg.finetune
        lr = absolute_lr(section.blr, section.batch_size, section.lr)
        return build_finetune_optimizer(model, lr, section.weight_decay, section.layer_decay, section.betas)

    def build_objective(self, run: Run, model: nn.Module, micro_batch_size: int) -> Objective:
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        from mae.data import build_mixup
        section = run.cfg.finetune
        mixup = build_mixup(section.mixup, section.cutmix, section.smoothing, model.num_classes)
        if mixup is not None and micro_batch_size % 2:
            raise UserError("finetune.micro_batch_size", micro_batch_size, "an even number when mixup / cutmix is on")
        if mixup is not None:
            return _classification(SoftTargetCrossEntropy(), mixup)
        if section.smoothing > 0:
            return _classification(LabelSmoothingCrossEntropy(smoothing=section.smoothing))
        return _classification(nn.CrossEntropyLoss())


class Linprobe(Recipe):
    """Linear probing: frozen encoder, cls token, BatchNorm without affine + Linear head, LARS."""

    saves_model = False

    def build_model(self, run: Run, num_classes: int) -> nn.Module:
        from mae.downstream import attach_linear_probe
        vit = _downstream_vit(run, num_classes, "token", "probing a randomly initialised encoder")
        return attach_linear_probe(vit, num_classes)

    def build_optimizer(self, run: Run, model: nn.Module) -> torch.optim.Optimizer:
        from mae.optim import absolute_lr, build_lars_optimizer
        section = run.cfg.linprobe
        lr = absolute_lr(section.blr, section.batch_size, section.lr)
        return build_lars_optimizer(model.head, lr, section.weight_decay)

    def build_objective(self, run: Run, model: nn.Module, micro_batch_size: int) -> Objective:
        return _classification(nn.CrossEntropyLoss())


RECIPES: dict[str, Recipe] = {"pretrain": Pretrain(), "finetune": Finetune(), "linprobe": Linprobe()}


def _import_callable(field_name: str, spec: str) -> Callable:
    """`'package.module:name'` -> the object it names (UserError if it cannot be imported)."""
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UserError(field_name, spec, f"an importable 'module:callable' ({exc})") from None
    if not callable(obj):
        raise UserError(field_name, spec, "a callable")
    return obj
