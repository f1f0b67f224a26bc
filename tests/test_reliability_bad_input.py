"""Bad input across config files, CLI overrides, checkpoints and ablation files: each exits non-zero
with one line naming the field, the value and what is allowed, without a traceback, and leaves
nothing the workflow would take as a finished output (no metrics.json / model.pth).

`mae` cases run the real CLI; ablation-file cases run `snakemake -n` on a throw-away copy of the
workflow (Snakefile, workflow/, ablations/, paper/) holding the bad file, selected with
`--config ablations=[name]` as a user would. All cases start at once in a module fixture: most of
each one's time is importing torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from test_reliability_common import (MAE, SMOKE, VENV_BIN, assert_no_finished_outputs, fault,  # noqa: F401
                                     mae_env, one_error_line, run_many, workflow_copy, workflow_error_line)

pytestmark = pytest.mark.slow


@dataclass
class Case:
    name: str
    what: str                  # the fault, for the table
    args: list[str]            # `mae` arguments, or snakemake --config items for ablation cases
    expect: list[str]          # substrings the error line must hold: the field, the value, what is allowed
    files: dict | None = None  # name -> YAML text written next to the run (configs) or into ablations/
    ablation: bool = False


OUT = "{tmp}/out"
CFG = "{tmp}/cfg"
S = str(SMOKE)


def _pt(*overrides: str, config: str = S) -> list[str]:
    return ["pretrain", "--config", config, "--out", OUT, *overrides]


def _ft(*overrides: str) -> list[str]:
    return ["finetune", "--config", S, "--out", OUT, *overrides]


CASES = [
    # ---- config files
    Case("yaml_unknown_key", "config file: model.decoder_dpth (typo)", _pt(config=CFG + "/c.yaml"),
         ["model.decoder_dpth", "did you mean 'model.decoder_depth'"], {"c.yaml": "model: {decoder_dpth: 2}\n"}),
    Case("yaml_unknown_section", "config file: unknown section modle:", _pt(config=CFG + "/c.yaml"),
         ["modle", "model"], {"c.yaml": "modle: {arch: mae_vit_micro_patch7_dec64d1b}\n"}),
    Case("yaml_wrong_type", "config file: pretrain.epochs: ten", _pt(config=CFG + "/c.yaml"),
         ["pretrain.epochs", "'ten'", "an integer"], {"c.yaml": "pretrain: {epochs: ten, warmup_epochs: 1}\n"}),
    Case("yaml_out_of_range", "config file: model.mask_ratio: 1.5", _pt(config=CFG + "/c.yaml"),
         ["model.mask_ratio", "1.5", "[0.0, 1.0)"], {"c.yaml": "model: {mask_ratio: 1.5}\n"}),
    Case("yaml_malformed", "config file: malformed YAML", _pt(config=CFG + "/c.yaml"),
         ["c.yaml", "is not valid YAML"], {"c.yaml": "model: {arch: [unclosed\n"}),
    Case("yaml_not_mapping", "config file: a list, not a mapping", _pt(config=CFG + "/c.yaml"),
         ["--config", "c.yaml", "mapping"], {"c.yaml": "- model\n- data\n"}),
    Case("yaml_section_not_mapping", "config file: model: 3", _pt(config=CFG + "/c.yaml"),
         ["model", "3", "mapping"], {"c.yaml": "model: 3\n"}),
    Case("config_missing", "--config file that does not exist", _pt(config="{tmp}/nope.yaml"),
         ["--config", "nope.yaml", "an existing YAML file"]),
    # ---- overrides
    Case("override_unknown_key", "override model.mask_ration=0.5", _pt("model.mask_ration=0.5"),
         ["model.mask_ration", "did you mean 'model.mask_ratio'"]),
    Case("override_no_equals", "override without '='", _pt("model.mask_ratio"),
         ["override", "model.mask_ratio", "section.key=value"]),
    Case("override_wrong_type", "override pretrain.batch_size=abc", _pt("pretrain.batch_size=abc"),
         ["pretrain.batch_size", "'abc'", "an integer"]),
    Case("override_negative", "override pretrain.blr=-1", _pt("pretrain.blr=-1"),
         ["pretrain.blr", "-1", "a positive number"]),
    Case("override_bad_choice", "override run.precision=fp8", _pt("run.precision=fp8"),
         ["run.precision", "'fp8'", "'bf16'"]),
    Case("override_bad_device", "override run.device=tpu", _pt("run.device=tpu"),
         ["run.device", "'tpu'", "'cpu'"]),
    Case("override_bad_bool", "override model.encoder_mask_tokens=maybe", _pt("model.encoder_mask_tokens=maybe"),
         ["model.encoder_mask_tokens", "'maybe'", "true or false"]),
    Case("img_size_not_divisible", "model.img_size=30 with patch size 7", _pt("model.img_size=30"),
         ["model.img_size", "30", "a positive multiple of model.patch_size=7"]),
    Case("unknown_arch", "model.arch=mae_vit_gigantic", _pt("model.arch=mae_vit_gigantic"),
         ["model.arch", "'mae_vit_gigantic'", "mae_vit_base_patch16_dec512d8b"]),
    Case("warmup_ge_epochs", "pretrain.warmup_epochs=5 with epochs=2", _pt("pretrain.warmup_epochs=5"),
         ["pretrain.warmup_epochs", "5", "less than pretrain.epochs=2"]),
    Case("micro_batch_not_divisor", "pretrain.micro_batch_size=5 with batch 32", _pt("pretrain.micro_batch_size=5"),
         ["pretrain.batch_size", "32", "micro_batch_size"]),
    Case("batch_larger_than_data", "pretrain.batch_size=1024 with 64 training images", _pt("pretrain.batch_size=1024"),
         ["pretrain.batch_size=1024", "64 training images"]),
    Case("missing_image_folder", "data.name=image_folder, data.root missing",
         _pt("data.name=image_folder", "data.root={tmp}/no-such-dataset"), ["data.root", "no-such-dataset"]),
    Case("missing_fashion_mnist", "data.name=fashion_mnist, data.root missing",
         _pt("data.name=fashion_mnist", "data.root={tmp}/no-fmnist"), ["data.root", "no-fmnist"]),
    Case("missing_out", "mae pretrain without --out", ["pretrain", "--config", S], ["--out", "required"]),
    Case("unknown_command", "mae pretrian (typo)", ["pretrian", "--out", OUT], ["pretrian", "pretrain"]),
    Case("visualize_bad_ratios", "mae visualize --mask-ratios abc",
         ["visualize", "--checkpoint", "{tmp}/other_size.pth", "--out", OUT + "/recon.png", "--mask-ratios", "abc"],
         ["--mask-ratios", "'abc'", "comma-separated numbers"]),
    # ---- checkpoints
    Case("checkpoint_missing", "finetune.checkpoint=<missing file>", _ft("finetune.checkpoint={tmp}/none.pth"),
         ["checkpoint", "none.pth", "an existing"]),
    Case("checkpoint_garbage", "finetune.checkpoint=<a text file>", _ft("finetune.checkpoint={tmp}/garbage.pth"),
         ["checkpoint=", "garbage.pth", "allowed"]),
    Case("checkpoint_truncated", "finetune.checkpoint=<truncated model.pth>", _ft("finetune.checkpoint={tmp}/truncated.pth"),
         ["checkpoint=", "truncated.pth", "allowed"]),
    Case("checkpoint_other_size", "finetune.checkpoint=<model.pth of another model size (patch 4, 32x32x3)>",
         _ft("finetune.checkpoint={tmp}/other_size.pth"), ["checkpoint", "other_size.pth", "patch 4", "the model expects",
                                                           "patch 7"]),
    Case("visualize_missing_checkpoint", "mae visualize --checkpoint <missing file>",
         ["visualize", "--checkpoint", "{tmp}/none.pth", "--out", OUT + "/recon.png"], ["checkpoint", "none.pth"]),
    Case("out_holds_other_finished_run", "--out folder holding another config's finished run",
         ["pretrain", "--config", S, "--out", "{tmp}/finished"], ["--out", "finished", "choose another --out"]),
    Case("out_holds_other_checkpoint", "--out folder whose checkpoint.pth belongs to another config",
         ["pretrain", "--config", S, "--out", "{tmp}/foreign"], ["--out", "checkpoint.pth", "belongs to"]),
]

ABLATION_HEAD = ('title: "bad"\npaper_ref: "Table 1a"\npaper_file: table1_ablations.csv\nevaluations: [finetune]\n')
ROW = '  - label: "{label}"\n    paper_where: {{value: "{label}"}}\n    set: {{{set}}}\n'


def _abl(name: str, what: str, body: str, expect: list[str], extra: list[str] | None = None) -> Case:
    return Case(name, what, [f"ablations=[{name}]", *(extra or [])], expect, {f"{name}.yaml": body}, ablation=True)


CASES += [
    _abl("abl_unknown_key", "ablation row set: model.decoder_dpth",
         ABLATION_HEAD + "rows:\n" + ROW.format(label="1", set="model.decoder_dpth: 1"),
         ["model.decoder_dpth", "did you mean 'model.decoder_depth'"]),
    _abl("abl_wrong_type", "ablation row set: model.mask_ratio: high",
         ABLATION_HEAD + "rows:\n" + ROW.format(label="1", set="model.mask_ratio: high"),
         ["model.mask_ratio", "'high'", "a number"]),
    _abl("abl_out_of_range", "ablation row set: model.mask_ratio: 1.5",
         ABLATION_HEAD + "rows:\n" + ROW.format(label="1", set="model.mask_ratio: 1.5"),
         ["model.mask_ratio", "1.5", "[0.0, 1.0)"]),
    _abl("abl_empty_grid", "ablation with rows: []", ABLATION_HEAD + "rows: []\n", ["rows", "non-empty"]),
    _abl("abl_duplicate_cells", "two rows with the same settings",
         ABLATION_HEAD + "rows:\n" + ROW.format(label="1", set="model.decoder_depth: 2")
         + ROW.format(label="2", set="model.decoder_depth: 2"), ["rows[1]", "duplicates rows[0]"]),
    _abl("abl_duplicate_labels", "two rows with the same label",
         ABLATION_HEAD + "rows:\n" + ROW.format(label="1", set="model.decoder_depth: 2")
         + ROW.format(label="1", set="model.decoder_depth: 4"), ["rows[1].label", "duplicates rows[0]"]),
    _abl("abl_missing_title", "ablation without title",
         ABLATION_HEAD.replace('title: "bad"\n', "") + "rows:\n" + ROW.format(label="1", set="model.decoder_depth: 2"),
         ["'title' is a required property"]),
    _abl("abl_key_without_section", "ablation row set: mask_ratio (no section)",
         ABLATION_HEAD + "rows:\n" + ROW.format(label="1", set="mask_ratio: 0.5"), ["rows[0].set: 'mask_ratio' is invalid: allowed a dotted key section.key"]),
    _abl("abl_malformed", "malformed ablation YAML", ABLATION_HEAD + "rows: [\n", ["not valid YAML"]),
    _abl("abl_unknown_evaluation", "ablation evaluations: [segmentation]",
         ABLATION_HEAD.replace("[finetune]", "[segmentation]") + "rows:\n" + ROW.format(label="1", set="model.decoder_depth: 2"),
         ["evaluations[0]", "'segmentation'", "finetune"]),
    Case("abl_not_a_file", "ablations=[no_such_table]", ["ablations=[no_such_table]"],
         ["'no_such_table'", "not a file in ablations/", "table1a_decoder_depth"], ablation=True),
    Case("unknown_preset", "workflow --config preset=huge", ["preset=huge", "ablations=[table1a_decoder_depth]"],
         ["preset", "huge", "smoke"], ablation=True),
]


def _fill(items: list[str], tmp) -> list[str]:
    return [item.replace("{tmp}", str(tmp)) for item in items]


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory):
    import torch

    from mae.checkpoint import save_checkpoint, save_model
    from mae.model import create_mae_model
    tmp = tmp_path_factory.mktemp("bad_input")
    # checkpoint files
    torch.manual_seed(0)
    save_model(tmp / "other_size.pth", create_mae_model("mae_vit_micro_patch4_dec64d1b"))
    save_model(tmp / "model.pth", create_mae_model("mae_vit_micro_patch7_dec64d1b"))
    (tmp / "truncated.pth").write_bytes((tmp / "model.pth").read_bytes()[:5000])
    (tmp / "garbage.pth").write_text("this is not a checkpoint\n")
    finished = tmp / "finished"
    finished.mkdir()
    (finished / "metrics.json").write_text(json.dumps({"stage": "pretrain", "run_id": "0123456789ab"}))
    foreign = tmp / "foreign"
    foreign.mkdir()
    save_checkpoint(foreign, {"stage": "pretrain", "run_id": "0123456789ab", "loop": {}})
    # a throw-away copy of the workflow for the ablation cases
    workflow = workflow_copy(tmp / "workflow_copy")
    cmds, dirs = [], {}
    for case in CASES:
        case_dir = tmp / case.name
        (case_dir / "cfg").mkdir(parents=True)
        dirs[case.name] = case_dir
        for fname, text in (case.files or {}).items():
            target = workflow / "ablations" / fname if case.ablation else case_dir / "cfg" / fname
            target.write_text(text)
        if case.ablation:
            cmds.append([str(VENV_BIN / "snakemake"), "-n", "--nolock", "-s", str(workflow / "Snakefile"),
                         "-d", str(workflow), "--config", "preset=smoke", *case.args])
        else:
            args = [a.replace(CFG, str(case_dir / "cfg")).replace(OUT, str(case_dir / "out")) for a in case.args]
            cmds.append([MAE, *_fill(args, tmp)])
    # only the cases this session selected (-k): each costs a process start-up on a shared machine
    selected = {item.callspec.params["name"] for item in request.session.items
                if hasattr(item, "callspec") and "name" in item.callspec.params}
    chosen = [i for i, case in enumerate(CASES) if case.name in selected]
    results = run_many([cmds[i] for i in chosen], workers=3, timeout=600, env=mae_env())
    return {CASES[i].name: (CASES[i], dirs[CASES[i].name], workflow, result) for i, result in zip(chosen, results)}


def test_at_least_25_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_bad_input_is_one_line_user_error(name, outcomes, fault):
    case, case_dir, workflow, result = outcomes[name]
    fault.describe("bad input", case.what + (" (snakemake -n)" if case.ablation else ""),
                   "exit 2, one line naming field, value and what is allowed; no traceback; "
                   "no metrics.json / model.pth")
    assert result.returncode != 0, result.explain()
    assert "Traceback" not in result.stderr + result.stdout, result.explain()
    if case.ablation:
        line = workflow_error_line(result.returncode, result.stdout, result.stderr)
        missing = [e for e in case.expect if e not in line]
        assert not missing, f"{missing} not in {line!r}"
        assert_no_finished_outputs(workflow / "runs")
    else:
        line = one_error_line(result, 2, case.expect)
        assert_no_finished_outputs(case_dir)
    fault.observe(f"exit {result.returncode}: {line.strip()[:200]}")
