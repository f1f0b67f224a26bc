"""Checkpoints: atomic save with a kept previous, exact RNG round trip, corrupt/unsafe files, official format."""

import os
import random

import numpy as np
import pytest
import torch

from mae.checkpoint import (CorruptCheckpoint, capture_rng_state, find_resume_checkpoint, load_checkpoint,
                            load_model_state, restore_rng_state, save_checkpoint, save_model)
from mae.errors import UserError
from mae.run_folder import CHECKPOINT_PTH, PREVIOUS_CHECKPOINT_PTH


def _state(step):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.95))
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "global_step": step,
            "rng": capture_rng_state(), "config": {"model": {"arch": "x", "mask_ratio": 0.75}}}


def test_save_keeps_previous_and_roundtrips(tmp_path):
    first, second = _state(1), _state(2)
    save_checkpoint(tmp_path, first)
    save_checkpoint(tmp_path, second)
    assert (tmp_path / PREVIOUS_CHECKPOINT_PTH).exists()
    loaded = load_checkpoint(tmp_path / CHECKPOINT_PTH)
    assert loaded["global_step"] == 2
    assert all(torch.equal(loaded["model"][k], second["model"][k]) for k in second["model"])
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert load_checkpoint(tmp_path / PREVIOUS_CHECKPOINT_PTH)["global_step"] == 1
    assert not [p for p in os.listdir(tmp_path) if ".tmp." in p]


def test_rng_state_roundtrip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path, {"rng": capture_rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(load_checkpoint(tmp_path / CHECKPOINT_PTH)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_newest_falls_back_to_previous(tmp_path, damage):
    save_checkpoint(tmp_path, _state(1))
    save_checkpoint(tmp_path, _state(2))
    path = tmp_path / CHECKPOINT_PTH
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # one flipped byte in the middle of the payload
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint):
        load_checkpoint(path)
    point = find_resume_checkpoint(tmp_path)
    assert point.path.name == PREVIOUS_CHECKPOINT_PTH and point.state["global_step"] == 1
    assert CHECKPOINT_PTH in point.note


def test_no_checkpoint_is_none_but_all_damaged_is_an_error(tmp_path):
    assert find_resume_checkpoint(tmp_path) is None
    (tmp_path / CHECKPOINT_PTH).write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="no valid checkpoint"):
        find_resume_checkpoint(tmp_path)


class _CodePayload:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_code_payload_is_refused(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"model": _CodePayload()}, evil)
    with pytest.raises(UserError, match="evil.pth"):
        load_model_state(evil)
    torch.save(_CodePayload(), tmp_path / CHECKPOINT_PTH)
    with pytest.raises(UserError, match="refused"):
        find_resume_checkpoint(tmp_path)


def test_model_files_official_and_ours(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_model(tmp_path / "model.pth", model, {"model": {"arch": "a"}})
    sd, config = load_model_state(tmp_path / "model.pth")
    assert config == {"model": {"arch": "a"}} and torch.equal(sd["weight"], model.weight)
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "official.pth")
    sd, config = load_model_state(tmp_path / "official.pth")
    assert config is None and set(sd) == {"weight", "bias"}
    save_checkpoint(tmp_path, {"model": model.state_dict(), "config": {"run": {}}})
    sd, _ = load_model_state(tmp_path / CHECKPOINT_PTH)
    assert torch.equal(sd["bias"], model.bias)
    with pytest.raises(UserError, match="missing.pth"):
        load_model_state(tmp_path / "missing.pth")
