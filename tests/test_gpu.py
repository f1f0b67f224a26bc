"""The CUDA paths, on a real GPU (`pytest -m gpu`; skipped where torch sees no CUDA device).

What runs here only on a GPU: bf16 autocast training steps, the sync-free step, torch.compile on CUDA,
fp16 with a GradScaler, checkpoint and resume of a run that trains on CUDA (mid-epoch stop, resume,
same result as uninterrupted, in bf16 and fp16), the CLI with `run.device=auto`, frozen-encoder
features and k-NN on CUDA, and the GPU benchmark with the official recipe beside ours. nccl needs two processes on two GPUs (one process trains without a process group,
mae.distributed), so a one-GPU machine cannot run it; the multi-process code is tested with gloo on the
CPU (test_ddp.py, test_multinode.py).

bench/gpu_session.sh runs this module on the GPU machine, with the benchmark and the tiny-preset CLI run.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mae import train
from mae.config import load_config
from mae.engine import EXIT_PREEMPTED, EpochContext, LoopState, TrainingStopped, train_one_epoch
from mae.run_folder import read_jsonl
from micro_config import MICRO_MODEL

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")

RUN = [
    *MICRO_MODEL, "data.train_subset=512", "data.val_subset=64", "data.num_workers=0",
    "pretrain.epochs=2", "pretrain.warmup_epochs=1", "pretrain.batch_size=32", "pretrain.blr=1e-3",
    "finetune.epochs=1", "finetune.warmup_epochs=0.5", "finetune.batch_size=32",
    "run.log_every_steps=5", "run.checkpoint_every_steps=7", "tracking.enabled=false",
    "run.device=cuda", "run.precision=bf16",
]  # 16 steps per pretraining epoch


class _SameBatch:
    def __init__(self, images: torch.Tensor):
        self.item = (images, torch.zeros(images.shape[0], dtype=torch.long, device=images.device))

    def __iter__(self):
        return self

    def __next__(self):
        return self.item


def _micro_model():
    from mae.model import create_mae_model
    torch.manual_seed(0)
    return create_mae_model("mae_vit_micro_patch7_dec64d1b").to(CUDA)


def _host_syncs(steps: int, dtype: torch.dtype, scaler: torch.amp.GradScaler | None = None) -> int:
    """Host synchronisations the engine makes in one epoch of `steps` steps (after a warm-up epoch)."""
    from bench.common import count_host_syncs
    from bench.train_step import pretrain_loss_fn
    from mae.optim import build_pretrain_optimizer, build_scheduler

    model = _micro_model()
    optimizer = build_pretrain_optimizer(model, 1e-3)
    scheduler = build_scheduler(optimizer, 1, 0.5, 2 * steps + 1)
    images = torch.randn(16, 1, 28, 28, device=CUDA)
    ctx = EpochContext(steps_per_epoch=steps, accum_steps=1, images_per_step=16, device=CUDA, autocast_dtype=dtype,
                       scaler=scaler, log_every_steps=10 ** 9, checkpoint_every_steps=0)
    loss_fn = pretrain_loss_fn(model.num_patches, 16)
    train_one_epoch(model, loss_fn, _SameBatch(images), optimizer, scheduler, LoopState(), ctx)  # warm-up
    torch.cuda.synchronize()
    return count_host_syncs(lambda: train_one_epoch(model, loss_fn, _SameBatch(images), optimizer, scheduler,
                                                    LoopState(), ctx))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_steps_make_no_host_sync_between_log_points(precision):
    """An epoch syncs at its end (the log point reads the loss); the steps before it never wait for the
    GPU: 2 and 12 steps make the same number of synchronisations. fp16 goes through the GradScaler (whose
    step reads found_inf on the host unless the optimizer takes it, as the fused AdamW does)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = (lambda: torch.amp.GradScaler("cuda")) if precision == "fp16" else (lambda: None)
    short, long = _host_syncs(2, dtype, scaler()), _host_syncs(12, dtype, scaler())
    print(f"\n{precision}: host syncs in an epoch of 2 steps: {short}, of 12 steps: {long}")
    assert long == short


def test_compiled_model_on_cuda_gives_the_eager_loss_and_gradients():
    model = _micro_model()
    images = torch.randn(16, 1, 28, 28, device=CUDA)
    noise = torch.rand(16, model.num_patches, device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = model(images, noise=noise)[0]
    eager.backward()
    eager_grad = model.patch_embed.proj.weight.grad.clone()
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = compiled(images, noise=noise)[0]
    loss.backward()
    print(f"\nloss eager {eager.item():.6f} compiled {loss.item():.6f}")
    assert loss.item() == pytest.approx(eager.item(), rel=2e-2)
    grad = model.patch_embed.proj.weight.grad
    relative = ((grad - eager_grad).norm() / eager_grad.norm()).item()  # bf16 rounds both, differently fused
    print(f"patch-embedding gradient: relative difference {relative:.2e}")
    assert relative < 0.05


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_run_stopped_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, precision):
    """Checkpoint and resume on CUDA: stop after 11 steps (mid-epoch, after the step-7 checkpoint), resume,
    finish; the metrics match the uninterrupted run (GPU kernels may differ in the last bits between runs,
    so closely rather than bitwise; whether they are bitwise equal is printed). fp16 also checkpoints and
    restores its GradScaler."""
    run = [a if not a.startswith("run.precision") else f"run.precision={precision}" for a in RUN]
    reference = train.pretrain(load_config(None, run), tmp_path / "reference")
    with pytest.raises(TrainingStopped) as stop:
        train.pretrain(load_config(None, [*run, "run.stop_after_steps=11"]), tmp_path / "run")
    assert stop.value.exit_code == EXIT_PREEMPTED
    resumed = train.pretrain(load_config(None, run), tmp_path / "run")
    assert resumed["resumed_from_step"] == 11 and resumed["steps"] == reference["steps"] == 32
    a = torch.load(tmp_path / "reference" / "model.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "run" / "model.pth", weights_only=True)["model"]
    assert all(t.device.type == "cpu" for t in b.values())  # model.pth loads on a machine without CUDA
    max_diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    losses = [(r["loss"], s["loss"]) for r, s in zip(read_jsonl(tmp_path / "reference" / "metrics.jsonl"),
                                                      read_jsonl(tmp_path / "run" / "metrics.jsonl")) if "loss" in r]
    print(f"\n{precision} resumed vs uninterrupted: weights bitwise equal {max_diff == 0}, largest |difference| {max_diff:.3g}; "
          f"final loss {reference['final_loss']} vs {resumed['final_loss']}")
    assert losses and all(x == pytest.approx(y, rel=1e-3) for x, y in losses)
    assert resumed["final_loss"] == pytest.approx(reference["final_loss"], rel=1e-3)
    assert max_diff < 1e-2


def test_cli_with_device_auto_trains_on_cuda_and_finetunes_in_bf16(tmp_path):
    """`mae pretrain` and `mae finetune` with the default run.device=auto and run.precision=auto pick CUDA
    and bf16 (train.log's first line of the run says which)."""
    args = [a for a in RUN if not a.startswith(("run.device", "run.precision"))]
    for stage, extra in (("pretrain", []), ("finetune", [f"finetune.checkpoint={tmp_path / 'pretrain' / 'model.pth'}"])):
        proc = subprocess.run([sys.executable, "-m", "mae.cli", stage, "--out", str(tmp_path / stage), *args, *extra],
                              cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        metrics = json.loads((tmp_path / stage / "metrics.json").read_text())
        setup = next(line for line in (tmp_path / stage / "train.log").read_text().splitlines() if ", device " in line)
        print(f"\n{stage}: {setup.split(': ', 1)[-1]}; {json.dumps({k: metrics.get(k) for k in ('final_loss', 'top1')})}")
        assert ", device cuda" in setup and setup.endswith("precision torch.bfloat16"), setup


def test_knn_features_on_cuda_give_the_cpu_accuracy():
    """`mae knn` computes the frozen encoder's features on CUDA (fp32, as on the CPU): the same k-NN
    accuracy as on the CPU, to within one of the 256 validation images."""
    def knn(device: str) -> dict:
        proc = subprocess.run([sys.executable, "-m", "mae.cli", "knn", "--checkpoint", "random", "--config",
                               str(REPO / "workflow" / "presets" / "smoke.yaml"), f"run.device={device}",
                               "run.precision=fp32", "data.train_subset=512", "data.val_subset=256",
                               "tracking.enabled=false"], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])
    on_cuda, on_cpu = knn("cuda"), knn("cpu")
    print(f"\nk-NN top-1 on CUDA {on_cuda['knn_top1']} ({on_cuda['feature_time_s']} s), "
          f"on the CPU {on_cpu['knn_top1']} ({on_cpu['feature_time_s']} s)")
    assert abs(on_cuda["knn_top1"] - on_cpu["knn_top1"]) <= 100 / 256 + 1e-9


def test_gpu_bench_runs_ours_and_the_official_recipe_on_cuda(tmp_path):
    out = tmp_path / "gpu_bench.csv"
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_bench", "--archs", "micro28", "--no-table2",
                           "--warmup", "2", "--steps", "3", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    import csv
    rows = {r["mode"]: r for r in csv.DictReader(out.open())}
    assert set(rows) == {"official", "eager", "compile"}
    assert rows["official"]["precision"] == "fp16" and rows["eager"]["precision"] == "bf16"
    assert float(rows["eager"]["host_syncs_per_step"]) == 0 and float(rows["compile"]["host_syncs_per_step"]) == 0
    assert float(rows["official"]["host_syncs_per_step"]) >= 2  # its .item() and synchronize per step
    assert float(rows["eager"]["vs_official"]) > 0
