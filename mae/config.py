"""Typed configuration: defaults < YAML file < `section.key=value` overrides.

Defaults are the paper's default setting (Table 1: ViT-L/16, 800 epochs, pixel target, 75% random
masking, 8-block 512-d decoder, RandomResizedCrop) and the official fine-tune / linear-probe recipes.

    cfg = load_config("workflow/presets/tiny.yaml", ["model.decoder_depth=1", "pretrain.epochs=2"])
    cfg = cfg.resolved()               # model fields filled from the named architecture
    run_id = identity(cfg, "pretrain") # 12 hex chars, stable across machines

Every mistake (unknown key, wrong type, value out of range) raises `mae.errors.UserError` with the
dotted key, the value and what is allowed; unknown keys come with the closest valid key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

import yaml

from mae.archs import MAE_ARCHS
from mae.choices import (
    AUGMENTATIONS, DATASETS, GLOBAL_POOLS, LINPROBE_FEATURES, MASK_SAMPLINGS, OFFICIAL_CROP_MIN_SCALE, PRECISIONS, STAGES, TARGETS,
    check_img_size, check_in_chans, check_mask_grid, check_mask_ratio, check_pca_components, check_pretrain_mask,
    check_tracking_uri, check_trainable_blocks,
    check_width, image_hw, torchvision_size,
)
from mae.errors import UserError, check_choice, check_range
from mae.yaml_loading import MAX_YAML_BYTES, MAX_YAML_NODES, load_yaml_file, load_yaml_text  # noqa: F401

ARCH_FIELDS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
               "decoder_embed_dim", "decoder_depth", "decoder_num_heads", "mlp_ratio")
# The fields that make an architecture what it is; img_size and in_chans describe the data it reads.
ARCH_SHAPE_FIELDS = tuple(name for name in ARCH_FIELDS if name not in ("img_size", "in_chans"))
# Keys of a YAML file that are not configuration: `meta` is what we write next to a run's config.
IGNORED_TOP_LEVEL_KEYS = ("meta",)
# Data keys that do not change what is computed, so they stay out of the run identity.
DATA_KEYS_OUTSIDE_IDENTITY = ("num_workers", "download")
# Keys added after run ids were published: at their default they stay out of the identity, so every
# config that does not set them keeps its run id (a set value changes the id as any other key does).
KEYS_OUTSIDE_IDENTITY_AT_DEFAULT = {"data.val_split": None, "linprobe.features": "augmented",
                                    "pretrain.checkpoint": None, "finetune.ema_decay": None,
                                    "finetune.betas": [0.9, 0.999]}
MAX_INT64 = 2 ** 63 - 1  # every integer setting fits a signed 64-bit integer (torch, numpy, sqlite)


@dataclass
class ModelConfig:
    arch: str = "mae_vit_large_patch16_dec512d8b"
    img_size: int | list[int] | None = None  # a square's side, or [height, width]
    patch_size: int | None = None
    in_chans: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    decoder_embed_dim: int | None = None
    decoder_depth: int | None = None
    decoder_num_heads: int | None = None
    mlp_ratio: float | None = None
    mask_ratio: float = 0.75
    mask_sampling: str = "random"
    encoder_mask_tokens: bool = False
    target: str = "pixel"
    pca_components: int = 96
    tokenizer: str | None = None

    def validate(self) -> None:
        check_mask_ratio(self.mask_ratio, self.mask_sampling)
        check_choice("model.mask_sampling", self.mask_sampling, MASK_SAMPLINGS)
        check_choice("model.target", self.target, TARGETS)
        _check_positive("model.pca_components", self.pca_components)
        for name in ARCH_FIELDS:
            value = getattr(self, name)
            if name == "img_size" and value is not None:
                check_img_size(value, None)
            elif value is not None:
                _check_positive(f"model.{name}", value)
        if self.tokenizer is not None and not re.fullmatch(r"[\w.]+:[\w.]+", self.tokenizer):
            raise UserError("model.tokenizer", self.tokenizer, "a 'package.module:callable' path or null")
        if self.target == "token" and self.tokenizer is None:
            raise UserError("model.tokenizer", None, "a 'package.module:callable' path when model.target is 'token'")
        # The rules between fields, as the model checks them; a resolved config has every field set.
        if self.in_chans is not None:
            check_in_chans(self.in_chans)
        if self.img_size is not None and self.patch_size is not None:
            height, width = check_img_size(self.img_size, self.patch_size)
            check_mask_grid(self.mask_sampling, (height // self.patch_size, width // self.patch_size))
        for dim, heads in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
            if getattr(self, dim) is not None and getattr(self, heads) is not None:
                check_width(f"model.{dim}", getattr(self, dim), f"model.{heads}", getattr(self, heads))
        if self.target == "pca" and self.patch_size is not None and self.in_chans is not None:
            check_pca_components(self.pca_components, self.patch_size ** 2 * self.in_chans)


@dataclass
class DataConfig:
    name: str = "imagenet"
    root: str | None = None
    num_classes: int | None = None
    train_subset: int | None = None
    val_subset: int | None = None
    val_split: int | None = None  # hold out N training images as the "val" split (the test set is not read)
    crop_min_scale: float | None = None
    num_workers: int = 8
    download: bool = False

    def validate(self) -> None:
        check_choice("data.name", self.name, DATASETS)
        for name in ("num_classes", "train_subset", "val_subset", "val_split"):
            if getattr(self, name) is not None:
                _check_positive(f"data.{name}", getattr(self, name))
        _check_non_negative("data.num_workers", self.num_workers)
        if self.crop_min_scale is not None and not 0.0 < self.crop_min_scale <= 1.0:
            raise UserError("data.crop_min_scale", self.crop_min_scale,
                            f"null (the official {OFFICIAL_CROP_MIN_SCALE['pretrain']} for pre-training, "
                            f"{OFFICIAL_CROP_MIN_SCALE['finetune']} for fine-tuning and linear probing) or a number in (0, 1]")
        if self.name == "image_folder" and self.root is None:
            raise UserError("data.root", None, "a folder with train/ and val/ subfolders when data.name is 'image_folder'")


@dataclass
class PretrainConfig:
    # Weights to start from (null = the arch's initialisation): a model.pth, or an official MAE training
    # checkpoint-N.pth, which continues as the official --resume does (weights, AdamW moments, grad scaler,
    # from epoch N+1 of `epochs`).
    checkpoint: str | None = None
    epochs: int = 800
    warmup_epochs: float = 40
    batch_size: int = 4096
    micro_batch_size: int | None = None
    blr: float = 1.5e-4
    lr: float | None = None
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    clip_grad: float | None = None
    augmentation: str = "crop_rand"

    def validate(self) -> None:
        _validate_schedule("pretrain", self)
        _check_betas("pretrain.betas", self.betas)
        if self.clip_grad is not None:
            _check_positive("pretrain.clip_grad", self.clip_grad)
        check_choice("pretrain.augmentation", self.augmentation, AUGMENTATIONS)


@dataclass
class FinetuneConfig:
    checkpoint: str | None = None
    epochs: int = 50
    warmup_epochs: float = 5
    batch_size: int = 1024
    micro_batch_size: int | None = None
    blr: float = 1e-3
    lr: float | None = None
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    drop_path: float = 0.1
    smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    reprob: float = 0.25
    randaug: str | None = "rand-m9-mstd0.5-inc1"
    global_pool: str = "avg"
    trainable_blocks: float | None = None
    min_lr: float = 1e-6
    clip_grad: float | None = None
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    ema_decay: float | None = None  # model EMA (Table 11's from-scratch recipe: 0.9999); null = off

    def validate(self) -> None:
        _validate_schedule("finetune", self)
        _check_betas("finetune.betas", self.betas)
        if self.ema_decay is not None:
            check_range("finetune.ema_decay", self.ema_decay, 0.0, 1.0, lo_open=True)
        check_range("finetune.layer_decay", self.layer_decay, 0.0, 1.0, lo_open=True, hi_open=False)
        check_range("finetune.drop_path", self.drop_path, 0.0, 1.0)
        check_range("finetune.smoothing", self.smoothing, 0.0, 1.0)
        _check_non_negative("finetune.mixup", self.mixup)
        _check_non_negative("finetune.cutmix", self.cutmix)
        check_range("finetune.reprob", self.reprob, 0.0, 1.0, hi_open=False)
        if self.randaug is not None and self.randaug != "" and not self.randaug.startswith("rand-"):
            raise UserError("finetune.randaug", self.randaug, "a timm RandAugment string like 'rand-m9-mstd0.5-inc1', or null")
        check_choice("finetune.global_pool", self.global_pool, GLOBAL_POOLS)
        if self.trainable_blocks is not None:
            _check_non_negative("finetune.trainable_blocks", self.trainable_blocks)
        if self.clip_grad is not None:
            _check_positive("finetune.clip_grad", self.clip_grad)


@dataclass
class LinprobeConfig:
    checkpoint: str | None = None
    epochs: int = 90
    warmup_epochs: float = 10
    batch_size: int = 16384
    micro_batch_size: int | None = None
    blr: float = 0.1
    lr: float | None = None
    weight_decay: float = 0.0
    min_lr: float = 0.0
    # cached: frozen features computed once, probe trained to convergence (mae.features); pixels: the same
    # probe on the normalised pixels instead of an encoder's features (a reference row; no checkpoint)
    features: str = "augmented"

    def validate(self) -> None:
        _validate_schedule("linprobe", self)
        check_choice("linprobe.features", self.features, LINPROBE_FEATURES)
        if self.features == "pixels" and self.checkpoint is not None:
            raise UserError("linprobe.checkpoint", self.checkpoint,
                            "null with linprobe.features=pixels (the probe reads pixels, not an encoder)")


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    checkpoint_every_steps: int = 500
    log_every_steps: int = 20
    threads: int | None = None
    compile: bool = False
    eval_every_epochs: int = 0
    stop_after_steps: int | None = None

    def validate(self) -> None:
        if not 0 <= self.seed <= MAX_INT64:
            raise UserError("run.seed", self.seed, f"an integer in [0, {MAX_INT64}] (64-bit)")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise UserError("run.device", self.device, "'auto', 'cpu', 'cuda' or 'cuda:N'")
        check_choice("run.precision", self.precision, PRECISIONS)
        _check_non_negative("run.checkpoint_every_steps", self.checkpoint_every_steps)
        _check_positive("run.log_every_steps", self.log_every_steps)
        if self.threads is not None:
            _check_positive("run.threads", self.threads)
        _check_non_negative("run.eval_every_epochs", self.eval_every_epochs)
        if self.stop_after_steps is not None:
            _check_positive("run.stop_after_steps", self.stop_after_steps)


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None
    experiment: str = "mae"
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.experiment:
            raise UserError("tracking.experiment", self.experiment, "a non-empty string")
        check_tracking_uri(self.uri)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    linprobe: LinprobeConfig = field(default_factory=LinprobeConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict (section -> key -> value), safe to dump as YAML or JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "Config":
        """Build and validate a config from a nested dict over the defaults (a top-level `meta` is ignored).

        Args:
            data: section -> key -> value; missing keys keep their defaults.
            source: where the dict came from, named in error messages.
        """
        merged = cls().to_dict()
        _merge_checked(merged, data, source)
        return _build(merged)

    def stage(self, stage: str) -> PretrainConfig | FinetuneConfig | LinprobeConfig:
        """The section holding the recipe of `stage` (pretrain, finetune or linprobe)."""
        check_choice("stage", stage, STAGES)
        return getattr(self, stage)

    def resolved(self) -> "Config":
        """A copy with every null architecture field filled from `mae.archs.MAE_ARCHS[model.arch]`.

        Its validation checks every rule between model fields that the model checks when it is built
        (`mae.choices`: grid masking, widths, PCA components, channels), with the model's message.
        """

        if self.model.arch not in MAE_ARCHS:
            close = difflib.get_close_matches(self.model.arch, list(MAE_ARCHS), n=1, cutoff=0.0)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError("model.arch", self.model.arch, "one of " + ", ".join(repr(a) for a in MAE_ARCHS) + hint)
        arch = MAE_ARCHS[self.model.arch]
        data = self.to_dict()
        for name in ARCH_FIELDS:
            if data["model"][name] is None and name in arch:
                data["model"][name] = arch[name]
        return _build(data)

    def with_overrides(self, overrides: Iterable[str]) -> "Config":
        """A copy with `section.key=value` overrides applied (values parsed as YAML)."""
        return _build(apply_overrides(self.to_dict(), dict(map(parse_override, overrides)), "overrides"))


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults < the YAML file at `path` (if given) < `section.key=value` overrides.

    Args:
        path: a YAML file with one mapping per section; a top-level `meta:` block is ignored, so a
            run's own `config.yaml` reproduces the run.
        overrides: strings like `model.mask_ratio=0.9`, `pretrain.betas=[0.9,0.95]`, `finetune.checkpoint=null`.
    """
    data = Config().to_dict()
    if path is not None:
        _merge_checked(data, read_yaml(path), str(path))
    return _build(apply_overrides(data, dict(map(parse_override, overrides)), "overrides"))


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any], source: str = "override") -> dict[str, Any]:
    """A new nested dict: `data` with dotted `overrides` applied, keys checked against the config's fields.

    `{'model': {'depth': 2}}` with `{'model.mask_ratio': 0.9}` -> `{'model': {'depth': 2, 'mask_ratio': 0.9}}`.
    A dict-valued field takes the rest of the key as one dict key (`tracking.tags.mae.preset`); values
    are not type-checked here (`Config.from_dict` does that).

    Args:
        data: section -> key -> value, possibly partial (a preset file); it is not modified.
        overrides: dotted key -> Python value (`parse_override` turns a `key=value` string into one).
        source: where the overrides came from, named in the unknown-key error.
    """
    data = copy.deepcopy(data)
    _follow_new_arch(data, overrides.get("model.arch"))
    for key, value in overrides.items():
        _set_dotted(data, key, value, source)
    return data


def _follow_new_arch(data: dict[str, Any], new_arch: Any) -> None:
    """When an override changes `model.arch`, the shape fields that only restate the old architecture's
    values (a resolved config: `mae config`'s output, a run's config.yaml) are cleared, so they follow the
    new one; a value that differs from the old architecture's (chosen on purpose) stays, as do img_size and
    in_chans (the data's). Without this, `model.arch=` on a resolved config trained the old shapes under the
    new name."""
    model = data.get("model")
    old_arch = model.get("arch") if isinstance(model, dict) else None
    if new_arch is None or new_arch == old_arch or old_arch not in MAE_ARCHS:
        return
    for name in ARCH_SHAPE_FIELDS:
        if name in model and model[name] == MAE_ARCHS[old_arch][name]:
            model[name] = None


def read_yaml(path: str | Path, field: str = "--config") -> dict[str, Any]:
    """Read a YAML mapping, turning a missing, oversized, binary or malformed file into a UserError naming it."""
    data = load_yaml_file(path, field)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(field, str(path), "a YAML mapping of sections (model:, data:, pretrain:, ...)")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """`'model.mask_ratio=0.9'` -> `('model.mask_ratio', 0.9)`; the value is parsed as bounded YAML."""
    if "=" not in item:
        raise UserError("override", item, "'section.key=value' (e.g. model.mask_ratio=0.9)")
    key, text = item.split("=", 1)
    key = key.strip()
    try:
        value = load_yaml_text(text, f"override {key}", key) if text.strip() else None
    except UserError as err:
        if "twice" in str(err) or "alias" in str(err):
            raise
        value = text  # an unparsable value is taken as a plain string; the type check decides
    return key, value


def identity(cfg: Config, stage: str) -> str:
    """Run identity of `stage` under `cfg`: 12 hex chars of the sha1 of canonical JSON.

    Covers every key that changes what the run computes: the resolved `model`, `data` without the keys
    that do not (num_workers, download), the stage's section, `run.seed` and `run.precision` as
    configured (left out while it is 'auto', so run ids from before it counted stay; 'auto' resolves per
    device, and a resume refuses a checkpoint written at another resolved precision). The other `run`
    keys (device, threads, compile, logging, checkpoint cadence, stop_after_steps, evaluation cadence)
    and `tracking` do not change the identity (tests/test_config.py audits every key). Keys of
    `KEYS_OUTSIDE_IDENTITY_AT_DEFAULT` enter it only when set to another value than their default.
    A config that cannot run `stage` has no identity: `check_stage` raises first.
    """
    check_stage(cfg, stage)
    data = cfg.resolved().to_dict()
    data["model"]["img_size"] = torchvision_size(data["model"]["img_size"])  # [28, 28] is the square 28: one id
    for key, default in KEYS_OUTSIDE_IDENTITY_AT_DEFAULT.items():
        section, name = key.split(".")
        if data[section][name] == default:
            del data[section][name]
    content = {
        "model": data["model"],
        "data": {k: v for k, v in data["data"].items() if k not in DATA_KEYS_OUTSIDE_IDENTITY},
        stage: data[stage],
        "seed": data["run"]["seed"],
    }
    if data["run"]["precision"] != "auto":
        content["precision"] = data["run"]["precision"]
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(canonical.encode()).hexdigest()[:12]


def check_stage(cfg: Config, stage: str) -> None:
    """The rules that hold only for one stage (pretraining: a mask ratio that removes and keeps a patch;
    fine-tuning: no more trainable blocks than the model has).

    Called by `identity`, so both `mae <stage>` and the workflow's parse (every grid cell) check them.
    """
    check_choice("stage", stage, STAGES)
    if stage == "pretrain":
        model = cfg.resolved().model
        height, width = image_hw(model.img_size)
        check_pretrain_mask(model.mask_ratio, (height // model.patch_size) * (width // model.patch_size))
    if stage == "finetune" and cfg.finetune.trainable_blocks is not None:
        check_trainable_blocks(cfg.finetune.trainable_blocks, cfg.resolved().model.depth)


def dump_config(cfg: Config, path: str | Path, meta: dict[str, Any] | None = None) -> None:
    """Write `cfg` as YAML (sections in order), with an optional `meta:` block that loading ignores."""
    data: dict[str, Any] = cfg.to_dict()
    if meta is not None:
        data["meta"] = meta
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


# ----------------------------------------------------------------------------------------------
# internals


def _section_classes() -> dict[str, type]:
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def keys_named(name: str, stage: str | None = None) -> list[str]:
    """The config keys whose last part is `name` (`epochs` -> pretrain.epochs, finetune.epochs, ...); with
    `stage`, that stage's own key alone when it has one. For a hint when `--epochs 3` is given."""
    keys = [key for key in _valid_keys() if key.rsplit(".", 1)[1] == name.replace("-", "_")]
    own = [key for key in keys if stage is not None and key.startswith(f"{stage}.")]
    return own or keys


def _valid_keys() -> list[str]:
    keys = []
    for section, klass in _section_classes().items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(klass)]
    return keys


def _unknown_key(key: str, source: str) -> UserError:
    sections = _section_classes()
    if key in sections:  # `model=3`: a section where a key was meant (not "did you mean 'model'?")
        names = ", ".join(f.name for f in dataclasses.fields(sections[key]))
        return UserError.message(key, f"unknown key {key!r} in {source}: it is a section; allowed {key}.KEY=VALUE "
                                 f"with KEY one of {names}")
    candidates = _valid_keys() if "." in key else list(sections)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if not close and "." in key:  # a misspelt section with a correct key: match on the last part
        tail = key.rsplit(".", 1)[1]
        close = [k for k in candidates if k.endswith("." + tail)][:1]
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid sections: {', '.join(sections)}"
    return UserError.message(key, f"unknown key {key!r} in {source}{hint}")


@functools.cache
def _type_hints(klass: type) -> dict[str, Any]:
    return typing.get_type_hints(klass)


def _is_dict_field(section: str, name: str) -> bool:
    hints = _type_hints(_section_classes()[section])
    return typing.get_origin(hints.get(name)) is dict


def _merge_checked(base: dict[str, Any], data: dict[str, Any], source: str) -> None:
    for section, values in data.items():
        if section in IGNORED_TOP_LEVEL_KEYS:
            continue
        if section not in base:
            raise _unknown_key(str(section), source)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UserError(str(section), values, f"a mapping of {section} keys in {source}")
        for name, value in values.items():
            if name not in base[section]:
                raise _unknown_key(f"{section}.{name}", source)
            base[section][name] = value


def _set_dotted(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    parts = str(key).split(".")
    classes = _section_classes()
    if len(parts) < 2 or parts[0] not in classes:
        raise _unknown_key(str(key), source)
    section, name = parts[0], parts[1]
    if name not in {f.name for f in dataclasses.fields(classes[section])}:
        raise _unknown_key(str(key), source)
    values = data.get(section)
    if values is None:
        values = data[section] = {}
    elif not isinstance(values, dict):
        raise UserError(section, values, f"a mapping of {section} keys in {source}")
    if len(parts) == 2:
        values[name] = value
    elif _is_dict_field(section, name):  # tracking.tags.mae.preset=tiny: the rest is the dict key
        current = values.get(name)
        values[name] = {**(current if isinstance(current, dict) else {}), ".".join(parts[2:]): value}
    else:
        raise _unknown_key(str(key), source)


def _build(data: dict[str, dict[str, Any]]) -> Config:
    sections = {}
    for section, klass in _section_classes().items():
        hints = _type_hints(klass)
        values = {name: _coerce(f"{section}.{name}", value, hints[name]) for name, value in data[section].items()}
        sections[section] = klass(**values)
        sections[section].validate()
    return Config(**sections)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; ints become floats where a float is declared."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except UserError:
                pass
        raise UserError(name, value, _describe(tp))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(name, value, _describe(tp))
        (item_type,) = typing.get_args(tp)
        return [_coerce(f"{name}[{i}]", v, item_type) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(name, value, _describe(tp))
        return {str(k): (v if v is None or isinstance(v, (str, bool, int, float)) else str(v)) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -MAX_INT64 - 1 <= value <= MAX_INT64:
                raise UserError(name, value, "an integer that fits in 64 bits")
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise UserError(name, value, _describe(tp))


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise UserError(name, value, "a positive number")


def _check_non_negative(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
        raise UserError(name, value, "a number >= 0")


def _check_betas(name: str, betas: list[float]) -> None:
    if len(betas) != 2:
        raise UserError(name, betas, "a list of two numbers in [0, 1)")
    for i, beta in enumerate(betas):
        check_range(f"{name}[{i}]", beta, 0.0, 1.0)


def _validate_schedule(stage: str, section: Any) -> None:
    _check_positive(f"{stage}.epochs", section.epochs)
    _check_non_negative(f"{stage}.warmup_epochs", section.warmup_epochs)
    if section.warmup_epochs >= section.epochs:
        raise UserError(f"{stage}.warmup_epochs", section.warmup_epochs, f"less than {stage}.epochs={section.epochs}")
    _check_positive(f"{stage}.batch_size", section.batch_size)
    if section.micro_batch_size is not None:
        _check_positive(f"{stage}.micro_batch_size", section.micro_batch_size)
        if section.micro_batch_size > section.batch_size:
            raise UserError(f"{stage}.micro_batch_size", section.micro_batch_size, f"at most {stage}.batch_size={section.batch_size}")
    _check_positive(f"{stage}.blr", section.blr)
    if section.lr is not None:
        _check_positive(f"{stage}.lr", section.lr)
    _check_non_negative(f"{stage}.min_lr", section.min_lr)
    _check_non_negative(f"{stage}.weight_decay", section.weight_decay)
