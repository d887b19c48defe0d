"""The Server-Sent Events stream: offsets as ids, resuming, live delivery, any worker serving it."""

from __future__ import annotations

import contextlib
import json
import threading
import typing as t

import pytest
import requests
from conftest import AppFactory, py, wait_until
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from flask_procman.manager import Manager

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
API = "/procman/api"

#: Prints 8 numbered lines (one with multibyte characters) and a stderr line over about 1.6 s.
TICKER = py(
    "import sys, time\n"
    "for i in range(8):\n"
    "    print(f'line {i} é€😀' if i == 3 else f'line {i}', flush=True)\n"
    "    time.sleep(0.2)\n"
    "print('done', file=sys.stderr, flush=True)\n"
)


class Event(t.NamedTuple):
    """One parsed Server-Sent Event."""

    name: str
    id: str | None
    data: t.Any


def parse_events(lines: t.Iterable[str]) -> t.Iterator[Event]:
    """Parse SSE lines (without their line ends) into events; comments and ``retry:`` are skipped."""
    name: str = "message"
    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield Event(name, event_id, json.loads("\n".join(data)))
            name, event_id, data = "message", None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "id":
                event_id = value
            elif field == "data":
                data.append(value)


def _lines(chunks: t.Iterable[bytes]) -> t.Iterator[str]:
    """Split a byte stream into text lines as the bytes arrive."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode("utf-8").rstrip("\r")


def _text(events: t.Iterable[Event], stream: str) -> str:
    """The text of every ``stream`` event, joined."""
    return "".join(e.data["data"] for e in events if e.name == stream)


def _check_ids(events: t.Sequence[Event], start: tuple[int, int] = (0, 0)) -> None:
    """Every id is ``<stdout>:<stderr>`` after the event, and each chunk starts where the last ended."""
    offsets = list(start)
    for event in events:
        assert event.id is not None
        if event.name in ("stdout", "stderr"):
            index = 0 if event.name == "stdout" else 1
            assert event.data["offset"] == offsets[index], event
            offsets[index] = event.data["next_offset"]
        assert event.id.rsplit(":", 1)[0] == f"{offsets[0]}:{offsets[1]}" and len(event.id.split(":")) == 3, event


def _manager(app: Flask) -> Manager:
    """The manager of ``app``."""
    return t.cast(Manager, app.extensions["procman"])


def _row(app: Flask, process_id: str) -> dict[str, t.Any]:
    """The stored record of ``process_id`` (which must exist)."""
    row = _manager(app).store.get(process_id)
    assert row is not None, process_id
    return row


@contextlib.contextmanager
def serve(app: Flask) -> t.Iterator[str]:
    """Serve ``app`` with werkzeug's threaded server on a free port; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# ------------------------------------------------------------------------- through the client ---
def test_events_of_a_finished_process_and_every_resume_point(app: Flask, client: FlaskClient) -> None:
    code = ("import sys; sys.stdout.write('ab\\n' + 'é' * 40000 + '\\n'); sys.stdout.flush(); "
            "sys.stderr.write('err\\n'); sys.stdout.buffer.write(b'bad\\xff\\n')")
    assert _manager(app).start_process("f1", py(code))
    final = _manager(app).wait("f1", timeout=15)
    response = client.get(f"{API}/processes/f1/events", headers=AUTH)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-store"
    events = list(parse_events(response.get_data(as_text=True).split("\n")))
    _check_ids(events)
    stdout = "ab\n" + "é" * 40000 + "\nbad\ufffd\n"
    assert _text(events, "stdout") == stdout and _text(events, "stderr") == "err\n"
    assert sum(e.name == "stdout" for e in events) >= 2  # 80 KB: more than one chunk, none splitting 'é'
    assert events[-1].name == "end" and events[-1].data["status"] == "completed"
    assert events[-1].data["return_code"] == 0 and events[-1].data["finished_at"] == final["finished_at"].isoformat()
    assert [e.name for e in events].count("end") == 1
    for cut, event in enumerate(events):
        assert event.id is not None
        for headers, query in (({**AUTH, "Last-Event-ID": event.id}, ""), (AUTH, f"?last_event_id={event.id}")):
            rest = list(parse_events(client.get(f"{API}/processes/f1/events{query}", headers=headers)
                                     .get_data(as_text=True).split("\n")))
            out, err = (int(x) for x in event.id.split(":")[:2])
            _check_ids(rest, (out, err))
            assert _text(events[:cut + 1], "stdout") + _text(rest, "stdout") == stdout
            assert _text(events[:cut + 1], "stderr") + _text(rest, "stderr") == "err\n"
            assert rest[-1].name == "end"


@pytest.mark.parametrize("last", ["x", "1", "1:2:3", "-1:0", "1:\u00b2", "1:", ":1", "1:0x10", "1" * 19 + ":0"])
def test_bad_last_event_id_is_400(app: Flask, client: FlaskClient, last: str) -> None:
    assert _manager(app).start_process("b1", py("pass"))
    response = client.get(f"{API}/processes/b1/events", headers={**AUTH, "Last-Event-ID": last})
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "bad_request"


def test_events_of_unknown_process_is_404(client: FlaskClient) -> None:
    response = client.get(f"{API}/processes/ghost/events", headers=AUTH)
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


# ---------------------------------------------------------------------------- against a server ---
def stream_events(response: requests.Response) -> t.Iterator[Event]:
    """The events of a streamed response, each as soon as its bytes arrive."""
    return parse_events(_lines(response.iter_content(chunk_size=None)))


def _read_until(events: t.Iterator[Event], stop: t.Callable[[Event], bool]) -> list[Event]:
    """The next events, up to and including the first ``stop`` one (fails if the stream ends first)."""
    got: list[Event] = []
    for event in events:
        got.append(event)
        if stop(event):
            return got
    raise AssertionError(f"the stream ended without the awaited event; got {got}")


def test_live_stream_resume_and_end(app: Flask) -> None:
    manager = _manager(app)
    with serve(app) as base:
        assert manager.start_process("live", TICKER)
        url = f"{base}{API}/processes/live/events"
        with requests.get(url, headers=AUTH, stream=True, timeout=20) as response:
            assert response.status_code == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            events = stream_events(response)
            first = _read_until(events, lambda e: e.name == "stdout")
            # Live: the first chunk came while the process still runs.
            status = requests.get(f"{base}{API}/processes/live", headers=AUTH, timeout=10).json()
            assert status["status"] == "running", status
            assert first[-1].data["data"].startswith("line 0")
            more = _read_until(events, lambda e: e.name == "stdout" and "line 2" in e.data["data"])
        seen = first + more
        assert "line 7" not in _text(seen, "stdout")
        assert _row(app, "live")["status"] == "running"  # resuming below starts mid-run
        cut = seen[-1].id
        assert cut is not None
        with requests.get(url, headers={**AUTH, "Last-Event-ID": cut}, stream=True, timeout=20) as response:
            events = stream_events(response)
            rest = _read_until(events, lambda e: e.name == "end")
        out, err = (int(x) for x in cut.split(":")[:2])
        _check_ids(rest, (out, err))
        final = manager.wait("live", timeout=15)
        assert rest[-1].name == "end" and rest[-1].data["status"] == "completed" == final["status"]
        assert rest[-1].data["return_code"] == 0
        full = final["stdout"]
        assert full == "".join(f"line {i} é€😀\n" if i == 3 else f"line {i}\n" for i in range(8))
        # Exactly the remaining bytes: no duplicate, no gap, across the reconnection.
        assert _text(seen, "stdout") + _text(rest, "stdout") == full
        assert len(_text(seen, "stdout").encode()) == out
        assert _text(seen, "stderr") + _text(rest, "stderr") == "done\n"
        # Statuses are sent on change: each connection says running once, then the end.
        for connection in (seen, rest):
            statuses = [(e.name, e.data["status"]) for e in connection if e.name in ("status", "end")]
            assert statuses[0] == ("status", "running") and statuses.count(("status", "running")) == 1
        assert [e.name for e in rest].count("end") == 1


def test_stream_is_served_by_another_worker(make_app: AppFactory) -> None:
    """A second app object (another worker: same database, same log folder) streams a process it did not start."""
    first = make_app("worker1", PROCMAN_API_TOKEN=TOKEN)
    second = make_app("worker2", PROCMAN_API_TOKEN=TOKEN)
    assert _manager(first).settings.log_dir == _manager(second).settings.log_dir
    with serve(second) as base:
        assert _manager(first).start_process("cross", TICKER)
        with requests.get(f"{base}{API}/processes/cross/events", headers=AUTH, stream=True, timeout=20) as response:
            assert response.status_code == 200
            events = stream_events(response)
            head = _read_until(events, lambda e: e.name == "stdout")
            assert _row(second, "cross")["status"] == "running"
            rest = _read_until(events, lambda e: e.name == "end")
    received = head + rest
    _check_ids(received)
    final = _manager(first).wait("cross", timeout=15)
    assert _text(received, "stdout") == final["stdout"] and "line 7" in final["stdout"]
    assert received[-1].data["status"] == "completed"
    row = _row(second, "cross")
    assert row["owner"].split("|")[3] == _manager(first).owner.split("|")[3]  # the first worker ran it


def test_stream_of_a_process_removed_meanwhile_ends(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_API_TOKEN=TOKEN)
    manager = _manager(app)
    assert manager.start_process("gone", py("import time; time.sleep(30)"))
    with serve(app) as base, requests.get(f"{base}{API}/processes/gone/events", headers=AUTH, stream=True,
                                          timeout=20) as response:
        events = stream_events(response)
        head = _read_until(events, lambda e: e.name == "status")
        assert head[-1].data["status"] == "running"
        assert manager.stop_process("gone", timeout=2)
        assert manager.remove_process("gone")
        rest = _read_until(events, lambda e: e.name == "end")
    assert rest[-1].data["status"] in ("stopped", "removed")
    wait_until(lambda: manager.store.get("gone") is None, message="the record removed")
