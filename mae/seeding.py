"""Seeds derived from several integers, one rule for the whole harness.

Every random stream of a run (masks, augmentations, data order, synthetic data, per-rank state) is
seeded with `mix_seed(run.seed, <what>, <where>...)`, so a stream depends only on its coordinates, not
on how many draws came before it or how the work is split over processes and micro batches.
"""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch

_MASK64 = 0xFFFF_FFFF_FFFF_FFFF


def mix_seed(*values: int) -> int:
    """A 63-bit seed that depends on every value and their order (splitmix64-style mixing; stable
    across processes, platforms and Python versions). Values are taken modulo 2**64."""
    x = 0x9E37_79B9_7F4A_7C15
    for v in values:
        x = (x ^ (int(v) & _MASK64)) * 0xBF58_476D_1CE4_E5B9 & _MASK64
        x ^= x >> 31
    return x & 0x7FFF_FFFF_FFFF_FFFF


def generator(*values: int, device: torch.device | str | None = None) -> torch.Generator:
    """A torch generator seeded with `mix_seed(*values)`."""
    return torch.Generator(device=device or "cpu").manual_seed(mix_seed(*values))


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


@contextmanager
def global_rng_scope(seed: int, device: torch.device | None = None):
    """Seed torch (CPU and `device`) / numpy / python global RNGs for code that only uses them
    (timm's RandAugment, RandomErasing), then restore them."""
    cuda = [device.index or 0] if device is not None and device.type == "cuda" else []
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=cuda):
        seed_all(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
