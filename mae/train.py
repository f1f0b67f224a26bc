"""The training loop of the paper's three programs: MAE pretraining, end-to-end fine-tuning, linear probing.

    mae pretrain --config workflow/presets/tiny.yaml --out runs/tiny/pretrain/abc
    mae finetune --config workflow/presets/tiny.yaml finetune.checkpoint=runs/tiny/pretrain/abc/model.pth --out DIR
    mae linprobe --config workflow/presets/tiny.yaml linprobe.checkpoint=runs/tiny/pretrain/abc/model.pth --out DIR
    torchrun --standalone --nproc_per_node=8 -m mae.cli pretrain --config paper.yaml --out DIR

One loop for the three stages; what differs (model, optimizer groups, loss, evaluation, extra outputs)
is the stage's recipe in `mae.recipes`. parse (resolved config, run id) -> build (data, the recipe's
model / optimizer / loss, schedule) -> resume from the newest valid checkpoint in DIR if there is one
-> loop (engine.train_one_epoch, evaluation, a checkpoint per epoch) -> save (model.pth, the recipe's
outputs, metrics.json last). Relaunching the same command after a crash, SIGTERM or time limit
continues exactly where the last checkpoint left off (same weights, same log).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from mae import checkpoint as ckpt
from mae import distributed
from mae.choices import batch_geometry
from mae.config import Config, dump_config, identity
from mae.data.datasets import check_num_classes
from mae.engine import (EXIT_PREEMPTED, EpochContext, LoopState, PreemptionFlag, TrainingStopped, autocast_dtype,
                        evaluate, train_one_epoch)
from mae.errors import UserError
from mae.optim import build_scheduler
from mae.recipes import RECIPES, Recipe, Run
from mae.seeding import mix_seed, seed_all
from mae.signals import StopRequested, stop_signals_held
from mae.redaction import log_handler, redact_text, redact_tree
from mae.provenance import environment_record, environment_tags, git_revision
from mae.run_folder import (ARTIFACTS, CHECKPOINT_PTH, CONFIG_YAML, ENVIRONMENT_JSON, METRICS_JSON, METRICS_JSONL,
                            MODEL_PTH, PREVIOUS_CHECKPOINT_PTH, TRAIN_LOG, finished_metrics, flatten,
                            read_jsonl)

log = logging.getLogger("mae")


def pretrain(cfg: Config, out_dir: str | Path, command: str | None = None) -> dict[str, Any]:
    """MAE pretraining of `cfg.model` on `cfg.data` with the `cfg.pretrain` recipe; returns metrics.json's content."""
    return train("pretrain", cfg, out_dir, command)


def finetune(cfg: Config, out_dir: str | Path, command: str | None = None) -> dict[str, Any]:
    """End-to-end fine-tuning (from `finetune.checkpoint`, or from scratch when it is null)."""
    return train("finetune", cfg, out_dir, command)


def linprobe(cfg: Config, out_dir: str | Path, command: str | None = None) -> dict[str, Any]:
    """Linear probing of the frozen encoder from `linprobe.checkpoint` (cls token, BN without affine, LARS)."""
    return train("linprobe", cfg, out_dir, command)


def train(stage: str, cfg: Config, out_dir: str | Path, command: str | None = None) -> dict[str, Any]:
    """Run `stage` in `out_dir` (resuming it if it holds a checkpoint); returns metrics.json's content.

    A folder that already holds this run's metrics.json is done: its metrics are returned, nothing runs.
    """
    cfg = cfg.resolved()
    command = command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    run_id = identity(cfg, stage)
    device = distributed.resolve_device(cfg.run.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist_info = distributed.init_distributed(device)
    _make_repeatable(cfg, device)
    run = Run(stage, cfg, Path(out_dir), run_id, device, dist_info, autocast_dtype(cfg.run.precision, device))
    if run.is_main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    finished = finished_metrics(run.out_dir, stage, run_id)
    if finished is not None:
        return finished
    with _run_logging(run.out_dir / TRAIN_LOG if run.is_main else None, run.is_main):
        if stage == "linprobe" and cfg.linprobe.features != "augmented":
            return _train_cached_probe(run, command)
        return _train(run, RECIPES[stage], command)


@dataclass(frozen=True)
class _Trainable:
    """What a checkpoint captures besides the loop position; built once, before resuming."""

    model: nn.Module  # unwrapped
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    loader: Any
    ema: nn.Module | None  # the recipe's weight average (timm ModelEmaV3), or None


def _train(run: Run, recipe: Recipe, command: str) -> dict[str, Any]:
    cfg, section = run.cfg, run.section

    # ---- build. The same seed on every rank, so that every rank builds the same initial weights.
    torch.manual_seed(cfg.run.seed)
    micro, accum = batch_geometry(run.stage, section.batch_size, section.micro_batch_size, run.dist.world_size)
    train_set = run.dataset("train")
    num_classes = check_num_classes(train_set, cfg.data.num_classes)
    # Before the loader, whose own check cannot name the stage's field. batch_size <= images also
    # guarantees at least one optimizer step per epoch: world x micro x accum = batch_size and each
    # rank holds images // world (drop_last), so every rank has at least accum micro-batches.
    if section.batch_size > len(train_set):
        raise UserError(f"{run.stage}.batch_size", section.batch_size,
                        f"at most the {len(train_set)} training images (after data.train_subset)")
    loader = run.loader(train_set, run.stage, micro)
    steps_per_epoch = len(loader) // accum
    model = recipe.build_model(run, num_classes)
    train_model = _wrap(model, run)
    optimizer = recipe.build_optimizer(run, model)
    objective = recipe.build_objective(run, model, micro)
    scheduler = build_scheduler(optimizer, section.epochs, section.warmup_epochs, steps_per_epoch,
                                min_lr=section.min_lr)
    val_set = run.dataset("val") if recipe.evaluates else None
    recipe.check_data(run)
    scaler = torch.amp.GradScaler(run.device.type) if run.autocast_dtype == torch.float16 else None
    ema = recipe.build_ema(run, model)  # after _wrap: the copy lives on the model's device
    if ema is not None:  # after every optimizer step (a GradScaler-skipped step changes nothing to average)
        optimizer.register_step_post_hook(lambda *_: ema.update(model))
    parts = _Trainable(model, optimizer, scheduler, scaler, loader, ema)

    # ---- resume from the newest valid checkpoint, or start fresh
    state = LoopState()
    resume = ckpt.find_resume_checkpoint(run.out_dir)
    if resume is not None:
        prior_time_s, start_step = _restore(run, resume, parts, state)
    else:
        prior_time_s = 0.0
        # A continued training checkpoint (official checkpoint-N.pth) starts at a later epoch.
        state.epoch = recipe.start(run, model, optimizer, scaler)
        state.global_step = start_step = state.epoch * steps_per_epoch
        # Per-rank randomness (drop path, mixup, non-random masks) from here on.
        seed_all(mix_seed(cfg.run.seed, run.dist.rank))
        recipe.before_training(run, model)
    resumed_from = state.global_step if resume is not None else None
    extra_metrics = recipe.extra_metrics(model)
    if run.is_main:
        _write_run_record(run, command)
        _truncate_records(run.out_dir / METRICS_JSONL, state.global_step)
    tracker = _start_tracker(run)
    records = None  # metrics.jsonl, appended to by the main process

    def write_record(record: dict[str, Any]) -> None:
        _write_record(records, tracker, record)

    def save_checkpoint(state: LoopState) -> str:
        # Collective in DDP (every rank's RNG is gathered): every rank takes part, the main one writes.
        payload = _checkpoint_payload(run, parts, state, prior_time_s + (time.perf_counter() - started), start_step)
        if run.is_main:
            ckpt.save_checkpoint(run.out_dir, payload)
            log.info("checkpoint: %s (step %d)", run.out_dir / CHECKPOINT_PTH, state.global_step)
        distributed.barrier()
        return str(run.out_dir / CHECKPOINT_PTH)

    # ---- loop
    preemption = PreemptionFlag().install()
    ctx = EpochContext(
        steps_per_epoch=steps_per_epoch, accum_steps=accum, images_per_step=section.batch_size, device=run.device,
        autocast_dtype=run.autocast_dtype, scaler=scaler, clip_grad=getattr(section, "clip_grad", None),
        log_every_steps=cfg.run.log_every_steps, checkpoint_every_steps=cfg.run.checkpoint_every_steps,
        stop_after_steps=cfg.run.stop_after_steps, save_checkpoint=save_checkpoint, write_record=write_record,
        batch_transform=objective.batch_transform, preemption=preemption,
        last_checkpoint=str(run.out_dir / CHECKPOINT_PTH) if resumed_from is not None else None,
        progress=sys.stdout.isatty(), is_main=run.is_main)
    log.info("%s %s: %d epochs x %d steps, batch %d = %d processes x %d micro x %d accumulation, device %s, "
             "precision %s", run.stage, run.run_id, section.epochs, steps_per_epoch, section.batch_size,
             run.dist.world_size, micro, accum, run.device, run.autocast_dtype or "fp32")
    started = time.perf_counter()
    eval_result: dict[str, float] | None = None
    try:
        records = open(run.out_dir / METRICS_JSONL, "a") if run.is_main else None
        train_model.train()
        while state.epoch < section.epochs:
            loader.set_epoch(state.epoch)
            stop_reason = train_one_epoch(train_model, objective.loss_fn, iter(loader), optimizer, scheduler,
                                          state, ctx)
            epoch = state.epoch
            state.epoch, state.step_in_epoch = epoch + 1, 0
            loader.set_epoch(state.epoch)
            every = cfg.run.eval_every_epochs
            if recipe.evaluates and ((every and state.epoch % every == 0) or state.epoch == section.epochs):
                eval_result = _evaluate(run, train_model, ema, val_set, micro)
                if run.is_main:
                    write_record({"step": state.global_step, "epoch": epoch, "val_loss": eval_result["loss"],
                                  **{k: v for k, v in eval_result.items() if k.startswith("top")}})
                log.info("epoch %d: val top1 %.2f top5 %.2f%s", epoch, eval_result["top1"], eval_result["top5"],
                         f" (EMA; without: top1 {eval_result['top1_without_ema']:.2f})" if ema is not None else "")
                train_model.train()
            ctx.last_checkpoint = save_checkpoint(state)
            if stop_reason is not None:
                raise TrainingStopped(EXIT_PREEMPTED, f"{stop_reason}: checkpointed at step {state.global_step} "
                                      f"({ctx.last_checkpoint}); run the same command again to resume")
        train_time_s = prior_time_s + (time.perf_counter() - started)
        # Measured on the trained model, outside train_time_s (pretraining: k-NN of the frozen encoder).
        # They reach MLflow as final/<key> with metrics.json; metrics.jsonl keeps one loss record per step.
        extra_metrics = {**extra_metrics, **recipe.final_metrics(run, model)}

        # ---- save: model.pth, the recipe's outputs, metrics.json last (its presence means the run is complete)
        metrics = _final_metrics(run, model, state, eval_result, train_time_s, extra_metrics, tracker, resumed_from,
                                 start_step)
        if run.is_main:
            if recipe.saves_model:  # with an EMA, its weights: the model that was evaluated
                ckpt.save_model(run.out_dir / MODEL_PTH, ema.module if ema is not None else model,
                                _shareable_config(cfg))
            recipe.save_outputs(run, model)
            if tracker is not None:
                for name in ARTIFACTS:  # metrics.json goes when the tracker finishes
                    if (run.out_dir / name).exists():
                        _never_fatal(tracker.log_artifact, run.out_dir / name)
            ckpt.atomic_write_text(run.out_dir / METRICS_JSON, json.dumps(metrics, indent=2) + "\n")
            freed = ckpt.drop_previous_checkpoint(run.out_dir)  # finished: no fallback needed
            shown = ("steps", "final_loss", "top1", "top5", "knn_top1", "train_time_s")  # those the stage has
            log.info("done: %s%s", json.dumps({k: metrics[k] for k in shown if metrics.get(k) is not None}),
                     f" (removed {PREVIOUS_CHECKPOINT_PTH}, {freed / 1e6:.1f} MB)" if freed else "")
        distributed.barrier()
    except TrainingStopped as stop:
        log.warning("%s", stop)
        _finish_tracker(tracker, "KILLED" if stop.exit_code == EXIT_PREEMPTED else "FAILED")
        raise
    except BaseException:
        _finish_tracker(tracker, "FAILED")
        raise
    finally:
        preemption.uninstall()
        if records is not None:
            records.close()
    _finish_tracker(tracker, "FINISHED", {**metrics, "run_dir": str(run.out_dir)})
    return metrics


def _train_cached_probe(run: Run, command: str) -> dict[str, Any]:
    """`linprobe.features: cached`: the frozen encoder's features once, then the probe to convergence
    (`mae.features.train_cached_probe`). No checkpoints: a killed run starts again (seconds); every
    process computes the same probe (features gathered), the main one writes."""
    from mae.features import (FEATURES_FILE, RANDOM_CHECKPOINT, build_encoder, compute_features, knn_of_features,
                              probe_of_features)
    cfg = run.cfg
    # the pretraining's own k-NN features, when they are this probe's (checked by their key)
    checkpoint = cfg.linprobe.checkpoint
    saved = Path(checkpoint).parent / FEATURES_FILE if checkpoint and checkpoint != RANDOM_CHECKPOINT else None
    pixels = cfg.linprobe.features == "pixels"
    # weights that do not fit the config are one line before the run folder or an MLflow run is written
    encoder = None if pixels else build_encoder(cfg, checkpoint)
    if run.is_main:
        _write_run_record(run, command)
        _truncate_records(run.out_dir / METRICS_JSONL, 0)
    tracker = _start_tracker(run)
    try:
        with open(run.out_dir / METRICS_JSONL, "a") if run.is_main else open(os.devnull, "w") as records:
            def write_record(record: dict[str, Any]) -> None:
                _write_record(records, tracker, record)

            features = compute_features(cfg, checkpoint, raw_pixels=pixels, device=run.device, rank=run.dist.rank,
                                        world_size=run.dist.world_size, reuse=saved, encoder=encoder)
            log.info("linprobe %s: cached features of %d train / %d val images (%s, %d-d) %s in %.1f s", run.run_id,
                     len(features.train_labels), len(features.val_labels), features.source, features.train.shape[1],
                     f"read from {features.reused_from}" if features.reused_from else "computed", features.extract_s)
            probe = probe_of_features(features, cfg, on_epoch=write_record if run.is_main else None)
            knn = knn_of_features(features)  # seconds on features already computed: the same encoder's k-NN
            write_record({"step": probe.steps, "epoch": probe.epochs - 1, "val_loss": probe.val_loss,
                          "top1": probe.top1, "top5": probe.top5})
            log.info("cached probe: %s after %d epochs (%d steps, %.1f s): train loss %.4f, val top1 %.2f top5 %.2f",
                     "converged" if probe.converged else "stopped at linprobe.epochs", probe.epochs, probe.steps,
                     probe.time_s, probe.final_loss, probe.top1, probe.top5)
        state = LoopState(epoch=probe.epochs, global_step=probe.steps, last_loss=probe.final_loss)
        extra = {"probe_epochs": probe.epochs, "probe_converged": probe.converged,
                 "feature_time_s": features.extract_s, "features_reused": features.reused_from is not None,
                 "knn_top1": knn["top1"], "knn_top5": knn["top5"]}
        frozen = nn.ModuleList([probe.head] if cfg.linprobe.features == "pixels" else
                               [build_encoder_for_count(cfg), probe.head])
        metrics = _final_metrics(run, frozen, state, {"top1": probe.top1, "top5": probe.top5},
                                 features.extract_s + probe.time_s, extra, tracker, None, 0)
        if run.is_main:
            ckpt.atomic_write_text(run.out_dir / METRICS_JSON, json.dumps(metrics, indent=2) + "\n")
        distributed.barrier()
    except BaseException:
        _finish_tracker(tracker, "FAILED")
        raise
    _finish_tracker(tracker, "FINISHED", {**metrics, "run_dir": str(run.out_dir)})
    return metrics


def build_encoder_for_count(cfg: Config) -> nn.Module:
    """The frozen encoder's modules, only to count parameters (built on the meta device)."""
    from mae.features import build_encoder
    with torch.device("meta"):
        return build_encoder(cfg, None)


# ---- set-up --------------------------------------------------------------------------------------


def _make_repeatable(cfg: Config, device: torch.device) -> None:
    """Same command, same machine -> bitwise-identical weights and metrics.

    The thread count changes the order of floating-point sums in the CPU kernels, so it is fixed for the
    whole run: `run.threads`, else the count torch chose at start (OMP_NUM_THREADS, else the cores),
    recorded in metrics.json (`threads`). On the CPU, deterministic algorithms are requested (warn
    only: no CPU kernel used here lacks one); on CUDA they are not (slow), so GPU runs are repeatable
    only up to the atomics of their kernels. Every random stream is seeded from run.seed (mae.seeding).
    """
    torch.set_num_threads(cfg.run.threads or torch.get_num_threads())
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)


@contextmanager
def _run_logging(log_file: Path | None, is_main: bool):
    """Log to stdout and `train.log` on the main process; only warnings elsewhere. A stop signal before the
    training loop took over (mae.signals: nothing to save) is logged as the run's last line, also one that
    arrives while the handlers are being attached (held until they are)."""
    handlers: list[logging.Handler] = []
    previous_level, previous_propagate = log.level, log.propagate
    try:
        with stop_signals_held():
            handlers.append(log_handler(sys.stdout))  # train.log and stdout never show a credential
            if log_file is not None:
                handlers.append(log_handler(log_file))
            for handler in handlers:
                log.addHandler(handler)
            log.setLevel(logging.INFO if is_main else logging.WARNING)
            log.propagate = False
        yield
    except StopRequested as stop:
        log.warning("%s", stop)
        raise
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()
        log.setLevel(previous_level)
        log.propagate = previous_propagate


def _write_run_record(run: Run, command: str) -> None:
    """config.yaml (resolved config + meta) and environment.json (mae.provenance) of the run folder.
    Credentials (a password in tracking.uri, a token in tracking.tags) never reach a file."""
    environment = environment_record()
    dump_config(Config.from_dict(_shareable_config(run.cfg)), run.out_dir / CONFIG_YAML, meta={
        "git_revision": environment["git_revision"], "git_dirty": environment["git_dirty"], "stage": run.stage,
        "run_id": run.run_id, "command": redact_text(command)})
    ckpt.atomic_write_text(run.out_dir / ENVIRONMENT_JSON, json.dumps(environment, indent=2) + "\n")


def _shareable_config(cfg: Config) -> dict[str, Any]:
    """The config as every file of the run folder carries it: credentials redacted (`mae.redaction.redact_tree`)."""
    return redact_tree(cfg.to_dict())


def _wrap(model: nn.Module, run: Run) -> nn.Module:
    """Move `model` to the device; the module the loop calls (compiled and / or DDP-wrapped as configured)."""
    model.to(run.device)
    train_model = model
    if run.cfg.run.compile:
        train_model = torch.compile(model)
    if run.dist.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    return train_model


# ---- run folder and checkpoints ------------------------------------------------------------------


def _truncate_records(path: Path, global_step: int) -> None:
    """Drop records logged after the checkpoint we resume from: they will be logged again."""
    records = read_jsonl(path)
    kept = [r for r in records if r.get("step", 0) <= global_step]
    if global_step == 0:
        kept = []
    if kept != records or (path.exists() and not records):
        ckpt.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _evaluate(run: Run, train_model: nn.Module, ema: nn.Module | None, val_set, micro: int) -> dict[str, float]:
    """Top-1 / top-5 on the validation split; with an EMA, the EMA's (as the paper reports Table 11's
    recipe) and the model's own as `top1_without_ema` / `top5_without_ema`."""
    result = evaluate(train_model, iter(run.loader(val_set, "eval", micro)), run.device, run.autocast_dtype)
    if ema is None:
        return result
    averaged = evaluate(ema.module, iter(run.loader(val_set, "eval", micro)), run.device, run.autocast_dtype)
    return {**averaged, "top1_without_ema": result["top1"], "top5_without_ema": result["top5"]}


def _checkpoint_payload(run: Run, parts: _Trainable, state: LoopState, train_time_s: float,
                        start_step: int) -> dict[str, Any]:
    rng = ckpt.capture_rng_state()
    if run.dist.distributed:  # every rank's RNG, so that a resumed DDP run continues each rank's stream
        rng_per_rank: list[Any] = [None] * run.dist.world_size
        dist.all_gather_object(rng_per_rank, rng)
    else:
        rng_per_rank = [rng]
    return {
        "stage": run.stage,
        "run_id": run.run_id,
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
        "model_ema": parts.ema.state_dict() if parts.ema is not None else None,
        "loop": state.state_dict(),
        "start_step": start_step,
        "loader": parts.loader.state_dict(),
        "rng_per_rank": rng_per_rank,
        "train_time_s": train_time_s,
        "world_size": run.dist.world_size,
        "precision": str(run.autocast_dtype or "fp32"),
        "config": _shareable_config(run.cfg),
    }


def _restore(run: Run, resume: ckpt.ResumePoint, parts: _Trainable, state: LoopState) -> tuple[float, int]:
    """Load a checkpoint into `parts` and `state`; returns the training time it had already taken and the
    step the run started at (0, or the epoch a continued official checkpoint began with)."""
    saved = resume.state
    if saved.get("stage") != run.stage or saved.get("run_id") != run.run_id:
        raise UserError.message("--out", f"{resume.path} belongs to {saved.get('stage')} run "
                                f"{saved.get('run_id')}, not this config ({run.stage} {run.run_id}); "
                                "choose another --out or remove the folder")
    precision = str(run.autocast_dtype or "fp32")
    if saved.get("precision", precision) != precision:  # run.precision=auto resolved on another device
        raise UserError.message("run.precision", f"{resume.path} was written at precision {saved['precision']}, "
                                f"this run resolves run.precision={run.cfg.run.precision!r} to {precision}: "
                                "allowed the same precision on resume (set run.precision explicitly)")
    log.info("%s", resume.note)
    parts.model.load_state_dict(saved["model"])
    parts.optimizer.load_state_dict(saved["optimizer"])
    parts.scheduler.load_state_dict(saved["scheduler"])
    if parts.scaler is not None and saved.get("scaler"):
        parts.scaler.load_state_dict(saved["scaler"])
    if parts.ema is not None:
        parts.ema.load_state_dict(saved["model_ema"])
    state.load_state_dict(saved["loop"])
    parts.loader.load_state_dict(saved["loader"])
    rngs = saved["rng_per_rank"]
    if len(rngs) != run.dist.world_size:
        log.warning("checkpoint written by %d processes, resuming with %d: random streams restart per rank",
                    len(rngs), run.dist.world_size)
        seed_all(mix_seed(run.cfg.run.seed, run.dist.rank, state.global_step))
    else:
        ckpt.restore_rng_state(rngs[run.dist.rank])
    log.info("resumed at epoch %d, step %d of the epoch, global step %d", state.epoch, state.step_in_epoch,
             state.global_step)
    return float(saved.get("train_time_s", 0.0)), int(saved.get("start_step", 0))


def _final_metrics(run: Run, model: nn.Module, state: LoopState, eval_result: dict[str, float] | None,
                   train_time_s: float, extra: dict[str, Any], tracker, resumed_from: int | None,
                   start_step: int) -> dict[str, Any]:
    """metrics.json's content (`images_per_s` over the steps this run took, from `start_step`)."""
    metrics: dict[str, Any] = {
        "stage": run.stage,
        "run_id": run.run_id,
        "status": "completed",
        "epochs": run.section.epochs,
        "steps": state.global_step,
        "final_loss": state.last_loss,
    }
    if eval_result is not None:
        metrics.update({k: v for k, v in eval_result.items() if k.startswith("top")})
    metrics.update({
        "train_time_s": train_time_s,
        "images_per_s": (state.global_step - start_step) * run.section.batch_size / max(train_time_s, 1e-9),
        **extra,
        "num_params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "world_size": run.dist.world_size,
        "threads": torch.get_num_threads(),
        "git_revision": git_revision(),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "mlflow_run_id": getattr(tracker, "run_id", None) if tracker is not None else None,
    })
    if resumed_from is not None:
        metrics["resumed_from_step"] = resumed_from
    return metrics


# ---- tracking --------------------------------------------------------------------------------------


def _start_tracker(run: Run):
    """MLflow mirror on the main process; any failure leaves the run untracked, never stopped."""
    cfg = run.cfg
    if not (run.is_main and cfg.tracking.enabled):
        return None
    try:
        from mae.tracking import Tracker, run_tags
        environment = json.loads((run.out_dir / ENVIRONMENT_JSON).read_text())
        tags = run_tags(run.run_id, run.stage, git_revision(), extra={**environment_tags(environment),
                                                                       **cfg.tracking.tags})
        tracker = Tracker(enabled=True)
        tracker.start(run.out_dir, params=flatten(cfg.to_dict()), tags=tags, experiment=cfg.tracking.experiment,
                      run_name=cfg.tracking.run_name or f"{run.stage}-{run.run_id}", uri=cfg.tracking.uri)
        return tracker
    except Exception as exc:  # tracking must never stop training
        log.warning("tracking disabled: %s", exc)
        return None


def _finish_tracker(tracker, status: str, metrics: dict[str, Any] | None = None) -> None:
    if tracker is None:
        return
    if metrics is not None:
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        _never_fatal(tracker.log_metrics, {f"final/{k}": v for k, v in numbers.items()}, step=metrics["steps"])
        _never_fatal(tracker.log_artifact, Path(metrics["run_dir"]) / METRICS_JSON)
    _never_fatal(tracker.finish, status=status)


def _write_record(records, tracker, record: dict[str, Any]) -> None:
    """Append one record to metrics.jsonl (flushed: a killed run keeps it) and mirror it to the tracker."""
    records.write(json.dumps(record) + "\n")
    records.flush()
    if tracker is not None:
        _never_fatal(tracker.log_metrics, {k: v for k, v in record.items() if k != "step"}, step=record["step"])


def _never_fatal(fn: Callable, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception as exc:
        log.warning("tracking call %s failed: %s", getattr(fn, "__name__", fn), exc)
