"""data.val_split: a validation split carved from the training images; the test set is never read."""

import gzip
import struct

import numpy as np
import pytest
import torch

from mae.config import identity, load_config
from mae.data import build_dataset, held_out_indices
from mae.errors import UserError


def _write_idx(path, arr):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _train_only_fmnist(root, n=50):
    """A Fashion-MNIST folder with training files only: reading the test files would fail."""
    images = np.arange(n, dtype=np.uint8)[:, None, None] * np.ones((1, 28, 28), dtype=np.uint8)  # image i = value i
    _write_idx(root / "train-images-idx3-ubyte.gz", images)
    _write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return images


def _ids(ds):
    return ds.images[:, 0, 0, 0].long().tolist()


def test_held_out_indices_fixed_disjoint_and_seed_free():
    held = held_out_indices(100, 20)
    assert held.tolist() == held_out_indices(100, 20).tolist()
    assert len(set(held.tolist())) == 20 and held.tolist() == sorted(held.tolist())
    assert held.tolist() != list(range(20))  # a permutation, not the first images
    with pytest.raises(UserError, match=r"data\.val_split=100 is invalid"):
        held_out_indices(100, 100)


def test_in_memory_split_disjoint_covers_train_and_never_reads_test(tmp_path):
    _train_only_fmnist(tmp_path)
    with pytest.raises(UserError):  # no test files: the plain val split cannot be read
        build_dataset("fashion_mnist", tmp_path, "val", img_size=28, in_chans=1)
    train = build_dataset("fashion_mnist", tmp_path, "train", img_size=28, in_chans=1, val_split=10)
    val = build_dataset("fashion_mnist", tmp_path, "val", img_size=28, in_chans=1, val_split=10)
    assert len(train) == 40 and len(val) == 10
    assert set(_ids(train)).isdisjoint(_ids(val))
    assert sorted(_ids(train) + _ids(val)) == list(range(50))
    assert _ids(val) == held_out_indices(50, 10).tolist()
    assert torch.equal(val.labels, torch.tensor(_ids(val)) % 10)  # labels follow their images
    sub = build_dataset("fashion_mnist", tmp_path, "train", img_size=28, in_chans=1, val_split=10, subset=5)
    assert _ids(sub) == _ids(train)[:5]  # subset = first N of the remaining training images
    with pytest.raises(UserError, match=r"data\.val_split=50 is invalid"):
        build_dataset("fashion_mnist", tmp_path, "train", img_size=28, in_chans=1, val_split=50)


def test_synthetic_split_same_for_every_seed_arm():
    kw = dict(img_size=28, in_chans=1, val_split=96)
    train = build_dataset("synthetic", None, "train", **kw)
    val = build_dataset("synthetic", None, "val", **kw)
    pool = build_dataset("synthetic", None, "train", img_size=28, in_chans=1)  # the default 4096 images
    assert len(train) + len(val) == len(pool)
    held = held_out_indices(len(pool), 96)
    assert torch.equal(val.images, pool.images[held])
    rest = torch.ones(len(pool), dtype=torch.bool)
    rest[held] = False
    assert torch.equal(train.images, pool.images[rest])
    small = build_dataset("synthetic", None, "val", img_size=28, in_chans=1, val_split=96, subset=8)
    assert torch.equal(small.images, val.images[:8])


def test_image_folder_split_reads_train_only(tmp_path):
    from PIL import Image
    for c in range(2):
        d = tmp_path / "train" / f"class{c}"
        d.mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((8, 8, 3), 10 * c + i, dtype=np.uint8)).save(d / f"{i}.png")
    # no val/ folder at all
    train = build_dataset("image_folder", tmp_path, "train", img_size=32, in_chans=3, val_split=3)
    val = build_dataset("image_folder", tmp_path, "val", img_size=32, in_chans=3, val_split=3)
    assert len(train) == 9 and len(val) == 3
    assert set(train.indices).isdisjoint(val.indices) and sorted(train.indices + val.indices) == list(range(12))
    assert val.indices == held_out_indices(12, 3).tolist()
    sub = build_dataset("image_folder", tmp_path, "train", img_size=32, in_chans=3, val_split=3, subset=3)
    assert set(sub.indices) <= set(train.indices) and len(sub.indices) == 3


def test_val_split_config_key_and_identity():
    base = load_config("workflow/presets/smoke.yaml")
    assert base.data.val_split is None
    cfg = base.with_overrides(["data.val_split=16"])
    assert cfg.data.val_split == 16
    assert identity(cfg, "pretrain") != identity(base, "pretrain")
    # the default (null) keeps the run ids that configs without the key always had
    assert identity(base.with_overrides(["data.val_split=null"]), "finetune") == identity(base, "finetune")
    with pytest.raises(UserError, match=r"data\.val_split=0 is invalid"):
        base.with_overrides(["data.val_split=0"])


def test_training_run_evaluates_on_held_out_images(tmp_path):
    """A finetune run with val_split evaluates on the held-out training images: the run works with
    a Fashion-MNIST folder that has no test files."""
    from mae import train
    root = tmp_path / "fm"
    root.mkdir()
    _train_only_fmnist(root, n=80)
    cfg = load_config("workflow/presets/smoke.yaml", [
        "data.name=fashion_mnist", f"data.root={root}", "data.train_subset=null", "data.val_subset=null",
        "data.val_split=16", "finetune.epochs=1", "finetune.warmup_epochs=0", "run.log_every_steps=1"])
    metrics = train.finetune(cfg, tmp_path / "run")
    assert metrics["top1"] is not None and 0 <= metrics["top1"] <= 100
