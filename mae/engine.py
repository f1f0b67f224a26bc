"""One training epoch and one evaluation; nothing else.

`train_one_epoch` runs optimizer steps of `accum_steps` micro batches each, sets the lr per step
from the scheduler, uses autocast (bf16, or fp16 with a GradScaler), clips gradients if asked,
logs every `log_every_steps` steps (the only host syncs), checkpoints every `checkpoint_every_steps`,
and stops cleanly:

* non-finite loss -> `TrainingStopped(exit_code=3)` on every rank (the flag is all-reduced at the
  sync points, so no rank waits forever for the others), naming the first bad step and the last good
  checkpoint; no checkpoint is written from the bad state.
* SIGTERM / SIGUSR1 (preemption, SLURM time limit) or `run.stop_after_steps` -> checkpoint, then
  `TrainingStopped(exit_code=75)`; relaunching the same command resumes exactly.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from mae.distributed import all_reduce_max, all_reduce_mean
from mae.signals import EXIT_PREEMPTED, STOP_SIGNALS  # noqa: F401 - EXIT_PREEMPTED is re-exported

log = logging.getLogger("mae")

EXIT_NON_FINITE = 3


class TrainingStopped(Exception):
    """Training ended early on purpose; `exit_code` is what the CLI returns (3 non-finite, 75 checkpointed)."""

    def __init__(self, exit_code: int, message: str):
        super().__init__(message)
        self.exit_code = exit_code


class PreemptionFlag:
    """Sets `requested` on SIGTERM / SIGUSR1; the loop checkpoints at the next step boundary and exits 75."""

    SIGNALS = STOP_SIGNALS

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def install(self) -> "PreemptionFlag":
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with whoever owns them
                pass
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


@dataclass
class LoopState:
    """Position in training, saved in every checkpoint (plain numbers, `weights_only`-safe).

    The partial loss of the current logging interval is kept so that a resumed run logs exactly the
    numbers an uninterrupted one does.
    """

    epoch: int = 0
    step_in_epoch: int = 0        # optimizer steps finished in `epoch`
    global_step: int = 0
    interval_loss_sum: float = 0.0
    interval_steps: int = 0
    last_loss: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in self.__dict__:
            setattr(self, key, state[key])


@dataclass
class EpochContext:
    """What one epoch needs besides the model, data and optimizer.

    Args:
        steps_per_epoch: optimizer steps per epoch.
        accum_steps: micro batches per optimizer step (gradient accumulation).
        images_per_step: images per optimizer step over all processes.
        device: where the batches go.
        autocast_dtype: torch.bfloat16 / torch.float16, or None for fp32.
        scaler: GradScaler for fp16, else None.
        clip_grad: max gradient norm, or None.
        log_every_steps / checkpoint_every_steps: intervals in optimizer steps (0 = no mid-epoch checkpoints).
        stop_after_steps: checkpoint and stop (exit 75) once `global_step` reaches it.
        save_checkpoint: called on every rank with the loop state; returns the checkpoint path.
        write_record: called on the main process with each metrics.jsonl record.
        batch_transform: (images, targets) -> (images, targets), e.g. mixup / cutmix.
        preemption: the signal flag.
        last_checkpoint: path of the newest checkpoint written (named in the non-finite message).
        progress: tqdm bar (on a TTY) instead of plain log lines.
    """

    steps_per_epoch: int
    accum_steps: int
    images_per_step: int
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    clip_grad: float | None = None
    log_every_steps: int = 20
    checkpoint_every_steps: int = 0
    stop_after_steps: int | None = None
    save_checkpoint: Callable[[LoopState], str] | None = None
    write_record: Callable[[dict[str, Any]], None] | None = None
    batch_transform: Callable | None = None
    preemption: PreemptionFlag = field(default_factory=PreemptionFlag)
    last_checkpoint: str | None = None
    progress: bool = False
    is_main: bool = True


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """`run.precision` -> the autocast dtype (None = fp32); 'auto' is bf16 on CUDA, fp32 elsewhere."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """`torch.autocast` for bf16 / fp16, a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to_device(batch, device: torch.device):
    images, targets = batch[0], batch[1]
    return images.to(device, non_blocking=True), targets.to(device, non_blocking=True)


def _max_lr(optimizer: torch.optim.Optimizer) -> float:
    return max(group["lr"] for group in optimizer.param_groups)


def train_one_epoch(
        model: nn.Module,
        loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor, int, int], torch.Tensor],
        batches: Iterator,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        state: LoopState,
        ctx: EpochContext,
) -> str | None:
    """Run the rest of epoch `state.epoch` (from `state.step_in_epoch`), updating `state` in place.

    Returns None, or the reason to stop when a stop (signal, `stop_after_steps`) falls on the epoch's
    last step: the caller then finishes the epoch (evaluation, checkpoint) and exits 75.

    Args:
        model: the (possibly DDP-wrapped) model, in train mode.
        loss_fn: (model, images, targets, step, micro) -> scalar loss; `step` is the global optimizer step
            being taken and `micro` the micro batch within it (for randomness tied to the global batch).
        batches: iterator over the remaining micro batches of this epoch (images, targets).
        optimizer: the optimizer; gradients are zeroed here.
        scheduler: timm scheduler; `step_update(global_step)` sets the lr before each step.
        state: loop position, advanced per optimizer step.
        ctx: settings and callbacks (see `EpochContext`).
    Raises:
        TrainingStopped: non-finite loss (exit 3) or a requested stop after checkpointing (exit 75).
    """
    device = ctx.device
    distributed = dist.is_initialized() and dist.get_world_size() > 1
    # Accumulated on the device so that no step waits for the host; read only at sync points. It
    # starts from the checkpointed partial sum, so a resumed run adds the same numbers in the same order.
    interval_loss = torch.tensor(state.interval_loss_sum, dtype=torch.float64, device=device)
    first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
    interval_start = time.perf_counter()
    interval_start_step = state.global_step
    bar = None
    if ctx.progress and ctx.is_main:
        from tqdm import tqdm
        bar = tqdm(total=ctx.steps_per_epoch, initial=state.step_in_epoch, desc=f"epoch {state.epoch}",
                   dynamic_ncols=True, file=sys.stdout)
    try:
        while state.step_in_epoch < ctx.steps_per_epoch:
            scheduler.step_update(state.global_step)
            for micro in range(ctx.accum_steps):
                images, targets = _to_device(next(batches), device)
                if ctx.batch_transform is not None:
                    images, targets = ctx.batch_transform(images, targets)
                last_micro = micro == ctx.accum_steps - 1
                # DDP all-reduces gradients only on the last micro batch of a step.
                sync_ctx = contextlib.nullcontext() if (last_micro or not distributed) else model.no_sync()
                with sync_ctx:
                    with autocast(device, ctx.autocast_dtype):
                        loss = loss_fn(model, images, targets, state.global_step, micro)
                    scaled = loss / ctx.accum_steps
                    if ctx.scaler is not None:
                        ctx.scaler.scale(scaled).backward()
                    else:
                        scaled.backward()
                loss_value = loss.detach().to(torch.float64)
                interval_loss += loss_value / ctx.accum_steps
                # A Python scalar, not a new device tensor: no host-to-device copy (and sync) per step.
                first_bad_step.copy_(torch.where((first_bad_step < 0) & ~torch.isfinite(loss_value),
                                                 state.global_step + 1, first_bad_step))
            if ctx.scaler is not None:
                if ctx.clip_grad is not None:
                    ctx.scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), ctx.clip_grad)
                ctx.scaler.step(optimizer)
                ctx.scaler.update()
            else:
                if ctx.clip_grad is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), ctx.clip_grad)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step_in_epoch += 1
            state.global_step += 1
            state.interval_steps += 1
            if bar is not None:
                bar.update(1)

            end_of_epoch = state.step_in_epoch == ctx.steps_per_epoch
            log_now = state.global_step % ctx.log_every_steps == 0 or end_of_epoch
            checkpoint_now = ctx.checkpoint_every_steps > 0 and state.global_step % ctx.checkpoint_every_steps == 0
            stop_after = ctx.stop_after_steps is not None and state.global_step >= ctx.stop_after_steps
            # A single process can look at the signal flag every step for free; several processes agree
            # on it only at sync points (a collective), so that they all stop at the same step.
            stop_signal = ctx.preemption.requested and not distributed
            if not (log_now or checkpoint_now or stop_after or stop_signal):
                continue

            # ---- sync point: the only place the host waits for the device
            if all_reduce_max((first_bad_step >= 0).to(torch.float32)).item() > 0:
                step = int(first_bad_step.item())
                where = f"step {step}" if step >= 0 else "another rank's step"
                last = ctx.last_checkpoint or "none (the run has not checkpointed yet)"
                raise TrainingStopped(EXIT_NON_FINITE, f"loss is not finite at {where} (epoch {state.epoch}); "
                                      f"stopped on every rank; last good checkpoint: {last}")
            if distributed:
                flag = torch.tensor(1.0 if ctx.preemption.requested else 0.0, device=device)
                stop_signal = all_reduce_max(flag).item() > 0
            # Every rank keeps the global partial mean, so any rank's checkpoint resumes the same log.
            interval_loss = all_reduce_mean(interval_loss)
            state.interval_loss_sum = interval_loss.item()
            if log_now:
                elapsed = time.perf_counter() - interval_start
                record = {
                    "step": state.global_step,
                    "epoch": state.epoch,
                    "loss": state.interval_loss_sum / state.interval_steps,
                    "lr": _max_lr(optimizer),
                    "images_per_s": (state.global_step - interval_start_step) * ctx.images_per_step / max(elapsed, 1e-9),
                }
                state.last_loss = record["loss"]
                state.interval_loss_sum, state.interval_steps = 0.0, 0
                interval_loss = torch.zeros_like(interval_loss)
                interval_start, interval_start_step = time.perf_counter(), state.global_step
                if ctx.is_main:
                    if ctx.write_record is not None:
                        ctx.write_record(record)
                    if bar is not None:
                        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                        img_s=f"{record['images_per_s']:.0f}")
                    else:
                        log.info("epoch %d step %d/%d (global %d) loss %.4f lr %.3e %.0f img/s", state.epoch,
                                 state.step_in_epoch, ctx.steps_per_epoch, state.global_step, record["loss"],
                                 record["lr"], record["images_per_s"])
            if end_of_epoch:  # the caller evaluates and writes the end-of-epoch checkpoint
                if stop_signal or stop_after:
                    return _stop_reason(ctx, stop_signal)
                return None
            if (checkpoint_now or stop_after or stop_signal) and ctx.save_checkpoint is not None:
                ctx.last_checkpoint = ctx.save_checkpoint(state)
            if stop_signal or stop_after:
                raise TrainingStopped(EXIT_PREEMPTED, f"{_stop_reason(ctx, stop_signal)}: checkpointed at step "
                                      f"{state.global_step} ({ctx.last_checkpoint}); run the same command again to resume")
    finally:
        if bar is not None:
            bar.close()
    return None


def _stop_reason(ctx: EpochContext, by_signal: bool) -> str:
    if by_signal:
        return f"received {ctx.preemption.signal_name or 'a stop signal'}"
    return f"run.stop_after_steps={ctx.stop_after_steps} reached"


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device, autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy over `batches`, summed over all processes.

    Args:
        model: classifier returning logits [N, K].
        batches: iterable of (images, labels).
        device: where to run.
        autocast_dtype: as in training.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1, top5, count
    for batch in batches:
        images, labels = _to_device(batch, device)
        with autocast(device, autocast_dtype):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        correct = top.eq(labels.view(-1, 1))
        totals[0] += nn.functional.cross_entropy(logits, labels, reduction="sum").double()
        totals[1] += correct[:, :1].sum()
        totals[2] += correct.sum()
        totals[3] += labels.shape[0]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(totals)
    model.train(was_training)
    loss_sum, top1, top5, count = totals.tolist()
    count = max(count, 1.0)
    return {"loss": loss_sum / count, "top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count,
            "count": int(count)}

