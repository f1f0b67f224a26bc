#!/usr/bin/env bash
# MAE pretraining step benchmark on one CUDA GPU: ViT-B/16 and ViT-L/16, bf16, eager and torch.compile,
# images/s and MFU against a measured bf16 matmul peak; ViT-L Table 2 rows in eager mode.
# Bounded: 5 warm-up + 20 timed steps per configuration, a 480 s budget inside, a 600 s hard limit.
#   bash bench/gpu.sh                      # writes results/bench/gpu_bench.csv
#   bash bench/gpu.sh --cpu-smoke          # no GPU: tiny shapes on the CPU (what tests/test_bench.py runs)
#   bash bench/gpu.sh --archs vitl --batch 256
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || true
exec timeout --signal=INT --kill-after=20 600 "$PYTHON" -m bench.gpu_bench "$@"
