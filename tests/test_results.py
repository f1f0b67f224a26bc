"""Aggregation of run folders into runs.csv, paper-vs-ours tables and figures (workflow/results/).

The fixture tests/fixtures/runs/ holds hand-written run folders (config.yaml, metrics.json,
metrics.jsonl, train.log) for a tiny preset, a manifest.json whose run_dir paths are relative to it, and
seven ablation files. It has a partial grid (Table 1a row 4, Fig. 5 row 90, Fig. 7 row 1600 are not
in the manifest), duplicate seeds (the default row has seeds 0, 1, 2 and its runs are shared by
several ablations) and one failed pretraining run (pre-d12-s0: config.yaml, train.log, a partial
metrics.jsonl, no metrics.json) whose fine-tune and linear-probe folders were never made.
Every expected number below is computed by hand from those files and paper/*.csv.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
import yaml

from test_findings import fixture_runs
from workflow.results.figures import FIGURE_NAMES, figure_stems
from workflow.results.plots import figure_loss_curves, figure_wallclock, make_figures
from workflow.results.paper import load_paper_table, match_paper_row
from workflow.results.runs import collect_runs, read_manifest, read_runs_table, write_runs_table
from workflow.results.summary import encoder_text, stand_ins, summarize_ablation
from workflow.results.tables import caption, heading, make_tables, render_csv, render_latex, render_markdown

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "runs"
PAPER_DIR = REPO / "paper"

PRESET = "tiny"


@pytest.fixture(scope="module")
def manifest():
    return read_manifest(FIXTURE / "manifest.json")


@pytest.fixture(scope="module")
def ablations():
    return {path.stem: yaml.safe_load(path.read_text()) for path in sorted((FIXTURE / "ablations").glob("*.yaml"))}


@pytest.fixture(scope="module")
def runs(manifest):
    return collect_runs(manifest, base_dir=FIXTURE)


def summary_of(name, manifest, runs, ablations):
    return summarize_ablation(name, ablations[name], manifest, runs, PAPER_DIR, PRESET)


def table_lines(markdown: str) -> list[str]:
    """The body rows of a rendered Markdown table."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return lines[1:]


# ------------------------------------------------------------------------------------------ runs.csv

def test_collect_runs_lists_every_run_once_per_metric(runs):
    assert runs["run_id"].nunique() == 28  # 8 pretrain + 12 finetune + 8 linprobe named by the manifest
    per_run = runs.drop_duplicates("run_id").set_index("run_id")
    assert (per_run["status"] == "completed").sum() == 25
    assert set(per_run.index[per_run["status"] == "missing"]) == {"pre-d12-s0", "ft-d12-s0", "lin-d12-s0"}
    # one row per (run, metric): the fixture's metrics.json files hold 8 numeric measurements each
    assert sorted(runs[runs["run_id"] == "pre-d8-s0"]["metric"]) == [
        "epochs", "final_loss", "images_per_s", "num_params", "steps", "train_flops_per_image", "train_time_s",
        "trainable_params"]
    assert sorted(runs[runs["run_id"] == "ft-d8-s1"]["metric"]) == [
        "epochs", "final_loss", "num_params", "steps", "top1", "top5", "train_time_s", "trainable_params"]
    value = runs[(runs["run_id"] == "ft-d8-s1") & (runs["metric"] == "top1")]["value"]
    assert value.tolist() == [90.3]


def test_collect_runs_flattens_config_and_keeps_provenance(runs):
    row = runs[(runs["run_id"] == "pre-m-s0") & (runs["metric"] == "train_time_s")].iloc[0]
    assert row["model.encoder_mask_tokens"] == True  # noqa: E712 (numpy bool)
    assert row["model.decoder_depth"] == 8
    assert row["pretrain.epochs"] == 8
    assert row["pretrain.betas"] == "[0.9, 0.95]"
    assert row["seed"] == 0
    assert row["git_revision"] == "0123456789abcdef0123456789abcdef01234567"
    assert row["slurm_job_id"] == "4242"
    assert row["ablations"] == "table1c_mask_token:w/ [M];table2_wallclock:w/ [M], dec 8"
    assert not any(column.startswith("meta.") for column in runs.columns)


def test_collect_runs_lists_failed_and_unstarted_runs_as_missing(runs):
    failed = runs[runs["run_id"] == "pre-d12-s0"]
    assert len(failed) == 1 and failed["metric"].isna().all() and failed["value"].isna().all()
    reason = failed["status_reason"].iloc[0]
    assert reason.startswith("no metrics.json (failed or unfinished)")
    assert "error: loss is nan at step 20" in reason
    assert failed["model.decoder_depth"].iloc[0] == 12  # config.yaml is read even without metrics.json
    unstarted = runs[runs["run_id"] == "ft-d12-s0"].iloc[0]
    assert unstarted["status"] == "missing" and unstarted["status_reason"] == "no run folder (not started)"


def test_runs_csv_round_trip_gives_the_same_tables(tmp_path, manifest, runs, ablations):
    output = tmp_path / "results" / PRESET / "runs.csv"
    write_runs_table(FIXTURE / "manifest.json", output, base_dir=FIXTURE)
    from_csv = read_runs_table(output)
    assert len(from_csv) == len(runs)
    header = output.read_text().splitlines()[0].split(",")
    assert header[:6] == ["run_id", "stage", "status", "status_reason", "metric", "value"]
    assert "model.mask_ratio" in header and "model.decoder_depth" in header
    assert ",8,cpu," in output.read_text()  # integer settings stay integers (no 8.0)
    for name in ablations:
        assert render_markdown(summary_of(name, manifest, from_csv, ablations)) == \
            render_markdown(summary_of(name, manifest, runs, ablations))


# ------------------------------------------------------------------------------------------ tables

def test_table1a_values_seeds_and_missing_rows(manifest, runs, ablations):
    summary = summary_of("table1a_decoder_depth", manifest, runs, ablations)
    rows = summary.rows.set_index("row")
    # default row: ft 90.10, 90.30, 90.50 -> mean 90.30, sample std 0.20; lin 84.0, 85.0, 86.5 -> 85.1667, 1.2583
    assert rows.at["8", "ours_ft_mean"] == pytest.approx(90.30)
    assert rows.at["8", "ours_ft_std"] == pytest.approx(0.20)
    assert rows.at["8", "ours_ft_n"] == 3
    assert rows.at["8", "ours_lin_mean"] == pytest.approx(255.5 / 3)
    assert rows.at["8", "ours_lin_std"] == pytest.approx(math.sqrt((1.1667**2 + 0.1667**2 + 1.3333**2) / 2), abs=1e-3)
    # Δ vs the default row (issue #16 replaced "ours − paper" across data sets): ours paired by seed
    # (row 1 has seed 0 only: 89.0 − 90.1, 80.0 − 84.0), the paper's from its own numbers
    assert rows.at["1", "delta_ours_ft_mean"] == pytest.approx(89.0 - 90.1)
    assert rows.at["1", "delta_ours_ft_n"] == 1 and math.isnan(rows.at["1", "delta_ours_ft_std"])
    assert rows.at["1", "delta_paper_lin"] == pytest.approx(65.5 - 73.5)
    assert math.isnan(rows.at["8", "delta_paper_ft"])  # the default row is the reference
    assert "diff_ft" not in rows.columns
    assert math.isnan(rows.at["12", "ours_ft_mean"]) and rows.at["12", "ours_ft_n"] == 0
    assert table_lines(render_markdown(summary)) == [
        "| 1 | 84.8 | 89.00 (n=1) | -0.1 | -1.10 (n=1) | 65.5 | 80.00 (n=1) | -8.0 | -4.00 (n=1) |",
        "| 4 | 84.9 | — | +0.0 | — | 71.9 | — | -1.6 | — |",
        "| **8** (default) | 84.9 | 90.30 ± 0.20 (n=3) | reference | reference | 73.5 | 85.17 ± 1.26 (n=3) | reference "
        "| reference |",
        "| 12 | 84.4 | — | -0.5 | — | 73.3 | — | -0.2 | — |",
    ]
    assert render_markdown(summary).splitlines()[2] == (
        "| Decoder depth | paper ft | ours ft | paper Δft | ours Δft | paper lin | ours lin | paper Δlin | ours Δlin |")


def test_missing_cells_are_explained_under_the_table(manifest, runs, ablations):
    summary = summary_of("table1a_decoder_depth", manifest, runs, ablations)
    assert summary.notes == [
        "4: not in the manifest (not scheduled in this workflow run)",
        "12: pretrain run pre-d12-s0 (seed 0): missing, no metrics.json (failed or unfinished); "
        "train.log ends: 'error: loss is nan at step 20 (non-finite loss, exit 3)'; "
        "finetune run ft-d12-s0 (seed 0): missing, no run folder (not started); "
        "linprobe run lin-d12-s0 (seed 0): missing, no run folder (not started)",
    ]
    markdown = render_markdown(summary)
    assert "\n— missing:\n- 4: not in the manifest" in markdown


def test_table1c_shows_training_flops_ratio_next_to_papers(manifest, runs, ablations):
    summary = summary_of("table1c_mask_token", manifest, runs, ablations)
    assert summary.has_flops and not summary.has_wallclock
    lines = table_lines(render_markdown(summary))
    assert lines == [
        "| w/ [M] | 84.2 | 88.00 (n=1) | -0.7 | -2.10 (n=1) | 59.6 | 70.00 (n=1) | -13.9 | -14.00 (n=1) | 3.3× | 2.5 M "
        "| 2.50× |",
        "| **w/o [M]** (default) | 84.9 | 90.10 (n=1) | reference | reference | 73.5 | 84.00 (n=1) | reference "
        "| reference | 1× | 1 M | 1.00× |",
    ]
    header = render_markdown(summary).splitlines()[2]
    assert header.endswith("| paper FLOPs (rel.) | ours FLOPs/image | ours FLOPs (rel.) |")


def test_table2_reports_wallclock_and_speedup_vs_mask_token_row(manifest, runs, ablations):
    summary = summary_of("table2_wallclock", manifest, runs, ablations)
    rows = summary.rows.set_index("row")
    # pretrain train_time_s: w/ [M] 300; w/o [M] dec 8: 100, 110, 120 -> 110; w/o [M] dec 1: 60
    assert rows.at["w/o [M], dec 8", "ours_train_time_s_mean"] == pytest.approx(110.0)
    assert rows.at["w/o [M], dec 8", "ours_speedup"] == pytest.approx(300 / 110)
    assert rows.at["w/o [M], dec 1", "ours_speedup"] == pytest.approx(5.0)
    assert summary.time_unit == ("min", 60.0)
    assert table_lines(render_markdown(summary)) == [
        "| w/ [M], dec 8 | 84.2 | 88.00 (n=1) | -0.7 | -2.10 (n=1) | 42.4 | 5.0 (n=1) | reference | reference |",
        "| **w/o [M], dec 8** (default) | 84.9 | 90.30 ± 0.20 (n=3) | reference | reference | 15.4 | 1.8 ± 0.2 (n=3) "
        "| 2.8× | 2.73× |",
        "| w/o [M], dec 1 | 84.8 | 89.00 (n=1) | -0.1 | -1.10 (n=1) | 11.6 | 1.0 (n=1) | 3.7× | 5.00× |",
    ]
    assert "paper lin" not in render_markdown(summary)  # Table 2 evaluates fine-tuning only
    # a preset that times the pretrainings without evaluating them (tiny): no accuracy sentence in the caption
    timed_only = summarize_ablation("table2_wallclock", {**ablations["table2_wallclock"], "evaluations": []},
                                    manifest, runs, PAPER_DIR, PRESET)
    assert "Top-1 accuracy" not in caption(timed_only) and "after ;" not in caption(timed_only)
    assert "Wall-clock: our pretraining train_time_s" in caption(timed_only)


def test_table2_speedup_is_per_encoder_and_per_epoch(manifest, runs):
    """As the repo's Table 2 file: ViT-L and ViT-H rows, each against its own w/ [M] row; the ViT-H w/ [M]
    reference trained fewer epochs (the paper's 10-epoch estimate), so speedups use time per epoch."""
    rows = [("ViT-L w/ [M]", "ViT-L", "true", "8", "pre-m-s0"), ("ViT-L w/o [M]", "ViT-L", "false", "8", "pre-d8-s0"),
            ("ViT-H w/ [M]", "ViT-H", "true", "8", "pre-e4-s0"), ("ViT-H w/o [M]", "ViT-H", "false", "8", "pre-d1-s0")]
    ablation = {"title": "Wall-clock", "paper_ref": "Table 2", "paper_file": "table2_wallclock.csv",
                "evaluations": ["finetune"],
                "rows": [{"label": label, "paper_where": {"encoder": encoder, "encoder_has_mask_tokens": mask,
                                                          "decoder_depth": depth}} for label, encoder, mask, depth, _ in rows]}
    entries = [{"ablation": "wallclock", "row": label, "seed": 0, "stage": "pretrain", "run_id": run_id,
                "run_dir": f"pretrain/{run_id}"} for label, *_, run_id in rows]
    summary = summarize_ablation("wallclock", ablation, entries, runs, PAPER_DIR, PRESET)
    speedup = summary.rows.set_index("row")["ours_speedup"]
    assert speedup["ViT-L w/o [M]"] == pytest.approx(300 / 100)  # both 8 epochs: 300 s vs 100 s
    assert speedup["ViT-H w/o [M]"] == pytest.approx((50 / 4) / (60 / 8))  # 12.5 s/epoch vs 7.5 s/epoch
    # each encoder's stand-in, from its pretrainings' configs; '' where they differ or are unknown
    assert summary.rows["ours_encoder"].tolist() == ["128-d, 4 blocks"] * 4
    assert stand_ins(summary) == "ViT-L: 128-d, 4 blocks; ViT-H: 128-d, 4 blocks"
    assert "Our encoders for the paper's: ViT-L: 128-d, 4 blocks; ViT-H: 128-d, 4 blocks." in caption(summary)
    per_run = runs.drop_duplicates("run_id").set_index("run_id")
    assert encoder_text(per_run, ["pre-d1-s0", "missing"]) == "128-d, 4 blocks"
    assert encoder_text(per_run, ["missing"]) == ""
    mixed = per_run.copy()
    mixed.loc["pre-d8-s0", "model.depth"] = 6
    assert encoder_text(mixed, ["pre-d1-s0", "pre-d8-s0"]) == ""
    lines = table_lines(render_markdown(summary))
    # no default row in this ablation: no Δ columns
    assert lines[3] == "| ViT-H w/o [M] | 85.8 | — | 34.5 | 1.0 (n=1) | 3.5× | 1.67× |"
    assert lines[2] == "| ViT-H w/ [M] | — | — | 119.6 | 0.8 (n=1) | reference | reference |"
    assert "time per pretraining epoch" in caption(summary)
    figure = figure_wallclock(summary)
    assert [p.get_width() for p in figure.axes[2].patches[:4]] == pytest.approx([1.0, 3.0, 1.0, 12.5 / 7.5])


def test_rows_of_other_presets_are_explained(manifest, runs, ablations):
    ablation = {**ablations["fig9_partial_ft"]}
    ablation["rows"] = ablation["rows"] + [{"label": "12", "paper_where": {"method": "MAE baseline*",
                                            "blocks_finetuned": "12"}, "presets": ["paper"]}]
    summary = summarize_ablation("fig9_partial_ft", ablation, manifest, runs, PAPER_DIR, PRESET)
    assert summary.notes == ["12: this row runs only under presets ['paper']"]
    assert table_lines(render_markdown(summary))[-1] == "| 12 | 84.6 | — |"


def test_table3_fig5_fig7_fig9_values(manifest, runs, ablations):
    expected = {
        "table3_imagenet": ["| scratch | 82.6 | 85.00 (n=1) | -3.3 | -5.10 (n=1) |",
                            "| **MAE** (default) | 85.9 | 90.10 (n=1) | reference | reference |"],
        "fig5_mask_ratio": ["| 50 | 84.9 | 89.50 (n=1) | +0.0 | -0.60 (n=1) | 69.9 | 82.00 (n=1) | -3.6 | -2.00 (n=1) |",
                            "| **75** (default) | 84.9 | 90.10 (n=1) | reference | reference | 73.5 | 84.00 (n=1) "
                            "| reference | reference |",
                            "| 90 | 83.0 | — | -1.9 | — | 66.1 | — | -7.4 | — |"],
        "fig7_schedule": ["| 400 | 84.3 | 88.50 (n=1) | -0.6 | -1.60 (n=1) | 69.7 | 78.00 (n=1) | -3.8 | -6.00 (n=1) |",
                          "| **800** (default) | 84.9 | 90.10 (n=1) | reference | reference | 73.5 | 84.00 (n=1) "
                          "| reference | reference |",
                          "| 1600 | 85.1 | — | +0.2 | — | 75.1 | — | +1.6 | — |"],
        # no default row in this fixture: no Δ columns, only the levels
        "fig9_partial_ft": ["| 0 | 73.5 | 84.50 (n=1) |",
                            "| 1 | 81.0 | 87.00 (n=1) |",
                            "| 24 | 84.9 | 90.00 (n=1) |"],
    }
    for name, lines in expected.items():
        assert table_lines(render_markdown(summary_of(name, manifest, runs, ablations))) == lines, name


def test_caption_states_preset_scale_paper_setting_and_citation(manifest, runs, ablations):
    summary = summary_of("fig7_schedule", manifest, runs, ablations)
    assert heading(summary) == "Fig. 7: Pre-training epochs (tiny preset)"
    assert ("Ours: tiny preset: Fashion-MNIST 28×28, ViT-micro/7, 4–8 pretraining epochs, "
            "1 fine-tuning epoch, 2 linear-probing epochs.") in caption(summary)
    assert "Paper: ImageNet-1K 224×224, ViT-L/16" in caption(summary)
    assert 'He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022' in caption(summary)
    assert "paper/fig7_schedule.csv" in caption(summary)


def test_image_size_text_reads_sides_and_runs_csv_lists():
    from workflow.results.summary import image_size_text

    assert [image_size_text(v) for v in (28, 28.0, "28", [14, 28], "[14, 28]", None, float("nan"))] == [
        "28×28", "28×28", "28×28", "14×28", "14×28", None, None]


def test_latex_table_escapes_and_cites(manifest, runs, ablations):
    latex = render_latex(summary_of("table2_wallclock", manifest, runs, ablations))
    assert r"\cite{he2022masked}" in latex and r"\label{tab:table2_wallclock-tiny}" in latex
    assert (r"\textbf{w/o {[}M{]}, dec 8} (default) & 84.9 & 90.30 $\pm$ 0.20 (n=3) & reference & reference & 15.4"
            in latex)
    assert r"w/o {[}M{]}, dec 1 & 84.8 & 89.00 (n=1) & -0.1 & -1.10 (n=1) & 11.6" in latex
    assert r"2.8$\times$ & 2.73$\times$ \\" in latex
    assert r"\begin{tabular}{lrrrrrrrr}" in latex and latex.rstrip().endswith(r"\end{table}")
    assert "train\\_time\\_s" in latex and "—" not in latex.split(r"\begin{tabular}")[1]


def test_csv_table_has_numbers_not_formatted_text(manifest, runs, ablations):
    import io

    import pandas as pd

    frame = pd.read_csv(io.StringIO(render_csv(summary_of("table1a_decoder_depth", manifest, runs, ablations))),
                        dtype={"row": str})
    row = frame.set_index("row").loc["8"]
    assert (row["ablation"], row["paper_ref"], row["preset"]) == ("table1a_decoder_depth", "Table 1a", "tiny")
    assert row["ours_ft_mean"] == pytest.approx(90.3) and row["ours_ft_std"] == pytest.approx(0.2)
    assert row["ours_lin_n"] == 3 and bool(row["default"])
    assert frame.set_index("row").at["4", "missing"] == "not in the manifest (not scheduled in this workflow run)"


def test_paper_where_matching_is_literal_first_then_glob():
    table1 = load_paper_table(PAPER_DIR, "table1_ablations.csv")
    row, problem = match_paper_row(table1, {"subtable": "1c", "value": "encoder w/ [M]"}, "table1_ablations.csv")
    assert problem == "" and row["ft_top1"] == "84.2"
    row, problem = match_paper_row(table1, {"subtable": "1f", "value": "block"}, "table1_ablations.csv")
    assert row is None and "matches 2 rows" in problem
    row, _ = match_paper_row(table1, {"subtable": "1f", "value": "block", "extra": "mask_ratio=50%*"},
                             "table1_ablations.csv")
    assert row["lin_top1"] == "72.3"
    row, problem = match_paper_row(table1, {"subtable": "9z"}, "table1_ablations.csv")
    assert row is None and "matches no row" in problem
    row, problem = match_paper_row(table1, None, "table1_ablations.csv")  # paper_where: null
    assert row is None and problem.startswith("not in the paper")


def test_unmatched_paper_row_shows_dash_and_note(manifest, runs, ablations):
    broken = {**ablations["fig5_mask_ratio"]}
    broken["rows"] = [{**broken["rows"][0], "paper_where": {"mask_ratio_pct": "55"}}]
    summary = summarize_ablation("fig5_mask_ratio", broken, manifest, runs, PAPER_DIR, PRESET)
    assert table_lines(render_markdown(summary)) == ["| 50 | — | 89.50 (n=1) | — | 82.00 (n=1) |"]  # no default row
    assert summary.notes == ["50: paper_where {'mask_ratio_pct': '55'} matches no row of paper/fig5_mask_ratio.csv"]


OWN_ABLATION = {"title": "Pretraining weight decay", "evaluations": ["linprobe"],  # no paper_ref, paper_file
                "rows": [{"label": "0.05", "default": True}, {"label": "0"}, {"label": "0.2"}, {"label": "0.5"},
                         {"label": "1"}]}


def own_runs(values: dict[str, list[float]]) -> tuple[list[dict], pd.DataFrame]:
    """Manifest and runs.csv rows of OWN_ABLATION's probes ('wd'): values[row] = top-1 per seed 0, 1, ..."""
    return fixture_runs({(label, "linprobe"): per_seed for label, per_seed in values.items()}, ablation="wd",
                        paper_ref=None, default="0.05")


def test_an_ablation_the_paper_lacks_shows_ours_with_intervals_and_verdicts():
    import io

    from workflow.results.stats import t_quantile
    base = [80.0, 81.0, 79.5, 80.5]
    differences = {"0": [2.1, 1.8, 2.0, 2.1], "0.2": [-1.0, -1.4, -1.2, -1.2], "0.5": [3.0, -2.5, 1.0, -1.5],
                   "1": [5.0, 5.2]}  # clear, but 2 seeds: too few for a verdict
    manifest, runs = own_runs({"0.05": base, **{row: [b + d for b, d in zip(base, diff)]
                                                 for row, diff in differences.items()}})
    summary = summarize_ablation("wd", OWN_ABLATION, manifest, runs, PAPER_DIR, PRESET)
    assert not summary.in_paper and summary.notes == []  # no "not in the paper" note per row
    markdown = render_markdown(summary)
    assert heading(summary) == "Pretraining weight decay (tiny preset)"
    assert "| Pretraining weight decay | ours lin | ours Δlin [95% CI] | lin verdict |" in markdown
    assert "paper" not in markdown.split("\n\n", 1)[1] and "He et al." not in markdown

    def interval(diff):
        mean = sum(diff) / len(diff)
        half = t_quantile(0.975, len(diff) - 1) * math.sqrt(sum((d - mean) ** 2 for d in diff) / (len(diff) - 1)) \
            / math.sqrt(len(diff))
        return f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] (n={len(diff)})"

    assert table_lines(markdown) == [
        "| **0.05** (default) | 80.25 ± 0.65 (n=4) | reference | reference |",
        f"| 0 | 82.25 ± 0.58 (n=4) | {interval(differences['0'])} | above the default |",
        f"| 0.2 | 79.05 ± 0.56 (n=4) | {interval(differences['0.2'])} | below the default |",
        f"| 0.5 | 80.25 ± 2.02 (n=4) | {interval(differences['0.5'])} | inconclusive |",
        f"| 1 | 85.60 ± 0.85 (n=2) | {interval(differences['1'])} | inconclusive |"]
    latex = render_latex(summary)
    assert r"\cite" not in latex and "paper/" not in latex and "& above the default \\\\" in latex
    frame = pd.read_csv(io.StringIO(render_csv(summary)), dtype={"row": str}).set_index("row")
    assert not [c for c in frame.columns if "paper_" in c and c != "paper_ref"]
    assert frame["verdict_lin"].tolist() == ["reference", "above the default", "below the default", "inconclusive",
                                             "inconclusive"]
    assert frame.at["0", "delta_ours_lin_ci_low"] > 0 > frame.at["0.2", "delta_ours_lin_ci_high"]


def test_make_tables_writes_every_format(tmp_path, manifest, runs, ablations):
    outputs = [tmp_path / "tables" / f"{name}.{suffix}" for name in ablations for suffix in ("md", "tex", "csv")]
    make_tables(manifest, runs, ablations, PAPER_DIR, PRESET, outputs)
    for path in outputs:
        assert path.stat().st_size > 200, path
    with pytest.raises(ValueError, match="no ablation named 'table9'"):
        make_tables(manifest, runs, ablations, PAPER_DIR, PRESET, [tmp_path / "table9.md"])


def test_empty_manifest_gives_dashes_not_a_crash(ablations):
    empty_runs = collect_runs([], base_dir=FIXTURE)
    summary = summarize_ablation("table2_wallclock", ablations["table2_wallclock"], [], empty_runs, PAPER_DIR,
                                 PRESET)
    assert table_lines(render_markdown(summary))[0] == "| w/ [M], dec 8 | 84.2 | — | -0.7 | — | 42.4 | — | reference | — |"
    assert "no run configs found" in caption(summary)


# ------------------------------------------------------------------------------------------ figures

@pytest.fixture(scope="module")
def figures(tmp_path_factory, manifest, runs, ablations):
    out = tmp_path_factory.mktemp("figures")
    outputs = [out / f"{name}.{suffix}" for name in FIGURE_NAMES for suffix in ("png", "pdf")]
    built = make_figures(manifest, runs, ablations, PAPER_DIR, PRESET, outputs, base_dir=FIXTURE)
    return built, outputs


def test_figure_stems_follow_the_registry_then_the_figures_of_every_grid():
    paper = {ref: {"paper_ref": ref, "paper_file": "x.csv"} for ref in ("Table 1a", "Table 2", "Fig. 5")}
    assert figure_stems(paper) == ["fig5_mask_ratio", "table2_wallclock", "reconstruction", "loss_curves",
                                   "findings"]
    assert figure_stems({}) == ["reconstruction", "loss_curves", "findings"]
    # an ablation the paper does not have gets a figure named by its file
    assert figure_stems({**paper, "wd": OWN_ABLATION}) == ["fig5_mask_ratio", "table2_wallclock", "wd",
                                                            "reconstruction", "loss_curves", "findings"]


def test_an_ablation_the_paper_lacks_gets_a_figure_of_ours(tmp_path):
    base = [80.0, 81.0, 79.5]
    manifest, runs = own_runs({"0.05": base, "0": [b + 2 for b in base], "1": [b - 1 for b in base],
                               "0.2": [81.0], "0.5": []})
    built = make_figures(manifest, runs, {"wd": OWN_ABLATION}, PAPER_DIR, PRESET, [tmp_path / "wd.png"])
    assert (tmp_path / "wd.png").stat().st_size > 10_000
    ax, = built["wd"].axes  # one panel: linear probing, ours only
    ticks = ax.get_xticklabels()
    assert [t.get_text() for t in ticks] == ["0", "0.05", "0.2", "0.5", "1"]  # a sweep: in increasing order
    assert list(ax.get_xticks()) == [0, 1, 2, 3, 4]  # evenly spaced (sweeps are often log-spaced)
    assert [t.get_fontweight() for t in ticks].count("bold") == 1 and ticks[1].get_fontweight() == "bold"
    default_line = lines_by_label(ax)["default row (0.05): mean"]
    assert list(default_line.get_ydata()) == [pytest.approx(80.1666666)] * 2
    assert sorted(y for _, y in seed_points(ax)) == sorted([80.0, 81.0, 79.5, 82.0, 83.0, 81.5, 79.0, 80.0, 78.5,
                                                           81.0])
    assert "not in the paper" in built["wd"].get_suptitle() and "linear probing" in ax.get_title()
    # a row the preset runs with another value says so under its label, as in the paper's figures
    by_preset = {**OWN_ABLATION, "rows": [*OWN_ABLATION["rows"][:4], {
        "label": "1", "set": {"pretrain.weight_decay": 1.0},
        "set_by_preset": {PRESET: {"pretrain.weight_decay": 0.8}, "paper": {"pretrain.weight_decay": 1.0}}}]}
    built = make_figures(manifest, runs, {"wd": by_preset}, PAPER_DIR, PRESET, [tmp_path / "wd.png"])
    assert [t.get_text() for t in built["wd"].axes[0].get_xticklabels()][-1] == "1\n(ours 0.8)"


def test_every_figure_file_is_written(figures):
    built, outputs = figures
    assert set(built) == set(FIGURE_NAMES)
    for path in outputs:
        head = path.read_bytes()[:8]
        assert path.stat().st_size > 5000, path
        assert head.startswith(b"\x89PNG") if path.suffix == ".png" else head.startswith(b"%PDF"), path


def lines_by_label(ax):
    """Data lines by legend label (error-bar caps are unlabelled '_...' lines)."""
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def data_lines(ax):
    return list(lines_by_label(ax).values())


def seed_points(ax):
    """(x, y) of every seed's own point (the scatter collections of a panel)."""
    from matplotlib.collections import PathCollection

    return [tuple(map(float, point)) for collection in ax.collections if isinstance(collection, PathCollection)
            for point in collection.get_offsets()]


def hollow_points(ax):
    """(x, y) of the hollow single-seed markers (white face) in a panel."""
    points = []
    for line in ax.get_lines():
        if line.get_markerfacecolor() == "white" and line.get_linestyle() == "None":
            points += list(zip(line.get_xdata(), line.get_ydata()))
    return points


def test_fig5_draws_ours_and_the_paper_in_separate_panels_with_seeds(figures):
    """Issue #16 item 7: no twin y axes (ours and the paper each get their own panel); every seed is a
    point; a single-seed mean is a hollow marker with a legend entry; the model is named as what ran."""
    figure = figures[0]["fig5_mask_ratio"]
    assert len(figure.axes) == 4  # fine-tuning and linear probing, ours and the paper each
    positions = [tuple(ax.get_position().bounds) for ax in figure.axes]
    assert len(set(positions)) == 4  # a twin axis would sit on its host's position
    ft_ax, ft_paper_ax, lin_ax, lin_paper_ax = figure.axes
    assert ft_ax.get_title() == "fine-tuning, ours: ViT-micro/7 on Fashion-MNIST 28×28"
    assert ft_paper_ax.get_title().startswith("fine-tuning, paper: ImageNet-1K 224×224, ViT-L/16")
    (ours,) = data_lines(ft_ax)
    (paper,) = data_lines(ft_paper_ax)
    assert ours.get_label() == "ours: mean ± sample std over seeds"
    assert list(ours.get_xdata()) == [50.0, 75.0, 90.0]
    assert list(ours.get_ydata())[:2] == [89.5, 90.1] and math.isnan(ours.get_ydata()[2])  # 90: no result
    assert list(paper.get_xdata()) == [50.0, 75.0, 90.0]
    assert list(paper.get_ydata()) == [84.9, 84.9, 83.0]
    assert list(data_lines(lin_paper_ax)[0].get_ydata()) == [69.9, 73.5, 66.1]
    assert hollow_points(ft_ax) == [(50.0, 89.5), (75.0, 90.1)]  # one seed each in this fixture
    seeds = seed_points(ft_ax)
    assert sorted(seeds) == [(50.0, 89.5), (75.0, 90.1)]  # every seed's own point
    assert ft_ax.get_ylabel() == ft_paper_ax.get_ylabel() == "top-1 accuracy (%)"
    assert ft_ax.get_xlabel() == "masking ratio (%)\n(bold: paper default)"
    assert [t.get_text() for t in ft_ax.get_xticklabels()] == ["50", "75", "90"]
    assert "ours (left) and the paper (right)" in figure._suptitle.get_text()
    assert all(len(line) <= 70 for line in figure._suptitle.get_text().splitlines())  # long titles wrap
    assert [t.get_text() for t in figure.legends[0].get_texts()] == [
        "ours: mean ± sample std over seeds", "ours: a single seed (no spread)", "ours: one seed's run",
        "paper (Fig. 5, as printed)"]


def test_several_seeds_get_error_bars_and_filled_markers(manifest, runs, ablations):
    """Table 1a's default row has seeds 0, 1, 2: a filled mean with a sample-std error bar and three seed
    points; row 4 (not run) and row 12 (failed) break the line instead of being bridged."""
    from workflow.results.plots import accuracy_curves

    summary = summary_of("table1a_decoder_depth", manifest, runs, ablations)
    figure = accuracy_curves(summary, ablations["table1a_decoder_depth"], "decoder depth", categorical=True)
    ours_ax = figure.axes[0]
    (mean,) = data_lines(ours_ax)
    y = mean.get_ydata()
    assert y[0] == 89.0 and math.isnan(y[1]) and y[2] == pytest.approx(90.3) and math.isnan(y[3])
    assert hollow_points(ours_ax) == [(0.0, 89.0)]  # row 1: one seed
    (bars,) = [c for c in ours_ax.containers if c.has_yerr]
    segment = bars.lines[2][0].get_segments()[0]
    assert [p[1] for p in segment] == pytest.approx([90.3 - 0.2, 90.3 + 0.2])
    seeds = sorted(seed_points(ours_ax))
    assert seeds == [(0.0, 89.0), (2.0, 90.1), (2.0, 90.3), (2.0, 90.5)]


def test_rows_of_other_presets_are_left_out_of_our_panel(manifest, runs, ablations):
    """A paper-only row between two measured ones (Fig. 9's 12 blocks under tiny) is not an x position of
    ours, so our line does not run through a point nobody measured; the paper's panel keeps it."""
    from workflow.results.plots import accuracy_curves

    ablation = {**ablations["fig9_partial_ft"]}
    ablation["rows"] = ablation["rows"][:2] + [{"label": "12", "presets": ["paper"], "paper_where": {
        "method": "MAE baseline*", "blocks_finetuned": "12"}}] + ablation["rows"][2:]
    summary = summarize_ablation("fig9_partial_ft", ablation, manifest, runs, PAPER_DIR, PRESET)
    figure = accuracy_curves(summary, ablation, "blocks", categorical=True)
    ours_ax, paper_ax = figure.axes
    assert [t.get_text() for t in ours_ax.get_xticklabels()] == ["0", "1", "24\n(ours 4)"]
    assert list(data_lines(ours_ax)[0].get_ydata()) == [84.5, 87.0, 90.0]
    assert [t.get_text() for t in paper_ax.get_xticklabels()] == ["0", "1", "12", "24"]
    assert list(data_lines(paper_ax)[0].get_ydata()) == [73.5, 81.0, 84.6, 84.9]


def test_a_preset_that_only_probes_gets_only_the_probe_panels(tmp_path, manifest, runs, ablations):
    """The grid resolves `evaluations_by_preset` into the ablation's `evaluations` (the tiny Fig. 5 probes
    only): the figure then has the linear-probing pair of panels and no empty fine-tuning pair."""
    probe_only = {**ablations["fig5_mask_ratio"], "evaluations": ["linprobe"]}
    built = make_figures(manifest, runs, {**ablations, "fig5_mask_ratio": probe_only}, PAPER_DIR, PRESET,
                         [tmp_path / "fig5_mask_ratio.png"], base_dir=FIXTURE)
    ours_ax, paper_ax = built["fig5_mask_ratio"].axes
    assert ours_ax.get_title().startswith("linear probing") and paper_ax.get_title().startswith("linear probing")
    assert list(lines_by_label(ours_ax)["ours: mean ± sample std over seeds"].get_xdata()) == [50.0, 75.0, 90.0]


def test_fig7_spaces_epochs_evenly_and_names_our_epochs(figures):
    figure = figures[0]["fig7_schedule"]
    ft_ax, paper_ax = figure.axes[0], figure.axes[1]
    (ours,) = data_lines(ft_ax)
    assert list(ours.get_xdata()) == [0, 1, 2]
    assert list(ours.get_ydata())[:2] == [88.5, 90.1] and math.isnan(ours.get_ydata()[2])
    assert list(data_lines(paper_ax)[0].get_xdata()) == [0, 1, 2]
    assert list(data_lines(paper_ax)[0].get_ydata()) == [84.3, 84.9, 85.1]
    assert [t.get_text() for t in ft_ax.get_xticklabels()] == ["400\n(ours 4)", "800\n(ours 8)", "1600\n(ours 16)"]
    assert ft_ax.get_xticklabels()[1].get_fontweight() == "bold"


def test_fig9_has_one_fine_tuning_panel(figures):
    figure = figures[0]["fig9_partial_ft"]
    assert len(figure.axes) == 2
    (ours,), (paper,) = data_lines(figure.axes[0]), data_lines(figure.axes[1])
    assert list(ours.get_ydata()) == [84.5, 87.0, 90.0]
    assert list(paper.get_ydata()) == [73.5, 81.0, 84.9]
    assert figure.axes[0].get_xticklabels()[2].get_text() == "24\n(ours 4)"
    # the first and last rows' error-bar caps clear the frame (matplotlib's 5 % margin clipped them)
    assert [round(x, 2) for x in figure.axes[0].get_xlim()] == [-0.16, 2.16]


def test_table2_figure_bars_ours_and_papers_speedup(figures):
    figure = figures[0]["table2_wallclock"]
    ours_ax, paper_ax, speed_ax = figure.axes
    assert [p.get_width() for p in ours_ax.patches] == pytest.approx([5.0, 110 / 60, 1.0])
    assert ours_ax.get_xlabel() == "pretraining wall-clock (min)"
    assert [p.get_width() for p in paper_ax.patches] == pytest.approx([42.4, 15.4, 11.6])
    assert paper_ax.get_xlabel() == "pre-training wall-clock (h)"
    widths = [p.get_width() for p in speed_ax.patches]
    assert widths == pytest.approx([1.0, 300 / 110, 5.0, 1.0, 2.8, 3.7])  # ours bars, then paper bars
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["ours (tiny preset)", "paper"]
    assert [t.get_text() for t in ours_ax.get_yticklabels()] == ["w/ [M], dec 8", "w/o [M], dec 8  (default)",
                                                                 "w/o [M], dec 1"]
    # what stood in for the paper's encoder, read from the runs' configs (before: "<arch>-sized stand-ins")
    assert ours_ax.get_title().splitlines()[1:] == ["stand-in ViT-L: 128-d, 4 blocks"]
    assert "ours ran the stand-ins named above" in figure.get_suptitle().replace("\n", " ")


def test_reconstruction_figure_shows_default_runs_recon_png(figures):
    figure = figures[0]["reconstruction"]
    (ax,) = figure.axes
    (image,) = ax.get_images()
    source = matplotlib.image.imread(FIXTURE / "pretrain" / "pre-d8-s0" / "recon.png")
    assert image.get_array().shape == source.shape
    assert ax.get_title().startswith("MAE reconstructions, tiny preset, paper-default run pre-d8-s0 (seed 0)")
    assert "pretrained with mask ratio 75%" in ax.get_title()


def test_loss_curves_one_panel_per_ablation_one_line_per_row(figures, ablations):
    figure = figures[0]["loss_curves"]
    titled = {ax.get_title(): ax for ax in figure.axes if ax.get_title()}
    assert len(titled) == len(ablations)
    depth = lines_by_label(titled["Table 1a: Decoder depth"])
    assert list(depth) == ["1", "8 (default) (mean of 3 seeds)", "12 (unfinished)"]
    default = depth["8 (default) (mean of 3 seeds)"]
    assert list(default.get_xdata()) == [0, 10, 20, 30]
    assert list(default.get_ydata()) == pytest.approx([1.0, 0.6, 0.45, 0.40])
    assert list(depth["12 (unfinished)"].get_ydata()) == [1.0, 0.8] and depth["12 (unfinished)"].get_linestyle() == "--"
    # Fig. 9's rows share one pretraining run: drawn once
    assert list(lines_by_label(titled["Fig. 9: Blocks fine-tuned"])) == ["0, 1, 24"]
    assert titled["Table 1a: Decoder depth"].get_xlabel() == "step"
    assert titled["Table 1a: Decoder depth"].get_ylabel() == "pretraining loss"


def test_a_loss_panel_with_many_rows_puts_its_legend_under_the_curves(manifest, runs, ablations):
    # Table 2 has six rows: their legend inside the panel covered the curves (seen in results/tiny)
    pretrainings = sorted({e["run_id"]: e for e in manifest if e["stage"] == "pretrain"}.values(),
                          key=lambda e: e["run_id"])[:5]
    many = {"title": "Many rows", "rows": [{"label": e["run_id"]} for e in pretrainings]}
    entries = [{**e, "ablation": "many", "row": e["run_id"]} for e in pretrainings]
    figure = figure_loss_curves(manifest + entries, {"table1a_decoder_depth": ablations["table1a_decoder_depth"],
                                                     "many": many}, runs, base_dir=FIXTURE)
    figure.canvas.draw()
    few_ax, many_ax = figure.axes[:2]
    assert len(lines_by_label(many_ax)) == 5 and len(lines_by_label(few_ax)) == 3
    below = many_ax.get_legend().get_window_extent()
    assert below.y1 <= many_ax.get_window_extent().y0  # under the panel
    inside = few_ax.get_legend().get_window_extent()
    assert few_ax.get_window_extent().contains((inside.x0 + inside.x1) / 2, (inside.y0 + inside.y1) / 2)
    matplotlib.pyplot.close(figure)


def test_missing_ablation_or_recon_gives_an_explaining_figure(tmp_path, manifest, runs, ablations):
    only_table1a = {"table1a_decoder_depth": ablations["table1a_decoder_depth"]}
    no_recon = [e for e in manifest if e["ablation"] == "table1a_decoder_depth" and e["row"] != "8"]
    built = make_figures(no_recon, runs, only_table1a, PAPER_DIR, PRESET,
                         [tmp_path / "fig5_mask_ratio.png", tmp_path / "reconstruction.png"], base_dir=FIXTURE)
    assert built["fig5_mask_ratio"].axes[0].get_title() == "Fig. 5"
    assert "no ablation with paper_ref 'Fig. 5'" in built["fig5_mask_ratio"].axes[0].texts[0].get_text()
    assert "no recon.png" in built["reconstruction"].axes[0].texts[0].get_text()
    assert (tmp_path / "fig5_mask_ratio.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------ Snakemake glue

def test_scripts_run_under_snakemake_script_directive(tmp_path, ablations):
    """The three scripts as the workflow calls them: snakemake.input/output/params/log."""
    workdir = tmp_path / "wf"
    shutil.copytree(FIXTURE, workdir / "runs" / PRESET)
    manifest = read_manifest(FIXTURE / "manifest.json")
    for entry in manifest:
        entry["run_dir"] = f"runs/{PRESET}/{entry['run_dir']}"
    (workdir / "runs" / PRESET / "manifest.json").write_text(__import__("json").dumps(manifest))
    scripts = REPO / "workflow" / "scripts"
    (workdir / "Snakefile").write_text(textwrap.dedent(f"""
        import yaml, glob, os
        ABLATIONS = {{os.path.basename(p)[:-5]: yaml.safe_load(open(p))
                      for p in sorted(glob.glob("runs/{{preset}}/ablations/*.yaml".format(preset="{PRESET}")))}}
        FIGURES = ["fig5_mask_ratio", "loss_curves"]  # two suffice here; all figures are checked above
        rule all:
            input:
                expand("results/{PRESET}/tables/{{name}}.{{ext}}", name=ABLATIONS, ext=["md", "tex", "csv"]),
                expand("results/{PRESET}/figures/{{name}}.{{ext}}", name=FIGURES, ext=["png", "pdf"]),
        rule collect_runs:
            input: manifest="runs/{{preset}}/manifest.json"
            output: runs="results/{{preset}}/runs.csv"
            log: "logs/{{preset}}/collect_runs.log"
            script: "{scripts}/collect_runs.py"
        rule make_tables:
            input: manifest="runs/{{preset}}/manifest.json", runs="results/{{preset}}/runs.csv"
            output: expand("results/{{{{preset}}}}/tables/{{name}}.{{ext}}", name=ABLATIONS, ext=["md", "tex", "csv"]),
                    "results/{{preset}}/findings.md", "results/{{preset}}/findings.csv"
            params: ablations=ABLATIONS, preset=lambda wildcards: wildcards.preset, paper_dir="{PAPER_DIR}"
            log: "logs/{{preset}}/make_tables.log"
            script: "{scripts}/make_tables.py"
        rule make_figures:
            input: manifest="runs/{{preset}}/manifest.json", runs="results/{{preset}}/runs.csv"
            output: expand("results/{{{{preset}}}}/figures/{{name}}.{{ext}}", name=FIGURES, ext=["png", "pdf"])
            params: ablations=ABLATIONS, preset=lambda wildcards: wildcards.preset, paper_dir="{PAPER_DIR}"
            log: "logs/{{preset}}/make_figures.log"
            script: "{scripts}/make_figures.py"
    """))
    snakemake = Path(sys.executable).with_name("snakemake")
    result = subprocess.run([str(snakemake), "--cores", "1", "--quiet", "--directory", str(workdir),
                             "--snakefile", str(workdir / "Snakefile")],
                            capture_output=True, text=True, timeout=300, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    results = workdir / "results" / PRESET
    assert (results / "tables" / "table1a_decoder_depth.md").read_text().count("| **8** (default) |") == 1
    assert (results / "runs.csv").stat().st_size > 1000
    assert (results / "runs" / "table1a_decoder_depth.csv").stat().st_size > 1000  # per-ablation runs files
    assert "| mae_beats_scratch |" in (results / "findings.md").read_text()
    assert (results / "figures" / "loss_curves.png").stat().st_size > 5000
    assert "missing 12: pretrain run pre-d12-s0" in (workdir / "logs" / PRESET / "make_tables.log").read_text()


# ------------------------------------------------------------------------------------------ report captions

def test_every_table_and_figure_has_a_caption_that_renders():
    """Snakemake renders captions with Jinja2 (snakemake.params, ...) and then docutils."""
    import jinja2
    from docutils.core import publish_parts
    from types import SimpleNamespace

    report = REPO / "workflow" / "report"
    expected = {f"table_{path.stem}.rst" for path in (REPO / "ablations").glob("*.yaml")}
    expected |= {f"figure_{name}.rst" for name in FIGURE_NAMES} | {"runs.rst", "workflow.rst"}
    expected |= {"table_ablation.rst", "figure_ablation.rst"}  # any ablation without its own (report_caption)
    assert expected <= {path.name for path in report.glob("*.rst")}
    fake = SimpleNamespace(params=SimpleNamespace(preset="tiny"))
    for name in sorted(expected):
        text = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(
            (report / name).read_text()).render(snakemake=fake)
        html = publish_parts(text, writer="html", settings_overrides={"halt_level": 2, "report_level": 5})["body"]
        assert "He et al." in html or name in ("runs.rst", "figure_loss_curves.rst", "figure_ablation.rst"), name
        if name.startswith(("table_", "figure_")):
            assert "<strong>tiny</strong>" in html, name


def _results_dir(root: Path, name: str, top1: dict[tuple[str, str], float]) -> Path:
    rows = [{"run_id": run_id, "stage": stage, "status": "completed", "metric": metric, "value": value,
             "ablations": "fig5_mask_ratio:75"}
            for (stage, run_id), value in top1.items() for metric, value in (("top1", value), ("steps", 10))]
    rows.append({"run_id": "failed000000", "stage": "linprobe", "status": "failed", "metric": "top1",
                 "value": 1.0, "ablations": "fig5_mask_ratio:90"})
    path = root / name
    path.mkdir()
    pd.DataFrame(rows).to_csv(path / "runs.csv", index=False)
    return path


def test_compare_results_reports_identical_changed_and_one_sided_runs(tmp_path):
    old = _results_dir(tmp_path, "old", {("finetune", "aaa"): 67.5, ("linprobe", "bbb"): 63.0,
                                         ("linprobe", "ccc"): 60.0})
    new = _results_dir(tmp_path, "new", {("finetune", "aaa"): 67.5, ("linprobe", "bbb"): 64.25,
                                         ("linprobe", "ddd"): 50.0})
    script = [sys.executable, str(REPO / "scripts" / "compare_results.py"), str(old), str(new)]
    result = subprocess.run(script, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"top1: 2 runs in both, 1 only in {old}, 1 only in {new}" in result.stdout
    assert "finetune: 1 runs, 1 identical, max |diff| 0.00" in result.stdout
    assert "linprobe: 1 runs, 0 identical, max |diff| 1.25" in result.stdout
    assert "bbb fig5_mask_ratio:75: 63.00 -> 64.25 (+1.25)" in result.stdout
    assert f"only in {old}: linprobe/ccc" in result.stdout and f"only in {new}: linprobe/ddd" in result.stdout
    assert "failed000000" not in result.stdout  # failed runs have no result to compare
    within = subprocess.run([*script, "--tolerance", "1.25"], capture_output=True, text=True)
    beyond = subprocess.run([*script, "--tolerance", "1.0"], capture_output=True, text=True)
    assert within.returncode == 0 and beyond.returncode == 1
    assert "1 run(s) differ by more than 1.0 points" in beyond.stderr
    missing = subprocess.run([*script[:2], str(tmp_path), str(new)], capture_output=True, text=True)
    assert missing.returncode != 0 and "runs.csv is not a file" in missing.stderr
    assert "Traceback" not in missing.stderr
    as_files = subprocess.run([*script[:2], str(old / "runs.csv"), str(new / "runs.csv")], capture_output=True, text=True)
    assert as_files.returncode == 0 and "bbb fig5_mask_ratio:75: 63.00 -> 64.25 (+1.25)" in as_files.stdout
    no_file = subprocess.run([*script[:2], str(tmp_path / "fig5.csv"), str(new)], capture_output=True, text=True)
    assert no_file.returncode != 0 and f"{tmp_path / 'fig5.csv'} is not a file" in no_file.stderr
