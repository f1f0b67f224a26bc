"""Paper-vs-ours tables (Table 1a-f, 2, 3, Fig. 5, 7, 9 as tables) in Markdown, LaTeX and CSV.

One table per ablation, drawn from its AblationSummary: the paper's ft / lin, ours (mean ± sample std
over seeds, n), each row's difference from the default row (ours paired by seed beside the paper's own),
the paper's default row in bold, Table 2's wall-clock and Table 1c's
FLOPs columns where the summary has them. Missing cells are "—" and a note under the table says
which run is missing and why. The file stem names the ablation, the suffix the format. An ablation the
paper does not have gets ours and our Δ alone, without paper columns or citation.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from workflow.results.findings import CONFIDENCE, MIN_SEEDS, difference_verdict
from workflow.results.paper import PAPER_BIBKEY, PAPER_CITATION, paper_setting
from workflow.results.stats import half_width
from workflow.results.style import (EVALUATION_NAMES, MISSING, REFERENCE, format_flops, format_mean_std, format_number,
                                    format_ratio, format_signed)
from workflow.results.summary import EVALUATION_SHORT, AblationSummary, stand_ins, summarize_ablation

log = logging.getLogger(__name__)


def heading(summary: AblationSummary) -> str:
    return f"{summary.heading} ({summary.preset} preset)"


def caption(summary: AblationSummary) -> str:
    """What ours and the paper measured, how to read the columns, where the paper's numbers come from."""
    metric_names = " and ".join(EVALUATION_NAMES[e] for e in summary.evaluations)
    if not summary.in_paper:
        return _own_caption(summary, metric_names)
    text = f"Ours: {summary.scale.describe()}. Paper: {paper_setting(summary.paper_file)}. "
    if summary.evaluations:  # a preset may time a table's pretrainings without evaluating them (Table 2, tiny)
        text += f"Top-1 accuracy (%) after {metric_names}; ours = mean ± sample std over seeds (n seeds). "
        if summary.has_default:
            text += ("Δ = the row − the default (bold) row of the same table, each on its own data: the paper's "
                     "from its own numbers, ours the mean ± sample std of the per-seed differences (n = seeds both "
                     "rows have); compare effects, not levels (different data and scale). ")
        else:
            text += "Different data and scale: compare the ordering of rows, not levels. "
    text += "Bold: the paper's default setting. "
    if summary.has_wallclock:
        text += ("Wall-clock: our pretraining train_time_s; our speedup = time per pretraining epoch of the "
                 "encoder's w/ [M] row / that of the row (paper: hours on 128 TPU-v3 cores and its printed "
                 "speedup; its ViT-H w/ [M] time is an estimate from 10 epochs). ")
        if encoders := stand_ins(summary):
            text += f"Our encoders for the paper's: {encoders}. "
    if summary.has_flops:
        text += "FLOPs: training FLOPs per image relative to the default row (ours from train_flops_per_image). "
    return text + f"Paper numbers: {PAPER_CITATION}, {summary.paper_ref} (paper/{summary.paper_file})."


def _own_caption(summary: AblationSummary, metric_names: str) -> str:
    """The caption of an ablation the paper does not have: ours only."""
    text = (f"Ours: {summary.scale.describe()}. Not in the paper: an ablation of this workflow's own "
            f"(ablations/{summary.name}.yaml). Top-1 accuracy (%) after {metric_names}; mean ± sample std over "
            "seeds (n seeds). ")
    if summary.has_default:
        text += (f"Δ = the row − the default (bold) row: the mean of the per-seed differences and its "
                 f"{CONFIDENCE:.0%} t interval (n = seeds both rows have); verdict: the interval entirely above 0 = "
                 f"above the default, entirely below = below, else (or fewer than {MIN_SEEDS} seeds) inconclusive. ")
    return text + ("Bold: the file's default row." if summary.has_default else "No default row: no Δ columns.")


def own_difference(row: pd.Series, short: str) -> tuple[float, float, str]:
    """(low, high, verdict) of the t interval of a row's paired Δ from the default row (an ablation the
    paper does not have); NaN bounds below two seeds."""
    mean, std, n = row[f"delta_ours_{short}_mean"], row[f"delta_ours_{short}_std"], int(row[f"delta_ours_{short}_n"])
    half = half_width(std, n, CONFIDENCE) if n >= 2 and std == std else math.nan
    low, high = mean - half, mean + half
    return low, high, difference_verdict(low, high, n)


def format_interval(mean: float, low: float, high: float, n: int) -> str:
    """'+1.20 [+0.35, +2.05] (n=4)'; without an interval '+1.20 (n=1)'; no seed: '—'."""
    if not n or mean != mean:
        return MISSING
    interval = f" [{format_signed(low)}, {format_signed(high)}]" if low == low else ""
    return f"{format_signed(mean)}{interval} (n={n})"


def table_cells(summary: AblationSummary) -> tuple[list[str], list[list[str]]]:
    """Header and body cells (Unicode text); the row label is the first cell of each body row."""
    header = [summary.title]
    for evaluation in summary.evaluations:
        short = EVALUATION_SHORT[evaluation]
        header += [f"paper {short}", f"ours {short}"] if summary.in_paper else [f"ours {short}"]
        if summary.has_default:
            header += ([f"paper Δ{short}", f"ours Δ{short}"] if summary.in_paper
                       else [f"ours Δ{short} [{CONFIDENCE:.0%} CI]", f"{short} verdict"])
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
            paper = [format_number(r[f"paper_{short}"], 1)] if summary.in_paper else []
            cells += paper + [format_mean_std(r[f"ours_{short}_mean"], r[f"ours_{short}_std"],
                                              int(r[f"ours_{short}_n"]))]
            if summary.has_default and r["default"]:
                cells += [REFERENCE, REFERENCE]
            elif summary.has_default and summary.in_paper:
                cells += [format_signed(r[f"delta_paper_{short}"], 1),
                          format_mean_std(r[f"delta_ours_{short}_mean"], r[f"delta_ours_{short}_std"],
                                          int(r[f"delta_ours_{short}_n"]), signed=True)]
            elif summary.has_default:
                low, high, verdict = own_difference(r, short)
                cells += [format_interval(r[f"delta_ours_{short}_mean"], low, high, int(r[f"delta_ours_{short}_n"])),
                          verdict]
        if summary.has_wallclock:
            printed = str(r["paper_speedup"]).strip()
            cells += [format_number(r["paper_wallclock_hours"], 1),
                      format_mean_std(r["ours_train_time_s_mean"] / unit_seconds,
                                      r["ours_train_time_s_std"] / unit_seconds, int(r["ours_train_time_s_n"]), 1),
                      REFERENCE if r["paper_is_reference"] else (printed.replace("x", "×") if printed else MISSING),
                      REFERENCE if r["paper_is_reference"] and r["ours_speedup"] == r["ours_speedup"]
                      else format_ratio(r["ours_speedup"])]
        if summary.has_flops:
            cells += [format_ratio(r["paper_flops_ratio"], "g"), format_flops(r["ours_flops_per_image"]),
                      format_ratio(r["ours_flops_ratio"])]
        body.append(cells)
    return header, body


# Markdown and LaTeX are written by hand rather than by DataFrame.to_markdown / Styler.to_latex: to_markdown
# (tabulate) pads every cell to its column's width, and Styler.to_latex has no place for \small and the
# footnote of missing runs and escapes neither ±, Δ nor ×; either would change the published files.

def render_markdown(summary: AblationSummary) -> str:
    header, body = table_cells(summary)
    escape = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    lines = [f"**{heading(summary)}.** {caption(summary)}", "",
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
    sources = f"results/{summary.preset}/runs.csv" + (f" and paper/{summary.paper_file}" if summary.in_paper else "")
    cite = rf" \cite{{{PAPER_BIBKEY}}}" if summary.in_paper else ""
    lines = [f"% {summary.name}, {summary.preset} preset: generated by workflow/scripts/make_tables.py "
             f"from {sources}. Needs booktabs.",
             r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{\textbf{{{latex_escape(heading(summary))}.}} {latex_escape(caption(summary))}{cite}}}",
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
    if not summary.in_paper:  # no paper columns to leave empty; the Δ intervals and verdicts instead
        frame = frame.drop(columns=[c for c in frame.columns if c.startswith(("paper_", "delta_paper_"))])
        for evaluation in summary.evaluations if summary.has_default else []:
            short = EVALUATION_SHORT[evaluation]
            low, high, verdict = zip(*[(math.nan, math.nan, REFERENCE) if r["default"] else own_difference(r, short)
                                       for _, r in frame.iterrows()])
            frame[f"delta_ours_{short}_ci_low"], frame[f"delta_ours_{short}_ci_high"] = low, high
            frame[f"verdict_{short}"] = verdict
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
