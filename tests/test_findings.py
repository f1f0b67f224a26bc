"""The findings computation (workflow/results/findings.py, stats.py): t quantiles, paired per-seed
intervals and the verdict rule on fixture runs built here (a known effect, a reversed one, noise), and
the registry itself against the ablation files and the paper's own numbers."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workflow.results.findings import (FINDINGS, MIN_SEEDS, Finding, compute_findings, render_markdown,
                                       verdict, write_findings)
from workflow.results.stats import mean_interval, seeds_for_half_width, t_quantile
from workflow.results.summary import summarize_ablation

REPO = Path(__file__).resolve().parents[1]
PAPER_DIR = REPO / "paper"

# Published two-sided 95 % (p = 0.975) and 99 % (p = 0.995) Student-t critical values.
T_TABLE = {(0.975, 1): 12.706, (0.975, 2): 4.303, (0.975, 3): 3.182, (0.975, 4): 2.776, (0.975, 9): 2.262,
           (0.975, 29): 2.045, (0.975, 120): 1.980, (0.995, 10): 3.169, (0.95, 5): 2.015}


@pytest.mark.parametrize("p, df", sorted(T_TABLE))
def test_t_quantile_matches_the_published_table(p, df):
    assert t_quantile(p, df) == pytest.approx(T_TABLE[p, df], abs=5e-4)
    assert t_quantile(1 - p, df) == pytest.approx(-T_TABLE[p, df], abs=5e-4)


def test_t_quantile_matches_scipy_where_installed():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 17, 100, 1000):
        for p in (0.6, 0.9, 0.975, 0.999):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-8)
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959964, abs=1e-5)  # the normal limit
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_mean_interval_is_the_t_interval_of_the_mean():
    mean, half, std = mean_interval([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, 1.0)
    assert half == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)
    assert math.isnan(mean_interval([5.0])[1]) and math.isnan(mean_interval([])[0])


def test_seeds_for_half_width_is_the_fewest_seeds_whose_interval_fits():
    # sd 1.018 (a 3-seed half-width of 2.53): 6 seeds give 2.571 · 1.018 / √6 = 1.07, 7 give 2.447 · 1.018 / √7 = 0.94
    assert seeds_for_half_width(1.018, 1.0) == 7
    assert seeds_for_half_width(0.238, 1.0, minimum=3) == 3       # already narrow: the minimum
    assert seeds_for_half_width(0.0, 1.0, minimum=3) == 3         # deterministic
    assert seeds_for_half_width(0.0, 1.0, minimum=1) == 2         # never fewer than 2 (an interval needs 2)
    for std, n in ((0.543, 4), (0.946, 6), (2.0, 18)):
        n = int(seeds_for_half_width(std, 1.0))
        assert t_quantile(0.975, n - 1) * std / math.sqrt(n) <= 1.0 < t_quantile(0.975, n - 2) * std / math.sqrt(n - 1)
    assert math.isnan(seeds_for_half_width(math.nan, 1.0)) and math.isnan(seeds_for_half_width(100.0, 1.0, limit=50))


# ---------------------------------------------------------------------------------- fixture runs

ABLATION = {
    "title": "Decoder depth", "paper_ref": "Table 1a", "paper_file": "table1_ablations.csv",
    "evaluations": ["finetune", "linprobe"],
    "rows": [
        {"label": "1", "paper_where": {"subtable": "1a", "value": "1"}},
        {"label": "8", "paper_where": {"subtable": "1a", "value": "8"}, "default": True},
        {"label": "12", "paper_where": {"subtable": "1a", "value": "12"}},
        {"label": "2", "paper_where": {"subtable": "1a", "value": "2"}, "presets": ["paper"]},
    ],
}


def fixture_runs(values: dict[tuple[str, str], list[float]], ablation: str = "depth",
                 paper_ref: str | None = "Table 1a", default: str = "8") -> tuple[list[dict], pd.DataFrame]:
    """Manifest and runs.csv rows for `ablation` (default row `default`): values[(row, stage)] = top-1 per seed
    0, 1, ..."""
    manifest, rows = [], []
    for (label, stage), per_seed in values.items():
        for seed, value in enumerate(per_seed):
            run_id = f"{stage[:3]}-{label}-s{seed}"
            manifest.append({"ablation": ablation, "paper_ref": paper_ref, "row": label, "default": label == default,
                             "seed": seed, "stage": stage, "run_id": run_id, "run_dir": f"{stage}/{run_id}"})
            rows.append({"run_id": run_id, "stage": stage, "status": "completed", "status_reason": "",
                         "metric": "top1", "value": value, "seed": seed, "ablations": f"{ablation}:{label}"})
    return manifest, pd.DataFrame(rows)


def depth_finding(name, stage, a, b, **kwargs) -> Finding:
    return Finding(name, f"claim {name}", "depth", stage, {a: 1, b: -1}, **kwargs)


BASE = [80.0, 81.0, 79.5, 80.5]


def findings_of(values, findings, preset="tiny"):
    manifest, runs = fixture_runs(values)
    frame = compute_findings(manifest, runs, {"depth": ABLATION}, PAPER_DIR, preset, findings)
    return frame.set_index("finding")


def test_known_effect_is_reproduced_reversed_contradicted_noise_inconclusive():
    noise = [2.0, -2.5, 3.0, -1.5]
    values = {("8", "linprobe"): [v + 3.0 + d for v, d in zip(BASE, [0.1, -0.2, 0.0, 0.1])],  # +3 over row 1
              ("1", "linprobe"): BASE,
              ("12", "linprobe"): [v + d for v, d in zip(BASE, noise)],                    # noise around row 1
              ("8", "finetune"): BASE, ("1", "finetune"): [v + 2.0 for v in BASE]}           # reversed: −2
    frame = findings_of(values, [depth_finding("known", "linprobe", "8", "1"),
                                 depth_finding("reversed", "finetune", "8", "1"),
                                 depth_finding("noise", "linprobe", "12", "1")])
    known = frame.loc["known"]
    effects = [3.1, 2.8, 3.0, 3.1]  # per seed: (base + 3 + d) − base
    mean = sum(effects) / 4
    std = math.sqrt(sum((e - mean) ** 2 for e in effects) / 3)
    assert known["n_seeds"] == 4 and known["seeds"] == "0 1 2 3"
    assert known["effect_mean"] == pytest.approx(mean)
    assert known["half_width"] == pytest.approx(3.182 * std / 2, abs=1e-3)
    assert known["ci_low"] == pytest.approx(mean - known["half_width"])
    assert known["verdict"] == "reproduced" and known["reason"] == ""
    assert known["seeds_for_target"] == MIN_SEEDS  # sd 0.14: three seeds would already give ±1
    assert frame.at["noise", "seeds_for_target"] == seeds_for_half_width(
        statistics.stdev(noise), 1.0, minimum=MIN_SEEDS) > 4  # noise vs BASE per seed = noise
    assert known["paper_effect"] == pytest.approx(73.5 - 65.5)  # Table 1a lin, 8 blocks − 1 block
    assert frame.at["reversed", "verdict"] == "contradicted"
    assert frame.at["reversed", "effect_mean"] == pytest.approx(-2.0)
    assert frame.at["noise", "verdict"] == "inconclusive"
    assert frame.at["noise", "ci_low"] < 0 < frame.at["noise", "ci_high"]


def test_flat_claims_use_the_equivalence_margin():
    values = {("8", "finetune"): BASE, ("1", "finetune"): [v + 0.1 for v in BASE],
              ("12", "finetune"): [v - 4.0 for v in BASE], ("8", "linprobe"): BASE,
              ("1", "linprobe"): [v + d for v, d in zip(BASE, [1.5, -1.5, 2.0, -2.0])]}
    frame = findings_of(values, [depth_finding("flat", "finetune", "8", "1", expect="flat", bound=1.0),
                                 depth_finding("not_flat", "finetune", "8", "12", expect="flat", bound=1.0),
                                 depth_finding("wide", "linprobe", "8", "1", expect="flat", bound=1.0),
                                 Finding("range", "r", "depth", "finetune", {"8": 1, "1": 1, "12": 1},
                                         expect="flat", bound=1.0, kind="range")])
    assert frame.at["flat", "verdict"] == "reproduced"
    assert frame.at["not_flat", "verdict"] == "contradicted" and frame.at["not_flat", "effect_mean"] == pytest.approx(4.0)
    assert frame.at["wide", "verdict"] == "inconclusive"  # centred on 0, but the interval leaves ±1
    assert frame.at["range", "effect_mean"] == pytest.approx(4.1)  # max − min per seed: row 1 − row 12
    assert frame.at["range", "verdict"] == "contradicted"
    assert frame.at["range", "compared"] == "max − min of 8, 1, 12"


def test_fewer_than_three_seeds_or_a_row_of_another_preset_is_inconclusive_with_the_reason():
    values = {("8", "linprobe"): [v + 5 for v in BASE[:2]], ("1", "linprobe"): BASE[:2]}
    frame = findings_of(values, [depth_finding("two_seeds", "linprobe", "8", "1"),
                                 depth_finding("other_preset", "linprobe", "8", "2"),
                                 depth_finding("not_run", "finetune", "8", "1"),
                                 Finding("absent", "a", "nothing", "finetune", {"8": 1, "1": -1})])
    assert MIN_SEEDS == 3
    two = frame.loc["two_seeds"]
    assert two["verdict"] == "inconclusive" and two["n_seeds"] == 2
    assert two["effect_mean"] == pytest.approx(5.0)  # still computed and printed
    assert two["reason"] == "row '8' has 2 seeds (needs ≥ 3); row '1' has 2 seeds (needs ≥ 3)"
    assert frame.at["other_preset", "reason"] == ("row '8' has 2 seeds (needs ≥ 3); "
                                                  "row '2' runs only under presets ['paper']")
    assert frame.at["not_run", "reason"].startswith("row '8' has 0 seeds")
    assert frame.at["absent", "reason"] == "ablation nothing has no runs in runs.csv"


def test_an_ablation_or_evaluation_the_preset_leaves_out_says_so():
    values = {("8", "linprobe"): [v + 5 for v in BASE], ("1", "linprobe"): BASE}
    manifest, runs = fixture_runs(values)
    findings = [depth_finding("lin", "linprobe", "8", "1"), depth_finding("ft", "finetune", "8", "1")]
    probe_only = {**ABLATION, "evaluations_by_preset": {"tiny": ["linprobe"]}}
    frame = compute_findings(manifest, runs, {"depth": probe_only}, PAPER_DIR, "tiny", findings).set_index("finding")
    assert frame.at["lin", "verdict"] == "reproduced"
    assert frame.at["ft", "reason"] == "not in the tiny grid: ablations/depth.yaml evaluates linprobe under tiny"
    elsewhere = {**ABLATION, "presets": ["smoke", "paper"]}
    frame = compute_findings([], runs.iloc[:0], {"depth": elsewhere}, PAPER_DIR, "tiny", findings).set_index("finding")
    assert frame.at["lin", "reason"] == "not in the tiny grid: ablations/depth.yaml runs under smoke, paper"
    markdown = render_markdown(frame.reset_index(), "tiny")
    assert "Reproduced 0, contradicted 0, inconclusive 0 of 2 findings; 2 more not in the tiny grid" in markdown


def test_unpaired_seeds_are_left_out_and_log_scale_findings_are_ratios():
    values = {("8", "linprobe"): [10.0, 10.0, 10.0, 10.0], ("1", "linprobe"): [2.0, 2.0, 2.0]}
    ratio = depth_finding("ratio", "linprobe", "8", "1", bound=3.0, log_scale=True, unit="× FLOPs")
    frame = findings_of(values, [ratio, depth_finding("diff", "linprobe", "8", "1", bound=9.0)])
    assert frame.at["ratio", "seeds"] == "0 1 2"  # seed 3 has no partner
    assert frame.at["ratio", "effect_mean"] == pytest.approx(5.0) and frame.at["ratio", "verdict"] == "reproduced"
    assert math.isnan(frame.at["ratio", "seeds_for_target"])  # a ratio's spread is not in points
    assert frame.at["diff", "verdict"] == "contradicted"  # 8 points, bound 9, no spread
    assert verdict(ratio, math.log(2.0), math.log(4.0)) == "inconclusive"


def test_findings_files_are_written(tmp_path):
    values = {("8", "linprobe"): [v + 3 for v in BASE], ("1", "linprobe"): BASE}
    manifest, runs = fixture_runs(values)
    frame = write_findings(manifest, runs, {"depth": ABLATION}, PAPER_DIR, "tiny",
                           [tmp_path / "findings.md", tmp_path / "findings.csv"])
    markdown = (tmp_path / "findings.md").read_text()
    assert "Reproduced" in markdown and "95% t interval" in markdown
    counts = frame["verdict"].value_counts()
    assert (f"Reproduced {counts.get('reproduced', 0)}, contradicted {counts.get('contradicted', 0)}, inconclusive "
            f"{counts['inconclusive']} of {len(FINDINGS)} findings.") in markdown  # nothing here is "not in the grid"
    csv = pd.read_csv(tmp_path / "findings.csv")
    assert list(csv["finding"]) == [f.name for f in FINDINGS] == list(frame["finding"])
    assert set(csv.columns) >= {"claim", "compared", "n_seeds", "effect_mean", "ci_low", "ci_high", "half_width",
                                "seeds_for_target", "paper_effect", "verdict", "reason"}
    assert "| seeds for ±1 |" in markdown
    assert render_markdown(frame, "tiny").count("\n| ") == len(FINDINGS) + 1


def test_delta_vs_default_is_paired_by_seed():
    """The tables' Δ column (issue #16 item 6): mean ± sample std of per-seed differences from the default row."""
    values = {("8", "finetune"): [80.0, 82.0, 81.0], ("1", "finetune"): [81.0, 82.5, 83.0]}
    manifest, runs = fixture_runs(values)
    summary = summarize_ablation("depth", ABLATION, manifest, runs, PAPER_DIR, "tiny")
    row = summary.rows.set_index("row").loc["1"]
    differences = [1.0, 0.5, 2.0]
    mean = sum(differences) / 3
    assert row["delta_ours_ft_mean"] == pytest.approx(mean)
    assert row["delta_ours_ft_std"] == pytest.approx(math.sqrt(sum((d - mean) ** 2 for d in differences) / 2))
    assert row["delta_ours_ft_n"] == 3 and row["delta_paper_ft"] == pytest.approx(84.8 - 84.9)
    assert summary.values("1", "finetune") == {0: 81.0, 1: 82.5, 2: 83.0}


# ---------------------------------------------------------------------------------- the registry

def test_every_finding_names_rows_of_its_ablation_file():
    for finding in FINDINGS:
        path = REPO / "ablations" / f"{finding.ablation}.yaml"
        assert path.is_file(), finding.name
        labels = {str(row["label"]) for row in yaml.safe_load(path.read_text())["rows"]}
        assert set(finding.rows) <= labels, (finding.name, set(finding.rows) - labels)
    assert len({f.name for f in FINDINGS}) == len(FINDINGS)


def test_every_finding_holds_on_the_papers_own_numbers():
    """The registry's claims are the paper's: the paper's effect, computed with the same contrast, is on
    the claimed side (a typo in a row name or a sign would show here)."""
    ablations = {f.ablation: yaml.safe_load((REPO / "ablations" / f"{f.ablation}.yaml").read_text()) for f in FINDINGS}
    frame = compute_findings([{"ablation": name} for name in ablations], pd.DataFrame(
        columns=["run_id", "stage", "status", "status_reason", "metric", "value", "seed", "ablations"]),
        ablations, PAPER_DIR, "paper").set_index("finding")
    checked = 0
    for finding in FINDINGS:
        effect = frame.at[finding.name, "paper_effect"]
        assert effect == effect, f"{finding.name}: the paper reports no number for one of its rows"
        checked += 1
        if finding.expect == "flat":
            assert abs(effect) <= finding.bound, finding.name
        else:
            assert effect > finding.bound, (finding.name, effect)
    assert checked == len(FINDINGS)


def test_the_findings_figure_draws_each_measured_finding_by_its_verdict():
    from workflow.results.plots import VERDICT_COLORS, figure_findings
    noise = [2.0, -2.5, 3.0, -1.5]
    values = {("8", "linprobe"): [v + 3.0 + d for v, d in zip(BASE, [0.1, -0.2, 0.0, 0.1])],
              ("1", "linprobe"): BASE, ("12", "linprobe"): [v + d for v, d in zip(BASE, noise)],
              ("8", "finetune"): BASE, ("1", "finetune"): [v + 2.0 for v in BASE],
              ("12", "finetune"): [v + 0.1 for v in BASE]}
    frame = findings_of(values, [depth_finding("known", "linprobe", "8", "1"),
                                 depth_finding("reversed", "finetune", "8", "1"),
                                 depth_finding("noise", "linprobe", "12", "1"),
                                 depth_finding("flat", "finetune", "8", "12", expect="flat", bound=1.0),
                                 depth_finding("unrun", "finetune", "8", "2")])  # row 2: paper preset only
    figure = figure_findings(frame.reset_index(), "tiny")
    ours, paper = figure.axes
    assert [t.get_text() for t in ours.get_yticklabels()] == [
        "known (linear probing, n=4)", "reversed (fine-tuning, n=4)", "noise (linear probing, n=4)",
        "flat (fine-tuning, n=4)"]
    shown = ["known", "reversed", "noise", "flat"]
    means = [line for line in ours.get_lines() if line.get_marker() == "o"]  # one point per finding, top down
    assert [tuple(line.get_xydata()[0]) for line in means] == [
        (pytest.approx(frame.at[name, "effect_mean"]), i) for i, name in enumerate(shown)]
    assert [line.get_color() for line in means] == [VERDICT_COLORS[frame.at[name, "verdict"]] for name in shown]
    assert [frame.at[name, "verdict"] for name in shown] == ["reproduced", "contradicted", "inconclusive", "reproduced"]
    assert len(ours.collections) == 1  # the flat claim's ± margin band
    assert [tuple(line.get_xydata()[0]) for line in paper.get_lines() if line.get_marker() == "s"][0] == (
        pytest.approx(frame.at["known", "paper_effect"]), 0)
    assert "1 finding not measured by this grid" in figure.legends[0].get_title().get_text()
