"""Hostile inputs (issue #17, items 3 YAML, 4, 5): config files, overrides, data files, paths, checkpoints,
tracking settings and ablation files that a careless or hostile user could hand the harness.

Each case runs the real `mae` CLI (or `snakemake -n` on a throw-away copy of the workflow for ablation
files) and asserts: the exit code (2 for `mae`; non-zero for Snakemake), one line on stderr that names
the field or the file, no traceback anywhere, and nothing half-written in the case's folders (no
metrics.json, no model.pth, no `.*.tmp.<pid>` file). Signals are in test_reliability_signals.py.

    pytest tests/test_hostile_inputs.py            # ~70 processes, 3 at a time
    python tests/make_reliability_table.py         # the rows land in docs/RELIABILITY.md
"""
from __future__ import annotations

import errno
import gzip
import json
import os
import pickle
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from test_reliability_common import (MAE, SMOKE, VENV_BIN, fault, mae_env, one_error_line,  # noqa: F401
                                     run_many, workflow_copy, workflow_error_line)

pytestmark = pytest.mark.slow

S = str(SMOKE)
T = "{tmp}"          # the module's shared folder (inputs)
OUT = "{case}/out"   # each case's own --out


@dataclass
class Case:
    name: str
    cls: str                   # the issue's class: "memory bound", "user mistake", "checkpoint hygiene", ...
    what: str                  # the fault, for the table
    args: list[str]            # `mae` arguments, or snakemake --config items for ablation cases
    expect: list[str]          # substrings the one error line must hold (the field or file, what is wrong)
    ablation: bool = False
    files: dict[str, str | bytes] = field(default_factory=dict)  # written into the case folder (or ablations/)
    exit_code: int = 2
    forbid: list[str] = field(default_factory=list)  # must not appear in the output


# The image-folder cases hold a few images: no subset (the preset's 64 is more than the folder has,
# which is a user error of its own, raised before the images are read).
ALL_IMAGES = ("data.train_subset=null", "data.val_subset=null")


def _pt(*overrides: str, config: str = S) -> list[str]:
    return ["pretrain", "--config", config, "--out", OUT, *overrides]


def _ft(*overrides: str) -> list[str]:
    return ["finetune", "--config", S, "--out", OUT, *overrides]


def _cfg(name: str, what: str, text: str | bytes, expect: list[str], cls: str = "user mistake") -> Case:
    return Case(name, cls, "config file: " + what, _pt(config="{case}/c.yaml"), expect, files={"c.yaml": text})


# nine-fold nested aliases: 585 bytes that expand to 9**6 = 531441 values (gigabytes once copied and printed)
BOMB = "".join(f"{k}: &{k} [{', '.join(['*' + p] * 9 if p else ['x'] * 9)}]\n"
               for p, k in zip(["", "a", "b", "c", "d", "e"], "abcdef"))
BOMB_FLOW = "{" + ", ".join(f"{k}: &{k} [{', '.join(['*' + p] * 9 if p else ['x'] * 9)}]"
                            for p, k in zip(["", "a", "b", "c", "d", "e"], "abcdef")) + "}"
INDENTED_BOMB = "".join("  " + line + "\n" for line in BOMB.splitlines())
TAGS_BOMB = "tracking:\n  tags:\n" + "".join("    " + line + "\n" for line in BOMB.splitlines())

CASES = [
    # ---- item 3: a small YAML must not grow to gigabytes
    _cfg("yaml_alias_bomb_tags", "585-byte nested aliases in tracking.tags", TAGS_BOMB,
         ["c.yaml", "aliases expand to more than 100000"], "memory bound"),
    _cfg("yaml_alias_bomb_meta", "nested aliases inside the ignored meta: block", "meta:\n" + INDENTED_BOMB,
         ["c.yaml", "aliases expand"], "memory bound"),
    _cfg("yaml_alias_bomb_top", "nested aliases as unknown top-level keys", BOMB, ["c.yaml", "aliases expand"], "memory bound"),
    _cfg("yaml_alias_self", "an alias inside its own anchor (a: &x [*x])", "tracking:\n  tags: &x [*x]\n",
         ["c.yaml", "alias refers to itself"], "memory bound"),
    _cfg("yaml_too_big", "a 2 MiB config file", "# padding\n" * 200_000, ["c.yaml", "bytes", "at most 1048576"], "memory bound"),
    _cfg("yaml_deep_nesting", "10000 nested flow lists", "model: " + "[" * 10000 + "]" * 10000 + "\n",
         ["c.yaml", "not valid YAML"], "memory bound"),
    Case("override_alias_bomb", "memory bound", "override tracking.tags=<one-line nested aliases>",
         _pt("tracking.tags=" + BOMB_FLOW), ["tracking.tags", "aliases expand"]),
    # ---- config files
    _cfg("yaml_duplicate_section", "model: given twice (the first silently dropped before)",
         "model: {mask_ratio: 0.5}\ndata: {train_subset: 64}\nmodel: {decoder_depth: 1}\n", ["c.yaml", "'model'", "twice", "line 3"]),
    _cfg("yaml_duplicate_key", "model.mask_ratio given twice in one section",
         "model:\n  mask_ratio: 0.5\n  mask_ratio: 0.9\n", ["c.yaml", "'mask_ratio'", "twice"]),
    _cfg("yaml_binary", "random binary bytes", bytes(range(256)) * 4, ["c.yaml", "not UTF-8"]),
    _cfg("yaml_latin1", "Latin-1 text (not UTF-8)", "tracking: {experiment: caf\xe9}\n".encode("latin-1"),
         ["c.yaml", "not UTF-8", "0xe9"]),
    _cfg("yaml_nul_bytes", "a NUL byte in UTF-8 text", "model: {arch: a\x00b}\n", ["c.yaml", "not valid YAML"]),
    _cfg("yaml_python_tag", "!!python/object/apply:os.system tag",
         "model: !!python/object/apply:os.system ['echo pwned']\n", ["c.yaml", "not valid YAML"]),
    _cfg("yaml_unhashable_key", "a list as a mapping key", "? [a, b]\n: 1\n", ["c.yaml", "not valid YAML"]),
    _cfg("yaml_undefined_alias", "an alias without anchor", "model: *nope\n", ["c.yaml", "not valid YAML", "nope"]),
    _cfg("yaml_mask_ratio_zero", "model.mask_ratio: 0 (trained on zero removed patches, loss 0, exit 0 before)",
         "model: {mask_ratio: 0}\n", ["model.mask_ratio=0", "removes and keeps"]),
    _cfg("yaml_seed_beyond_64_bits", "run.seed: 2**64", f"run: {{seed: {2 ** 64}}}\n", ["run.seed", str(2 ** 64), "64 bits"]),
    _cfg("yaml_tags_not_mapping", "tracking.tags: a list", "tracking: {tags: [a, b]}\n", ["tracking.tags", "a mapping"]),
    Case("config_is_folder", "user mistake", "--config names a folder", _pt(config=T), ["--config", "an existing YAML file"]),
    # ---- overrides
    Case("override_mask_ratio_zero", "user mistake", "override model.mask_ratio=0 for pretraining",
         _pt("model.mask_ratio=0"), ["model.mask_ratio=0", "removes and keeps", "16 patches"]),
    Case("override_mask_ratio_keeps_none", "user mistake", "override model.mask_ratio=0.99 (keeps no visible patch of 16)",
         _pt("model.mask_ratio=0.99"), ["model.mask_ratio=0.99", "removes and keeps"]),
    Case("override_seed_2_64", "user mistake", "override run.seed=2**64", _pt(f"run.seed={2 ** 64}"),
         ["run.seed", str(2 ** 64), "64 bits"]),
    Case("override_seed_2_63", "user mistake", "override run.seed=2**63 (past signed 64-bit)", _pt(f"run.seed={2 ** 63}"),
         ["run.seed", str(2 ** 63)]),
    Case("override_seed_negative", "user mistake", "override run.seed=-1", _pt("run.seed=-1"), ["run.seed", "-1"]),
    Case("override_epochs_huge", "user mistake", "override pretrain.epochs=10**30", _pt(f"pretrain.epochs={10 ** 30}"),
         ["pretrain.epochs", "64 bits"]),
    Case("override_duplicate_tag", "user mistake", "override tracking.tags={a: 1, a: 2}", _pt("tracking.tags={a: 1, a: 2}"),
         ["tracking.tags", "'a'", "twice"]),
    Case("override_lr_nan", "user mistake", "override pretrain.lr=.nan", _pt("pretrain.lr=.nan"), ["pretrain.lr", "nan"]),
    Case("override_warmup_inf", "user mistake", "override pretrain.warmup_epochs=.inf", _pt("pretrain.warmup_epochs=.inf"),
         ["pretrain.warmup_epochs", "inf"]),
    Case("override_num_classes_below_labels", "user mistake", "finetune with data.num_classes=3 (labels 0..9)",
         _ft("data.num_classes=3"), ["data.num_classes=3", "at least 10"]),
    Case("override_num_classes_zero", "user mistake", "override data.num_classes=0", _ft("data.num_classes=0"),
         ["data.num_classes", "positive"]),
    Case("override_img_size_zero", "user mistake", "override model.img_size=0", _pt("model.img_size=0"),
         ["model.img_size", "positive"]),
    Case("override_empty_key", "user mistake", "override '=5'", _pt("=5"), ["unknown key", "''"]),
    Case("override_section_only", "user mistake", "override model=3", _pt("model=3"), ["'model'", "unknown key"]),
    Case("override_tracking_uri_list", "user mistake", "override tracking.uri=[a, b]", _pt("tracking.uri=[a, b]"),
         ["tracking.uri", "a string"]),
    Case("override_tracking_enabled_word", "user mistake", "override tracking.enabled=maybe", _pt("tracking.enabled=maybe"),
         ["tracking.enabled", "true or false"]),
    Case("override_tracking_experiment_empty", "user mistake", "override tracking.experiment=''",
         _pt("tracking.experiment=''"), ["tracking.experiment", "non-empty"]),
    Case("override_tracking_tags_list", "user mistake", "override tracking.tags=[x]", _pt("tracking.tags=[x]"),
         ["tracking.tags", "a mapping"]),
    # ---- data files
    Case("fmnist_not_gzip", "user mistake", "Fashion-MNIST train-images-idx3-ubyte.gz holding plain text",
         _pt("data.name=fashion_mnist", "data.root={case}/fm"), ["train-images-idx3-ubyte.gz", "not a gzip file"],
         files={"fm/train-images-idx3-ubyte.gz": "not gzip at all\n", "fm/train-labels-idx1-ubyte.gz": b"LABELS"}),
    Case("fmnist_truncated_gzip", "user mistake", "Fashion-MNIST .gz cut in the middle",
         _pt("data.name=fashion_mnist", "data.root={case}/fm"), ["train-images-idx3-ubyte.gz", "truncated"],
         files={"fm/train-images-idx3-ubyte.gz": "TRUNCATED_GZ", "fm/train-labels-idx1-ubyte.gz": "LABELS_GZ"}),
    Case("fmnist_short_data", "user mistake", "Fashion-MNIST images idx: header promises 60000 images, holds 10",
         _pt("data.name=fashion_mnist", "data.root={case}/fm"), ["train-images-idx3-ubyte.gz", "header promises"],
         files={"fm/train-images-idx3-ubyte.gz": "SHORT_GZ", "fm/train-labels-idx1-ubyte.gz": "LABELS_GZ"}),
    Case("fmnist_bad_magic", "user mistake", "Fashion-MNIST idx with a float32 header",
         _pt("data.name=fashion_mnist", "data.root={case}/fm"), ["train-images-idx3-ubyte", "not a uint8 idx header"],
         files={"fm/train-images-idx3-ubyte": b"\x00\x00\x0d\x03" + b"\x00" * 64, "fm/train-labels-idx1-ubyte.gz": "LABELS_GZ"}),
    Case("fmnist_empty", "user mistake", "Fashion-MNIST images file of 0 bytes",
         _pt("data.name=fashion_mnist", "data.root={case}/fm"), ["train-images-idx3-ubyte", "shorter than the 4-byte header"],
         files={"fm/train-images-idx3-ubyte": b"", "fm/train-labels-idx1-ubyte.gz": "LABELS_GZ"}),
    Case("fmnist_label_count", "user mistake", "Fashion-MNIST: 64 images but 10 labels",
         _pt("data.name=fashion_mnist", "data.root={case}/fm"), ["data.root", "one length"],
         files={"fm/train-images-idx3-ubyte.gz": "IMAGES_GZ", "fm/train-labels-idx1-ubyte.gz": "LABELS10_GZ"}),
    Case("image_folder_text_as_jpeg", "user mistake", "image folder: a text file named x.jpg",
         _pt("data.name=image_folder", "data.root={case}/img", *ALL_IMAGES), ["x.jpg", "cannot be read"],
         files={"img/train/a/ok.png": "PNG", "img/train/a/x.jpg": "this is text\n", "img/val/a/ok.png": "PNG"}),
    Case("image_folder_empty_png", "user mistake", "image folder: a 0-byte y.png",
         _pt("data.name=image_folder", "data.root={case}/img", *ALL_IMAGES), ["y.png", "cannot be read"],
         files={"img/train/a/ok.png": "PNG", "img/train/b/y.png": b"", "img/val/a/ok.png": "PNG"}),
    Case("image_folder_truncated_png", "user mistake", "image folder: z.png cut after its header (found when loaded, in a worker)",
         _pt("data.name=image_folder", "data.root={case}/img", *ALL_IMAGES, "data.num_workers=1", "pretrain.batch_size=4",
             "pretrain.warmup_epochs=0"), ["z.png", "cannot be read"],
         files={"img/train/a/ok.png": "PNG", "img/train/a/ok2.png": "PNG", "img/train/a/ok3.png": "PNG",
                "img/train/a/z.png": "TRUNCATED_PNG", "img/val/a/ok.png": "PNG"}),
    Case("image_folder_no_classes", "user mistake", "image folder: train/ without class folders",
         _pt("data.name=image_folder", "data.root={case}/img"), ["data.root", "img"],
         files={"img/train/readme.txt": "x", "img/val/readme.txt": "x"}),
    Case("data_root_is_file", "user mistake", "data.root names a file", _pt("data.name=fashion_mnist", "data.root={case}/f"),
         ["data.root", "/f"], files={"f": "x"}),
    # ---- paths
    Case("out_is_file", "user mistake", "--out names a file", ["pretrain", "--config", S, "--out", "{case}/f"],
         ["--out", "/f", "a folder"], files={"f": "x"}),
    Case("out_dev_null", "user mistake", "--out /dev/null", ["pretrain", "--config", S, "--out", "/dev/null"],
         ["--out", "/dev/null"]),
    Case("out_under_file", "user mistake", "--out inside a file (f/run)", ["pretrain", "--config", S, "--out", "{case}/f/run"],
         ["/f", "not a folder"], files={"f": "x"}),
    Case("out_in_sys", "user mistake", "--out under /sys (not writable)", ["pretrain", "--config", S, "--out", "/sys/mae-run"],
         ["/sys/mae-run", "not permitted"]),
    Case("out_metrics_json_garbage", "user mistake", "--out holding a metrics.json that is not JSON",
         ["pretrain", "--config", S, "--out", "{case}/run"], ["--out", "metrics.json cannot be read"],
         files={"run/metrics.json": "{not json"}),
    Case("out_metrics_json_binary", "user mistake", "--out holding a binary metrics.json",
         ["pretrain", "--config", S, "--out", "{case}/run"], ["--out", "metrics.json cannot be read"],
         files={"run/metrics.json": b"\xff\xfe\x00garbage"}),
    Case("out_full_disk", "user mistake", "--out on a full disk (1 MiB tmpfs, or writes failing with ENOSPC)",
         ["pretrain", "--config", S, "--out", "{full}/run", "run.checkpoint_every_steps=1"], ["no space left"]),
    # ---- checkpoints
    Case("resume_raw_pickle_payload_p0", "checkpoint hygiene",
         "checkpoint.pth = raw protocol-0 pickle calling os.system (checkpoint.prev.pth valid)",
         ["pretrain", "--config", S, "--out", "{case}/run"], ["checkpoint.pth", "refused", "arbitrary code"],
         files={"run/checkpoint.pth": "EVIL0", "run/checkpoint.prev.pth": "GOOD_CKPT"}, forbid=["weights_only=False"]),
    Case("resume_raw_pickle_payload_p4", "checkpoint hygiene", "checkpoint.pth = raw protocol-4 pickle calling os.system",
         ["pretrain", "--config", S, "--out", "{case}/run"], ["checkpoint.pth", "refused"],
         files={"run/checkpoint.pth": "EVIL4", "run/checkpoint.prev.pth": "GOOD_CKPT"}, forbid=["weights_only=False"]),
    Case("resume_zip_payload", "checkpoint hygiene", "checkpoint.pth = torch zip file whose data.pkl calls os.system",
         ["pretrain", "--config", S, "--out", "{case}/run"], ["checkpoint.pth", "refused"],
         files={"run/checkpoint.pth": "EVILZIP", "run/checkpoint.prev.pth": "GOOD_CKPT"}, forbid=["weights_only=False"]),
    Case("resume_other_precision", "run identity",
         "checkpoint.pth written at bf16 (run.precision=auto on a GPU), resumed with the same config on CPU (fp32)",
         ["pretrain", "--config", S, "--out", "{case}/run", "run.precision=auto"], ["run.precision", "bfloat16", "fp32"],
         files={"run/checkpoint.pth": "BF16_CKPT"}),
    Case("finetune_raw_pickle_payload", "checkpoint hygiene", "finetune.checkpoint = raw protocol-0 pickle payload",
         _ft("finetune.checkpoint={case}/evil.pth"), ["evil.pth", "refused"], files={"evil.pth": "EVIL0"},
         forbid=["weights_only=False"]),
    Case("linprobe_raw_pickle_payload", "checkpoint hygiene", "linprobe.checkpoint = raw protocol-2 pickle payload",
         ["linprobe", "--config", S, "--out", OUT, "linprobe.checkpoint={case}/evil.pth"], ["evil.pth", "refused"],
         files={"evil.pth": "EVIL2"}, forbid=["weights_only=False"]),
    Case("finetune_nan_weights", "user mistake", "finetune.checkpoint = model.pth with a NaN weight",
         _ft("finetune.checkpoint={case}/nan.pth"), ["nan.pth", "NaN or Inf"], files={"nan.pth": "NAN_MODEL"}),
    Case("linprobe_inf_weights", "user mistake", "linprobe.checkpoint = model.pth with an Inf weight",
         ["linprobe", "--config", S, "--out", OUT, "linprobe.checkpoint={case}/inf.pth"], ["inf.pth", "NaN or Inf"],
         files={"inf.pth": "INF_MODEL"}),
    Case("visualize_nan_weights", "user mistake", "mae visualize --checkpoint <model.pth with NaN>",
         ["visualize", "--checkpoint", "{case}/nan.pth", "--out", OUT + "/r.png"], ["nan.pth", "NaN or Inf"],
         files={"nan.pth": "NAN_MODEL"}),
    Case("finetune_checkpoint_folder", "user mistake", "finetune.checkpoint names a folder",
         _ft("finetune.checkpoint={tmp}"), ["checkpoint", "an existing checkpoint file"]),
    Case("finetune_checkpoint_json", "user mistake", "finetune.checkpoint = a JSON file",
         _ft("finetune.checkpoint={case}/m.json"), ["m.json", "invalid"], files={"m.json": '{"model": {}}'},
         forbid=["weights_only=False"]),
    Case("visualize_cuda_without_gpu", "user mistake", "mae visualize --device cuda on a machine without CUDA",
         ["visualize", "--checkpoint", "{tmp}/model.pth", "--out", OUT + "/r.png", "--device", "cuda"], ["--device", "'cuda'"]),
    Case("visualize_device_bogus", "user mistake", "mae visualize --device tpu",
         ["visualize", "--checkpoint", "{tmp}/model.pth", "--out", OUT + "/r.png", "--device", "tpu"], ["--device", "'tpu'"]),
    Case("replay_damaged_config", "user mistake", "mae replay on a folder whose config.yaml is binary",
         ["replay", "{case}/run"], ["config.yaml", "not UTF-8"], files={"run/config.yaml": bytes(range(128, 256))}),
    Case("replay_damaged_metrics", "user mistake", "mae replay on a folder whose metrics.json is cut off",
         ["replay", "{case}/run"], ["metrics.json", "cannot be read"], files={"run/metrics.json": '{"stage": "pre'}),
    Case("replay_duplicate_keys", "user mistake", "mae replay on a folder whose config.yaml repeats a section",
         ["replay", "{case}/run"], ["config.yaml", "twice"], files={"run/config.yaml": "model: {}\nmodel: {}\n"}),
]

ABLATION_HEAD = 'title: "bad"\npaper_ref: "Table 1a"\npaper_file: table1_ablations.csv\nevaluations: [finetune]\n'
ROW = '  - label: "{label}"\n    paper_where: {where}\n    set: {{{set}}}\n'


def _abl(name: str, cls: str, what: str, body: str | bytes, expect: list[str]) -> Case:
    return Case(name, cls, what, [f"ablations=[{name}]"], expect, ablation=True, files={f"{name}.yaml": body})


CASES += [
    _abl("abl_alias_bomb_set", "memory bound", "ablation file: nested aliases in the file's set:",
         ABLATION_HEAD + "anchors:\n" + INDENTED_BOMB + "set: {}\nrows:\n"
         + ROW.format(label="1", where='{subtable: "1a", value: "1"}', set="model.decoder_depth: 1"),
         ["ablations/abl_alias_bomb_set.yaml", "aliases expand"]),
    _abl("abl_duplicate_set_key", "user mistake", "ablation row with set: given twice",
         ABLATION_HEAD + "rows:\n" + ROW.format(label="1", where='{subtable: "1a", value: "1"}', set="model.decoder_depth: 1")
         + "    set: {model.decoder_depth: 2}\n", ["abl_duplicate_set_key.yaml", "'set'", "twice"]),
    _abl("abl_paper_where_no_row", "workflow", "ablation row whose paper_where matches no paper row",
         ABLATION_HEAD + "rows:\n" + ROW.format(label="1", where='{subtable: "1a", value: "17"}', set="model.decoder_depth: 1"),
         ["abl_paper_where_no_row.yaml", "rows[0]", "paper_where", "matches no row"]),
    _abl("abl_paper_where_unknown_column", "workflow", "ablation row whose paper_where names a column the paper lacks",
         ABLATION_HEAD + "rows:\n" + ROW.format(label="1", where='{depth: "1"}', set="model.decoder_depth: 1"),
         ["abl_paper_where_unknown_column.yaml", "paper_where", "lacks"]),
    _abl("abl_mask_ratio_zero", "user mistake", "ablation row set: model.mask_ratio: 0 (pretraining)",
         ABLATION_HEAD + "rows:\n" + ROW.format(label="1", where='{subtable: "1a", value: "1"}', set="model.mask_ratio: 0"),
         ["abl_mask_ratio_zero.yaml", "model.mask_ratio=0", "removes and keeps"]),
    _abl("abl_latin1", "user mistake", "ablation file in Latin-1", (ABLATION_HEAD.replace('"bad"', '"caf\xe9"') + "rows: []\n")
         .encode("latin-1"), ["abl_latin1.yaml", "not UTF-8"]),
]


# ---------------------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, protocol: int):
        self.protocol = protocol

    def __reduce__(self):
        return (os.system, ("echo HOSTILE-PAYLOAD-RAN",))


def _materials(tmp: Path) -> dict[str, bytes]:
    """Binary inputs the cases name by placeholder."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from mae.model import create_mae_model

    def gz(data: bytes) -> bytes:
        return gzip.compress(data)

    def idx(array: np.ndarray) -> bytes:
        header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        return header + array.astype(np.uint8).tobytes()

    images = idx(np.zeros((64, 28, 28)))
    full = gz(images)
    png = io.BytesIO()
    Image.new("RGB", (32, 32), (120, 30, 200)).save(png, format="PNG")
    torch.manual_seed(0)
    model = create_mae_model("mae_vit_micro_patch7_dec64d1b")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    key = next(k for k, v in sd.items() if v.is_floating_point())
    nan, inf = dict(sd), dict(sd)
    nan[key] = sd[key].clone().fill_(float("nan"))
    inf[key] = sd[key].clone().fill_(float("inf"))

    def saved(obj) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return buffer.getvalue()

    evil_zip = io.BytesIO()
    torch.save({"model": _Evil(2)}, evil_zip)  # torch pickles the reduce into data.pkl
    return {
        "TRUNCATED_GZ": full[: len(full) // 2], "SHORT_GZ": gz(images[:16 + 10 * 28 * 28].replace(
            (64).to_bytes(4, "big"), (60000).to_bytes(4, "big"), 1)),
        "IMAGES_GZ": full, "LABELS_GZ": gz(idx(np.arange(64) % 10)), "LABELS10_GZ": gz(idx(np.arange(10))),
        "LABELS": b"", "PNG": png.getvalue(), "TRUNCATED_PNG": png.getvalue()[:60],
        "EVIL0": pickle.dumps({"model": _Evil(0)}, protocol=0), "EVIL2": pickle.dumps({"model": _Evil(2)}, protocol=2),
        "EVIL4": pickle.dumps({"model": _Evil(4)}, protocol=4), "EVILZIP": evil_zip.getvalue(),
        "NAN_MODEL": saved({"model": nan, "config": {}}), "INF_MODEL": saved({"model": inf, "config": {}}),
    }


def _good_checkpoint(tmp: Path) -> bytes:
    """A real checkpoint.prev.pth of the smoke config (2 steps), so a refused newest one is not skipped."""
    import subprocess as sp
    out = tmp / "good_run"
    result = sp.run([MAE, "pretrain", "--config", S, "--out", str(out), "run.stop_after_steps=1",
                     "tracking.enabled=false"], capture_output=True, text=True, env=mae_env(), timeout=600)
    assert result.returncode == 75, result.stderr[-2000:]
    return (out / "checkpoint.pth").read_bytes()


def _other_precision(tmp: Path, good: bytes) -> bytes:
    """The same checkpoint as if written by a GPU job that resolved run.precision=auto to bf16."""
    from mae.checkpoint import load_checkpoint, save_checkpoint
    from mae.config import identity, load_config
    folder = tmp / "bf16"
    folder.mkdir()
    (folder / "checkpoint.pth").write_bytes(good)
    state = load_checkpoint(folder / "checkpoint.pth")
    state["precision"] = "torch.bfloat16"
    state["run_id"] = identity(load_config(S, ["run.precision=auto"]), "pretrain")  # auto: the id without precision
    return save_checkpoint(folder, state).read_bytes()


def _full_disk(tmp: Path) -> tuple[str, list[str]]:
    """A 1 MiB tmpfs (needs root), else a folder where a sitecustomize makes fsync fail with ENOSPC."""
    mount = tmp / "full"
    mount.mkdir()
    if os.geteuid() == 0 and shutil.which("mount"):
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
        if done.returncode == 0:
            return str(mount), ["umount", str(mount)]
    site = tmp / "enospc_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import errno, os\n_fsync = os.fsync\n"
        "def fsync(fd):\n    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\nos.fsync = fsync\n")
    return str(mount), ["env", f"PYTHONPATH={site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"]


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory):
    import torch

    from mae.checkpoint import save_model
    from mae.model import create_mae_model
    tmp = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    save_model(tmp / "model.pth", create_mae_model("mae_vit_micro_patch7_dec64d1b"))
    selected = {item.callspec.params["name"] for item in request.session.items
                if hasattr(item, "callspec") and "name" in item.callspec.params
                and item.module.__name__.endswith("test_hostile_inputs")}
    chosen = [case for case in CASES if case.name in selected]
    materials = _materials(tmp)
    if any({"GOOD_CKPT", "BF16_CKPT"} & set(case.files.values()) for case in chosen):
        materials["GOOD_CKPT"] = _good_checkpoint(tmp)
        materials["BF16_CKPT"] = _other_precision(tmp, materials["GOOD_CKPT"])
    full, cleanup = _full_disk(tmp)
    workflow = workflow_copy(tmp / "workflow_copy") if any(c.ablation for c in chosen) else None
    cmds, dirs = [], {}
    for case in chosen:
        case_dir = tmp / case.name
        case_dir.mkdir()
        dirs[case.name] = case_dir
        for fname, content in case.files.items():
            target = workflow / "ablations" / fname if case.ablation else case_dir / fname
            target.parent.mkdir(parents=True, exist_ok=True)
            content = materials.get(content, content) if isinstance(content, str) else content
            target.write_bytes(content if isinstance(content, bytes) else content.encode())
        if case.ablation:
            cmds.append([str(VENV_BIN / "snakemake"), "-n", "--nolock", "-s", str(workflow / "Snakefile"),
                         "-d", str(workflow), "--config", "preset=smoke", *case.args])
        else:
            args = [a.replace("{case}", str(case_dir)).replace("{tmp}", str(tmp)).replace("{full}", full)
                    for a in case.args]
            prefix = cleanup[:2] if case.name == "out_full_disk" and cleanup[0] == "env" else []
            cmds.append([*prefix, MAE, *args])
    try:
        results = run_many(cmds, workers=3, timeout=600, env=mae_env())
        leftovers = {case.name: _half_written(dirs[case.name], Path(full) if case.name == "out_full_disk" else None,
                                              {dirs[case.name] / f for f in case.files})
                     for case in chosen}
    finally:
        if cleanup[0] == "umount":
            subprocess.run(cleanup, capture_output=True)
    return {case.name: (case, result, leftovers[case.name], workflow) for case, result in zip(chosen, results)}


def _half_written(folder: Path, extra: Path | None, planted: set[Path]) -> list[str]:
    """metrics.json, model.pth or a temporary `.*.tmp.<pid>` under the case's folders (but the planted inputs)."""
    found = []
    for root in [folder] + ([extra] if extra is not None else []):
        for path in root.rglob("*"):
            if path not in planted and (path.name in ("metrics.json", "model.pth") or ".tmp." in path.name):
                found.append(str(path))
    return found


def test_at_least_60_cases():
    assert len(CASES) >= 60, len(CASES)
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_hostile_input_is_one_line_and_leaves_nothing(name, outcomes, fault):
    case, result, leftovers, workflow = outcomes[name]
    fault.describe(case.cls, case.what + (" (snakemake -n)" if case.ablation else ""),
                   f"exit {case.exit_code}, one line naming "
                   f"{case.expect[0]!r}; no traceback; nothing half-written")
    output = result.stdout + result.stderr
    assert "Traceback" not in output, result.explain()
    assert "HOSTILE-PAYLOAD-RAN" not in output, result.explain()
    for text in case.forbid:
        assert text not in output, result.explain()
    if case.ablation:
        line = workflow_error_line(result.returncode, result.stdout, result.stderr)
        missing = [e for e in case.expect if e not in line]
        assert not missing, f"{missing} not in {line!r}"
        assert not list((workflow / "runs").rglob("metrics.json")) if (workflow / "runs").exists() else True
    else:
        line = one_error_line(result, case.exit_code, case.expect)
    assert not leftovers, f"half-written: {leftovers}"
    fault.observe(f"exit {result.returncode}: {line.strip()[:220]}")
