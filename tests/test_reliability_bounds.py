"""Inputs of a few bytes that used to make `mae` allocate gigabytes (`mae visualize --num-images 5000`
reached 18.5 GB; a synthetic `data.train_subset=1e8` tried hundreds of GB) and other out-of-range
requests: each is refused before anything large is built, with one line naming the field, the value and
what is allowed, exit 2, a small peak memory and nothing half-written."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_reliability_common import MAE, SMOKE, assert_no_finished_outputs, fault, mae_env  # noqa: F401

FMNIST = Path("/usr/share/datasets/fashion-mnist")
MAX_RSS_MB = 2048  # torch + timm + a micro model is ~0.5-1 GB; the refused requests needed 18 GB and more




# Runs the command from a small Python process and writes its peak RSS (KiB) to a file. Measured from
# pytest itself (os.wait4), every child reported the ~1.5 GB pytest had when it forked, even one that
# exited in 0.2 s without importing torch: the pages a fork shares count until exec.
_RSS_WRAPPER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
                "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
                "sys.exit(code)")


def _run_rss(cmd: list[str], timeout: float = 300) -> tuple[int, str, float, float]:
    """(exit code, stderr, seconds, peak RSS MB of the command) of one child."""
    t0 = time.monotonic()
    stem = Path(os.environ.get("TMPDIR", "/tmp")) / f"mae-bounds-{os.getpid()}-{time.monotonic_ns()}"
    err_path, rss_path = stem.with_suffix(".err"), stem.with_suffix(".rss")
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", _RSS_WRAPPER, str(rss_path), *cmd],
                                stdout=subprocess.DEVNULL, stderr=err, env=mae_env(), start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the wrapper and the command
            proc.wait()
            raise AssertionError(f"{cmd} ran longer than {timeout} s") from None
    text = err_path.read_text()
    err_path.unlink()
    rss_kib = int(rss_path.read_text())
    rss_path.unlink()
    return proc.returncode, text, time.monotonic() - t0, rss_kib / 1024


CASES = {
    "visualize_num_images_5000": (["visualize", "--checkpoint", "{tmp}/model.pth", "--out", "{tmp}/out/recon.png",
                                   "--num-images", "5000"], "--num-images=5000", "mae visualize --num-images 5000"),
    "visualize_200_mask_ratios": (["visualize", "--checkpoint", "{tmp}/model.pth", "--out", "{tmp}/out/recon.png",
                                   "--mask-ratios", ",".join(["0.75"] * 200)], "--mask-ratios='200 ratios'",
                                  "mae visualize --mask-ratios with 200 ratios (600 columns)"),
    "visualize_seed_2_64": (["visualize", "--checkpoint", "{tmp}/model.pth", "--out", "{tmp}/out/recon.png",
                             "--seed", str(2**64)], "--seed=18446744073709551616", "mae visualize --seed 2**64"),
    "visualize_device_tpu": (["visualize", "--checkpoint", "{tmp}/model.pth", "--out", "{tmp}/out/recon.png",
                              "--device", "tpu"], "--device='tpu'", "mae visualize --device tpu"),
    "synthetic_subset_1e8": (["pretrain", "--config", str(SMOKE), "--out", "{tmp}/out", "data.train_subset=100000000"],
                             "data.train_subset=100000000", "synthetic data.train_subset=100000000 (78 GB of pixels)"),
    "synthetic_val_subset_huge": (["pretrain", "--config", str(SMOKE), "--out", "{tmp}/out",
                                   "model.img_size=224", "model.patch_size=16", "data.train_subset=100000"],
                                  "data.train_subset=100000", "synthetic 224x224 data.train_subset=100000 (15 GB)"),
    "img_size_70000": (["pretrain", "--config", str(SMOKE), "--out", "{tmp}/out", "model.img_size=70000"],
                       "model.img_size=70000", "model.img_size=70000 (a 10000x10000-patch position table: 51 GB)"),
    "img_size_4095_patch_1": (["pretrain", "--config", str(SMOKE), "--out", "{tmp}/out", "model.img_size=[4095,4095]",
                               "model.patch_size=1"], "model.img_size=[4095, 4095]",
                              "model.img_size=[4095,4095] with patch 1 (16.8 M tokens)"),
    "fashion_mnist_subset_larger_than_dataset": (
        ["pretrain", "--config", str(SMOKE), "--out", "{tmp}/out", "data.name=fashion_mnist",
         f"data.root={FMNIST}", "data.train_subset=70000"], "data.train_subset=70000",
        "fashion_mnist data.train_subset=70000 (the split has 60000): refused, not silently clamped"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_small_input_cannot_allocate_gigabytes(case, tmp_path, fault):
    args, words, what = CASES[case]
    fault.describe("memory bounds", what, f"exit 2, one line naming the field, value and what is allowed; "
                   f"peak RSS < {MAX_RSS_MB} MB; nothing half-written")
    if "fashion_mnist" in case and not FMNIST.is_dir():
        pytest.skip(f"{FMNIST} not installed")
    code, err, seconds, rss = _run_rss([MAE, *[a.replace("{tmp}", str(tmp_path)) for a in args]])
    lines = err.strip().splitlines()
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err[-3000:]
    assert words in lines[0], lines[0]
    assert "allowed" in lines[0], lines[0]
    assert rss < MAX_RSS_MB, f"peak RSS {rss:.0f} MB"
    assert_no_finished_outputs(tmp_path)
    written = [p.name for p in tmp_path.rglob("*") if p.is_file() and p.name != "train.log"]
    assert not written, f"files written: {written}"
    fault.observe(f"exit 2 after {seconds:.1f} s, peak RSS {rss:.0f} MB: {lines[0][:200]}")
