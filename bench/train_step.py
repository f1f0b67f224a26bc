"""MAE pretraining step throughput: a measured counterpart of the paper's Table 2 (wall-clock speedups).

    python -m bench.train_step --shape micro28 --batch 256                 # CPU preset shapes: seconds
    python -m bench.train_step --shape micro32 --batch 64 256 --rounds 3
    python -m bench.train_step --shape vitl --batch 4 16 --steps 2 --append  # ViT-L/16 224: minutes per step on a CPU

For each batch size and each Table 2 row (encoder w/ mask tokens + 8-block decoder = the reference;
encoder w/o mask tokens + 8 blocks; w/o + 1 block; decoder width = the architecture's), a fresh
worker process builds the model and the project's AdamW (mae.optim) and runs `warmup + steps`
optimizer steps through `mae.engine.train_one_epoch` on a fixed synthetic batch (the input pipeline
is bench/data_throughput.py's job), with the per-step random masks of training (`mae.recipes.pretrain_loss`). Steps are timed
between consecutive batch requests of the engine, so a step includes forward, backward, optimizer,
scheduler and the engine's bookkeeping. `--rounds` repeats all workers in turn (interleaved) so that
load changes on a shared machine hit every row alike; medians and the min-max spread are reported.

Also per row: training FLOPs per image (mae.flops, forward + backward, multiply-add = 2), achieved
FLOP/s, and model FLOP utilisation (MFU) against a large fp32 `torch.mm` peak measured in the same
worker, same thread count, before and after its timed steps (bench.matmul_peak). Each time is taken
twice: wall clock, and this process's CPU time / threads (`*_cpu` columns: what idle cores would give,
robust to other jobs on the machine). Memory: the worker's peak resident set size (getrusage
ru_maxrss, whole process: interpreter + model + gradients + AdamW state + activations), next to the
RSS after building model and optimizer (psutil); tracemalloc does not see torch's allocations.

Speedups are relative to the reference row at the same batch, printed beside the FLOP ratio and the
paper's ViT-L speedups read from paper/table2_wallclock.csv. Writes results/bench/train_step.csv.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bench.common import REPO_ROOT, Timer, machine_info, median, peak_rss_mib, rss_mib, set_threads, write_csv
from bench.matmul_peak import matmul_peak

SHAPES = {
    "vitl": "mae_vit_large_patch16_dec512d8b",
    "vitb": "mae_vit_base_patch16_dec512d8b",
    "micro28": "mae_vit_micro_patch7_dec64d1b",
    "micro32": "mae_vit_micro_patch4_dec64d1b",
}
# The rows of Table 2, in the paper's order; the first is the speedup reference (the gray row).
VARIANTS = {
    "enc_w_mask_dec8": dict(encoder_mask_tokens=True, decoder_depth=8),
    "enc_wo_mask_dec8": dict(encoder_mask_tokens=False, decoder_depth=8),
    "enc_wo_mask_dec1": dict(encoder_mask_tokens=False, decoder_depth=1),
}
REFERENCE = "enc_w_mask_dec8"
PAPER_CSV = REPO_ROOT / "paper" / "table2_wallclock.csv"
CSV_KEY = ("shape", "variant", "batch", "threads", "compile", "adamw")
MEMORY_METHOD = "getrusage ru_maxrss of the worker process (RSS high-water mark)"


def pretrain_loss_fn(num_patches: int, batch: int):
    """The engine's loss_fn for MAE pretraining: `mae.recipes.pretrain_loss` (training's per-step random
    masks, seed 0) on one process, one micro batch per step."""
    from mae.recipes import pretrain_loss
    return partial(pretrain_loss, seed=0, num_patches=num_patches, batch_size=batch, micro_batch_size=batch)


def paper_speedups(path: Path = PAPER_CSV, encoder: str = "ViT-L") -> dict[str, float]:
    """Table 2 speedups of `encoder` keyed by our variant names (the reference row is 1.0)."""
    out: dict[str, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["encoder"] != encoder:
                continue
            name = (f"enc_{'w' if row['encoder_has_mask_tokens'] == 'true' else 'wo'}_mask_dec{row['decoder_depth']}")
            out[name] = 1.0 if row["is_reference_row"] == "true" else float(row["speedup"].rstrip("x"))
    return out


def flops_per_image(arch: str, variant: str, mask_ratio: float) -> float:
    """Training FLOPs per image of one variant, counted on the meta device (no compute)."""
    from mae.flops import training_flops_per_image
    from mae.model import create_mae_model
    with torch.device("meta"):
        model = create_mae_model(arch, mask_ratio=mask_ratio, **VARIANTS[variant])
    return training_flops_per_image(model)


# ---- worker: one (variant, batch) in a fresh process ---------------------------------------------

class _StampedBatches:
    """The same synthetic batch forever; records (wall, cpu) when the engine asks for each one."""

    def __init__(self, images: torch.Tensor):
        self.images, self.targets = images, torch.zeros(images.shape[0], dtype=torch.long)
        self.stamps: list[tuple[float, float]] = []

    def __iter__(self):
        return self

    def __next__(self):
        self.stamps.append((time.perf_counter(), time.process_time()))
        return self.images, self.targets


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Build, warm up, time `spec['steps']` optimizer steps; return per-step times, peaks and memory."""
    from mae.engine import EpochContext, LoopState, train_one_epoch
    from mae.model import create_mae_model
    from mae.optim import absolute_lr, build_pretrain_optimizer, build_scheduler, param_groups_weight_decay

    threads = set_threads(spec["threads"])
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = create_mae_model(spec["arch"], mask_ratio=spec["mask_ratio"], **VARIANTS[spec["variant"]]).to(device)
    batch = spec["batch"]
    lr = absolute_lr(1.5e-4, batch)
    if spec["adamw"] == "fused":  # same groups and hyper-parameters, torch's fused CPU kernel
        optimizer = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=lr, betas=(0.9, 0.95), fused=True)
    else:
        optimizer = build_pretrain_optimizer(model, lr, 0.05, (0.9, 0.95))
    total_steps = spec["warmup"] + spec["steps"]
    scheduler = build_scheduler(optimizer, 1, 0.5, total_steps)
    train_model = torch.compile(model) if spec["compile"] else model
    rss_built = rss_mib()
    loss_fn = pretrain_loss_fn(model.num_patches, batch)

    images = torch.randn(batch, model.in_chans, *model.patch_embed.img_size, device=device)
    batches = _StampedBatches(images)
    ctx = EpochContext(steps_per_epoch=total_steps, accum_steps=1, images_per_step=batch, device=device,
                       log_every_steps=10 ** 9, checkpoint_every_steps=0)
    load_start = os.getloadavg()[0]
    peak_before = matmul_peak(spec["peak_size"], spec["peak_repeats"])
    model.train()
    with Timer() as total:
        train_one_epoch(train_model, loss_fn, batches, optimizer, scheduler, LoopState(), ctx)
    end = (time.perf_counter(), time.process_time())
    peak_after = matmul_peak(spec["peak_size"], spec["peak_repeats"])
    stamps = batches.stamps + [end]
    walls = [b[0] - a[0] for a, b in zip(stamps[:-1], stamps[1:])]
    cpus = [(b[1] - a[1]) / threads for a, b in zip(stamps[:-1], stamps[1:])]
    return {
        "walls": walls[spec["warmup"]:], "cpus": cpus[spec["warmup"]:], "warmup_walls": walls[:spec["warmup"]],
        "threads": threads, "total_wall_s": total.wall_s,
        "peak_flops_per_s": max(peak_before["flops_per_s"], peak_after["flops_per_s"]),
        "peak_flops_per_cpu_s": max(peak_before["flops_per_cpu_s"], peak_after["flops_per_cpu_s"]),
        "rss_built_mib": rss_built, "peak_rss_mib": peak_rss_mib(),
        "load1_start": load_start, "load1_end": os.getloadavg()[0],
    }


def spawn_worker(spec: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """Run `run_worker(spec)` in a fresh interpreter (clean memory high-water mark) and parse its JSON."""
    cmd = [sys.executable, "-m", "bench.train_step", "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec['variant']} batch {spec['batch']} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- parent: rounds of workers, aggregation, table -----------------------------------------------

def summarise(shape: str, arch: str, variant: str, batch: int, results: list[dict[str, Any]], flops: float,
              args: argparse.Namespace) -> dict[str, Any]:
    walls = [w for r in results for w in r["walls"]]
    cpus = [c for r in results for c in r["cpus"]]
    step_s, step_cpu_s = median(walls), median(cpus)
    peak = max(r["peak_flops_per_s"] for r in results)
    peak_cpu = max(r["peak_flops_per_cpu_s"] for r in results)
    ips, ips_cpu = batch / step_s, batch / step_cpu_s
    v = VARIANTS[variant]
    return {
        "shape": shape, "arch": arch, "variant": variant, "encoder_mask_tokens": v["encoder_mask_tokens"],
        "decoder_depth": v["decoder_depth"], "mask_ratio": args.mask_ratio, "batch": batch,
        "threads": results[0]["threads"], "compile": args.compile, "adamw": args.adamw,
        "rounds": len(results), "steps_timed": len(walls),
        "step_s_median": round(step_s, 4), "step_s_min": round(min(walls), 4), "step_s_max": round(max(walls), 4),
        "images_per_s": round(ips, 3), "images_per_s_min": round(batch / max(walls), 3),
        "images_per_s_max": round(batch / min(walls), 3),
        "step_cpu_s_median": round(step_cpu_s, 4), "images_per_s_cpu": round(ips_cpu, 3),
        "train_gflops_per_image": round(flops / 1e9, 4),
        "achieved_gflops_per_s": round(flops * ips / 1e9, 2), "peak_gflops_per_s": round(peak / 1e9, 2),
        "mfu": round(flops * ips / peak, 4),
        "achieved_gflops_per_s_cpu": round(flops * ips_cpu / 1e9, 2),
        "peak_gflops_per_s_cpu": round(peak_cpu / 1e9, 2), "mfu_cpu": round(flops * ips_cpu / peak_cpu, 4),
        "speedup": "", "speedup_cpu": "", "speedup_peak_normalised": "", "speedup_paired_min": "", "speedup_paired_max": "",
        "flop_ratio": "", "paper_speedup_vitl": "",
        "rss_built_mib": round(max(r["rss_built_mib"] for r in results), 1),
        "peak_rss_mib": round(max(r["peak_rss_mib"] for r in results), 1), "memory_method": MEMORY_METHOD,
        "load1_min": round(min(min(r["load1_start"], r["load1_end"]) for r in results), 2),
        "load1_max": round(max(max(r["load1_start"], r["load1_end"]) for r in results), 2),
        "warmup_steps": args.warmup,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="micro28")
    p.add_argument("--batch", type=int, nargs="+", default=[256])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per worker")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocation, kernel selection, compile)")
    p.add_argument("--rounds", type=int, default=1, help="times every worker is run, interleaved")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (as run.compile=true)")
    p.add_argument("--adamw", choices=["project", "fused"], default="project",
                   help="project = mae.optim.build_pretrain_optimizer (torch AdamW defaults); fused = fused=True")
    p.add_argument("--peak-size", type=int, default=2048)
    p.add_argument("--peak-repeats", type=int, default=4)
    p.add_argument("--worker-timeout", type=float, default=None, help="seconds per worker process")
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "bench" / "train_step.csv"))
    p.add_argument("--append", action="store_true", help="keep other rows of --out (same configuration = replaced)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return

    arch = SHAPES[args.shape]
    threads = args.threads or os.cpu_count() or 1
    info = machine_info(threads)
    print(f"# {info['cpu']}, {info['cpu_count']} cores, {threads} threads, torch {info['torch']}, "
          f"load average {info['load1']} / {info['load5']} / {info['load15']}", flush=True)
    from timm.layers import use_fused_attn
    print(f"# timm fused attention (F.scaled_dot_product_attention): {use_fused_attn()}", flush=True)
    flops = {v: flops_per_image(arch, v, args.mask_ratio) for v in args.variants}
    paper = paper_speedups()
    spec0 = dict(arch=arch, threads=args.threads, mask_ratio=args.mask_ratio, steps=args.steps, warmup=args.warmup,
                 compile=args.compile, adamw=args.adamw, peak_size=args.peak_size, peak_repeats=args.peak_repeats)
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for rnd in range(args.rounds):
        for batch in args.batch:
            for variant in args.variants:
                r = spawn_worker({**spec0, "variant": variant, "batch": batch}, args.worker_timeout)
                results.setdefault((variant, batch), []).append(r)
                print(f"  round {rnd} batch {batch} {variant}: median step {median(r['walls']):.3f} s wall, "
                      f"{median(r['cpus']):.3f} s cpu/thread, load {r['load1_start']:.1f}->{r['load1_end']:.1f}",
                      flush=True)

    rows = []
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    for batch in args.batch:
        batch_rows = {v: summarise(args.shape, arch, v, batch, results[(v, batch)], flops[v], args) for v in args.variants}
        ref = batch_rows.get(REFERENCE)
        for v, row in batch_rows.items():
            row["paper_speedup_vitl"] = paper.get(v, "")
            if ref is not None:
                row["speedup"] = round(ref["step_s_median"] / row["step_s_median"], 3)
                row["speedup_cpu"] = round(ref["step_cpu_s_median"] / row["step_cpu_s_median"], 3)
                row["flop_ratio"] = round(flops[REFERENCE] / flops[v], 3)
                # wall speedup at equal machine share: each worker's wall time scaled by its own matmul peak
                row["speedup_peak_normalised"] = round(row["speedup"] * ref["peak_gflops_per_s"] / row["peak_gflops_per_s"], 3)
                # per round: reference and row measured back to back
                paired = [median(a["walls"]) / median(b["walls"])
                          for a, b in zip(results[(REFERENCE, batch)], results[(v, batch)])]
                row["speedup_paired_min"], row["speedup_paired_max"] = round(min(paired), 3), round(max(paired), 3)
            row.update({k: info[k] for k in ("cpu", "cpu_kernels", "cpu_count", "host", "torch")}, date=stamp)
            rows.append(row)

    hdr = (f"{'batch':>5} {'variant':17} {'img/s':>9} {'(min-max)':>19} {'img/s cpu':>9} {'speedup':>7} "
           f"{'cpu':>5} {'FLOPs':>5} {'paper':>5} {'GFLOP/img':>9} {'MFU':>5} {'MFUcpu':>6} {'peakRSS MiB':>11}")
    print(f"\n{args.shape} ({arch}), mask {args.mask_ratio}, {threads} threads, compile={args.compile}, "
          f"adamw={args.adamw}; speedups vs {REFERENCE} at the same batch; paper = ViT-L Table 2")
    print(hdr)
    for r in rows:
        fmt = lambda x, spec: format(x, spec) if x != "" else "-"  # noqa: E731
        print(f"{r['batch']:>5} {r['variant']:17} {r['images_per_s']:9.2f} "
              f"{'(' + format(r['images_per_s_min'], '.2f') + '-' + format(r['images_per_s_max'], '.2f') + ')':>19} "
              f"{r['images_per_s_cpu']:9.2f} {fmt(r['speedup'], '6.2f')}x {fmt(r['speedup_cpu'], '5.2f')} "
              f"{fmt(r['flop_ratio'], '5.2f')} {fmt(r['paper_speedup_vitl'], '5.1f')} {r['train_gflops_per_image']:9.3f} "
              f"{r['mfu']:5.2f} {r['mfu_cpu']:6.2f} {r['peak_rss_mib']:11.0f}")
    print(f"matmul peak (same workers, best): {max(r['peak_gflops_per_s'] for r in rows):.1f} GFLOP/s wall, "
          f"{max(r['peak_gflops_per_s_cpu'] for r in rows):.1f} GFLOP/s per idle-core equivalent; "
          f"load average now {os.getloadavg()[0]:.2f}")
    out = write_csv(rows, args.out, key=CSV_KEY, append=args.append)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
