"""Config: defaults < YAML < key=value, unknown keys with suggestions, type and range errors, identity."""

import json
import re

import pytest
import yaml

from mae.config import Config, apply_overrides, dump_config, identity, load_config
from mae.run_folder import flatten
from mae.errors import UserError


def test_defaults_are_the_paper_setting():
    cfg = Config()
    assert cfg.model.arch == "mae_vit_large_patch16_dec512d8b" and cfg.model.mask_ratio == 0.75
    assert cfg.pretrain.batch_size == 4096 and cfg.pretrain.betas == [0.9, 0.95] and cfg.pretrain.blr == 1.5e-4
    assert cfg.finetune.layer_decay == 0.75 and cfg.linprobe.batch_size == 16384


def test_precedence_defaults_yaml_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"mask_ratio": 0.5, "decoder_depth": 2}, "pretrain": {"blr": "1e-4"}}))
    cfg = load_config(path, ["model.mask_ratio=0.9", "pretrain.betas=[0.9,0.99]", "finetune.checkpoint=null",
                             "run.compile=true", "tracking.tags.mae.preset=tiny"])
    assert cfg.model.mask_ratio == 0.9            # override beats YAML
    assert cfg.model.decoder_depth == 2           # YAML beats default
    assert cfg.model.target == "pixel"            # default kept
    assert cfg.pretrain.blr == 1e-4               # PyYAML's string "1e-4" read as a number
    assert cfg.pretrain.betas == [0.9, 0.99] and cfg.finetune.checkpoint is None and cfg.run.compile is True
    assert cfg.tracking.tags == {"mae.preset": "tiny"}
    assert isinstance(load_config(None, ["pretrain.blr=1"]).pretrain.blr, float)


@pytest.mark.parametrize("override, suggestion", [
    ("model.mask_ratoi=0.5", "model.mask_ratio"),
    ("modle.mask_ratio=0.5", "model.mask_ratio"),
    ("pretrain.warmup_epoch=3", "pretrain.warmup_epochs"),
])
def test_unknown_override_suggests_closest(override, suggestion):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    assert override.split("=")[0] in str(err.value) and repr(suggestion) in str(err.value)


def test_unknown_yaml_key_at_any_level(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  decoder_dept: 1\n")
    with pytest.raises(UserError, match="model.decoder_dept.*'model.decoder_depth'"):
        load_config(path)
    path.write_text("pretrian:\n  epochs: 1\n")
    with pytest.raises(UserError, match="'pretrain'"):
        load_config(path)


@pytest.mark.parametrize("override, words", [
    ("model.mask_ratio=1.0", ["model.mask_ratio", "[0.0, 1.0)"]),
    ("model.mask_sampling=checker", ["model.mask_sampling", "'block'"]),
    ("model.target=rgb", ["model.target", "'norm_pixel'"]),
    ("data.name=mnist", ["data.name", "'fashion_mnist'"]),
    ("run.precision=fp8", ["run.precision", "'bf16'"]),
    ("pretrain.epochs=0", ["pretrain.epochs", "positive"]),
    ("finetune.batch_size=-4", ["finetune.batch_size", "positive"]),
    ("pretrain.epochs=1.5", ["pretrain.epochs", "integer"]),
    ("model.encoder_mask_tokens=maybe", ["model.encoder_mask_tokens", "true or false"]),
    ("pretrain.warmup_epochs=900", ["pretrain.warmup_epochs", "less than"]),
    ("pretrain.betas=[0.9]", ["pretrain.betas", "two numbers"]),
])
def test_bad_values_name_field_value_and_allowed(override, words):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    assert all(w in str(err.value) for w in words), str(err.value)
    assert "\n" not in str(err.value)


def test_resolved_fills_arch_fields_and_checks_patch_divisibility():
    cfg = load_config(None, ["model.arch=mae_vit_micro_patch7_dec64d1b", "model.depth=2"]).resolved()
    assert (cfg.model.img_size, cfg.model.patch_size, cfg.model.in_chans, cfg.model.depth) == (28, 7, 1, 2)
    assert cfg.model.embed_dim == 128 and cfg.model.mlp_ratio == 4.0
    with pytest.raises(UserError, match="model.img_size=30.*multiple of model.patch_size=7"):
        load_config(None, ["model.arch=mae_vit_micro_patch7_dec64d1b", "model.img_size=30"]).resolved()
    with pytest.raises(UserError, match="mae_vit_base_patch16_dec512d8b"):
        load_config(None, ["model.arch=mae_vit_bsae_patch16_dec512d8b"]).resolved()


def test_identity_covers_results_not_bookkeeping():
    base = load_config(None, [])
    run_id = identity(base, "pretrain")
    assert len(run_id) == 12 and int(run_id, 16) >= 0
    assert identity(base.resolved(), "pretrain") == run_id                  # null vs filled arch fields
    for same in ["data.num_workers=1", "data.download=true", "run.log_every_steps=1", "finetune.epochs=30",
                 "tracking.uri=http://x", "run.device=cpu"]:
        assert identity(base.with_overrides([same]), "pretrain") == run_id, same
    for different in ["model.mask_ratio=0.5", "data.train_subset=10", "pretrain.epochs=300", "run.seed=1"]:
        assert identity(base.with_overrides([different]), "pretrain") != run_id, different
    assert identity(base.with_overrides(["finetune.epochs=30"]), "finetune") != identity(base, "finetune")


def test_written_config_with_meta_reproduces(tmp_path):
    cfg = load_config(None, ["model.mask_ratio=0.6", "tracking.tags.mae.ablations=table1a"]).resolved()
    dump_config(cfg, tmp_path / "config.yaml", meta={"git_revision": "abc", "stage": "pretrain"})
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and identity(again, "pretrain") == identity(cfg, "pretrain")
    assert flatten(cfg.to_dict())["model.mask_ratio"] == 0.6


def test_bad_files_and_override_syntax(tmp_path):
    with pytest.raises(UserError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="bad.yaml"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(UserError, match="section.key=value"):
        load_config(None, ["model.mask_ratio"])


def test_apply_overrides_nests_dotted_keys_with_the_config_rules():
    base = {"model": {"depth": 2}, "tracking": {"tags": {"a": "1"}}}
    out = apply_overrides(base, {"model.mask_ratio": 0.9, "pretrain.epochs": 300, "tracking.tags.mae.preset": "tiny"})
    assert out == {"model": {"depth": 2, "mask_ratio": 0.9}, "pretrain": {"epochs": 300},
                   "tracking": {"tags": {"a": "1", "mae.preset": "tiny"}}}
    assert base == {"model": {"depth": 2}, "tracking": {"tags": {"a": "1"}}}  # the input is not modified
    assert Config.from_dict(out).model.mask_ratio == 0.9
    with pytest.raises(UserError, match="'model.mask_ratoi' in rows\\[0\\].set; did you mean 'model.mask_ratio'"):
        apply_overrides(base, {"model.mask_ratoi": 0.5}, "rows[0].set")
    for key in ("modle.depth", "model", "model.depth.x", "meta.stage"):
        with pytest.raises(UserError, match="unknown key"):
            apply_overrides(base, {key: 1})
    with pytest.raises(UserError) as err:  # a section where a key was meant: not "did you mean 'model'?"
        apply_overrides(base, {"model": 3})
    assert str(err.value).startswith("unknown key 'model' in override: it is a section; allowed model.KEY=VALUE "
                                     "with KEY one of arch, img_size, "), str(err.value)



MICRO = "model.arch=mae_vit_micro_patch7_dec64d1b"


@pytest.mark.parametrize("overrides, message", [
    (["model.mask_sampling=grid", "model.mask_ratio=0.5"],
     "model.mask_ratio=0.5 is invalid: allowed 0.75 with model.mask_sampling='grid'"),
    ([MICRO, "model.mask_sampling=grid", "model.img_size=35"], "a patch grid with even sides, got 5x5 patches"),
    ([MICRO, "model.num_heads=5"], "model.num_heads=5 is invalid: allowed a divisor of model.embed_dim=128"),
    ([MICRO, "model.decoder_embed_dim=66", "model.decoder_num_heads=3"],
     "model.decoder_embed_dim=66 is invalid: allowed a multiple of 4 (2D sin-cos position table)"),
    ([MICRO, "model.target=pca"], "model.pca_components=96 is invalid: allowed an integer in [1, 49]"),
    ([MICRO, "model.mask_sampling=grid", "model.img_size=[14,21]"], "a patch grid with even sides, got 2x3 patches"),
    ([MICRO, "model.img_size=[14,30]"], "model.img_size=[14, 30] is invalid: allowed a positive multiple of "
     "model.patch_size=7 up to 4096 (an integer, or [height, width]) with at most 65536 patches"),
])
def test_resolved_config_checks_the_rules_the_model_checks(overrides, message):
    """The cross-field rules fail at config time (so when the workflow is parsed), with the model's message."""
    from mae.model import create_mae_model

    with pytest.raises(UserError) as err:
        load_config(None, overrides).resolved()
    assert message in str(err.value) and "\n" not in str(err.value)
    settings = {k.removeprefix("model."): yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides)}
    with pytest.raises(UserError) as model_err:
        create_mae_model(settings.pop("arch", Config().model.arch), **settings)
    assert str(model_err.value) == str(err.value)


def test_resolved_config_checks_the_data_rules():
    with pytest.raises(UserError, match=r"model.in_chans=2 is invalid: allowed 1 or 3"):
        load_config(None, [MICRO, "model.in_chans=2"]).resolved()


# Every config key, classified: what changes a pretraining's results is in its run id (#17 item 7).
# A new key fails this test until it is put in one of the two sets (and, if outside, said why in identity()).
OUTSIDE_IDENTITY = {
    "data.num_workers", "data.download",                               # how data arrives, not what it is
    "run.device", "run.threads", "run.compile",                        # where / how fast (bits may differ: docs)
    "run.checkpoint_every_steps", "run.log_every_steps", "run.eval_every_epochs", "run.stop_after_steps",
    "tracking.enabled", "tracking.uri", "tracking.experiment", "tracking.run_name", "tracking.tags",
}
CHANGED = {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v / 2 if v else 0.5,
           str: lambda v: v + "x", type(None): lambda v: 3, list: lambda v: [x / 2 for x in v], dict: lambda v: {"k": "v"}}
VALID = {"model.arch": "mae_vit_base_patch16_dec512d8b", "model.mask_sampling": "block", "model.target": "norm_pixel",
         "model.tokenizer": "a.b:c", "data.name": "cifar10", "data.root": "/data", "data.crop_min_scale": 0.5,
         "pretrain.augmentation": "none", "run.device": "cpu", "run.precision": "bf16", "finetune.global_pool": "token",
         "finetune.randaug": "rand-m7", "finetune.checkpoint": "/x.pth", "linprobe.checkpoint": "/x.pth",
         "model.img_size": 448, "model.patch_size": 32, "model.embed_dim": 512, "model.decoder_embed_dim": 256,
         "model.in_chans": 1, "pretrain.warmup_epochs": 10, "finetune.warmup_epochs": 2, "linprobe.warmup_epochs": 2,
         "model.mask_ratio": 0.5, "pretrain.betas": [0.9, 0.99], "model.pca_components": 48,
         "finetune.layer_decay": 0.5, "finetune.reprob": 0.5, "data.num_classes": 1000, "model.num_heads": 8,
         "model.decoder_num_heads": 8, "model.depth": 3, "model.decoder_depth": 3, "model.mlp_ratio": 2.0,
         "tracking.uri": "http://x", "tracking.run_name": "r", "linprobe.features": "cached", "data.val_split": 1000,
         "pretrain.checkpoint": "/x.pth", "finetune.ema_decay": 0.9999}


@pytest.mark.parametrize("stage", ["pretrain", "finetune", "linprobe"])
def test_identity_audit_every_key(stage):
    from mae.run_folder import flatten
    base = load_config(None, [])
    run_id = identity(base, stage)
    for key, value in flatten(base.to_dict()).items():
        section = key.split(".")[0]
        new = VALID.get(key, CHANGED[type(value)](value))
        if key == "model.target" or key == "model.tokenizer":
            continue  # the token target needs a tokenizer: covered by model.target=norm_pixel above
        changed = identity(base.with_overrides([f"{key}={json.dumps(new)}"]), stage)
        inside = key not in OUTSIDE_IDENTITY and section not in set(("pretrain", "finetune", "linprobe")) - {stage}
        assert (changed != run_id) == inside, (key, new)


def test_precision_in_identity_only_when_configured():
    base = load_config(None, [])
    auto = identity(base, "pretrain")
    ids = {p: identity(base.with_overrides([f"run.precision={p}"]), "pretrain") for p in ("fp32", "bf16", "fp16")}
    assert len({auto, *ids.values()}) == 4


@pytest.mark.parametrize("ratio", ["0", "0.0", "0.95", "0.99"])
def test_pretraining_mask_ratio_must_remove_and_keep_a_patch(ratio):
    cfg = load_config(None, ["model.arch=mae_vit_micro_patch7_dec64d1b", f"model.mask_ratio={ratio}"])
    with pytest.raises(UserError, match=r"model.mask_ratio=.*removes and keeps at least one of the 16 patches"):
        identity(cfg, "pretrain")
    identity(cfg, "finetune")  # the ratio plays no part in fine-tuning


def test_rectangular_img_size_is_height_width():
    cfg = load_config(None, [MICRO, "model.img_size=[14,28]"]).resolved()
    assert cfg.model.img_size == [14, 28]
    assert identity(cfg, "pretrain") != identity(load_config(None, [MICRO]), "pretrain")
    # A square written as [side, side] is the same run as the side alone (the micro arch's images are 28).
    for stage in ("pretrain", "finetune"):
        assert (identity(load_config(None, [MICRO, "model.img_size=[28,28]"]), stage)
                == identity(load_config(None, [MICRO, "model.img_size=28"]), stage)
                == identity(load_config(None, [MICRO]), stage))
    with pytest.raises(UserError, match=r"removes and keeps at least one of the 2 patches"):  # 1x2 patches
        identity(load_config(None, [MICRO, "model.img_size=[7,14]"]), "pretrain")
    for bad, allowed in (("[14]", "a positive integer up to 4096, or [height, width]"), ("[14,28,3]", "[height, width]"),
                         ("[0,14]", "a positive integer"), ("[14.5,28]", "a list of integers"),
                         ("[7,70000]", "up to 4096"), ("[4095,4095]", "at most 65536 patches")):
        with pytest.raises(UserError, match=r"model\.img_size=.*" + re.escape(allowed)):
            load_config(None, [MICRO, f"model.img_size={bad}"]).resolved()


def test_yaml_bounds_and_duplicates(tmp_path):
    from mae.config import MAX_YAML_NODES
    bomb = "".join(f"{k}: &{k} [{', '.join(['*' + p] * 9 if p else ['x'] * 9)}]\n"
                   for p, k in zip(["", "a", "b", "c", "d", "e"], "abcdef"))
    (tmp_path / "bomb.yaml").write_text("meta:\n" + "".join("  " + line + "\n" for line in bomb.splitlines()))
    with pytest.raises(UserError, match=f"bomb.yaml: YAML aliases expand to more than {MAX_YAML_NODES}"):
        load_config(tmp_path / "bomb.yaml")
    (tmp_path / "dup.yaml").write_text("model: {mask_ratio: 0.5}\nmodel: {depth: 2}\n")
    with pytest.raises(UserError, match="dup.yaml: key 'model' appears twice"):
        load_config(tmp_path / "dup.yaml")
    (tmp_path / "merge.yaml").write_text("x: &b {mask_ratio: 0.5}\n".replace("x", "meta") + "model: {<<: *b, mask_ratio: 0.6}\n")
    assert load_config(tmp_path / "merge.yaml").model.mask_ratio == 0.6  # a merge key may be overridden
    (tmp_path / "latin.yaml").write_bytes("tracking: {experiment: caf\xe9}\n".encode("latin-1"))
    with pytest.raises(UserError, match="latin.yaml is not UTF-8"):
        load_config(tmp_path / "latin.yaml")
    with pytest.raises(UserError, match="run.seed"):
        load_config(None, [f"run.seed={2 ** 64}"])


def test_a_new_arch_on_a_resolved_config_takes_the_new_shapes(tmp_path):
    # `mae config` output (every arch field filled in) with model.arch changed used to keep the old shapes:
    # a run named mae_vit_micro_patch4 trained patch 7, the old model's FLOPs and loss
    from pathlib import Path
    smoke = Path(__file__).resolve().parents[1] / "workflow/presets/smoke.yaml"
    saved = tmp_path / "saved.yaml"
    dump_config(load_config(smoke).resolved(), saved)
    new = ["model.arch=mae_vit_micro_patch4_dec64d1b"]
    from_saved, from_preset = load_config(saved, new).resolved(), load_config(smoke, new).resolved()
    shape = ("patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
             "decoder_num_heads", "mlp_ratio")
    assert from_saved.model.patch_size == 4
    assert [getattr(from_saved.model, f) for f in shape] == [getattr(from_preset.model, f) for f in shape]
    assert (from_saved.model.img_size, from_saved.model.in_chans) == (28, 1)  # the data's: kept
    # a value that differs from the old arch's was chosen on purpose: it stays; so do the data's fields
    chosen = yaml.safe_load(saved.read_text())
    chosen["model"]["depth"] = 2
    saved.write_text(yaml.safe_dump(chosen))
    kept = load_config(saved, new).resolved().model
    assert (kept.depth, kept.patch_size, kept.img_size, kept.in_chans) == (2, 4, 28, 1)
    # the same arch again, or an override of the field itself, changes nothing else
    assert load_config(saved, ["model.arch=mae_vit_micro_patch7_dec64d1b"]).resolved().model.depth == 2
    assert load_config(saved, [*new, "model.patch_size=7"]).resolved().model.patch_size == 7


@pytest.mark.parametrize("uri, hint", [("foo://bar", ""), ("mlflow.db", " (for a database file: sqlite:///mlflow.db)"),
                                       ("http//host:5000", "")])
def test_a_tracking_uri_without_a_store_mlflow_has_is_refused(uri, hint):
    # foo:// or a bare mlflow.db (MLflow would make a folder of files by that name) trained with a warning
    with pytest.raises(UserError) as err:
        load_config(None, [f"tracking.uri={uri}"])
    assert str(err.value) == (f"tracking.uri={uri!r} is invalid: allowed a URI of an MLflow store: http(s)://host:port, "
                              "sqlite:///path.db, postgresql://, mysql://, mssql://, file:///folder or databricks" + hint)
    for good in ("sqlite:////tmp/m.db", "http://mlflow:5000", "postgresql+psycopg2://u@h/db", "file:///tmp/mlruns"):
        assert load_config(None, [f"tracking.uri={good}"]).tracking.uri == good

