"""Does the data path keep up with training? The same pretraining step fed by the real loader vs pre-built tensors.

    python -m bench.data_vs_tensors                      # tiny preset shape: Fashion-MNIST 28x28, micro ViT/7
    python -m bench.data_vs_tensors --steps 40 --rounds 3 --threads 1

Each round times `--steps` optimizer steps twice, interleaved so that load changes hit both alike:
(a) batches from `mae.data.build_loader` (in-memory uint8 Fashion-MNIST, batched RandomResizedCrop + flip,
normalisation), (b) the same number of batches that were built before the clock started. Prints images/s
of both and their ratio (the issue asks for >= 0.9); writes results/bench/data_vs_tensors.csv.
"""

from __future__ import annotations

import argparse
import itertools

import torch

from bench.common import REPO_ROOT, Timer, machine_info, median, set_threads, write_csv
from mae.data import build_dataset, build_loader
from mae.model import create_mae_model
from mae.optim import build_pretrain_optimizer


def pretrain_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor) -> None:
    loss = model(images)[0]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mae_vit_micro_patch7_dec64d1b")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--root", default=None, help="dataset folder (default: the dataset's standard place)")
    parser.add_argument("--augmentation", default="crop_rand")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(REPO_ROOT / "results/bench/data_vs_tensors.csv"))
    args = parser.parse_args()
    threads = set_threads(args.threads)
    torch.manual_seed(0)

    model = create_mae_model(args.arch)
    img_size, in_chans = model.patch_embed.img_size[0], model.in_chans
    optimizer = build_pretrain_optimizer(model, lr=1e-4)
    dataset = build_dataset(args.dataset, args.root, "train", img_size=img_size, in_chans=in_chans)
    loader = build_loader(dataset, "pretrain", batch_size=args.batch, img_size=img_size, in_chans=in_chans,
                          augmentation=args.augmentation, seed=0, num_workers=0)
    batches = itertools.cycle([images for images, _ in itertools.islice(iter(loader), args.steps)])
    pretrain_step(model, optimizer, next(batches))  # warm-up

    real, prebuilt = [], []
    for epoch in range(args.rounds):
        loader.set_epoch(epoch + 1)
        with Timer() as t_real:
            for images, _ in itertools.islice(iter(loader), args.steps):
                pretrain_step(model, optimizer, images)
        with Timer() as t_pre:
            for _ in range(args.steps):
                pretrain_step(model, optimizer, next(batches))
        real.append(args.steps * args.batch / t_real.wall_s)
        prebuilt.append(args.steps * args.batch / t_pre.wall_s)
        print(f"round {epoch + 1}: real data path {real[-1]:.0f} img/s, pre-built tensors {prebuilt[-1]:.0f} img/s, "
              f"ratio {real[-1] / prebuilt[-1]:.3f}")

    ratio = median(r / p for r, p in zip(real, prebuilt))
    info = machine_info(threads)
    print(f"median over {args.rounds} rounds: real {median(real):.0f} img/s, pre-built {median(prebuilt):.0f} img/s, "
          f"ratio {ratio:.3f} (target >= 0.9); load {info['load1']}, threads {threads}")
    write_csv([{"arch": args.arch, "dataset": args.dataset, "augmentation": args.augmentation, "batch": args.batch,
                "steps": args.steps, "rounds": args.rounds, "real_images_per_s": round(median(real), 1),
                "prebuilt_images_per_s": round(median(prebuilt), 1), "ratio": round(ratio, 3), **info}], args.out)


if __name__ == "__main__":
    main()
