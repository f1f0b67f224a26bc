"""The paper's findings, checked on our runs: results/{preset}/findings.{md,csv}.

FINDINGS is the one registry (data): each finding names an ablation, the stage whose metric it reads,
and the effect it claims as a contrast over that ablation's rows (row label -> weight; `a − b` is
{a: 1, b: -1}, a trend is a least-squares slope), or the range (max − min) of a set of rows for a "flat"
claim. Per seed the effect is computed on the rows' runs of that seed (paired), then

    mean ± t(0.975, n − 1) · sd / √n         (95 % t interval over the n seeds every compared row has)

and, from that sd, the seed count whose interval would be ±TARGET_HALF_WIDTH points (how the ablation files'
seed counts are chosen; an estimate, since the sd is itself measured on n seeds).

Verdict rule (VERDICT_RULE says it in the output):
- claim "positive" (the effect exceeds `bound`, 0 unless stated): the interval entirely above the bound =
  reproduced, entirely below = contradicted, else inconclusive;
- claim "flat" (|effect| <= margin): the interval inside [−margin, margin] = reproduced, entirely outside
  = contradicted, else inconclusive;
- fewer than MIN_SEEDS seeds on a compared row (or no run) = inconclusive, with the reason.
The paper's own effect is computed from paper/*.csv with the same contrast (no interval: one number).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from workflow.grid import file_presets, preset_evaluations
from workflow.results.paper import PAPER_CITATION
from workflow.results.stats import mean_interval, seeds_for_half_width
from workflow.results.style import EVALUATION_NAMES, MISSING
from workflow.results.summary import EVALUATION_SHORT, AblationSummary, summarize_ablation

log = logging.getLogger(__name__)

MIN_SEEDS = 3
CONFIDENCE = 0.95
FLAT_MARGIN = 1.0  # points: "flat" = the whole interval within ± this
TARGET_HALF_WIDTH = 1.0  # points: the half-width the seed counts aim at (issue #16: "at most ~1 point")
VERDICT_RULE = (f"{CONFIDENCE:.0%} t interval over seeds of the paired per-seed effect. Claim 'positive' "
                "(effect > bound): interval entirely above the bound = reproduced, entirely below = "
                "contradicted, else inconclusive. Claim 'flat' (|effect| ≤ margin): interval inside "
                "[−margin, +margin] = reproduced, entirely outside = contradicted, else inconclusive. "
                f"A compared row with fewer than {MIN_SEEDS} seeds = inconclusive.")


@dataclass(frozen=True)
class Finding:
    """One claim of the paper as a computable effect over one ablation's rows."""
    name: str
    claim: str                      # the paper's claim, in words
    ablation: str                   # ablations/<ablation>.yaml
    stage: str                      # finetune | linprobe (top-1) | pretrain (with metric)
    contrast: dict[str, float]      # row label -> weight (kind "contrast"); the rows (kind "range")
    expect: str = "positive"        # "positive": effect > bound; "flat": |effect| <= bound
    bound: float = 0.0              # positive: the threshold; flat: the margin
    kind: str = "contrast"          # "contrast": Σ weight · value; "range": max − min over the rows
    metric: str = "top1"
    log_scale: bool = False         # contrast of log(value), shown as a ratio (FLOPs)
    unit: str = "points"

    @property
    def rows(self) -> list[str]:
        return list(self.contrast)

    def compared(self) -> str:
        """The effect in words: 'a − b', 'max − min of a, b, c', 'slope over a, b, c', or the weights."""
        if self.kind == "range":
            return "max − min of " + ", ".join(self.rows)
        weights = list(self.contrast.values())
        ratio = self.log_scale
        if weights == [1, -1]:
            return f"{self.rows[0]} {'/' if ratio else '−'} {self.rows[1]}"
        if len(weights) > 2 and abs(sum(weights)) < 1e-9 and all(w1 < w2 for w1, w2 in zip(weights, weights[1:])):
            return "slope per step over " + ", ".join(self.rows)
        return " ".join(f"{w:+g}·[{row}]" for row, w in self.contrast.items())

    def effect(self, values: dict[str, float]) -> float:
        """The effect of one seed (or of the paper's numbers) from {row: value}."""
        if self.kind == "range":
            return max(values.values()) - min(values.values())
        if self.log_scale:
            return sum(w * math.log(values[row]) for row, w in self.contrast.items())
        return sum(w * values[row] for row, w in self.contrast.items())

    def shown(self, effect: float) -> float:
        """An effect on the scale it is printed on (a ratio for log-scale findings)."""
        return math.exp(effect) if self.log_scale and effect == effect else effect

    def claim_bound(self) -> float:
        return math.log(self.bound) if self.log_scale else self.bound


def slope(rows: list[str]) -> dict[str, float]:
    """Least-squares slope weights over evenly spaced rows (one step per row: a doubling in Fig. 7)."""
    center = (len(rows) - 1) / 2
    scale = sum((i - center) ** 2 for i in range(len(rows)))
    return {row: (i - center) / scale for i, row in enumerate(rows)}


def gap_closed(partial: str, none: str, full: str, fraction: float = 0.5) -> dict[str, float]:
    """partial − (none + fraction · (full − none)) > 0: `partial` closes more than `fraction` of the gap."""
    return {partial: 1.0, none: -(1.0 - fraction), full: -fraction}


FINDINGS: list[Finding] = [
    Finding("mae_beats_scratch", "MAE pre-training + fine-tuning beats supervised training from scratch "
            "(Table 3, ViT-L: 85.9 vs 82.6)", "table3_model_sizes", "finetune",
            {"MAE ViT-L/16": 1, "scratch, our impl. ViT-L/16": -1}),
    Finding("mask_ratio_lin_vs_lower", "Linear probing peaks near 75 % masking: 75 % beats 50 % (Fig. 5)",
            "fig5_mask_ratio", "linprobe", {"75": 1, "50": -1}),
    Finding("mask_ratio_lin_vs_higher", "Linear probing peaks near 75 % masking: 75 % beats 90 % (Fig. 5)",
            "fig5_mask_ratio", "linprobe", {"75": 1, "90": -1}),
    Finding("mask_ratio_ft_flat", f"Fine-tuning is flat over 40-80 % masking (Fig. 5; rows run: 50, 75, 80; "
            f"range within ±{FLAT_MARGIN:g})", "fig5_mask_ratio", "finetune", {"50": 1, "75": 1, "80": 1},
            expect="flat", bound=FLAT_MARGIN, kind="range"),
    Finding("decoder_depth_lin", "A deeper decoder helps linear probing (Table 1a: 1 → 8 blocks, 65.5 → 73.5)",
            "table1a_decoder_depth", "linprobe", {"8": 1, "1": -1}),
    Finding("decoder_depth_ft_flat", "Decoder depth does not matter for fine-tuning (Table 1a: 84.8 vs 84.9)",
            "table1a_decoder_depth", "finetune", {"8": 1, "1": -1}, expect="flat", bound=FLAT_MARGIN),
    Finding("decoder_width_lin", "A wider decoder helps linear probing (Table 1b: 128 → 512, 69.1 → 73.5)",
            "table1b_decoder_width", "linprobe", {"512": 1, "128": -1}),
    Finding("decoder_width_ft_flat", "Decoder width does not matter for fine-tuning (Table 1b: 84.9 vs 84.9)",
            "table1b_decoder_width", "finetune", {"512": 1, "128": -1}, expect="flat", bound=FLAT_MARGIN),
    Finding("mask_token_ft", "An encoder without mask tokens fine-tunes better (Table 1c: 84.9 vs 84.2)",
            "table1c_mask_token", "finetune", {"encoder w/o [M]": 1, "encoder w/ [M]": -1}),
    Finding("mask_token_lin", "An encoder without mask tokens probes better (Table 1c: 73.5 vs 59.6)",
            "table1c_mask_token", "linprobe", {"encoder w/o [M]": 1, "encoder w/ [M]": -1}),
    Finding("mask_token_flops", "Skipping mask tokens in the encoder is ≥ 3× cheaper in training FLOPs "
            "(Table 1c: 3.3×)", "table1c_mask_token", "pretrain", {"encoder w/ [M]": 1, "encoder w/o [M]": -1},
            bound=3.0, metric="train_flops_per_image", log_scale=True, unit="× FLOPs"),
    Finding("norm_pixel_ft", "Normalised pixels are at least as good a target as pixels (Table 1d ft: 85.4 "
            "vs 84.9)", "table1d_target", "finetune", {"pixel (w/ norm)": 1, "pixel (w/o norm)": -1}),
    Finding("norm_pixel_lin", "Normalised pixels are at least as good a target as pixels (Table 1d lin: 73.9 "
            "vs 73.5)", "table1d_target", "linprobe", {"pixel (w/ norm)": 1, "pixel (w/o norm)": -1}),
    Finding("pca_worse_ft", "A PCA target is worse than normalised pixels (Table 1d ft: 84.6 vs 85.4)",
            "table1d_target", "finetune", {"pixel (w/ norm)": 1, "PCA": -1}),
    Finding("pca_worse_lin", "A PCA target is worse than normalised pixels (Table 1d lin: 72.3 vs 73.9)",
            "table1d_target", "linprobe", {"pixel (w/ norm)": 1, "PCA": -1}),
    Finding("crop_beats_none_lin", "Cropping suffices: random-size crops beat no augmentation (Table 1e lin: "
            "73.5 vs 65.7)", "table1e_augmentation", "linprobe", {"crop, rand size": 1, "none": -1}),
    Finding("color_jitter_hurts_ft", "Colour jitter hurts (Table 1e ft: 84.3 vs 84.9 for crops alone)",
            "table1e_augmentation", "finetune", {"crop, rand size": 1, "crop + color jit": -1}),
    Finding("color_jitter_hurts_lin", "Colour jitter hurts (Table 1e lin: 71.9 vs 73.5 for crops alone)",
            "table1e_augmentation", "linprobe", {"crop, rand size": 1, "crop + color jit": -1}),
    Finding("random_beats_block_ft", "Random sampling beats block sampling at 75 % (Table 1f ft: 84.9 vs 82.8)",
            "table1f_mask_sampling", "finetune", {"random, 75%": 1, "block, 75%": -1}),
    Finding("random_beats_block_lin", "Random sampling beats block sampling at 75 % (Table 1f lin: 73.5 vs "
            "63.9)", "table1f_mask_sampling", "linprobe", {"random, 75%": 1, "block, 75%": -1}),
    Finding("random_beats_grid_ft", "Random sampling beats grid sampling (Table 1f ft: 84.9 vs 84.0)",
            "table1f_mask_sampling", "finetune", {"random, 75%": 1, "grid, 75%": -1}),
    Finding("random_beats_grid_lin", "Random sampling beats grid sampling (Table 1f lin: 73.5 vs 66.0)",
            "table1f_mask_sampling", "linprobe", {"random, 75%": 1, "grid, 75%": -1}),
    Finding("schedule_ft", "Longer pre-training keeps improving fine-tuning (Fig. 7; slope per doubling of "
            "the epochs, 200-800)", "fig7_schedule", "finetune", slope(["200", "400", "800"])),
    Finding("schedule_lin", "Longer pre-training keeps improving linear probing (Fig. 7; slope per doubling "
            "of the epochs, 200-800)", "fig7_schedule", "linprobe", slope(["200", "400", "800"])),
    Finding("partial_ft_one_block", "Tuning the last block closes most of the gap to full fine-tuning (Fig. 9: "
            "1 block reaches 81.0 of 73.5 → 84.9; effect = 1 block − the gap's midpoint)",
            "fig9_partial_finetune", "finetune", gap_closed("1", "0", "24")),
    Finding("bigger_models_gain_more", "Bigger models gain more from MAE over scratch (Table 3: ViT-L +3.3, "
            "ViT-B +1.3; effect = gain of L − gain of B)", "table3_model_sizes", "finetune",
            {"MAE ViT-L/16": 1, "scratch, our impl. ViT-L/16": -1, "MAE ViT-B/16": -1,
             "scratch, our impl. ViT-B/16": 1}),
]


def verdict(finding: Finding, low: float, high: float) -> str:
    """reproduced / contradicted / inconclusive of an interval [low, high] (on the effect's own scale)."""
    if not (low == low and high == high):
        return "inconclusive"
    if finding.expect == "flat":
        margin = finding.claim_bound()
        if -margin <= low and high <= margin:
            return "reproduced"
        return "contradicted" if low > margin or high < -margin else "inconclusive"
    bound = finding.claim_bound()
    if low > bound:
        return "reproduced"
    return "contradicted" if high < bound else "inconclusive"


def difference_verdict(low: float, high: float, n: int) -> str:
    """What the interval [low, high] of a row's paired difference from its table's default row says, for an
    ablation the paper does not have (no claim to test): above / below the default, else inconclusive (the
    interval holds 0, or fewer than MIN_SEEDS seeds)."""
    if n < MIN_SEEDS or not (low == low and high == high):
        return "inconclusive"
    return "above the default" if low > 0 else "below the default" if high < 0 else "inconclusive"


def paper_values(summary: AblationSummary, finding: Finding) -> dict[str, float]:
    """{row: the paper's number} for the finding's rows (NaN where the paper has none)."""
    rows = summary.rows.set_index("row")
    if finding.stage == "pretrain":
        column = "paper_flops_ratio"
    else:
        column = f"paper_{EVALUATION_SHORT[finding.stage]}"
    return {row: float(rows.at[row, column]) if row in rows.index and column in rows.columns else math.nan
            for row in finding.rows}


def evaluate(finding: Finding, summary: AblationSummary | None, ablation: dict | None, preset: str) -> dict:
    """One finding's record: compared rows, seeds, effect, interval, paper effect, verdict and reason."""
    record = {"finding": finding.name, "claim": finding.claim, "ablation": finding.ablation,
              "evaluation": EVALUATION_NAMES.get(finding.stage, f"{finding.stage} {finding.metric}"),
              "compared": finding.compared(), "expect": finding.expect,
              "bound": finding.bound, "unit": finding.unit, "n_seeds": 0, "seeds": "", "effect_mean": math.nan,
              "ci_low": math.nan, "ci_high": math.nan, "half_width": math.nan, "seeds_for_target": math.nan,
              "paper_effect": math.nan, "verdict": "inconclusive", "reason": ""}
    if ablation is not None:
        presets, evaluations = file_presets(ablation), preset_evaluations(ablation, preset)
        if preset not in presets:
            record["reason"] = (f"{_not_in_grid(preset)}ablations/{finding.ablation}.yaml runs under "
                                f"{', '.join(presets)}")
            return record
        if finding.stage != "pretrain" and finding.stage not in evaluations:
            record["reason"] = (f"{_not_in_grid(preset)}ablations/{finding.ablation}.yaml evaluates "
                                f"{', '.join(evaluations) or 'nothing'} under {preset}")
            return record
    if summary is None or ablation is None:
        record["reason"] = f"ablation {finding.ablation} has no runs in runs.csv"
        return record
    paper = paper_values(summary, finding)
    if all(v == v for v in paper.values()):
        record["paper_effect"] = finding.shown(finding.effect(paper))

    per_row, problems = {}, []
    labels = {str(row["label"]): row for row in ablation["rows"]}
    for row in finding.rows:
        if row not in labels:
            problems.append(f"row {row!r} is not in ablations/{finding.ablation}.yaml")
            continue
        if preset not in labels[row].get("presets", presets):
            problems.append(f"row {row!r} runs only under presets {labels[row].get('presets', presets)}")
            continue
        values = {s: v for s, v in summary.values(row, finding.stage, finding.metric).items()
                  if not (finding.log_scale and v <= 0)}
        per_row[row] = values
        if len(values) < MIN_SEEDS:
            problems.append(f"row {row!r} has {len(values)} seed{'' if len(values) == 1 else 's'} "
                            f"(needs ≥ {MIN_SEEDS})")
    seeds = sorted(set.intersection(*(set(v) for v in per_row.values()))) if len(per_row) == len(finding.rows) \
        else []
    effects = [finding.effect({row: per_row[row][s] for row in finding.rows}) for s in seeds]
    mean, half, std = mean_interval(effects, CONFIDENCE)
    record.update(n_seeds=len(seeds), seeds=" ".join(map(str, seeds)), effect_mean=finding.shown(mean))
    if half == half:
        record.update(ci_low=finding.shown(mean - half), ci_high=finding.shown(mean + half), half_width=half)
        if not finding.log_scale:  # a ratio's half-width is in log units, not points
            record["seeds_for_target"] = seeds_for_half_width(std, TARGET_HALF_WIDTH, CONFIDENCE, MIN_SEEDS)
    if not problems and len(seeds) < MIN_SEEDS:
        problems.append(f"only {len(seeds)} seeds common to the compared rows (needs ≥ {MIN_SEEDS})")
    if problems:
        record["reason"] = "; ".join(problems)
        return record
    record["verdict"] = verdict(finding, mean - half, mean + half)
    return record


def compute_findings(manifest: list[dict], runs: pd.DataFrame, ablations: dict[str, dict],
                     paper_dir: str | Path, preset: str, findings: list[Finding] | None = None) -> pd.DataFrame:
    """Every registry finding's record (one row each, registry order) from the runs of `ablations`."""
    summaries: dict[str, AblationSummary] = {}
    records = []
    named = {e.get("ablation") for e in manifest}
    for finding in findings if findings is not None else FINDINGS:
        name = finding.ablation
        if name in ablations and name in named and name not in summaries:
            summaries[name] = summarize_ablation(name, ablations[name], manifest, runs, paper_dir, preset)
        records.append(evaluate(finding, summaries.get(name), ablations.get(name), preset))
    return pd.DataFrame(records)


def _not_in_grid(preset: str) -> str:
    """How the reason of a finding the preset's grid does not measure begins (render_markdown counts them)."""
    return f"not in the {preset} grid: "


def format_effect(value: float, log_scale: bool) -> str:
    if value != value:
        return MISSING
    return f"{value:.2f}×" if log_scale else f"{value:+.2f}"


def render_markdown(frame: pd.DataFrame, preset: str) -> str:
    counts = frame["verdict"].value_counts()
    not_run = int(frame["reason"].astype(str).str.startswith(_not_in_grid(preset)).sum())
    lines = [f"**Findings of the paper, checked on the {preset} preset.** {VERDICT_RULE} Effects are in "
             "top-1 points (ours on our data, the paper's on ImageNet-1K) unless a ratio (×) is shown. "
             f"Paper: {PAPER_CITATION}. Generated from results/{preset}/runs.csv by workflow/results/findings.py.",
             "", f"Reproduced {counts.get('reproduced', 0)}, contradicted {counts.get('contradicted', 0)}, "
             f"inconclusive {counts.get('inconclusive', 0) - not_run} of {len(frame)} findings"
             + (f"; {not_run} more not in the {preset} grid (inconclusive, reason given)." if not_run else "."), "",
             f"Seeds for ±{TARGET_HALF_WIDTH:g}: the fewest seeds whose interval would be at most ±{TARGET_HALF_WIDTH:g} "
             "point wide if the effect's seed-to-seed sd stayed as measured here (an estimate from n seeds).", "",
             "| finding | paper claim | compared (ablation: rows) | evaluation | n seeds | ours: effect "
             f"[{CONFIDENCE:.0%} CI] | ± half-width | seeds for ±{TARGET_HALF_WIDTH:g} | paper effect | claim | verdict |",
             "|:---|:---|:---|:---|---:|---:|---:|---:|---:|:---|:---|"]
    for _, r in frame.iterrows():
        log_scale = r["unit"].startswith("×")
        interval = (f"{format_effect(r['effect_mean'], log_scale)} [{format_effect(r['ci_low'], log_scale)}, "
                    f"{format_effect(r['ci_high'], log_scale)}]" if r["ci_low"] == r["ci_low"]
                    else format_effect(r["effect_mean"], log_scale))
        claim = (f"flat within ±{r['bound']:g}" if r["expect"] == "flat"
                 else (f"> {r['bound']:g}×" if log_scale else f"> {r['bound']:+g}"))
        verdict_text = f"**{r['verdict']}**" + (f" ({r['reason']})" if r["reason"] else "")
        cells = [r["finding"], r["claim"], f"{r['ablation']}: {r['compared']}", r["evaluation"], str(r["n_seeds"]),
                 interval, format_effect(r["half_width"], False).lstrip("+") if r["half_width"] == r["half_width"]
                 else MISSING, f"{r['seeds_for_target']:.0f}" if r["seeds_for_target"] == r["seeds_for_target"]
                 else MISSING, format_effect(r["paper_effect"], log_scale), claim, verdict_text]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_findings(manifest: list[dict], runs: pd.DataFrame, ablations: dict[str, dict], paper_dir: str | Path,
                   preset: str, outputs: list[str | Path]) -> pd.DataFrame:
    """Write findings.md and/or findings.csv (by suffix); returns the records."""
    frame = compute_findings(manifest, runs, ablations, paper_dir, preset)
    for output in map(Path, outputs):
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.suffix == ".md":
            output.write_text(render_markdown(frame, preset))
        elif output.suffix == ".csv":
            frame.round(6).to_csv(output, index=False)
        else:
            raise ValueError(f"{output}: unknown findings format {output.suffix!r} (use .md or .csv)")
        log.info("wrote %s", output)
    return frame
