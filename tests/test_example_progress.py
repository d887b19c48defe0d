"""The example's evaluations report their progress (issue 12): the script through
``flask_procman.progress``, the evaluation page and the list as a live bar (in Chromium)."""

from __future__ import annotations

import os
import threading
import typing as t
from pathlib import Path

import pytest
from conftest import wait_until
from flask import Flask
from test_example_app import add_evaluation, build_app, close_app
from werkzeug.serving import make_server

from example_app.service import EvaluateService

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture
def example(tmp_path: Path) -> t.Iterator[Flask]:
    app = build_app(tmp_path / "instance")
    yield app
    close_app(app)


def test_the_evaluation_script_reports_its_progress(example: Flask) -> None:
    with example.app_context():
        uid = add_evaluation(duration=1.0)
        EvaluateService.run_evaluate(uid)
        seen = wait_until(lambda: (s := EvaluateService.process_status(uid)) and s["progress"], timeout=20,
                          message="a progress report")
        assert seen["total"] == 200 and 0 <= seen["done"] <= 200
        final = EvaluateService._process_manager.wait(uid, timeout=30)
    progress = final["progress"]
    assert progress["done"] == progress["total"] == 200 and progress["fraction"] == 1.0
    assert progress["message"].startswith("accuracy so far")
    listed = example.test_client().get("/evaluations.json").get_json()
    assert listed[0]["progress"]["done"] == 200 and isinstance(listed[0]["progress"]["updated_at"], str)


@pytest.mark.browser
def test_the_evaluation_page_and_the_list_show_a_live_bar(example: Flask) -> None:
    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("needs Debian's chromium (/usr/bin/chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    server = make_server("127.0.0.1", 0, example, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    with example.app_context():
        uid = add_evaluation(duration=6.0)
        EvaluateService.run_evaluate(uid)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.goto(f"{url}/evaluations/{uid}")
                bar = page.locator("#evaluation-progress")
                sync_api.expect(bar).to_be_visible(timeout=15_000)
                sync_api.expect(bar).to_contain_text("/ 200", timeout=15_000)
                first = bar.locator(".pm-progress-track").get_attribute("aria-valuenow")
                # Live: the bar moves on without a reload.
                page.wait_for_function(
                    "v => { const n = document.querySelector('#evaluation-progress .pm-progress-track');"
                    " return n && Number(n.getAttribute('aria-valuenow')) > Number(v); }", arg=first, timeout=15_000)
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "example-evaluation-progress.png"))

                page.goto(url + "/")
                row_bar = page.locator(f'tr[data-uuid="{uid}"] .ev-progress')
                sync_api.expect(row_bar).to_be_visible(timeout=10_000)
                sync_api.expect(row_bar).to_contain_text("%", timeout=10_000)
                page.screenshot(path=str(ARTIFACTS / "example-list-progress.png"))
                page.set_viewport_size({"width": 390, "height": 844})
                page.screenshot(path=str(ARTIFACTS / "example-list-progress-390.png"))
            finally:
                browser.close()
    finally:
        server.shutdown()
        thread.join(10)
