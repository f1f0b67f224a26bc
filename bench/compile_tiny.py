"""torch.compile on the CPU for the tiny preset's shapes: eager vs compiled pretraining and fine-tuning steps.

    python -m bench.compile_tiny [--steps 30] [--warmup 5] [--threads 1]

Each variant runs in a fresh process (so a compile never benefits from the one before, except through
the on-disk inductor cache, which is the point of the `warm cache` row): eager; compiled with an
empty inductor cache (`TORCHINDUCTOR_CACHE_DIR` a new folder); compiled again with that folder, now
warm. A pretraining step is `mae.recipes.pretrain_loss` (per-step random masks) + AdamW on the tiny
preset's MAE (micro ViT, 28x28x1, batch 256); a fine-tuning step is the classifier ViT (avg pool,
label-smoothed cross-entropy) + AdamW at the preset's fine-tuning batch (64). Reported: seconds to the
first finished step (the compile), images/s after `--warmup` steps. Prints a table, writes
results/bench/compile_tiny.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

from bench.common import REPO_ROOT, machine_info

CSV = REPO_ROOT / "results" / "bench" / "compile_tiny.csv"


def worker(stage: str, compiled: bool, steps: int, warmup: int, threads: int) -> dict:
    import torch

    from mae.config import load_config
    from mae.downstream import ENCODER_KEYS, create_vit
    from mae.optim import build_pretrain_optimizer
    from mae.recipes import build_mae, pretrain_loss
    torch.set_num_threads(threads)
    cfg = load_config(REPO_ROOT / "workflow" / "presets" / "tiny.yaml").resolved()
    torch.manual_seed(0)
    if stage == "pretrain":
        model, batch = build_mae(cfg.model), cfg.pretrain.batch_size
    else:
        model = create_vit(cfg.model.arch, 10, global_pool=cfg.finetune.global_pool,
                           **{k: getattr(cfg.model, k) for k in ENCODER_KEYS})
        batch = cfg.finetune.batch_size
    optimizer = build_pretrain_optimizer(model, 1e-3)
    step_model = torch.compile(model) if compiled else model
    images = torch.randn(batch, 1, 28, 28)
    labels = torch.randint(0, 10, (batch,))
    started = time.perf_counter()
    first_step_s, timed_from = None, None
    for step in range(steps):
        if step == warmup:
            timed_from = time.perf_counter()
        if stage == "pretrain":
            loss = pretrain_loss(step_model, images, None, step, 0, seed=0, num_patches=model.num_patches,
                                 batch_size=batch, micro_batch_size=batch)
        else:
            loss = torch.nn.functional.cross_entropy(step_model(images), labels, label_smoothing=cfg.finetune.smoothing)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 0:
            first_step_s = time.perf_counter() - started
    timed = time.perf_counter() - timed_from
    return {"first_step_s": first_step_s, "images_per_s": (steps - warmup) * batch / timed}


def _spawn(stage: str, compiled: bool, args, cache_dir: str) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir, "PYTHONPATH": str(REPO_ROOT)}
    spec = json.dumps({"stage": stage, "compiled": compiled, "steps": args.steps, "warmup": args.warmup, "threads": args.threads})
    out = subprocess.run([sys.executable, "-m", "bench.compile_tiny", "--worker", spec], env=env, cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"worker failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(**json.loads(args.worker))))
        return
    rows = []
    for stage in ("pretrain", "finetune"):
        with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
            stage_rows = [{"stage": stage, "variant": name, **_spawn(stage, compiled, args, cache)} for name, compiled in
                          (("eager", False), ("compiled, cold cache", True), ("compiled, warm cache", True))]
        for row in stage_rows:
            row["speedup"] = row["images_per_s"] / stage_rows[0]["images_per_s"]
        rows += stage_rows
    info = machine_info(args.threads)
    print(f"tiny training steps (28x28x1, micro ViT; pretrain batch 256, finetune batch 64), {args.threads} "
          f"thread(s), {info['cpu']}, load {info['load1']}")
    print(f"{'stage':9} {'variant':24} {'first step s':>12} {'images/s':>10} {'vs eager':>9}")
    for row in rows:
        print(f"{row['stage']:9} {row['variant']:24} {row['first_step_s']:12.1f} {row['images_per_s']:10.0f} "
              f"{row['speedup']:8.2f}x")
    CSV.parent.mkdir(parents=True, exist_ok=True)
    keys = ["stage", "variant", "first_step_s", "images_per_s", "speedup", "steps", "warmup", "threads", "cpu", "load1", "torch"]
    with open(CSV, "w", newline="") as f:
        writer = csv.writer(f)  # quotes "compiled, cold cache"
        writer.writerow(keys)
        for row in rows:
            row.update(steps=args.steps, warmup=args.warmup, **{k: info[k] for k in ("threads", "cpu", "cpu_kernels", "load1", "torch")})
            writer.writerow([f"{row[k]:.3f}" if isinstance(row[k], float) else row[k] for k in keys])
    print(f"wrote {CSV}")


if __name__ == "__main__":
    main()
