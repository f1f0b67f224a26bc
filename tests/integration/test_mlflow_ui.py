"""The MLflow UI in headless Chromium (Debian's /usr/bin/chromium driven by Playwright, no browser
download), as a user compares the workflow's runs: the harness's link opens the experiment on its
training runs (not MLflow 3's GenAI overview) with the runs' readable names, the chart and comparison
views show the runs and their metrics, and a run's System metrics tab has its CPU and memory charts.
Screenshots land in test-output/ (gitignored)."""
from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import pytest

from integration_support import TEST_OUTPUT, unavailable

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
METRIC_COLUMNS = ["loss", "lr"]
TIMEOUT_MS = 120_000  # the UI bundle is large and the machine is shared


@pytest.fixture(scope="module")
def browser_page():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright Python package is not installed (scripts/setup.sh test installs it)")
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} missing (Debian package chromium; scripts/setup.sh test installs it)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1800, "height": 1200})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            yield page
        finally:
            browser.close()


def _body_text(page) -> str:
    return page.inner_text("body")


def test_ui_experiment_runs_and_compare_view(mlflow_server, pretrain_runs, browser_page):
    from mae.tracking import ui_url
    page = browser_page
    client = mlflow_server.client()
    exp = client.get_experiment_by_name(pretrain_runs[0].config["tracking"]["experiment"])
    run_ids = [r.metrics["mlflow_run_id"] for r in pretrain_runs]
    names = [r.name for r in pretrain_runs]  # "fig5_mask_ratio · 50 · seed 0 · pretrain", ...
    TEST_OUTPUT.mkdir(exist_ok=True)

    # 1. the harness's link to the experiment (a fresh browser: MLflow's own default is the GenAI
    # overview) lands on the training-run list, which shows the readable names
    page.goto(ui_url(mlflow_server.uri, exp.experiment_id))
    for name in names:
        page.get_by_text(name, exact=True).first.wait_for()
    page.get_by_role("heading", name="Runs", exact=True).first.wait_for()
    text = _body_text(page)
    page.screenshot(path=str(TEST_OUTPUT / "mlflow_ui_landing.png"))
    assert f"{len(names)} matching runs" in text
    for genai in ("Token Usage", "Tokens per Trace", "Detect Issues"):  # the GenAI overview's panels
        assert genai not in text, f"the experiment opened on the GenAI overview ({genai!r} shown)"

    # the same list with the metric columns switched on (Columns menu)
    close_assistant = page.get_by_role("button", name="Close")
    if close_assistant.count():  # the assistant side panel only hides the table
        close_assistant.first.click()
    page.get_by_role("button", name="Columns").click()
    for key in METRIC_COLUMNS:
        page.get_by_text(key, exact=True).last.click()
    page.keyboard.press("Escape")
    page.get_by_role("columnheader", name=METRIC_COLUMNS[-1], exact=True).first.wait_for()
    text = _body_text(page)
    headers = {h.strip() for h in page.get_by_role("columnheader").all_inner_texts()}
    page.screenshot(path=str(TEST_OUTPUT / "mlflow_ui_experiment.png"))
    assert exp.name in text
    for name in names:
        assert name in text, f"run {name} not listed on the experiment page"
    assert f"{len(names)} matching runs" in text
    assert {"Run Name", "Metrics", *METRIC_COLUMNS} <= headers, f"column headers: {sorted(headers)}"

    # the chart view of the same list: one chart per metric, one line per run (charts below the fold
    # render lazily, so each metric is found through the chart search box)
    page.goto(f"{mlflow_server.uri}/#/experiments/{exp.experiment_id}/runs?compareRunsMode=CHART"
              "&workflowType=machine_learning")
    page.reload()  # a hash-only change keeps the table view mounted
    search = page.get_by_placeholder("Search metric charts")
    for key in reversed(METRIC_COLUMNS):  # ends filtered on "loss" for the screenshot
        search.fill(key)
        try:
            for name in names:
                page.get_by_text(f"{name} ({key})", exact=True).first.wait_for()
        finally:
            page.screenshot(path=str(TEST_OUTPUT / "mlflow_ui_charts.png"))
        text = _body_text(page)
        for name in names:
            assert f"{name} ({key})" in text, f"no {key} line for {name} in the chart view"

    # 2. the comparison view of both runs
    runs_q = urllib.parse.quote(json.dumps(run_ids))
    exps_q = urllib.parse.quote(json.dumps([exp.experiment_id]))
    page.goto(f"{mlflow_server.uri}/#/compare-runs?runs={runs_q}&experiments={exps_q}&workflowType=machine_learning")
    page.get_by_text(f"Comparing {len(run_ids)} Runs").first.wait_for()
    for name in names:
        page.get_by_text(name, exact=True).first.wait_for()
    page.get_by_text("final/final_loss").first.wait_for()
    text = _body_text(page)
    page.screenshot(path=str(TEST_OUTPUT / "mlflow_ui_compare.png"), full_page=True)
    for rid, name in zip(run_ids, names):
        assert rid in text and name in text
    # the Metrics table of the compare view lists every metric key of the runs
    metrics_part = text[text.index("\nMetrics\n"):]
    for key in ("loss", "lr", "images_per_s", "final/final_loss"):
        assert f"\n{key}\n" in metrics_part, f"metric {key} not shown in the compare view"
    # and the Parameters table the differing param
    params_part = text[text.index("\nParameters\n"):text.index("\nMetrics\n")]
    assert "model.mask_ratio" in params_part


def test_ui_run_page_shows_system_metrics(mlflow_server, pretrain_runs, browser_page):
    from mae.tracking import ui_url
    page = browser_page
    client = mlflow_server.client()
    run = pretrain_runs[0]
    run_id = run.metrics["mlflow_run_id"]
    keys = sorted(k for k in client.get_run(run_id).data.metrics if k.startswith("system/"))
    assert "system/cpu_utilization_percentage" in keys and "system/system_memory_usage_megabytes" in keys, keys
    page.goto(ui_url(mlflow_server.uri, client.get_run(run_id).info.experiment_id, run_id))
    page.get_by_role("heading", name=run.name).first.wait_for()
    page.get_by_role("tab", name="System metrics").click()
    try:  # one chart per system metric, titled by the key without "system/", its line named after the run
        for key in ("cpu_utilization_percentage", "system_memory_usage_megabytes"):
            page.get_by_text(f"{run.name} (system/{key})", exact=True).first.wait_for()
    finally:
        page.screenshot(path=str(TEST_OUTPUT / "mlflow_ui_system_metrics.png"))
    text = _body_text(page)
    for key in keys:
        assert key.removeprefix("system/") in text, f"no chart for {key}"
