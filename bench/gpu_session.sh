#!/usr/bin/env bash
# Everything issue #18 asks of a GPU machine, in one call of about 8 minutes (the device tool lends one
# H200 for ~15 minutes, start-up included: one call, with time left to rerun it once).
#
#   bash bench/gpu_session.sh --out DIR [--data-root D] [--total-s 520]   # on the GPU machine: DIR=$OUT
#   bash bench/gpu_session.sh --cpu-smoke --out DIR       # here, on the CPU: the same steps at micro size
#
# From this checkout (Fashion-MNIST travels as an ignored folder, the machine has no network):
#   mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/      # .data/ is git-ignored
#   device run: command "bash bench/gpu_session.sh --out $OUT --data-root .data/fashion-mnist",
#               carry [".data"], timeout_s 580
#
# Phase 1, alone on the GPU (timed): bench.gpu_bench (ViT-L/16 then ViT-B/16: the official recipe, ours
#   eager, ours compiled; the ViT-L Table 2 rows), then a torch.profiler table of the ViT-L step.
# Phase 2, concurrently (none of it is timed):
#   a. pytest -m gpu (tests/test_gpu.py: sync-free steps in bf16 and fp16, compile, CUDA resume, CLI on
#      device auto, the benchmark's official rows);
#   b. the tiny preset through the CLI on device auto (bf16): a reference pretraining, beside it a
#      pretraining stopped by SIGTERM once it has logged a few points and run again to resume, then
#      scripts/compare_runs.py on the two, then finetune and linprobe from the resumed one.
# Every step has a time limit, and all of them end within --total-s (default 520 s).
# Writes at most 5 files into DIR (the device tool returns at most 8): session.log (every phase's output
# and exit code), gpu_bench.csv, profile_vitl.txt, cli_runs.json (the CLI runs' metrics.json and the
# resume comparison), pytest_gpu.xml. Run folders stay in a temporary folder.
# Needs python3 with torch, timm, pytest, pyyaml, psutil, tqdm (no mlflow: tracking is off; no snakemake).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="" DATA_ROOT="" SMOKE=0 TOTAL_S=520
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --data-root) DATA_ROOT="$2"; shift 2 ;;
        --cpu-smoke) SMOKE=1; shift ;;
        --total-s) TOTAL_S="$2"; shift 2 ;;
        *) echo "error: unknown argument '$1': allowed --out DIR, --data-root DIR, --total-s SECONDS, --cpu-smoke" >&2
           exit 2 ;;
    esac
done
[ -n "$OUT" ] || { echo "error: --out DIR is required (on the device machine: --out \$OUT)" >&2; exit 2; }
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
WORK="$(mktemp -d)"
LOG="$OUT/session.log"
: > "$LOG"
BEGIN=$(date +%s)

say() { echo "[$(( $(date +%s) - BEGIN ))s] $*" | tee -a "$LOG"; }
# a step's time limit: CAP seconds, or what is left of the whole session's TOTAL_S less 15 s, if less
left() { local rest=$(( BEGIN + TOTAL_S - 15 - $(date +%s) )); [ "$rest" -lt "$1" ] && echo $(( rest > 1 ? rest : 1 )) || echo "$1"; }

if [ "$SMOKE" = 1 ]; then
    PRESET=workflow/presets/smoke.yaml
    CLI_EXTRA=(run.device=cpu run.threads=1 run.log_every_steps=2 run.checkpoint_every_steps=3)
    STOP_AFTER_RECORDS=1
    BENCH=(--cpu-smoke --threads 1 --steps 1)
    PROFILE_ARCH=mae_vit_micro_patch7_dec64d1b PROFILE_BATCH=16
else
    PRESET=workflow/presets/tiny.yaml
    [ -n "$DATA_ROOT" ] || DATA_ROOT=/usr/share/datasets/fashion-mnist
    CLI_EXTRA=(data.root="$(cd "$DATA_ROOT" && pwd)")   # in memory, augmented on the device as whole batches
    STOP_AFTER_RECORDS=8   # tiny logs every 20 steps: stop after ~160 of its ~940 pretraining steps
    BENCH=(--archs vitl vitb --budget-s 220)
    PROFILE_ARCH=mae_vit_large_patch16_dec512d8b PROFILE_BATCH=128
fi
CLI=("$PY" -m mae.cli)
COMMON=(--config "$PRESET" tracking.enabled=false "${CLI_EXTRA[@]}")

GPU_NAME="$(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null \
    || echo 'no nvidia-smi')"
VERSIONS="$("$PY" -c 'import torch, timm; print("torch", torch.__version__, "cuda", torch.version.cuda,
                                              "timm", timm.__version__, "gpu", torch.cuda.is_available())' 2>&1)"
say "machine: $(uname -n); $GPU_NAME; $VERSIONS"

# ---- phase 1: alone on the GPU, timed
say "---- bench.gpu_bench ${BENCH[*]}"
timeout --signal=INT --kill-after=20 "$(left 300)" "$PY" -m bench.gpu_bench "${BENCH[@]}" --out "$OUT/gpu_bench.csv" 2>&1 | tee -a "$LOG"
say "bench exit ${PIPESTATUS[0]}"
say "---- torch.profiler: $PROFILE_ARCH batch $PROFILE_BATCH"
timeout --kill-after=10 "$(left 90)" "$PY" -m bench.profile_step --arch "$PROFILE_ARCH" --batch "$PROFILE_BATCH" \
    $([ "$SMOKE" = 1 ] && echo --cpu-smoke) > "$OUT/profile_vitl.txt" 2>&1
say "profile exit $?"; head -n 40 "$OUT/profile_vitl.txt" | tee -a "$LOG"

# ---- phase 2a: the GPU tests (background)
(
    timeout --kill-after=10 "$(left 300)" "$PY" -m pytest -m gpu -p no:cacheprovider -rs -q -s tests/test_gpu.py \
        --junitxml="$OUT/pytest_gpu.xml" > "$WORK/pytest.log" 2>&1
    echo "exit $?" >> "$WORK/pytest.log"
) &
PYTEST_PID=$!

# ---- phase 2b: the tiny preset through the CLI, SIGTERM and resume
cli_stage() {  # cli_stage NAME STAGE ARGS...: one `mae` run into $WORK/NAME, its output in $WORK/NAME.log
    local name="$1" stage="$2"; shift 2
    timeout --kill-after=10 "$(left 400)" "${CLI[@]}" "$stage" --out "$WORK/$name" "${COMMON[@]}" "$@" > "$WORK/$name.log" 2>&1
}
cli_stage pretrain_reference pretrain &
REFERENCE_PID=$!
timeout --kill-after=10 "$(left 400)" "${CLI[@]}" pretrain --out "$WORK/pretrain" "${COMMON[@]}" \
    > "$WORK/pretrain.stopped.log" 2>&1 &
STOPPED_PID=$!
while kill -0 "$STOPPED_PID" 2>/dev/null; do
    records=0
    [ -f "$WORK/pretrain/metrics.jsonl" ] && records=$(wc -l < "$WORK/pretrain/metrics.jsonl")
    if [ "$records" -ge "$STOP_AFTER_RECORDS" ]; then
        kill -TERM "$STOPPED_PID"
        say "cli: SIGTERM to the pretraining after $records logged points"
        break
    fi
    sleep 0.2
done
wait "$STOPPED_PID"; say "cli: stopped pretraining exit $? (75 = checkpointed, to resume)"
cli_stage pretrain pretrain; say "cli: resumed pretraining exit $?"
wait "$REFERENCE_PID"; say "cli: reference pretraining exit $?"
"$PY" scripts/compare_runs.py "$WORK/pretrain_reference" "$WORK/pretrain" > "$WORK/compare.txt" 2>&1
say "cli: resumed vs uninterrupted (scripts/compare_runs.py, exit $?):"; tee -a "$LOG" < "$WORK/compare.txt"
cli_stage finetune finetune finetune.checkpoint="$WORK/pretrain/model.pth"; say "cli: finetune exit $?"
cli_stage linprobe linprobe linprobe.checkpoint="$WORK/pretrain/model.pth"; say "cli: linprobe exit $?"
"$PY" - "$WORK" "$OUT/cli_runs.json" <<'EOF'
import json, pathlib, sys
work, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
runs = {d.name: json.loads((d / "metrics.json").read_text()) for d in sorted(work.iterdir())
        if (d / "metrics.json").is_file()}
runs["compare_runs"] = (work / "compare.txt").read_text()
out.write_text(json.dumps(runs, indent=1))
print(f"wrote {out}: {', '.join(k for k in runs if k != 'compare_runs')}")
EOF
for name in pretrain_reference pretrain.stopped pretrain finetune linprobe; do
    say "---- cli log $name (last 15 lines)"; tail -n 15 "$WORK/$name.log" 2>/dev/null | tee -a "$LOG"
done

wait "$PYTEST_PID"
say "---- pytest -m gpu"; tee -a "$LOG" < "$WORK/pytest.log"

rm -rf "$WORK"
say "done in $(( $(date +%s) - BEGIN )) s; files: $(cd "$OUT" && ls | tr '\n' ' ')"
