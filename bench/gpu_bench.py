"""MAE pretraining step on a CUDA GPU: bf16, with and without torch.compile, MFU vs a measured bf16 peak.

    bash bench/gpu.sh                                   # ViT-B/16 + ViT-L/16, bounded to < 10 minutes
    python -m bench.gpu_bench --archs vitl --batch 128 --steps 20
    python -m bench.gpu_bench --cpu-smoke               # tiny shapes on the CPU, fp32 (what the tests run)

Each configuration builds the model and the project's AdamW (mae.optim), runs `--warmup` optimizer
steps (compilation happens here), then `--steps` timed steps through `mae.engine.train_one_epoch`
(bf16 autocast, the per-step random masks of mae.recipes.pretrain_loss) on a fixed synthetic batch, timed
with CUDA events around the whole timed epoch (one synchronisation at its end). Reported: images/s, peak GPU
memory (torch.cuda.max_memory_allocated), training FLOPs per image (mae.flops), achieved FLOP/s and
MFU against the best bf16 `torch.mm` measured in this run (bench.matmul_peak, 8192^3), and the host
synchronisations the engine makes per step (counted with torch.cuda.set_sync_debug_mode: an epoch of 6
steps minus one of 2, over 4; the epoch's closing log point syncs by design). By default the ViT-L/16
Table 2 rows (encoder w/ mask tokens, 1-block decoder) are measured in eager mode too, giving the GPU
counterpart of the paper's wall-clock speedups.
Mode `official` is the official MAE recipe on the same card, batch and masking (bench.official_recipe:
fp16 autocast + GradScaler, unfused attention, torch's default AdamW, a `.item()` and a synchronize per
step, no compile); `vs_official` is each row's images/s over the official row's of the same arch.
A time budget (`--budget-s`) skips what would not fit; skipped rows are printed, not written.
Writes results/bench/gpu_bench.csv (CPU smoke: --out).
"""

from __future__ import annotations

import argparse
import datetime
import time
from typing import Any, Callable

import torch

from bench.common import REPO_ROOT, count_host_syncs, machine_info, set_threads, write_csv
from bench.matmul_peak import matmul_peak
from bench.official_recipe import measure_official
from bench.train_step import REFERENCE, VARIANTS, flops_per_image, paper_speedups, pretrain_loss_fn

ARCHS = {"vitb": "mae_vit_base_patch16_dec512d8b", "vitl": "mae_vit_large_patch16_dec512d8b",
         "micro28": "mae_vit_micro_patch7_dec64d1b", "micro32": "mae_vit_micro_patch4_dec64d1b"}
DEFAULT_BATCH = {"vitb": 256, "vitl": 128, "micro28": 16, "micro32": 16}
DEFAULT_VARIANT = "enc_wo_mask_dec8"  # the paper's default MAE


class _Batches:
    def __init__(self, images: torch.Tensor):
        self.images = images
        self.targets = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)

    def __iter__(self):
        return self

    def __next__(self):
        return self.images, self.targets


def training_epochs(arch: str, variant: str, batch: int, compile_model: bool, device: torch.device,
                    dtype: torch.dtype | None) -> Callable[[int], None]:
    """One configuration's training, ready to run: `epoch(n)` takes n optimizer steps through
    mae.engine.train_one_epoch on a fixed synthetic batch (the closing log point of each call syncs)."""
    from mae.engine import EpochContext, LoopState, train_one_epoch
    from mae.model import create_mae_model
    from mae.optim import absolute_lr, build_pretrain_optimizer, build_scheduler

    torch.manual_seed(0)
    model = create_mae_model(arch, **VARIANTS[variant]).to(device)
    optimizer = build_pretrain_optimizer(model, absolute_lr(1.5e-4, batch), 0.05, (0.9, 0.95))
    scheduler = build_scheduler(optimizer, 1, 0.5, 1000)
    train_model = torch.compile(model) if compile_model else model
    loss_fn = pretrain_loss_fn(model.num_patches, batch)
    images = torch.randn(batch, model.in_chans, *model.patch_embed.img_size, device=device)
    state = LoopState()
    model.train()

    def epoch(n: int) -> None:
        ctx = EpochContext(steps_per_epoch=n, accum_steps=1, images_per_step=batch, device=device,
                           autocast_dtype=dtype, log_every_steps=10 ** 9, checkpoint_every_steps=0)
        state.step_in_epoch = 0
        train_one_epoch(train_model, loss_fn, _Batches(images), optimizer, scheduler, state, ctx)

    return epoch


def measure(arch: str, variant: str, batch: int, compile_model: bool, device: torch.device,
            dtype: torch.dtype | None, warmup: int, steps: int, count_syncs: bool) -> dict[str, Any]:
    """Warm up, then time `steps` optimizer steps of one configuration; returns the measured numbers."""
    epoch = training_epochs(arch, variant, batch, compile_model, device, dtype)
    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    epoch(warmup)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    warmup_s = time.perf_counter() - t0
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        epoch(steps)
        end.record()
        torch.cuda.synchronize(device)
        elapsed = start.elapsed_time(end) / 1e3
        peak_mem = torch.cuda.max_memory_allocated(device) / 2 ** 30
    else:
        t0 = time.perf_counter()
        epoch(steps)
        elapsed = time.perf_counter() - t0
        peak_mem = float("nan")
    syncs = ""
    if count_syncs and cuda:
        # the epoch's closing log point syncs by design (.item()): the steps' own syncs are the difference
        # between an epoch of 6 steps and one of 2
        syncs = (count_host_syncs(lambda: epoch(6)) - count_host_syncs(lambda: epoch(2))) / 4
    del epoch
    if cuda:
        torch.cuda.empty_cache()
    return {"images_per_s": batch * steps / elapsed, "step_s": elapsed / steps, "warmup_s": warmup_s,
            "peak_mem_gib": peak_mem, "host_syncs_per_step": syncs}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="micro shapes on the CPU in fp32, 2 steps (for tests)")
    p.add_argument("--archs", nargs="+", choices=sorted(ARCHS), default=None)
    p.add_argument("--batch", type=int, default=None, help="images per step (default per arch)")
    p.add_argument("--modes", nargs="+", choices=["eager", "compile", "official"], default=None,
                   help="default: official eager compile on CUDA, official eager on --cpu-smoke")
    p.add_argument("--no-table2", action="store_true", help="skip the ViT-L/16 Table 2 rows (eager)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5 on CUDA, 1 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on CUDA, 2 on CPU)")
    p.add_argument("--budget-s", type=float, default=480.0, help="skip configurations once this much time is used")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="CSV (default results/bench/gpu_bench.csv; CPU smoke: none)")
    args = p.parse_args(argv)

    begin = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        p.error("no CUDA device is visible; use --cpu-smoke for the CPU path")
    device = torch.device("cuda" if cuda else "cpu")
    threads = set_threads(args.threads)
    dtype = torch.bfloat16 if cuda else None
    archs = args.archs or (["vitb", "vitl"] if cuda else ["micro28", "micro32"])
    modes = args.modes or (["official", "eager", "compile"] if cuda else ["official", "eager"])
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    steps = args.steps if args.steps is not None else (20 if cuda else 2)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    info = machine_info(threads)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU {info['cpu']} ({threads} threads)"
    peak = matmul_peak(8192 if cuda else 512, 10 if cuda else 3, torch.bfloat16 if cuda else torch.float32, device)
    print(f"# {name}; torch {torch.__version__}; {'bf16' if cuda else 'fp32'} matmul peak "
          f"{peak['flops_per_s'] / 1e12:.3f} TFLOP/s (best of {peak['repeats']}, {peak['size']}^3); load {info['load1']}",
          flush=True)

    # Per arch in the order given: the modes, with the Table 2 rows (eager: seconds each) before a compiled
    # row (a minute or two of compiling), so that a tight budget drops compiled rows first. Table 2 rows
    # are ViT-L's on CUDA and the first arch's on the CPU smoke.
    table2_arch = None if args.no_table2 else ("vitl" if cuda else archs[0])
    configs = []
    for arch_key in archs:
        configs += [(arch_key, DEFAULT_VARIANT, m) for m in modes if m != "compile"]
        if arch_key == table2_arch:
            configs += [(arch_key, v, "eager") for v in VARIANTS if v != DEFAULT_VARIANT]
        configs += [(arch_key, DEFAULT_VARIANT, m) for m in modes if m == "compile"]
    paper = paper_speedups()
    rows, skipped = [], []
    for arch_key, variant, mode in configs:
        used = time.perf_counter() - begin
        if used > args.budget_s:
            skipped.append(f"{arch_key} {variant} {mode}")
            continue
        batch = args.batch or DEFAULT_BATCH[arch_key]
        arch = ARCHS[arch_key]
        try:
            if mode == "official":
                r = measure_official(arch, VARIANTS[variant], batch, device, warmup, steps)
            else:
                r = measure(arch, variant, batch, mode == "compile", device, dtype, warmup, steps, count_syncs=cuda)
        except torch.OutOfMemoryError:
            print(f"{arch_key} {variant} {mode} batch {batch}: out of memory, skipped", flush=True)
            torch.cuda.empty_cache()
            continue
        flops = flops_per_image(arch, variant, 0.75)
        precision = ("fp16" if mode == "official" else "bf16") if cuda else "fp32"
        row = {"device": name, "arch": arch, "variant": variant, "mode": mode, "precision": precision,
               "batch": batch, "warmup_steps": warmup, "timed_steps": steps,
               "images_per_s": round(r["images_per_s"], 2), "step_s": round(r["step_s"], 5),
               "warmup_s": round(r["warmup_s"], 2), "train_gflops_per_image": round(flops / 1e9, 4),
               "achieved_tflops_per_s": round(flops * r["images_per_s"] / 1e12, 4),
               "peak_tflops_per_s": round(peak["flops_per_s"] / 1e12, 4),
               "mfu": round(flops * r["images_per_s"] / peak["flops_per_s"], 4),
               "peak_mem_gib": round(r["peak_mem_gib"], 3), "host_syncs_per_step": r["host_syncs_per_step"],
               "speedup_vs_w_mask": "", "paper_speedup_vitl": paper.get(variant, ""), "vs_official": "",
               "torch": torch.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds")}
        rows.append(row)
        print(f"{arch_key:7s} {variant:17s} {mode:7s} batch {batch:4d}: {row['images_per_s']:10.1f} img/s  "
              f"step {row['step_s'] * 1e3:8.1f} ms  MFU {row['mfu']:.3f}  mem {row['peak_mem_gib']:.2f} GiB  "
              f"warmup {row['warmup_s']:.0f} s  host syncs/step {row['host_syncs_per_step']}", flush=True)
    for row in rows:  # Table 2 speedups where the reference row was measured (same arch, eager)
        ref = [r for r in rows if r["arch"] == row["arch"] and r["variant"] == REFERENCE and r["mode"] == "eager"]
        if ref and row["mode"] == "eager":
            row["speedup_vs_w_mask"] = round(row["images_per_s"] / ref[0]["images_per_s"], 3)
            print(f"  {row['arch']} {row['variant']}: {row['speedup_vs_w_mask']:.2f}x vs encoder w/ mask tokens "
                  f"(paper ViT-L: {row['paper_speedup_vitl']}x)")
    for row in rows:  # ours against the official recipe on the same card, arch, variant and batch
        ref = [r for r in rows if r["arch"] == row["arch"] and r["variant"] == row["variant"]
               and r["batch"] == row["batch"] and r["mode"] == "official"]
        if ref and row["mode"] != "official":
            row["vs_official"] = round(row["images_per_s"] / ref[0]["images_per_s"], 3)
            print(f"  {row['arch']} {row['variant']} {row['mode']}: {row['vs_official']:.2f}x the official recipe's images/s")
    if skipped:
        print("skipped (time budget): " + "; ".join(skipped))
    out = args.out or (None if args.cpu_smoke else str(REPO_ROOT / "results" / "bench" / "gpu_bench.csv"))
    if out and rows:
        print(f"wrote {write_csv(rows, out)}")
    print(f"total {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
