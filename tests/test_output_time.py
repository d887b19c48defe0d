"""When each byte was written (issue 12): the per-stream time index, ``since=`` reads, the times JSON
reads and SSE events carry, and the order of stdout and stderr across seconds.

Time is driven by waiting on the index itself (a child writes, then waits for a flag file the test
creates once the index shows the write), never by sleeping blindly.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import typing as t
from pathlib import Path

import pytest
from conftest import AppFactory, py, wait_until
from flask import Flask

from flask_procman import ProcMan
from flask_procman.engine import timeindex

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _pm(app: Flask) -> ProcMan:
    return t.cast(ProcMan, app.extensions["procman"].extension)


def _log(app: Flask, process_id: str, stream: str) -> str:
    return os.path.join(app.config["PROCMAN_LOG_DIR"], process_id, f"{stream}.log")


def stepper(tmp_path: Path, steps: t.Sequence[tuple[str, str]]) -> list[str]:
    """A child that writes ``steps`` ``(stream, text)`` one by one, waiting for ``<tmp>/go<i>`` before
    step i > 0."""
    lines = ["import os, sys, time"]
    for index, (stream, text) in enumerate(steps):
        if index:
            flag = str(tmp_path / f"go{index}")
            lines.append(f"while not os.path.exists({flag!r}): time.sleep(0.005)")
        lines.append(f"sys.{stream}.write({text!r}); sys.{stream}.flush()")
    lines.append(f"while not os.path.exists({str(tmp_path / 'end')!r}): time.sleep(0.005)")
    return py("\n".join(lines) + "\n")


def wait_for_entry(app: Flask, process_id: str, stream: str, offset: int, after: float) -> tuple[int, float]:
    """The index entry that times the bytes from ``offset`` on, once the watcher has written it."""
    def found() -> tuple[int, float] | None:
        entries = timeindex.load(_log(app, process_id, stream))
        return next((e for e in entries if e[0] == offset and e[1] > after), None)
    return t.cast("tuple[int, float]", wait_until(found, timeout=15, message=f"an index entry at {stream}:{offset}"))


def _utc(when: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(when, dt.timezone.utc)


def test_since_reads_and_the_times_of_reads_and_events(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app(PROCMAN_API_TOKEN=TOKEN)
    with app.app_context():
        _pm(app).start_process("s", stepper(tmp_path, [("stdout", "early\n"), ("stdout", "late\n")]))
    log = _log(app, "s", "stdout")
    created = timeindex.load(log)[0]  # written before the child existed: 0 bytes by then
    assert created[0] == 0
    first = wait_for_entry(app, "s", "stdout", 6, created[1])[1]  # "early" was written by then
    mark = time.time()  # after "early" (the index says so), before "late" (written once go1 exists)
    (tmp_path / "go1").touch()
    second = wait_for_entry(app, "s", "stdout", 11, first)[1]  # ... and "late" by then
    assert second - first >= 1.0 - 0.01  # at most one entry a second per stream

    with app.app_context():
        pm = _pm(app)
        assert pm.read_output("s", since=_utc(mark))[0] == b"late\n"
        # Later than the last write (the log's mtime says so): nothing, exactly.
        assert pm.read_output("s", since=_utc(second + 0.5)) == (b"", 11)
        assert pm.read_output("s", since=_utc(first - 0.01))[0] == b"early\nlate\n"  # before "early" was seen
        assert pm.read_output("s", since=_utc(created[1] - 3600))[0] == b"early\nlate\n"
        future = pm.read_output("s", since=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
        assert future == (b"", 11)  # nothing was written after it
        chunk = pm.read_chunk("s", "stdout", 6)
        assert chunk.time == _utc(second) and chunk.times == ((11, second),)
        whole = pm.read_chunk("s", "stdout", 0)
        assert whole.time == _utc(first) and whole.times == ((6, first), (11, second))

    client = app.test_client()
    since = _utc(mark).isoformat().replace("+00:00", "Z")
    body = client.get(f"/procman/api/processes/s/output?since={since}", headers=AUTH).get_json()
    assert body["data"] == "late\n" and body["offset"] == 6 and body["time"] == _utc(second).isoformat()
    body = client.get("/procman/api/processes/s/output", headers=AUTH).get_json()
    assert body["times"] == [[6, first], [11, second]] and body["truncated"] is False
    for bad in ("since=yesterday", "since=2026-13-01T00:00:00", "since=2026-01-01T00:00:00&offset=3"):
        assert client.get(f"/procman/api/processes/s/output?{bad}", headers=AUTH).status_code == 400, bad

    (tmp_path / "end").touch()
    with app.app_context():
        _pm(app).wait("s", timeout=15)
    text = client.get("/procman/api/processes/s/events", headers=AUTH).get_data(as_text=True)
    assert '"time": "' + _utc(first).isoformat() + '"' in text
    assert f'"times": [[6, {first!r}], [11, {second!r}]]' in text


def test_every_byte_sent_on_an_event_stream_gets_its_time(make_app: AppFactory, tmp_path: Path) -> None:
    """Bytes sent before the index timed them get their time in a later ``times`` event."""
    import json
    import threading

    import requests
    from werkzeug.serving import make_server

    app = make_app(PROCMAN_API_TOKEN=TOKEN)
    with app.app_context():
        _pm(app).start_process("late", stepper(tmp_path, [("stdout", "one\n")]))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    safety = threading.Timer(30, (tmp_path / "end").touch)  # never hang: the child ends after 30 s anyway
    safety.start()
    timed_to = 0
    try:
        url = f"http://127.0.0.1:{server.server_port}/procman/api/processes/late/events"
        with requests.get(url, headers=AUTH, stream=True, timeout=30) as response:
            name = ""
            for line in response.iter_lines(decode_unicode=True):
                raw = t.cast(str, line)
                if raw.startswith("event: "):
                    name = raw[7:]
                elif raw.startswith("data: ") and name in ("stdout", "times"):
                    times = json.loads(raw[6:])["times"]
                    timed_to = max([timed_to, *(int(o) for o, _ in times)])
                    if timed_to >= 4:
                        (tmp_path / "end").touch()
                elif raw == "" and name == "end":
                    break
    finally:
        safety.cancel()
        (tmp_path / "end").touch()
        server.shutdown()
        thread.join(10)
    assert timed_to >= 4  # "one\n" was timed, in its own event or in a later "times" event


def test_both_streams_interleave_by_the_index_across_seconds(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app(PROCMAN_API_TOKEN=TOKEN)
    steps = [("stdout", "out 1\n"), ("stderr", "err 1\n"), ("stdout", "out 2\n"), ("stderr", "err 2\n")]
    with app.app_context():
        _pm(app).start_process("both", stepper(tmp_path, steps))
    sizes = {"stdout": 0, "stderr": 0}
    last = 0.0
    for index, (stream, text) in enumerate(steps):
        if index:
            (tmp_path / f"go{index}").touch()
        sizes[stream] += len(text)
        # The index has timed this write: the next one (written after) gets a later time.
        last = wait_for_entry(app, "both", stream, sizes[stream], last)[1]
    (tmp_path / "end").touch()

    lines: list[tuple[float, int, str]] = []
    client = app.test_client()
    for order, stream in enumerate(("stdout", "stderr")):
        body = client.get(f"/procman/api/processes/both/output?stream={stream}", headers=AUTH).get_json()
        data = body["data"]
        entries = [(int(o), w) for o, w in body["times"]]
        start = 0
        while start < len(data):
            end = data.index("\n", start) + 1
            lines.append((t.cast(float, timeindex.time_of(entries, start)), order, data[start:end]))
            start = end
    assert [text for _, _, text in sorted(lines)] == [text for _, text in steps]


def test_the_index_is_bounded_monotonic_and_thinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timeindex, "MAX_ENTRIES", 16)
    log = str(tmp_path / "stdout.log")
    clock = timeindex.StreamClock(log)
    wall = 1000.0
    for step in range(200):
        # The clock is stepped back now and then: the index never goes backwards.
        wall = wall + 1 if step % 10 else wall - 30
        clock.observe(step * 10, wall, float(step))  # one look a second, each finding it grown
    clock.observe(3000, wall, 199.5)  # less than a second after the last entry: none
    entries = timeindex.load(log)
    assert len(entries) <= 16 and os.path.getsize(timeindex.index_path(log)) <= 16 * timeindex.ENTRY.size
    assert entries[0] == (0, 970.0)  # the oldest entry survives thinning
    assert entries[-1][0] == 1990
    clock.flush(3000, wall, 199.6)  # the end is timed at once
    assert timeindex.load(log)[-1] == (3000, entries[-1][1])
    assert [o for o, _ in entries] == sorted(o for o, _ in entries)
    assert [w for _, w in entries] == sorted(w for _, w in entries)
    assert timeindex.offset_at(entries, 0.0) == 0 and timeindex.time_of(entries, 10**9) is None
    assert timeindex.time_of(entries, 0) == entries[1][1]
