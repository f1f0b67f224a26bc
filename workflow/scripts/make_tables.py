"""Paper-vs-ours tables (Table 1a-f, 2, 3, Fig. 5, 7, 9 as tables) in Markdown, LaTeX and CSV.

Per ablation row: the paper's ft / lin (paper/<paper_file>, row chosen by the ablation row's
paper_where glob match), ours (mean ± sample std over seeds, n), ours − paper, the paper's default
row in bold. Table 2 adds our pretraining wall-clock and speedup vs the w/ [M] row; a table whose
paper rows carry relative_training_FLOPs (Table 1c) adds our training-FLOPs ratio. Missing cells are
"—" and a note under the table says which run is missing and why.

Snakemake rule (see docs/DESIGN.md, "Results"):
    rule make_tables:
        input:  manifest="runs/{preset}/manifest.json", runs="results/{preset}/runs.csv"
        output: one file per ablation and format, named results/{preset}/tables/{ablation}.{md,tex,csv}
                (the file stem is the ablation name, the suffix picks the format)
        params: ablations={name: parsed ablation YAML}, preset="{preset}", paper_dir="paper"
        log:    "logs/{preset}/make_tables.log"
        script: "../scripts/make_tables.py"
"""

import fnmatch
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from collect_runs import read_manifest, read_runs_table, setup_logging
from results_style import (EVALUATION_NAMES, EVALUATION_SHORT, MISSING, PAPER_BIBKEY, PAPER_CITATION,
                           PAPER_SETTINGS, arch_display, dataset_display, format_mean_std, format_number,
                           format_signed)

log = logging.getLogger("make_tables")

# Which paper column holds the number an evaluation is compared with (first one present wins):
# Fig. 9's CSV has a single top1 column for its (partial) fine-tuning.
PAPER_COLUMNS = {"finetune": ["ft_top1", "top1"], "linprobe": ["lin_top1"]}
ACCURACY_METRIC = "top1"
FLOPS_PATTERN = re.compile(r"relative_training_FLOPs=([0-9.]+)x")


@dataclass
class AblationSummary:
    """Everything a table or figure needs about one ablation: numbers per row, notes, caption."""
    name: str
    title: str
    paper_ref: str
    paper_file: str
    preset: str
    evaluations: list[str]
    rows: pd.DataFrame                       # one row per ablation row, numeric columns (see summarize_ablation)
    notes: list[str] = field(default_factory=list)
    caption: str = ""
    has_wallclock: bool = False              # Table 2 columns
    has_flops: bool = False                  # Table 1c columns
    time_unit: tuple[str, float] = ("s", 1.0)

    @property
    def heading(self) -> str:
        return f"{self.paper_ref}: {self.title} ({self.preset} preset)"


def yaml_text(value) -> str:
    """A paper_where value as the CSV spells it (YAML true -> 'true', 8 -> '8')."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def load_paper_table(paper_dir: str | Path, paper_file: str) -> pd.DataFrame:
    return pd.read_csv(Path(paper_dir) / paper_file, dtype=str, keep_default_na=False)


def match_paper_row(paper: pd.DataFrame, where: dict, paper_file: str) -> tuple[pd.Series | None, str]:
    """The one paper row whose columns equal or glob-match every paper_where value; (None, why) otherwise."""
    if where is None:
        return None, "not in the paper (a point added at this scale)"
    unknown = [column for column in where if column not in paper.columns]
    if unknown:
        return None, f"paper_where names columns {unknown} that paper/{paper_file} lacks"
    selected = pd.Series(True, index=paper.index)
    for column, pattern in where.items():
        # equal text first, so literal brackets ("encoder w/ [M]") are not read as a glob character class
        selected &= paper[column].map(lambda cell, p=yaml_text(pattern): cell == p or fnmatch.fnmatchcase(cell, p))
    matches = paper[selected]
    if len(matches) == 1:
        return matches.iloc[0], ""
    if matches.empty:
        return None, f"paper_where {where} matches no row of paper/{paper_file}"
    return None, f"paper_where {where} matches {len(matches)} rows of paper/{paper_file}"


def paper_number(paper_row: pd.Series | None, columns: list[str]) -> float:
    if paper_row is None:
        return math.nan
    for column in columns:
        if column in paper_row.index:
            text = paper_row[column].strip()
            return float(text) if text else math.nan
    return math.nan


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


def describe_scale(runs: pd.DataFrame, run_ids: dict[str, set[str]], preset: str) -> str:
    """'tiny preset: Fashion-MNIST 28×28, ViT-micro/7, 8 pretraining epochs, ...' from the runs' configs."""
    per_run = runs.drop_duplicates("run_id").set_index("run_id")

    def column(stage: str, name: str) -> list:
        ids = [i for i in run_ids.get(stage, ()) if i in per_run.index]
        if name not in per_run.columns:
            return []
        return [v.item() if hasattr(v, "item") else v for v in per_run.loc[ids, name].tolist()]

    any_stage = [s for s in ("pretrain", "finetune", "linprobe") if run_ids.get(s)]
    parts = []
    datasets = {v for s in any_stage for v in column(s, "data.name") if isinstance(v, str)}
    sizes = distinct_text([v for s in any_stage for v in column(s, "model.img_size")])
    if datasets:
        parts.append(", ".join(dataset_display(d) for d in sorted(datasets)) + (f" {sizes}×{sizes}" if sizes and "–" not in sizes else ""))
    arches = {v for s in any_stage for v in column(s, "model.arch") if isinstance(v, str)}
    if arches:
        parts.append(", ".join(arch_display(a) for a in sorted(arches)))
    for stage, noun in (("pretrain", "pretraining"), ("finetune", "fine-tuning"), ("linprobe", "linear-probing")):
        epochs = distinct_text(column(stage, f"{stage}.epochs"))
        if epochs:
            parts.append(f"{epochs} {noun} epoch{'' if epochs == '1' else 's'}")
    return f"{preset} preset: " + (", ".join(parts) if parts else "no run configs found")


def run_problem(run_id: str, entry: dict, per_run: pd.DataFrame) -> str | None:
    """Why a run has no usable numbers, or None when it completed."""
    if run_id not in per_run.index:
        return f"{entry['stage']} run {run_id} (seed {entry.get('seed')}): not in runs.csv"
    status = per_run.at[run_id, "status"]
    if status == "completed":
        return None
    reason = per_run.at[run_id, "status_reason"]
    return f"{entry['stage']} run {run_id} (seed {entry.get('seed')}): {status}, {reason}"


def format_flops(value: float) -> str:
    if value != value:
        return MISSING
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g}"


def choose_time_unit(seconds: list[float]) -> tuple[str, float]:
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
    for ft and lin: paper_<e>, ours_<e>_mean, ours_<e>_std, ours_<e>_n, diff_<e>; Table 2 adds
    paper_wallclock_hours, paper_speedup (as printed), paper_group (encoder), paper_is_reference,
    ours_train_time_s_mean/_std/_n, ours_time_per_epoch_s, ours_speedup (per-epoch time of the group's
    reference row / the row's, so a reference estimated from fewer epochs, as the paper's ViT-H w/ [M], works);
    Table 1c adds paper_flops_ratio, ours_flops_per_image, ours_flops_ratio; and `missing` (text).
    """
    paper_file = ablation["paper_file"]
    paper = load_paper_table(paper_dir, paper_file)
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

    records, notes = [], []
    has_wallclock = "wallclock_hours" in paper.columns
    has_flops = False
    run_ids_by_stage: dict[str, set[str]] = {}
    for row in ablation["rows"]:
        label = str(row["label"])
        record = {"row": label, "default": bool(row.get("default", False))}
        paper_row, paper_problem = match_paper_row(paper, row.get("paper_where", {}), paper_file)
        record["paper_found"] = paper_row is not None
        row_notes = [paper_problem] if paper_problem else []

        row_entries = [e for e in entries if str(e.get("row")) == label]
        if not row_entries and preset not in row.get("presets", [preset]):
            row_notes.append(f"this row runs only under presets {row['presets']}")
        elif not row_entries:
            row_notes.append("not in the manifest (not scheduled in this workflow run)")
        stage_ids: dict[str, list[str]] = {}
        for entry in row_entries:
            run_id = str(entry["run_id"])
            ids = stage_ids.setdefault(entry["stage"], [])
            if run_id in ids:
                continue  # the same run listed twice (shared cell): count it once
            ids.append(run_id)
            run_ids_by_stage.setdefault(entry["stage"], set()).add(run_id)
            problem = run_problem(run_id, entry, per_run)
            if problem:
                row_notes.append(problem)

        for evaluation in evaluations:
            short = EVALUATION_SHORT[evaluation]
            paper_value = paper_number(paper_row, PAPER_COLUMNS[evaluation])
            mean, std, n = mean_std_n(metric_values(stage_ids.get(evaluation, []), ACCURACY_METRIC))
            record.update({f"paper_{short}": paper_value, f"ours_{short}_mean": mean,
                           f"ours_{short}_std": std, f"ours_{short}_n": n, f"diff_{short}": mean - paper_value})

        pretrain_ids = stage_ids.get("pretrain", [])
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
                           "ours_train_time_s_n": n, "ours_time_per_epoch_s": mean_std_n(per_epoch)[0]})
        flops_match = FLOPS_PATTERN.search(paper_row.get("extra", "")) if paper_row is not None else None
        if flops_match:
            has_flops = True
        record["paper_flops_ratio"] = float(flops_match.group(1)) if flops_match else math.nan
        record["ours_flops_per_image"] = mean_std_n(metric_values(pretrain_ids, "train_flops_per_image"))[0]

        record["missing"] = "; ".join(row_notes)
        if row_notes:
            notes.append(f"{label}: " + "; ".join(row_notes))
        records.append(record)

    frame = pd.DataFrame(records)
    if has_wallclock:
        # speedup within each encoder (ViT-L, ViT-H) against its own w/ [M] reference row, as Table 2 does
        frame["ours_speedup"] = math.nan
        for group, members in frame.groupby("paper_group", sort=False):
            reference = members[members["paper_is_reference"]]
            if len(reference) != 1:
                notes.append(f"speedup ({group or 'no paper row'}): no single w/ [M] reference row "
                             f"among {members['row'].tolist()}")
                continue
            reference_time = reference["ours_time_per_epoch_s"].iloc[0]
            frame.loc[members.index, "ours_speedup"] = reference_time / members["ours_time_per_epoch_s"]
    if has_flops:
        default_rows = frame[frame["default"]]
        default_flops = default_rows["ours_flops_per_image"].iloc[0] if len(default_rows) == 1 else math.nan
        frame["ours_flops_ratio"] = frame["ours_flops_per_image"] / default_flops
    else:
        frame = frame.drop(columns=["paper_flops_ratio", "ours_flops_per_image"])

    summary = AblationSummary(
        name=name, title=str(ablation.get("title", name)), paper_ref=str(ablation.get("paper_ref", name)),
        paper_file=paper_file, preset=preset, evaluations=evaluations, rows=frame, notes=notes,
        has_wallclock=has_wallclock, has_flops=has_flops,
        time_unit=choose_time_unit(frame["ours_train_time_s_mean"].tolist()) if has_wallclock else ("s", 1.0))
    summary.caption = table_caption(summary, describe_scale(runs, run_ids_by_stage, preset))
    return summary


def table_caption(summary: AblationSummary, scale: str) -> str:
    paper_setting = PAPER_SETTINGS.get(summary.paper_file, f"see paper/{summary.paper_file}")
    metric_names = " and ".join(EVALUATION_NAMES[e] for e in summary.evaluations)
    text = (f"Ours: {scale}. Paper: {paper_setting}. "
            f"Top-1 accuracy (%) after {metric_names}; ours = mean ± sample std over seeds (n seeds); "
            f"Δ = ours − paper (different data and scale: compare trends, not levels). "
            f"Bold: the paper's default setting. ")
    if summary.has_wallclock:
        text += ("Wall-clock: our pretraining train_time_s; our speedup = time per pretraining epoch of the "
                 "encoder's w/ [M] row / that of the row (paper: hours on 128 TPU-v3 cores and its printed "
                 "speedup; its ViT-H w/ [M] time is an estimate from 10 epochs). ")
    if summary.has_flops:
        text += "FLOPs: training FLOPs per image relative to the default row (ours from train_flops_per_image). "
    return text + f"Paper numbers: {PAPER_CITATION}, {summary.paper_ref} (paper/{summary.paper_file})."


# ---------------------------------------------------------------------------------------------------------
# Rendering: one cell grid, three formats.

def table_cells(summary: AblationSummary) -> tuple[list[str], list[list[str]]]:
    """Header and body cells (Unicode text); the row label is the first cell of each body row."""
    header = [summary.title]
    for evaluation in summary.evaluations:
        short = EVALUATION_SHORT[evaluation]
        header += [f"paper {short}", f"ours {short}", f"Δ {short}"]
    unit_name, unit_seconds = summary.time_unit
    if summary.has_wallclock:
        header += ["paper wall-clock (h)", f"ours wall-clock ({unit_name})", "paper speedup", "ours speedup"]
    if summary.has_flops:
        header += ["paper FLOPs (rel.)", "ours FLOPs/image", "ours FLOPs (rel.)"]

    body = []
    for _, r in summary.rows.iterrows():
        cells = [r["row"]]
        for evaluation in summary.evaluations:
            short = EVALUATION_SHORT[evaluation]
            cells += [format_number(r[f"paper_{short}"], 1),
                      format_mean_std(r[f"ours_{short}_mean"], r[f"ours_{short}_std"], int(r[f"ours_{short}_n"])),
                      format_signed(r[f"diff_{short}"])]
        if summary.has_wallclock:
            printed = str(r["paper_speedup"]).strip()
            cells += [format_number(r["paper_wallclock_hours"], 1),
                      format_mean_std(r["ours_train_time_s_mean"] / unit_seconds,
                                      r["ours_train_time_s_std"] / unit_seconds, int(r["ours_train_time_s_n"]), 1),
                      "reference" if r["paper_is_reference"] else (printed.replace("x", "×") if printed else MISSING),
                      "reference" if r["paper_is_reference"] and r["ours_speedup"] == r["ours_speedup"]
                      else (f"{r['ours_speedup']:.2f}×" if r["ours_speedup"] == r["ours_speedup"] else MISSING)]
        if summary.has_flops:
            cells += [f"{r['paper_flops_ratio']:g}×" if r["paper_flops_ratio"] == r["paper_flops_ratio"] else MISSING,
                      format_flops(r["ours_flops_per_image"]),
                      f"{r['ours_flops_ratio']:.2f}×" if r["ours_flops_ratio"] == r["ours_flops_ratio"] else MISSING]
        body.append(cells)
    return header, body


def render_markdown(summary: AblationSummary) -> str:
    header, body = table_cells(summary)
    escape = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    lines = [f"**{summary.heading}.** {summary.caption}", "",
             "| " + " | ".join(escape(h) for h in header) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    for (_, r), cells in zip(summary.rows.iterrows(), body):
        label = f"**{escape(cells[0])}** (default)" if r["default"] else escape(cells[0])
        lines.append("| " + " | ".join([label] + [escape(c) for c in cells[1:]]) + " |")
    if summary.notes:
        lines += ["", f"{MISSING} missing:"] + [f"- {escape(note)}" for note in summary.notes]
    return "\n".join(lines) + "\n"


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "—": "---", "–": "--", "−": "$-$", "±": r"$\pm$", "Δ": r"$\Delta$", "×": r"$\times$",
                  "…": r"\ldots{}", "†": r"\dag{}", "[": "{[}", "]": "{]}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def render_latex(summary: AblationSummary) -> str:
    header, body = table_cells(summary)
    columns = "l" + "r" * (len(header) - 1)
    lines = [f"% {summary.name}, {summary.preset} preset: generated by workflow/scripts/make_tables.py "
             f"from results/{summary.preset}/runs.csv and paper/{summary.paper_file}. Needs booktabs.",
             r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{\textbf{{{latex_escape(summary.heading)}.}} {latex_escape(summary.caption)} "
             rf"\cite{{{PAPER_BIBKEY}}}}}",
             rf"\label{{tab:{summary.name}-{summary.preset}}}",
             rf"\begin{{tabular}}{{{columns}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    for (_, r), cells in zip(summary.rows.iterrows(), body):
        label = rf"\textbf{{{latex_escape(cells[0])}}} (default)" if r["default"] else latex_escape(cells[0])
        lines.append(" & ".join([label] + [latex_escape(c) for c in cells[1:]]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if summary.notes:
        lines.append(r"\par\smallskip\footnotesize " + latex_escape(f"{MISSING} missing: " + " | ".join(summary.notes)))
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def render_csv(summary: AblationSummary) -> str:
    frame = summary.rows.copy()
    frame.insert(0, "paper_ref", summary.paper_ref)
    frame.insert(0, "ablation", summary.name)
    frame.insert(2, "preset", summary.preset)
    return frame.round(6).to_csv(index=False)


RENDERERS = {".md": render_markdown, ".tex": render_latex, ".csv": render_csv}


def make_tables(manifest: list[dict], runs: pd.DataFrame, ablations: dict[str, dict], paper_dir: str | Path,
                preset: str, outputs: list[str | Path]) -> dict[str, AblationSummary]:
    """Write every requested table file; the file stem names the ablation, the suffix the format."""
    summaries: dict[str, AblationSummary] = {}
    for output in map(Path, outputs):
        name = output.stem
        if name not in ablations:
            raise ValueError(f"{output}: no ablation named {name!r} (have: {sorted(ablations)})")
        if output.suffix not in RENDERERS:
            raise ValueError(f"{output}: unknown table format {output.suffix!r} (use .md, .tex or .csv)")
        if name not in summaries:
            summaries[name] = summarize_ablation(name, ablations[name], manifest, runs, paper_dir, preset)
            for note in summaries[name].notes:
                log.warning("%s: missing %s", name, note)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(RENDERERS[output.suffix](summaries[name]))
        log.info("wrote %s", output)
    return summaries


if "snakemake" in globals():
    setup_logging(snakemake.log[0] if snakemake.log else None)  # noqa: F821
    make_tables(read_manifest(snakemake.input.manifest), read_runs_table(snakemake.input.runs),  # noqa: F821
                dict(snakemake.params.ablations), snakemake.params.paper_dir,  # noqa: F821
                snakemake.params.preset, list(snakemake.output))  # noqa: F821
elif __name__ == "__main__":
    sys.exit("make_tables.py runs under Snakemake (rule make_tables); import make_tables() to call it directly")
