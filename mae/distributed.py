"""torchrun / DDP helpers: gloo on CPU, nccl on CUDA; a single process needs no environment at all.

    torchrun --standalone --nproc_per_node=2 -m mae.cli pretrain --config C.yaml --out DIR
    python -m mae.launch --nodes=4 --nproc-per-node=8 -- mae pretrain ...   # inside a SLURM job (mae/launch.py)
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mae.errors import UserError


@dataclass
class DistInfo:
    """Where this process sits: global rank, number of processes, rank on this host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int) -> torch.device:
    """`run.device` -> a torch device: 'auto' picks CUDA when visible; 'cuda' means this process's local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("run.device", name, "'cpu' or 'auto' (no CUDA device is visible)")
        if name == "cuda":
            return torch.device("cuda", local_rank)
    return torch.device(name)


def check_device_present(device: str, field: str = "--device") -> None:
    """A device name `mae.choices.check_device_name` accepted names a device this machine has (one line else)."""
    kind, _, index = str(device).partition(":")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(field, device, "'cpu' (no CUDA device is visible)")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise UserError(field, device, f"'cpu' or cuda:0 to cuda:{torch.cuda.device_count() - 1}")


def init_distributed(device: torch.device | str = "cpu") -> DistInfo:
    """Join the process group described by torchrun's RANK / WORLD_SIZE / LOCAL_RANK (nothing to do without them).

    Args:
        device: the device this process trains on; CUDA selects nccl (and sets the local device), else gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(rank=int(os.environ["RANK"]), world_size=world_size,
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        use_cuda = torch.device(device).type == "cuda"
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(minutes=30))
    return info


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of `value` over all processes (a copy; `value` itself is unchanged)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value.clone()
    out = value.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def all_reduce_max(value: torch.Tensor) -> torch.Tensor:
    """Max of `value` over all processes (used for stop flags so that every rank takes the same branch)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value.clone()
    out = value.clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()
