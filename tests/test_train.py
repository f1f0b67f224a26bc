"""The three programs end to end on synthetic data: pretrain -> finetune -> linprobe, the run-folder
contract, MLflow (sqlite, and an unreachable server), and the non-finite-loss stop."""

import json
import time

import pytest
import torch

from mae import train
from mae.run_folder import read_jsonl
from mae.config import load_config
from mae.engine import EXIT_NON_FINITE, TrainingStopped
from micro_config import MICRO_MODEL

TINY = [
    *MICRO_MODEL, "data.train_subset=512", "data.val_subset=64", "data.num_workers=0",
    "pretrain.epochs=2", "pretrain.warmup_epochs=0.5", "pretrain.batch_size=32", "pretrain.blr=1.5e-3",
    "finetune.epochs=3", "finetune.warmup_epochs=1", "finetune.batch_size=32", "finetune.blr=1e-2",
    "finetune.layer_decay=1.0", "finetune.mixup=0", "finetune.cutmix=0", "finetune.randaug=null", "finetune.reprob=0",
    "finetune.drop_path=0", "linprobe.epochs=2", "linprobe.warmup_epochs=0.5", "linprobe.batch_size=32",
    "run.log_every_steps=4", "run.checkpoint_every_steps=0", "run.threads=1", "tracking.enabled=false",
]
CHANCE = 10.0  # synthetic data: 10 classes


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    out = tmp_path_factory.mktemp("chain")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    track = ["tracking.enabled=true", f"tracking.uri={uri}", "tracking.experiment=test",
             "tracking.tags.mae.preset=unit", "tracking.tags.mae.ablations=table1a"]
    model = out / "pretrain" / "model.pth"
    results = {
        "pretrain": train.pretrain(load_config(None, [*TINY, *track]), out / "pretrain"),
        "finetune": train.finetune(load_config(None, [*TINY, f"finetune.checkpoint={model}"]), out / "finetune"),
        "linprobe": train.linprobe(load_config(None, [*TINY, f"linprobe.checkpoint={model}"]), out / "linprobe"),
    }
    return out, uri, results


def test_pretraining_loss_falls_and_finetuning_beats_chance(chain):
    out, _, results = chain
    losses = [r["loss"] for r in read_jsonl(out / "pretrain" / "metrics.jsonl")]
    assert len(losses) == 8 and losses[-1] < 0.9 * losses[0], losses
    assert results["finetune"]["top1"] > 2 * CHANCE, results["finetune"]
    assert 0 <= results["linprobe"]["top1"] <= 100 and results["linprobe"]["top5"] >= results["linprobe"]["top1"]


def test_run_folder_contract(chain):
    out, _, results = chain
    for stage, files in {"pretrain": ["model.pth", "recon.png"], "finetune": ["model.pth"], "linprobe": []}.items():
        folder = out / stage
        for name in ["config.yaml", "train.log", "metrics.jsonl", "checkpoint.pth", "metrics.json", *files]:
            assert (folder / name).exists(), (stage, name)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics == results[stage] and metrics["status"] == "completed" and metrics["stage"] == stage
        assert metrics["world_size"] == 1 and metrics["git_revision"] and metrics["train_time_s"] > 0
        # the written config reproduces the run: same identity
        assert train.identity(load_config(folder / "config.yaml"), stage) == metrics["run_id"]
    assert results["pretrain"]["train_flops_per_image"] > 0 and "top1" not in results["pretrain"]
    assert {"top1", "top5"} <= results["finetune"].keys()
    assert results["linprobe"]["trainable_params"] < results["linprobe"]["num_params"]  # frozen encoder
    assert not (out / "linprobe" / "model.pth").exists()


def test_mlflow_has_params_tags_and_metric_history(chain):
    import mlflow
    out, uri, results = chain
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(results["pretrain"]["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.mask_ratio"] == "0.75" and run.data.params["pretrain.batch_size"] == "32"
    assert run.data.tags["mae.preset"] == "unit" and run.data.tags["mae.ablations"] == "table1a"
    assert run.data.tags["mae.run_id"] == results["pretrain"]["run_id"]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == [r["step"] for r in read_jsonl(out / "pretrain" / "metrics.jsonl")]


def test_unreachable_tracking_server_does_not_stop_training(tmp_path):
    started = time.perf_counter()
    cfg = load_config(None, [*TINY, "pretrain.epochs=1", "data.train_subset=64", "tracking.enabled=true",
                             "tracking.uri=http://127.0.0.1:9"])
    metrics = train.pretrain(cfg, tmp_path / "run")
    assert time.perf_counter() - started < 90
    assert metrics["status"] == "completed" and metrics["mlflow_run_id"] is None
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 2


def test_non_finite_loss_stops_with_exit_3_naming_step_and_checkpoint(tmp_path):
    cfg = load_config(None, [*TINY, "pretrain.lr=1e12", "pretrain.warmup_epochs=0", "run.log_every_steps=1",
                             "run.checkpoint_every_steps=1"])
    with pytest.raises(TrainingStopped) as stop:
        train.pretrain(cfg, tmp_path / "run")
    assert stop.value.exit_code == EXIT_NON_FINITE
    assert "not finite at step" in str(stop.value) and "checkpoint.pth" in str(stop.value)
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "model.pth").exists()


def test_pca_target_pretrains_and_reports_flops(tmp_path):
    """The PCA basis is fitted before anything runs the loss (the FLOP count runs a training step)."""
    cfg = load_config(None, [*TINY, "model.target=pca", "model.pca_components=6", "pretrain.epochs=1",
                             "data.train_subset=64"])
    metrics = train.pretrain(cfg, tmp_path / "run")
    assert metrics["status"] == "completed" and metrics["train_flops_per_image"] > 0
    assert "pca target: basis fitted" in (tmp_path / "run" / "train.log").read_text()


def test_every_run_folder_and_mlflow_run_record_the_environment(chain):
    """environment.json (mae.provenance): packages, git revision with a dirty flag, host, CPU, GPU; the
    same as mae.env.* tags on the MLflow run; config.yaml's meta carries git_dirty."""
    import importlib.metadata

    import mlflow
    import yaml

    out, uri, results = chain
    for stage in ("pretrain", "finetune", "linprobe"):
        env = json.loads((out / stage / "environment.json").read_text())
        assert env["packages"]["torch"] == importlib.metadata.version("torch")
        assert env["packages"]["timm"] == importlib.metadata.version("timm")
        assert env["git_revision"] == results[stage]["git_revision"]
        assert env["host"] == results[stage]["host"] and env["cpu"] and env["python"]
        assert env["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
        assert env["git_dirty"] in (True, False, None) and "cuda" in env and "gpu" in env
        meta = yaml.safe_load((out / stage / "config.yaml").read_text())["meta"]
        assert meta["git_dirty"] == env["git_dirty"]
    tags = mlflow.MlflowClient(tracking_uri=uri).get_run(results["pretrain"]["mlflow_run_id"]).data.tags
    assert tags["mae.env.torch"] == importlib.metadata.version("torch") and tags["mae.env.cpu"] == env["cpu"]


def test_a_pretraining_refuses_a_val_subset_its_knn_split_lacks_before_training(tmp_path):
    # data.val_subset larger than the split the final k-NN reads: one error before the first step (it was a
    # warning after the last one, exit 0 and metrics without knn_*)
    from pathlib import Path

    from mae.errors import UserError
    tiny = Path(__file__).resolve().parents[1] / "workflow/presets/tiny.yaml"
    cfg = load_config(tiny, ["data.val_subset=20000", "data.train_subset=256", "pretrain.epochs=1",
                             "pretrain.warmup_epochs=0"])
    with pytest.raises(UserError, match=r"^data.val_subset=20000 is invalid: allowed at most the 10000 images"):
        train.pretrain(cfg, tmp_path / "run")
    assert read_jsonl(tmp_path / "run" / "metrics.jsonl") == [] and not (tmp_path / "run" / "checkpoint.pth").exists()
