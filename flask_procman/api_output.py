"""The blueprint's output reads: by byte offset (JSON text or raw bytes) and the live events stream (SSE)."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import typing as t

from flask import Response, current_app, request

from . import errors
from .api import ApiError, bp, checked_process_id, current_manager, int_arg, json_response, procman_action
from .engine.logfiles import LogFiles, decode_output
from .engine.outputread import OutputChunk
from .openapi import MAX_OFFSET
from .store import FINAL

MAX_OUTPUT_LIMIT = 4 * 1024 * 1024
DEFAULT_OUTPUT_LIMIT = 1024 * 1024
_LAST_EVENT_ID_RE = re.compile(r"([0-9]{1,18}):([0-9]{1,18})(?::([0-9a-f]{32}))?")
_SSE_CHUNK = 64 * 1024


def _time_arg(name: str) -> dt.datetime | None:
    """The ISO 8601 time query argument ``name`` (UTC when it has no offset), or a 400."""
    raw = request.args.get(name)
    if raw is None:
        return None
    text = raw.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        if len(text) > 64:
            raise ValueError(text)
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, "bad_request", f"'{name}' must be an ISO 8601 time such as 2026-01-02T03:04:05Z.") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def _chunk_fields(chunk: OutputChunk, end: int) -> dict[str, t.Any]:
    """What a JSON read or an SSE chunk says beside its text (which ends at ``end``): whether the
    head was dropped, and the index entries timing its bytes (each byte: by the first entry above it)."""
    time = chunk.time
    times: list[list[float]] = []
    for offset, when in chunk.times:
        times.append([offset, when])
        if offset >= end:
            break
    return {"truncated": chunk.truncated, "time": time.isoformat() if time is not None else None, "times": times}


def _utf8_complete(data: bytes) -> int:
    """Length of ``data`` without a trailing incomplete UTF-8 sequence (so text never splits a character)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80 or byte >= 0xF8:  # ASCII, or a byte that never starts a character
            return len(data)
        if byte >= 0xC0:
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) - back if need > back else len(data)
    return len(data)


def _first_char_length(data: bytes) -> int:
    """Bytes of the first UTF-8 character of ``data``: 1 for an invalid byte, 0 while it is incomplete."""
    if not data:
        return 0
    lead = data[0]
    need = 1 if lead < 0xC0 or lead >= 0xF8 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
    for index in range(1, need):
        if index >= len(data):
            return 0
        if not 0x80 <= data[index] < 0xC0:
            return 1  # not a character: one byte, decoded as U+FFFD
    return need


def _text_chunk(data: bytes, final: bool) -> bytes:
    """The part of ``data`` to decode now: all of it at the very end, else up to the last whole character.

    Never splits a character: an incomplete one at the end waits for the next read.
    """
    if final:
        return data
    return data[:_utf8_complete(data)]


@bp.get("/api/processes/<process_id>/output/raw")
@procman_action("read")
def read_output_raw(process_id: str) -> Response:
    """``output?format=raw`` as its own operation: a generated client reads one content type per operation."""
    return t.cast(Response, read_output(process_id, raw=True))


@bp.get("/api/processes/<process_id>/output")
@procman_action("read")
def read_output(process_id: str, raw: bool = False) -> Response:
    """Output by byte offset: JSON text (whole characters only) or the raw bytes."""
    manager = current_manager()
    process_id = checked_process_id(process_id)
    stream = request.args.get("stream", "stdout")
    if stream not in ("stdout", "stderr"):
        raise ApiError(400, "bad_request", "'stream' must be 'stdout' or 'stderr'.")
    fmt = "raw" if raw else request.args.get("format", "json")
    if fmt not in ("json", "raw"):
        raise ApiError(400, "bad_request", "'format' must be 'json' or 'raw'.")
    offset = int_arg("offset", 0, 0, MAX_OFFSET)
    limit = int_arg("limit", DEFAULT_OUTPUT_LIMIT, 0, MAX_OUTPUT_LIMIT)
    since = _time_arg("since")
    if since is not None and "offset" in request.args:
        raise ApiError(400, "bad_request", "Give 'offset' or 'since', not both.")
    row = manager.store.get(process_id)
    if row is None:
        raise ApiError(404, "not_found", f"No process with id {process_id!r}.")
    final = row["status"] in FINAL  # read before the data: a final process writes nothing more
    try:
        read = manager.read_chunk(process_id, stream, offset, limit, since=since)
    except errors.ProcessNotFound:  # removed meanwhile
        raise ApiError(404, "not_found", f"No process with id {process_id!r}.") from None
    data, start, next_offset = read.data, read.offset, read.next_offset
    if fmt == "raw":
        response = current_app.response_class(data, mimetype="application/octet-stream")
        response.headers["X-Offset"] = str(start)  # above the offset asked for when that part was dropped
        response.headers["X-Next-Offset"] = str(next_offset)
        response.headers["Cache-Control"] = "no-store"
        return response
    at_end = final and next_offset >= LogFiles(manager.settings.log_dir, process_id).size(stream)
    chunk = _text_chunk(data, final=at_end)
    if not chunk and data and len(data) == limit:
        # The limit is smaller than the character at ``start``: send that one whole character.
        wider, _ = manager.read_output(process_id, stream, start, 4)
        length = _first_char_length(wider)
        chunk = wider[:length] if length else (wider if final else b"")
    return json_response({"data": decode_output(chunk), "offset": start, "next_offset": start + len(chunk),
                  "ended": at_end and len(chunk) >= len(data), **_chunk_fields(read, start + len(chunk))})


def _sse(event: str, data: t.Any, offsets: t.Sequence[int], run: str = "") -> str:
    """One Server-Sent Event whose id is ``<stdout offset>:<stderr offset>:<run tag>`` after it (the
    run tag: offsets of an earlier run of a reused id are never applied to a new run)."""
    suffix = f":{run}" if run else ""
    return f"id: {offsets[0]}:{offsets[1]}{suffix}\nevent: {event}\ndata: {json.dumps(data)}\n\n"


def _event_id_offsets(value: str | None, name: str) -> tuple[list[int], str | None] | None:
    """The ``[stdout, stderr]`` offsets and run tag of an event id (None when absent or empty), or a 400."""
    if not value:
        return None
    match = _LAST_EVENT_ID_RE.fullmatch(value)
    if match is None:  # ASCII digits only: str.isdigit() would let '²' through to int()
        raise ApiError(400, "bad_request", f"{name} must be '<stdout offset>:<stderr offset>[:<run tag>]'.")
    return [int(match.group(1)), int(match.group(2))], match.group(3)


@bp.get("/api/processes/<process_id>/events")
@procman_action("read")
def events(process_id: str) -> Response:
    """Server-Sent Events read from the log files, so any worker can serve any process."""
    manager = current_manager()
    process_id = checked_process_id(process_id)
    header = _event_id_offsets(request.headers.get("Last-Event-ID"), "Last-Event-ID")
    query = _event_id_offsets(request.args.get("last_event_id"), "last_event_id")
    offsets, client_run = header or query or ([0, 0], None)  # the header wins; none means from the start
    first = manager.store.get(process_id)
    if first is None:
        raise ApiError(404, "not_found", f"No process with id {process_id!r}.")
    run = first["run_tag"] or ""
    if client_run is not None and client_run != run:
        offsets = [0, 0]  # the client followed an earlier run of this id: the new one starts at 0
    poll = min(0.25, manager.settings.poll_interval)

    def stream() -> t.Iterator[str]:
        """Poll the record and the log files until the process has ended and everything is sent."""
        yield "retry: 2000\n\n"
        last_status: tuple[t.Any, ...] | None = None
        last_progress: dict[str, t.Any] | None = None
        timed = [offsets[0], offsets[1]]  # per stream: bytes below this are timed for the client
        last_beat = time.monotonic()
        nonlocal run
        while True:
            row = manager.store.get(process_id)
            if row is None:
                yield _sse("end", {"id": process_id, "status": "removed"}, offsets, run)
                return
            if (row["run_tag"] or "") != run:  # replaced by a new run meanwhile: follow it from 0
                run, offsets[0], offsets[1] = row["run_tag"] or "", 0, 0
            final = row["status"] in FINAL
            sent = False
            for index, name in enumerate(("stdout", "stderr")):
                while True:
                    try:
                        read = manager.read_chunk(process_id, name, offsets[index], _SSE_CHUNK)
                    except errors.ProcessNotFound:  # removed meanwhile: the next round says so
                        break
                    data = read.data
                    chunk = _text_chunk(data, final=final and len(data) < _SSE_CHUNK)
                    if not chunk:
                        break
                    start = read.offset  # past the asked offset when a capped log dropped that part
                    offsets[index] = start + len(chunk)
                    sent = True
                    fields = _chunk_fields(read, offsets[index])
                    if fields["times"]:
                        timed[index] = max(timed[index], int(fields["times"][-1][0]))
                    yield _sse(name, {"data": decode_output(chunk), "offset": start, "next_offset": offsets[index],
                                      **fields}, offsets, run)
                    if len(data) < _SSE_CHUNK:
                        break
                if timed[index] < offsets[index]:  # sent bytes the index had not timed yet: are they now?
                    late = manager.output_times(process_id, name, timed[index], offsets[index])
                    if late:
                        timed[index] = int(late[-1][0])
                        sent = True
                        yield _sse("times", {"stream": name, "times": [list(e) for e in late]}, offsets, run)
            progress = manager.read_progress(row)
            if progress is not None and progress != last_progress:
                last_progress = progress
                sent = True
                yield _sse("progress", manager.status_to_json({"progress": progress})["progress"], offsets, run)
            key = (row["status"], row["pid"], row["return_code"])
            if key != last_status:
                last_status = key
                status = manager.status_to_json(manager.to_status(row, with_output=False))
                yield _sse("end" if final else "status", status, offsets, run)
                sent = True
                if final:
                    return
            elif final:
                yield _sse("end", manager.status_to_json(manager.to_status(row, with_output=False)), offsets, run)
                return
            now = time.monotonic()
            if not sent and now - last_beat > 15:
                last_beat = now
                yield ": keepalive\n\n"
            elif sent:
                last_beat = now
            time.sleep(poll)

    response = Response(stream(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"
    return response

