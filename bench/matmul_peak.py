"""Measured matmul peak: the best FLOP/s of a large square `torch.mm` on this machine, right now.

    python -m bench.matmul_peak                       # fp32 on CPU, one thread per core
    python -m bench.matmul_peak --threads 1 --size 2048 --repeats 8
    python -m bench.matmul_peak --device cuda --dtype bf16 --size 8192

The other benchmarks call `matmul_peak()` in the same process, with the same thread count, so a
model FLOP utilisation is always relative to a peak measured under the same conditions (load,
threads, clock). A multiply-add counts as 2 FLOPs. On the CPU the result also carries the peak per
CPU-second (`flops_per_cpu_s`, using this process's CPU time divided by the threads), which is what
idle cores would reach; on a shared machine the wall-clock number is lower.
"""

from __future__ import annotations

import argparse

import torch

from bench.common import Timer, machine_info, median, set_threads, write_csv

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_peak(size: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu") -> dict[str, float]:
    """Best and median FLOP/s of `torch.mm` on [size, size] matrices (after one warm-up call).

    Args:
        size: matrix side n (2 n^3 FLOPs per call).
        repeats: timed calls; the best is the peak.
        dtype: element type.
        device: 'cpu' or a CUDA device.

    Returns:
        dict with flops_per_s (best wall), flops_per_s_median, flops_per_cpu_s (best, CPU only: per
        CPU-second of each thread), size, repeats.
    """
    device = torch.device(device)
    threads = torch.get_num_threads()
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    c = torch.empty(size, size, device=device, dtype=dtype)
    flops = 2.0 * size ** 3
    cuda = device.type == "cuda"
    if cuda:
        torch.mm(a, b, out=c)
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        inner = max(1, int(2e12 // flops))  # ~ tens of ms per timed sample on a large GPU
        walls = []
        for _ in range(repeats):
            start.record()
            for _ in range(inner):
                torch.mm(a, b, out=c)
            end.record()
            torch.cuda.synchronize(device)
            walls.append(start.elapsed_time(end) / 1e3 / inner)
        return {"flops_per_s": flops / min(walls), "flops_per_s_median": flops / median(walls),
                "flops_per_cpu_s": float("nan"), "size": size, "repeats": repeats}
    torch.mm(a, b, out=c)
    walls, cpus = [], []
    for _ in range(repeats):
        with Timer() as t:
            torch.mm(a, b, out=c)
        walls.append(t.wall_s)
        cpus.append(t.cpu_s / threads)
    return {"flops_per_s": flops / min(walls), "flops_per_s_median": flops / median(walls),
            "flops_per_cpu_s": flops / max(min(cpus), 1e-9), "size": size, "repeats": repeats}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    p.add_argument("--out", default=None, help="CSV to write (default: print only)")
    args = p.parse_args()
    threads = set_threads(args.threads)
    info = machine_info(threads)
    r = matmul_peak(args.size, args.repeats, DTYPES[args.dtype], args.device)
    print(f"{args.dtype} mm {args.size}^3 on {args.device} ({info['cpu']}, {threads} threads, load "
          f"{info['load1']}): best {r['flops_per_s'] / 1e9:.1f} GFLOP/s, median "
          f"{r['flops_per_s_median'] / 1e9:.1f}, per CPU-second {r['flops_per_cpu_s'] / 1e9:.1f}")
    if args.out:
        write_csv([{**info, "device": args.device, "dtype": args.dtype, **r}], args.out)


if __name__ == "__main__":
    main()
