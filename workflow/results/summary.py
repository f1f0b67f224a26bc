"""One ablation's runs joined with the paper's numbers: the AblationSummary that tables and figures draw.

Per ablation row: the paper's ft / lin (paper/<paper_file>, row chosen by the ablation row's paper_where
glob match), ours (mean ± sample std over seeds, n), and each row's difference from the table's default
row, ours (paired by seed) beside the paper's (its own numbers): levels on different data and scales are
not comparable, effects are. The per-seed values behind every mean are kept (`seed_values`) for the
figures' seed points and the findings' intervals (findings.py). Table 2 adds our pretraining
wall-clock and speedup vs the w/ [M] row; a table whose paper rows carry relative_training_FLOPs
(Table 1c) adds our training-FLOPs ratio. A missing cell is NaN and a note says which run is missing and why.
An ablation the paper does not have (no paper_file) has ours and our Δ alone (`in_paper` false).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from workflow.results.paper import (PAPER_COLUMNS, load_paper_table, match_paper_row, paper_flops_ratio,
                                    paper_number)
from workflow.results.style import arch_display, dataset_display

# The evaluations a summary compares, and the short name their columns carry (paper_ft, ours_lin_mean, ...).
EVALUATION_SHORT = {"finetune": "ft", "linprobe": "lin"}
ACCURACY_METRIC = "top1"
STAGE_NOUNS = {"pretrain": "pretraining", "finetune": "fine-tuning", "linprobe": "linear-probing"}


@dataclass(frozen=True)
class Scale:
    """What our runs of one ablation ran at, read from their configs (None / absent: no run config)."""
    preset: str
    data: str | None = None                               # "Fashion-MNIST 28×28"
    arch: str | None = None                               # "ViT-micro/7"
    epochs: dict[str, str] = field(default_factory=dict)  # stage -> "8", or "4–8" for a range

    @property
    def parts(self) -> list[str]:
        parts = [part for part in (self.data, self.arch) if part]
        for stage, epochs in self.epochs.items():
            parts.append(f"{epochs} {STAGE_NOUNS[stage]} epoch{'' if epochs == '1' else 's'}")
        return parts

    def describe(self) -> str:
        """'tiny preset: Fashion-MNIST 28×28, ViT-micro/7, 8 pretraining epochs, ...'."""
        return f"{self.preset} preset: " + (", ".join(self.parts) or "no run configs found")

    def headline(self) -> str:
        """'tiny preset, Fashion-MNIST 28×28': the preset and its first fact (a legend entry)."""
        return f"{self.preset} preset, " + next(iter(self.parts), "no run configs found")


@dataclass
class AblationSummary:
    """Everything a table or figure needs about one ablation: numbers per row, notes, scale."""
    name: str
    title: str
    paper_ref: str | None                    # None: an ablation the paper does not have
    paper_file: str | None
    preset: str
    evaluations: list[str]
    rows: pd.DataFrame                       # one row per ablation row, numeric columns (see summarize_ablation)
    scale: Scale
    notes: list[str] = field(default_factory=list)
    has_wallclock: bool = False              # Table 2 columns
    has_flops: bool = False                  # Table 1c columns
    time_unit: tuple[str, float] = ("s", 1.0)
    # (row label, stage, metric) -> {seed: value} of every completed run behind the row's numbers
    seed_values: dict[tuple[str, str, str], dict[int, float]] = field(default_factory=dict)

    @property
    def in_paper(self) -> bool:
        """Whether the ablation mirrors a paper item (its file names paper_ref and paper_file)."""
        return self.paper_file is not None

    @property
    def heading(self) -> str:
        return ablation_heading(self.paper_ref, self.title)

    @property
    def has_default(self) -> bool:
        """Whether exactly one row is the paper's default: the reference of the Δ columns."""
        return int(self.rows["default"].sum()) == 1 if len(self.rows) else False

    def values(self, row: str, stage: str, metric: str = "top1") -> dict[int, float]:
        """{seed: value} of `metric` of the row's `stage` runs ({} when none finished)."""
        return self.seed_values.get((str(row), stage, metric), {})


def ablation_heading(paper_ref: str | None, title: str) -> str:
    """'Table 1c: Mask token' for a paper item; the title alone for an ablation the paper does not have."""
    return f"{paper_ref}: {title}" if paper_ref else title


def mean_std_n(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; NaN for one value), count."""
    series = pd.Series(values, dtype=float).dropna()
    n = len(series)
    if n == 0:
        return math.nan, math.nan, 0
    return float(series.mean()), float(series.std(ddof=1)) if n > 1 else math.nan, n


def distinct_text(values) -> str | None:
    """'8' when all equal, '4–8' for a range, None when nothing is known."""
    known = sorted({v for v in values if not pd.isna(v)})
    if not known:
        return None
    as_text = [f"{v:g}" if isinstance(v, float) else str(v) for v in known]
    return as_text[0] if len(known) == 1 else f"{as_text[0]}–{as_text[-1]}"


def image_size_text(value) -> str | None:
    """`model.img_size` as 'H×W': 28 -> '28×28', [14, 28] or runs.csv's JSON '[14, 28]' -> '14×28'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]}×{value[1]}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value}×{value}"


def encoder_text(per_run: pd.DataFrame, run_ids: list[str]) -> str:
    """The encoder the runs trained, as width and depth ('128-d, 4 blocks'; '' when unknown or mixed): what
    stood in for the paper's ViT-L or ViT-H in Table 2 at a small preset."""
    columns = ["model.embed_dim", "model.depth"]
    known = [i for i in run_ids if i in per_run.index]
    if not known or not set(columns) <= set(per_run.columns):
        return ""
    shapes = {tuple(per_run.loc[i, columns]) for i in known}
    if len(shapes) != 1 or any(pd.isna(v) for v in next(iter(shapes))):
        return ""
    width, depth = (int(float(v)) for v in shapes.pop())
    return f"{width}-d, {depth} block{'' if depth == 1 else 's'}"


def stand_ins(summary: AblationSummary) -> str:
    """Table 2's encoders and what ours ran for each: 'ViT-L: 128-d, 4 blocks; ViT-H: 160-d, 6 blocks'."""
    rows = summary.rows
    if "ours_encoder" not in rows.columns:
        return ""
    pairs = dict.fromkeys((group, encoder) for group, encoder in zip(rows["paper_group"], rows["ours_encoder"])
                          if group and encoder)
    return "; ".join(f"{group}: {encoder}" for group, encoder in pairs)


def scale_of(runs: pd.DataFrame, run_ids: dict[str, set[str]], preset: str) -> Scale:
    """The data, architecture and epochs of the runs (by stage) from their configs in runs.csv."""
    per_run = runs.drop_duplicates("run_id").set_index("run_id")

    def column(stage: str, name: str) -> list:
        ids = [i for i in run_ids.get(stage, ()) if i in per_run.index]
        if name not in per_run.columns:
            return []
        return [v.item() if hasattr(v, "item") else v for v in per_run.loc[ids, name].tolist()]

    any_stage = [s for s in STAGE_NOUNS if run_ids.get(s)]
    data = arch = None
    datasets = {v for s in any_stage for v in column(s, "data.name") if isinstance(v, str)}
    sizes = {text for s in any_stage for v in column(s, "model.img_size") if (text := image_size_text(v))}
    if datasets:
        data = ", ".join(dataset_display(d) for d in sorted(datasets))
        data += f" {sizes.pop()}" if len(sizes) == 1 else ""
    arches = {v for s in any_stage for v in column(s, "model.arch") if isinstance(v, str)}
    if arches:
        arch = ", ".join(arch_display(a) for a in sorted(arches))
    epochs = {stage: text for stage in STAGE_NOUNS if (text := distinct_text(column(stage, f"{stage}.epochs")))}
    return Scale(preset, data, arch, epochs)


def run_problem(run_id: str, entry: dict, per_run: pd.DataFrame) -> str | None:
    """Why a run has no usable numbers, or None when it completed."""
    if run_id not in per_run.index:
        return f"{entry['stage']} run {run_id} (seed {entry.get('seed')}): not in runs.csv"
    status = per_run.at[run_id, "status"]
    if status == "completed":
        return None
    reason = per_run.at[run_id, "status_reason"]
    return f"{entry['stage']} run {run_id} (seed {entry.get('seed')}): {status}, {reason}"


def choose_time_unit(seconds: list[float]) -> tuple[str, float]:
    """(name, seconds per unit) that keeps the largest wall-clock readable: s, min or h."""
    known = [s for s in seconds if s == s]
    largest = max(known) if known else 0.0
    if largest >= 7200:
        return "h", 3600.0
    if largest >= 120:
        return "min", 60.0
    return "s", 1.0


def summarize_ablation(name: str, ablation: dict, manifest: list[dict], runs: pd.DataFrame,
                       paper_dir: str | Path, preset: str) -> AblationSummary:
    """Join one ablation's runs with the paper's numbers.

    Returns an AblationSummary whose `rows` frame has, per ablation row: row, default, paper_found,
    for ft and lin: paper_<e>, ours_<e>_mean, ours_<e>_std, ours_<e>_n, delta_paper_<e>,
    delta_ours_<e>_mean/_std/_n (vs the default row: add_deltas); Table 2 adds
    paper_wallclock_hours, paper_speedup (as printed), paper_group (encoder), paper_is_reference,
    ours_train_time_s_mean/_std/_n, ours_time_per_epoch_s, ours_encoder (its pretrainings' encoder width and
    depth, `encoder_text`), ours_speedup (per-epoch time of the group's
    reference row / the row's, so a reference estimated from fewer epochs, as the paper's ViT-H w/ [M], works);
    Table 1c adds paper_flops_ratio, ours_flops_per_image, ours_flops_ratio; and `missing` (text).
    """
    paper_file = ablation.get("paper_file")  # None: an ablation the paper does not have
    paper = load_paper_table(paper_dir, paper_file) if paper_file else pd.DataFrame()
    evaluations = [e for e in ablation.get("evaluations", ["finetune", "linprobe"]) if e in EVALUATION_SHORT]
    entries = [e for e in manifest if e.get("ablation") == name]
    per_run = runs.drop_duplicates("run_id").set_index("run_id") if len(runs) else pd.DataFrame()
    completed = runs[(runs["status"] == "completed") & runs["metric"].notna()]
    metric_table = completed.pivot_table(index="run_id", columns="metric", values="value", aggfunc="first")

    def metric_values(run_ids: list[str], metric: str) -> list[float]:
        if metric not in metric_table.columns:
            return []
        return [float(metric_table.at[i, metric]) for i in run_ids if i in metric_table.index
                and metric_table.at[i, metric] == metric_table.at[i, metric]]

    def by_seed(run_ids: list[str], seeds: dict[str, int], metric: str) -> dict[int, float]:
        if metric not in metric_table.columns:
            return {}
        return {seeds[i]: float(metric_table.at[i, metric]) for i in run_ids if i in metric_table.index
                and metric_table.at[i, metric] == metric_table.at[i, metric]}

    records, notes, seed_values = [], [], {}
    has_wallclock = "wallclock_hours" in paper.columns
    run_ids_by_stage: dict[str, set[str]] = {}
    for row in ablation["rows"]:
        label = str(row["label"])
        record = {"row": label, "default": bool(row.get("default", False))}
        paper_row, paper_problem = (match_paper_row(paper, row.get("paper_where"), paper_file) if paper_file
                                    else (None, ""))
        record["paper_found"] = paper_row is not None
        row_notes = [paper_problem] if paper_problem else []

        row_entries = [e for e in entries if str(e.get("row")) == label]
        if not row_entries and preset not in row.get("presets", [preset]):
            row_notes.append(f"this row runs only under presets {row['presets']}")
        elif not row_entries:
            row_notes.append("not in the manifest (not scheduled in this workflow run)")
        stage_ids: dict[str, list[str]] = {}
        run_seeds: dict[str, int] = {}
        for entry in row_entries:
            run_id = str(entry["run_id"])
            ids = stage_ids.setdefault(entry["stage"], [])
            if run_id in ids:
                continue  # the same run listed twice (shared cell): count it once
            ids.append(run_id)
            run_seeds[run_id] = int(entry.get("seed") or 0)
            run_ids_by_stage.setdefault(entry["stage"], set()).add(run_id)
            problem = run_problem(run_id, entry, per_run)
            if problem:
                row_notes.append(problem)

        for evaluation in evaluations:
            short = EVALUATION_SHORT[evaluation]
            paper_value = paper_number(paper_row, PAPER_COLUMNS[evaluation])
            values = by_seed(stage_ids.get(evaluation, []), run_seeds, ACCURACY_METRIC)
            seed_values[(label, evaluation, ACCURACY_METRIC)] = values
            mean, std, n = mean_std_n(list(values.values()))
            record.update({f"paper_{short}": paper_value, f"ours_{short}_mean": mean,
                           f"ours_{short}_std": std, f"ours_{short}_n": n})

        pretrain_ids = stage_ids.get("pretrain", [])
        seed_values[(label, "pretrain", "train_flops_per_image")] = by_seed(pretrain_ids, run_seeds,
                                                                            "train_flops_per_image")
        if has_wallclock:
            mean, std, n = mean_std_n(metric_values(pretrain_ids, "train_time_s"))
            per_epoch = [metric_table.at[i, "train_time_s"] / metric_table.at[i, "epochs"]
                         for i in pretrain_ids if i in metric_table.index
                         and {"train_time_s", "epochs"} <= set(metric_table.columns)
                         and metric_table.at[i, "epochs"] > 0]
            record.update({"paper_wallclock_hours": paper_number(paper_row, ["wallclock_hours"]),
                           "paper_speedup": paper_row["speedup"] if paper_row is not None else "",
                           "paper_group": paper_row.get("encoder", "") if paper_row is not None else "",
                           "paper_is_reference": paper_row is not None
                           and paper_row.get("is_reference_row", "") == "true",
                           "ours_train_time_s_mean": mean, "ours_train_time_s_std": std,
                           "ours_train_time_s_n": n, "ours_time_per_epoch_s": mean_std_n(per_epoch)[0],
                           "ours_encoder": encoder_text(per_run, pretrain_ids)})
        record["paper_flops_ratio"] = paper_flops_ratio(paper_row)
        record["ours_flops_per_image"] = mean_std_n(metric_values(pretrain_ids, "train_flops_per_image"))[0]

        record["missing"] = "; ".join(row_notes)
        if row_notes:
            notes.append(f"{label}: " + "; ".join(row_notes))
        records.append(record)

    frame = pd.DataFrame(records)
    add_deltas(frame, evaluations, seed_values)
    if has_wallclock:
        notes += add_speedup(frame)
    has_flops = bool(frame["paper_flops_ratio"].notna().any())
    if has_flops:
        default_rows = frame[frame["default"]]
        default_flops = default_rows["ours_flops_per_image"].iloc[0] if len(default_rows) == 1 else math.nan
        frame["ours_flops_ratio"] = frame["ours_flops_per_image"] / default_flops
    else:
        frame = frame.drop(columns=["paper_flops_ratio", "ours_flops_per_image"])

    return AblationSummary(
        name=name, title=str(ablation.get("title", name)), paper_ref=ablation.get("paper_ref"),
        paper_file=paper_file, preset=preset, evaluations=evaluations, rows=frame,
        scale=scale_of(runs, run_ids_by_stage, preset), notes=notes, has_wallclock=has_wallclock,
        has_flops=has_flops, seed_values=seed_values,
        time_unit=choose_time_unit(frame["ours_train_time_s_mean"].tolist()) if has_wallclock else ("s", 1.0))


def add_deltas(frame: pd.DataFrame, evaluations: list[str],
               seed_values: dict[tuple[str, str, str], dict[int, float]]) -> None:
    """Each row's difference from the table's one default row, per evaluation: delta_paper_<e> (the
    paper's row − its default row) and delta_ours_<e>_mean/_std/_n (mean and sample std of the per-seed
    differences, over the seeds both rows have). NaN for the default row itself and without one default."""
    defaults = frame.index[frame["default"]] if len(frame) else []
    for evaluation in evaluations:
        short = EVALUATION_SHORT[evaluation]
        columns = [f"delta_paper_{short}", f"delta_ours_{short}_mean", f"delta_ours_{short}_std",
                   f"delta_ours_{short}_n"]
        for column in columns:
            frame[column] = math.nan
        frame[f"delta_ours_{short}_n"] = 0
        if len(defaults) != 1:
            continue
        default = frame.loc[defaults[0]]
        reference = seed_values.get((default["row"], evaluation, ACCURACY_METRIC), {})
        for index, row in frame.iterrows():
            if index == defaults[0]:
                continue
            values = seed_values.get((row["row"], evaluation, ACCURACY_METRIC), {})
            mean, std, n = mean_std_n([values[s] - reference[s] for s in sorted(values) if s in reference])
            frame.loc[index, columns] = [row[f"paper_{short}"] - default[f"paper_{short}"], mean, std, n]


def add_speedup(frame: pd.DataFrame) -> list[str]:
    """Table 2's ours_speedup column: within each encoder (ViT-L, ViT-H), the per-epoch time of its own
    w/ [M] reference row / the row's, as Table 2 does. Returns notes for groups without one reference."""
    notes = []
    frame["ours_speedup"] = math.nan
    for group, members in frame.groupby("paper_group", sort=False):
        reference = members[members["paper_is_reference"]]
        if len(reference) != 1:
            notes.append(f"speedup ({group or 'no paper row'}): no single w/ [M] reference row "
                         f"among {members['row'].tolist()}")
            continue
        reference_time = reference["ours_time_per_epoch_s"].iloc[0]
        frame.loc[members.index, "ours_speedup"] = reference_time / members["ours_time_per_epoch_s"]
    return notes
