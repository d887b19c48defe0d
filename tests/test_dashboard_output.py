"""The dashboard's progress bar, time column, "both" view and log-cap note in a real browser (issue 12).

Same setup as tests/test_dashboard.py (Debian's Chromium driven by Playwright, a werkzeug server in
a thread); screenshots at desktop and phone width go to tests/artifacts/.
"""

from __future__ import annotations

import re
import typing as t
from pathlib import Path

import pytest
import test_dashboard
from conftest import py, wait_until
from test_dashboard import ARTIFACTS, TOKEN, WAIT_MS, Served

from flask_procman.engine import timeindex

if t.TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser

# The fixtures of tests/test_dashboard.py: the browser, the served app, a fresh tab.
browser = test_dashboard.browser
served = test_dashboard.served
page = test_dashboard.page

STEPS = [("stdout", "out 1\n"), ("stderr", "err 1\n"), ("stdout", "out 2\n"), ("stderr", "err 2\n")]


def _child(tmp_path: Path) -> list[str]:
    """Writes STEPS one by one, each once ``go<i>`` exists (reporting 60/200 before the second);
    ends on ``end``."""
    lines = ["import os, sys, time", "from flask_procman.progress import report"]
    for index, (stream, text) in enumerate(STEPS):
        if index:
            lines.append(f"while not os.path.exists({str(tmp_path / f'go{index}')!r}): time.sleep(0.005)")
        if index == 1:
            lines.append("report(60, 200, 'evaluating batch 3')")
        lines.append(f"sys.{stream}.write({text!r}); sys.{stream}.flush()")
    lines.append(f"while not os.path.exists({str(tmp_path / 'end')!r}): time.sleep(0.005)")
    return py("\n".join(lines) + "\n")


def _step(served: Served, tmp_path: Path, index: int, sizes: dict[str, int]) -> None:
    """Let the child write step ``index`` and wait until the log's time index has timed it."""
    stream, text = STEPS[index]
    if index:
        (tmp_path / f"go{index}").touch()
    sizes[stream] += len(text)
    log = Path(served.app.config["PROCMAN_LOG_DIR"]) / "steps" / f"{stream}.log"
    wait_until(lambda: any(o == sizes[stream] for o, _ in timeindex.load(str(log))), timeout=15,
               message=f"the index to time step {index}")


def _login(page: Page, served: Served) -> None:
    from playwright.sync_api import expect

    page.goto(served.url)
    page.fill("#token-input", TOKEN)
    page.click("#token-submit")
    expect(page.locator("#token-form")).to_be_hidden(timeout=WAIT_MS)


def _combined_lines(page: Page) -> list[str]:
    """The lines of the "both" view without their time labels."""
    return [t.cast(str, line) for line in page.locator("#log-combined").evaluate(
        "pre => [...pre.querySelectorAll('.log-line')].map(l => l.lastChild.data.trim())")]


def test_progress_bar_time_column_and_both_view(served: Served, page: Page, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with served.app.app_context():
        assert served.procman.start_process("steps", _child(tmp_path))
    sizes = {"stdout": 0, "stderr": 0}
    _step(served, tmp_path, 0, sizes)
    _step(served, tmp_path, 1, sizes)

    _login(page, served)
    row = page.locator('tr[data-process-id="steps"]')
    expect(row.locator("td.col-progress .pm-progress-text")).to_have_text(re.compile(r"^30%"), timeout=WAIT_MS)
    assert row.locator(".pm-progress-fill").evaluate("e => e.style.width") in ("30%", "30.0%")
    row.click()
    progress = page.locator("#detail-progress")
    expect(progress).to_be_visible(timeout=WAIT_MS)
    expect(progress).to_contain_text("30%")
    expect(progress).to_contain_text("60 / 200")
    expect(progress).to_contain_text("ETA")
    expect(progress).to_contain_text("evaluating batch 3")

    # The time column: off by default, a toggle shows HH:MM:SS beside every line.
    expect(page.locator("#log-stdout")).to_contain_text("out 1", timeout=WAIT_MS)
    label = page.locator("#log-stdout .log-time").first
    expect(label).to_be_hidden()
    page.check("#time-toggle")
    expect(label).to_be_visible()
    expect(label).to_have_text(re.compile(r"^\d\d:\d\d:\d\d$"), timeout=WAIT_MS)

    # "both": the lines of the two streams in the order they were written, across seconds,
    # including those that arrive live while the page is open.
    page.click("#tab-combined")
    expect(page.locator("#log-note")).to_contain_text("within one second is not known")
    _step(served, tmp_path, 2, sizes)
    _step(served, tmp_path, 3, sizes)
    expected = [text.strip() for _, text in STEPS]
    wait_until(lambda: _combined_lines(page) == expected, timeout=15, message="the four lines in order")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-progress-desktop.png"))
    page.locator("#detail-body").evaluate("body => { body.scrollTop = body.scrollHeight; }")
    page.screenshot(path=str(ARTIFACTS / "dashboard-both-desktop.png"))

    # A reload never reorders what was shown.
    page.reload()
    expect(page.locator("#detail-id")).to_have_text("steps", timeout=WAIT_MS)
    page.click("#tab-combined")
    wait_until(lambda: _combined_lines(page) == expected, timeout=15, message="the same order after a reload")
    expect(page.locator("#log-combined .log-time").first).to_be_visible()  # the toggle is remembered

    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator("#detail-progress")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "dashboard-progress-390.png"))
    page.locator("#detail-body").evaluate("body => { body.scrollTop = body.scrollHeight; }")
    page.screenshot(path=str(ARTIFACTS / "dashboard-both-390.png"))
    page.click("#detail-close")
    expect(row.locator("td.col-progress .pm-progress-track")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "dashboard-list-390.png"))
    (tmp_path / "end").touch()


def test_the_dashboard_says_when_a_log_cap_dropped_the_head(served: Served, page: Page) -> None:
    from playwright.sync_api import expect

    code = ("import sys, time\nfor i in range(4000):\n    print(f'line {i:05d} ' + 'x' * 200)\n"
            "sys.stdout.flush()\ntime.sleep(60)\n")
    with served.app.app_context():
        assert served.procman.start_process("capped", py(code), max_log_bytes=64 * 1024)
        wait_until(lambda: (s := served.procman.get_process_status("capped")) and s["stdout_dropped"] > 0,
                   message="the cap to drop the head")
    _login(page, served)
    page.locator('tr[data-process-id="capped"]').click()
    expect(page.locator("#log-stdout")).to_contain_text("line 03999", timeout=WAIT_MS)
    note = page.locator("#log-note")
    expect(note).to_be_visible(timeout=WAIT_MS)
    expect(note).to_contain_text("dropped by the log cap (max_log_bytes)")
    assert "line 00000" not in (page.locator("#log-stdout").text_content() or "")
