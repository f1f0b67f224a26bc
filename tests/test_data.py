"""Datasets, batched transforms and exactly resumable, sharded loaders (mae/data/)."""

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from mae.data import (
    AUGMENTATIONS, DEFAULT_ROOTS, FolderDataset, InMemoryDataset, InMemoryLoader, TensorTransform, build_dataset,
    build_folder_transform, build_loader, build_mixup, build_tensor_transform,
)
from mae.errors import UserError

FMNIST = Path(DEFAULT_ROOTS["fashion_mnist"])
needs_fmnist = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="no Fashion-MNIST")


@pytest.fixture(scope="module")
def synth():
    return build_dataset("synthetic", None, "train", img_size=16, in_chans=1, subset=600)


def _collect(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def _write_idx(path, arr):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


# ---------------------------------------------------------------- datasets

@needs_fmnist
def test_fashion_mnist_from_idx_files():
    train = build_dataset("fashion_mnist", None, "train", img_size=28, in_chans=1)
    val = build_dataset("fashion_mnist", None, "val", img_size=28, in_chans=1, subset=100)
    assert isinstance(train, InMemoryDataset)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert val.images.shape == (100, 1, 28, 28)
    assert set(train.labels.unique().tolist()) == set(range(10)) and train.num_classes == 10
    # measured statistics agree with the constants used for normalisation
    x = train.images.float() / 255
    assert abs(x.mean().item() - train.mean[0]) < 1e-3 and abs(x.std().item() - train.std[0]) < 1e-3
    first = build_dataset("fashion_mnist", None, "val", img_size=28, in_chans=1)
    assert torch.equal(first.images[:100], val.images)


def test_idx_reader_on_written_files(tmp_path):
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 10, 7)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    ds = build_dataset("fashion_mnist", tmp_path, "val", img_size=28, in_chans=1)
    assert torch.equal(ds.images[:, 0], torch.from_numpy(imgs.astype(np.uint8)))
    assert ds.labels.tolist() == labels.tolist()
    with pytest.raises(UserError, match=r"data\.root=.*train-images-idx3-ubyte\.gz"):
        build_dataset("fashion_mnist", tmp_path, "train", img_size=28, in_chans=1)


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="data.name='mnist'"):
        build_dataset("mnist", None, "train", img_size=28, in_chans=1)
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match=rf"data\.root='{missing}'.*train/.*sub-folder"):
        build_dataset("imagenet", missing, "train", img_size=224, in_chans=3)
    with pytest.raises(UserError, match=r"data\.root=.*data\.download=true"):
        build_dataset("cifar10", tmp_path, "train", img_size=32, in_chans=3)
    with pytest.raises(UserError, match="model.in_chans"):
        build_dataset("synthetic", None, "train", img_size=16, in_chans=2)
    with pytest.raises(UserError, match="model.img_size"):
        build_dataset("synthetic", None, "train", img_size=0, in_chans=1)
    with pytest.raises(UserError, match="pretrain.augmentation"):
        build_tensor_transform("pretrain", img_size=16, in_chans=1, mean=(0.5,), std=(0.2,), augmentation="mixup")
    tiny = build_dataset("synthetic", None, "val", img_size=8, in_chans=1, subset=10)
    with pytest.raises(UserError, match="batch_size"):
        build_loader(tiny, "pretrain", batch_size=16, img_size=8, in_chans=1)


def test_synthetic_is_deterministic_and_learnable(synth):
    again = build_dataset("synthetic", None, "train", img_size=16, in_chans=1, subset=600)
    other_seed = build_dataset("synthetic", None, "train", img_size=16, in_chans=1, subset=600, seed=1)
    val = build_dataset("synthetic", None, "val", img_size=16, in_chans=1, subset=300)
    assert torch.equal(synth.images, again.images) and torch.equal(synth.labels, again.labels)
    assert not torch.equal(synth.images, other_seed.images)
    assert not torch.equal(synth.images[:300], val.images)
    assert synth.num_classes == 10 and len(synth.labels.unique()) == 10
    # class structure: nearest class mean of the phase-free |FFT| beats chance (10%) by far
    feat = lambda d: torch.fft.fft2(d.images[:, 0].float() / 255 - 0.5).abs().flatten(1)
    f_tr, f_va = feat(synth), feat(val)
    centroids = torch.stack([f_tr[synth.labels == c].mean(0) for c in range(10)])
    acc = (torch.cdist(f_va, centroids).argmin(1) == val.labels).float().mean().item()
    print(f"synthetic nearest-centroid accuracy {acc:.2f}")
    assert acc > 0.6


# ---------------------------------------------------------------- transforms

def test_eval_transform_is_normalisation_only(synth):
    t = build_tensor_transform("eval", img_size=16, in_chans=1, mean=synth.mean, std=synth.std)
    x = t(synth.images[:8], torch.Generator().manual_seed(0))
    torch.testing.assert_close(x * synth.std[0] + synth.mean[0], synth.images[:8].float() / 255)


def test_affine_crop_and_flip_are_exact_on_pixel_grid(synth):
    imgs = synth.images[:4].float() / 255
    t = TensorTransform(8, 1, (0.0,), (1.0,), crop="rrc")
    boxes = torch.tensor([[0, 0, 8, 8], [3, 5, 8, 8], [8, 2, 8, 8], [1, 1, 8, 8]], dtype=torch.float32)
    flips = torch.tensor([False, True, False, True])
    out = t._resample(imgs, boxes, flips)
    for k, (x0, y0, _, _) in enumerate(boxes.long().tolist()):
        ref = imgs[k, :, y0:y0 + 8, x0:x0 + 8]
        torch.testing.assert_close(out[k], ref.flip(-1) if flips[k] else ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("augmentation", AUGMENTATIONS)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_pretrain_augmentations_shapes_and_randomness(synth, augmentation, in_chans):
    t = build_tensor_transform("pretrain", img_size=12, in_chans=in_chans, mean=synth.mean, std=synth.std,
                               augmentation=augmentation)
    a = t(synth.images[:16], torch.Generator().manual_seed(1))
    b = t(synth.images[:16], torch.Generator().manual_seed(1))
    c = t(synth.images[:16], torch.Generator().manual_seed(2))
    assert a.shape == (16, in_chans, 12, 12) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert torch.equal(a, c) == (augmentation == "none")
    if in_chans == 3:
        assert torch.equal(a[:, 0], a[:, 2])  # grayscale repeated


def test_rgb_to_gray_and_color_jitter(synth):
    rgb = build_dataset("synthetic", None, "val", img_size=16, in_chans=3, subset=32)
    t = build_tensor_transform("pretrain", img_size=16, in_chans=1, mean=rgb.mean, std=rgb.std,
                               augmentation="crop_rand_color_jitter")
    x = t(rgb.images, torch.Generator().manual_seed(0))
    assert x.shape == (32, 1, 16, 16)


def test_finetune_transform_is_seeded_and_leaves_global_rng_alone(synth):
    t = build_tensor_transform("finetune", img_size=16, in_chans=1, mean=synth.mean, std=synth.std,
                               randaug="rand-m9-mstd0.5-inc1", reprob=1.0)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = t(synth.images[:8], torch.Generator().manual_seed(5))
    after = torch.rand(3)
    torch.manual_seed(999)
    b = t(synth.images[:8], torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(before, after)
    # reprob=1 erases a box in every image; everything before the erasing draws the same numbers
    no_erase = build_tensor_transform("finetune", img_size=16, in_chans=1, mean=synth.mean, std=synth.std,
                                      randaug="rand-m9-mstd0.5-inc1", reprob=0.0)
    c = no_erase(synth.images[:8], torch.Generator().manual_seed(5))
    changed = (a != c).flatten(1)
    assert changed.any(1).all()
    assert (changed.float().mean(1) < 0.5).all()  # a box, not the whole image


def test_build_mixup():
    assert build_mixup(0.0, 0.0, 0.1, 10) is None
    mix = build_mixup(0.8, 1.0, 0.1, 10)
    x, y = mix(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
    assert y.shape == (4, 10)
    torch.testing.assert_close(y.sum(1), torch.ones(4))


# ---------------------------------------------------------------- loaders

def test_loader_resume_is_exact(synth):
    def make():
        return build_loader(synth, "finetune", batch_size=64, img_size=16, in_chans=1, seed=3)

    full = make()
    full.set_epoch(1)
    ref = _collect(full)
    assert len(ref) == len(full) == 600 // 64

    part = make()
    part.set_epoch(1)
    for k, _ in enumerate(part):
        if k == 3:
            break
    state = part.state_dict()
    assert state == {"epoch": 1, "batch": 4}
    resumed = make()
    resumed.load_state_dict(state)
    torch.manual_seed(42)  # the global RNG plays no part
    resumed.set_epoch(1)  # same epoch: keeps the position
    rest = _collect(resumed)
    assert len(rest) == len(ref) - 4
    for (x, y), (rx, ry) in zip(rest, ref[4:]):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    resumed.set_epoch(2)
    nxt = _collect(resumed)
    assert len(nxt) == len(ref) and not torch.equal(nxt[0][1], ref[0][1])


def test_loader_shards_like_distributed_sampler(synth):
    world, seen = 3, []
    for rank in range(world):
        ld = InMemoryLoader(synth, 50, shuffle=True, drop_last=False, seed=7, rank=rank, world_size=world,
                            transform=build_tensor_transform("eval", img_size=16, in_chans=1, mean=synth.mean,
                                                             std=synth.std))
        ld.set_epoch(2)
        ds = DistributedSampler(range(len(synth)), num_replicas=world, rank=rank, shuffle=True, seed=7)
        ds.set_epoch(2)
        want = list(ds)
        labels = torch.cat([y for _, y in ld])
        assert labels.tolist() == synth.labels[want].tolist()
        seen += want
    assert set(seen) == set(range(len(synth)))


def _jpeg_folder(root: Path, n_per_class=6, size=40):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n_per_class):
                arr = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.jpg", quality=90)


def test_data_root_layout_is_checked_by_name_and_the_builder_says_the_same(tmp_path):
    """check_data_root (torch-free, run by the CLI before torch) names what is missing under data.root;
    build_dataset reports a missing layout with the same line, and a layout that is there passes."""
    from torchvision.datasets import CIFAR10, CIFAR100

    from mae.choices import CIFAR_FOLDERS, check_data_root
    assert CIFAR_FOLDERS == {"cifar10": CIFAR10.base_folder, "cifar100": CIFAR100.base_folder}
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    cases = [  # (name, root, split, download, what the one line must name)
        ("imagenet", empty, "train", False, "expected a folder train/ with one sub-folder of images per class"),
        ("image_folder", None, "train", False, "data.root is required for data.name='image_folder'"),
        ("fashion_mnist", tmp_path / "nope", "train", False, "expected an existing folder there"),
        ("fashion_mnist", empty, "val", False, "expected t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz"),
        ("cifar10", empty, "train", False, "expected the torchvision folder cifar-10-batches-py/ (or set data.download"),
        ("cifar100", tmp_path / "nope", "train", False, "expected an existing folder (or set data.download=true)"),
        ("cifar10", a_file, "train", True, "expected an existing folder there"),
    ]
    for name, root, split, download, words in cases:
        with pytest.raises(UserError, match=re.escape(words)) as checked:
            check_data_root(name, root, split, download)
        with pytest.raises(UserError) as built:
            build_dataset(name, root, split, img_size=32, in_chans=3, download=download)
        assert str(built.value) == str(checked.value), name
    _jpeg_folder(tmp_path / "folders")
    assert check_data_root("imagenet", tmp_path / "folders", "val") == tmp_path / "folders"
    (empty / "t10k-images-idx3-ubyte").write_bytes(b"")  # by name: the contents are read later
    _write_idx(empty / "t10k-labels-idx1-ubyte.gz", np.zeros(3))
    assert check_data_root("fashion_mnist", str(empty), "val") == empty
    (empty / "cifar-100-python").mkdir()
    assert check_data_root("cifar100", empty, "train") == empty
    assert check_data_root("synthetic", None, "train") is None
    assert check_data_root("cifar10", tmp_path / "new", "train", download=True) == tmp_path / "new"  # torchvision makes it


def test_a_cifar_download_that_fails_is_one_line_naming_data_download(tmp_path, monkeypatch):
    """data.download=true where the download server cannot be reached (a cluster's compute node without
    internet): a UserError naming data.download and the reason, not urllib's traceback."""
    from urllib.error import URLError

    from torchvision.datasets import CIFAR10

    def unreachable(self):
        raise URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(CIFAR10, "download", unreachable)
    with pytest.raises(UserError) as err:
        build_dataset("cifar10", tmp_path / "new", "train", img_size=32, in_chans=3, download=True)
    assert str(err.value) == (f"data.download=true could not fetch cifar10 into {tmp_path / 'new'} ([Errno -2] Name or "
                              "service not known): allowed a machine that reaches the download server, or "
                              "torchvision's folder cifar-10-batches-py/ there with data.download=false")


def test_image_folder_path(tmp_path):
    _jpeg_folder(tmp_path)
    ds = build_dataset("image_folder", tmp_path, "train", img_size=32, in_chans=3)
    assert isinstance(ds, FolderDataset) and len(ds) == 12 and ds.num_classes == 2
    sub = build_dataset("image_folder", tmp_path, "train", img_size=32, in_chans=3, subset=4)
    assert sorted({ds.folder.samples[i][1] for i in sub.indices}) == [0, 1]

    def make(workers):
        return build_loader(ds, "pretrain", batch_size=4, img_size=32, in_chans=3, seed=1, num_workers=workers)

    ref = _collect(make(0))
    assert len(ref) == 3 and ref[0][0].shape == (4, 3, 32, 32)
    with_workers = _collect(make(2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ref, with_workers))
    resumed = make(0)
    resumed.skip(2)
    (x, y), = _collect(resumed)
    assert torch.equal(x, ref[2][0]) and torch.equal(y, ref[2][1])

    for kind in ("finetune", "linprobe", "eval"):
        x, y = next(iter(build_loader(ds, kind, batch_size=4, img_size=32, in_chans=1, num_workers=0)))
        assert x.shape == (4, 1, 32, 32) and y.dtype == torch.int64
    with pytest.raises(UserError, match=r"data\.root"):
        build_dataset("image_folder", tmp_path / "train", "val", img_size=32, in_chans=3)


def test_folder_transforms_cover_table1e():
    from PIL import Image
    img = Image.fromarray(np.full((50, 60, 3), 128, np.uint8))
    for aug in AUGMENTATIONS:
        t = build_folder_transform("pretrain", img_size=32, in_chans=3, augmentation=aug)
        assert t(img).shape == (3, 32, 32)


# A stage and its augmentation: every transform of both paths (in-memory batches, image folders).
EVERY_TRANSFORM = [("pretrain", {"augmentation": a}) for a in AUGMENTATIONS] + [
    ("finetune", {"randaug": "rand-m9-mstd0.5-inc1", "reprob": 0.25}), ("linprobe", {}), ("eval", {})]


@pytest.mark.parametrize("kind, extra", EVERY_TRANSFORM)
def test_rectangular_img_size_through_every_in_memory_transform(synth, kind, extra):
    """img_size [H, W]: square 16x16 sources come out 8x24 (and the synthetic set is generated at 8x24)."""
    x, _ = next(iter(build_loader(synth, kind, batch_size=8, img_size=(8, 24), in_chans=3, seed=0, **extra)))
    assert x.shape == (8, 3, 8, 24) and torch.isfinite(x).all()
    wide = build_dataset("synthetic", None, "val", img_size=[8, 24], in_chans=1, subset=16)
    assert wide.images.shape == (16, 1, 8, 24)
    x, _ = next(iter(build_loader(wide, kind, batch_size=8, img_size=[8, 24], in_chans=1, seed=0, **extra)))
    assert x.shape == (8, 1, 8, 24)
    if kind == "eval":  # no crop, no flip: the rectangle passes through as it is, only normalised
        assert torch.allclose(x * wide.std[0] + wide.mean[0], wide.images[:8].float() / 255, atol=1e-6)


def test_fixed_crop_keeps_the_output_aspect(synth):
    """crop_fixed takes 87.5 % of the largest box of the output's shape, so nothing is stretched."""
    boxes = TensorTransform((8, 24), 1, synth.mean, synth.std, crop="fixed")._crop_boxes(
        64, 30, 60, torch.Generator().manual_seed(0))
    x0, y0, w, h = boxes.unbind(1)
    assert torch.allclose(w / h, torch.full_like(w, 3.0)) and torch.allclose(w, torch.full_like(w, 0.875 * 60))
    assert (x0 >= 0).all() and (x0 + w <= 60 + 1e-9).all() and (y0 >= 0).all() and (y0 + h <= 30 + 1e-9).all()


@pytest.mark.parametrize("kind, extra", EVERY_TRANSFORM)
def test_rectangular_img_size_through_every_folder_transform(tmp_path, kind, extra):
    _jpeg_folder(tmp_path, n_per_class=2)
    ds = build_dataset("image_folder", tmp_path, "train", img_size=[16, 32], in_chans=3)
    x, _ = next(iter(build_loader(ds, kind, batch_size=4, img_size=[16, 32], in_chans=3, seed=0, num_workers=0,
                                  **extra)))
    assert x.shape == (4, 3, 16, 32) and torch.isfinite(x).all()


@pytest.mark.parametrize("bad", [[16], [16, 32, 3], [0, 16], (16.0, 32), "16"])
def test_bad_img_size_is_a_user_error(bad):
    with pytest.raises(UserError, match=r"model\.img_size"):
        build_dataset("synthetic", None, "train", img_size=bad, in_chans=1, subset=4)


@pytest.mark.parametrize("kind, official", [("pretrain", 0.2), ("finetune", 0.08), ("linprobe", 0.08)])
def test_crop_min_scale_bounds_every_random_resized_crop(synth, kind, official):
    """data.crop_min_scale replaces the official lower area bound of each stage, on both data paths."""
    from PIL import Image
    for crop_min_scale, low in [(None, official), (0.5, 0.5)]:
        t = build_tensor_transform(kind, img_size=28, in_chans=1, mean=synth.mean, std=synth.std,
                                   randaug=None, reprob=0.0, crop_min_scale=crop_min_scale)
        boxes = t._crop_boxes(4000, 28, 28, torch.Generator().manual_seed(0))
        areas = boxes[:, 2] * boxes[:, 3] / (28 * 28)
        assert areas.min() >= low - 1e-6 and areas.min() < low + 0.05, (crop_min_scale, areas.min())
        folder = build_folder_transform(kind, img_size=16, in_chans=3, randaug=None, reprob=0.0,
                                        crop_min_scale=crop_min_scale)
        crops = [op for op in folder.transforms if hasattr(op, "scale")]  # finetune: timm's RandomResizedCrop
        assert crops and tuple(crops[0].scale) == (low, 1.0), (kind, crop_min_scale, crops)
        assert folder(Image.fromarray(np.zeros((20, 24, 3), np.uint8))).shape == (3, 16, 16)


def test_crop_min_scale_out_of_range_is_a_user_error():
    from mae.config import Config
    with pytest.raises(UserError, match=r"data\.crop_min_scale.*\(0, 1\]"):
        Config.from_dict({"data": {"crop_min_scale": 0.0}}).resolved()
