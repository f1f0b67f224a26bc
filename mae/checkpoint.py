"""Checkpoints: atomic save, newest-valid resume, safe (weights_only) load, official-format weights.

A resumable checkpoint (`DIR/checkpoint.pth`) holds everything needed to continue a run bit for bit:
model, optimizer, scheduler, grad scaler, epoch, step within the epoch, global step, every RNG state,
the data loader's position and the config. It is written to a temporary file in the same folder,
fsynced, and moved into place with `os.replace`; the previous one is kept as `checkpoint.prev.pth`.
The payload carries its own sha256, so a damaged file is detected and the previous one used. Once the
run is finished (metrics.json written) the previous one is no fallback any more and is removed
(`drop_previous_checkpoint`): for ViT-L with AdamW about 4 GB per run folder.

Final weights (`DIR/model.pth`) use the official MAE format `{"model": state_dict, "config": {...}}`.
Every load uses `torch.load(weights_only=True)`: a file that needs arbitrary code to unpickle is refused.
Official MAE training checkpoints (`checkpoint-N.pth` of main_pretrain.py / main_finetune.py /
main_linprobe.py: `model`, `optimizer`, `epoch`, `scaler`, `args`) load too: the one extra type they
hold, `args` (an `argparse.Namespace` of plain values), is allowed, and nothing else.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import pickletools
import random
import re
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mae.choices import CHECKPOINT_FILE_ALLOWED
from mae.errors import UserError
from mae.run_folder import CHECKPOINT_PTH, PREVIOUS_CHECKPOINT_PTH

CHECKPOINT_FORMAT = "mae-harness-checkpoint-v1"
# The classes an official MAE training checkpoint needs besides torch's weights-only set: misc.save_model
# stores the script's parsed `args` (an argparse.Namespace of str / int / float / bool / None / lists).
OFFICIAL_CHECKPOINT_GLOBALS = (argparse.Namespace,)
# What a weights file may hold once unpickled (torch's weights-only set also admits sets, complex numbers
# and more: no official or harness file holds them, so they are refused too).
_PLAIN_TYPES = (str, int, float, bool, bytes, type(None), torch.dtype, torch.device, torch.Size)


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
    tmp = _tmp_path(path)
    _write_tmp(tmp, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp.{os.getpid()}")


def _write_tmp(tmp: Path, data: bytes) -> None:
    """Write and fsync `tmp`; on any failure (a full disk, a signal's exception) remove it and re-raise."""
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # write() errors name no file: name it
            exc.filename = str(tmp)
        raise


_TMP_NAME = re.compile(r"^\..+\.tmp\.(\d+)$")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove `.<name>.tmp.<pid>` files (half-written checkpoints, model.pth, metrics.json) whose writer is
    gone: left by a SIGKILL, an out-of-memory kill or a node failure during a write (at ViT-L size a
    checkpoint is gigabytes). Files of a live process other than this one are kept. Returns those removed.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TMP_NAME.match(path.name)
        if match is None or not path.is_file():
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and _process_alive(pid):
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


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
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(OFFICIAL_CHECKPOINT_GLOBALS)):
            warnings.simplefilter("ignore", UserWarning)  # torch warns about a raw pickle's protocol before refusing it
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch words a blocked import "Unsupported global: GLOBAL x" or (2.6+) "Trying to load unsupported
        # GLOBAL x"; a raw (non-zip) pickle of protocol 0/1 or >= 4 fails earlier, on an "Unsupported
        # operand". Either way, a well-formed pickle that imports or calls something is a code payload.
        text = str(exc).lower()
        if "unsupported global" in text or "unsupported class" in text or _is_code_pickle(source):
            raise UserError.message("checkpoint", f"checkpoint {name!r} was refused: it needs arbitrary code to "
                                    "load (it imports or calls Python objects; only plain tensors and "
                                    "containers are loaded)") from None
        raise CorruptCheckpoint(f"checkpoint {name!r} cannot be read: {_reason(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - arbitrary bytes make the unpickler raise anything (IndexError, ...)
        raise CorruptCheckpoint(f"checkpoint {name!r} cannot be read: {type(exc).__name__}: {_reason(exc)}") from None


# Pickle opcodes that import or call Python objects (what a code payload needs).
_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD", "EXT1", "EXT2",
                 "EXT4"}
_SCAN_BYTES = 64 << 20


def _is_code_pickle(source: str | Path | io.BytesIO) -> bool:
    """Whether the pickle in `source` (a raw pickle, or the data.pkl of torch's zip format) is well formed
    and imports or calls an object; it is scanned with pickletools, never run."""
    if isinstance(source, io.BytesIO):
        data = source.getvalue()[:_SCAN_BYTES]
    else:
        with open(source, "rb") as f:
            data = f.read(_SCAN_BYTES)
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                data = archive.read(names[0])[:_SCAN_BYTES] if names else b""
        except (zipfile.BadZipFile, OSError, KeyError):
            return False
    if not _parses_to_stop(data):
        return False
    return any(opcode.name in _CODE_OPCODES for opcode, _, _ in pickletools.genops(io.BytesIO(data)))


def _parses_to_stop(data: bytes) -> bool:
    """The first pickle in `data` is complete (ends with STOP): a payload, not random bytes."""
    try:
        for opcode, _, _ in pickletools.genops(io.BytesIO(data)):
            if opcode.name == "STOP":
                return True
    except Exception:  # noqa: BLE001
        return False
    return False


def _reason(exc: BaseException) -> str:
    """torch's message without its advice (never suggest weights_only=False to the user)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    kept = [line for line in lines if not re.search(r"weights_only|file an issue|documentation of torch\.load|"
                                                     r"trusted source|WeightsUnpickler error:\s*$", line)]
    text = (kept[0] if kept else type(exc).__name__)
    return text.split(". This is an internal", 1)[0][:200]


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
    tmp = _tmp_path(path)
    _write_tmp(tmp, wrapped)
    if path.exists():
        os.replace(path, run_dir / PREVIOUS_CHECKPOINT_PTH)
    os.replace(tmp, path)
    _fsync_dir(run_dir)
    return path


def drop_previous_checkpoint(run_dir: str | Path) -> int:
    """Remove `checkpoint.prev.pth` of a finished run (its metrics.json written: nothing resumes from the
    fallback any more; checkpoint.pth stays, to continue the run). Returns the bytes freed (0: none there)."""
    path = Path(run_dir) / PREVIOUS_CHECKPOINT_PTH
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size


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
    state = _safe_load(io.BytesIO(payload), str(path))
    bad = non_finite_tensor(state.get("model")) if isinstance(state, dict) else None
    if bad is not None:
        raise CorruptCheckpoint(f"{path}: weights hold NaN or Inf ({bad}); not a state to resume from")
    return state


def non_finite_tensor(state_dict: Any) -> str | None:
    """The name of the first floating-point tensor holding NaN or Inf in `state_dict`, else None."""
    if not isinstance(state_dict, dict):
        return None
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            return str(key)
    return None


def find_resume_checkpoint(run_dir: str | Path) -> ResumePoint | None:
    """The newest valid checkpoint in `run_dir`: `checkpoint.pth`, else `checkpoint.prev.pth`; None if neither exists.

    Raises:
        UserError: checkpoints exist but none is valid (resuming would silently restart the run), or one is unsafe.
    """
    run_dir = Path(run_dir)
    remove_stale_temporaries(run_dir)
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


@dataclass
class WeightsFile:
    """What a weights file holds, whichever program wrote it.

    Args:
        model: the state dict (a DDP `module.` prefix removed).
        config: the harness config of the run that wrote it; for an official training checkpoint the
            part its `args` determine (`config_from_official_args`); None when the file carries neither.
        kind: 'model.pth' (ours or a released official file), 'resumable checkpoint' (ours),
            'official training checkpoint' (checkpoint-N.pth) or 'state dict'.
        optimizer / epoch / scaler / args: an official training checkpoint's AdamW state dict, last
            finished epoch, GradScaler state dict and `vars(args)`; None otherwise.
    """

    model: dict[str, torch.Tensor]
    config: dict[str, Any] | None
    kind: str
    optimizer: dict[str, Any] | None = None
    epoch: int | None = None
    scaler: dict[str, Any] | None = None
    args: dict[str, Any] | None = None


def load_whole_state(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], field: str, source: str,
                     allowed: str) -> None:
    """All of `state_dict` into `model` (the same keys, the same shapes), else one UserError on `field`
    naming the first differences; `allowed` says what would fit. (`load_state_dict` raises a bare
    RuntimeError on a shape it cannot copy, even with strict=False.)"""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or shapes:
        raise UserError.message(field, f"{field}={source!r} does not match the config's model: missing "
                                f"{missing[:5]}, unexpected {unexpected[:5]}, wrong shape {shapes[:5]}; allowed: {allowed}")
    model.load_state_dict(state_dict)


def load_model_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Weights from `model.pth` (ours or the official release: `{"model": sd}`), an official training
    checkpoint (`checkpoint-N.pth`), a plain state dict, or a resumable checkpoint.

    Returns:
        (state_dict, config dict or None when the file carries none): `read_weights_file`'s model and config.
    Raises:
        UserError: missing, unreadable, unsafe or holding no weights.
    """
    weights = read_weights_file(path)
    return weights.model, weights.config


def load_model_and_config(path: str | Path, overrides: Sequence[str] = ()):
    """`load_model_state`, with the config the file carries resolved as a `mae.config.Config` (`section.key=value`
    overrides applied); None in its place when the file carries no model config (released weights, a plain
    state dict)."""
    from mae.config import Config
    state_dict, config = load_model_state(path)
    if not config or "model" not in config:
        return state_dict, None
    return state_dict, Config.from_dict(config, source=str(path)).with_overrides(overrides).resolved()


def read_weights_file(path: str | Path) -> WeightsFile:
    """Read any weights file the harness accepts (see `WeightsFile.kind`), weights_only, and check it.

    Raises:
        UserError: missing, unreadable, needing code to load, holding a type no weights file holds (a set,
            ...), holding no weights, or weights with NaN / Inf.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("checkpoint", str(path), CHECKPOINT_FILE_ALLOWED)
    try:
        obj = _safe_load(path, str(path))
        harness = isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT
        if harness:
            obj = load_checkpoint(path)
    except CorruptCheckpoint as exc:
        raise UserError.message("checkpoint", f"checkpoint={str(path)!r} is invalid: {exc}; allowed: a model.pth "
                                "written by `mae pretrain` / `mae finetune` or an official MAE .pth") from None
    _check_plain(obj, str(path))
    weights = _weights_of(obj, harness)
    if weights is None:
        raise UserError.message("checkpoint", f"{path} holds no model weights (expected {{'model': state_dict}})")
    bad = non_finite_tensor(weights.model)
    if bad is not None:
        raise UserError.message("checkpoint", f"checkpoint={str(path)!r} is invalid: tensor {bad!r} holds "
                                "NaN or Inf; allowed: finite weights (a model.pth of a finished run)")
    return weights


def _weights_of(obj: Any, harness: bool) -> WeightsFile | None:
    if not isinstance(obj, dict):
        return None
    for key in ("model", "state_dict", "model_state"):
        if isinstance(obj.get(key), dict):
            state_dict = _strip_module_prefix(obj[key])
            config = obj.get("config") if isinstance(obj.get("config"), dict) else None
            args = obj.get("args")
            if harness:
                return WeightsFile(state_dict, config, "resumable checkpoint")
            if isinstance(args, argparse.Namespace):  # official misc.save_model: model, optimizer, epoch, scaler, args
                args = vars(args)
                epoch = obj.get("epoch")
                return WeightsFile(
                    state_dict, config if config is not None else config_from_official_args(args),
                    "official training checkpoint", optimizer=obj.get("optimizer") if isinstance(
                        obj.get("optimizer"), dict) else None,
                    epoch=epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
                    scaler=obj.get("scaler") if isinstance(obj.get("scaler"), dict) else None, args=args)
            return WeightsFile(state_dict, config, "model.pth")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return WeightsFile(_strip_module_prefix(obj), None, "state dict")
    return None


def _check_plain(obj: Any, name: str, where: str = "", depth: int = 0) -> None:
    """Refuse any value outside tensors, plain scalars, lists / tuples / dicts of them and argparse.Namespace."""
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN_TYPES:
        return
    if depth > 64:
        raise UserError.message("checkpoint", f"checkpoint {name!r} was refused: containers nested deeper than 64 "
                                f"levels at {where or 'the top'}")
    if isinstance(obj, dict) and type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            _check_plain(key, name, f"{where}[{key!r}] (key)", depth + 1)
            _check_plain(value, name, f"{where}[{key!r}]", depth + 1)
        return
    if type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            _check_plain(value, name, f"{where}[{i}]", depth + 1)
        return
    if type(obj) in OFFICIAL_CHECKPOINT_GLOBALS:
        _check_plain(vars(obj), name, where, depth + 1)
        return
    raise UserError.message("checkpoint", f"checkpoint {name!r} was refused: it holds a {type(obj).__name__} at "
                            f"{where or 'the top'}; allowed: tensors, numbers, strings, None, lists, tuples, dicts "
                            "and the argparse.Namespace `args` of official MAE training checkpoints")


def official_arch(model_name: str) -> str:
    """The `model.arch` of an official `--model` name: main_pretrain.py's `mae_vit_large_patch16` (models_mae.py
    aliases it to the 8-block 512-d decoder) or main_finetune.py's `vit_large_patch16`; an arch name as is.

    Raises:
        UserError: a name that maps to no arch of `mae.archs.MAE_ARCHS`.
    """
    from mae.archs import MAE_ARCHS
    candidates = (model_name, f"{model_name}_dec512d8b", f"mae_{model_name}_dec512d8b")
    for candidate in candidates:
        if candidate in MAE_ARCHS:
            return candidate
    raise UserError("args.model", model_name, "an official model name (mae_vit_{base,large}_patch16, "
                    "mae_vit_huge_patch14, vit_{base,large}_patch16, vit_huge_patch14) or one of "
                    + ", ".join(MAE_ARCHS))


def config_from_official_args(args: dict[str, Any]) -> dict[str, Any]:
    """The harness config sections an official training checkpoint's `args` determine: the model (arch,
    input size, mask ratio, norm_pix_loss -> target), the data (`data_path`, an ImageNet-style folder
    with train/ and val/) and the seed. The recipe's numbers are left to the config that uses the file.
    """
    model: dict[str, Any] = {"arch": official_arch(str(args.get("model", "mae_vit_large_patch16")))}
    if isinstance(args.get("input_size"), int):
        model["img_size"] = args["input_size"]
    if isinstance(args.get("mask_ratio"), float):
        model["mask_ratio"] = args["mask_ratio"]
    if isinstance(args.get("norm_pix_loss"), bool):
        model["target"] = "norm_pixel" if args["norm_pix_loss"] else "pixel"
    config: dict[str, Any] = {"model": model}
    if isinstance(args.get("data_path"), str) and args["data_path"]:
        config["data"] = {"name": "imagenet", "root": args["data_path"]}
    if isinstance(args.get("seed"), int):
        config["run"] = {"seed": args["seed"]}
    return config


def _strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)
