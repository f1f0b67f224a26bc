"""Input-pipeline throughput: in-memory batched augmentation vs. the ImageFolder / JPEG DataLoader path.

    python bench/data_throughput.py                      # defaults: a few seconds per row
    python bench/data_throughput.py --seconds 10 --workers 0 1 2 4

Rows (images/s, measured here, printed and written to results/bench/data_throughput.csv):
* in-memory Fashion-MNIST 28x28x1 for each pretraining augmentation (crop_rand is the default) and
  the fine-tuning transform (RandAugment + random erasing), batch 256, main process only;
* a generated JPEG ImageFolder (PIL, 256x256 RGB, quality 90) through `FolderLoader` at 224x224
  with crop_rand, for each worker count (images/s and images/s per worker).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mae.data import AUGMENTATIONS, build_dataset, build_loader  # noqa: E402


def measure(loader, seconds: float, warmup_batches: int = 2) -> tuple[float, int]:
    """Images per second over whole epochs until `seconds` have passed (after warm-up batches)."""
    images, start, epoch = 0, None, 0
    while True:
        loader.set_epoch(epoch)
        for b, (x, _) in enumerate(loader):
            if start is None:
                if b + 1 >= warmup_batches:
                    start = time.perf_counter()
                continue
            images += x.shape[0]
            if time.perf_counter() - start >= seconds:
                return images / (time.perf_counter() - start), images
        epoch += 1


def make_jpeg_folder(root: Path, n_images: int, side: int, classes: int = 4) -> None:
    from PIL import Image
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    for i in range(n_images):
        d = root / "train" / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        # smooth content plus noise so JPEG decoding cost is realistic (not a flat image)
        base = (127 + 60 * np.sin(xx / rng.uniform(5, 30)) * np.cos(yy / rng.uniform(5, 30)))[..., None]
        img = np.clip(base + rng.normal(0, 20, (side, side, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"{i}.jpg", quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0, help="measuring time per row")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jpeg-images", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (main process)")
    p.add_argument("--out", default="results/bench/data_throughput.csv")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    host = platform.node()
    fm = build_dataset("fashion_mnist", None, "train", img_size=28, in_chans=1)
    cases = [("pretrain", a) for a in AUGMENTATIONS] + [("finetune", "randaug+reprob")]
    for kind, aug in cases:
        extra = {"augmentation": aug} if kind == "pretrain" else {}
        loader = build_loader(fm, kind, batch_size=args.batch_size, img_size=28, in_chans=1, seed=0, **extra)
        ips, n = measure(loader, args.seconds)
        rows.append({"path": "in_memory", "dataset": "fashion_mnist", "size": "28x28x1", "kind": kind,
                     "augmentation": aug, "workers": 0, "batch_size": args.batch_size, "images": n,
                     "images_per_s": round(ips, 1), "images_per_s_per_worker": "", "threads": args.threads,
                     "host": host})
        print(f"in-memory fashion_mnist 28x28 {kind:8s} {aug:24s} {ips:10.0f} images/s")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        make_jpeg_folder(Path(tmp), args.jpeg_images, 256)
        print(f"generated {args.jpeg_images} JPEGs (256x256) in {time.perf_counter() - t0:.1f} s")
        ds = build_dataset("image_folder", tmp, "train", img_size=224, in_chans=3)
        bs = min(64, len(ds))
        for workers in args.workers:
            loader = build_loader(ds, "pretrain", batch_size=bs, img_size=224, in_chans=3, seed=0,
                                  num_workers=workers)
            ips, n = measure(loader, args.seconds, warmup_batches=1)
            per = ips / max(workers, 1)
            rows.append({"path": "image_folder", "dataset": "jpeg_256", "size": "224x224x3", "kind": "pretrain",
                         "augmentation": "crop_rand", "workers": workers, "batch_size": bs, "images": n,
                         "images_per_s": round(ips, 1), "images_per_s_per_worker": round(per, 1),
                         "threads": args.threads, "host": host})
            print(f"JPEG ImageFolder 224x224 crop_rand workers={workers}: {ips:8.0f} images/s "
                  f"({per:.0f} per worker{'; main process' if workers == 0 else ''})")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out} ({len(rows)} rows; cpu count {os.cpu_count()})")


if __name__ == "__main__":
    main()
