"""Seeds for the data path: every random draw comes from `(seed, epoch, batch or sample position)`."""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch


def _mix_seed(*values: int) -> int:
    """A 63-bit seed that depends on every value (order matters)."""
    state = np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values] + [len(values)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFF_FFFF_FFFF_FFFF


def _generator(*values: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(_mix_seed(*values))
    return g


@contextmanager
def _global_rng_scope(seed: int, device: torch.device | None = None):
    """Seed torch (CPU and `device`) / numpy / python global RNGs for code that only uses them,
    then restore them."""
    cuda = [device.index or 0] if device is not None and device.type == "cuda" else []
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
