"""workflow.grid without Snakemake: cells, shared cells, the pretraining dependency, one-line errors."""

import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from mae.config import Config, identity
from workflow.grid import PRESETS, GridError, build_grid, model_path

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "workflow/config.yaml").read_text())


def grid(preset="smoke", root=REPO, **settings):
    return build_grid({**CONFIG, "preset": preset, **settings}, root)


@pytest.fixture(scope="module")
def smoke():
    return grid("smoke")


@pytest.fixture
def root(tmp_path):
    """A repository with the real presets and paper numbers and an empty ablations/."""
    (tmp_path / "workflow").mkdir()
    shutil.copytree(REPO / "workflow/presets", tmp_path / "workflow/presets")
    shutil.copytree(REPO / "paper", tmp_path / "paper")
    (tmp_path / "ablations").mkdir()
    return tmp_path


def test_every_cell_is_its_resolved_config_named_by_its_identity(smoke):
    assert Counter(stage for stage, _ in smoke.cells) == {"pretrain": 37, "finetune": 44, "linprobe": 31}
    for (stage, run_id), cell in smoke.cells.items():
        assert (cell.stage, cell.run_id) == (stage, run_id)
        assert identity(Config.from_dict(cell.config), stage) == run_id
        assert cell.config["tracking"]["tags"] == {
            "mae.preset": "smoke", "mae.ablations": ",".join(cell.ablations),
            "mae.rows": "; ".join(f"{a}: {r}" for a, r in cell.rows), "mae.seed": str(cell.config["run"]["seed"])}
    keys = [(e["ablation"], e["row"], e["seed"], e["stage"]) for e in smoke.manifest]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    for entry in smoke.manifest:
        assert (entry["stage"], entry["run_id"]) in smoke.cells
        assert entry["run_dir"] == f"runs/smoke/{entry['stage']}/{entry['run_id']}"
    assert list(smoke.ablations) == sorted(p.stem for p in (REPO / "ablations").glob("*.yaml"))


def test_run_names_say_ablation_row_seed_and_stage(smoke):
    # the MLflow run list shows these: one name per run, from the manifest entry that asked for it
    names = {key: cell.config["tracking"]["run_name"] for key, cell in smoke.cells.items()}
    assert len(set(names.values())) == len(names)
    for entry in smoke.manifest:
        cell = smoke.cells[entry["stage"], entry["run_id"]]
        first_ablation, first_row = cell.rows[0]
        more = {1: "", 2: " (+1 row)"}.get(len(cell.rows), f" (+{len(cell.rows) - 1} rows)")
        assert names[entry["stage"], entry["run_id"]] == \
            f"{first_ablation} · {first_row}{more} · seed {entry['seed']} · {entry['stage']}"
        assert f"{entry['ablation']}: {entry['row']}" in cell.config["tracking"]["tags"]["mae.rows"].split("; ")
    def name(ablation, row, stage):
        run_id = next(e["run_id"] for e in smoke.manifest if (e["ablation"], e["row"], e["stage"]) == (ablation, row, stage))
        return names[stage, run_id]

    assert name("table1a_decoder_depth", "4", "finetune") == "table1a_decoder_depth · 4 · seed 0 · finetune"
    assert name("table1a_decoder_depth", "8", "pretrain") == "table1a_decoder_depth · 8 (+1 row) · seed 0 · pretrain"


def test_cells_with_the_same_resolved_config_collapse_into_one_run(smoke):
    # The 75% mask ratio point of Fig. 5 is Table 1c's default row: one pretraining answers both.
    def pretrain_of(ablation, row):
        return {e["run_id"] for e in smoke.manifest if (e["ablation"], e["row"], e["stage"]) == (ablation, row, "pretrain")}

    shared = pretrain_of("fig5_mask_ratio", "75")
    assert shared == pretrain_of("table1c_mask_token", "encoder w/o [M]")
    cell = smoke.cells["pretrain", shared.pop()]
    assert {"fig5_mask_ratio", "table1c_mask_token"} <= set(cell.ablations)
    assert ("table1c_mask_token", "encoder w/o [M]") in cell.rows
    assert len(smoke.manifest) > len(smoke.cells)


def test_an_evaluation_depends_on_its_pretraining_through_a_field_of_the_cell(smoke):
    evaluations = [c for c in smoke.cells.values() if c.stage != "pretrain"]
    for cell in evaluations:
        if cell.pretrain_run_id is None:  # Table 3's supervised rows: finetune.checkpoint: null
            assert cell.config[cell.stage]["checkpoint"] is None
            assert smoke.pretrained_model(cell.stage, cell.run_id) is None
            continue
        assert ("pretrain", cell.pretrain_run_id) in smoke.cells
        model = model_path("smoke", cell.pretrain_run_id)
        assert model == f"runs/smoke/pretrain/{cell.pretrain_run_id}/model.pth"
        assert smoke.pretrained_model(cell.stage, cell.run_id) == model
        assert cell.config[cell.stage]["checkpoint"] == model  # what `mae` reads
    scratch = [c for c in evaluations if c.pretrain_run_id is None]
    assert scratch and {a for c in scratch for a in c.ablations} == {"table3_model_sizes"}
    assert all(c.pretrain_run_id is None for c in smoke.cells.values() if c.stage == "pretrain")


def test_seeds_and_data_root_settings(root):
    (root / "ablations/one.yaml").write_text(HEADER + ROW_A)
    one = grid("smoke", root, ablations=["one"], seeds=[3, 4])
    assert sorted(e["seed"] for e in one.manifest if e["stage"] == "pretrain") == [3, 4]
    paper = grid("paper", root, ablations=["one"], data_root="/datasets/imagenet", seeds=0)
    assert {c.config["data"]["root"] for c in paper.cells.values()} == {"/datasets/imagenet"}


def test_seeds_as_snakemake_reads_them_from_the_command_line(root):
    # `--config seeds=[3,4]` reaches the workflow as ['3', '4'] (a YAML list read without types)
    from snakemake.cli import parse_config
    (root / "ablations/one.yaml").write_text(HEADER + ROW_A)
    for text, seeds in (("seeds=[3,4]", [3, 4]), ("seeds=2", [2])):
        settings = parse_config([text])
        one = grid("smoke", root, ablations=["one"], **settings)
        assert sorted(e["seed"] for e in one.manifest if e["stage"] == "pretrain") == seeds
    for text, shown in (("seeds=[a]", "['a']"), ("seeds=x", "'x'"), ("seeds=-1", "-1"), ("seeds=[1,1]", "[1, 1]")):
        with pytest.raises(GridError) as err:
            grid("smoke", root, ablations=["one"], **parse_config([text]))
        assert str(err.value) == (f"config: seeds: {shown} is invalid: allowed a seed (an integer >= 0) or a list of "
                                  "distinct seeds, e.g. seeds=0 or seeds=[0,1,2], replacing every ablation's own `seeds`")


HEADER = "title: t\npaper_ref: Table 1a\npaper_file: table1_ablations.csv\nevaluations: [finetune]\n"
ROW_A = "rows:\n  - label: a\n    paper_where: {subtable: '1a', value: '1'}\n    set: {model.decoder_depth: 1}\n"
BAD = {
    "unknown key": (ROW_A.replace("decoder_depth", "decoder_dept"),
                    "ablations/bad.yaml: rows[0] (label 'a'): unknown key 'model.decoder_dept' in rows[0].set; "
                    "did you mean 'model.decoder_depth'?"),
    "bad value": (ROW_A.replace("model.decoder_depth: 1", "model.mask_ratio: 1.5"),
                  "ablations/bad.yaml: rows[0] (label 'a'): model.mask_ratio=1.5 is invalid: allowed a number in [0.0, 1.0)"),
    "schema": (ROW_A.replace("    set:", "    sett:"),
               "ablations/bad.yaml: rows[0]: Additional properties are not allowed ('sett' was unexpected); "
               "allowed: label, paper_where, set, set_by_preset, default, evaluations, seeds_by_preset, presets"),
    "duplicate": (ROW_A + ROW_A.removeprefix("rows:\n").replace("label: a", "label: b"),
                  "ablations/bad.yaml: rows[1].set: duplicates rows[0] (each row needs its own label and settings)"),
    # seeds come from `seeds`: a run.seed in set was dropped, and the row was another row's runs (+0.00)
    "seed in set": (ROW_A.replace("model.decoder_depth: 1", "run.seed: 5"),
                    "ablations/bad.yaml: rows[0].set: run.seed=5 is invalid: allowed the seeds in `seeds` (the "
                    "file's) or a row's `seeds_by_preset`, not in `set`"),
    "seed in set_by_preset": (ROW_A + "    set_by_preset: {tiny: {run.seed: 1}}\n",
                              "ablations/bad.yaml: rows[0].set_by_preset.tiny: run.seed=1 is invalid: allowed the "
                              "seeds in `seeds` (the file's) or a row's `seeds_by_preset`, not in `set`"),
    # a stage rule that needs the resolved architecture: checked for every cell, not when the job starts
    "blocks beyond the depth": (ROW_A.replace("model.decoder_depth: 1", "finetune.trainable_blocks: 10"),
                                "ablations/bad.yaml: row 'a': finetune.trainable_blocks=10 is invalid: "
                                "allowed 0.5 or a whole number in [0, 4] (the model's depth)"),
    "file-level set": ("set: {model.depth: -1}\n" + ROW_A,
                       "ablations/bad.yaml: model.depth=-1 is invalid: allowed a positive number"),
    "no row for the preset": (ROW_A + "    presets: [paper]\n",
                              "ablations/bad.yaml: rows: no row runs under preset 'smoke' (see each row's presets)"),
    "file not for the preset": ("presets: [tiny, paper]\n" + ROW_A,
                                "ablations/bad.yaml: presets: the file runs under tiny, paper, not 'smoke': allowed "
                                "there, or another ablation"),
    "two default rows": (ROW_A + "    default: true\n" + ROW_A.removeprefix("rows:\n").replace("label: a", "label: b")
                         .replace("decoder_depth: 1", "decoder_depth: 2") + "    default: true\n",
                         "ablations/bad.yaml: rows[1].default: rows[0] is the default row already (allowed one "
                         "default row, or none)"),
    "unknown preset": (ROW_A + "    seeds_by_preset: {bogus: [1]}\n",
                       "ablations/bad.yaml: rows[0].seeds_by_preset: 'bogus' is not one of ['smoke', 'tiny', 'paper']"),
}


def test_a_file_can_leave_out_a_preset_and_change_its_evaluations(root):
    # `ablations=all` skips a file whose `presets` leave the preset out; `evaluations_by_preset` replaces the
    # file's evaluations under one preset (and the grid's ablations carry the resolved list to the tables).
    (root / "ablations/one.yaml").write_text(HEADER + "evaluations_by_preset: {tiny: [linprobe]}\n" + ROW_A)
    (root / "ablations/two.yaml").write_text(HEADER + "presets: [paper]\n" + ROW_A)
    smoke, tiny = grid("smoke", root, ablations="all"), grid("tiny", root, ablations="all")
    assert list(smoke.ablations) == list(tiny.ablations) == ["one"]
    assert {c.stage for c in smoke.cells.values()} == {"pretrain", "finetune"}
    assert {c.stage for c in tiny.cells.values()} == {"pretrain", "linprobe"}
    assert tiny.ablations["one"]["evaluations"] == ["linprobe"]
    assert list(grid("paper", root, ablations="all", data_root="/datasets/imagenet").ablations) == ["one", "two"]


def test_ablations_all_reads_each_file_once(root, monkeypatch):
    # selecting `all` reads each file's `presets`; compiling the selected files reuses what was read
    import workflow.grid
    (root / "ablations/one.yaml").write_text(HEADER + ROW_A)
    (root / "ablations/two.yaml").write_text(HEADER + "presets: [paper]\n" + ROW_A)
    reads = Counter()
    real = workflow.grid.load_yaml_file
    monkeypatch.setattr(workflow.grid, "load_yaml_file", lambda path, *a, **k: reads.update([Path(path).name]) or
                        real(path, *a, **k))
    assert list(grid("smoke", root, ablations="all").ablations) == ["one"]
    assert reads == {"one.yaml": 1, "two.yaml": 1}


def test_the_ablation_schema_allows_the_presets_there_are():
    # the ablation schema spells the preset list once ($defs), beside the config schema's enum (PRESETS)
    schema = yaml.safe_load((REPO / "workflow/schemas/ablation.schema.yaml").read_text())
    assert schema["$defs"]["preset"]["enum"] == PRESETS
    assert sorted(PRESETS) == sorted(p.stem for p in (REPO / "workflow/presets").glob("*.yaml"))


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_mistake_in_an_ablation_file_is_one_line_naming_the_file_and_row(root, case):
    body, expected = BAD[case]
    (root / "ablations/bad.yaml").write_text(HEADER + body)
    with pytest.raises(GridError) as err:
        grid("smoke", root, ablations=["bad"])
    assert str(err.value) == expected


def test_a_model_rule_fails_at_grid_time_naming_the_file_and_row(root):
    # Grid masking keeps one patch of every 2x2 group: a 50% ratio cannot be drawn (mae.config's rule).
    rows = ROW_A + "  - label: '50%'\n    paper_where: {subtable: '1a', value: '2'}\n" \
                   "    set: {model.mask_sampling: grid, model.mask_ratio: 0.5}\n"
    (root / "ablations/bad.yaml").write_text(HEADER + rows)
    with pytest.raises(GridError) as err:
        grid("smoke", root, ablations=["bad"])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("ablations/bad.yaml: rows[1] (label '50%'): model.mask_ratio=0.5 is invalid"), message


def test_the_training_data_each_run_reads_is_checked_on_this_machine(root, tmp_path):
    (root / "ablations/one.yaml").write_text(HEADER + ROW_A)
    assert grid("smoke", root, ablations=["one"]).data_problem() is None  # synthetic images: no folder
    missing = tmp_path / "no-such-folder"
    assert grid("tiny", root, ablations=["one"], data_root=str(missing)).data_problem() == (
        f"data.root='{missing}' is invalid for data.name='fashion_mnist': expected an existing folder there")
    folder = tmp_path / "fashion"
    folder.mkdir()
    assert "train-images-idx3-ubyte.gz" in grid("tiny", root, ablations=["one"], data_root=str(folder)).data_problem()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes(b"")  # by name only: contents are checked when read
    assert grid("tiny", root, ablations=["one"], data_root=str(folder)).data_problem() is None


def test_workflow_settings_errors_are_one_line(root):
    (root / "ablations/one.yaml").write_text(HEADER + ROW_A)
    cases = {
        "config: preset: 'huge' is not one of ['smoke', 'tiny', 'paper']": dict(preset="huge"),
        "ablations: 'nothing' is not a file in ablations/: allowed one": dict(ablations=["nothing"]),
        "ablations='fast' is invalid: allowed 'all', a subset (quick) or a list of: one": dict(ablations="fast"),
        "data_root=None is invalid: preset 'paper' reads imagenet: pass --config data_root=/path/to/dataset":
            dict(preset="paper", ablations=["one"]),
        "data_root='/data/x' is invalid: preset 'smoke' makes synthetic images and reads no folder: allowed "
        "unset (null)": dict(ablations=["one"], data_root="/data/x"),
        # a scheme MLflow has no store for (it was a warning in each job's train.log, nothing on the console)
        "mlflow_uri='foo://bar' is invalid: allowed a URI of an MLflow store: http(s)://host:port, sqlite:///path.db, "
        "postgresql://, mysql://, mssql://, file:///folder or databricks": dict(ablations=["one"], mlflow_uri="foo://bar"),
    }
    for expected, settings in cases.items():
        with pytest.raises(GridError) as err:
            build_grid({**CONFIG, "preset": "smoke", **settings}, root)
        assert str(err.value) == expected


def own_ablation_example() -> tuple[str, str]:
    """(name, text) of the ablation file README's "An ablation of your own" shows, as a user copies it."""
    section = (REPO / "README.md").read_text().split("## An ablation of your own", 1)[1]
    text = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    name = text.splitlines()[0].removeprefix("# ablations/").removesuffix(".yaml")
    return name, text


def test_an_ablation_the_paper_lacks_needs_no_paper_keys(root):
    # README's example, as a user would copy it: no paper_ref, paper_file or paper_where
    name, text = own_ablation_example()
    (root / f"ablations/{name}.yaml").write_text(text)
    shutil.copy(REPO / "ablations/fig5_mask_ratio.yaml", root / "ablations")
    own = grid("smoke", root, ablations=[name])
    assert Counter(stage for stage, _ in own.cells) == {"pretrain": 9, "linprobe": 9}  # 3 rows x 3 seeds
    assert {e["paper_ref"] for e in own.manifest} == {None}
    assert all(cell.config["tracking"]["run_name"].startswith(f"{name} · ") for cell in own.cells.values())
    # the default row is the preset's own setting: its runs are the baseline of the paper's tables
    both = grid("tiny", root, ablations=["fig5_mask_ratio", name])
    pretrainings = lambda ablation, row: {(e["seed"], e["run_id"]) for e in both.manifest  # noqa: E731
                                          if (e["ablation"], e["row"], e["stage"]) == (ablation, row, "pretrain")}
    assert pretrainings(name, "0.05") <= pretrainings("fig5_mask_ratio", "75")
    assert name in grid("tiny", root, ablations="all").ablations


def test_paper_keys_come_together(root):
    def error(text):
        (root / "ablations/bad.yaml").write_text(text)
        with pytest.raises(GridError) as err:
            grid("smoke", root, ablations=["bad"])
        return str(err.value)

    assert error(HEADER.replace("paper_ref: Table 1a\n", "") + ROW_A) == (
        "ablations/bad.yaml: top level: 'paper_file' is given without 'paper_ref': allowed both or neither")
    own_header = "title: t\nevaluations: [finetune]\n"
    assert error(own_header + ROW_A) == (
        "ablations/bad.yaml: rows[0] (label 'a'): paper_where: {'subtable': '1a', 'value': '1'} names a paper row, "
        "but the file names no paper_file: allowed null or left out (an ablation the paper does not have), or "
        "paper_ref and paper_file at the top of the file")
    without_where = ROW_A.replace("    paper_where: {subtable: '1a', value: '1'}\n", "")
    assert error(HEADER + without_where) == "ablations/bad.yaml: rows[0]: 'paper_where' is a required property"
    (root / "ablations/good.yaml").write_text(own_header + without_where)
    assert grid("smoke", root, ablations=["good"]).ablations["good"].get("paper_file") is None
    (root / "ablations/loss_curves.yaml").write_text(own_header + without_where)  # its figure takes its name
    with pytest.raises(GridError, match="^ablations/loss_curves.yaml: the name 'loss_curves' is taken by a figure"):
        grid("smoke", root, ablations=["loss_curves"])
