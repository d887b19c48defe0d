"""The REST blueprint: registration, endpoints, errors, access rules (issue 4)."""

from __future__ import annotations

import datetime as dt
import hmac
import json
import os
import typing as t

import pytest
from conftest import AppFactory, py, wait_until
from flask import Flask
from flask.testing import FlaskClient

from flask_procman import ProcMan
from flask_procman.manager import Manager

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
API = "/procman/api"
SLEEPER = py("import time; time.sleep(60)")


# ------------------------------------------------------------------------------------ helpers ---
def _manager(app: Flask) -> Manager:
    """The manager of ``app``."""
    return t.cast(Manager, app.extensions["procman"])


def _start(app: Flask, process_id: str, cmd: list[str], **kwargs: t.Any) -> None:
    """Start ``cmd`` as ``process_id`` on ``app``'s manager (no HTTP involved)."""
    assert _manager(app).start_process(process_id, cmd, **kwargs)


def _finish(app: Flask, process_id: str, timeout: float = 15.0) -> dict[str, t.Any]:
    """Wait until ``process_id`` has ended; its final status dict."""
    return _manager(app).wait(process_id, timeout=timeout)


def _row(app: Flask, process_id: str) -> dict[str, t.Any]:
    """The stored record of ``process_id`` (which must exist)."""
    row = _manager(app).store.get(process_id)
    assert row is not None, process_id
    return row


def _rows(app: Flask) -> list[dict[str, t.Any]]:
    """Every record of ``app``, as stored (to prove that a refused request changed nothing)."""
    return _manager(app).store.page()[0]


def _error(response: t.Any, status: int, code: str | None = None) -> dict[str, t.Any]:
    """Assert ``response`` is the JSON error ``{"error": {"code", "message"}}`` with ``status``."""
    assert response.status_code == status, (response.status_code, response.data[:300])
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return t.cast(dict[str, t.Any], body["error"])


def _api_routes(app: Flask, prefix: str = "/procman") -> list[tuple[str, str]]:
    """``(method, url)`` of every protected API endpoint, path arguments filled in."""
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("procman.") or rule.endpoint in (
                "procman.health", "procman.static", "procman.dashboard", "procman.unknown"):
            continue
        url = rule.rule.replace("<process_id>", "p1").replace("<name>", "prog")
        assert url.startswith(prefix + "/api/"), url
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.append((method, url))
    return routes


# ------------------------------------------------------------------------------- registration ---
def test_blueprint_is_registered_once_under_the_default_prefix(app: Flask, client: FlaskClient) -> None:
    assert list(app.blueprints) == ["procman"]
    rules = [r for r in app.url_map.iter_rules() if r.endpoint.startswith("procman.")]
    assert rules and all(r.rule.startswith("/procman/") for r in rules)
    assert client.get(f"{API}/health").status_code == 200
    with pytest.raises(RuntimeError, match="already been registered"):
        ProcMan().init_app(app)


def test_disabled_api_registers_no_route(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_API_ENABLED=False, PROCMAN_API_TOKEN=TOKEN)
    assert "procman" not in app.blueprints
    assert not [r for r in app.url_map.iter_rules() if r.endpoint.startswith("procman.")]
    response = app.test_client().get(f"{API}/processes", headers=AUTH)
    assert response.status_code == 404 and response.mimetype != "application/json"


def test_two_apps_in_one_process_keep_their_own_prefix_and_token(make_app: AppFactory) -> None:
    shared = ProcMan()  # one extension object, one module-level blueprint, two apps
    token_b = "another-token-9876543210"
    app_a = make_app("a", procman=shared, PROCMAN_API_PREFIX="/ops/", PROCMAN_API_TOKEN=TOKEN)
    app_b = make_app("b", procman=shared, PROCMAN_API_PREFIX="/jobs/admin", PROCMAN_API_TOKEN=token_b)
    a, b = app_a.test_client(), app_b.test_client()
    bearer_b = {"Authorization": f"Bearer {token_b}"}

    assert a.get("/ops/api/stats", headers=AUTH).status_code == 200
    assert b.get("/jobs/admin/api/stats", headers=bearer_b).status_code == 200
    # Each app's token opens only that app.
    _error(a.get("/ops/api/stats", headers=bearer_b), 401, "unauthorized")
    _error(b.get("/jobs/admin/api/stats", headers=AUTH), 401, "unauthorized")
    # Each app answers only under its own prefix.
    assert a.get("/jobs/admin/api/stats", headers=bearer_b).status_code == 404
    assert b.get("/ops/api/stats", headers=AUTH).status_code == 404
    assert a.get("/procman/api/stats", headers=AUTH).status_code == 404
    # The per-app prefix reaches the document too.
    assert a.get("/ops/api/openapi.json", headers=AUTH).get_json()["servers"] == [{"url": "/ops"}]
    assert b.get("/jobs/admin/api/openapi.json", headers=bearer_b).get_json()["servers"] == [{"url": "/jobs/admin"}]
    # Changing one app's token at run time is seen on the next request (read per request).
    app_a.config["PROCMAN_API_TOKEN"] = "rotated-token-000000000"
    _error(a.get("/ops/api/stats", headers=AUTH), 401)
    assert b.get("/jobs/admin/api/stats", headers=bearer_b).status_code == 200


def test_root_prefix(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_API_PREFIX="/", PROCMAN_API_TOKEN=TOKEN)
    client = app.test_client()
    assert client.get("/api/stats", headers=AUTH).status_code == 200
    assert client.get("/api/openapi.json", headers=AUTH).get_json()["servers"] == [{"url": "/"}]


# ------------------------------------------------------------------------------------ listing ---
def test_list_is_newest_first_with_total_limit_offset_and_status(app: Flask, client: FlaskClient) -> None:
    for index in range(3):
        _start(app, f"job{index}", py("pass"))
        _finish(app, f"job{index}")
    _start(app, "live", SLEEPER)

    body = client.get(f"{API}/processes", headers=AUTH).get_json()
    assert set(body) == {"processes", "total", "limit", "offset"}
    assert [p["id"] for p in body["processes"]] == ["live", "job2", "job1", "job0"]
    assert body["total"] == 4 and body["limit"] == 50 and body["offset"] == 0
    assert "stdout" not in body["processes"][0]  # lists carry no output tails

    page = client.get(f"{API}/processes?limit=2&offset=1", headers=AUTH).get_json()
    assert [p["id"] for p in page["processes"]] == ["job2", "job1"]
    assert (page["total"], page["limit"], page["offset"]) == (4, 2, 1)

    done = client.get(f"{API}/processes?status=completed&offset=2", headers=AUTH).get_json()
    assert [p["id"] for p in done["processes"]] == ["job0"] and done["total"] == 3
    running = client.get(f"{API}/processes?status=running", headers=AUTH).get_json()
    assert [p["id"] for p in running["processes"]] == ["live"] and running["total"] == 1


@pytest.mark.parametrize("query", [
    "status=bogus", "status=", "limit=", "offset=", "limit=0", "limit=501", "limit=abc", "limit=1.5", "offset=-1", "limit=%C2%B2",
    "offset=99999999999999999999999999", f"offset={2**63}", "offset=%EF%BC%91",
])
def test_list_refuses_bad_query_arguments(client: FlaskClient, query: str) -> None:
    _error(client.get(f"{API}/processes?{query}", headers=AUTH), 400, "bad_request")


# ------------------------------------------------------------------------------------- status ---
def test_status_has_iso_timestamps_with_offset_and_no_store(app: Flask, client: FlaskClient) -> None:
    _start(app, "s1", py("print('hi')"))
    _finish(app, "s1")
    response = client.get(f"{API}/processes/s1", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    status = response.get_json()
    assert status["id"] == "s1" and status["status"] == "completed" and status["return_code"] == 0
    assert status["stdout"] == "hi\n" and status["stdout_size"] == 3
    for key in ("created_at", "started_at", "finished_at"):
        parsed = dt.datetime.fromisoformat(status[key])
        assert parsed.utcoffset() == dt.timedelta(0), status[key]


@pytest.mark.parametrize("process_id", ["bad!id", "-starts-with-dash", "x" * 129, ".hidden"])
def test_invalid_ids_are_400_everywhere(client: FlaskClient, process_id: str) -> None:
    for method, suffix in (("GET", ""), ("GET", "/output"), ("GET", "/events"), ("POST", "/stop"), ("DELETE", "")):
        _error(client.open(f"{API}/processes/{process_id}{suffix}", method=method, headers=AUTH),
               400, "invalid_process_id")


def test_unknown_ids_are_404_everywhere(client: FlaskClient) -> None:
    for method, suffix in (("GET", ""), ("GET", "/output"), ("GET", "/events"), ("POST", "/stop"), ("DELETE", "")):
        _error(client.open(f"{API}/processes/nobody{suffix}", method=method, headers=AUTH), 404, "not_found")


# ------------------------------------------------------------------------------------- output ---
def _core(body: dict[str, t.Any]) -> dict[str, t.Any]:
    """A JSON read without its timing and truncation fields (tests/test_output_time.py checks those)."""
    return {key: body[key] for key in ("data", "offset", "next_offset", "ended")}


def test_output_json_raw_paging_and_invalid_utf8(app: Flask, client: FlaskClient) -> None:
    code = ("import sys; sys.stdout.buffer.write(b'ok\\xff\\xfe!\\n'); "
            "sys.stderr.write('warn\\n')")
    _start(app, "o1", py(code))
    _finish(app, "o1")

    response = client.get(f"{API}/processes/o1/output", headers=AUTH)
    assert response.headers["Cache-Control"] == "no-store"
    assert _core(response.get_json()) == {"data": "ok\ufffd\ufffd!\n", "offset": 0, "next_offset": 6, "ended": True}
    assert client.get(f"{API}/processes/o1/output?stream=stderr", headers=AUTH).get_json()["data"] == "warn\n"

    raw = client.get(f"{API}/processes/o1/output?format=raw&offset=1&limit=3", headers=AUTH)
    assert raw.status_code == 200 and raw.mimetype == "application/octet-stream"
    assert raw.data == b"k\xff\xfe" and raw.headers["X-Next-Offset"] == "4"
    assert raw.headers["Cache-Control"] == "no-store"
    same = client.get(f"{API}/processes/o1/output/raw?offset=1&limit=3", headers=AUTH)  # its own operation
    assert (same.data, same.mimetype, same.headers["X-Next-Offset"]) == (raw.data, raw.mimetype, "4")

    first = client.get(f"{API}/processes/o1/output?limit=2", headers=AUTH).get_json()
    assert _core(first) == {"data": "ok", "offset": 0, "next_offset": 2, "ended": False}
    rest = client.get(f"{API}/processes/o1/output?offset=2", headers=AUTH).get_json()
    assert _core(rest) == {"data": "\ufffd\ufffd!\n", "offset": 2, "next_offset": 6, "ended": True}
    past = client.get(f"{API}/processes/o1/output?offset=100&limit=0", headers=AUTH).get_json()
    assert _core(past) == {"data": "", "offset": 100, "next_offset": 100, "ended": True}

    for query in ("stream=stdin", "format=xml", "offset=-1", "limit=4194305", "offset=x", f"offset={2**60}"):
        _error(client.get(f"{API}/processes/o1/output?{query}", headers=AUTH), 400, "bad_request")


def test_output_never_splits_a_character(app: Flask, client: FlaskClient, tmp_path: t.Any) -> None:
    flag = tmp_path / "go"
    text = "é € 😀 end\n"
    code = (
        "import os, sys, time\n"
        "out = sys.stdout.buffer\n"
        f"data = {text.encode()!r}\n"
        "out.write(data[:1]); out.flush()\n"  # the first byte of 'é' alone
        f"while not os.path.exists({str(flag)!r}): time.sleep(0.01)\n"
        "out.write(data[1:]); out.flush()\n"
    )
    _start(app, "mb", py(code))
    wait_until(lambda: _manager(app).read_output("mb")[0] == b"\xc3", message="the first byte")
    # Running, half a character written: nothing to decode yet, and the offset does not move.
    for query in ("", "?limit=1", "?limit=2"):
        body = client.get(f"{API}/processes/mb/output{query}", headers=AUTH).get_json()
        assert _core(body) == {"data": "", "offset": 0, "next_offset": 0, "ended": False}, query
    flag.touch()
    _finish(app, "mb")
    # Small limits walk the output one whole character at a time: no U+FFFD, nothing lost.
    for limit in (1, 2, 3, 5, 100):
        offset, parts, steps = 0, [], 0
        while True:
            body = client.get(f"{API}/processes/mb/output?offset={offset}&limit={limit}", headers=AUTH).get_json()
            assert "\ufffd" not in body["data"] and body["offset"] == offset
            assert body["next_offset"] - offset <= max(limit, 4)
            parts.append(body["data"])
            offset = body["next_offset"]
            steps += 1
            assert steps < 50
            if body["ended"]:
                break
        assert "".join(parts) == text, limit


# --------------------------------------------------------------------------------------- stop ---
def test_stop_then_409(app: Flask, client: FlaskClient) -> None:
    _start(app, "st", SLEEPER)
    response = client.post(f"{API}/processes/st/stop", headers=AUTH)
    assert response.status_code == 200, response.data
    body = response.get_json()
    assert body["stopped"] is True and body["process"]["status"] == "stopped"
    _error(client.post(f"{API}/processes/st/stop", headers=AUTH), 409, "already_ended")


def test_stop_a_queued_process(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_API_TOKEN=TOKEN, PROCMAN_MAX_PROCESSES=1)
    client = app.test_client()
    with app.app_context():
        _start(app, "first", SLEEPER)
        _start(app, "waiting", SLEEPER, queue=True)
    body = client.post(f"{API}/processes/waiting/stop", headers=AUTH).get_json()
    assert body["process"]["status"] == "stopped" and body["process"]["pid"] is None


# ------------------------------------------------------------------------------------- delete ---
def test_delete_only_finished(app: Flask, client: FlaskClient) -> None:
    _start(app, "d1", SLEEPER)
    _error(client.delete(f"{API}/processes/d1", headers=AUTH), 409, "not_finished")
    assert _row(app, "d1")["status"] == "running"
    assert client.post(f"{API}/processes/d1/stop", headers=AUTH).status_code == 200
    folder = os.path.join(_manager(app).settings.log_dir, "d1")
    assert os.path.isdir(folder)
    response = client.delete(f"{API}/processes/d1", headers=AUTH)
    assert response.status_code == 204 and response.data == b""
    assert not os.path.exists(folder)
    _error(client.get(f"{API}/processes/d1", headers=AUTH), 404)
    _error(client.delete(f"{API}/processes/d1", headers=AUTH), 404)


# ----------------------------------------------------------------------------------- programs ---
def _echo_argv_program(tmp_path: t.Any) -> dict[str, t.Any]:
    """A program printing its arguments and two variables as JSON, run in ``tmp_path``."""
    code = ("import json, os, sys; print(json.dumps({'argv': sys.argv[1:], "
            "'greeting': os.environ.get('GREETING'), 'secret': os.environ.get('SECRET')}))")
    return {"cmd": py(code), "cwd": str(tmp_path), "allow_args": True, "env_keys": ["GREETING"],
            "env": {"SECRET": "from-config"}}


def test_programs_from_config_and_register_before_and_after_init_app(make_app: AppFactory) -> None:
    ext = ProcMan()
    ext.register_program("before", py("pass"))
    app = make_app(procman=ext, PROCMAN_API_TOKEN=TOKEN,
                   PROCMAN_PROGRAMS={"cfg": {"cmd": py("pass"), "env": {"TOKEN": "hidden-value"}}})
    ext.register_program("after", py("pass"), allow_args=True, env_keys=["A"], timeout=5)
    client = app.test_client()
    body = client.get(f"{API}/programs", headers=AUTH)
    assert body.status_code == 200
    programs = {p["name"]: p for p in body.get_json()["programs"]}
    assert set(programs) == {"cfg", "before", "after"}
    assert programs["after"] == {"name": "after", "cmd": py("pass"), "cwd": None, "timeout": 5.0,
                                 "allow_args": True, "env_keys": ["A"]}
    assert "hidden-value" not in body.get_data(as_text=True)
    doc = client.get(f"{API}/openapi.json", headers=AUTH).get_json()
    name = doc["paths"]["/api/programs/{name}/start"]["post"]["parameters"][0]
    # The document names what can start, as examples: an enum would make a generated client reject new names.
    assert name["schema"]["examples"] == ["after", "before", "cfg"] and "enum" not in name["schema"]
    for name in ("cfg", "before", "after"):
        response = client.post(f"{API}/programs/{name}/start", headers=AUTH)
        assert response.status_code == 201, (name, response.data)


def test_start_201_with_id_and_location(make_app: AppFactory, tmp_path: t.Any) -> None:
    app = make_app(PROCMAN_API_TOKEN=TOKEN, PROCMAN_PROGRAMS={"echo": _echo_argv_program(tmp_path)})
    client = app.test_client()
    response = client.post(f"{API}/programs/echo/start", headers=AUTH)
    assert response.status_code == 201, response.data
    process = response.get_json()["process"]
    assert process["id"].startswith("echo-") and process["program"] == "echo"
    assert response.headers["Location"] == f"{API}/processes/{process['id']}"
    assert client.get(response.headers["Location"], headers=AUTH).get_json()["id"] == process["id"]

    named = client.post(f"{API}/programs/echo/start", json={"process_id": "mine.1", "queue": False}, headers=AUTH)
    assert named.status_code == 201 and named.get_json()["process"]["id"] == "mine.1"
    nulled = client.post(f"{API}/programs/echo/start", json={"process_id": None}, headers=AUTH)
    assert nulled.status_code == 201 and nulled.get_json()["process"]["id"].startswith("echo-")


def test_only_declared_programs_start(app: Flask, client: FlaskClient) -> None:
    before = _rows(app)
    for name in ("nope", "python", "sh"):
        _error(client.post(f"{API}/programs/{name}/start", json={"args": ["-c", "1"]}, headers=AUTH),
               404, "unknown_program")
    assert _rows(app) == before == []


@pytest.mark.parametrize("arg", ["; rm -rf x", "$(touch pwned)", "`touch pwned2`", "a b | tee pwned3", "*", "",
                                 "--flag=1 && touch pwned4", "é\n\t"])
def test_args_are_literal_argv_items_never_a_shell(make_app: AppFactory, tmp_path: t.Any, arg: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "x").mkdir()
    app = make_app(PROCMAN_API_TOKEN=TOKEN, PROCMAN_PROGRAMS={"echo": _echo_argv_program(work)})
    response = app.test_client().post(f"{API}/programs/echo/start",
                                      json={"process_id": "argv", "args": [arg, "second"]}, headers=AUTH)
    assert response.status_code == 201, response.data
    with app.app_context():
        status = _finish(app, "argv")
    assert status["status"] == "completed", status
    assert json.loads(status["stdout"])["argv"] == [arg, "second"]
    assert sorted(os.listdir(work)) == ["x"]  # nothing ran: no pwned file, x not removed
    assert status["cmd"][-2:] == [arg, "second"]


def test_args_refused_unless_allow_args(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_API_TOKEN=TOKEN, PROCMAN_PROGRAMS={"fixed": {"cmd": py("pass")}})
    client = app.test_client()
    _error(client.post(f"{API}/programs/fixed/start", json={"args": ["--evil"]}, headers=AUTH), 400)
    assert _rows(app) == []
    assert client.post(f"{API}/programs/fixed/start", json={"args": []}, headers=AUTH).status_code == 201


def test_env_only_for_listed_keys_and_values_never_shown(make_app: AppFactory, tmp_path: t.Any) -> None:
    app = make_app(PROCMAN_API_TOKEN=TOKEN, PROCMAN_PROGRAMS={"echo": _echo_argv_program(tmp_path)})
    client = app.test_client()
    _error(client.post(f"{API}/programs/echo/start", json={"env": {"SECRET": "override"}}, headers=AUTH), 400)
    _error(client.post(f"{API}/programs/echo/start", json={"env": {"GREETING": "x", "PATH": "/evil"}},
                       headers=AUTH), 400)
    assert _rows(app) == []
    response = client.post(f"{API}/programs/echo/start", json={"process_id": "env1", "env": {"GREETING": "hello"}},
                           headers=AUTH)
    assert response.status_code == 201
    with app.app_context():
        _finish(app, "env1")
    status = client.get(f"{API}/processes/env1", headers=AUTH)
    output = json.loads(status.get_json()["stdout"])
    assert output["greeting"] == "hello" and output["secret"] == "from-config"
    assert status.get_json()["env_keys"] == ["GREETING", "SECRET"]
    stored = json.dumps(_manager(app).store.get("env1"), default=str)
    assert "GREETING" in stored and "hello" not in stored and "from-config" not in stored


def test_bad_start_bodies_are_400_or_413_and_change_nothing(make_app: AppFactory, tmp_path: t.Any) -> None:
    app = make_app(PROCMAN_API_TOKEN=TOKEN, PROCMAN_API_MAX_BODY=2048,
                   PROCMAN_PROGRAMS={"echo": _echo_argv_program(tmp_path)})
    client = app.test_client()
    with app.app_context():
        _start(app, "busy", SLEEPER)
    before = _rows(app)
    url = f"{API}/programs/echo/start"
    bad: list[tuple[t.Any, str]] = [
        ("not json", "bad_json"), ("[1, 2]", "bad_json"), ('"text"', "bad_json"), ("null", "bad_json"),
        (b"\xff\xfe{", "bad_json"), ("{" * 1000 + "}" * 1000, "bad_json"), ("[" * 1000 + "]" * 1000, "bad_json"),
        (json.dumps({"cmd": ["sh"]}), "bad_request"),
        (json.dumps({"args": "rm -rf /"}), "bad_request"), (json.dumps({"args": [1]}), "bad_request"),
        (json.dumps({"args": False}), "bad_request"), (json.dumps({"args": None}), "bad_request"),
        (json.dumps({"args": ["a\u0000b"]}), "bad_request"),
        (json.dumps({"env": []}), "bad_request"), (json.dumps({"env": 0}), "bad_request"),
        (json.dumps({"env": {"GREETING": 1}}), "bad_request"), (json.dumps({"env": {"GREETING": "a\u0000"}}), "bad_request"),
        (json.dumps({"queue": "yes"}), "bad_request"), (json.dumps({"queue": None}), "bad_request"),
        (json.dumps({"process_id": "../x"}), "invalid_process_id"), (json.dumps({"process_id": 5}), "invalid_process_id"),
        (json.dumps({"process_id": ""}), "invalid_process_id"),
    ]
    for body, code in bad:
        _error(client.post(url, data=body, content_type="application/json", headers=AUTH), 400, code)
    _error(client.post(url, data=json.dumps({"args": ["x" * 3000]}), content_type="application/json",
                       headers=AUTH), 413, "too_large")
    _error(client.post(url, json={"process_id": "busy"}, headers=AUTH), 409, "exists")
    assert _rows(app) == before
    assert _row(app, "busy")["status"] == "running"


def test_cap_429_queue_202_and_stats(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_API_TOKEN=TOKEN, PROCMAN_MAX_PROCESSES=1,
                   PROCMAN_PROGRAMS={"sleep": {"cmd": SLEEPER}})
    client = app.test_client()
    url = f"{API}/programs/sleep/start"
    assert client.post(url, json={"process_id": "one"}, headers=AUTH).status_code == 201
    _error(client.post(url, json={"process_id": "two"}, headers=AUTH), 429, "cap_reached")
    assert _manager(app).store.get("two") is None
    queued = client.post(url, json={"process_id": "three", "queue": True}, headers=AUTH)
    assert queued.status_code == 202, queued.data
    assert queued.get_json()["process"]["status"] == "queued"
    assert queued.headers["Location"] == f"{API}/processes/three"
    stats = client.get(f"{API}/stats", headers=AUTH).get_json()
    assert stats == {"running": 1, "queued": 1, "max_processes": 1, "by_status": {"running": 1, "queued": 1}}
    assert client.post(f"{API}/processes/three/stop", headers=AUTH).status_code == 200
    stats = client.get(f"{API}/stats", headers=AUTH).get_json()
    assert stats["queued"] == 0 and stats["by_status"] == {"running": 1, "stopped": 1}


# ------------------------------------------------------------------------------------ openapi ---
def test_openapi_document_lists_every_endpoint_truly(app: Flask, client: FlaskClient) -> None:
    response = client.get(f"{API}/openapi.json", headers=AUTH)
    assert response.status_code == 200
    doc = response.get_json()
    assert doc["openapi"].startswith("3.1") and doc["servers"] == [{"url": "/procman"}]
    documented = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    served: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(f"{API}/") and rule.endpoint != "procman.unknown":
            path = rule.rule.removeprefix("/procman").replace("<", "{").replace(">", "}")
            served.update((method, path) for method in (rule.methods or set()) - {"HEAD", "OPTIONS"})
    assert len(served) == 12 and documented == served
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            declared = set(operation["responses"])
            if path != "/api/health":
                assert {"401", "403"} <= declared, (method, path)
            for param in operation.get("parameters", []):
                if param["in"] == "path":
                    assert "{" + param["name"] + "}" in path
    assert doc["paths"]["/api/health"]["get"]["security"] == []
    start = doc["paths"]["/api/programs/{name}/start"]["post"]["responses"]
    assert {"201", "202", "400", "404", "409", "413", "429"} <= set(start)


# ------------------------------------------------------------------------------------- errors ---
def test_unknown_urls_and_methods_answer_json(app: Flask, client: FlaskClient) -> None:
    _error(client.get("/procman/static/missing.js"), 404, "not_found")
    for url in (f"{API}/nope", "/procman/nope", f"{API}/processes/p1/nope", f"{API}/processes/"):
        for method in ("GET", "POST", "TRACE", "MKCOL"):
            _error(client.open(url, method=method, headers=AUTH), 404, "not_found")
            _error(client.open(url, method=method), 404)  # unknown URLs say so without a token too
    for method, url, allow in (("PUT", f"{API}/processes", "GET"), ("PATCH", f"{API}/processes/p1", "GET, DELETE"),
                               ("DELETE", f"{API}/stats", "GET"), ("GET", f"{API}/programs/x/start", "POST"),
                               ("GET", f"{API}/processes/p1/stop", "POST"), ("POST", f"{API}/processes", "GET"),
                               ("TRACE", f"{API}/health", "GET"), ("PROPFIND", f"{API}/processes/p1", "GET, DELETE"),
                               ("BREW", f"{API}/programs/x/start", "POST")):
        response = client.open(url, method=method, headers=AUTH)
        _error(response, 405, "method_not_allowed")
        assert response.headers["Allow"] == allow
    assert _rows(app) == []


def test_unexpected_exceptions_never_leak(make_app: AppFactory) -> None:
    ext = ProcMan()

    @ext.authorize
    def explode(action: str, process_id: str | None) -> bool:
        raise RuntimeError("secret-detail")

    app = make_app(procman=ext)
    response = app.test_client().get(f"{API}/stats")
    error = _error(response, 500, "internal_error")
    assert "secret-detail" not in response.get_data(as_text=True) and "RuntimeError" not in error["message"]


# ------------------------------------------------------------------------------------- access ---
def test_closed_by_default_and_says_how_to_open(make_app: AppFactory) -> None:
    app = make_app()
    client = app.test_client()
    routes = _api_routes(app)
    assert len(routes) == 11
    for method, url in routes:
        error = _error(client.open(url, method=method, headers={"X-Requested-With": "fetch"}), 403, "api_closed")
        assert "PROCMAN_API_TOKEN" in error["message"] and "authorize" in error["message"]
        # A token sent to an app that has none opens nothing either.
        _error(client.open(url, method=method, headers=AUTH), 403, "api_closed")
    assert client.get(f"{API}/health").status_code == 200


def test_token_rule(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    url = f"{API}/stats"
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": "Bearer test-token"}, {"Authorization": f"Bearer {TOKEN}x"},
                    {"Authorization": "Bearer"}, {"Authorization": TOKEN}):
        response = client.get(url, headers=headers)
        error = _error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in error["message"]
    assert client.get(url, headers=AUTH).status_code == 200
    assert client.get(url, headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    assert (TOKEN.encode(), TOKEN.encode()) in compared  # the constant-time comparison decided


def test_authorize_callback_gets_action_and_id_and_replaces_the_token(make_app: AppFactory, tmp_path: t.Any) -> None:
    ext = ProcMan()
    calls: list[tuple[str, str | None]] = []
    allow = {"value": True}

    @ext.authorize
    def decide(action: str, process_id: str | None) -> bool:
        calls.append((action, process_id))
        return allow["value"]

    app = make_app(procman=ext, PROCMAN_API_TOKEN=TOKEN, PROCMAN_PROGRAMS={"noop": {"cmd": py("pass")}})
    client = app.test_client()
    xhr = {"X-Requested-With": "fetch"}
    with app.app_context():
        _start(app, "p1", py("print(1)"))
        _finish(app, "p1")
    expected = [
        ("GET", f"{API}/processes", ("read", None)), ("GET", f"{API}/stats", ("read", None)),
        ("GET", f"{API}/programs", ("read", None)), ("GET", f"{API}/openapi.json", ("read", None)),
        ("GET", f"{API}/processes/p1", ("read", "p1")), ("GET", f"{API}/processes/p1/output", ("read", "p1")),
        ("GET", f"{API}/processes/p1/output/raw", ("read", "p1")), ("GET", f"{API}/processes/p1/events", ("read", "p1")),
        ("POST", f"{API}/programs/noop/start", ("start", None)),
        ("POST", f"{API}/processes/p1/stop", ("stop", "p1")), ("DELETE", f"{API}/processes/p1", ("delete", "p1")),
    ]
    assert len(expected) == len(_api_routes(app))
    for method, url, call in expected:
        calls.clear()
        response = client.open(url, method=method, headers=xhr)  # no token: the callback alone decides
        assert response.status_code < 400 or response.status_code == 409, (url, response.data)
        assert calls == [call], url
    allow["value"] = False
    for method, url, call in expected:
        calls.clear()
        error = _error(client.open(url, method=method, headers={**xhr, **AUTH}), 403, "forbidden")
        assert call[0] in error["message"]
        assert calls == [call]
    calls.clear()
    assert client.get(f"{API}/health").status_code == 200 and calls == []


def test_state_changes_need_a_header_not_just_a_cookie(make_app: AppFactory) -> None:
    ext = ProcMan()
    ext.authorize(lambda action, process_id: True)  # e.g. an app deciding by its session cookie
    app = make_app(procman=ext, PROCMAN_PROGRAMS={"noop": {"cmd": py("pass")}})
    client = app.test_client()
    client.set_cookie("session", "logged-in")
    with app.app_context():
        _start(app, "live", SLEEPER)
        _start(app, "old", py("pass"))
        _finish(app, "old")
    before = _rows(app)
    for method, url in (("POST", f"{API}/processes/live/stop"), ("DELETE", f"{API}/processes/old"),
                        ("POST", f"{API}/programs/noop/start")):
        _error(client.open(url, method=method), 403, "csrf")
        _error(client.open(url, method=method, content_type="application/x-www-form-urlencoded", data="a=b"),
               403, "csrf")
    assert _rows(app) == before
    assert client.get(f"{API}/processes/live").status_code == 200  # reads are fine with the cookie
    assert client.post(f"{API}/processes/live/stop", headers={"X-Requested-With": "fetch"}).status_code == 200
    assert client.delete(f"{API}/processes/old", headers=AUTH).status_code == 204


def test_get_never_changes_state(app: Flask, client: FlaskClient) -> None:
    _start(app, "keep", SLEEPER)
    before = _rows(app)
    for method in ("GET", "HEAD", "OPTIONS"):
        for url in (f"{API}/processes/keep/stop", f"{API}/processes/keep?_method=DELETE",
                    f"{API}/programs/anything/start", f"{API}/processes/keep", f"{API}/processes/keep/output"):
            response = client.open(url, method=method, headers=AUTH)
            assert response.status_code in (200, 404, 405), (method, url, response.status_code)
    assert _rows(app) == before


def test_no_wildcard_cors_and_no_store(app: Flask, client: FlaskClient) -> None:
    _start(app, "c1", py("print('x')"))
    _finish(app, "c1")
    origin = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    urls = [f"{API}/processes", f"{API}/processes/c1", f"{API}/processes/c1/output",
            f"{API}/processes/c1/output?format=raw", f"{API}/processes/c1/events", f"{API}/stats",
            f"{API}/programs", f"{API}/openapi.json", f"{API}/health", f"{API}/missing"]
    for url in urls:
        for method in ("GET", "OPTIONS"):
            for headers in (origin, {**origin, **AUTH}):
                response = client.open(url, method=method, headers=headers)
                assert "Access-Control-Allow-Origin" not in response.headers, (method, url)
                assert "Access-Control-Allow-Credentials" not in response.headers
        response = client.get(url, headers=AUTH)
        if response.status_code == 200 and url != f"{API}/openapi.json":
            assert response.headers["Cache-Control"] == "no-store", url


def test_health_is_open_and_reveals_counts_only(make_app: AppFactory) -> None:
    ext = ProcMan()
    ext.authorize(lambda action, process_id: False)
    app = make_app(procman=ext)
    with app.app_context():
        _start(app, "h1", SLEEPER, metadata={"owner": "alice"})
    response = app.test_client().get(f"{API}/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "running": 1, "queued": 0, "watcher": "running",
                                   "workers_without_watcher": 0}
    assert "h1" not in response.get_data(as_text=True)
    closed = make_app("closed")  # the default (closed) API keeps health open too
    assert closed.test_client().get(f"{API}/health").get_json()["status"] == "ok"


def test_start_failure_is_a_4xx_with_a_failed_record(make_app: AppFactory, tmp_path: t.Any) -> None:
    missing = str(tmp_path / "does-not-exist")
    app = make_app(PROCMAN_API_TOKEN=TOKEN, PROCMAN_PROGRAMS={"broken": {"cmd": py("pass"), "cwd": missing}})
    response = app.test_client().post(f"{API}/programs/broken/start", json={"process_id": "b1"}, headers=AUTH)
    _error(response, 400, "start_failed")
    assert _row(app, "b1")["status"] == "failed"



def test_database_down_is_503_json(make_app: AppFactory, tmp_path: t.Any) -> None:
    app = make_app(PROCMAN_API_TOKEN=TOKEN, PROCMAN_DATABASE_URI=f"sqlite:///{tmp_path}/missing-dir/x.sqlite3")
    client = app.test_client()
    for url in (f"{API}/stats", f"{API}/processes", f"{API}/processes/p1", f"{API}/health"):
        error = _error(client.get(url, headers=AUTH), 503, "store_unavailable")
        assert "missing-dir" not in error["message"]
