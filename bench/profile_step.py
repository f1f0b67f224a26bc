"""Where one MAE pretraining step spends its time: torch.profiler over a few steps of our default step
(bench.gpu_bench.training_epochs: bf16 autocast on CUDA, eager), the kernels that take the most device
time, and that time split into matrix products, attention, optimizer and the rest. It is what says why
a step misses its MFU target (issue #18).

    python -m bench.profile_step --arch mae_vit_large_patch16_dec512d8b --batch 128    # on a GPU
    python -m bench.profile_step --cpu-smoke                                          # micro, CPU
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from bench.gpu_bench import DEFAULT_VARIANT, training_epochs

# kernel-name patterns of each share, tried in this order (cuBLAS / CUTLASS / oneDNN matrix products,
# the fused attention kernels, the fused AdamW)
SHARES = [
    ("attention", re.compile(r"flash|fmha|attention|sdpa|efficient_attention", re.I)),
    ("matmul", re.compile(r"gemm|matmul|cutlass|sm90_xmma|nvjet|addmm|\bmm\b|bmm|linear", re.I)),
    ("optimizer", re.compile(r"adam|multi_tensor|foreach", re.I)),
]


def share_of(name: str) -> str:
    return next((share for share, pattern in SHARES if pattern.search(name)), "other")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="mae_vit_large_patch16_dec512d8b")
    p.add_argument("--variant", default=DEFAULT_VARIANT)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="profiled steps (after 3 warm-up steps)")
    p.add_argument("--rows", type=int, default=25, help="kernels listed")
    p.add_argument("--cpu-smoke", action="store_true", help="on the CPU in fp32 (the micro arch, batch 16)")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        p.error("no CUDA device is visible; use --cpu-smoke for the CPU path")
    if args.cpu_smoke:
        args.arch, args.batch, args.steps = "mae_vit_micro_patch7_dec64d1b", 16, 2
    device = torch.device("cuda" if cuda else "cpu")
    epoch = training_epochs(args.arch, args.variant, args.batch, False, device, torch.bfloat16 if cuda else None)
    epoch(3)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        epoch(args.steps)
    if cuda:
        torch.cuda.synchronize()
    events = prof.key_averages()
    device_time = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(f"# {args.arch} {args.variant}, batch {args.batch}, {args.steps} steps, "
          f"{'bf16 on ' + torch.cuda.get_device_name(device) if cuda else 'fp32 on the CPU'}, torch {torch.__version__}")
    kernels = [e for e in events if getattr(e, device_time, 0) > 0 and (not cuda or e.device_type.name == "CUDA")]
    total = sum(getattr(e, device_time) for e in kernels)
    shares: dict[str, float] = defaultdict(float)
    for e in kernels:
        shares[share_of(e.key)] += getattr(e, device_time)
    per_step_ms = total / args.steps / 1e3
    print(f"# {'device' if cuda else 'CPU'} time per step {per_step_ms:.2f} ms over {len(kernels)} distinct "
          f"{'kernels' if cuda else 'ops'}; shares: "
          + ", ".join(f"{k} {100 * v / max(total, 1e-9):.1f}%" for k, v in sorted(shares.items(), key=lambda kv: -kv[1])))
    print(f"# top {args.rows} by {device_time} (us, over all profiled steps):")
    for e in sorted(kernels, key=lambda e: -getattr(e, device_time))[:args.rows]:
        t = getattr(e, device_time)
        print(f"{t:12.0f} {100 * t / max(total, 1e-9):5.1f}% {e.count:6d}x  {share_of(e.key):9s} {e.key[:110]}")


if __name__ == "__main__":
    main()
