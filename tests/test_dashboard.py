"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright (issue 4).

A real app is served by werkzeug in a thread; the page is opened, given the API token, and used like
a person would: the list shows a running process, its panel follows the output live, Stop (with its
confirmation dialog) stops it. Without the token the page shows only the token form.

The browser is Debian's ``chromium`` (``apt-get install chromium``) driven by the ``playwright``
Python package (``pip install playwright``; its own browser download is not needed). When either is
missing the tests are skipped, unless ``PROCMAN_REQUIRE_BROWSER=1`` (set by ``.ci/run``): then they fail.
"""

from __future__ import annotations

import os
import re
import threading
import typing as t
from pathlib import Path

import pytest
from conftest import AppFactory, py, wait_until
from flask import Flask
from werkzeug.serving import make_server

from flask_procman import ProcMan

if t.TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
INSTALL_HINT = ("The dashboard test needs Debian's Chromium and Playwright's Python package: "
                "run `apt-get install chromium` (as root) and `pip install playwright` "
                "(no `playwright install` needed: the test uses /usr/bin/chromium).")
TOKEN = "dashboard-token-0123456789"
ARTIFACTS = Path(__file__).parent / "artifacts"
WAIT_MS = 10_000  # Playwright's expect() timeout: generous, the assertions return as soon as they hold

#: Prints ``tick 000``, ``tick 001``, ... every 0.2 s for about 20 s (zero-padded: no line is a prefix of another).
TICKER = py(
    "import time\n"
    "for i in range(100):\n"
    "    print(f'tick {i:03d}', flush=True)\n"
    "    time.sleep(0.2)\n"
)


def _browser_missing(reason: str) -> t.NoReturn:
    """Fail under ``PROCMAN_REQUIRE_BROWSER=1`` (CI), skip elsewhere; both say how to install it."""
    message = f"{reason}. {INSTALL_HINT}"
    if os.environ.get("PROCMAN_REQUIRE_BROWSER") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> t.Iterator[Browser]:
    """Headless Debian Chromium, launched once for this module and closed after it."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        _browser_missing("The Python package `playwright` is not installed")
    if not os.path.exists(CHROMIUM):
        _browser_missing(f"{CHROMIUM} does not exist")
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        except PlaywrightError as exc:
            _browser_missing(f"{CHROMIUM} did not start ({str(exc).splitlines()[0]})")
        try:
            yield launched
        finally:
            launched.close()


class Served(t.NamedTuple):
    app: Flask
    procman: ProcMan
    url: str  # the dashboard page


@pytest.fixture
def served(make_app: AppFactory) -> t.Iterator[Served]:
    """A token-protected app served by werkzeug's threaded server on a free port, shut down after."""
    app = make_app("dashboard", PROCMAN_API_TOKEN=TOKEN, PROCMAN_POLL_INTERVAL=0.05)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="dashboard-test-server", daemon=True)
    thread.start()
    procman = app.extensions["procman"].extension
    try:
        yield Served(app, procman, f"http://127.0.0.1:{server.server_port}/procman/")
    finally:
        with app.app_context():
            procman.stop_all(timeout=2)  # event streams still being served see the end and finish
        server.shutdown()
        server.server_close()
        thread.join(10)
        assert not thread.is_alive(), "the test server did not stop"
        wait_until(lambda: not _request_threads(), timeout=10, message="the server's request threads to end")


def _request_threads() -> list[threading.Thread]:
    """werkzeug's per-request threads still alive."""
    return [th for th in threading.enumerate() if "process_request_thread" in th.name]


@pytest.fixture
def page(browser: Browser, served: Served) -> t.Iterator[Page]:
    """A fresh tab (its own session storage: no token) closed before the server stops.

    JavaScript errors of the page (uncaught, or logged to the console) fail the test.
    """
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    # Console errors too (stream.js logs the exceptions of its handlers there), but not the browser's
    # own line for each non-2xx answer: the tests check the answers they expect.
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error"
           and not m.text.startswith("Failed to load resource") else None)
    try:
        yield tab
    finally:
        context.close()  # ends the page's event stream before the server shuts down
    assert not errors, f"uncaught JavaScript errors on the dashboard: {errors}"


def _printed_ticks(served: Served, process_id: str) -> int:
    """The highest ``tick NNN`` the process has written to its log file so far (-1 for none)."""
    with served.app.app_context():
        data, _ = served.procman.read_output(process_id, "stdout", 0, 1024 * 1024)
    ticks = [int(n) for n in re.findall(rb"tick (\d{3})\n", data)]
    return max(ticks, default=-1)


def _status(served: Served, process_id: str) -> str:
    with served.app.app_context():
        status = served.procman.get_process_status(process_id)
    assert status is not None, process_id
    return t.cast(str, status["status"])


def test_dashboard_lists_follows_and_stops_a_process(served: Served, page: Page) -> None:
    from playwright.sync_api import expect

    with served.app.app_context():
        assert served.procman.start_process("ticker", TICKER)
    assert _status(served, "ticker") == "running"

    page.goto(served.url)
    expect(page.locator("#token-form")).to_be_visible(timeout=WAIT_MS)
    page.fill("#token-input", TOKEN)
    page.click("#token-submit")
    expect(page.locator("#token-form")).to_be_hidden(timeout=WAIT_MS)

    row = page.locator('tr[data-process-id="ticker"]')
    expect(row.locator("td.status")).to_have_text("running", timeout=WAIT_MS)

    row.click()
    detail = page.locator("#process-detail")
    log = page.locator("#log-stdout")
    expect(detail).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#detail-id")).to_have_text("ticker", timeout=WAIT_MS)
    expect(log).to_contain_text("tick 000", timeout=WAIT_MS)
    # Liveness: a line the process had not printed yet once the panel showed output must arrive.
    later = _printed_ticks(served, "ticker") + 3
    assert later < 100, "the process printed too fast for this check"
    expect(log).to_contain_text(f"tick {later:03d}", timeout=WAIT_MS)
    expect(page.locator("#stream-state")).to_have_text("Live", timeout=WAIT_MS)
    expect(page.locator("#error-banner")).to_be_hidden()
    # Nothing shown twice: the tail read when the panel opened and the stream join without overlap.
    shown = re.findall(r"tick (\d{3})", log.text_content() or "")
    assert shown == [f"{i:03d}" for i in range(len(shown))], shown

    # The panel scrolls inside itself: bring the output into the picture (the page stays at its top).
    page.locator("#detail-body").evaluate("body => { body.scrollTop = body.scrollHeight; }")
    expect(log).to_be_in_viewport()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"))

    page.click("#stop-button")
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible(timeout=WAIT_MS)
    expect(dialog).to_contain_text("Stop this process?")
    assert _status(served, "ticker") == "running"  # the confirmation comes first
    page.click("#confirm-ok")
    expect(dialog).to_be_hidden(timeout=WAIT_MS)

    expect(row.locator("td.status")).to_have_text("stopped", timeout=WAIT_MS)
    expect(page.locator("#detail-status")).to_have_text("stopped", timeout=WAIT_MS)
    expect(page.locator("#stop-button")).to_be_hidden(timeout=WAIT_MS)
    expect(page.locator("#stream-state")).to_have_text("Ended", timeout=WAIT_MS)
    assert _status(served, "ticker") == "stopped"
    assert _printed_ticks(served, "ticker") < 99  # stopped mid-run, not finished
    expect(page.locator("#error-banner")).to_be_hidden()


def test_dashboard_without_the_token_shows_no_data(served: Served, page: Page) -> None:
    from playwright.sync_api import expect

    with served.app.app_context():
        assert served.procman.start_process("secret-job", py("import time; print('classified', flush=True); "
                                                            "time.sleep(30)"))
    api_answers: list[tuple[str, int]] = []
    page.on("response", lambda r: api_answers.append((r.url, r.status)) if "/procman/api/" in r.url else None)

    page.goto(served.url + "#process=secret-job")  # even a link to a process shows nothing
    expect(page.locator("#token-form")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#token-input")).to_be_visible()
    expect(page.locator("#list-empty-title")).to_have_text("Locked", timeout=WAIT_MS)
    expect(page.locator("#process-detail")).to_be_hidden()
    expect(page.locator("tr[data-process-id]")).to_have_count(0)
    page.wait_for_load_state("networkidle")
    text = page.locator("body").inner_text()
    assert "secret-job" not in text and "classified" not in text
    assert not any(status == 200 for _, status in api_answers), api_answers

    # A wrong token is refused by the API: an error, the form again, still no data.
    page.fill("#token-input", "not-the-token")
    page.click("#token-submit")
    expect(page.locator("#error-banner")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#error-banner")).to_contain_text("Bearer")
    expect(page.locator("#token-form")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("tr[data-process-id]")).to_have_count(0)
    expect(page.locator("#process-detail")).to_be_hidden()
    assert api_answers and all(status == 401 for _, status in api_answers), api_answers
    text = page.locator("body").inner_text()
    assert "secret-job" not in text and "classified" not in text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-locked.png"))

    # The right token then opens the linked process.
    page.fill("#token-input", TOKEN)
    page.click("#token-submit")
    expect(page.locator('tr[data-process-id="secret-job"] td.status')).to_have_text("running", timeout=WAIT_MS)
    expect(page.locator("#log-stdout")).to_contain_text("classified", timeout=WAIT_MS)
    expect(page.locator("#error-banner")).to_be_hidden(timeout=WAIT_MS)


def _api_requests(page: Page) -> list[tuple[str, int]]:
    """Every answer the page gets from the procman API from now on, as ``(url, status)``."""
    answers: list[tuple[str, int]] = []
    page.on("response", lambda r: answers.append((r.url, r.status)) if "/procman/api/" in r.url else None)
    return answers


def _expect_locked(page: Page, answers: list[tuple[str, int]], hint: str) -> None:
    """The locked state: "Locked" in the list and the indicator, no spinner, no rows, and no more polling."""
    from playwright.sync_api import expect

    expect(page.locator("#list-empty-title")).to_have_text("Locked", timeout=WAIT_MS)
    expect(page.locator("#list-empty-hint")).to_contain_text(hint)
    expect(page.locator("#refresh-label")).to_have_text("Locked")
    expect(page.locator("#list-loading")).to_be_hidden()
    expect(page.locator("tr[data-process-id]")).to_have_count(0)
    expect(page.locator("#error-banner")).to_contain_text("Not allowed to read here")
    # Refreshing has stopped: nothing is asked for during more than one refresh period (2 s).
    asked = len(answers)
    page.wait_for_timeout(2600)
    assert len(answers) == asked, answers[asked:]
    expect(page.locator("#list-loading")).to_be_hidden()


def test_a_wrong_token_refused_by_the_authorize_callback_locks_the_dashboard(served: Served, page: Page) -> None:
    """Issue 9: a 403 from the app's authorize callback ("Not allowed to read here") locked nothing: the
    indicator said "Live" and "Loading processes…" spun forever."""
    from playwright.sync_api import expect

    from flask_procman.api import request_has_valid_token

    served.procman.authorize(lambda action, process_id: request_has_valid_token())
    with served.app.app_context():
        assert served.procman.start_process("guarded", py("import time; time.sleep(30)"))
    answers = _api_requests(page)

    page.goto(served.url)
    page.fill("#token-input", "not-the-token")
    page.click("#token-submit")
    expect(page.locator("#token-form")).to_be_visible(timeout=WAIT_MS)
    _expect_locked(page, answers, "Enter the API token")
    assert answers and {status for _, status in answers} == {403}, answers
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-locked-403.png"))
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(ARTIFACTS / "dashboard-locked-390.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390

    page.fill("#token-input", TOKEN)
    page.click("#token-submit")
    expect(page.locator('tr[data-process-id="guarded"] td.status')).to_have_text("running", timeout=WAIT_MS)
    expect(page.locator("#refresh-label")).to_have_text("Live")
    expect(page.locator("#error-banner")).to_be_hidden()


def test_an_authorize_callback_refusing_reads_locks_the_dashboard_until_allowed(served: Served, page: Page) -> None:
    """No token at all: the app's own rule (a login) decides. Refused: locked, with how to open it."""
    from playwright.sync_api import expect

    gate = {"open": False}
    served.app.config["PROCMAN_API_TOKEN"] = None  # the dashboard then offers no token form
    served.procman.authorize(lambda action, process_id: gate["open"])
    with served.app.app_context():
        assert served.procman.start_process("members-only", py("import time; time.sleep(30)"))
    answers = _api_requests(page)

    page.goto(served.url)
    _expect_locked(page, answers, "log in to it")
    expect(page.locator("#token-form")).to_be_hidden()
    expect(page.locator("#list-retry")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "dashboard-locked-callback.png"))

    gate["open"] = True  # e.g. the person logged in to the application
    page.click("#list-retry")
    expect(page.locator('tr[data-process-id="members-only"] td.status')).to_have_text("running", timeout=WAIT_MS)
    expect(page.locator("#refresh-label")).to_have_text("Live")
    expect(page.locator("#list-retry")).to_be_hidden()
    expect(page.locator("#error-banner")).to_be_hidden()


def test_access_lost_with_rows_shown_offers_try_again(served: Served, page: Page) -> None:
    """Rows on the page, then a refresh is refused (403): locked, the rows kept, and "Try again" in
    the banner (it sat in the empty-list box, which rows hide, so there was no way back)."""
    from playwright.sync_api import expect

    gate = {"open": True}
    served.app.config["PROCMAN_API_TOKEN"] = None
    served.procman.authorize(lambda action, process_id: gate["open"])
    with served.app.app_context():
        assert served.procman.start_process("shown", py("import time; time.sleep(30)"))
    page.goto(served.url)
    row = page.locator('tr[data-process-id="shown"] td.status')
    expect(row).to_have_text("running", timeout=WAIT_MS)

    gate["open"] = False  # e.g. the session expired
    expect(page.locator("#refresh-label")).to_have_text("Locked", timeout=WAIT_MS)
    expect(page.locator("#error-banner")).to_be_visible()
    expect(page.locator("#list-retry")).to_be_visible()
    expect(row).to_have_text("running")  # what was shown stays
    page.screenshot(path=str(ARTIFACTS / "dashboard-access-lost.png"))

    gate["open"] = True
    page.click("#list-retry")
    expect(page.locator("#refresh-label")).to_have_text("Live", timeout=WAIT_MS)
    expect(page.locator("#list-retry")).to_be_hidden()
    expect(page.locator("#error-banner")).to_be_hidden()


def test_times_on_the_dashboard_name_their_zone(served: Served, browser: Browser) -> None:
    """Issue 9: times were local without a zone. They stay local, with the zone's name."""
    from playwright.sync_api import expect

    with served.app.app_context():
        assert served.procman.start_process("zoned", py("print('hi')"))
        served.procman.wait("zoned", timeout=10)
    context = browser.new_context(viewport={"width": 1440, "height": 900}, timezone_id="Asia/Tokyo",
                                  locale="en-US")
    try:
        page = context.new_page()
        page.goto(served.url)
        page.fill("#token-input", TOKEN)
        page.click("#token-submit")
        started = page.locator('tr[data-process-id="zoned"] td.col-started')
        expect(started).to_contain_text("GMT+9", timeout=WAIT_MS)
        expect(page.locator("#last-updated")).to_contain_text("GMT+9")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(ARTIFACTS / "dashboard-list-390.png"), full_page=True)
        page.set_viewport_size({"width": 1440, "height": 900})
        page.locator('tr[data-process-id="zoned"]').click()
        expect(page.locator('#detail-fields dd[data-field="started_at"]')).to_contain_text("GMT+9", timeout=WAIT_MS)
        page.screenshot(path=str(ARTIFACTS / "dashboard-times.png"))
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(ARTIFACTS / "dashboard-times-390.png"), full_page=True)
    finally:
        context.close()
