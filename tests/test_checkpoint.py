"""Checkpoints: atomic save with a kept previous, exact RNG round trip, corrupt/unsafe files, official format."""

import os
import random

import numpy as np
import pytest
import torch

from mae.checkpoint import (CorruptCheckpoint, capture_rng_state, find_resume_checkpoint, load_checkpoint,
                            load_model_state, read_weights_file, restore_rng_state, save_checkpoint, save_model)
from mae.errors import UserError
from mae.run_folder import CHECKPOINT_PTH, PREVIOUS_CHECKPOINT_PTH
from official_checkpoints import (OFFICIAL_ARCH, official_args as _official_args, official_groups as _official_groups,
                                  official_pretraining_checkpoint as _official_pretraining_checkpoint,
                                  save_official as _save_official)


def _state(step):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.95))
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "global_step": step,
            "rng": capture_rng_state(), "config": {"model": {"arch": "x", "mask_ratio": 0.75}}}


def test_save_keeps_previous_and_roundtrips(tmp_path):
    first, second = _state(1), _state(2)
    save_checkpoint(tmp_path, first)
    save_checkpoint(tmp_path, second)
    assert (tmp_path / PREVIOUS_CHECKPOINT_PTH).exists()
    loaded = load_checkpoint(tmp_path / CHECKPOINT_PTH)
    assert loaded["global_step"] == 2
    assert all(torch.equal(loaded["model"][k], second["model"][k]) for k in second["model"])
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert load_checkpoint(tmp_path / PREVIOUS_CHECKPOINT_PTH)["global_step"] == 1
    assert not [p for p in os.listdir(tmp_path) if ".tmp." in p]


def test_rng_state_roundtrip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path, {"rng": capture_rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(load_checkpoint(tmp_path / CHECKPOINT_PTH)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_newest_falls_back_to_previous(tmp_path, damage):
    save_checkpoint(tmp_path, _state(1))
    save_checkpoint(tmp_path, _state(2))
    path = tmp_path / CHECKPOINT_PTH
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # one flipped byte in the middle of the payload
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint):
        load_checkpoint(path)
    point = find_resume_checkpoint(tmp_path)
    assert point.path.name == PREVIOUS_CHECKPOINT_PTH and point.state["global_step"] == 1
    assert CHECKPOINT_PTH in point.note


def test_no_checkpoint_is_none_but_all_damaged_is_an_error(tmp_path):
    assert find_resume_checkpoint(tmp_path) is None
    (tmp_path / CHECKPOINT_PTH).write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="no valid checkpoint"):
        find_resume_checkpoint(tmp_path)


class _CodePayload:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_code_payload_is_refused(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"model": _CodePayload()}, evil)
    with pytest.raises(UserError, match="evil.pth"):
        load_model_state(evil)
    torch.save(_CodePayload(), tmp_path / CHECKPOINT_PTH)
    with pytest.raises(UserError, match="refused"):
        find_resume_checkpoint(tmp_path)


def test_model_files_official_and_ours(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_model(tmp_path / "model.pth", model, {"model": {"arch": "a"}})
    sd, config = load_model_state(tmp_path / "model.pth")
    assert config == {"model": {"arch": "a"}} and torch.equal(sd["weight"], model.weight)
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "official.pth")
    sd, config = load_model_state(tmp_path / "official.pth")
    assert config is None and set(sd) == {"weight", "bias"}
    save_checkpoint(tmp_path, {"model": model.state_dict(), "config": {"run": {}}})
    sd, _ = load_model_state(tmp_path / CHECKPOINT_PTH)
    assert torch.equal(sd["bias"], model.bias)
    with pytest.raises(UserError, match="missing.pth"):
        load_model_state(tmp_path / "missing.pth")


# ---- official MAE training checkpoints (checkpoint-N.pth, built as tests/official_checkpoints.py says) ----

OFFICIAL_TRAINING = [
    f"model.arch={OFFICIAL_ARCH}", "model.target=norm_pixel", "data.name=synthetic", "data.train_subset=64",
    "data.val_subset=16", "data.num_workers=0", "pretrain.batch_size=16", "pretrain.epochs=3",
    "pretrain.warmup_epochs=1", "pretrain.augmentation=none", "finetune.epochs=1", "finetune.warmup_epochs=0",
    "finetune.batch_size=16", "finetune.randaug=null", "linprobe.epochs=1", "linprobe.warmup_epochs=0",
    "linprobe.batch_size=16", "run.log_every_steps=2", "run.checkpoint_every_steps=0", "run.threads=1",
    "tracking.enabled=false",
]


def test_official_training_checkpoint_loads(tmp_path):
    path = tmp_path / "checkpoint-3.pth"
    model = _official_pretraining_checkpoint(path)
    weights = read_weights_file(path)
    assert weights.kind == "official training checkpoint" and weights.epoch == 3
    assert list(weights.model) == list(model.state_dict())
    assert all(torch.equal(weights.model[k], v) for k, v in model.state_dict().items())
    assert weights.scaler["scale"] > 0 and weights.optimizer["param_groups"][1]["weight_decay"] == 0.05
    assert weights.args["model"] == OFFICIAL_ARCH and weights.args["dist_backend"] == "nccl"
    assert weights.config == {"model": {"arch": OFFICIAL_ARCH, "img_size": 28, "mask_ratio": 0.75,
                                        "target": "norm_pixel"},
                              "data": {"name": "imagenet", "root": "/datasets01/imagenet_full_size/061417/"},
                              "run": {"seed": 0}}
    sd, config = load_model_state(path)
    assert config == weights.config and sd.keys() == weights.model.keys()


def test_official_model_names_map_to_archs():
    from mae.checkpoint import official_arch
    for size, patch in (("base", 16), ("large", 16), ("huge", 14)):
        arch = f"mae_vit_{size}_patch{patch}_dec512d8b"
        assert official_arch(f"mae_vit_{size}_patch{patch}") == arch  # main_pretrain.py --model
        assert official_arch(f"vit_{size}_patch{patch}") == arch      # main_finetune.py / main_linprobe.py --model
    with pytest.raises(UserError, match="args.model='vit_giant_patch14' is invalid"):
        official_arch("vit_giant_patch14")


class _Custom:
    """A plain class of this test module: unpickling it means importing it."""

    def __init__(self):
        self.value = 1


@pytest.mark.parametrize("extra", ["custom class", "functools.partial", "set", "set inside args"])
def test_other_non_tensor_types_are_refused(tmp_path, extra):
    import argparse
    import functools
    value = {"custom class": _Custom(), "functools.partial": functools.partial(int, "3"), "set": {1, 2},
             "set inside args": argparse.Namespace(model=OFFICIAL_ARCH, classes={1, 2})}[extra]
    path = tmp_path / "checkpoint-1.pth"
    torch.save({"model": torch.nn.Linear(3, 2).state_dict(), "epoch": 1, "args": value}, path)
    with pytest.raises(UserError) as info:
        load_model_state(path)
    message = str(info.value)
    assert "\n" not in message and "checkpoint-1.pth" in message and "refused" in message, message
    if "set" in extra:
        assert "holds a set at ['args']" in message


def test_official_finetuning_checkpoint_loads_and_is_refused_as_an_encoder(tmp_path):
    """main_finetune.py saves the same five keys (a timm ViT with head, AdamW over the layer-decay groups
    with their lr_scale, its own args): it loads; as a starting encoder it is refused in one line, as the
    official --finetune refuses it (its assert on the missing keys)."""
    from mae.downstream import create_vit
    from mae.optim import param_groups_layer_decay
    vit = create_vit(OFFICIAL_ARCH, 10)
    optimizer = torch.optim.AdamW(param_groups_layer_decay(vit, 0.05, 0.75), lr=1e-3)
    vit(torch.randn(2, 1, 28, 28)).sum().backward()
    optimizer.step()
    args = _official_args(model=OFFICIAL_ARCH, input_size=28, drop_path=0.2, clip_grad=None, layer_decay=0.75,
                          color_jitter=None, aa="rand-m9-mstd0.5-inc1", smoothing=0.1, reprob=0.25, remode="pixel",
                          recount=1, resplit=False, mixup=0.8, cutmix=1.0, cutmix_minmax=None, mixup_prob=1.0,
                          mixup_switch_prob=0.5, mixup_mode="batch", finetune="mae_pretrain_vit_large.pth",
                          global_pool=True, nb_classes=10, eval=False, dist_eval=True, blr=1e-3, epochs=50)
    del args.mask_ratio, args.norm_pix_loss  # not main_finetune.py arguments
    path = tmp_path / "checkpoint-49.pth"
    _save_official(path, vit, optimizer, 49, torch.amp.GradScaler("cpu"), args)
    weights = read_weights_file(path)
    assert weights.kind == "official training checkpoint" and weights.epoch == 49
    assert "head.weight" in weights.model and weights.optimizer["param_groups"][0]["lr_scale"] > 0
    assert weights.config["model"] == {"arch": OFFICIAL_ARCH, "img_size": 28}
    with pytest.raises(UserError, match="is a fine-tuned classifier") as info:
        _train("finetune", tmp_path / "ft", f"finetune.checkpoint={path}")
    assert "\n" not in str(info.value)


def _train(stage, out, *extra):
    from mae import train
    from mae.config import load_config
    return getattr(train, stage)(load_config(None, [*OFFICIAL_TRAINING, *extra]), out)


def test_official_checkpoint_finetunes_linear_probes_and_visualizes(tmp_path):
    from mae.downstream import create_vit, load_encoder_weights
    from mae.visualize import visualize_checkpoint
    path = tmp_path / "checkpoint-3.pth"
    model = _official_pretraining_checkpoint(path)
    report = load_encoder_weights(create_vit(OFFICIAL_ARCH, 10), path)
    assert "blocks.3.mlp.fc2.weight" in report.loaded and report.missing == ["fc_norm.bias", "fc_norm.weight",
                                                                              "head.bias", "head.weight"]
    finetuned = _train("finetune", tmp_path / "ft", f"finetune.checkpoint={path}")
    probed = _train("linprobe", tmp_path / "lin", f"linprobe.checkpoint={path}")
    assert finetuned["status"] == probed["status"] == "completed" and "top1" in finetuned and "top1" in probed
    assert f"encoder weights from {path}" in (tmp_path / "lin" / "train.log").read_text()
    # the official args name the ImageNet folder; the images come from wherever the user says
    png = visualize_checkpoint(path, tmp_path / "recon.png", mask_ratios=[0.75], num_images=2,
                               overrides=["data.name=synthetic"])
    assert png.stat().st_size > 1000 and png.read_bytes().startswith(b"\x89PNG")
    pdf = visualize_checkpoint(path, tmp_path / "recon.pdf", mask_ratios=[0.75], num_images=2,
                               overrides=["data.name=synthetic"])
    assert pdf.read_bytes().startswith(b"%PDF")  # the format its suffix names (it was a PNG named .pdf)
    with pytest.raises(UserError, match="data.root"):  # the official data_path is not on this machine
        visualize_checkpoint(path, tmp_path / "recon2.png", mask_ratios=[0.75], num_images=2)
    del model


def test_official_checkpoint_continues_pretraining_exactly(tmp_path):
    """An official checkpoint-1.pth of a 3-epoch run, continued by `mae pretrain` with pretrain.checkpoint,
    ends with the weights of the uninterrupted 3-epoch run: the AdamW moments and step counts, the epoch and
    the schedule position all carried over (augmentation none: data order and masks follow seed and step)."""
    from mae.model import create_mae_model
    steps_per_epoch = 64 // 16
    full = _train("pretrain", tmp_path / "full")
    with pytest.raises(Exception) as stop:  # the same run, stopped after epoch 1 (0-based): its checkpoint.pth
        _train("pretrain", tmp_path / "half", f"run.stop_after_steps={2 * steps_per_epoch}")
    assert getattr(stop.value, "exit_code", None) == 75
    saved = load_checkpoint(tmp_path / "half" / CHECKPOINT_PTH)
    assert saved["loop"]["epoch"] == 2 and saved["loop"]["step_in_epoch"] == 0

    # What main_pretrain.py would have saved at the end of epoch 1: its own model and AdamW, holding that state.
    model = create_mae_model(OFFICIAL_ARCH, target="norm_pixel")
    model.load_state_dict(saved["model"])
    optimizer = torch.optim.AdamW(_official_groups(model, 0.05), lr=1e-3, betas=(0.9, 0.95))
    ours = saved["optimizer"]["state"]
    flat = [p for g in optimizer.param_groups for p in g["params"]]
    for i, param in enumerate(flat):  # the harness saves in the same order: the official rule, checked by name
        optimizer.state[param] = {k: v.clone() for k, v in ours[i].items()}
    _save_official(tmp_path / "checkpoint-1.pth", model, optimizer, 1, torch.amp.GradScaler("cpu"),
                   _official_args(model=OFFICIAL_ARCH, input_size=28, batch_size=16, world_size=1, epochs=3))

    continued = _train("pretrain", tmp_path / "continued", f"pretrain.checkpoint={tmp_path / 'checkpoint-1.pth'}")
    log = (tmp_path / "continued" / "train.log").read_text()
    assert "at epoch 2 of 3: weights, AdamW moments" in log
    assert "other settings" not in log, log  # the same target, ratio, blr and weight decay as the file's args
    assert continued["steps"] == full["steps"] == 3 * steps_per_epoch
    a = torch.load(tmp_path / "full" / "model.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "continued" / "model.pth", weights_only=True)["model"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    # weights without the moments (a released model.pth) start a new schedule at epoch 0 instead
    fresh = _train("pretrain", tmp_path / "from_weights", f"pretrain.checkpoint={tmp_path / 'full' / 'model.pth'}",
                   "pretrain.epochs=1", "pretrain.warmup_epochs=0")
    assert fresh["steps"] == steps_per_epoch


def test_continuing_with_another_objective_says_what_changes():
    # a checkpoint of norm_pix_loss=True continued with the pixel target trained on without a word
    from mae.config import load_config
    from mae.recipes import official_setting_changes
    args = vars(_official_args(model=OFFICIAL_ARCH, input_size=28, batch_size=16, world_size=1, epochs=3))
    same = load_config(None, ["model.target=norm_pixel", "model.mask_ratio=0.75", "pretrain.blr=1.5e-4",
                              "pretrain.weight_decay=0.05"])
    assert official_setting_changes(args, same) == []
    other = load_config(None, ["model.target=pixel", "model.mask_ratio=0.5", "pretrain.blr=1.5e-4",
                               "pretrain.weight_decay=0.05"])
    assert official_setting_changes(args, other) == ["norm_pix_loss=True -> model.target='pixel'",
                                                     "mask_ratio=0.75 -> model.mask_ratio=0.5"]
    assert official_setting_changes({}, other) == []  # a file without args: nothing to compare


def test_continuing_past_the_configured_epochs_is_a_user_error(tmp_path):
    path = tmp_path / "checkpoint-3.pth"
    _official_pretraining_checkpoint(path, epoch=3)
    with pytest.raises(UserError, match=r"pretrain.epochs=3 is invalid: allowed more than the 4 epochs"):
        _train("pretrain", tmp_path / "run", f"pretrain.checkpoint={path}")
    from mae.run_folder import METRICS_JSON
    assert not (tmp_path / "run" / METRICS_JSON).exists()


# ---- model EMA (finetune.ema_decay, the Table 11 recipe): evaluated, saved, checkpointed, resumed exactly ----

EMA = ["finetune.ema_decay=0.9", "finetune.epochs=2", "finetune.warmup_epochs=1", "run.checkpoint_every_steps=3"]


def test_ema_is_evaluated_saved_and_resumed_exactly(tmp_path):
    from mae.engine import TrainingStopped
    from mae.run_folder import read_jsonl
    full = _train("finetune", tmp_path / "full", *EMA)
    assert {"top1", "top5", "top1_without_ema", "top5_without_ema"} <= set(full)
    saved = load_checkpoint(tmp_path / "full" / CHECKPOINT_PTH)
    final = torch.load(tmp_path / "full" / "model.pth", weights_only=True)["model"]
    ema = {k.removeprefix("module."): v for k, v in saved["model_ema"].items()}
    assert final.keys() == saved["model"].keys() == ema.keys()
    assert all(torch.equal(final[k], ema[k]) for k in final), "model.pth holds the EMA weights"
    assert not all(torch.equal(final[k], saved["model"][k]) for k in final), "the EMA equals the raw weights"

    with pytest.raises(TrainingStopped) as stop:  # mid-epoch (4 steps per epoch), between two checkpoints
        _train("finetune", tmp_path / "resumed", *EMA, "run.stop_after_steps=5")
    assert stop.value.exit_code == 75
    resumed = _train("finetune", tmp_path / "resumed", *EMA)
    assert resumed["resumed_from_step"] == 5
    other = torch.load(tmp_path / "resumed" / "model.pth", weights_only=True)["model"]
    assert [k for k in final if not torch.equal(final[k], other[k])] == []
    assert {k: resumed[k] for k in ("top1", "top1_without_ema", "final_loss")} == \
        {k: full[k] for k in ("top1", "top1_without_ema", "final_loss")}
    strip = [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_jsonl(tmp_path / "full" / "metrics.jsonl")]
    again = [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_jsonl(tmp_path / "resumed" / "metrics.jsonl")]
    assert strip == again


def test_ema_decay_is_validated_and_off_by_default():
    from mae.config import Config, identity, load_config
    assert Config().finetune.ema_decay is None
    with pytest.raises(UserError, match=r"finetune.ema_decay=1.5 is invalid: allowed a number in \(0.0, 1.0\)"):
        load_config(None, ["finetune.ema_decay=1.5"])
    base = load_config(None, [])
    assert identity(base.with_overrides(["finetune.ema_decay=0.9999"]), "finetune") != identity(base, "finetune")


def test_pretrain_checkpoint_mistakes_are_one_line_user_errors(tmp_path):
    path = tmp_path / "checkpoint-0.pth"
    _official_pretraining_checkpoint(path, epoch=0)
    with pytest.raises(UserError, match=r"pretrain.checkpoint=.*does not match the config's model: .*wrong shape"):
        _train("pretrain", tmp_path / "other", f"pretrain.checkpoint={path}", "model.embed_dim=64")
    with pytest.raises(UserError, match="checkpoint=.*none.pth.* is invalid: allowed an existing checkpoint file"):
        _train("pretrain", tmp_path / "missing", f"pretrain.checkpoint={tmp_path / 'none.pth'}")
