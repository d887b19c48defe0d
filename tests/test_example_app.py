"""The example app (``example_app/``): as a real gunicorn server with two workers driven over HTTP
and by the real ``flask`` CLI, and in process with pytest-flask's client (the seed-style service)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import signal
import stat
import subprocess
import sys
import typing as t
from pathlib import Path

import psutil
import pytest
import requests
import sqlalchemy as sa
from conftest import free_port, no_control_socket, wait_until
from flask import Flask
from flask.testing import FlaskClient

from example_app import TOKEN_FILE, create_app  # importable from the checkout: pytest's pythonpath
from example_app.models import EvaluateInfo, ModelInfo, db, seed_models
from example_app.service import EvaluateService, EvaluationStartError

if t.TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"

BIN = Path(sys.executable).parent
FINAL = ("COMPLETED", "FAILED")
TOKEN_LINE = re.compile(r"\[example_app pid (\d+)\] procman dashboard: /procman/ +API token \(from [^)]*\): (\S+)")


# ==================================================================== a real gunicorn server ======
@dataclasses.dataclass
class Server:
    """A gunicorn serving the example app, with its instance folder and log."""

    url: str
    instance: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def flask(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run the real ``flask --app example_app ARGS`` against the same instance folder."""
        return subprocess.run([str(BIN / "flask"), "--app", "example_app", *args], cwd=REPO, env=self.env,
                              check=False, capture_output=True, text=True, timeout=timeout)

    def token(self) -> str:
        return (self.instance / TOKEN_FILE).read_text().strip()




def get(url: str, **kwargs: t.Any) -> requests.Response:
    with requests.Session() as session:
        return session.get(url, timeout=10, **kwargs)


def gone(pid: int) -> bool:
    """True once ``pid`` has ended (a zombie has ended too)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_evaluations_of(instance: Path) -> None:
    """Kill what the server left running (PROCMAN_STOP_ON_EXIT is False: evaluations outlive it)."""
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(instance) in arg for arg in proc.info["cmdline"] or ()):
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Server]:
    """``flask init-db``, then gunicorn with 2 workers on a free port, instance folder on tmp_path."""
    base = tmp_path_factory.mktemp("example")
    instance = base / "instance"
    env = {k: v for k, v in os.environ.items() if k != "PROCMAN_API_TOKEN" and not k.startswith("EXAMPLE_")}
    env.update(EXAMPLE_INSTANCE_PATH=str(instance), EXAMPLE_PROCMAN_POLL_INTERVAL="0.2",
               EXAMPLE_PROCMAN_STOP_TIMEOUT="5")
    init = subprocess.run([str(BIN / "flask"), "--app", "example_app", "init-db"], cwd=REPO, env=env,
                          check=False, capture_output=True, text=True, timeout=30)
    assert init.returncode == 0, init.stderr
    assert "3 models added" in init.stdout

    port = free_port()
    log_path = base / "gunicorn.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", "example_app/gunicorn_conf.py", "--workers", "2",
             "--bind", f"127.0.0.1:{port}", *no_control_socket(), "example_app:create_app()"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    srv = Server(f"http://127.0.0.1:{port}", instance, env, proc, log_path)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"gunicorn exited with {proc.returncode}:\n{srv.log()}")
            try:
                up = get(srv.url + "/").status_code == 200
            except requests.ConnectionError:
                return False
            return up and len(TOKEN_LINE.findall(srv.log())) >= 2  # both workers have booted

        try:
            wait_until(ready, timeout=20, interval=0.1, message="gunicorn to serve with 2 workers")
        except AssertionError as exc:
            pytest.fail(f"{exc}\n--- gunicorn log ---\n{srv.log()}")
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        kill_evaluations_of(instance)


@pytest.fixture
def http(server: Server) -> t.Iterator[requests.Session]:
    """A browser-like session (cookies: the CSRF token lives in the session)."""
    with requests.Session() as session:
        yield session


def new_form(server: Server, http: requests.Session) -> tuple[str, dict[str, str]]:
    """GET the form: its CSRF token and the model uuids by name."""
    page = http.get(server.url + "/evaluations/new", timeout=10)
    assert page.status_code == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    models = {name: uid for uid, name in re.findall(r'<option value="([0-9a-f-]{36})">([^ <]+) \(', page.text)}
    return token.group(1), models


def start_evaluation(server: Server, http: requests.Session, *, model: str = "centroid-v1",
                     duration: str = "0.5", fail: bool = False) -> str:
    """POST the form like a browser; the uuid of the evaluation it redirects to."""
    token, models = new_form(server, http)
    form = {"csrf_token": token, "model_uuid": models[model], "dataset": "two_blobs.csv", "duration": duration}
    if fail:
        form["fail"] = "1"
    response = http.post(server.url + "/evaluations", data=form, allow_redirects=False, timeout=10)
    assert response.status_code == 303, response.text
    match = re.fullmatch(r"(?:https?://[^/]+)?/evaluations/([0-9a-f-]{36})", response.headers["Location"])
    assert match is not None, response.headers["Location"]
    return match.group(1)


def state(server: Server, http: requests.Session, uid: str) -> dict[str, t.Any]:
    response = http.get(f"{server.url}/evaluations/{uid}.json", timeout=10)
    assert response.status_code == 200
    return t.cast(dict[str, t.Any], response.json())


def wait_final(server: Server, http: requests.Session, uid: str, timeout: float = 20) -> dict[str, t.Any]:
    """Poll the evaluation's JSON until COMPLETED or FAILED; on timeout, fail with gunicorn's log."""
    try:
        return t.cast(dict[str, t.Any], wait_until(
            lambda: (s := state(server, http, uid))["status"] in FINAL and s, timeout=timeout, interval=0.1,
            message=f"evaluation {uid} to end"))
    except AssertionError as exc:
        pytest.fail(f"{exc}; last state {state(server, http, uid)}\n--- gunicorn log ---\n{server.log()}")


def wait_running(server: Server, http: requests.Session, uid: str) -> int:
    """Poll until the evaluation's process runs with a known pid; that pid."""
    def running() -> int | None:
        process = state(server, http, uid)["process"]
        return process["pid"] if process and process["status"] == "running" and process["pid"] else None

    return t.cast(int, wait_until(running, timeout=10, interval=0.05, message=f"{uid} to run"))


def test_both_workers_print_the_same_token_kept_in_the_instance_folder(server: Server) -> None:
    token_file = server.instance / TOKEN_FILE
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    printed = TOKEN_LINE.findall(server.log())
    assert len({pid for pid, _ in printed}) >= 2  # one line per worker...
    assert {token for _, token in printed} == {server.token()}  # ...all with the file's token
    assert len(server.token()) >= 32

    # The token opens the procman API and dashboard; without it, only evaluations' processes are readable.
    assert get(server.url + "/procman/api/processes").status_code == 403
    wrong = get(server.url + "/procman/api/processes", headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 403
    listed = get(server.url + "/procman/api/processes", headers={"Authorization": f"Bearer {server.token()}"})
    assert listed.status_code == 200
    dashboard = get(server.url + "/procman/")
    assert dashboard.status_code == 200 and 'data-needs-token="true"' in dashboard.text
    programs = get(server.url + "/procman/api/programs", headers={"Authorization": f"Bearer {server.token()}"})
    assert [p["name"] for p in programs.json()["programs"]] == ["evaluate"]


def read_events(url: str) -> str:
    """Read a procman events stream as it comes, until its ``end`` event (as the page's live log does)."""
    seen: list[str] = []
    with requests.Session() as session, session.get(url, stream=True, timeout=10) as response:
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        for raw in response.iter_lines(decode_unicode=True):
            line = t.cast(str, raw)
            seen.append(line)
            if line == "event: end":
                break
    return "\n".join(seen)


def test_an_evaluation_completes_and_stores_its_metrics(server: Server, http: requests.Session) -> None:
    uid = start_evaluation(server, http, model="centroid-v1", duration="1")
    # The page's live log, read while it runs: the events stream of an evaluation is public (no token).
    log = read_events(f"{server.url}/procman/api/processes/{uid}/events")
    assert "event: stdout" in log and "progress 200/200" in log and "done" in log
    # stderr goes into the same file (merge_stderr): one stream, in the order the script wrote it.
    assert "event: stderr" not in log and "no held-out split" in log
    assert log.index("no held-out split") < log.index("evaluating model") < log.index("progress 200/200")
    final = wait_final(server, http, uid)
    assert final["status"] == "COMPLETED", final
    assert final["error"] is None
    metrics = final["metrics"]
    assert metrics["model"] == "nearest-centroid" and metrics["dataset"] == "two_blobs.csv"
    assert metrics["n_samples"] == 200 and 0.5 < metrics["accuracy"] <= 1.0
    assert set(metrics) >= {"precision", "recall", "f1"}
    assert final["process"]["status"] == "completed" and final["process"]["return_code"] == 0
    assert (server.instance / "outputs" / uid / "metrics.json").is_file()

    page = http.get(f"{server.url}/evaluations/{uid}", timeout=10)
    assert page.status_code == 200
    assert 'data-status="COMPLETED"' in page.text and "<h2>Metrics</h2>" in page.text
    assert 'data-metric="accuracy"' in page.text and "/procman/static/procman/stream.js" in page.text
    listed = http.get(server.url + "/evaluations.json", timeout=10).json()
    summary = next(e for e in listed if e["uuid"] == uid)
    assert {"uuid": uid, "status": "COMPLETED"}.items() <= summary.items()
    assert 1.0 <= summary["duration"] < 20
    assert dt.datetime.fromisoformat(summary["started_at"]) >= dt.datetime.fromisoformat(summary["created_at"])
    assert uid in http.get(server.url + "/", timeout=10).text

    # Reading an evaluation's process needs no token; other processes and other actions do.
    assert get(f"{server.url}/procman/api/processes/{uid}").status_code == 200
    assert get(f"{server.url}/procman/api/processes/not-an-evaluation/events").status_code == 403
    assert http.post(f"{server.url}/procman/api/processes/{uid}/stop", headers={"X-Requested-With": "x"},
                     timeout=10).status_code == 403


def test_a_failing_evaluation_becomes_failed_with_its_error(server: Server, http: requests.Session) -> None:
    uid = start_evaluation(server, http, model="mean-threshold", duration="0.4", fail=True)
    final = wait_final(server, http, uid)
    assert final["status"] == "FAILED", final
    assert final["metrics"] is None
    assert "exit status 1" in final["error"] and "simulated failure" in final["error"]
    assert "progress" not in final["error"]  # from the traceback on: the progress lines are in the log
    assert final["process"]["status"] == "completed" and final["process"]["return_code"] == 1


def test_the_flask_cli_stops_an_evaluation_which_becomes_failed(server: Server, http: requests.Session) -> None:
    uid = start_evaluation(server, http, duration="60")
    pid = wait_running(server, http, uid)
    assert state(server, http, uid)["status"] == "IN_PROGRESS"

    result = server.flask("procman", "stop", uid)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert uid in result.stdout + result.stderr

    final = wait_final(server, http, uid)
    assert final["status"] == "FAILED", final
    assert final["process"]["status"] == "stopped" and final["metrics"] is None
    assert "stopped before it finished" in final["error"] and "received SIGTERM" in final["error"]
    assert gone(pid)
    # Stopping again is an error that says so.
    assert server.flask("procman", "stop", uid).returncode != 0


def test_the_stop_button_needs_the_csrf_token(server: Server, http: requests.Session) -> None:
    assert http.post(server.url + "/evaluations", data={"dataset": "two_blobs.csv"}, timeout=10).status_code == 400
    uid = start_evaluation(server, http, duration="60")
    wait_running(server, http, uid)

    forged = http.post(f"{server.url}/evaluations/{uid}/stop", data={"csrf_token": "forged"}, timeout=10)
    assert forged.status_code == 400
    assert state(server, http, uid)["status"] == "IN_PROGRESS"

    token, _ = new_form(server, http)
    stop = http.post(f"{server.url}/evaluations/{uid}/stop", data={"csrf_token": token}, allow_redirects=False,
                     timeout=30)
    assert stop.status_code == 303 and stop.headers["Location"].endswith(f"/evaluations/{uid}")
    final = wait_final(server, http, uid)
    assert final["status"] == "FAILED" and final["process"]["status"] == "stopped", final


def test_an_evaluation_outlives_its_recycled_worker(server: Server, http: requests.Session) -> None:
    uid = start_evaluation(server, http, duration="5")
    pid = wait_running(server, http, uid)
    starter = psutil.Process(pid).ppid()  # the worker that spawned it
    assert starter in [w.pid for w in psutil.Process(server.proc.pid).children()]

    http.close()  # no kept-alive connection to the worker: it exits at once instead of draining it
    os.kill(starter, signal.SIGTERM)  # gunicorn recycles a worker this way (max_requests, HUP, ...)
    wait_until(lambda: gone(starter), timeout=15, message="the worker to exit")
    assert not gone(pid)  # PROCMAN_STOP_ON_EXIT = False: the evaluation runs on

    # The other worker adopts it and records its real end; the durable handler runs there.
    final = wait_final(server, http, uid)
    assert final["status"] == "COMPLETED", final
    assert final["metrics"]["n_samples"] == 200
    assert final["process"]["return_code"] == 0


# ==================================================================== in process (pytest-flask) ==
def build_app(instance: Path, **config: t.Any) -> Flask:
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(instance), "PROCMAN_POLL_INTERVAL": 0.1,
                      "PROCMAN_STOP_TIMEOUT": 2.0, **config})
    with app.app_context():
        db.create_all()
        seed_models()
    return app


def close_app(app: Flask) -> None:
    manager = app.extensions["procman"]
    manager.stop_all(timeout=1)
    manager.shutdown(stop_processes=True)
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def app(tmp_path: Path) -> t.Iterator[Flask]:
    """The example app in this process (overrides conftest's ``app`` for pytest-flask's ``client``)."""
    app = build_app(tmp_path / "instance")
    yield app
    close_app(app)


def add_evaluation(model_name: str = "mean-threshold", duration: float = 0.2) -> str:
    model = db.session.scalars(sa.select(ModelInfo).where(ModelInfo.name == model_name)).one()
    evaluation = EvaluateInfo(model_uuid=model.uuid, dataset="two_blobs.csv", duration=duration)
    db.session.add(evaluation)
    db.session.commit()
    return evaluation.uuid


def fresh_status(uid: str) -> str:
    """The row's status as the database has it now (another thread's session wrote it)."""
    db.session.rollback()
    db.session.expire_all()
    return t.cast(str, db.session.get(EvaluateInfo, uid).evaluate_status)  # type: ignore[union-attr]


def test_seed_style_evaluate_service(app: Flask, client: FlaskClient) -> None:
    with app.app_context():
        assert sa.inspect(db.engine).has_table("procman_processes")  # ProcMan(db=db): in the app's database
        uid = add_evaluation()
        assert EvaluateService.run_evaluate(uid) == {"message": "The evaluation has started."}
        assert fresh_status(uid) == "IN_PROGRESS"
        process = EvaluateService._process_manager.wait(uid, timeout=20)
        assert process["status"] == "completed" and process["return_code"] == 0
        assert "done" in process["stdout"]
        wait_until(lambda: fresh_status(uid) == "COMPLETED", timeout=10, message="the handler to finish")
        row = db.session.get(EvaluateInfo, uid)
        assert row is not None and row.metrics is not None and row.metrics["model"] == "threshold"

    data = client.get(f"/evaluations/{uid}.json").get_json()
    assert data["status"] == "COMPLETED" and data["metrics"]["n_samples"] == 200
    assert uid in client.get("/").get_data(as_text=True)


def test_run_evaluate_restores_not_started_when_the_cap_is_reached(tmp_path: Path) -> None:
    full = build_app(tmp_path / "full", PROCMAN_MAX_PROCESSES=0)
    try:
        with full.app_context():
            uid = add_evaluation()
            with pytest.raises(EvaluationStartError, match="already running"):
                EvaluateService.run_evaluate(uid)
            assert fresh_status(uid) == "NOT_STARTED"
            assert "already running" in (db.session.get(EvaluateInfo, uid).error or "")  # type: ignore[union-attr]

        client = full.test_client()
        page = client.get("/evaluations/new").get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        model = re.search(r'<option value="([0-9a-f-]{36})">', page).group(1)  # type: ignore[union-attr]
        response = client.post("/evaluations", data={"csrf_token": token, "model_uuid": model,
                                                     "dataset": "two_blobs.csv"}, follow_redirects=True)
        text = response.get_data(as_text=True)
        assert response.status_code == 200 and 'data-status="NOT_STARTED"' in text and "already running" in text
    finally:
        close_app(full)


def test_the_form_is_validated(client: FlaskClient) -> None:
    page = client.get("/evaluations/new").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    model = re.search(r'<option value="([0-9a-f-]{36})">', page).group(1)  # type: ignore[union-attr]
    good = {"csrf_token": token, "model_uuid": model, "dataset": "two_blobs.csv", "duration": "1"}

    assert client.post("/evaluations", data={**good, "csrf_token": ""}).status_code == 400
    for field, value, message in [("model_uuid", "nope", "Choose one of the models"),
                                  ("dataset", "../models.py", "Choose one of the datasets"),
                                  ("duration", "-1", "between 0 and 3600"),
                                  ("duration", "nan", "between 0 and 3600"),
                                  ("duration", "soon", "number of seconds")]:
        response = client.post("/evaluations", data={**good, field: value})
        assert response.status_code == 400 and message in response.get_data(as_text=True), (field, value)
    assert client.get("/evaluations.json").get_json() == []
    assert client.get("/evaluations/00000000-0000-0000-0000-000000000000.json").status_code == 404
    assert client.get("/evaluations/not-a-uuid").status_code == 404


# ==================================================================== in Chromium, as a person ===
@pytest.fixture(scope="module")
def chromium() -> t.Iterator[Browser]:
    """Debian's headless Chromium via Playwright; skipped without it unless PROCMAN_REQUIRE_BROWSER=1."""
    def missing(reason: str) -> t.NoReturn:
        if os.environ.get("PROCMAN_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason} (apt-get install chromium; pip install playwright)", pytrace=False)
        pytest.skip(reason)

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the Python package playwright is not installed")
    if not os.path.exists(CHROMIUM):
        missing(f"{CHROMIUM} does not exist")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield launched
        finally:
            launched.close()


class Watched(t.NamedTuple):
    page: Page
    problems: list[str]  # console errors, uncaught exceptions and 4xx/5xx answers


def open_page(browser: Browser, *, width: int, height: int = 900, zone: str | None = None) -> Watched:
    """A fresh context and page that records every console error, page error and failed answer."""
    context = browser.new_context(viewport={"width": width, "height": height}, timezone_id=zone, locale="en-US")
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    return Watched(page, problems)


def fits_the_width(page: Page, width: int) -> None:
    scroll = page.evaluate("[document.documentElement.scrollWidth, document.body.scrollWidth]")
    assert max(scroll) <= width, f"the page is {scroll} px wide in a {width} px viewport"


def in_view(page: Page, selector: str, width: int) -> None:
    """Every element matching ``selector`` is visible and lies within the viewport's width."""
    boxes = page.eval_on_selector_all(selector, "els => els.map(e => { const r = e.getBoundingClientRect(); "
                                                "return [r.left, r.right, r.width, r.height]; })")
    assert boxes, selector
    for left, right, box_width, box_height in boxes:
        assert box_width > 0 and box_height > 0 and left >= 0 and right <= width, (selector, boxes)


@pytest.mark.browser
def test_the_list_fits_a_phone_and_every_row_links_to_its_evaluation(
        server: Server, http: requests.Session, chromium: Browser) -> None:
    """Issue 9: at 390 px the status, created and View columns were behind a sideways scroll (the page
    was 697 px wide). Now the list fits and the whole row is the link."""
    from playwright.sync_api import expect

    done = start_evaluation(server, http, model="baseline-majority", duration="0.2")
    failed = start_evaluation(server, http, model="mean-threshold", duration="0.2", fail=True)
    wait_final(server, http, done)
    wait_final(server, http, failed)
    running = start_evaluation(server, http, model="centroid-v1", duration="60")
    wait_running(server, http, running)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        for width, name in ((390, "example-list-390.png"), (1280, "example-list.png")):
            watched = open_page(chromium, width=width, height=844, zone="Asia/Tokyo")
            page = watched.page
            try:
                page.goto(server.url + "/")
                expect(page.locator("#refresh-state")).to_contain_text("Updated", timeout=10_000)  # rows re-rendered
                fits_the_width(page, width)
                for uid in (done, failed, running):
                    row = f'#evaluations tr[data-uuid="{uid}"]'
                    in_view(page, f"{row} .badge", width)
                    in_view(page, f"{row} a.row-link", width)
                    in_view(page, f"{row} .col-duration", width)
                    in_view(page, f"{row} time", width)
                    expect(page.locator(f"{row} time")).to_contain_text("GMT+9")  # the reader's zone, named
                expect(page.locator(f'tr[data-uuid="{running}"] .badge')).to_have_text("IN_PROGRESS")
                live = page.locator(f'tr[data-uuid="{running}"] .duration')
                expect(live).to_have_text(re.compile(r"^\d+ s$"))
                # After a later refresh (the page is older than 2 s by then), the live duration still
                # counts from when the rows were rendered, not from when the page was loaded.
                updated = page.text_content("#refresh-state")
                expect(page.locator("#refresh-state")).not_to_have_text(updated or "", timeout=10_000)
                shown = int((live.text_content() or "").split()[0])
                actual = state(server, http, running)["process"]["duration"]
                assert actual - 2.5 <= shown <= actual + 1, (shown, actual)
                page.screenshot(path=str(ARTIFACTS / name), full_page=True)
                # The row is the link (stretched over it): a tap on its status badge opens the evaluation.
                box = page.locator(f'tr[data-uuid="{failed}"] .badge').bounding_box()
                assert box is not None
                page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                page.wait_for_url(f"**/evaluations/{failed}")
                expect(page.locator("#evaluation-status")).to_have_text("FAILED")
                fits_the_width(page, width)
                in_view(page, "#retry-form button", width)
                in_view(page, "#delete-form button", width)
                page.screenshot(path=str(ARTIFACTS / name.replace("list", "failed")), full_page=True)

                page.goto(f"{server.url}/evaluations/{running}")
                duration = page.locator("#evaluation-duration")
                first = duration.text_content()
                expect(duration).not_to_have_text(first or "", timeout=5_000)  # counts up while it runs
                expect(duration).to_have_text(re.compile(r"^\d+ s$"))
                expect(page.locator("#live-log")).to_contain_text("progress", timeout=15_000)
                fits_the_width(page, width)
                page.screenshot(path=str(ARTIFACTS / name.replace("list", "running")), full_page=True)

                page.goto(server.url + "/evaluations/new")
                fits_the_width(page, width)
                page.screenshot(path=str(ARTIFACTS / name.replace("list", "new")), full_page=True)
                assert not watched.problems, watched.problems  # the favicon included
            finally:
                page.context.close()
    finally:
        server.flask("procman", "stop", running)


@pytest.mark.browser
def test_a_reload_shows_the_log_in_the_order_it_was_shown_live(server: Server, chromium: Browser) -> None:
    """Issue 9: the log showed stdout and stderr interleaved live, then, after the reload at completion,
    every stderr line at the end. The script writes to both (warnings between progress lines)."""
    watched = open_page(chromium, width=1280)
    page = watched.page
    shown: dict[str, str] = {}  # page load (its time origin) -> the log's text, as last shown
    loads: list[str] = []

    def record(load: str, text: str) -> None:
        if load not in shown:
            loads.append(load)
        shown[load] = text

    page.expose_function("recordLog", record)
    page.add_init_script(
        "document.addEventListener('DOMContentLoaded', () => {"
        "  const log = document.getElementById('live-log'); if (!log) return;"
        "  const load = String(performance.timeOrigin);"
        "  new MutationObserver(() => window.recordLog(load, log.textContent))"
        "    .observe(log, {childList: true, characterData: true, subtree: true});"
        "});")
    try:
        page.goto(server.url + "/evaluations/new")
        page.select_option("#dataset", "imbalanced_blobs.csv")
        page.fill("#duration", "2")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r".*/evaluations/[0-9a-f-]{36}$"))
        page.wait_for_selector("#metrics", timeout=30_000)  # the page reloaded itself once COMPLETED
        page.wait_for_function("document.getElementById('live-log-state').textContent.includes('exit status 0')",
                               timeout=10_000)
        after = page.text_content("#live-log") or ""
        assert len(loads) == 2, loads  # live, then the reload
        live = shown[loads[0]]
        # What was shown live comes back first and in the same order (the page may reload at the end
        # before the last live chunk arrived: the reload then shows more, never another order).
        assert "no held-out split" in live and "progress 20/200" in live, live
        assert after.startswith(live), f"live:\n{live}\n--- after the reload:\n{after}"
        order = [after.index(text) for text in ("imbalanced dataset", "no held-out split", "evaluating model",
                                                "progress 20/200", "progress 200/200", "done")]
        assert order == sorted(order), after
        assert not watched.problems, watched.problems
    finally:
        page.context.close()


@pytest.mark.browser
def test_the_evaluation_page_streams_its_log_then_shows_the_metrics(server: Server, chromium: Browser) -> None:
    """In Chromium: the form, then the page's live log (stream.js) and its reload once COMPLETED."""
    watched = open_page(chromium, width=390, height=844)
    page = watched.page
    try:
        page.goto(server.url + "/evaluations/new")
        page.select_option("#dataset", "imbalanced_blobs.csv")
        page.fill("#duration", "1.5")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r".*/evaluations/[0-9a-f-]{36}$"))
        page.wait_for_function("document.getElementById('live-log').textContent.includes('progress')",
                               timeout=10_000)
        page.wait_for_selector("#metrics", timeout=20_000)  # the page reloads itself once COMPLETED
        assert page.text_content("#evaluation-status") == "COMPLETED"
        assert "imbalanced dataset" in (page.text_content("#live-log") or "")
        assert "exit status 0" in (page.text_content("#live-log-state") or "")
        assert re.fullmatch(r"\d+\.\d s", page.text_content("#evaluation-duration") or ""), "a final duration"
        fits_the_width(page, 390)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "example-completed-390.png"), full_page=True)
        page.set_viewport_size({"width": 1280, "height": 900})
        page.screenshot(path=str(ARTIFACTS / "example-completed.png"), full_page=True)
        assert not watched.problems, watched.problems
    finally:
        page.context.close()
