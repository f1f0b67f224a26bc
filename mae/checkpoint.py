"""Checkpoints: atomic save, newest-valid resume, safe (weights_only) load, official-format weights.

A resumable checkpoint (`DIR/checkpoint.pth`) holds everything needed to continue a run bit for bit:
model, optimizer, scheduler, grad scaler, epoch, step within the epoch, global step, every RNG state,
the data loader's position and the config. It is written to a temporary file in the same folder,
fsynced, and moved into place with `os.replace`; the previous one is kept as `checkpoint.prev.pth`.
The payload carries its own sha256, so a damaged file is detected and the previous one used.

Final weights (`DIR/model.pth`) use the official MAE format `{"model": state_dict, "config": {...}}`.
Every load uses `torch.load(weights_only=True)`: a file that needs arbitrary code to unpickle is refused.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mae.errors import UserError
from mae.run_folder import CHECKPOINT_PTH, PREVIOUS_CHECKPOINT_PTH

CHECKPOINT_FORMAT = "mae-harness-checkpoint-v1"


class CorruptCheckpoint(Exception):
    """A checkpoint file that is truncated, damaged or not a checkpoint at all."""


@dataclass
class ResumePoint:
    """The checkpoint a run continues from, and why that one (e.g. the newest was corrupt)."""

    path: Path
    state: dict[str, Any]
    note: str


# ----------------------------------------------------------------------------------------------
# RNG state


def capture_rng_state() -> dict[str, Any]:
    """Every RNG a training step can draw from: python, numpy, torch CPU and (if present) all CUDA devices."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state({
        "bit_generator": np_state["bit_generator"],
        "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
        "has_gauss": np_state["has_gauss"],
        "gauss": np_state["gauss"],
    })
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:  # a different GPU count: this process's device gets its own saved state
            torch.cuda.set_rng_state(cuda_states[min(torch.cuda.current_device(), len(cuda_states) - 1)])


# ----------------------------------------------------------------------------------------------
# atomic files


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` for text (UTF-8)."""
    atomic_write_bytes(path, text.encode())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _serialize(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _safe_load(source: str | Path | io.BytesIO, name: str) -> Any:
    """torch.load with weights_only=True, the one place a checkpoint file is unpickled.

    Raises:
        UserError: a pickle the weights-only unpickler refuses (a class or function to import, or a
            pickle protocol it does not read): loading it would need arbitrary code.
        CorruptCheckpoint: anything else that cannot be read (truncated, damaged, not a torch file).
    """
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch words it "Unsupported global: GLOBAL x" or (2.6+) "Trying to load unsupported GLOBAL x";
        # a plain pickle of protocol >= 4 (starts with PROTO) fails earlier, on an "Unsupported operand".
        text = str(exc).lower()
        if "unsupported global" in text or "unsupported class" in text or (
                "unsupported operand" in text and _starts_with(source, b"\x80")):
            raise UserError.message("checkpoint", f"checkpoint {name!r} was refused: it needs arbitrary code to "
                                    "load (only weights_only=True loads are allowed)") from None
        raise CorruptCheckpoint(f"checkpoint {name!r} cannot be read: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - arbitrary bytes make the unpickler raise anything (IndexError, ...)
        raise CorruptCheckpoint(f"checkpoint {name!r} cannot be read: {type(exc).__name__}: {_first_line(exc)}") from None


def _starts_with(source: str | Path | io.BytesIO, prefix: bytes) -> bool:
    if isinstance(source, io.BytesIO):
        return source.getvalue().startswith(prefix)
    with open(source, "rb") as f:
        return f.read(len(prefix)) == prefix


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


# ----------------------------------------------------------------------------------------------
# resumable checkpoints


def save_checkpoint(run_dir: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write `state` to `run_dir/checkpoint.pth`, keeping the previous one as `checkpoint.prev.pth`.

    Args:
        run_dir: the run folder.
        state: plain containers of tensors / numbers / strings (what `torch.load(weights_only=True)` reads).
    Returns:
        The path written.
    """
    run_dir = Path(run_dir)
    payload = _serialize(state)
    wrapped = _serialize({
        "format": CHECKPOINT_FORMAT,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
    })
    path = run_dir / CHECKPOINT_PTH
    tmp = run_dir / f".{CHECKPOINT_PTH}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(wrapped)
        f.flush()
        os.fsync(f.fileno())
    if path.exists():
        os.replace(path, run_dir / PREVIOUS_CHECKPOINT_PTH)
    os.replace(tmp, path)
    _fsync_dir(run_dir)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and verify a resumable checkpoint written by `save_checkpoint`.

    Raises:
        CorruptCheckpoint: truncated, damaged (sha256 mismatch) or not one of ours.
        UserError: the file would need arbitrary code to unpickle.
    """
    path = Path(path)
    wrapped = _safe_load(path, str(path))
    if not isinstance(wrapped, dict) or wrapped.get("format") != CHECKPOINT_FORMAT:
        raise CorruptCheckpoint(f"{path}: not a resumable checkpoint of this harness")
    payload = wrapped["payload"].numpy().tobytes()
    if hashlib.sha256(payload).hexdigest() != wrapped["sha256"]:
        raise CorruptCheckpoint(f"{path}: sha256 of the payload does not match (file damaged)")
    return _safe_load(io.BytesIO(payload), str(path))


def find_resume_checkpoint(run_dir: str | Path) -> ResumePoint | None:
    """The newest valid checkpoint in `run_dir`: `checkpoint.pth`, else `checkpoint.prev.pth`; None if neither exists.

    Raises:
        UserError: checkpoints exist but none is valid (resuming would silently restart the run), or one is unsafe.
    """
    run_dir = Path(run_dir)
    problems = []
    for name in (CHECKPOINT_PTH, PREVIOUS_CHECKPOINT_PTH):
        path = run_dir / name
        if not path.exists():
            problems.append(f"{name} missing")
            continue
        try:
            state = load_checkpoint(path)
        except CorruptCheckpoint as exc:
            problems.append(str(exc))
            continue
        note = f"resuming from {path}" + (f" ({'; '.join(problems)})" if problems else "")
        return ResumePoint(path=path, state=state, note=note)
    if any(not p.endswith("missing") for p in problems):
        raise UserError.message("checkpoint", f"no valid checkpoint in {run_dir}: {'; '.join(problems)}; "
                                "remove the damaged files to start over")
    return None


# ----------------------------------------------------------------------------------------------
# final weights (official format)


def save_model(path: str | Path, model_or_state_dict: torch.nn.Module | dict[str, torch.Tensor],
               config: dict[str, Any] | None = None) -> None:
    """Atomically write weights in the official MAE format `{"model": state_dict, "config": config}`."""
    if isinstance(model_or_state_dict, torch.nn.Module):
        state_dict = model_or_state_dict.state_dict()
    else:
        state_dict = model_or_state_dict
    state_dict = {k: v.detach().cpu() for k, v in state_dict.items()}
    atomic_write_bytes(path, _serialize({"model": state_dict, "config": config or {}}))


def load_model_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Weights from `model.pth` (ours or the official release: `{"model": sd}`), a plain state dict, or a resumable checkpoint.

    Returns:
        (state_dict, config dict or None when the file carries none).
    Raises:
        UserError: missing, unreadable, unsafe or holding no weights.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("checkpoint", str(path), "an existing checkpoint file (a model.pth or an official MAE .pth)")
    try:
        obj = _safe_load(path, str(path))
        if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
            obj = load_checkpoint(path)
    except CorruptCheckpoint as exc:
        raise UserError.message("checkpoint", f"checkpoint={str(path)!r} is invalid: {exc}; allowed: a model.pth "
                                "written by `mae pretrain` / `mae finetune` or an official MAE .pth") from None
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state"):
            if isinstance(obj.get(key), dict):
                config = obj.get("config") if isinstance(obj.get("config"), dict) else None
                return _strip_module_prefix(obj[key]), config
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return _strip_module_prefix(obj), None
    raise UserError.message("checkpoint", f"{path} holds no model weights (expected {{'model': state_dict}})")


def _strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)
