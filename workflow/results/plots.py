"""The figures drawn, ours against the paper: Fig. 5, 7, 9 curves, Table 2 wall-clock bars, a
reconstruction grid, pretraining loss curves (names and paper items: figures.py). Every builder returns
the matplotlib Figure (tests inspect it); make_figures() saves each requested file.

Style (style.py): one seaborn theme and palette. Ours and the paper never share a y axis (no twin
axes: the data and scales differ): each evaluation gets an "ours" panel and a "paper" panel. Ours shows
every seed as a small point and the mean ± sample std (error bars drawn by hand from the same numbers
the tables print); a mean of one seed is a hollow marker with its own legend entry. A line joins only
neighbouring measured rows of one series; ours' panel lists only the rows the preset runs, the paper's
only the rows it reports. Models are named as what ran (ViT-micro/7 on Fashion-MNIST), the paper's
setting as the paper states it. Bars: ours filled, paper hatched. Long titles wrap.

The run folders (recon.png, metrics.jsonl) are read through the manifest's run_dir paths, relative to
`base_dir` (the working directory).
"""

from __future__ import annotations

import logging
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import pandas as pd  # noqa: E402

from mae.run_folder import METRICS_JSONL, RECON_PNG, read_jsonl  # noqa: E402
from workflow.results.figures import FIGURE_NAMES, FIGURES, find_ablation, own_ablations  # noqa: E402
from workflow.results.findings import compute_findings  # noqa: E402
from workflow.results.paper import paper_setting, parse_speedup  # noqa: E402
from workflow.results.style import (EVALUATION_NAMES, OURS_BAR, OURS_COLOR, OURS_LINE, PALETTE,  # noqa: E402
                                    PAPER_BAR, PAPER_LINE, apply_theme, arch_display, dataset_display,
                                    format_number, format_ratio, save_figure)
from workflow.results.summary import (EVALUATION_SHORT, AblationSummary, ablation_heading,  # noqa: E402
                                      stand_ins, summarize_ablation)

log = logging.getLogger(__name__)

def message_figure(title: str, message: str) -> plt.Figure:
    """A figure that says why there is nothing to plot (so the declared output still exists)."""
    apply_theme()
    figure, ax = plt.subplots(figsize=(7, 2.5), layout="constrained")
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
    return figure


def preset_overrides(ablation: dict, preset: str) -> list[str]:
    """Per row, what the preset ran instead of the paper's value ('' when the row runs as labelled)."""
    texts = []
    for row in ablation["rows"]:
        labelled = row.get("set") or {}
        ran = (row.get("set_by_preset") or {}).get(preset, labelled)  # the preset's settings replace `set`
        changed = [ran[key] for key in labelled if key in ran and ran[key] != labelled[key]]
        texts.append(", ".join(f"{value:g}" if isinstance(value, float) else str(value) for value in changed))
    return texts


ROW_MARGIN = 0.08  # x margin of the accuracy panels: the first and last rows' caps and markers clear the frame


def row_ticks(labels: list[str], overrides: list[str], rows: list[int]) -> list[str]:
    """Tick text of each of `rows`: its label, and under it what the preset ran instead (`preset_overrides`)."""
    return [f"{labels[i]}\n(ours {overrides[i]})" if overrides[i] else labels[i] for i in rows]


def wrap(text: str, width: int = 70) -> str:
    """A long title on several lines (each given line wrapped on its own)."""
    return "\n".join(textwrap.fill(line, width) for line in str(text).splitlines())


def runs_under(ablation: dict, preset: str) -> list[bool]:
    """Per row, whether the preset runs it (a row's `presets` names the presets it runs under)."""
    return [preset in row.get("presets", [preset]) for row in ablation["rows"]]


def row_positions(labels: list[str], categorical: bool) -> np.ndarray:
    """x of each row: its index (categorical, as the paper spaces Fig. 7 and 9) or its label as a number."""
    if not categorical:
        try:
            return np.asarray([float(label) for label in labels], float)
        except ValueError:
            pass
    return np.arange(len(labels), dtype=float)


def plot_series(ax: plt.Axes, x: np.ndarray, values: list[dict[int, float]], label: str,
                style: dict) -> tuple[plt.Line2D, bool]:
    """One series of ours: every seed as a small point, the mean with sample-std error bars (filled
    marker; hollow when one seed), joined by a line only between neighbouring measured rows (a row
    without a result breaks the line). Returns (the mean line, whether a single-seed point was drawn)."""
    color = style["color"]
    means = np.array([np.mean(list(v.values())) if v else np.nan for v in values])
    stds = np.array([np.std(list(v.values()), ddof=1) if len(v) > 1 else np.nan for v in values])
    counts = np.array([len(v) for v in values])
    line, = ax.plot(x, means, label=label, **{**style, "marker": None})  # NaN breaks the line
    for xi, seed_values in zip(x, values):
        if not seed_values:
            continue
        ax.scatter([xi] * len(seed_values), list(seed_values.values()), s=14, color=color, alpha=0.45,
                   linewidths=0, zorder=3)
    several = counts > 1
    ax.errorbar(x[several], means[several], yerr=stds[several], fmt=style.get("marker", "o"), color=color,
                markersize=style.get("markersize", 6), capsize=3, elinewidth=1, zorder=4)
    single = counts == 1
    ax.plot(x[single], means[single], linestyle="none", marker=style.get("marker", "o"),
            markersize=style.get("markersize", 6) + 1, markerfacecolor="white", markeredgecolor=color,
            markeredgewidth=1.5, zorder=5)
    return line, bool(single.any())


def single_seed_handle() -> Line2D:
    """The legend entry of plot_series's hollow marker: a row mean from one seed."""
    return Line2D([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor=OURS_COLOR,
                  markeredgewidth=1.5, markersize=7, label="ours: a single seed (no spread)")


def bold_default_ticks(ax: plt.Axes, shown: list[int], default: pd.Series) -> None:
    """Bold the x tick label of the default row (`shown`: the row index behind each tick)."""
    for tick, index in zip(ax.get_xticklabels(), shown):
        if default.iloc[index]:
            tick.set_fontweight("bold")


def accuracy_curves(summary: AblationSummary, ablation: dict, x_label: str, categorical: bool) -> plt.Figure:
    """Per evaluation two panels, ours and the paper, each on its own y axis (different data and scale:
    never one twin axis). Ours shows every seed, the mean ± sample std, hollow single-seed means and
    only the rows this preset runs; the paper shows the rows it reports.

    Args:
        categorical: rows evenly spaced in their listed order (Fig. 7, 9, as the paper draws them);
            otherwise x is the row label as a number (Fig. 5's masking ratio).
    """
    apply_theme()
    rows = summary.rows
    labels = rows["row"].astype(str).tolist()
    ours_rows = [i for i, runs in enumerate(runs_under(ablation, summary.preset)) if runs]
    overrides = preset_overrides(ablation, summary.preset)
    ours_labels = [labels[i] for i in ours_rows]
    ours_x = row_positions(ours_labels, categorical)
    ours_ticks = row_ticks(labels, overrides, ours_rows)
    ours_name = f"ours: {summary.scale.arch or 'unknown model'} on {summary.scale.data or 'unknown data'}"
    paper_name = f"paper: {paper_setting(summary.paper_file)}"

    width = max(5.0, 0.6 * len(labels)) if categorical else 5.6
    figure, axes = plt.subplots(len(summary.evaluations), 2, figsize=(2 * width, 3.9 * len(summary.evaluations) + 1.2),
                                squeeze=False, layout="constrained")
    handles: dict[str, object] = {}
    for (ours_ax, paper_ax), evaluation in zip(axes, summary.evaluations):
        short = EVALUATION_SHORT[evaluation]
        values = [summary.values(label, evaluation) for label in ours_labels]
        line, single = plot_series(ours_ax, ours_x, values, "ours: mean ± sample std over seeds", OURS_LINE)
        handles.setdefault("mean", line)
        if single:
            handles["single"] = single_seed_handle()
        if any(values):
            handles.setdefault("seeds", Line2D([], [], linestyle="none", marker="o", color=OURS_COLOR, alpha=0.45,
                                               markersize=4, label="ours: one seed's run"))
        if not any(values):
            say_no_finished_run(ours_ax)
        ours_ax.set_xticks(ours_x, ours_ticks)
        ours_ax.set_ylabel("top-1 accuracy (%)")
        ours_ax.set_title(wrap(f"{EVALUATION_NAMES[evaluation]}, {ours_name}", 55), fontsize="medium")

        paper_values = rows[f"paper_{short}"].to_numpy(float)
        measured = np.isfinite(paper_values)
        paper_labels = [label for label, keep in zip(labels, measured) if keep]
        paper_x = row_positions(paper_labels, categorical)
        handles["paper"], = paper_ax.plot(paper_x, paper_values[measured],
                                          label=f"paper ({summary.paper_ref}, as printed)", **PAPER_LINE)
        paper_ax.set_xticks(paper_x, paper_labels)
        paper_ax.set_ylabel("top-1 accuracy (%)")
        paper_ax.set_title(wrap(f"{EVALUATION_NAMES[evaluation]}, {paper_name}", 55), fontsize="medium")
        for ax, shown in ((ours_ax, ours_rows), (paper_ax, [i for i, keep in enumerate(measured) if keep])):
            bold_default_ticks(ax, shown, rows["default"])
            ax.margins(x=ROW_MARGIN)
            ax.set_xlabel(x_label + ("\n(bold: paper default)" if rows["default"].any() else ""))
    figure.suptitle(wrap(f"{summary.paper_ref}: {summary.title.lower()}: ours (left) and the paper (right) on "
                         "their own axes: different data and scale, compare the shapes"))
    order = [handles[key] for key in ("mean", "single", "seeds", "paper") if key in handles]
    figure.legend(handles=order, loc="outside lower center", ncols=min(3, len(order)))
    return figure


def say_no_finished_run(ax: plt.Axes) -> None:
    """Mark a panel that has none of our numbers yet (instead of an empty axis with arbitrary ticks)."""
    ax.set_yticks([])
    ax.text(0.5, 0.5, "no finished run yet", transform=ax.transAxes, ha="center", va="center", color="gray")


def figure_mask_ratio(summary: AblationSummary, ablation: dict) -> plt.Figure:
    """Fig. 5: masking ratio (%) against fine-tuning and linear-probing accuracy."""
    return accuracy_curves(summary, ablation, "masking ratio (%)", categorical=False)


def figure_schedule(summary: AblationSummary, ablation: dict) -> plt.Figure:
    """Fig. 7: pretraining epochs against accuracy (rows evenly spaced, as the paper's log axis)."""
    return accuracy_curves(summary, ablation, "pre-training epochs (paper)", categorical=True)


def figure_partial_ft(summary: AblationSummary, ablation: dict) -> plt.Figure:
    """Fig. 9: number of fine-tuned Transformer blocks against accuracy."""
    return accuracy_curves(summary, ablation, "fine-tuned blocks (the paper's rows; 24 = all blocks)", categorical=True)


def figure_own_ablation(summary: AblationSummary, ablation: dict) -> plt.Figure:
    """An ablation the paper does not have: per evaluation one panel of ours, every seed, the mean ± sample
    std per row and the default row's mean as a dashed line. Rows stand evenly spaced, in increasing order
    when every label is a number (a sweep), else in the file's order; a row the preset runs with other
    values (`set_by_preset`) says them under its label, as in the paper's figures."""
    apply_theme()
    labels = summary.rows["row"].astype(str).tolist()
    shown = [i for i, runs in enumerate(runs_under(ablation, summary.preset)) if runs]
    try:
        shown = sorted(shown, key=lambda i: float(labels[i]))
    except ValueError:
        pass
    x = np.arange(len(shown), dtype=float)
    defaults = [i for i in shown if summary.rows["default"].iloc[i]]
    figure, axes = plt.subplots(1, len(summary.evaluations), figsize=(max(5.0, 0.8 * len(shown) + 2) *
                                len(summary.evaluations), 4.6), squeeze=False, layout="constrained")
    for ax, evaluation in zip(axes[0], summary.evaluations):
        values = [summary.values(labels[i], evaluation) for i in shown]
        _, single = plot_series(ax, x, values, "ours: mean ± sample std over seeds (faint: each seed)", OURS_LINE)
        default_values = summary.values(labels[defaults[0]], evaluation) if defaults else {}
        if default_values:
            ax.axhline(np.mean(list(default_values.values())), color="gray", linestyle="--", linewidth=1,
                       label=f"default row ({labels[defaults[0]]}): mean")
        if any(values):
            handles = ax.get_legend_handles_labels()[0]
            single_entry = [single_seed_handle()] if single else []
            ax.legend(handles=handles[:1] + single_entry + handles[1:], fontsize="small")
        else:
            say_no_finished_run(ax)
        ax.set_xticks(x, row_ticks(labels, preset_overrides(ablation, summary.preset), shown))
        ax.margins(x=ROW_MARGIN)
        bold_default_ticks(ax, shown, summary.rows["default"])
        ax.set_xlabel(summary.title + (" (bold: the default row)" if defaults else ""))
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{EVALUATION_NAMES[evaluation]} (seeds per row: "
                     f"{', '.join(str(len(v)) for v in values) or 'none'})", fontsize="medium")
    figure.suptitle(wrap(f"{summary.heading}: not in the paper, ours only. {summary.scale.describe()}. "
                         f"Intervals and verdicts: tables/{summary.name}.md", 60 * len(summary.evaluations)))
    return figure


VERDICT_COLORS = {"reproduced": PALETTE[2], "contradicted": PALETTE[3], "inconclusive": "gray"}


def figure_findings(frame: pd.DataFrame, preset: str) -> plt.Figure:
    """The paper's findings as a forest plot: per finding measured in top-1 points our paired effect with its
    95% t interval, coloured by verdict, with the claim (a bound, or a ± margin band for a flat claim),
    and beside it the paper's own effect on its own axis (other data and scale). Findings in other units
    (× FLOPs) and those this grid did not measure are listed under the plot; findings.md has every number."""
    apply_theme()
    points = frame[(frame["n_seeds"] > 0) & frame["effect_mean"].notna() & ~frame["unit"].str.startswith("×")]
    others = frame[(frame["n_seeds"] > 0) & frame["effect_mean"].notna() & frame["unit"].str.startswith("×")]
    unmeasured = len(frame) - len(points) - len(others)
    if points.empty:
        return message_figure(f"Findings of the paper, {preset} preset",
                              f"no finding measured in top-1 points yet ({unmeasured} not measured): see findings.md")
    y = np.arange(len(points))
    figure, (ours_ax, paper_ax) = plt.subplots(1, 2, sharey=True, layout="constrained", width_ratios=[3, 2],
                                               figsize=(13, 2.2 + 0.5 * len(points)))
    for yi, (_, r) in zip(y, points.iterrows()):
        color = VERDICT_COLORS[r["verdict"]]
        if r["expect"] == "flat":
            ours_ax.fill_betweenx([yi - 0.3, yi + 0.3], -r["bound"], r["bound"], color="gray", alpha=0.15, lw=0)
        elif r["bound"]:
            ours_ax.plot([r["bound"]] * 2, [yi - 0.3, yi + 0.3], color="gray", linewidth=1.5)
        if r["ci_low"] == r["ci_low"]:
            ours_ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color=color, linewidth=2.5, solid_capstyle="butt")
        ours_ax.plot(r["effect_mean"], yi, "o", color=color, markersize=7)
        if r["paper_effect"] == r["paper_effect"]:
            paper_ax.plot(r["paper_effect"], yi, **{**PAPER_LINE, "linestyle": "none"})
    for ax in (ours_ax, paper_ax):
        ax.axvline(0, color="black", linewidth=0.8)
        ax.grid(axis="y", visible=False)
    ours_ax.set_yticks(y, [f"{r['finding']} ({r['evaluation']}, n={r['n_seeds']})" for _, r in points.iterrows()])
    ours_ax.invert_yaxis()  # the registry's order, top down
    ours_ax.set_xlabel(f"effect (top-1 points): mean and 95% t interval over seeds, {preset} preset")
    paper_ax.set_xlabel(wrap("the same contrast of the paper's printed numbers (top-1 points, ImageNet-1K)", 45))
    ours_ax.set_title("ours (paired per seed)")
    paper_ax.set_title("paper (its own axis)")
    handles = [Line2D([], [], color=color, marker="o", linewidth=2.5, label=verdict)
               for verdict, color in VERDICT_COLORS.items()]
    if (points["expect"] == "flat").any():
        handles.append(Line2D([], [], color="gray", linewidth=6, alpha=0.3, label="flat claim: ± margin"))
    if (points["bound"][points["expect"] != "flat"] != 0).any():
        handles.append(Line2D([], [], color="gray", linewidth=1.5, label="claim: more than this"))
    handles.append(Line2D([], [], label="paper effect", **{**PAPER_LINE, "linestyle": "none"}))
    notes = [f"{r['finding']}: {r['effect_mean']:.2f}{r['unit'].split()[0]} (paper {r['paper_effect']:g}"
             f"{r['unit'].split()[0]}), {r['verdict']}" for _, r in others.iterrows()]
    if unmeasured:
        notes.append(f"{unmeasured} finding{'s' if unmeasured > 1 else ''} not measured by this grid")
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles),
                  title="; ".join(notes) + ("; " if notes else "") + "every number: findings.md")
    figure.suptitle(f"Findings of the paper checked on the {preset} preset: our effect and its verdict (left), "
                    "the paper's (right)")
    return figure


def figure_wallclock(summary: AblationSummary) -> plt.Figure:
    """Table 2: our pretraining wall-clock, the paper's hours, and both speedups vs the w/ [M] row.

    Horizontal bars, one row of the table per bar (long row labels stay readable on the shared y axis).
    """
    apply_theme()
    rows = summary.rows
    names = [label + ("  (default)" if default else "") for label, default in zip(rows["row"].astype(str), rows["default"])]
    positions = np.arange(len(names))
    unit_name, unit_seconds = summary.time_unit
    figure, (ours_ax, paper_ax, speed_ax) = plt.subplots(1, 3, sharey=True, layout="constrained",
                                                         figsize=(15, 1.8 + 0.55 * len(names)))

    ours_time = rows["ours_train_time_s_mean"].to_numpy(float) / unit_seconds
    ours_std = rows["ours_train_time_s_std"].to_numpy(float) / unit_seconds
    bars = ours_ax.barh(positions, np.nan_to_num(ours_time), label="ours", **OURS_BAR)
    with_spread = np.isfinite(ours_std)  # error bars only where several seeds give a spread
    ours_ax.errorbar(ours_time[with_spread], positions[with_spread], xerr=ours_std[with_spread], fmt="none",
                     ecolor="black", capsize=4, elinewidth=1)
    counts = rows["ours_train_time_s_n"].to_numpy(int)
    ours_ax.bar_label(bars, labels=[f"{format_number(v, 1)} (n={n})" if n else format_number(v, 1)
                                    for v, n in zip(ours_time, counts)], padding=3)
    ours_ax.set_xlabel(f"pretraining wall-clock ({unit_name})")
    encoders = stand_ins(summary)
    ours_ax.set_title(wrap(f"ours on {summary.scale.data or 'unknown data'} (n = seeds)"
                           + "".join(f"\nstand-in {pair}" for pair in encoders.split("; ") if pair), 45))

    paper_hours = rows["paper_wallclock_hours"].to_numpy(float)
    bars = paper_ax.barh(positions, np.nan_to_num(paper_hours), label="paper", **PAPER_BAR)
    paper_ax.bar_label(bars, labels=[format_number(v, 1) for v in paper_hours], padding=3)
    paper_ax.set_xlabel("pre-training wall-clock (h)")
    paper_ax.set_title("paper (128 TPU-v3 cores)")

    paper_speedup = np.array([1.0 if ref else parse_speedup(printed)  # the reference row is 1× by definition
                              for ref, printed in zip(rows["paper_is_reference"], rows["paper_speedup"])])
    ours_speedup = rows["ours_speedup"].to_numpy(float)
    height = 0.38
    ours_bars = speed_ax.barh(positions - height / 2, np.nan_to_num(ours_speedup), height, label="ours", **OURS_BAR)
    paper_bars = speed_ax.barh(positions + height / 2, np.nan_to_num(paper_speedup), height, label="paper",
                               **PAPER_BAR)
    speed_ax.bar_label(ours_bars, labels=[format_ratio(v) for v in ours_speedup], padding=3)
    speed_ax.bar_label(paper_bars, labels=[format_ratio(v, "g") for v in paper_speedup], padding=3)
    speed_ax.set_xlabel("speedup vs the encoder's w/ [M] row (×)")
    speed_ax.set_title("speedup")
    figure.legend(handles=[ours_bars, paper_bars], labels=[f"ours ({summary.preset} preset)", "paper"],
                  loc="outside lower center", ncols=2)

    ours_ax.set_yticks(positions, names)
    ours_ax.invert_yaxis()  # first table row on top, as in the paper
    for ax in (ours_ax, paper_ax, speed_ax):
        ax.margins(x=0.22)
        ax.grid(axis="y", visible=False)
    figure.suptitle(wrap(f"{summary.paper_ref}: pre-training wall-clock and speedup, ours and the paper on "
                         "separate axes (row names are the paper's" + ("; ours ran the stand-ins named above)"
                                                                       if encoders else ")"), 90))
    return figure


def read_loss_curve(run_dir: Path) -> pd.DataFrame:
    """(step, loss) from metrics.jsonl; a torn last line (killed run) or loss-free lines are skipped."""
    points = [(record["step"], float(record["loss"])) for record in read_jsonl(run_dir / METRICS_JSONL)
              if "step" in record and isinstance(record.get("loss"), (int, float))]
    return pd.DataFrame(points, columns=["step", "loss"])


def resolve(run_dir: str, base_dir: str | Path) -> Path:
    path = Path(run_dir)
    return path if path.is_absolute() else Path(base_dir) / path


LEGEND_INSIDE_MAX = 4  # loss-curve panels with more rows put their legend under the panel


def figure_loss_curves(manifest: list[dict], ablations: dict[str, dict], runs: pd.DataFrame,
                       base_dir: str | Path = ".") -> plt.Figure:
    """One panel per ablation, one line per row: pretraining loss against step, averaged over seeds
    (at the steps every seed logged). Rows sharing the same pretraining runs are drawn once."""
    apply_theme()
    status = runs.drop_duplicates("run_id").set_index("run_id")["status"] if len(runs) else pd.Series(dtype=str)
    panels = []
    for name, ablation in ablations.items():
        lines = {}
        for row in ablation["rows"]:
            label = str(row["label"])
            run_ids = sorted({str(e["run_id"]) for e in manifest if e.get("ablation") == name
                              and str(e.get("row")) == label and e.get("stage") == "pretrain"})
            if not run_ids:
                continue
            key = tuple(run_ids)
            if key in lines:
                lines[key]["labels"].append(label)
                continue
            dirs = {e["run_id"]: e["run_dir"] for e in manifest if str(e["run_id"]) in run_ids}
            curves = [read_loss_curve(resolve(dirs[i], base_dir)).assign(run_id=i) for i in run_ids]
            curves = pd.concat([c for c in curves if len(c)], ignore_index=True) if any(len(c) for c in curves) \
                else pd.DataFrame(columns=["step", "loss", "run_id"])
            unfinished = any(status.get(i, "missing") != "completed" for i in run_ids)
            lines[key] = {"labels": [label], "default": bool(row.get("default", False)),
                          "curve": curves, "n_runs": len(run_ids), "unfinished": unfinished}
        if lines:
            panels.append((ablation, list(lines.values())))
    if not panels:
        return message_figure("Pretraining loss", "no pretraining runs in the manifest")

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    figure, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.9 * nrows), squeeze=False,
                                layout="constrained")
    for ax, (ablation, lines) in zip(axes.flat, panels):
        if not any(len(line["curve"]) for line in lines):
            say_no_finished_run(ax)
        for color, line in zip(PALETTE * 4, lines):
            curve = line["curve"]
            if len(curve):
                counts = curve.groupby("step")["loss"].count()
                complete_steps = counts[counts == curve["run_id"].nunique()].index
                mean = curve[curve["step"].isin(complete_steps)].groupby("step")["loss"].mean()
            else:
                mean = pd.Series(dtype=float)
            label = ", ".join(line["labels"]) + (" (default)" if line["default"] else "")
            if line["n_runs"] > 1:
                label += f" (mean of {line['n_runs']} seeds)"
            if line["unfinished"]:
                label += " (unfinished)"
            if line["n_runs"] > 1:  # every seed's own curve, faint, under the mean
                for _, seed_curve in curve.groupby("run_id"):
                    ax.plot(seed_curve["step"].to_numpy(float), seed_curve["loss"].to_numpy(float), color=color,
                            linewidth=0.7, alpha=0.35)
            ax.plot(mean.index.to_numpy(float), mean.to_numpy(float), color=color,
                    linestyle="--" if line["unfinished"] else "-", linewidth=2 if line["default"] else 1.5,
                    label=label)
        ax.set_title(wrap(ablation_heading(ablation.get("paper_ref"), str(ablation.get("title", ""))), 45))
        ax.set_xlabel("step")
        ax.set_ylabel("pretraining loss")
        if len(lines) > LEGEND_INSIDE_MAX:  # a long legend would cover the curves: under the panel
            ax.legend(title=None, fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.2))
        else:
            ax.legend(title=None, fontsize="small")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    figure.suptitle(wrap("Pretraining loss per ablation row (ours; faint: each seed, solid: their mean; "
                         "dashed: run without metrics.json)", 55 * ncols))  # no wider than the panels
    return figure


def figure_reconstruction(manifest: list[dict], ablations: dict[str, dict], runs: pd.DataFrame, preset: str,
                          base_dir: str | Path = ".") -> plt.Figure:
    """The recon.png of the paper-default pretraining run (lowest seed, first ablation that has one)."""
    apply_theme()
    order = {name: i for i, name in enumerate(ablations)}
    candidates = sorted((e for e in manifest if e.get("stage") == "pretrain" and e.get("default")
                         and e.get("ablation") in order),
                        key=lambda e: (order[e["ablation"]], e.get("seed", 0)))
    per_run = runs.drop_duplicates("run_id").set_index("run_id") if len(runs) else pd.DataFrame()
    for entry in candidates:
        image_path = resolve(entry["run_dir"], base_dir) / RECON_PNG
        if not image_path.is_file():
            continue
        image = mpimg.imread(image_path)
        height, width = image.shape[:2]
        figure, ax = plt.subplots(figsize=(min(14, max(6, width / 80)), min(14, max(3, height / 80 + 0.8))),
                                  layout="constrained")
        ax.imshow(image, interpolation="nearest")
        ax.set_axis_off()
        run_id = str(entry["run_id"])
        details = []
        if run_id in per_run.index:
            config = per_run.loc[run_id]
            if isinstance(config.get("model.arch"), str):
                details.append(arch_display(config["model.arch"]))
            if "data.name" in config and isinstance(config["data.name"], str):
                details.append(dataset_display(config["data.name"]))
            ratio = config.get("model.mask_ratio")
            if ratio is not None and not pd.isna(ratio):
                details.append(f"pretrained with mask ratio {float(ratio) * 100:g}%")
        ax.set_title(f"MAE reconstructions, {preset} preset, paper-default run {run_id} (seed {entry.get('seed')})"
                     + (f"\n{wrap(', '.join(details), 90)}" if details else ""))
        log.info("reconstruction grid from %s", image_path)
        return figure
    return message_figure("MAE reconstructions",
                          "no recon.png in any paper-default pretraining run of the manifest")


def ablation_figure(stem: str, manifest: list[dict], runs: pd.DataFrame, ablations: dict[str, dict],
                    paper_dir: str | Path, preset: str) -> plt.Figure:
    """The registry figure `stem`, drawn from the summary of the ablation whose paper_ref it mirrors."""
    paper_ref = FIGURES[stem]
    name = find_ablation(ablations, paper_ref)
    if name is None:
        return message_figure(paper_ref, f"no ablation with paper_ref {paper_ref!r} in this workflow run")

    summary, ablation = summarize_ablation(name, ablations[name], manifest, runs, paper_dir, preset), ablations[name]
    if stem == "table2_wallclock":
        return figure_wallclock(summary)
    builders = {"fig5_mask_ratio": figure_mask_ratio, "fig7_schedule": figure_schedule, "fig9_partial_ft": figure_partial_ft}
    return builders[stem](summary, ablation)


def make_figures(manifest: list[dict], runs: pd.DataFrame, ablations: dict[str, dict], paper_dir: str | Path,
                 preset: str, outputs: list[str | Path], base_dir: str | Path = ".") -> dict[str, plt.Figure]:
    """Build each figure named by the outputs' stems once and save it to every requested suffix."""
    paths_by_name: dict[str, list[Path]] = {}
    own = own_ablations(ablations)
    for output in map(Path, outputs):
        if output.stem not in FIGURE_NAMES and output.stem not in own:
            raise ValueError(f"{output}: unknown figure {output.stem!r} (have: {FIGURE_NAMES + own})")
        if output.suffix not in (".png", ".pdf", ".svg"):
            raise ValueError(f"{output}: unknown figure format {output.suffix!r} (use .png, .pdf or .svg)")
        paths_by_name.setdefault(output.stem, []).append(output)

    figures = {}
    for name, paths in paths_by_name.items():
        if name in FIGURES:
            figure = ablation_figure(name, manifest, runs, ablations, paper_dir, preset)
        elif name in own:
            figure = figure_own_ablation(summarize_ablation(name, ablations[name], manifest, runs, paper_dir, preset),
                                         ablations[name])
        elif name == "reconstruction":
            figure = figure_reconstruction(manifest, ablations, runs, preset, base_dir)
        elif name == "findings":
            figure = figure_findings(compute_findings(manifest, runs, ablations, paper_dir, preset), preset)
        else:
            figure = figure_loss_curves(manifest, ablations, runs, base_dir)
        save_figure(figure, paths)
        log.info("wrote %s", ", ".join(map(str, paths)))
        figures[name] = figure
    return figures
