"""The three programs of the paper: MAE pretraining, end-to-end fine-tuning, linear probing.

    mae pretrain --config workflow/presets/tiny.yaml --out runs/tiny/pretrain/abc
    mae finetune --config workflow/presets/tiny.yaml finetune.checkpoint=runs/tiny/pretrain/abc/model.pth --out DIR
    mae linprobe --config workflow/presets/tiny.yaml linprobe.checkpoint=runs/tiny/pretrain/abc/model.pth --out DIR
    torchrun --standalone --nproc_per_node=8 -m mae.cli pretrain --config paper.yaml --out DIR

Each program: parse (resolved config) -> build (data, model, optimizer, schedule) -> resume from the
newest valid checkpoint in DIR if there is one -> loop (engine.train_one_epoch) -> save (model.pth,
recon.png for pretraining, metrics.json last). Relaunching the same command after a crash, SIGTERM
or time limit continues exactly where the last checkpoint left off (same weights, same log).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from mae import checkpoint as ckpt
from mae import distributed
from mae.config import Config, dump_config, flatten, identity
from mae.engine import (EXIT_PREEMPTED, EpochContext, LoopState, PreemptionFlag, TrainingStopped, evaluate,
                        train_one_epoch)
from mae.errors import UserError

log = logging.getLogger("mae")

METRICS_JSONL = "metrics.jsonl"
METRICS_JSON = "metrics.json"
CONFIG_YAML = "config.yaml"
MODEL_PTH = "model.pth"
RECON_PNG = "recon.png"
TRAIN_LOG = "train.log"
MLFLOW_RUN_ID_FILE = "mlflow_run_id"
PCA_FIT_IMAGES = 4096


def pretrain(cfg: Config, out_dir: str | Path, command: str | None = None) -> dict[str, Any]:
    """MAE pretraining of `cfg.model` on `cfg.data` with the `cfg.pretrain` recipe; returns metrics.json's content."""
    return _Program("pretrain", cfg, out_dir, command).run()


def finetune(cfg: Config, out_dir: str | Path, command: str | None = None) -> dict[str, Any]:
    """End-to-end fine-tuning (from `finetune.checkpoint`, or from scratch when it is null)."""
    return _Program("finetune", cfg, out_dir, command).run()


def linprobe(cfg: Config, out_dir: str | Path, command: str | None = None) -> dict[str, Any]:
    """Linear probing of the frozen encoder from `linprobe.checkpoint` (cls token, BN without affine, LARS)."""
    return _Program("linprobe", cfg, out_dir, command).run()


def git_revision() -> str:
    """`git rev-parse HEAD` of the repository holding this package, or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (a torn last line from a killed writer is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


# ------------------------------------------------------------------------------------------------


@contextmanager
def _run_logging(log_file: Path | None, is_main: bool):
    """Log to stdout and `train.log` on the main process; only warnings elsewhere."""
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)
    previous_level, previous_propagate = log.level, log.propagate
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    try:
        yield
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()
        log.setLevel(previous_level)
        log.propagate = previous_propagate


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("run.device", name, "'cpu' or 'auto' (no CUDA device is visible)")
        if name == "cuda":
            return torch.device("cuda", local_rank)
    return torch.device(name)


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _mix_seed(*values: int) -> int:
    """A 63-bit seed from several integers (splitmix-style; stable across processes and runs)."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def _count_params(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


@dataclass
class _Built:
    """What `build` returns: everything the loop needs."""

    model: nn.Module                      # unwrapped
    train_model: nn.Module                # DDP-wrapped (or the same module)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: Any
    loss_fn: Callable
    steps_per_epoch: int
    accum_steps: int
    micro_batch_size: int
    batch_transform: Callable | None = None
    val_dataset: Any = None
    extra_metrics: dict[str, Any] = field(default_factory=dict)


class _Program:
    """One stage run in one folder: parse -> build -> resume -> loop -> save."""

    def __init__(self, stage: str, cfg: Config, out_dir: str | Path, command: str | None):
        self.stage = stage
        self.cfg = cfg.resolved()
        self.section = self.cfg.stage(stage)
        self.out_dir = Path(out_dir)
        self.command = command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        self.run_id = identity(self.cfg, stage)

    # ---- parse / setup ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        device = _resolve_device(cfg.run.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = distributed.init_distributed(device)
        self.device = device
        self.is_main = self.dist.is_main
        if cfg.run.threads is not None:
            torch.set_num_threads(cfg.run.threads)
        self.autocast_dtype = _autocast_dtype(cfg.run.precision, self.device)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        distributed.barrier()

        finished = self._finished_metrics()
        if finished is not None:
            return finished
        with _run_logging(self.out_dir / TRAIN_LOG if self.is_main else None, self.is_main):
            return self._run_logged()

    def _finished_metrics(self) -> dict[str, Any] | None:
        """A folder that already holds this run's metrics.json is done: return it instead of training again."""
        path = self.out_dir / METRICS_JSON
        if not path.exists():
            return None
        metrics = json.loads(path.read_text())
        if metrics.get("run_id") != self.run_id or metrics.get("stage") != self.stage:
            raise UserError.message("--out", f"{self.out_dir} holds a finished {metrics.get('stage')} run "
                                    f"{metrics.get('run_id')}, not this config ({self.stage} {self.run_id}); "
                                    "choose another --out")
        return metrics

    def _run_logged(self) -> dict[str, Any]:
        cfg = self.cfg
        # Same seed on every rank while building, so every rank builds the same initial weights.
        torch.manual_seed(cfg.run.seed)
        built = self._build()
        resume = ckpt.find_resume_checkpoint(self.out_dir)
        state = LoopState()
        self.train_time_s = 0.0
        resumed_from = None
        if resume is not None:
            resumed_from = self._restore(resume, built, state)
        else:
            # Per-rank randomness (drop path, mixup, non-random masks) from here on.
            self._seed_all(_mix_seed(cfg.run.seed, self.dist.rank))
            if self.stage == "pretrain" and cfg.model.target == "pca":
                self._fit_pca(built.model)
        if self.stage == "pretrain":
            built.extra_metrics.update(self._count_pretrain_flops(built.model))
        if self.is_main:
            dump_config(cfg, self.out_dir / CONFIG_YAML, meta={
                "git_revision": git_revision(), "stage": self.stage, "run_id": self.run_id,
                "command": self.command})
            self._truncate_records(state.global_step)
        tracker = self._start_tracker()
        preemption = PreemptionFlag().install()
        try:
            metrics = self._loop(built, state, tracker, preemption, resumed_from)
        except TrainingStopped as stop:
            log.warning("%s", stop)
            self._finish_tracker(tracker, "KILLED" if stop.exit_code == EXIT_PREEMPTED else "FAILED")
            raise
        except BaseException:
            self._finish_tracker(tracker, "FAILED")
            raise
        finally:
            preemption.uninstall()
        self._finish_tracker(tracker, "FINISHED", {**metrics, "run_dir": str(self.out_dir)})
        return metrics

    @staticmethod
    def _seed_all(seed: int) -> None:
        import random

        import numpy as np
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)

    # ---- build ---------------------------------------------------------------------------------

    def _batch_geometry(self) -> tuple[int, int]:
        """(micro batch per process, accumulation steps) from the stage's global batch."""
        section, world = self.section, self.dist.world_size
        micro = section.micro_batch_size or section.batch_size // world
        if micro < 1 or section.batch_size % (world * micro):
            raise UserError(f"{self.stage}.batch_size", section.batch_size,
                            f"a multiple of world_size x micro_batch_size = {world} x {micro} (set "
                            f"{self.stage}.micro_batch_size to a divisor of batch_size / world_size)")
        return micro, section.batch_size // (world * micro)

    def _dataset(self, split: str):
        from mae.data import build_dataset
        cfg = self.cfg
        return build_dataset(cfg.data.name, cfg.data.root, split, img_size=cfg.model.img_size,
                             in_chans=cfg.model.in_chans,
                             subset=cfg.data.train_subset if split == "train" else cfg.data.val_subset,
                             download=cfg.data.download)

    def _loader(self, dataset, kind: str, batch_size: int):
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

    def _build(self) -> _Built:
        micro, accum = self._batch_geometry()
        train_set = self._dataset("train")
        self.num_classes = self.cfg.data.num_classes or train_set.num_classes
        # Before the loader, whose own check cannot name the stage's field. batch_size <= images also
        # guarantees at least one optimizer step per epoch: world x micro x accum = batch_size and each
        # rank holds images // world (drop_last), so every rank has at least accum micro-batches.
        if self.section.batch_size > len(train_set):
            raise UserError(f"{self.stage}.batch_size", self.section.batch_size,
                            f"at most the {len(train_set)} training images (after data.train_subset)")
        loader = self._loader(train_set, self.stage, micro)
        steps_per_epoch = len(loader) // accum
        build = {"pretrain": self._build_pretrain, "finetune": self._build_finetune,
                 "linprobe": self._build_linprobe}[self.stage]
        built = build(loader, steps_per_epoch, accum, micro)
        if self.stage != "pretrain":
            built.val_dataset = self._dataset("val")
        return built

    def _wrap(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        train_model = model
        if self.cfg.run.compile:
            train_model = torch.compile(model)
        if self.dist.distributed:
            train_model = nn.parallel.DistributedDataParallel(
                train_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return train_model

    def _schedule(self, optimizer, steps_per_epoch: int):
        from mae.optim import build_scheduler
        return build_scheduler(optimizer, self.section.epochs, self.section.warmup_epochs, steps_per_epoch,
                               min_lr=self.section.min_lr)

    def _build_pretrain(self, loader, steps_per_epoch: int, accum: int, micro: int) -> _Built:
        from mae.model import create_mae_model
        from mae.optim import absolute_lr, build_pretrain_optimizer
        cfg, section = self.cfg, self.cfg.pretrain
        model_args = {k: v for k, v in cfg.to_dict()["model"].items() if k != "arch"}
        if cfg.model.tokenizer is not None:
            model_args["tokenizer"] = _import_callable("model.tokenizer", cfg.model.tokenizer)()
        model = create_mae_model(cfg.model.arch, **model_args)
        train_model = self._wrap(model)
        lr = absolute_lr(section.blr, section.batch_size, section.lr)
        optimizer = build_pretrain_optimizer(model, lr, section.weight_decay, section.betas)
        world, rank, seed = self.dist.world_size, self.dist.rank, cfg.run.seed
        num_patches = model.num_patches
        use_noise = cfg.model.mask_sampling == "random"
        device = self.device

        def loss_fn(m: nn.Module, images: torch.Tensor, _targets: torch.Tensor, step: int, micro_index: int):
            if not use_noise:
                return m(images)[0]
            # The random mask of each image comes from (seed, step, its position in the global batch),
            # so the run does not depend on how the global batch is split over processes and micro batches.
            # Loader layout: rank r's j-th image of micro batch k sits at k*micro*world + r + world*j.
            g = torch.Generator(device=device).manual_seed(_mix_seed(seed, step))
            noise = torch.rand(section.batch_size, num_patches, generator=g, device=device)
            rows = micro_index * micro * world + rank + world * torch.arange(images.shape[0], device=device)
            return m(images, noise=noise[rows])[0]

        return _Built(model, train_model, optimizer, self._schedule(optimizer, steps_per_epoch), loader, loss_fn,
                      steps_per_epoch, accum, micro)

    @staticmethod
    def _count_pretrain_flops(model: nn.Module) -> dict[str, int]:
        """train_flops_per_image for metrics.json; needs the PCA basis (fitted or restored) when target is pca."""
        try:
            from mae.flops import training_flops_per_image
            return {"train_flops_per_image": int(training_flops_per_image(model))}
        except (ImportError, TypeError, RuntimeError) as exc:
            log.warning("train_flops_per_image not measured: %s", exc)
            return {}

    def _encoder_args(self) -> dict[str, Any]:
        from mae.downstream import ENCODER_KEYS
        return {k: getattr(self.cfg.model, k) for k in ENCODER_KEYS}

    def _load_pretrained_encoder(self, vit: nn.Module, field: str, path: str | None, without: str) -> None:
        """Load the encoder of the pretraining checkpoint at `path` into `vit`; `without` is logged when None."""
        from mae.downstream import load_encoder_weights
        if path is None:
            log.info("%s is null: %s", field, without)
            return
        state_dict, _ = ckpt.load_model_state(path)
        report = load_encoder_weights(vit, state_dict, source=str(path))
        log.info("encoder weights from %s: %s", path, report)

    def _build_finetune(self, loader, steps_per_epoch: int, accum: int, micro: int) -> _Built:
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        from mae.data import build_mixup
        from mae.downstream import create_vit, set_trainable_blocks
        from mae.optim import absolute_lr, build_finetune_optimizer
        cfg, section = self.cfg, self.cfg.finetune
        vit = create_vit(cfg.model.arch, self.num_classes, global_pool=section.global_pool,
                         drop_path_rate=section.drop_path, **self._encoder_args())
        self._load_pretrained_encoder(vit, "finetune.checkpoint", section.checkpoint, "training from scratch")
        if section.trainable_blocks is not None:
            set_trainable_blocks(vit, section.trainable_blocks)
        train_model = self._wrap(vit)
        lr = absolute_lr(section.blr, section.batch_size, section.lr)
        optimizer = build_finetune_optimizer(vit, lr, section.weight_decay, section.layer_decay)
        mixup = build_mixup(section.mixup, section.cutmix, section.smoothing, self.num_classes)
        if mixup is not None and micro % 2:
            raise UserError("finetune.micro_batch_size", micro, "an even number when mixup / cutmix is on")
        if mixup is not None:
            criterion: nn.Module = SoftTargetCrossEntropy()
        elif section.smoothing > 0:
            criterion = LabelSmoothingCrossEntropy(smoothing=section.smoothing)
        else:
            criterion = nn.CrossEntropyLoss()

        def loss_fn(m, images, targets, _step, _micro):
            return criterion(m(images), targets)

        return _Built(vit, train_model, optimizer, self._schedule(optimizer, steps_per_epoch), loader, loss_fn,
                      steps_per_epoch, accum, micro, batch_transform=mixup)

    def _build_linprobe(self, loader, steps_per_epoch: int, accum: int, micro: int) -> _Built:
        from mae.downstream import attach_linear_probe, create_vit
        from mae.optim import absolute_lr, build_lars_optimizer
        cfg, section = self.cfg, self.cfg.linprobe
        vit = create_vit(cfg.model.arch, self.num_classes, global_pool="token", **self._encoder_args())
        self._load_pretrained_encoder(vit, "linprobe.checkpoint", section.checkpoint,
                                      "probing a randomly initialised encoder")
        attach_linear_probe(vit, self.num_classes)
        train_model = self._wrap(vit)
        lr = absolute_lr(section.blr, section.batch_size, section.lr)
        optimizer = build_lars_optimizer(vit.head, lr, section.weight_decay)
        criterion = nn.CrossEntropyLoss()

        def loss_fn(m, images, targets, _step, _micro):
            return criterion(m(images), targets)

        return _Built(vit, train_model, optimizer, self._schedule(optimizer, steps_per_epoch), loader, loss_fn,
                      steps_per_epoch, accum, micro)

    def _fit_pca(self, model: nn.Module) -> None:
        """Fit the PCA target's basis on patches of (unaugmented) training images."""
        train_set = self._dataset("train")
        loader = self._loader(train_set, "eval", min(256, len(train_set)))
        patches, seen = [], 0
        with torch.no_grad():
            for images, _ in loader:
                patches.append(model.patchify(images.to(self.device)).flatten(0, 1))
                seen += images.shape[0]
                if seen >= PCA_FIT_IMAGES:
                    break
        model.fit_pca(torch.cat(patches))
        log.info("pca target: basis fitted on the patches of %d training images", seen)

    # ---- checkpoint / resume ---------------------------------------------------------------------

    def _checkpoint_state(self, built: _Built, state: LoopState) -> dict[str, Any]:
        rng = ckpt.capture_rng_state()
        if self.dist.distributed:  # every rank's RNG, so that a resumed DDP run continues each rank's stream
            gathered: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(gathered, rng)
            rng_per_rank = gathered
        else:
            rng_per_rank = [rng]
        scaler = getattr(self, "scaler", None)
        return {
            "stage": self.stage,
            "run_id": self.run_id,
            "model": built.model.state_dict(),
            "optimizer": built.optimizer.state_dict(),
            "scheduler": built.scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "loop": state.state_dict(),
            "loader": built.loader.state_dict(),
            "rng_per_rank": rng_per_rank,
            "train_time_s": self.train_time_s + (time.perf_counter() - self.started),
            "world_size": self.dist.world_size,
            "config": self.cfg.to_dict(),
        }

    def _save(self, built: _Built, state: LoopState) -> str:
        payload = self._checkpoint_state(built, state)  # collective in DDP: every rank takes part
        path = self.out_dir / ckpt.CHECKPOINT_NAME
        if self.is_main:
            ckpt.save_checkpoint(self.out_dir, payload)
            log.info("checkpoint: %s (step %d)", path, state.global_step)
        distributed.barrier()
        return str(path)

    def _restore(self, resume: ckpt.ResumePoint, built: _Built, state: LoopState) -> int:
        saved = resume.state
        if saved.get("stage") != self.stage or saved.get("run_id") != self.run_id:
            raise UserError.message("--out", f"{resume.path} belongs to {saved.get('stage')} run "
                                    f"{saved.get('run_id')}, not this config ({self.stage} {self.run_id}); "
                                    "choose another --out or remove the folder")
        log.info("%s", resume.note)
        built.model.load_state_dict(saved["model"])
        built.optimizer.load_state_dict(saved["optimizer"])
        built.scheduler.load_state_dict(saved["scheduler"])
        self._saved_scaler = saved.get("scaler")
        state.load_state_dict(saved["loop"])
        built.loader.load_state_dict(saved["loader"])
        self.train_time_s = float(saved.get("train_time_s", 0.0))
        rngs = saved["rng_per_rank"]
        if len(rngs) != self.dist.world_size:
            log.warning("checkpoint written by %d processes, resuming with %d: random streams restart per rank",
                        len(rngs), self.dist.world_size)
            self._seed_all(_mix_seed(self.cfg.run.seed, self.dist.rank, state.global_step))
        else:
            ckpt.restore_rng_state(rngs[self.dist.rank])
        log.info("resumed at epoch %d, step %d of the epoch, global step %d", state.epoch, state.step_in_epoch,
                 state.global_step)
        return state.global_step

    # ---- loop ------------------------------------------------------------------------------------

    def _truncate_records(self, global_step: int) -> None:
        """Drop records logged after the checkpoint we resume from: they will be logged again."""
        path = self.out_dir / METRICS_JSONL
        records = read_jsonl(path)
        kept = [r for r in records if r.get("step", 0) <= global_step]
        if global_step == 0:
            kept = []
        if kept != records or (path.exists() and not records):
            ckpt.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    def _loop(self, built: _Built, state: LoopState, tracker, preemption: PreemptionFlag,
              resumed_from: int | None) -> dict[str, Any]:
        cfg, section = self.cfg, self.section
        self.scaler = None
        if self.autocast_dtype == torch.float16:
            self.scaler = torch.amp.GradScaler(self.device.type)
            if getattr(self, "_saved_scaler", None):
                self.scaler.load_state_dict(self._saved_scaler)
        records_file = open(self.out_dir / METRICS_JSONL, "a") if self.is_main else None

        def write_record(record: dict[str, Any]) -> None:
            records_file.write(json.dumps(record) + "\n")
            records_file.flush()
            if tracker is not None:
                values = {k: v for k, v in record.items() if k not in ("step", "epoch")}
                _never_fatal(tracker.log_metrics, values, step=record["step"])

        ctx = EpochContext(
            steps_per_epoch=built.steps_per_epoch, accum_steps=built.accum_steps,
            images_per_step=section.batch_size, device=self.device, autocast_dtype=self.autocast_dtype,
            scaler=self.scaler, clip_grad=getattr(section, "clip_grad", None),
            log_every_steps=cfg.run.log_every_steps, checkpoint_every_steps=cfg.run.checkpoint_every_steps,
            stop_after_steps=cfg.run.stop_after_steps, save_checkpoint=lambda s: self._save(built, s),
            write_record=write_record, batch_transform=built.batch_transform, preemption=preemption,
            last_checkpoint=str(self.out_dir / ckpt.CHECKPOINT_NAME) if resumed_from is not None else None,
            progress=sys.stdout.isatty(), is_main=self.is_main)
        log.info("%s %s: %d epochs x %d steps, batch %d = %d processes x %d micro x %d accumulation, device %s, "
                 "precision %s", self.stage, self.run_id, section.epochs, built.steps_per_epoch, section.batch_size,
                 self.dist.world_size, built.micro_batch_size, built.accum_steps, self.device,
                 self.autocast_dtype or "fp32")
        self.started = time.perf_counter()
        start_step = state.global_step
        eval_result: dict[str, float] | None = None
        built.train_model.train()
        try:
            while state.epoch < section.epochs:
                built.loader.set_epoch(state.epoch)
                stop_reason = train_one_epoch(built.train_model, built.loss_fn, iter(built.loader), built.optimizer,
                                              built.scheduler, state, ctx)
                epoch = state.epoch
                state.epoch, state.step_in_epoch = epoch + 1, 0
                built.loader.set_epoch(state.epoch)
                every = cfg.run.eval_every_epochs
                if self.stage != "pretrain" and ((every and state.epoch % every == 0) or state.epoch == section.epochs):
                    eval_result = self._evaluate(built)
                    if self.is_main:
                        write_record({"step": state.global_step, "epoch": epoch, "val_loss": eval_result["loss"],
                                      "top1": eval_result["top1"], "top5": eval_result["top5"]})
                    log.info("epoch %d: val top1 %.2f top5 %.2f", epoch, eval_result["top1"], eval_result["top5"])
                    built.train_model.train()
                ctx.last_checkpoint = self._save(built, state)
                if stop_reason is not None:
                    raise TrainingStopped(EXIT_PREEMPTED, f"{stop_reason}: checkpointed at step {state.global_step} "
                                          f"({ctx.last_checkpoint}); run the same command again to resume")
        finally:
            if records_file is not None:
                records_file.close()
        train_time = self.train_time_s + (time.perf_counter() - self.started)
        return self._finish(built, state, eval_result, train_time, start_step, tracker, resumed_from)

    def _evaluate(self, built: _Built) -> dict[str, float]:
        loader = self._loader(built.val_dataset, "eval", built.micro_batch_size)
        return evaluate(built.train_model, iter(loader), self.device, self.autocast_dtype)

    # ---- save ------------------------------------------------------------------------------------

    def _finish(self, built: _Built, state: LoopState, eval_result, train_time: float, start_step: int,
                tracker, resumed_from: int | None) -> dict[str, Any]:
        cfg = self.cfg
        total, trainable = _count_params(built.model)
        metrics: dict[str, Any] = {
            "stage": self.stage,
            "run_id": self.run_id,
            "status": "completed",
            "epochs": self.section.epochs,
            "steps": state.global_step,
            "final_loss": state.last_loss,
        }
        if eval_result is not None:
            metrics["top1"], metrics["top5"] = eval_result["top1"], eval_result["top5"]
        metrics.update({
            "train_time_s": train_time,
            "images_per_s": state.global_step * self.section.batch_size / max(train_time, 1e-9),
            **built.extra_metrics,
            "num_params": total,
            "trainable_params": trainable,
            "world_size": self.dist.world_size,
            "git_revision": git_revision(),
            "host": socket.gethostname(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "mlflow_run_id": getattr(tracker, "run_id", None) if tracker is not None else None,
        })
        if resumed_from is not None:
            metrics["resumed_from_step"] = resumed_from
        if self.is_main:
            if self.stage in ("pretrain", "finetune"):
                ckpt.save_model(self.out_dir / MODEL_PTH, built.model, cfg.to_dict())
            if self.stage == "pretrain" and cfg.model.target != "token":  # token ids cannot be drawn
                self._save_reconstructions(built.model)
            if tracker is not None:
                for name in (CONFIG_YAML, RECON_PNG):
                    if (self.out_dir / name).exists():
                        _never_fatal(tracker.log_artifact, self.out_dir / name)
            # Last, atomically: its presence means the run is complete.
            ckpt.atomic_write_text(self.out_dir / METRICS_JSON, json.dumps(metrics, indent=2) + "\n")
            log.info("done: %s", json.dumps({k: metrics.get(k) for k in ("steps", "final_loss", "top1", "top5",
                                                                           "train_time_s")}))
        distributed.barrier()
        return metrics

    def _save_reconstructions(self, model: nn.Module) -> None:
        from mae.masking import num_kept
        from mae.visualize import save_reconstruction_grid
        try:
            images_set = self._dataset("val")
        except UserError:
            images_set = self._dataset("train")
        loader = self._loader(images_set, "eval", min(4, len(images_set)))
        images, _ = next(iter(loader))
        # The training ratio, and for random masking also the paper's Fig. 4 ratios that keep a patch.
        ratios = {self.cfg.model.mask_ratio}
        if self.cfg.model.mask_sampling == "random":
            ratios |= {r for r in (0.75, 0.85, 0.95) if num_kept(model.num_patches, r) >= 1}
        save_reconstruction_grid(model, images.to(self.device), self.out_dir / RECON_PNG, seed=self.cfg.run.seed,
                                 mask_ratios=sorted(ratios), mean=images_set.mean, std=images_set.std)

    # ---- tracking ----------------------------------------------------------------------------------

    def _start_tracker(self):
        """MLflow mirror on the main process; any failure leaves the run untracked, never stopped."""
        cfg = self.cfg
        if not (self.is_main and cfg.tracking.enabled):
            return None
        try:
            from mae.tracking import Tracker, run_tags
            tags = run_tags(self.run_id, self.stage, git_revision(), extra=cfg.tracking.tags)
            tracker = Tracker(enabled=True)
            tracker.start(self.out_dir, params=flatten(cfg.to_dict()), tags=tags, experiment=cfg.tracking.experiment,
                          run_name=cfg.tracking.run_name or f"{self.stage}-{self.run_id}", uri=cfg.tracking.uri)
            return tracker
        except Exception as exc:  # tracking must never stop training
            log.warning("tracking disabled: %s", exc)
            return None

    @staticmethod
    def _finish_tracker(tracker, status: str, metrics: dict[str, Any] | None = None) -> None:
        if tracker is None:
            return
        if metrics is not None:
            numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            _never_fatal(tracker.log_metrics, {f"final/{k}": v for k, v in numbers.items()}, step=metrics["steps"])
            _never_fatal(tracker.log_artifact, Path(metrics["run_dir"]) / METRICS_JSON)
        _never_fatal(tracker.finish, status=status)


def _import_callable(field_name: str, spec: str) -> Callable:
    """`'package.module:name'` -> the object it names (UserError if it cannot be imported)."""
    import importlib
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


def _never_fatal(fn: Callable, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception as exc:
        log.warning("tracking call %s failed: %s", getattr(fn, "__name__", fn), exc)
