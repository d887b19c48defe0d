"""Progress (issue 12): the progress file a child writes, the stdlib helper, tqdm's bar, and where it shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
from conftest import PY, AppFactory, present, py, wait_until
from flask import Flask

from flask_procman import ProcMan
from flask_procman.engine.progressfile import last_tqdm_report, parse_line
from flask_procman.progress import ENV_VAR, MAX_FILE_BYTES, report

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _pm(app: Flask) -> ProcMan:
    return t.cast(ProcMan, app.extensions["procman"].extension)


def _progress(app: Flask, process_id: str) -> dict[str, t.Any] | None:
    with app.app_context():
        return t.cast("dict[str, t.Any] | None", present(_pm(app).get_process_status(process_id))["progress"])


def _waiter(flag: Path) -> str:
    """Python lines that block until ``flag`` exists (the test drives the child step by step)."""
    return f"while not os.path.exists({str(flag)!r}): time.sleep(0.01)\n"


def test_progress_from_the_file_last_complete_line_counts(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    step1, step2 = tmp_path / "step1", tmp_path / "step2"
    code = (
        "import os, time\n"
        "path = os.environ['PROCMAN_PROGRESS_FILE']\n"
        "f = open(path, 'a')\n"
        "f.write('10 200 loading data\\n'); f.flush()\n"
        + _waiter(step1) +
        "f.write('{\"done\": 60, \"total\": 200, \"mes'); f.flush()\n"  # half a line: must not count
        + _waiter(step2) +
        "f.write('sage\": \"evaluating\"}\\n'); f.flush()\n"
        "time.sleep(60)\n"
    )
    with app.app_context():
        assert _pm(app).get_process_status("nope") is None
        _pm(app).start_process("p", py(code))
        status = present(_pm(app).get_process_status("p"))
    first = wait_until(lambda: _progress(app, "p"), message="the first report")
    assert first["done"] == 10 and first["total"] == 200 and first["message"] == "loading data"
    assert first["fraction"] == pytest.approx(0.05)
    assert first["updated_at"].tzinfo is not None
    # The ETA extrapolates the average rate since the start: 190 more units at 10 per elapsed time.
    elapsed = (first["updated_at"] - present(status["started_at"])).total_seconds()
    assert first["eta_seconds"] == pytest.approx(elapsed * 19, abs=0.2)

    step1.touch()
    progress_file = os.path.join(app.config["PROCMAN_LOG_DIR"], "p", "progress")
    wait_until(lambda: Path(progress_file).read_bytes().endswith(b'"mes'), message="the half line")
    assert present(_progress(app, "p"))["done"] == 10  # the incomplete line does not count

    step2.touch()
    second = wait_until(lambda: (p := _progress(app, "p")) and p["done"] == 60 and p, message="the second report")
    assert second == {**second, "done": 60, "total": 200, "fraction": pytest.approx(0.3), "message": "evaluating"}


def test_lines_the_reader_accepts() -> None:
    assert parse_line("60 200 evaluating the model") == (60, 200, "evaluating the model")
    assert parse_line("7") == (7, None, None)
    assert parse_line("2.5 10") == (2.5, 10, None)
    assert parse_line('{"done": 3, "total": null, "message": "x"}') == (3, None, "x")
    for bad in ("", "abc", "-1 10", "nan 10", "1 inf", '{"done": "3"}', "[1, 2]", '{"total": 3}', "5 -2"):
        assert parse_line(bad) is None, bad


def test_the_helper_is_stdlib_only_bounded_and_a_no_op_outside_procman(make_app: AppFactory,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert report(1, 2) is False  # outside procman: nothing happens
    with pytest.raises(ValueError):
        report(-1)

    app = make_app()
    code = (
        "import sys\n"
        "from flask_procman.progress import report\n"
        "assert report(0, 5000, 'warming up')\n"
        "for i in range(1, 5001):\n"
        "    report(i, 5000, f'step {i}')\n"
        # Importing the helper must not have imported Flask or SQLAlchemy (a child pays ~ms, not ~0.5 s).
        "print(sorted(m for m in ('flask', 'sqlalchemy', 'psutil') if m in sys.modules))\n"
    )
    with app.app_context():
        _pm(app).start_process("helper", py(code))
        final = _pm(app).wait("helper", timeout=60)
    assert final["status"] == "completed", final["error"]
    assert final["stdout"] == "[]\n"
    progress = present(final["progress"])
    assert (progress["done"], progress["total"], progress["message"]) == (5000, 5000, "step 5000")
    assert progress["fraction"] == 1.0 and progress["eta_seconds"] == 0.0
    size = os.path.getsize(os.path.join(app.config["PROCMAN_LOG_DIR"], "helper", "progress"))
    assert size <= MAX_FILE_BYTES  # 5000 reports, and the file stays small


def test_importing_the_helper_costs_milliseconds() -> None:
    """The package's public names load lazily: ``import flask_procman.progress`` alone imports no Flask."""
    out = subprocess.run([PY, "-c", "import sys, flask_procman.progress as p; "
                                    "print('flask' in sys.modules, 'sqlalchemy' in sys.modules, callable(p.report))"],
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "False", "True"]
    # ... while the public names still work as before.
    out = subprocess.run([PY, "-c", "from flask_procman import ProcMan, StartError, process_started; import flask_procman; "
                                    "print(ProcMan.__name__, 'Manager' in dir(flask_procman))"],
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["ProcMan", "True"]


def test_progress_from_a_real_tqdm_bar_on_stderr(make_app: AppFactory, tmp_path: Path) -> None:
    pytest.importorskip("tqdm")
    app = make_app()
    flag = tmp_path / "go"
    code = (
        "import os, time\n"
        "from tqdm import tqdm\n"
        "for i in tqdm(range(200), desc='evaluating', mininterval=0, miniters=1):\n"
        "    if i == 60:\n"
        "        " + _waiter(flag)
    )
    with app.app_context():
        _pm(app).start_process("tq", py(code), progress="tqdm")
    seen = wait_until(lambda: (p := _progress(app, "tq")) and p["done"] == 60 and p, timeout=30,
                      message="tqdm's bar at 60/200")
    assert (seen["total"], seen["message"]) == (200, "evaluating")
    assert seen["fraction"] == pytest.approx(0.3)
    flag.touch()
    with app.app_context():
        final = _pm(app).wait("tq", timeout=30)
    assert final["status"] == "completed"
    assert present(final["progress"])["done"] == 200


def test_tqdm_bars_without_a_total_and_with_unit_scale(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    log.write_bytes(b"loading: 60it [00:01, 59.1it/s]\rloading: 1.2kit [00:02, 600it/s]")
    assert present(last_tqdm_report(str(log)))[:3] == (1200.0, None, "loading")
    log.write_bytes(b"\r 30%|###       | 60/200 [00:01<00:02, 59.1it/s]\r 31%|###       | 62/2")
    assert present(last_tqdm_report(str(log)))[:3] == (60.0, 200.0, None)  # a half-drawn bar does not count
    log.write_bytes(b"no bar here\n")
    assert last_tqdm_report(str(log)) is None


def test_program_progress_mode_the_api_and_the_sse_progress_event(make_app: AppFactory, tmp_path: Path) -> None:
    pytest.importorskip("tqdm")
    flag = tmp_path / "go"
    app = make_app(PROCMAN_API_TOKEN=TOKEN, PROCMAN_PROGRAMS={"bar": {
        "cmd": py("import os, time\nfrom tqdm import tqdm\nfor i in tqdm(range(10), desc='bar', mininterval=0):\n"
                  "    if i == 4:\n        " + _waiter(flag)),
        "progress": "tqdm"}})
    client = app.test_client()
    started = client.post("/procman/api/programs/bar/start", json={"process_id": "b1"}, headers=AUTH)
    assert started.status_code == 201, started.get_json()
    wait_until(lambda: (_progress(app, "b1") or {}).get("done") == 4, timeout=30, message="4/10")
    body = client.get("/procman/api/processes/b1", headers=AUTH).get_json()
    assert body["progress"]["done"] == 4 and body["progress"]["total"] == 10
    assert isinstance(body["progress"]["updated_at"], str)  # ISO 8601 in JSON
    programs = client.get("/procman/api/programs", headers=AUTH).get_json()["programs"]
    assert programs[0]["progress"] == "tqdm"

    flag.touch()
    response = client.get("/procman/api/processes/b1/events", headers=AUTH)
    events = _events(response.get_data(as_text=True))
    reports = [json.loads(data) for name, data in events if name == "progress"]
    assert reports and reports[-1]["done"] == 10 and reports[-1]["total"] == 10
    assert events[-1][0] == "end"


def _events(text: str) -> list[tuple[str, str]]:
    """``(event, data)`` pairs of a whole SSE body."""
    found = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            found.append((fields["event"], fields["data"]))
    return found


def test_cli_list_has_a_progress_column(make_app: AppFactory) -> None:
    app = make_app()
    code = "from flask_procman.progress import report; import time; report(50, 200, 'half'); time.sleep(60)"
    with app.app_context():
        _pm(app).start_process("clip", [sys.executable, "-c", code])
    wait_until(lambda: _progress(app, "clip"), message="a report")
    result = app.test_cli_runner().invoke(args=["procman", "list"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()[:2]
    assert "PROGRESS" in header.split()
    assert "50/200 25%" in row
    status = app.test_cli_runner().invoke(args=["procman", "status", "clip"], catch_exceptions=False)
    assert "progress:" in status.output and "50/200 25%" in status.output
