"""Security: the API token never appears in logs or answers; env values never reach the database
(every column of every row is dumped) or the API; process ids cannot escape the log folder, through
the Python API or HTTP (URL-encoded dots and slashes included); HTTP cannot start an undeclared
program, pass arguments to one that does not allow them, or set env keys it does not list.

(The REST API's own behaviour, and schemathesis over its OpenAPI document, are in tests/test_api*.py.)
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import threading
import typing as t

import pytest
from conftest import AppFactory, present, py
from flask import Flask
from rel_support import dump_table_text
from werkzeug.serving import make_server

from flask_procman import InvalidProcessId, ProcManError, UnknownProgram
from flask_procman.manager import Manager

TOKEN = "tok-3f9a1c7e5b2d4e6f8a0b1c2d3e4f5a6b"
SECRET = "s3cr3t-value-6d1e0b8a"
DECLARED_SECRET = "declared-secret-91c4f2"


def _manager(app: Flask) -> Manager:
    return t.cast(Manager, app.extensions["procman"])


def _headers(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _checks(name: str, value: str, missing_ok: bool = False) -> list[str]:
    """A child exiting 0 when env ``name`` holds ``value``, compared by hash: the command line is
    stored, so it must not carry the value itself."""
    digest = hashlib.sha256(value.encode()).hexdigest()
    return py(f"import hashlib, os, sys; v = os.environ.get({name!r}); "
              f"sys.exit(0 if {missing_ok!r} and v is None or v is not None and "
              f"hashlib.sha256(v.encode()).hexdigest() == {digest!r} else 1)")


def _programs() -> dict[str, t.Any]:
    return {
        "fixed": {"cmd": _checks("DECLARED", DECLARED_SECRET), "env": {"DECLARED": DECLARED_SECRET}},
        "open": {"cmd": py("import sys; print(sys.argv[1:])"), "allow_args": True, "env_keys": ["API_KEY"]},
        "waits": {"cmd": py("import time; time.sleep(60)")},
    }


# ------------------------------------------------------------------ the token -------------------
def test_the_token_never_appears_in_logs_or_answers(make_app: AppFactory, caplog: pytest.LogCaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app(PROCMAN_API_TOKEN=TOKEN, PROCMAN_PROGRAMS=_programs())
    client = app.test_client()
    near_misses = [TOKEN[:-1] + "x", TOKEN + "x", TOKEN.upper()]
    answers = []

    def call(method: str, path: str, **kwargs: t.Any) -> t.Any:
        response = client.open(path, method=method, **kwargs)
        answers.append(response)
        return response

    api = "/procman/api"
    assert call("POST", f"{api}/programs/fixed/start", headers=_headers(), json={"process_id": "tok-1"}).status_code == 201
    assert call("POST", f"{api}/programs/waits/start", headers=_headers(), json={"process_id": "tok-2"}).status_code == 201
    for path in (f"{api}/processes", f"{api}/processes/tok-1", f"{api}/processes/tok-1/output",
                 f"{api}/processes/tok-1/output?format=raw", f"{api}/stats", f"{api}/programs", f"{api}/openapi.json",
                 f"{api}/health", "/procman/", f"{api}/processes/nope", f"{api}/processes/bad!id",
                 f"{api}/processes?limit=x", f"{api}/no/such/url", f"{api}/processes/tok-1/output?offset=-1",
                 f"{api}/processes?token={TOKEN}"):
        call("GET", path, headers=_headers())
    with app.app_context():
        _manager(app).wait("tok-1", timeout=10)
    events = call("GET", f"{api}/processes/tok-1/events", headers=_headers())
    assert b"event: end" in events.get_data()
    for bad in near_misses:
        assert call("GET", f"{api}/processes", headers=_headers(bad)).status_code == 401
    assert call("GET", f"{api}/processes", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert call("GET", f"{api}/processes", headers={"Authorization": TOKEN}).status_code == 401
    for body in ('{"args": ["x"]}', "{", '{"env": {"PATH": "/x"}}', '{"cmd": ["sh"]}', "[]"):
        assert call("POST", f"{api}/programs/fixed/start", headers=_headers(), data=body,
                    content_type="application/json").status_code == 400
    assert call("POST", f"{api}/programs/nope/start", headers=_headers(), json={}).status_code == 404
    assert call("POST", f"{api}/processes/tok-2/stop", headers=_headers()).status_code == 200
    assert call("POST", f"{api}/processes/tok-2/stop", headers=_headers()).status_code == 409
    assert call("DELETE", f"{api}/processes/tok-2", headers=_headers()).status_code == 204
    # An unexpected error (500) and an unreachable database (503) are logged: never with the token.
    def boom() -> t.NoReturn:
        raise RuntimeError("boom while serving an authorised request")

    with monkeypatch.context() as patch:
        patch.setattr(_manager(app), "stats", boom)
        assert call("GET", f"{api}/stats", headers=_headers()).status_code == 500
    down = make_app("down", PROCMAN_API_TOKEN=TOKEN, PROCMAN_DATABASE_URI="sqlite:////nonexistent/dir/x.sqlite3")
    answers.append(down.test_client().get(f"{api}/processes", headers=_headers()))
    assert answers[-1].status_code == 503

    assert any(r.levelno >= logging.ERROR for r in caplog.records)  # the errors were logged...
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for secret in [TOKEN, *near_misses]:
        assert secret not in logged  # ...without the token
        for response in answers:
            assert secret.encode() not in response.get_data()
            assert secret not in str(response.headers)


# ------------------------------------------------------------------ env values ------------------
def test_env_values_never_reach_the_database_or_the_api(database_uri: str, make_app: AppFactory) -> None:
    app = make_app(PROCMAN_DATABASE_URI=database_uri, PROCMAN_API_TOKEN=TOKEN, PROCMAN_MAX_PROCESSES=1,
                   PROCMAN_PROGRAMS=_programs())
    pm = _manager(app)
    client = app.test_client()
    check = _checks("API_KEY", SECRET)
    with app.app_context():
        assert pm.start_process("direct", check, env={"API_KEY": SECRET})
        assert pm.wait("direct", timeout=10)["return_code"] == 0  # the value did reach the child
        assert pm.start_process("holder", py("import time; time.sleep(60)"))
        assert pm.start_process("queued", check, env={"API_KEY": SECRET}, queue=True)  # env waits in a file
        env_file = os.path.join(pm.settings.log_dir, "queued", "env.json")
        assert os.stat(env_file).st_mode & 0o777 == 0o600
        queued_dump = dump_table_text(pm.store.engine)
        pm.stop_process("holder", timeout=1)
        assert pm.wait("queued", timeout=10)["return_code"] == 0
        assert not os.path.exists(env_file)  # gone once promoted
    response = client.post("/procman/api/programs/open/start", headers=_headers(),
                           json={"process_id": "via-http", "env": {"API_KEY": SECRET}})
    assert response.status_code == 201
    with app.app_context():
        assert pm.wait("via-http", timeout=10)["return_code"] == 0
    response = client.post("/procman/api/programs/fixed/start", headers=_headers(), json={"process_id": "declared"})
    assert response.status_code == 201
    with app.app_context():
        assert pm.wait("declared", timeout=10)["return_code"] == 0
        assert present(pm.get_process_status("queued"))["env_keys"] == ["API_KEY"]  # names are kept, values are not
        final_dump = dump_table_text(pm.store.engine)
    assert "queued" in queued_dump and "declared" in final_dump  # the dumps are real
    bodies = [client.get(path, headers=_headers()).get_data(as_text=True) for path in (
        "/procman/api/processes", "/procman/api/processes/direct", "/procman/api/processes/queued",
        "/procman/api/processes/via-http", "/procman/api/processes/declared", "/procman/api/programs")]
    for secret in (SECRET, DECLARED_SECRET):
        assert secret not in queued_dump and secret not in final_dump
        assert all(secret not in body for body in bodies)


# ------------------------------------------------------------------ ids and the log folder ------
BAD_IDS = ["../x", "..", ".", "a/../../b", "/etc/passwd", "/tmp", "..%2fx", "a\\..\\b", "~root", "a" * 129,
           "a" * 10_000, "a/b", "", "outside/../outside", "\0", "a\0b"]


def _files(root: str) -> set[str]:
    """Every file and folder under ``root``, but the watchers' heartbeats (``<log dir>/.watchers``,
    written by the watcher on its own schedule; no process id can start with a dot)."""
    found = {os.path.join(d, f) for d, _, files in os.walk(root) for f in files} | {d for d, _, _ in os.walk(root)}
    return {path for path in found if f"{os.sep}.watchers" not in path}


def test_ids_cannot_escape_the_log_folder(make_app: AppFactory, tmp_path: t.Any) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "stdout.log").write_text("SENTINEL-OUTSIDE\n")
    (outside / "exit_status").write_text("0\n")
    app = make_app(PROCMAN_API_TOKEN=TOKEN, PROCMAN_PROGRAMS=_programs())
    pm = _manager(app)
    with app.app_context():
        pm.stats()
    before = _files(str(tmp_path))
    with app.app_context():
        for bad in BAD_IDS:
            for name in ("get_process_status", "read_output", "stop_process", "remove_process", "wait"):
                with pytest.raises(InvalidProcessId):
                    getattr(pm, name)(bad)
            with pytest.raises(InvalidProcessId):
                pm.start_process(bad, ["true"])
            with pytest.raises(InvalidProcessId):
                pm.start_program("fixed", process_id=bad)
        assert pm.list_processes() == []

    client = app.test_client()
    api = "/procman/api/processes"
    long_id = "a" * 10_000
    paths = [f"{api}/..%2foutside", f"{api}/%2e%2e%2foutside", f"{api}/%2e%2e", f"{api}/..",
             f"{api}/..%2F..%2Fetc%2Fpasswd", f"{api}/%2Fetc%2Fpasswd", f"{api}/a%2F..%2F..%2Foutside",
             f"{api}/%2e%2e%5coutside", f"{api}/{long_id}", f"{api}/outside%00", f"{api}/%00"]
    for base in paths:
        for suffix, method in (("", "GET"), ("/output", "GET"), ("/output?format=raw", "GET"),
                               ("/output?stream=stderr&format=raw", "GET"), ("/events", "GET"),
                               ("/stop", "POST"), ("", "DELETE")):
            path, _, query = (base + suffix).partition("?")
            response = client.open(path, method=method, headers=_headers(), query_string=query)
            assert response.status_code in (400, 404, 405), (path, method, response.status_code)
            assert b"SENTINEL" not in response.get_data()
    for bad in BAD_IDS:
        response = client.post("/procman/api/programs/fixed/start", headers=_headers(), json={"process_id": bad})
        assert response.status_code == 400, bad
    # The same paths, byte for byte, over a real socket to a real server (no client-side decoding).
    server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        for base in [*paths, f"{api}/%2e%2e%2f%2e%2e%2foutside/output", f"{api}/..;/outside/output"]:
            for suffix in ("", "/output?format=raw"):
                conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
                try:
                    conn.request("GET", base + suffix, headers=_headers())
                    answer = conn.getresponse()
                    body = answer.read()
                finally:
                    conn.close()
                assert answer.status in (400, 404, 405), (base + suffix, answer.status)
                assert b"SENTINEL" not in body
    finally:
        server.shutdown()
        server.server_close()
        serving.join(timeout=10)
    assert (outside / "stdout.log").read_text() == "SENTINEL-OUTSIDE\n"
    assert _files(str(tmp_path)) == before  # nothing created or removed anywhere
    with app.app_context():
        assert pm.list_processes() == []


# ------------------------------------------------------------------ what HTTP may start ---------
def test_http_starts_only_declared_programs_with_declared_args_and_env(make_app: AppFactory, tmp_path: t.Any) -> None:
    app = make_app(PROCMAN_API_TOKEN=TOKEN, PROCMAN_PROGRAMS=_programs())
    pm = _manager(app)
    client = app.test_client()
    refused = [
        ("/procman/api/programs/sh/start", {}),  # undeclared
        ("/procman/api/programs/..%2f..%2fbin%2fsh/start", {}),
        ("/procman/api/programs/%2fbin%2fsh/start", {}),
        ("/procman/api/programs/fixed/start", {"args": ["-c", "import os; os.system('touch pwned')"]}),
        ("/procman/api/programs/fixed/start", {"env": {"DECLARED": "override"}}),  # not an env key of it
        ("/procman/api/programs/fixed/start", {"env": {"LD_PRELOAD": "/tmp/x.so"}}),
        ("/procman/api/programs/open/start", {"env": {"API_KEY": "ok", "PATH": "/evil"}}),
        ("/procman/api/programs/open/start", {"env": {"PYTHONSTARTUP": "/tmp/x"}}),
        ("/procman/api/programs/open/start", {"cmd": ["sh", "-c", "touch pwned"]}),
        ("/procman/api/programs/open/start", {"cwd": "/"}),
        ("/procman/api/programs/open/start", {"args": "not a list"}),
        ("/procman/api/programs/open/start", {"args": ["x\0y"]}),
    ]
    for path, body in refused:
        response = client.post(path, headers=_headers(), json=body)
        assert response.status_code in (400, 404), (path, body, response.status_code)
    with app.app_context():
        assert pm.list_processes() == []
        with pytest.raises(UnknownProgram):
            pm.start_program("sh")
        with pytest.raises(ProcManError):
            pm.start_program("fixed", args=["x"])
    # The allowed way: args become literal argv items, never a shell.
    tricky = ["; touch pwned", "$(touch pwned)", "`touch pwned`", "| tee pwned"]
    response = client.post("/procman/api/programs/open/start", headers=_headers(),
                           json={"process_id": "literal", "args": tricky, "env": {"API_KEY": "fine"}})
    assert response.status_code == 201
    with app.app_context():
        final = pm.wait("literal", timeout=10)
    assert final["stdout"] == repr(tricky) + "\n" and final["cmd"][-4:] == tricky
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")
    with app.app_context():
        assert [p["id"] for p in pm.list_processes()] == ["literal"]  # nothing else ever started
