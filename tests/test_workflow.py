"""The Snakemake workflow: lint, paper rows, the paper-preset DAG, validation before any job, retry with
resume, and (slow) the smoke preset end to end with no-op reruns and targeted reruns.

Every run happens in a temporary copy of the workflow files, so runs/ and results/ of the checkout
are never touched:
    .venv/bin/python -m pytest tests/test_workflow.py            # fast part
    .venv/bin/python -m pytest tests/test_workflow.py -m slow    # smoke end to end
"""

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mae.config import identity, load_config
from test_grid import own_ablation_example
from test_reliability_common import workflow_error_line

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
WORKFLOW_FILES = ["Snakefile", "workflow", "ablations", "paper", "profiles", "slurm", "environment.yml"]
ABLATIONS = sorted(p.stem for p in (REPO / "ablations").glob("*.yaml"))


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def snakemake(workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([SNAKEMAKE, *args], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run: rule -> number of jobs."""
    counts = {}
    stats = output.split("Job stats:", 1)[1] if "Job stats:" in output else ""
    for line in stats.splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match:
            break
        counts[match[1]] = int(match[2])
    return counts


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("workflow"))


def test_every_row_matches_one_paper_row():
    for name in ABLATIONS:
        ablation = yaml.safe_load((REPO / "ablations" / f"{name}.yaml").read_text())
        paper = pd.read_csv(REPO / "paper" / ablation["paper_file"], dtype=str, keep_default_na=False)
        for row in ablation["rows"]:
            if row["paper_where"] is None:  # a point the paper does not have: says so in the table
                assert row.get("presets"), f"{name}: row {row['label']!r} is not in the paper and runs under every preset"
                continue
            hits = paper
            for column, pattern in row["paper_where"].items():
                assert column in paper.columns, f"{name}: {row['label']}: no column {column!r}"
                # as the tables match: the exact text first (so "[M]" is literal), else a glob
                hits = hits[hits[column].map(lambda v: v == pattern or fnmatch.fnmatchcase(v, pattern))]
            assert len(hits) == 1, f"{name}: row {row['label']!r} matches {len(hits)} rows of {ablation['paper_file']}"


# The one lint the workflow keeps, on purpose: its rules declare no `conda:` environment. They run in the
# project's environment (scripts/setup.sh, or `conda env create -f environment.yml`, the same lock): a
# per-rule env would have to install this repository itself, conda channels are not reachable here to
# test `--sdm conda`, and an untested env is worse than none (README, "Software environment").
CONDA_LINT = "Specify a conda environment or container for each rule."


def test_lint_is_clean_but_for_the_conda_environments(workdir):
    result = snakemake(workdir, "--lint", "--config", "preset=smoke")
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in out, out  # snakemake --lint exits 1 when it lists lints
    lints = re.findall(r"^    \* (.+?):?$", out, flags=re.M)
    assert lints and set(lints) == {CONDA_LINT}, lints
    assert "conda:" not in "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    triggers = yaml.safe_load((REPO / "profiles" / "default" / "config.v8+.yaml").read_text())["rerun-triggers"]
    assert "software-env" not in triggers  # it would compare conda envs the rules do not have


def distinct_pretrain_configs(preset: str, overrides: list[str]) -> tuple[int, set[str]]:
    """Independently of the workflow: (cells with a pretraining, distinct pretraining identities)."""
    cells, ids = 0, set()
    for name in ABLATIONS:
        ablation = yaml.safe_load((REPO / "ablations" / f"{name}.yaml").read_text())
        for row in ablation["rows"]:
            if preset not in row.get("presets", [preset]):
                continue
            row_set = {**ablation.get("set", {}), **row.get("set_by_preset", {}).get(preset, row.get("set", {}))}
            evaluations = row.get("evaluations", ablation["evaluations"])
            if evaluations and all(f"{s}.checkpoint" in row_set for s in evaluations):
                continue  # trained from scratch only
            for seed in ablation.get("seeds", [0]):
                cfg = load_config(REPO / "workflow/presets" / f"{preset}.yaml",
                                  [*overrides, *(f"{k}={json.dumps(v)}" for k, v in row_set.items()), f"run.seed={seed}"])
                cells += 1
                ids.add(identity(cfg, "pretrain"))
    return cells, ids


def test_paper_dry_run_builds_the_dag_fast_with_one_pretraining_per_config(workdir):
    start = time.perf_counter()
    before = os.times()
    result = snakemake(workdir, "-n", "--config", "preset=paper", "data_root=/datasets/imagenet")
    after = os.times()
    wall = time.perf_counter() - start
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout + result.stderr)
    cells, ids = distinct_pretrain_configs("paper", ["data.root=/datasets/imagenet"])
    print(f"\npaper dry run: {wall:.1f} s wall, {cpu:.1f} s CPU (snakemake process); "
          f"{cells} grid cells with a pretraining, {len(ids)} distinct pretraining configs, "
          f"{counts.get('pretrain')} pretrain jobs scheduled; jobs: {counts}")
    assert counts["pretrain"] == len(ids)
    assert cells > len(ids)  # cells shared by several tables are pretrained once
    assert counts["render_config"] == counts["pretrain"] + counts["finetune"] + counts["linprobe"]
    # The spec: the DAG in under 10 s. CPU time is what the workflow costs; wall time on a shared
    # machine also measures the neighbours, so it is printed, not asserted.
    assert cpu < 10, f"paper dry run took {cpu:.1f} s of CPU"


BAD_ABLATIONS = {
    "unknown_key": ("rows:\n  - label: a\n    paper_where: {subtable: '1a', value: '1'}\n    set: {model.decoder_dept: 1}\n",
                    ["rows[0]", "unknown key 'model.decoder_dept'", "did you mean 'model.decoder_depth'"]),
    "bad_value": ("rows:\n  - label: a\n    paper_where: {subtable: '1a', value: '1'}\n    set: {model.mask_ratio: 1.5}\n",
                  ["rows[0]", "model.mask_ratio=1.5 is invalid", "a number in [0.0, 1.0)"]),
    "empty_rows": ("rows: []\n", ["rows", "should be non-empty"]),
    "duplicate_rows": ("rows:\n  - label: a\n    paper_where: {subtable: '1a', value: '1'}\n    set: {model.decoder_depth: 1}\n"
                       "  - label: b\n    paper_where: {subtable: '1a', value: '2'}\n    set: {model.decoder_depth: 1}\n",
                       ["rows[1].set", "duplicates rows[0]"]),
    "unknown_preset": ("rows:\n  - label: a\n    paper_where: {subtable: '1a', value: '1'}\n    set: {}\n"
                       "    set_by_preset: {huge: {model.decoder_depth: 2}}\n",
                       ["rows[0].set_by_preset", "'huge' is not one of ['smoke', 'tiny', 'paper']"]),
    "unknown_field": ("rows:\n  - label: a\n    paper_where: {subtable: '1a', value: '1'}\n    sett: {}\n",
                      ["rows[0]", "'sett' was unexpected", "allowed: label, paper_where, set"]),
}
HEADER = "title: bad\npaper_ref: Table 1a\npaper_file: table1_ablations.csv\nevaluations: [finetune]\n"


@pytest.mark.parametrize("case", sorted(BAD_ABLATIONS))
def test_invalid_ablation_stops_before_any_job(workdir, case):
    body, expected = BAD_ABLATIONS[case]
    (workdir / "ablations" / f"bad_{case}.yaml").write_text(HEADER + body)
    try:
        result = snakemake(workdir, "--config", "preset=smoke", f"ablations=[table1c_mask_token,bad_{case}]")
    finally:
        (workdir / "ablations" / f"bad_{case}.yaml").unlink()
    message = workflow_error_line(result.returncode, result.stdout, result.stderr)
    print(f"\n{case}: {message}")
    assert message.startswith(f"ablations/bad_{case}.yaml: "), message
    for part in expected:
        assert part in message, message
    assert not (workdir / "runs").exists()


def test_a_model_rule_fails_the_dry_run_with_one_line_naming_the_file_and_row(workdir):
    # Grid masking keeps one patch of every 2x2 group, so only a 75% ratio: a rule of the model,
    # checked by mae.config at parse time, before any job.
    body = ("rows:\n  - label: '75%'\n    paper_where: {subtable: '1a', value: '1'}\n    set: {model.mask_sampling: grid}\n"
            "  - label: '50%'\n    paper_where: {subtable: '1a', value: '2'}\n"
            "    set: {model.mask_sampling: grid, model.mask_ratio: 0.5}\n")
    path = workdir / "ablations/bad_grid_ratio.yaml"
    path.write_text(HEADER + body)
    try:
        result = snakemake(workdir, "-n", "--config", "preset=smoke", "ablations=[bad_grid_ratio]")
    finally:
        path.unlink()
    message = workflow_error_line(result.returncode, result.stdout, result.stderr)
    print(f"\n{message}")
    assert message.startswith("ablations/bad_grid_ratio.yaml: rows[1] (label '50%'): model.mask_ratio=0.5 is invalid"), message
    assert "mask_sampling" in message
    assert not (workdir / "runs").exists()


def test_unknown_ablation_name_and_preset_are_one_line_errors(workdir):
    result = snakemake(workdir, "-n", "--config", "ablations=[table9_nothing]")
    message = workflow_error_line(result.returncode, result.stdout, result.stderr)
    assert message.startswith("ablations: 'table9_nothing' is not a file in ablations/: allowed fig5_mask_ratio"), message
    result = snakemake(workdir, "-n", "--config", "preset=huge")
    message = workflow_error_line(result.returncode, result.stdout, result.stderr)
    assert message == "config: preset: 'huge' is not one of ['smoke', 'tiny', 'paper']", message


def test_training_data_missing_here_is_one_line_before_any_job(workdir):
    """Run locally, a data_root without the data is exit 2 and `mae`'s own line before the first job,
    not each started job failing on it and retried (Fig. 5 under `tiny`: 2,100 lines of output before)."""
    result = snakemake(workdir, "--config", "preset=tiny", "data_root=/nonexistent", "ablations=[fig5_mask_ratio]")
    message = workflow_error_line(result.returncode, result.stdout, result.stderr)
    assert message == ("data.root='/nonexistent' is invalid for data.name='fashion_mnist': expected an existing "
                       "folder there"), message
    assert not (workdir / "runs/tiny/pretrain").exists() and not (workdir / "results/tiny").exists()


FAKE_MAE = """#!/usr/bin/env bash
# A stand-in for `mae`: the first attempt saves a checkpoint and exits 75 (preempted); the retry
# must find that checkpoint in its --out folder and then finishes.
out=$5
mkdir -p "$out"
if [ -f "$out/checkpoint.pth" ]; then
  echo resumed >> "$out/attempts"; echo model > "$out/model.pth"; echo '{"status": "completed"}' > "$out/metrics.json"
else
  echo preempted >> "$out/attempts"; echo state > "$out/checkpoint.pth"; exit 75
fi
"""



def workflow_with_stand_in_mae(tmp_path, script: str, extra_env: dict | None = None) -> tuple:
    """A workflow copy and an environment whose `mae` on PATH is the bash `script` (a stand-in that
    fails, preempts or finishes at once, so the workflow's own behaviour is what the test sees)."""
    workdir = copy_workflow(tmp_path / "wf")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "mae").write_text(script)
    (bin_dir / "mae").chmod(0o755)
    return workdir, {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **(extra_env or {})}

def test_preempted_job_is_retried_and_resumes_from_its_checkpoint(tmp_path):
    workdir, env = workflow_with_stand_in_mae(tmp_path, FAKE_MAE)
    result = subprocess.run([SNAKEMAKE, "--config", "preset=smoke", "ablations=[table1c_mask_token]", "--until", "pretrain"],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = sorted((workdir / "runs/smoke/pretrain").iterdir())
    assert len(run_dirs) == 2
    for run_dir in run_dirs:
        assert (run_dir / "attempts").read_text().split() == ["preempted", "resumed"]
        assert (run_dir / "checkpoint.pth").exists() and (run_dir / "metrics.json").exists()


def test_a_repository_path_with_spaces_runs(tmp_path):
    """The job's command names the repository's train_job.sh and the environment's `mae` by absolute
    path: both are quoted, so a clone in "My Projects" runs (and its MLflow store is created there)."""
    workdir, env = workflow_with_stand_in_mae(tmp_path / "My Projects", FAKE_MAE)
    result = subprocess.run([SNAKEMAKE, "--config", "preset=smoke", "ablations=[table1c_mask_token]", "--until", "pretrain"],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = sorted((workdir / "runs/smoke/pretrain").iterdir())
    assert len(run_dirs) == 2 and all((d / "metrics.json").exists() for d in run_dirs)
    assert (workdir / "runs/smoke/mlflow.ready").exists()


def test_an_environment_path_with_whitespace_is_one_line(workdir, tmp_path):
    """Snakemake runs script rules as `<python path> <script>` unquoted (snakemake/snakemake#2645): the
    workflow refuses such an environment at parse time instead of failing every job. The environment
    here is this one's .venv seen through a folder with a space (its pyvenv.cfg, bin/python, lib/)."""
    venv = Path(sys.prefix)
    spaced = tmp_path / "my env"
    (spaced / "bin").mkdir(parents=True)
    shutil.copy(venv / "pyvenv.cfg", spaced / "pyvenv.cfg")
    (spaced / "bin" / "python").symlink_to(Path(sys.executable).resolve())
    (spaced / "lib").symlink_to(venv / "lib")
    result = subprocess.run([str(spaced / "bin" / "python"), "-m", "snakemake", "-n", "--config", "preset=smoke"],
                            cwd=workdir, capture_output=True, text=True, timeout=300)
    message = workflow_error_line(result.returncode, result.stdout, result.stderr)
    assert message == (f"Snakemake's python='{spaced / 'bin' / 'python'}' is invalid: allowed an environment at a "
                       "path without whitespace (Snakemake cannot run script rules from there: snakemake/snakemake#2645)")


def test_prepare_mlflow_creates_the_store_once_and_skips_servers(tmp_path):
    sys.path.insert(0, str(REPO / "workflow/scripts"))
    try:
        from prepare_mlflow import prepare
    finally:
        sys.path.pop(0)
    assert "nothing to prepare" in prepare("http://127.0.0.1:5000", ["mae-tiny"])
    assert "nothing to prepare" in prepare(f"sqlite:///{tmp_path}/x.db", [])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert "ready" in prepare(uri, ["mae-tiny"])
    assert "ready" in prepare(uri, ["mae-tiny"])  # idempotent
    from mlflow.tracking import MlflowClient
    assert MlflowClient(tracking_uri=uri).get_experiment_by_name("mae-tiny") is not None


@pytest.mark.slow
def test_smoke_end_to_end_then_nothing_to_do_then_only_affected_jobs(tmp_path):
    workdir = copy_workflow(tmp_path)
    grid = "ablations=[table1c_mask_token,table3_model_sizes]"
    start = time.perf_counter()
    result = snakemake(workdir, "--config", "preset=smoke", grid, timeout=1800)
    print(f"\nsmoke end to end: {time.perf_counter() - start:.0f} s")
    assert result.returncode == 0, result.stderr[-5000:]
    manifest = json.loads((workdir / "runs/smoke/manifest.json").read_text())
    assert {e["stage"] for e in manifest} == {"pretrain", "finetune", "linprobe"}
    for entry in manifest:
        metrics = json.loads((workdir / entry["run_dir"] / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["run_id"] == entry["run_id"]
    for name in ("table1c_mask_token", "table3_model_sizes"):
        assert (workdir / f"results/smoke/tables/{name}.md").stat().st_size > 0
    assert (workdir / "results/smoke/figures/table2_wallclock.png").exists() is False  # not selected
    assert (workdir / "results/smoke/figures/loss_curves.png").exists()

    again = snakemake(workdir, "-n", "--config", "preset=smoke", grid)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]

    # A finished run's folder moved away (deleted to be redone) after a complete run: the results and
    # Snakemake's records of them are all there, and the run must still be planned again.
    probe = workdir / next(e["run_dir"] for e in manifest if e["stage"] == "linprobe")
    probe.rename(probe.with_name("moved"))
    redo = snakemake(workdir, "-n", "--config", "preset=smoke", grid)
    counts = job_counts(redo.stdout + redo.stderr)
    assert [counts.get(rule) for rule in ("pretrain", "finetune", "linprobe", "collect_runs")] == [None, None, 1, 1], \
        redo.stdout[-3000:]
    probe.with_name("moved").rename(probe)

    # The Snakemake report carries every table and figure with its caption.
    report = snakemake(workdir, "--config", "preset=smoke", grid, "--report", "results/smoke/report.html")
    assert report.returncode == 0, report.stderr[-3000:]
    html = (workdir / "results/smoke/report.html").read_text()
    for name in ("table1c_mask_token.md", "table3_model_sizes.tex", "loss_curves.png", "runs.csv"):
        assert name in html, name

    # A third table shares cells: its baseline row and Table 3's MAE ViT-L row (norm-pixel target) are
    # already trained, so only the PCA row pretrains and fine-tunes; both non-baseline rows need the
    # linear probe Table 3 did not run. Shared configs are re-rendered (new tracking tag), nothing retrains.
    wider = snakemake(workdir, "-n", "--config", "preset=smoke", "ablations=[table1c_mask_token,table3_model_sizes,table1d_target]")
    counts = job_counts(wider.stdout + wider.stderr)
    assert (counts["pretrain"], counts["finetune"], counts["linprobe"]) == (1, 1, 2), counts  # pca; norm_pixel + pca

    # One value changed in one row: only that row's pretraining and its evaluations rerun.
    path = workdir / "ablations/table1c_mask_token.yaml"
    path.write_text(path.read_text().replace("set: {model.encoder_mask_tokens: true}",
                                             "set: {model.encoder_mask_tokens: true, model.mask_ratio: 0.5}"))
    changed = snakemake(workdir, "-n", "--config", "preset=smoke", grid)
    counts = job_counts(changed.stdout + changed.stderr)
    print(f"after one changed value: {counts}")
    assert (counts["pretrain"], counts["finetune"], counts["linprobe"]) == (1, 1, 1), counts


@pytest.mark.slow
def test_an_ablation_of_your_own_runs_and_reports(tmp_path):
    # README's example file as a user copies it (no paper keys), run with the real `mae` (one seed: fast)
    workdir = copy_workflow(tmp_path)
    name, text = own_ablation_example()
    (workdir / f"ablations/{name}.yaml").write_text(text)
    grid = [f"ablations=[{name}]", "seeds=[0]"]
    result = snakemake(workdir, "--config", "preset=smoke", *grid, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    assert job_counts(result.stdout + result.stderr)["pretrain"] == 3
    table = (workdir / f"results/smoke/tables/{name}.md").read_text()
    assert "| Pretraining weight decay | ours lin | ours Δlin [95% CI] | lin verdict |" in table
    assert "| 0.2 | " in table and "He et al." not in table
    assert (workdir / f"results/smoke/figures/{name}.png").stat().st_size > 10_000  # a figure of its own
    report = snakemake(workdir, "--config", "preset=smoke", *grid, "--report", "results/smoke/report.html")
    assert report.returncode == 0, report.stderr[-3000:]
    html = (workdir / "results/smoke/report.html").read_text()
    assert f"{name}.md" in html and "Not in the paper" in html and "An ablation file without a caption" in html
    assert f"{name}.png" in html and "A figure of an ablation the paper does not have" in html


# Fails the pretraining of the "encoder w/ [M]" row for real (exit 1) and runs every other job with the
# real `mae`, so the grid ends partial.
FAILING_MAE = """#!/usr/bin/env bash
config="$3"
if [ "$1" = pretrain ] && grep -q "encoder_mask_tokens: true" "$config"; then
  echo "injected failure" >&2; exit 1
fi
exec {real_mae} "$@"
"""


def test_partial_grid_still_aggregates(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mae").write_text(FAILING_MAE.format(real_mae=Path(SNAKEMAKE).parent / "mae"))
    (bin_dir / "mae").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([SNAKEMAKE, "--config", "preset=smoke", "ablations=[table1c_mask_token]", "--retries", "0"],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode != 0
    assert "tables and figures of the runs that finished" in result.stderr, result.stderr[-3000:]
    table = (workdir / "results/smoke/tables/table1c_mask_token.md").read_text()
    with_mask = next(line for line in table.splitlines() if line.startswith("| encoder w/ [M]"))
    default = next(line for line in table.splitlines() if "encoder w/o [M]" in line and line.startswith("|"))
    assert with_mask.split("|")[3].strip() == "—", table  # ours ft: the failed row
    assert "(n=1)" in default.split("|")[3], table  # ours ft: the default row finished
    assert "no run folder" in table  # the note says what is missing
    assert (workdir / "results/smoke/figures/loss_curves.png").stat().st_size > 0
    # "Rerun the same command to complete them": the partial results must not make the failed runs look
    # done, nor a finished run whose folder was deleted to be redone
    manifest = json.loads((workdir / "runs/smoke/manifest.json").read_text())
    finished_probe = next(e["run_dir"] for e in manifest if e["stage"] == "linprobe" and "w/o" in e["row"])
    shutil.rmtree(workdir / finished_probe)
    again = snakemake(workdir, "-n", "--config", "preset=smoke", "ablations=[table1c_mask_token]")
    counts = job_counts(again.stdout + again.stderr)
    assert [counts.get(rule) for rule in ("pretrain", "finetune", "linprobe", "collect_runs")] == [1, 1, 2, 1], \
        again.stdout[-3000:]


# A stand-in for `mae` that finishes every job at once: config.yaml, a two-step metrics.jsonl and a
# metrics.json whose top-1 depends on the stage, so the aggregation has real files to read.
INSTANT_MAE = """#!/usr/bin/env bash
stage=$1; config=$3; out=$5
mkdir -p "$out"
cp "$config" "$out/config.yaml"
printf '{"step": 0, "loss": 1.0}\\n{"step": 10, "loss": 0.5}\\n' > "$out/metrics.jsonl"
[ "$stage" = linprobe ] || echo model > "$out/model.pth"
case "$stage" in pretrain) top1="";; finetune) top1='"top1": 80.5, ';; *) top1='"top1": 60.25, ';; esac
echo "{\\"status\\": \\"completed\\", \\"stage\\": \\"$stage\\", \\"run_id\\": \\"$(basename "$out")\\", ${top1}\\"train_time_s\\": 1.0, \\"train_flops_per_image\\": 1000.0}" > "$out/metrics.json"
"""


def test_a_subset_run_keeps_the_aggregates_of_other_ablations(tmp_path):
    """Issue #16 item 10: a second run with another subset of ablations rewrites only its own runs file,
    tables and the shared outputs (runs.csv, findings, loss curves, reconstruction), and says so; the
    first subset's tables and runs files are left as they were, and runs.csv keeps its runs."""
    workdir, env = workflow_with_stand_in_mae(tmp_path, INSTANT_MAE, {"MLFLOW_DISABLE_TELEMETRY": "true"})

    def run(ablations: str) -> subprocess.CompletedProcess:
        result = subprocess.run([SNAKEMAKE, "--config", "preset=smoke", f"ablations=[{ablations}]"], cwd=workdir,
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    results = workdir / "results/smoke"
    first = run("table1c_mask_token")
    assert "updated table1c_mask_token; kept from earlier runs: nothing" in first.stderr
    kept = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in
            [results / "runs/table1c_mask_token.csv", *sorted((results / "tables").glob("table1c_mask_token.*"))]}
    assert len(kept) == 4
    findings = (results / "findings.md").read_text()
    assert "table1c_mask_token: encoder w/o [M] − encoder w/ [M]" in findings

    second = run("table1d_target")
    assert "updated table1d_target; kept from earlier runs: table1c_mask_token" in second.stderr
    for path, (content, mtime) in kept.items():
        assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime, path
    runs = pd.read_csv(results / "runs.csv", dtype=str).drop_duplicates("run_id")
    members = ";".join(runs["ablations"])
    assert "table1c_mask_token:encoder w/ [M]" in members and "table1d_target:PCA" in members
    # the shared baseline pretraining belongs to both tables: one run, both memberships
    shared = runs[runs["ablations"].str.contains("table1c_mask_token:encoder w/o") & (runs["stage"] == "pretrain")]
    assert shared["ablations"].tolist() == ["table1c_mask_token:encoder w/o [M];table1d_target:pixel (w/o norm)"]
    findings = pd.read_csv(results / "findings.csv").set_index("finding")
    # both subsets' findings are computed (one seed each under smoke: inconclusive, with the reason)
    assert findings.at["mask_token_ft", "n_seeds"] == 1 and findings.at["norm_pixel_ft", "n_seeds"] == 1
    assert "has 1 seed" in findings.at["mask_token_ft", "reason"]
    assert (results / "tables/table1d_target.md").exists() and (results / "figures/loss_curves.png").exists()


def test_an_interrupted_run_aggregates_its_own_grid_not_the_previous_manifest(tmp_path):
    # The aggregation after a failed or interrupted run read runs/<preset>/manifest.json, which the
    # write_manifest rule may not have rewritten yet: the previous run's grid, so every row of this run's
    # tables said "not in the manifest". --omit-from write_manifest makes that ordering certain here.
    failing_pca = INSTANT_MAE.replace("mkdir -p \"$out\"\n", "mkdir -p \"$out\"\n"
                                      "if grep -q 'target: pca' \"$config\"; then echo crash >&2; exit 1; fi\n", 1)
    workdir, env = workflow_with_stand_in_mae(tmp_path, failing_pca, {"MLFLOW_DISABLE_TELEMETRY": "true"})

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([SNAKEMAKE, "--config", "preset=smoke", *args, "--retries", "0"], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=600)

    assert run("ablations=[table1c_mask_token]").returncode == 0
    result = run("ablations=[table1d_target]", "--omit-from", "write_manifest")
    assert result.returncode != 0 and "tables and figures of the runs that finished" in result.stderr, \
        result.stderr[-3000:]
    table = (workdir / "results/smoke/tables/table1d_target.md").read_text()
    assert "not in the manifest" not in table, table
    pixel = next(line for line in table.splitlines() if line.startswith("| **pixel (w/o norm)**"))
    assert "(n=1)" in pixel, table  # a finished row has its number
    manifest = json.loads((workdir / "runs/smoke/manifest.json").read_text())
    assert {e["ablation"] for e in manifest} == {"table1d_target"}


# Exits 2 (a user error) for the pretraining of the "encoder w/ [M]" row, 1 (a crash) for the other
# row; every attempt is counted in the run folder.
ERRING_MAE = """#!/usr/bin/env bash
out="$5"; mkdir -p "$out"; echo attempt >> "$out/attempts"
if grep -q "encoder_mask_tokens: true" "$3"; then echo "error: model.x=1 is invalid" >&2; exit 2; fi
echo "crash" >&2; exit 1
"""


def test_user_error_is_not_retried_but_a_crash_is_retried(tmp_path):
    workdir, env = workflow_with_stand_in_mae(tmp_path, ERRING_MAE)
    result = subprocess.run([SNAKEMAKE, "--config", "preset=smoke", "ablations=[table1c_mask_token]", "--until", "pretrain"],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    attempts = {}
    for run_dir in (workdir / "runs/smoke/pretrain").iterdir():
        config = (workdir / "runs/smoke/configs/pretrain" / f"{run_dir.name}.yaml").read_text()
        attempts["user error" if "encoder_mask_tokens: true" in config else "crash"] = \
            len((run_dir / "attempts").read_text().split())
    assert attempts == {"user error": 1, "crash": 3}, (attempts, result.stderr[-3000:])
    assert "not retried: the previous attempt exited 2" in result.stdout + result.stderr
