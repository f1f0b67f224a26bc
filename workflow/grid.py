"""The ablation grid: workflow config + preset + ablations/*.yaml -> one cell per run, and the manifest.

Plain Python (no Snakemake, no torch), so it is tested directly (tests/test_grid.py); the workflow
calls `build_grid` once at parse time (workflow/rules/common.smk), before any job.

    ablation file   one paper table or figure, or an ablation of your own (no paper_file): rows of
                    dotted `mae` settings over the preset
    cell            one `mae <stage>` run: its run id (mae.config.identity), the config the job reads,
                    the pretraining it starts from, the ablation rows that use it
    manifest        one entry per (ablation, row, seed, stage): the run that answers it

Every setting goes through mae.config (`apply_overrides`, `Config.from_dict(...).resolved()`), so a
grid cell is checked exactly as `mae` checks its config. Cells that resolve to the same configuration
collapse into one run. Every mistake is a GridError: one line naming the file and the field or row.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml
from jsonschema import Draft202012Validator

from mae.choices import check_data_root, check_tracking_uri
from mae.config import Config, apply_overrides, identity, load_yaml_file, read_yaml
from mae.errors import UserError
from mae.run_folder import MODEL_PTH
from workflow.results.figures import FIGURE_NAMES

EVALUATIONS = ("finetune", "linprobe")
SCHEMAS = Path(__file__).resolve().parent / "schemas"


class GridError(Exception):
    """A mistake in the workflow config or an ablation file: one line naming the file and the field or row."""


@dataclass
class Cell:
    """One run of the grid (runs/{preset}/{stage}/{run_id}).

    Args:
        stage: pretrain, finetune or linprobe.
        run_id: `mae.config.identity` of the resolved config.
        config: what `mae <stage> --config` reads (runs/{preset}/configs/{stage}/{run_id}.yaml).
        pretrain_run_id: the pretraining cell this evaluation starts from; None for a pretraining and
            for an evaluation whose row sets its checkpoint (null = from scratch).
        rows: (ablation, row label) of every grid entry this run answers, in grid order.
    """

    stage: str
    run_id: str
    config: dict[str, Any]
    pretrain_run_id: str | None = None
    rows: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ablations(self) -> list[str]:
        return sorted({name for name, _ in self.rows})


@dataclass
class Grid:
    """The compiled grid of one preset.

    Args:
        preset: smoke, tiny or paper (workflow/presets/{preset}.yaml).
        ablations: name -> parsed ablation file, for the selected files in selection order.
        cells: (stage, run_id) -> Cell.
        manifest: one entry per (ablation, row, seed, stage), sorted; written as runs/{preset}/manifest.json.
    """

    preset: str
    ablations: dict[str, dict[str, Any]]
    cells: dict[tuple[str, str], Cell]
    manifest: list[dict[str, Any]]

    @property
    def runs_dir(self) -> str:
        return runs_dir(self.preset)

    def data_problem(self) -> str | None:
        """What is missing of the training data the grid's runs read, as `mae` would say it before torch
        (mae.choices.check_data_root), checked on this machine; None when every run's is there."""
        sources = {(c.config["data"]["name"], c.config["data"]["root"], c.config["data"]["download"])
                   for c in self.cells.values()}
        for name, root, download in sorted(sources, key=str):
            try:
                check_data_root(name, root, "train", download)
            except UserError as err:
                return str(err)
        return None

    def pretrained_model(self, stage: str, run_id: str) -> str | None:
        """The model.pth the evaluation `stage`/`run_id` starts from, when it is a pretraining of the grid."""
        start = self.cells[stage, run_id].pretrain_run_id
        return None if start is None else model_path(self.preset, start)


def runs_dir(preset: str) -> str:
    return f"runs/{preset}"


def run_dir(preset: str, stage: str, run_id: str) -> str:
    return f"{runs_dir(preset)}/{stage}/{run_id}"


def model_path(preset: str, pretrain_run_id: str) -> str:
    """The weights a pretraining cell leaves (the pretrain rule's output)."""
    return f"{run_dir(preset, 'pretrain', pretrain_run_id)}/{MODEL_PTH}"


def build_grid(config: Mapping[str, Any], root: str | Path) -> Grid:
    """Validate the workflow config and the selected ablation files and compile the grid.

    Args:
        config: the workflow config (workflow/config.yaml with `--config` overrides).
        root: the folder holding ablations/, paper/ and workflow/presets/.

    Raises:
        GridError: the first mistake, as one line naming the file and the field or row.
    """
    root = Path(root)
    parsed: dict[str, Any] = {}  # ablation name -> its parsed file: `ablations=all` reads each file once
    preset, base, selected, seeds_override = _load_settings(config, root, parsed)
    cells: dict[tuple[str, str], Cell] = {}
    manifest: list[dict[str, Any]] = []
    ablations: dict[str, dict[str, Any]] = {}
    checked: dict[str, tuple[Config, dict]] = {}  # many cells repeat a config: check each once

    def add(stage, built, entry, pretrain_run_id=None):
        try:  # identity also checks the stage's own rules (a pretraining mask ratio)
            run_id = identity(built[0], stage)
        except UserError as err:
            raise GridError(f"ablations/{entry['ablation']}.yaml: row {entry['row']!r}: {err}") from None
        content = _render(built[1], stage, base)
        cell = cells.setdefault((stage, run_id), Cell(stage, run_id, content, pretrain_run_id))
        if cell.config != content:
            diff = [f"{s}.{k}" for s in content for k in content[s] if content[s][k] != cell.config[s].get(k)]
            raise GridError(f"{entry['ablation']}: row {entry['row']!r}: run {stage}/{run_id} is reached with "
                            f"two configs that differ only outside the run identity ({', '.join(diff)})")
        cell.pretrain_run_id = cell.pretrain_run_id or pretrain_run_id
        if (entry["ablation"], entry["row"]) not in cell.rows:
            cell.rows.append((entry["ablation"], entry["row"]))
        manifest.append({**entry, "stage": stage, "run_id": run_id, "run_dir": run_dir(preset, stage, run_id)})
        return run_id

    for name in selected:
        path, ablation, rows = _load_ablation(root, name, preset, base, checked, parsed)
        ablations[name] = ablation
        for i, row in rows:
            row_set = {**ablation.get("set", {}), **row.get("set_by_preset", {}).get(preset, row.get("set", {}))}
            row_seeds = row.get("seeds_by_preset", {}).get(preset, ablation.get("seeds", [0]))
            where = f"rows[{i}] (label {row['label']!r}): "
            for seed in seeds_override or row_seeds:
                data = _check(checked, path, where, base, {**row_set, "run.seed": seed}, f"rows[{i}].set")
                entry = {"ablation": name, "paper_ref": ablation.get("paper_ref"), "row": row["label"],
                         "default": bool(row.get("default", False)), "seed": seed}
                evaluations = row.get("evaluations", ablation["evaluations"])
                # An evaluation whose checkpoint the row sets (null = from scratch) needs no pretraining.
                needs_pretrain = [s for s in evaluations if f"{s}.checkpoint" not in row_set]
                if needs_pretrain or not evaluations:
                    pretrain_id = add("pretrain", data, entry)
                for stage in evaluations:
                    if stage in needs_pretrain:
                        start = {f"{stage}.checkpoint": model_path(preset, pretrain_id)}  # `mae` reads it from the config
                        add(stage, _check(checked, path, where, data[1], start, "grid"), entry, pretrain_id)
                    else:
                        add(stage, data, entry)

    for cell in cells.values():  # tracking keys are outside the run identity: run ids stay as they are
        cell.config["tracking"]["run_name"] = run_name(cell)
        cell.config["tracking"]["tags"] = {"mae.preset": preset, "mae.ablations": ",".join(cell.ablations),
                                           "mae.rows": "; ".join(f"{a}: {r}" for a, r in cell.rows),
                                           "mae.seed": str(cell.config["run"]["seed"])}
    manifest.sort(key=lambda e: (e["ablation"], e["row"], e["seed"], e["stage"]))
    return Grid(preset, ablations, cells, manifest)


def run_name(cell: Cell) -> str:
    """What the run is, for the MLflow run list: `table1a_decoder_depth · 8 · seed 0 · finetune` (the first
    row it answers, in grid order; `+N rows` when cells collapsed). The run id stays a tag (`mae.run_id`)."""
    ablation, row = cell.rows[0]
    others = len(cell.rows) - 1
    more = f" (+{others} row{'s' if others > 1 else ''})" if others else ""
    return f"{ablation} · {row}{more} · seed {cell.config['run']['seed']} · {cell.stage}"


def validate(data: Any, schema: str, name: str) -> None:
    """Check `data` against workflow/schemas/{schema} (as snakemake.utils.validate does: the first error).

    Raises:
        GridError: `{name}: {field}: {message}`, with the allowed keys for an unexpected one.
    """
    error = next(_validator(schema).iter_errors(data), None)
    if error is None:
        return
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    message = error.message
    if error.validator in ("pattern", "oneOf") and "description" in error.schema:  # not the expression or
        message = f"{error.instance!r} is invalid: allowed {error.schema['description']}"  # "any of the schemas"
    if error.validator == "dependentRequired":  # keys that come together: say which one is missing
        given, needed = next((key, [n for n in names if n not in error.instance])
                             for key, names in error.validator_value.items()
                             if key in error.instance and any(n not in error.instance for n in names))
        message = f"{given!r} is given without {', '.join(map(repr, needed))}: allowed both or neither"
    if error.validator == "additionalProperties":
        message += "; allowed: " + ", ".join(error.schema.get("properties", {}))
    raise GridError(f"{name}: {where or 'top level'}: {message}")


# ----------------------------------------------------------------------------------------------
# internals


@functools.cache
def _validator(schema: str) -> Draft202012Validator:
    return Draft202012Validator(yaml.safe_load((SCHEMAS / schema).read_text()))


# The presets there are (workflow/presets/{preset}.yaml), as the config schema allows them
PRESETS = _validator("config.schema.yaml").schema["properties"]["preset"]["enum"]


def _check(checked: dict, path: Any, where: str, data: dict, overrides: dict, source: str) -> tuple[Config, dict]:
    """`data` with dotted `overrides`, built and resolved by mae.config: (Config, its dict). A mistake
    becomes a GridError `{path}: {where}{what mae.config says}`."""
    try:
        merged = apply_overrides(data, overrides, source)
        key = json.dumps(merged, sort_keys=True)
        if key not in checked:
            cfg = Config.from_dict(merged, source=source).resolved()  # resolved: the architecture exists
            checked[key] = (cfg, cfg.to_dict())
    except UserError as err:
        raise GridError(f"{path}: {where}{err}") from None
    return checked[key]


def _check_no_seed_in_set(path: Path, where: str, settings: dict) -> None:
    """A row's seeds come from `seeds` / `seeds_by_preset` (or `--config seeds=`), which replace run.seed: a
    run.seed in `set` would be dropped, and the row would silently be another row's runs."""
    if "run.seed" in settings:
        raise GridError(f"{path}: {where}: run.seed={settings['run.seed']!r} is invalid: allowed the seeds in "
                        "`seeds` (the file's) or a row's `seeds_by_preset`, not in `set`")


def _load_settings(config: Mapping[str, Any], root: Path,
                   parsed: dict[str, Any]) -> tuple[str, dict, list[str], list[int] | None]:
    """(preset, the preset's full unresolved config, the selected ablation names, the seeds override);
    the ablation files read to select them are kept in `parsed`."""
    config = _typed_command_line_values(config)
    validate(config, "config.schema.yaml", "config")
    preset = config["preset"]
    preset_file = root / "workflow/presets" / f"{preset}.yaml"
    try:
        base = read_yaml(preset_file)
    except UserError as err:
        raise GridError(f"{preset_file}: {err}") from None
    if config.get("data_root"):
        base.setdefault("data", {})["root"] = config["data_root"]
    if config.get("mlflow_uri"):  # naming a tracking server turns tracking on, also for presets that keep it off
        try:
            check_tracking_uri(config["mlflow_uri"], "mlflow_uri")
        except UserError as err:
            raise GridError(str(err)) from None
        base.setdefault("tracking", {}).update(uri=config["mlflow_uri"], enabled=True)
    _check({}, preset_file, "", base, {}, str(preset_file))
    base = Config.from_dict(base, source=str(preset_file)).to_dict()  # unresolved: rows may change model.arch
    if config.get("data_root") and base["data"]["name"] == "synthetic":  # it would only rename every run
        raise GridError(f"data_root={config['data_root']!r} is invalid: preset {preset!r} makes synthetic images "
                        "and reads no folder: allowed unset (null)")
    if base["data"]["name"] in ("imagenet", "image_folder") and not base["data"]["root"]:
        raise GridError(f"data_root=None is invalid: preset {preset!r} reads {base['data']['name']}: "
                        "pass --config data_root=/path/to/dataset")
    names = sorted(p.stem for p in (root / "ablations").glob("*.yaml"))
    selected = config["ablations"]
    if selected == "all":  # every file that has rows for this preset (a file's `presets` can leave one out)
        selected = [name for name in names if preset in _file_presets(root, name, parsed)]
    elif isinstance(selected, str):
        if selected not in config["subsets"]:
            raise GridError(f"ablations={selected!r} is invalid: allowed 'all', a subset "
                            f"({', '.join(config['subsets'])}) or a list of: {', '.join(names)}")
        selected = config["subsets"][selected]
    for name in selected:
        if name not in names:
            raise GridError(f"ablations: {name!r} is not a file in ablations/: allowed {', '.join(names)}")
    seeds = config.get("seeds")
    return preset, base, list(selected), [seeds] if isinstance(seeds, int) else seeds


def _typed_command_line_values(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The config with `seeds` as integers: `snakemake --config seeds=[0,1,2]` gives the list's items as
    text (it reads a list as YAML without types), while `seeds=2` arrives as a number."""
    seeds = config.get("seeds")
    if isinstance(seeds, list) and all(isinstance(s, str) and s.isascii() and s.isdigit() for s in seeds):
        return {**config, "seeds": [int(s) for s in seeds]}
    return config


def file_presets(ablation: Mapping[str, Any]) -> list[str]:
    """The presets an ablation file runs under: its top-level `presets`, default all."""
    presets = ablation.get("presets")
    return presets if isinstance(presets, list) else PRESETS


def preset_evaluations(ablation: Mapping[str, Any], preset: str) -> list[str]:
    """The evaluations of an ablation file under `preset`: `evaluations_by_preset`, else `evaluations`."""
    return ablation.get("evaluations_by_preset", {}).get(preset, ablation["evaluations"])


def _read_ablation(root: Path, name: str, parsed: dict[str, Any]) -> Any:
    """ablations/{name}.yaml parsed (once per grid: kept in `parsed`), bounded and strict like a config
    file: alias expansion, duplicate keys, size, bytes. Raises UserError naming the file."""
    if name not in parsed:
        path = Path("ablations") / f"{name}.yaml"
        parsed[name] = load_yaml_file(root / path, str(path), name=str(path))
    return parsed[name]


def _file_presets(root: Path, name: str, parsed: dict[str, Any]) -> list[str]:
    """file_presets of ablations/{name}.yaml; a file that cannot be read counts as running everywhere, so
    that loading it reports the mistake."""
    try:
        ablation = _read_ablation(root, name, parsed)
    except UserError:
        return PRESETS
    return file_presets(ablation) if isinstance(ablation, dict) else PRESETS


def _load_ablation(root: Path, name: str, preset: str, base: dict, checked: dict,
                   parsed: dict[str, Any]) -> tuple[Path, dict, list]:
    """(ablations/{name}.yaml, the parsed and validated file, its (index, row) pairs that run under `preset`)."""
    path = Path("ablations") / f"{name}.yaml"
    try:
        ablation = _read_ablation(root, name, parsed)
    except UserError as err:
        raise GridError(str(err)) from None
    if not isinstance(ablation, dict):
        raise GridError(f"{path}: top level: expected a mapping with title, evaluations, rows (and paper_ref, "
                        "paper_file for a paper item)")
    validate(ablation, "ablation.schema.yaml", str(path))
    if "paper_file" in ablation and not (root / "paper" / ablation["paper_file"]).is_file():
        raise GridError(f"{path}: paper_file: {ablation['paper_file']!r} is not a file in paper/")
    if "paper_file" not in ablation and name in FIGURE_NAMES:  # its figure is named by its file
        raise GridError(f"{path}: the name {name!r} is taken by a figure of the results ({', '.join(FIGURE_NAMES)}): "
                        "allowed another file name for an ablation the paper does not have")
    _check(checked, path, "", base, ablation.get("set", {}), "set")
    _check_paper_rows(root, path, ablation)
    _check_no_seed_in_set(path, "set", ablation.get("set", {}))
    seen, default_row = {}, None
    for i, row in enumerate(ablation["rows"]):
        _check_no_seed_in_set(path, f"rows[{i}].set", row.get("set", {}))
        for preset_name, settings in row.get("set_by_preset", {}).items():
            _check_no_seed_in_set(path, f"rows[{i}].set_by_preset.{preset_name}", settings)
        key = json.dumps([row.get("set", {}), row.get("set_by_preset", {})], sort_keys=True)
        for what, value in (("label", row["label"]), ("set", key)):
            if (what, value) in seen:
                raise GridError(f"{path}: rows[{i}].{what}: duplicates rows[{seen[what, value]}] "
                                "(each row needs its own label and settings)")
            seen[what, value] = i
        if row.get("default") and default_row is not None:  # the one row every other row is compared with
            raise GridError(f"{path}: rows[{i}].default: rows[{default_row}] is the default row already "
                            "(allowed one default row, or none)")
        if row.get("default"):
            default_row = i
    # A preset's own evaluations (the tiny grid probes its ablations and fine-tunes only where a finding
    # needs it), resolved here so that the grid, the tables and the findings read one list.
    ablation["evaluations"] = preset_evaluations(ablation, preset)
    presets = file_presets(ablation)
    rows = [(i, row) for i, row in enumerate(ablation["rows"]) if preset in row.get("presets", presets)]
    if preset not in presets:
        raise GridError(f"{path}: presets: the file runs under {', '.join(presets)}, not {preset!r}: "
                        "allowed there, or another ablation")
    if not rows:
        raise GridError(f"{path}: rows: no row runs under preset {preset!r} (see each row's presets)")
    return path, ablation, rows


def _check_paper_rows(root: Path, path: Path, ablation: dict) -> None:
    """Every row's paper_where selects one row of paper_file holding a number for one of the row's
    evaluations (a row that only pretrains needs the row alone); else the paper cells would go blank.
    Without a paper_file (an ablation the paper does not have) no row may name one."""
    from workflow.results.paper import PAPER_COLUMNS, load_paper_table, match_paper_row, paper_number
    paper = load_paper_table(root / "paper", ablation["paper_file"]) if "paper_file" in ablation else None
    for i, row in enumerate(ablation["rows"]):
        where = row.get("paper_where")
        label = f"{path}: rows[{i}] (label {row['label']!r}): paper_where"
        if where is not None and paper is None:
            raise GridError(f"{label}: {where} names a paper row, but the file names no paper_file: allowed null "
                            "or left out (an ablation the paper does not have), or paper_ref and paper_file "
                            "at the top of the file")
        if where is None:
            continue
        found, why = match_paper_row(paper, where, ablation["paper_file"])
        if found is None:
            raise GridError(f"{label}: {why}: allowed values that select exactly one row (or null: a point "
                            "the paper lacks)")
        evaluations = row.get("evaluations", ablation["evaluations"])
        columns = [c for e in evaluations for c in PAPER_COLUMNS[e]]
        if evaluations and all(math.isnan(paper_number(found, PAPER_COLUMNS[e])) for e in evaluations):
            raise GridError(f"{label}: {where} selects a row of paper/{ablation['paper_file']} with no number in "
                            f"{', '.join(dict.fromkeys(columns))}: allowed a row the paper reports, or null")


def _render(data: dict, stage: str, base: dict) -> dict:
    """The config a `mae <stage>` job reads: the cell's resolved model/data/run and stage section, the
    other stage sections from the preset (so one run id always renders one content)."""
    return {section: copy.deepcopy(base[section] if section in ("pretrain", *EVALUATIONS) and section != stage
                                   else values) for section, values in data.items()}
