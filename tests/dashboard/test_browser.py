"""The dashboard page in a real browser (Debian's chromium driven by Playwright).

The experiment is fed by `FakeEngine` (metric rows, status changes, applied commands through
the real stores), so what is checked is the page: rows and charts appear and grow as rows are
logged, the buttons steer runs, the clone editor submits edits and shows errors inline.

Chromium is not optional here: `.ci/run` installs it, and a machine without it fails these
tests rather than skipping them. Set RF_DASHBOARD_SCREENSHOT=docs/dashboard.png to refresh the
README's screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from rapidfire_core.control import CommandStore, RunStore
from rapidfire_core.control.run_store import MetricRecord
from rapidfire_core.dashboard.server import DashboardServer

from . import live_sweep
from .fake_engine import FakeEngine, make_experiment

CHROMIUM = os.environ.get("RF_CHROMIUM", "/usr/bin/chromium")
# Without these flags chromium stalls for minutes on a machine with no network (sync, updates).
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 8000
GRID = [{"peft.r": 8, "train.learning_rate": 1e-3}, {"peft.r": 8, "train.learning_rate": 1e-4},
        {"peft.r": 32, "train.learning_rate": 1e-3}]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: install it (apt-get install -y chromium); .ci/run does", pytrace=False
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # launch() gives every context a fresh temporary profile.
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"the page raised: {errors}"


@pytest.fixture
def sweep(tmp_path):
    """A 3-run experiment, trained by a fake engine; yields (root, run store)."""
    runs, _ = make_experiment(tmp_path, "sft-sweep", GRID)
    with FakeEngine(tmp_path / "sft-sweep", interval=0.1):
        yield tmp_path, runs


def _open(page, server, experiment="sft-sweep"):
    page.goto(f"{server.url}#exp={experiment}")
    page.wait_for_selector('#runs-table tbody tr[data-run="3"]')


def _line_length(page, metric, run_id):
    return page.eval_on_selector(
        f'.chart-card[data-metric="{metric}"] path.line[data-run="{run_id}"]',
        "p => p.getAttribute('d').length",
    )


def test_rows_and_charts_appear_and_grow_live(page, sweep):
    root, runs = sweep
    with DashboardServer(root) as server:
        _open(page, server)
        assert page.locator("#runs-table tbody tr").count() == 3
        assert page.locator("#controller").get_attribute("data-alive") == "yes"
        # the knob that varies is a column; the one that is the same everywhere is not
        headers = page.locator("#runs-table thead th").all_text_contents()
        assert "learning_rate" in headers and "r" in headers and "lora_alpha" not in headers

        page.wait_for_selector('.chart-card[data-metric="loss"] path.line[data-run="3"]')
        for metric in ("loss", "learning_rate", "grad_norm"):
            assert page.locator(f'.chart-card[data-metric="{metric}"] path.line').count() == 3
        before = _line_length(page, "loss", 1)
        page.wait_for_function(
            'n => document.querySelector(\'.chart-card[data-metric="loss"] path.line[data-run="1"]\')'
            ".getAttribute('d').length > n",
            arg=before,
        )
        # a metric logged for the first time gets its own chart within the polling period
        runs.log_metric_records([MetricRecord(2, 1, 0.0, 1, {"rewards/format_reward": 0.5})])
        page.wait_for_selector('.chart-card[data-metric="rewards/format_reward"] circle.dot', timeout=3000)

        # clicking a run's legend chip hides its line everywhere; again shows it
        page.click('#legend .chip[data-run="2"]')
        assert page.locator('.chart-card[data-metric="loss"] path.line[data-run="2"]').count() == 0
        page.click('#runs-table tbody tr[data-run="2"] td.progress')
        page.wait_for_selector('.chart-card[data-metric="loss"] path.line[data-run="2"]')


def test_stop_resume_and_delete_buttons_steer_runs(page, sweep):
    root, runs = sweep
    with DashboardServer(root) as server:
        _open(page, server)
        row = page.locator('#runs-table tbody tr[data-run="2"]')
        row.locator('button[data-action="stop"]').click()
        page.wait_for_selector('#runs-table tbody tr[data-run="2"][data-status="STOPPED"]')
        assert row.locator('button[data-action="stop"]').is_disabled()
        assert runs.get_run(2)["status"] == "STOPPED"
        page.wait_for_selector('#commands-table tbody tr[data-status="applied"]')
        history = page.locator("#commands-table tbody tr").first.text_content()
        assert "stop" in history and "#2" in history and "dashboard" in history

        row.locator('button[data-action="resume"]').click()
        page.wait_for_selector('#runs-table tbody tr[data-run="2"][data-status="ONGOING"]')

        page.once("dialog", lambda dialog: dialog.accept())
        page.locator('#runs-table tbody tr[data-run="3"] button[data-action="delete"]').click()
        page.wait_for_selector('#runs-table tbody tr[data-run="3"][data-status="DELETED"]')
        deleted = page.locator('#runs-table tbody tr[data-run="3"]')
        assert all(
            deleted.locator(f'button[data-action="{op}"]').is_disabled() for op in ("stop", "delete", "clone")
        )


def test_clone_editor_submits_edits_and_shows_errors_inline(page, sweep):
    root, runs = sweep
    with DashboardServer(root) as server:
        _open(page, server)
        page.click('#runs-table tbody tr[data-run="1"] button[data-action="clone"]')
        editor = page.locator("#editor")
        assert editor.is_visible()
        lr = editor.locator('.knob-row[data-knob="train.learning_rate"] input')
        assert lr.input_value() == "0.001"
        assert editor.locator('.knob-row[data-knob="peft.r"] .knob-type').text_content() == "number"

        # not a number: refused in the page, nothing is sent
        lr.fill("fast")
        page.click("#editor-submit")
        assert "expected a number" in page.locator("#editor-error").text_content()

        # a value the engine's validation rejects: the failed command's error, inline
        lr.fill("-1")
        page.click("#editor-submit")
        page.wait_for_function(
            "() => document.querySelector('#editor-error').textContent.includes('learning_rate')"
        )
        assert "learning_rate: must be > 0, got -1" in page.locator("#editor-error").text_content()
        assert editor.is_visible()

        # a malformed request (here forged on its way out): the server's 400, inline
        def forge(route):
            body = json.loads(route.request.post_data)
            body["payload"]["warm_start"] = "yes"
            route.continue_(post_data=json.dumps(body))

        page.route("**/api/experiments/sft-sweep/commands", forge)
        page.click("#editor-submit")
        page.wait_for_function(
            "() => document.querySelector('#editor-error').textContent.includes('warm_start')"
        )
        page.unroute("**/api/experiments/sft-sweep/commands")

        # a good edit, warm-started, plus an added knob: the editor closes and the new run appears
        lr.fill("5e-4")
        page.check("#warm-start")
        page.click("#add-knob")
        page.fill(".knob-row.extra .extra-name", "train.weight_decay")
        page.fill(".knob-row.extra .extra-value", "0.01")
        page.click("#editor-submit")
        page.wait_for_selector("#editor", state="hidden")
        new_row = page.wait_for_selector('#runs-table tbody tr[data-run="4"]')
        assert "clone of #1" in new_row.text_content() and "warm" in new_row.text_content()
        clone = runs.get_run(4)
        assert clone["parent_run_id"] == 1 and clone["warm_start"] is True
        assert clone["knobs"]["train.learning_rate"] == 5e-4 and clone["knobs"]["train.weight_decay"] == 0.01
        page.wait_for_selector('.chart-card[data-metric="loss"] path.line[data-run="4"]')


def test_without_a_training_process_the_page_says_commands_stay_pending(page, tmp_path):
    make_experiment(tmp_path, "idle", [{}])
    with FakeEngine(tmp_path / "idle", alive=False, train=False), DashboardServer(tmp_path) as server:
        page.goto(server.url)
        page.wait_for_selector('#runs-table tbody tr[data-run="1"]')
        assert page.locator("#controller").get_attribute("data-alive") == "no"
        page.click('#runs-table tbody tr[data-run="1"] button[data-action="stop"]')
        page.wait_for_selector(".toast >> text=No process is training this experiment now")
        page.wait_for_selector('#commands-table tbody tr[data-status="pending"]')
        assert CommandStore(tmp_path / "idle" / "runs.db").pending()[0].op == "stop"
        assert "stop pending" in page.locator('#runs-table tbody tr[data-run="1"]').text_content()


def test_token_protected_page_works_from_the_printed_url_only(page, tmp_path):
    make_experiment(tmp_path, "sft-sweep", GRID)
    with DashboardServer(tmp_path, token="t0ken", host="127.0.0.1") as server:
        resp = page.goto(server.url.split("?")[0])
        assert resp.status == 401
        _open(page, server)  # url carries ?token=: the page sends it on every API call
        page.click('#runs-table tbody tr[data-run="1"] button[data-action="stop"]')
        page.wait_for_selector('#commands-table tbody tr[data-status="pending"]')
        # the browser reopens the page without the link: the cookie the first load set carries it
        page.goto(server.url.split("?")[0] + "#exp=sft-sweep")
        page.wait_for_selector('#commands-table tbody tr[data-status="pending"]')


def test_the_default_dashboard_opens_from_its_printed_url(page, tmp_path):
    from rapidfire_core.dashboard.token import read_token

    make_experiment(tmp_path, "sft-sweep", GRID)
    with DashboardServer(tmp_path) as server:  # no token given: the user's own, from its file
        assert server.token == read_token() and f"?token={server.token}" in server.url
        assert page.goto(server.url.split("?")[0]).status == 401
        _open(page, server)


def test_experiment_picker_lists_every_experiment(page, sweep):
    root, _ = sweep
    make_experiment(root, "dpo-sweep", [{}])
    with DashboardServer(root) as server:
        _open(page, server)
        assert set(page.locator("#experiment-select option").all_text_contents()) == {
            "sft-sweep",
            "dpo-sweep",
        }
        page.select_option("#experiment-select", "dpo-sweep")
        page.wait_for_function(
            "() => document.querySelectorAll('#runs-table tbody tr[data-run]').length === 1"
        )
        assert page.url.endswith("#exp=dpo-sweep")
        runs = RunStore(root / "dpo-sweep" / "runs.db")
        runs.log_metric_records(
            [MetricRecord(1, step, 0.0, 1, {"loss": 3.0 - step / 10}) for step in (1, 2, 3)]
        )
        page.wait_for_selector('.chart-card[data-metric="loss"] path.line[data-run="1"]')

        # deleted and made again under the same name: the page drops the old rows, reads the new
        runs.close()
        shutil.rmtree(root / "dpo-sweep")
        fresh, _ = make_experiment(root, "dpo-sweep", [{}, {}])
        fresh.log_metric_records([MetricRecord(2, 1, 0.0, 1, {"reward": 0.5})])
        page.wait_for_selector('.chart-card[data-metric="reward"] circle.dot')
        assert page.locator('.chart-card[data-metric="loss"]').count() == 0
        assert page.locator("#runs-table tbody tr[data-run]").count() == 2


def test_screenshot(page, tmp_path):
    """The README's picture: a 4-config sweep with a stopped run, a warm clone and a failed edit."""
    grid = [{"peft.r": r, "train.learning_rate": lr} for r in (8, 32) for lr in (1e-3, 1e-4)]
    runs, commands = make_experiment(tmp_path, "sft-sweep", grid)
    engine = FakeEngine(tmp_path / "sft-sweep", interval=0.25)
    engine.step_all(60)
    commands.submit("stop", 4, source="automl")
    engine.apply_commands()
    commands.submit("clone", 1, {"changes": {"learning_rate": 5e-4}, "warm_start": True}, source="dashboard")
    engine.apply_commands()
    engine.step_all(50)
    commands.submit("clone", 2, {"changes": {"learning_rate": "fast"}}, source="cli")
    engine.apply_commands()
    with engine, DashboardServer(tmp_path) as server:
        _open(page, server)
        page.wait_for_selector('.chart-card[data-metric="eval_loss"] path.line[data-run="5"]')
        page.wait_for_selector('#commands-table tbody tr[data-status="failed"]')
        target = Path(os.environ.get("RF_DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
        page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 20_000
    assert RunStore(tmp_path / "sft-sweep" / "runs.db").get_run(5)["parent_run_id"] == 1


def test_end_to_end_against_a_real_background_sweep(page, tmp_path, tiny_model_dir, create_tiny_model):
    """The real engine (tiny model, 3 runs, run_fit(background=True)) steered from the page."""
    from rapidfire_core import Experiment

    exp = Experiment(live_sweep.NAME, experiment_path=tmp_path, verbose=False)
    handle = live_sweep.start(exp, tiny_model_dir, create_tiny_model)
    try:
        live_sweep.wait_until_training(exp.path)
        with DashboardServer(tmp_path) as server:
            _open(page, server, live_sweep.NAME)
            assert page.locator("#controller").get_attribute("data-alive") == "yes"
            page.wait_for_selector('.chart-card[data-metric="loss"] path.line[data-run="3"]')
            page.wait_for_selector(
                '.chart-card[data-metric="eval_loss"] path.line[data-run="1"]', timeout=30_000
            )
            before = _line_length(page, "loss", 1)
            page.wait_for_function(
                'n => document.querySelector(\'.chart-card[data-metric="loss"] path.line[data-run="1"]\')'
                ".getAttribute('d').length > n",
                arg=before,
            )

            page.locator('#runs-table tbody tr[data-run="2"] button[data-action="stop"]').click()
            page.wait_for_selector(
                '#runs-table tbody tr[data-run="2"][data-status="STOPPED"]', timeout=30_000
            )
            stopped_at = RunStore(exp.path / "runs.db").get_run(2)["global_step"]

            page.click('#runs-table tbody tr[data-run="1"] button[data-action="clone"]')
            # a wrong type: the engine's validation fails the command, its error shows inline
            page.click("#add-knob")
            page.fill(".knob-row.extra .extra-name", "learning_rate")
            page.fill(".knob-row.extra .extra-value", "fast")
            page.click("#editor-submit")
            page.wait_for_function(
                "() => document.querySelector('#editor-error').textContent.includes('expected float')",
                timeout=30_000,
            )
            page.click(".knob-row.extra button.icon")  # drop the bad row, edit the real knob
            page.fill('.knob-row[data-knob="train.learning_rate"] input', "5e-4")
            page.click("#editor-submit")
            page.wait_for_selector("#editor", state="hidden", timeout=30_000)
            page.wait_for_selector('#runs-table tbody tr[data-run="4"]')
            page.wait_for_selector('.chart-card[data-metric="loss"] path.line[data-run="4"]', timeout=30_000)
            clone = RunStore(exp.path / "runs.db").get_run(4)
            assert clone["parent_run_id"] == 1 and clone["knobs"]["train.learning_rate"] == 5e-4
            # the stopped run logged nothing after its stop while the others (and the clone) trained
            rows = RunStore(exp.path / "runs.db").metric_rows(limit=10**6)
            assert max(step for _, run, step, *_ in rows if run == 2) <= stopped_at
    finally:
        handle.cancel()
        handle.wait(timeout=120, raise_errors=False)
        exp.end()


WIDE_GRID = [  # a sweep whose knob columns alone are wider than a 1400 px window
    {"model_name": f"HuggingFaceTB/SmolLM2-{size}-Instruct", "peft.r": r, "peft.lora_alpha": 2 * r,
     "peft.lora_dropout": dropout, "peft.target_modules": modules, "train.learning_rate": lr,
     "train.lr_scheduler_type": schedule, "train.per_device_train_batch_size": batch,
     "train.gradient_accumulation_steps": accumulation, "train.weight_decay": decay, "train.warmup_steps": warmup}
    for size, r, dropout, modules, lr, schedule, batch, accumulation, decay, warmup in (
        ("135M", 8, 0.05, ["q_proj", "v_proj"], 1e-3, "linear", 4, 1, 0.0, 0),
        ("360M", 32, 0.1, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"], 1e-4, "cosine", 8, 4, 0.01, 10),
    )
]  # fmt: skip


def test_at_1400_px_every_action_stays_visible_and_progress_keeps_up_with_the_charts(browser, tmp_path):
    runs, _ = make_experiment(tmp_path, "wide", WIDE_GRID)
    runs.update_run(1, status="ONGOING", global_step=0)  # the store's step is written at chunk ends
    runs.log_metric_records([MetricRecord(1, step, 0.1, 1, {"loss": 2.0 - 0.1 * step}) for step in (1, 2, 3)])
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        with DashboardServer(tmp_path) as server:
            page.goto(f"{server.url}#exp=wide")
            page.wait_for_selector('#runs-table tbody tr[data-run="2"]')
            wrap = page.locator("#runs-table").locator("xpath=ancestor::div[contains(@class,'table-wrap')]")
            assert wrap.evaluate("w => w.scrollWidth > w.clientWidth")  # wider than the window: it scrolls
            assert page.evaluate("() => document.documentElement.scrollWidth") <= 1400  # the page does not
            visible = wrap.bounding_box()
            for run_id in (1, 2):
                clone = page.locator(f'#runs-table tbody tr[data-run="{run_id}"] button.clone').bounding_box()
                assert (
                    clone["x"] >= visible["x"]
                    and clone["x"] + clone["width"] <= visible["x"] + visible["width"]
                )
            progress = page.locator('#runs-table tbody tr[data-run="1"] .progress').inner_text()
            assert "3" in progress.split("/")[0]  # the step it logged, as the loss chart shows
    finally:
        context.close()
