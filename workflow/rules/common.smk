# Grid loading and get_* helpers. Everything here runs once, at parse time, before any job:
# ablation files are validated (schema, then mae.config for every key and value), each grid cell is
# resolved by mae.config and named by mae.config.identity, and cells that resolve to the same
# configuration collapse into one run.

import copy
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from mae.config import Config, identity, read_yaml
from mae.errors import UserError

ROOT = Path(workflow.main_snakefile).parent  # the repository: presets, ablations, paper numbers
EVALUATIONS = ("finetune", "linprobe")
# Figure stems of workflow/scripts/make_figures.py -> the paper item (ablation paper_ref) each mirrors.
FIGURES = {"fig5_mask_ratio": "Fig. 5", "fig7_schedule": "Fig. 7", "fig9_partial_ft": "Fig. 9",
           "table2_wallclock": "Table 2"}
FIGURES_ALWAYS = ("reconstruction", "loss_curves")

# Inside a SLURM job, `scancel --signal=USR1`, the profile's `--signal=USR1@300` (time limit ahead) and
# the SIGTERM of a cancel, preemption or requeue reach every process of the job step: the jobstep
# `python -m snakemake` that parses this file, the job's bash and `mae` (or torchrun and its workers).
# Only `mae` acts on them: it checkpoints and exits 75 for the retry. The others ignore them, so that
# none dies first and makes slurmstepd kill `mae` before its checkpoint is written (SLURM's SIGKILL
# after KillWait still ends everything). `mae` and torchrun install their own handlers, so the
# inherited "ignore" does not reach them. Outside SLURM nothing changes.
if "SLURM_JOB_ID" in os.environ:
    for _signal in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(_signal, signal.SIG_IGN)
    shell.prefix("set -euo pipefail; trap '' USR1 TERM; ")


def _schema_error(path, err):
    """One line from a failed snakemake.utils.validate: the file, the field, what is allowed."""
    cause = err.__context__  # the jsonschema ValidationError that validate() turned into a WorkflowError
    if not hasattr(cause, "absolute_path"):
        return f"{path}: {err}"
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in cause.absolute_path).lstrip(".")
    message = cause.message
    if cause.validator == "additionalProperties":
        message += "; allowed: " + ", ".join(cause.schema.get("properties", {}))
    return f"{path}: {field or 'top level'}: {message}"


def _nested(dotted):
    """{'model.mask_ratio': 0.9} -> {'model': {'mask_ratio': 0.9}}."""
    out = {}
    for key, value in dotted.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


def _merge(base, dotted):
    data = copy.deepcopy(base)
    for section, values in _nested(dotted).items():
        data.setdefault(section, {}).update(values)
    return data


_CHECKED = {}  # canonical JSON of a config dict -> (resolved Config, its dict): many cells repeat


def _check(path, where, data, source):
    """Build the config with mae.config's checks; a mistake becomes a one-line WorkflowError."""
    key = json.dumps(data, sort_keys=True)
    if key not in _CHECKED:
        try:
            cfg = Config.from_dict(data, source=source).resolved()  # resolved: the architecture exists
        except UserError as err:
            raise WorkflowError(f"{path}: {where}{err}") from None
        _CHECKED[key] = (cfg, cfg.to_dict())
    return _CHECKED[key]


def _load_settings():
    try:
        validate(config, ROOT / "workflow/schemas/config.schema.yaml")
    except WorkflowError as err:
        raise WorkflowError(_schema_error("config", err)) from None
    preset = config["preset"]
    preset_file = ROOT / "workflow/presets" / f"{preset}.yaml"
    base = read_yaml(preset_file)
    if config.get("data_root"):
        base.setdefault("data", {})["root"] = config["data_root"]
    if config.get("mlflow_uri"):  # naming a tracking server turns tracking on, also for presets that keep it off
        base.setdefault("tracking", {}).update(uri=config["mlflow_uri"], enabled=True)
    _check(preset_file, "", base, str(preset_file))
    base = Config.from_dict(base, source=str(preset_file)).to_dict()  # unresolved: rows may change model.arch
    if base["data"]["name"] in ("imagenet", "image_folder") and not base["data"]["root"]:
        raise WorkflowError(f"data_root=None is invalid: preset {preset!r} reads {base['data']['name']}: "
                            "pass --config data_root=/path/to/dataset")
    names = sorted(p.stem for p in (ROOT / "ablations").glob("*.yaml"))
    selected = config["ablations"]
    if selected == "all":
        selected = names
    elif isinstance(selected, str):
        if selected not in config["subsets"]:
            raise WorkflowError(f"ablations={selected!r} is invalid: allowed 'all', a subset "
                                f"({', '.join(config['subsets'])}) or a list of: {', '.join(names)}")
        selected = config["subsets"][selected]
    for name in selected:
        if name not in names:
            raise WorkflowError(f"ablations: {name!r} is not a file in ablations/: allowed {', '.join(names)}")
    seeds = config.get("seeds")
    return preset, base, list(selected), [seeds] if isinstance(seeds, int) else seeds


def _load_ablation(name, preset, base):
    """The parsed, validated ablation file, and its rows that run under `preset`."""
    path = Path("ablations") / f"{name}.yaml"
    try:
        ablation = yaml.safe_load((ROOT / path).read_text())
    except yaml.YAMLError as err:
        raise WorkflowError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(ablation, dict):
        raise WorkflowError(f"{path}: top level: expected a mapping with title, paper_ref, paper_file, evaluations, rows")
    try:
        validate(ablation, ROOT / "workflow/schemas/ablation.schema.yaml")
    except WorkflowError as err:
        raise WorkflowError(_schema_error(path, err)) from None
    if not (ROOT / "paper" / ablation["paper_file"]).is_file():
        raise WorkflowError(f"{path}: paper_file: {ablation['paper_file']!r} is not a file in paper/")
    _check(path, "", _merge(base, ablation.get("set", {})), "set")
    seen = {}
    for i, row in enumerate(ablation["rows"]):
        key = json.dumps([row.get("set", {}), row.get("set_by_preset", {})], sort_keys=True)
        for what, value in (("label", row["label"]), ("set", key)):
            if (what, value) in seen:
                raise WorkflowError(f"{path}: rows[{i}].{what}: duplicates rows[{seen[what, value]}] "
                                    "(each row needs its own label and settings)")
            seen[what, value] = i
    rows = [(i, row) for i, row in enumerate(ablation["rows"]) if preset in row.get("presets", [preset])]
    if not rows:
        raise WorkflowError(f"{path}: rows: no row runs under preset {preset!r} (see each row's presets)")
    return path, ablation, rows


def _render(data, stage, base):
    """The config a `mae <stage>` job reads: the cell's resolved model/data/run and stage section, the
    other stage sections from the preset (so one run id always renders one content)."""
    return {section: copy.deepcopy(base[section] if section in ("pretrain", *EVALUATIONS) and section != stage
                                   else values) for section, values in data.items()}


def _build_grid():
    preset, base, selected, seeds_override = _load_settings()
    runs_dir = f"runs/{preset}"
    cells, manifest, ablations = {}, [], {}

    def add(stage, checked, entry):
        cfg, data = checked
        run_id = identity(cfg, stage)
        content = _render(data, stage, base)
        cell = cells.setdefault((stage, run_id), {"content": content, "ablations": set()})
        if cell["content"] != content:
            diff = [f"{s}.{k}" for s in content for k in content[s] if content[s][k] != cell["content"][s].get(k)]
            raise WorkflowError(f"{entry['ablation']}: row {entry['row']!r}: run {stage}/{run_id} is reached with "
                                f"two configs that differ only outside the run identity ({', '.join(diff)})")
        cell["ablations"].add(entry["ablation"])
        manifest.append({**entry, "stage": stage, "run_id": run_id, "run_dir": f"{runs_dir}/{stage}/{run_id}"})
        return run_id

    for name in selected:
        path, ablation, rows = _load_ablation(name, preset, base)
        ablations[name] = ablation
        for i, row in rows:
            row_set = {**ablation.get("set", {}), **row.get("set_by_preset", {}).get(preset, row.get("set", {}))}
            row_seeds = row.get("seeds_by_preset", {}).get(preset, ablation.get("seeds", [0]))
            for seed in seeds_override or row_seeds:
                where = f"rows[{i}] (label {row['label']!r}): "
                checked = _check(path, where, _merge(base, {**row_set, "run.seed": seed}), f"rows[{i}].set")
                entry = {"ablation": name, "paper_ref": ablation["paper_ref"], "row": row["label"],
                         "default": bool(row.get("default", False)), "seed": seed}
                evaluations = row.get("evaluations", ablation["evaluations"])
                # An evaluation whose checkpoint the row sets (null = from scratch) needs no pre-training.
                needs_pretrain = [s for s in evaluations if f"{s}.checkpoint" not in row_set]
                if needs_pretrain or not evaluations:
                    pretrain_id = add("pretrain", checked, entry)
                for stage in evaluations:
                    if stage in needs_pretrain:
                        model = f"{runs_dir}/pretrain/{pretrain_id}/model.pth"
                        add(stage, _check(path, where, _merge(checked[1], {f"{stage}.checkpoint": model}), "grid"), entry)
                    else:
                        add(stage, checked, entry)

    for (stage, run_id), cell in cells.items():
        cell["content"]["tracking"]["run_name"] = f"{preset}-{stage}-{run_id}"
        cell["content"]["tracking"]["tags"] = {"mae.preset": preset, "mae.ablations": ",".join(sorted(cell["ablations"]))}
    return preset, runs_dir, cells, manifest, ablations


PRESET, RUNS, CELLS, MANIFEST, ABLATIONS = _build_grid()


def get_rendered_config(wildcards):
    """The full `mae` config of one run (params of render_config)."""
    return CELLS[wildcards.stage, wildcards.run_id]["content"]


def get_manifest():
    return sorted(MANIFEST, key=lambda e: (e["ablation"], e["row"], e["seed"], e["stage"]))


def get_metrics():
    return [f"{e['run_dir']}/metrics.json" for e in get_manifest()]


def get_pretrained_model(wildcards, stage):
    """The pretraining a fine-tune / linear probe starts from ([] when it trains from scratch)."""
    start = CELLS[stage, wildcards.run_id]["content"][stage]["checkpoint"]
    return [start] if start and start.startswith(f"{RUNS}/pretrain/") else []


def get_resource(stage, name):
    return config["resources"][PRESET][stage][name]


def _executable(name):
    """`name` from PATH, else from the environment that runs Snakemake (.venv/bin need not be on PATH)."""
    return shutil.which(name) or str(Path(sys.executable).parent / name)


def get_launcher(wildcards, resources):
    """`mae`, or `mae` under torchrun with one process per GPU the job holds."""
    if resources.gpu > 0:
        return f"{_executable('torchrun')} --standalone --nproc_per_node={resources.gpu} --no-python {_executable('mae')}"
    return _executable("mae")


def get_mlflow_uri():
    return config.get("mlflow_uri") or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def get_experiments():
    return sorted({c["content"]["tracking"]["experiment"] for c in CELLS.values() if c["content"]["tracking"]["enabled"]})


def get_tables(for_report=False):
    """results/{preset}/tables/{ablation}.{md,tex,csv}; for_report: flagged for `snakemake --report`."""
    paths = [(name, f"results/{PRESET}/tables/{name}.{ext}") for name in ABLATIONS for ext in ("md", "tex", "csv")]
    if not for_report:
        return [path for _, path in paths]
    return [report(path, caption=f"../report/table_{name}.rst", category="Tables",
                   subcategory=ABLATIONS[name]["paper_ref"]) for name, path in paths]


def get_figures(for_report=False):
    """results/{preset}/figures/{name}.{png,pdf}: the selected paper figures, reconstructions, losses."""
    refs = {a["paper_ref"] for a in ABLATIONS.values()}
    names = [stem for stem, ref in FIGURES.items() if ref in refs] + list(FIGURES_ALWAYS)
    paths = [(name, f"results/{PRESET}/figures/{name}.{ext}") for name in names for ext in ("png", "pdf")]
    if not for_report:
        return [path for _, path in paths]
    return [report(path, caption=f"../report/figure_{name}.rst", category="Figures") for name, path in paths]


def aggregate_partial_results():
    """After failed jobs (onerror): the same tables and figures from the runs that finished, with
    "—" and a note for the rest, so a partial grid still aggregates."""
    manifest_path = Path(f"{RUNS}/manifest.json")
    if not manifest_path.exists():
        return
    sys.path.insert(0, str(ROOT / "workflow/scripts"))
    try:
        import collect_runs, make_figures, make_tables
    finally:
        sys.path.pop(0)
    manifest = collect_runs.read_manifest(manifest_path)
    runs = collect_runs.write_runs_table(manifest_path, f"results/{PRESET}/runs.csv")
    make_tables.make_tables(manifest, runs, ABLATIONS, str(ROOT / "paper"), PRESET, get_tables())
    for figure in make_figures.make_figures(manifest, runs, ABLATIONS, str(ROOT / "paper"), PRESET,
                                            get_figures()).values():
        make_figures.plt.close(figure)
    logger.warning(f"Some jobs failed: results/{PRESET}/ holds the tables and figures of the runs that "
                   "finished (missing cells show '—' with a note). Rerun the same command to complete them.")
