"""The benchmarks run and write well-formed output (tiny shapes, a couple of steps; no timed assertions)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TRAIN_STEP_COLUMNS = {
    "shape", "arch", "variant", "encoder_mask_tokens", "decoder_depth", "batch", "threads", "compile", "adamw",
    "step_s_median", "step_s_min", "step_s_max", "images_per_s", "images_per_s_cpu", "train_gflops_per_image",
    "achieved_gflops_per_s", "peak_gflops_per_s", "mfu", "mfu_cpu", "speedup", "flop_ratio",
    "paper_speedup_vitl", "peak_rss_mib", "memory_method", "load1_min", "load1_max", "cpu", "cpu_kernels", "date"}
GPU_COLUMNS = {"device", "arch", "variant", "mode", "precision", "batch", "images_per_s", "step_s",
               "train_gflops_per_image", "achieved_tflops_per_s", "peak_tflops_per_s", "mfu", "peak_mem_gib",
               "speedup_vs_w_mask", "paper_speedup_vitl", "vs_official"}


def _run(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _positive(value: str) -> bool:
    x = float(value)
    return math.isfinite(x) and x > 0


def test_paper_speedups_come_from_the_paper_file():
    from bench.train_step import PAPER_CSV, paper_speedups
    with open(PAPER_CSV, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["encoder"] == "ViT-L" and r["speedup"]]
    got = paper_speedups()
    assert got["enc_w_mask_dec8"] == 1.0
    assert sorted(got[k] for k in ("enc_wo_mask_dec8", "enc_wo_mask_dec1")) == sorted(
        float(r["speedup"].rstrip("x")) for r in rows)


def test_matmul_peak_reports_positive_rates():
    import torch

    from bench.matmul_peak import matmul_peak
    r = matmul_peak(size=128, repeats=2, dtype=torch.float32, device="cpu")
    assert _positive(r["flops_per_s"]) and _positive(r["flops_per_s_median"]) and _positive(r["flops_per_cpu_s"])


def test_train_step_micro_writes_csv(tmp_path):
    out = tmp_path / "train_step.csv"
    proc = _run(["bench.train_step", "--shape", "micro28", "--batch", "8", "--steps", "2", "--warmup", "1",
                 "--threads", "1", "--peak-size", "128", "--peak-repeats", "2", "--out", str(out)])
    assert "enc_wo_mask_dec1" in proc.stdout and "matmul peak" in proc.stdout
    rows = _read(out)
    assert [r["variant"] for r in rows] == ["enc_w_mask_dec8", "enc_wo_mask_dec8", "enc_wo_mask_dec1"]
    assert TRAIN_STEP_COLUMNS <= set(rows[0])
    for r in rows:
        for col in ("images_per_s", "images_per_s_cpu", "train_gflops_per_image", "mfu", "peak_rss_mib",
                    "speedup", "flop_ratio", "paper_speedup_vitl"):
            assert _positive(r[col]), (col, r[col])
        assert r["steps_timed"] == "2" and r["batch"] == "8"
    assert float(rows[0]["speedup"]) == 1.0 and float(rows[0]["flop_ratio"]) == 1.0
    # removing 75% of the encoder's tokens lowers the counted FLOPs
    assert float(rows[1]["train_gflops_per_image"]) < float(rows[0]["train_gflops_per_image"])

    # --append replaces rows of the same configuration and keeps the others
    _run(["bench.train_step", "--shape", "micro28", "--batch", "8", "--steps", "1", "--warmup", "1", "--threads", "1",
          "--variants", "enc_wo_mask_dec1", "--peak-size", "128", "--peak-repeats", "2", "--out", str(out), "--append"])
    rows = _read(out)
    assert sorted(r["variant"] for r in rows) == sorted(["enc_w_mask_dec8", "enc_wo_mask_dec8", "enc_wo_mask_dec1"])
    assert [r["steps_timed"] for r in rows if r["variant"] == "enc_wo_mask_dec1"] == ["1"]


def test_gpu_bench_cpu_smoke(tmp_path):
    out = tmp_path / "gpu_bench.csv"
    proc = _run(["bench.gpu_bench", "--cpu-smoke", "--threads", "1", "--steps", "1", "--out", str(out)])
    assert "img/s" in proc.stdout
    rows = _read(out)
    assert {(r["arch"], r["variant"]) for r in rows} >= {
        ("mae_vit_micro_patch7_dec64d1b", "enc_wo_mask_dec8"), ("mae_vit_micro_patch4_dec64d1b", "enc_wo_mask_dec8"),
        ("mae_vit_micro_patch7_dec64d1b", "enc_w_mask_dec8")}
    assert GPU_COLUMNS <= set(rows[0])
    for r in rows:
        assert r["precision"] == "fp32" and r["mode"] in ("eager", "official")
        assert _positive(r["images_per_s"]) and _positive(r["mfu"]) and _positive(r["train_gflops_per_image"])
    # the official recipe ran beside ours for each arch's default variant, and ours is given as a ratio to it
    for arch in ("mae_vit_micro_patch7_dec64d1b", "mae_vit_micro_patch4_dec64d1b"):
        default = {r["mode"]: r for r in rows if r["arch"] == arch and r["variant"] == "enc_wo_mask_dec8"}
        assert set(default) == {"official", "eager"}, rows
        ratio = float(default["eager"]["images_per_s"]) / float(default["official"]["images_per_s"])
        assert float(default["eager"]["vs_official"]) == pytest.approx(ratio, abs=1e-3)
        assert default["official"]["vs_official"] == ""


def test_official_recipe_is_the_same_model_with_unfused_attention_and_trains():
    """The official step (bench.official_recipe) differs from ours in how it computes, not in what: its
    unfused attention gives the fused path's loss, and its AdamW + scaler steps lower the loss."""
    import torch

    from bench.official_recipe import official_optimizer, official_steps, use_unfused_attention
    from mae.model import create_mae_model
    from mae.optim import build_pretrain_optimizer

    torch.manual_seed(0)
    model = create_mae_model("mae_vit_micro_patch7_dec64d1b")
    images = torch.randn(8, 1, 28, 28)
    noise = torch.rand(8, model.num_patches)
    fused = model(images, noise=noise)[0]
    assert use_unfused_attention(model) == len(model.blocks) + len(model.decoder_blocks)
    assert all(not blk.attn.fused_attn for blk in [*model.blocks, *model.decoder_blocks])
    assert model(images, noise=noise)[0].item() == pytest.approx(fused.item(), rel=1e-5)
    official = official_optimizer(model, 1e-3)
    ours = build_pretrain_optimizer(model, 1e-3)
    assert [[id(p) for p in g["params"]] for g in official.param_groups] == [
        [id(p) for p in g["params"]] for g in ours.param_groups]
    assert [g["weight_decay"] for g in official.param_groups] == [g["weight_decay"] for g in ours.param_groups]
    assert not official.defaults["fused"] and ours.defaults["fused"]
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    first = official_steps(model, torch.optim.AdamW(model.parameters(), lr=1e-3), scaler, images, 1, 1e-3, 0.75)
    last = official_steps(model, official_optimizer(model, 1e-3), scaler, images, 30, 1e-3, 0.75)
    assert last < first


def test_gpu_sh_is_the_entry_point():
    text = (REPO / "bench" / "gpu.sh").read_text()
    assert "bench.gpu_bench" in text and "timeout" in text
    proc = subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_workflow_overhead_counts_jobs():
    from bench.workflow_overhead import count_jobs
    stats = "Job stats:\njob         count\n--------  -------\nall             1\npretrain       12\ntotal          13\n"
    assert count_jobs(stats) == 13
    assert count_jobs("Nothing to be done.") is None


@pytest.mark.slow
def test_gpu_bench_cpu_smoke_compiled(tmp_path):
    out = tmp_path / "gpu_bench.csv"
    _run(["bench.gpu_bench", "--cpu-smoke", "--archs", "micro28", "--modes", "compile", "--no-table2",
          "--threads", "1", "--steps", "1", "--out", str(out)])
    rows = _read(out)
    assert [r["mode"] for r in rows] == ["compile"]


def test_data_vs_tensors_runs_and_writes_ratio(tmp_path):
    out = tmp_path / "data_vs_tensors.csv"
    proc = _run(["bench.data_vs_tensors", "--dataset", "synthetic", "--batch", "32", "--steps", "2", "--rounds", "1",
                 "--threads", "1", "--out", str(out)])
    assert "ratio" in proc.stdout and "target >= 0.9" in proc.stdout
    (row,) = _read(out)
    assert _positive(row["real_images_per_s"]) and _positive(row["prebuilt_images_per_s"]) and _positive(row["ratio"])
    assert abs(float(row["ratio"]) - float(row["real_images_per_s"]) / float(row["prebuilt_images_per_s"])) < 0.01


@pytest.mark.slow
def test_gpu_session_cpu_smoke_runs_every_step_without_mlflow(tmp_path):
    """bench/gpu_session.sh, the one call a GPU session makes (issue #18), at micro size on the CPU and,
    as on the GPU machine, with no mlflow importable: every step exits as expected (the stopped pretraining
    with 75, then resumed to the uninterrupted run's weights), and at most 8 files come back."""
    no_mlflow = tmp_path / "no_mlflow"
    no_mlflow.mkdir()
    (no_mlflow / "sitecustomize.py").write_text("import sys\nsys.modules['mlflow'] = None\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(no_mlflow), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_session.sh"), "--cpu-smoke", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "session.log").read_text()
    for line in ("bench exit 0", "profile exit 0", "stopped pretraining exit 75", "resumed pretraining exit 0",
                 "reference pretraining exit 0", "finetune exit 0", "linprobe exit 0"):
        assert line in log, log[-4000:]
    assert "weights: 74 of 74 tensors bitwise equal" in log and "metrics.jsonl: every record equal" in log, log[-4000:]
    runs = json.loads((out / "cli_runs.json").read_text())
    assert {"pretrain", "pretrain_reference", "finetune", "linprobe"} <= set(runs)
    assert runs["pretrain"]["resumed_from_step"] > 0 and runs["pretrain"]["final_loss"] == runs["pretrain_reference"]["final_loss"]
    assert {r["mode"] for r in _read(out / "gpu_bench.csv")} == {"official", "eager"}
    assert "shares:" in (out / "profile_vitl.txt").read_text()
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir()), files
