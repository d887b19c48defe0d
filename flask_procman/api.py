"""The ``procman`` blueprint: JSON endpoints, the live events stream and the dashboard page."""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import re
import time
import typing as t

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    render_template,
    request,
    url_for,
)
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from . import errors
from .config import ConfigKeys, Settings
from .engine.logfiles import LogFiles, decode_output, is_valid_process_id
from .engine.outputread import OutputChunk
from .facade import manager_for
from .openapi import MAX_OFFSET, build_document
from .store import FINAL, STATUSES

if t.TYPE_CHECKING:
    from .manager import Manager

log = logging.getLogger("flask_procman")

bp = Blueprint("procman", __name__, template_folder="dashboard/templates", static_folder="dashboard/static",
               static_url_path="/static")

MAX_OUTPUT_LIMIT = 4 * 1024 * 1024
DEFAULT_OUTPUT_LIMIT = 1024 * 1024
_INTEGER_RE = re.compile(r"-?[0-9]+")
_LAST_EVENT_ID_RE = re.compile(r"([0-9]{1,18}):([0-9]{1,18})(?::([0-9a-f]{32}))?")
_SSE_CHUNK = 64 * 1024
_OPEN_ENDPOINTS = {"procman.static", "procman.health", "procman.dashboard", "procman.unknown"}


class ApiError(HTTPException):
    """An API error answered as ``{"error": {"code", "message"}}`` (an app may re-skin it)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(description=message)
        self.code = status
        self.error_code = code


def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """The ``{"error": {"code", "message"}}`` answer every failure under the prefix gets."""
    response = current_app.response_class(
        json.dumps({"error": {"code": code, "message": message}}), status=status, mimetype="application/json"
    )
    response.headers["Cache-Control"] = "no-store"
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _json(data: t.Any, status: int = 200) -> Response:
    """A JSON answer that no cache keeps (statuses and output change all the time)."""
    response = current_app.response_class(json.dumps(data), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


def _manager() -> Manager:
    """The current app's manager."""
    return manager_for()


def _settings() -> Settings:
    """The current app's settings (read per request: several apps may share the blueprint)."""
    return _manager().settings


# ------------------------------------------------------------------------------------ access ----
def request_has_valid_token() -> bool:
    """True when the request carries ``Authorization: Bearer <PROCMAN_API_TOKEN>`` (constant-time)."""
    token = current_app.config.get(ConfigKeys.API_TOKEN)
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if not token or scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), str(token).encode())


@bp.before_request
def _authorize() -> Response | None:
    """Every endpoint but the open ones: CSRF rule, then the authorize callback or the token."""
    endpoint = request.endpoint or ""
    if endpoint in _OPEN_ENDPOINTS:
        return None
    view = current_app.view_functions.get(endpoint)
    action = getattr(view, "procman_action", "read")
    process_id = (request.view_args or {}).get("process_id")
    if request.method not in ("GET", "HEAD", "OPTIONS") and "Authorization" not in request.headers \
            and "X-Requested-With" not in request.headers:
        # A cross-site form can send cookies but not these headers: no cookie-only state changes.
        return _error_response(403, "csrf", "State-changing requests need an Authorization header or an "
                                            "X-Requested-With header (cross-site request protection).")
    callback = _manager().extension.authorize_callback
    if callback is not None:
        if callback(action, process_id):
            return None
        return _error_response(403, "forbidden", f"Not allowed to {action} here (the app's authorize callback refused).")
    if current_app.config.get(ConfigKeys.API_TOKEN):
        if request_has_valid_token():
            return None
        return _error_response(401, "unauthorized", "Send 'Authorization: Bearer <token>' with the app's "
                                                    "PROCMAN_API_TOKEN.", {"WWW-Authenticate": 'Bearer realm="procman"'})
    return _error_response(403, "api_closed", "The procman API is closed. Open it by setting PROCMAN_API_TOKEN "
                                              "(then send 'Authorization: Bearer <token>') or by registering "
                                              "@procman.authorize(action, process_id).")


def _action(name: str) -> t.Callable[[t.Callable[..., t.Any]], t.Callable[..., t.Any]]:
    """Mark a view with the action the authorize callback is asked about."""

    def decorate(fn: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
        fn.procman_action = name  # type: ignore[attr-defined]
        return fn

    return decorate


# ------------------------------------------------------------------------------------ errors ----
@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    if isinstance(exc, ApiError):
        return _error_response(exc.code or 400, exc.error_code, exc.description or "")
    code = exc.code or 500
    name = (exc.name or "error").lower().replace(" ", "_")
    headers = {"Allow": ", ".join(exc.valid_methods)} if isinstance(exc, MethodNotAllowed) and exc.valid_methods else None
    return _error_response(code, name, exc.description or exc.name or "error", headers)


@bp.errorhandler(errors.StoreUnavailable)
def _store_error(exc: errors.StoreUnavailable) -> Response:
    if isinstance(exc, errors.TableMissing):  # not an outage: trying again does not help
        return _error_response(500, "table_missing", "The procman_processes table does not exist in the app's "
                                                     "database: create it with db.create_all() or a migration.")
    return _error_response(503, "store_unavailable", "The process database is unavailable; try again shortly.")


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("procman API: unexpected error")
    return _error_response(500, "internal_error", "Internal error (details are in the server log).")


def _int_arg(name: str, default: int, minimum: int, maximum: int) -> int:
    """The integer query argument ``name`` (ASCII digits only), or a 400 naming its bounds."""
    raw = request.args.get(name)
    if raw is None:
        return default
    # One message for every wrong value: not a number, too long, or out of range.
    wrong = ApiError(400, "bad_request", f"'{name}' must be an integer between {minimum} and {maximum}.")
    if len(raw) > 20 or not _INTEGER_RE.fullmatch(raw):
        raise wrong
    value = int(raw)
    if value < minimum or value > maximum:
        raise wrong
    return value


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


def _check_process_id(process_id: str) -> str:
    """``process_id`` when it is a valid id, else a 400 (ids become file names)."""
    if not is_valid_process_id(process_id):
        raise ApiError(400, "invalid_process_id", "Process ids are 1-128 characters from A-Z a-z 0-9 . _ -.")
    return process_id


def _status_json(status: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """A status dict with ISO 8601 timestamps."""
    return _manager().status_to_json(status)


# ------------------------------------------------------------------------------------ views -----
@bp.get("/")
def dashboard() -> str:
    """The dashboard page (it carries no data; every read goes through the API's access rules)."""
    return render_template(
        "procman/dashboard.html",
        api_base=url_for("procman.list_processes").rsplit("/", 1)[0],  # honours SCRIPT_NAME
        # An authorize callback may still accept the token (request_has_valid_token()): offer the form.
        needs_token=bool(current_app.config.get(ConfigKeys.API_TOKEN)),
    )


@bp.get("/api/health")
def health() -> Response:
    """Open liveness check: counts only, and whether the watchers run ("degraded" when this worker's
    watcher thread had died (it is restarted by this request) or another worker's has stopped looping)."""
    manager = _manager()
    watcher_ran = manager.check_watcher()
    stats = manager.stats()
    stale = len(manager.watcher_health()["stale_watchers"])
    ok = watcher_ran and not stale
    return _json({"status": "ok" if ok else "degraded", "running": stats["running"], "queued": stats["queued"],
                  "watcher": "running" if watcher_ran else "not running", "workers_without_watcher": stale})


@bp.get("/api/processes")
@_action("read")
def list_processes() -> Response:
    """A page of processes, newest first, with the total matching."""
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        raise ApiError(400, "bad_request", f"'status' must be one of {', '.join(STATUSES)}.")
    limit = _int_arg("limit", 50, 1, 500)
    offset = _int_arg("offset", 0, 0, MAX_OFFSET)
    processes, total = _manager().list_page(status, limit=limit, offset=offset)
    return _json({"processes": [_status_json(p) for p in processes], "total": total, "limit": limit, "offset": offset})


@bp.get("/api/processes/<process_id>")
@_action("read")
def get_process(process_id: str) -> Response:
    """The status dict of one process."""
    status = _manager().get_process_status(_check_process_id(process_id))
    if status is None:
        raise ApiError(404, "not_found", f"No process with id {process_id!r}.")
    return _json(_status_json(status))


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
@_action("read")
def read_output_raw(process_id: str) -> Response:
    """``output?format=raw`` as its own operation: a generated client reads one content type per operation."""
    return t.cast(Response, read_output(process_id, raw=True))


@bp.get("/api/processes/<process_id>/output")
@_action("read")
def read_output(process_id: str, raw: bool = False) -> Response:
    """Output by byte offset: JSON text (whole characters only) or the raw bytes."""
    manager = _manager()
    process_id = _check_process_id(process_id)
    stream = request.args.get("stream", "stdout")
    if stream not in ("stdout", "stderr"):
        raise ApiError(400, "bad_request", "'stream' must be 'stdout' or 'stderr'.")
    fmt = "raw" if raw else request.args.get("format", "json")
    if fmt not in ("json", "raw"):
        raise ApiError(400, "bad_request", "'format' must be 'json' or 'raw'.")
    offset = _int_arg("offset", 0, 0, MAX_OFFSET)
    limit = _int_arg("limit", DEFAULT_OUTPUT_LIMIT, 0, MAX_OUTPUT_LIMIT)
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
    return _json({"data": decode_output(chunk), "offset": start, "next_offset": start + len(chunk),
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
@_action("read")
def events(process_id: str) -> Response:
    """Server-Sent Events read from the log files, so any worker can serve any process."""
    manager = _manager()
    process_id = _check_process_id(process_id)
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


@bp.post("/api/processes/<process_id>/stop")
@_action("stop")
def stop_process(process_id: str) -> Response:
    """Stop a running or queued process (409 once it has ended)."""
    manager = _manager()
    process_id = _check_process_id(process_id)
    row = manager.store.get(process_id)
    if row is None:
        raise ApiError(404, "not_found", f"No process with id {process_id!r}.")
    if row["status"] in FINAL or not manager.stop_process(process_id):
        raise ApiError(409, "already_ended", f"Process {process_id!r} has already ended.")
    status = manager.get_process_status(process_id) or {}
    # Processes of the run that outlived SIGKILL are in the answer, not only in the record.
    return _json({"stopped": True, "survivors": list(status.get("survivors") or []), "process": _status_json(status)})


@bp.delete("/api/processes/<process_id>")
@_action("delete")
def delete_process(process_id: str) -> Response:
    """Delete a finished process and its logs (409 while it runs)."""
    manager = _manager()
    process_id = _check_process_id(process_id)
    try:
        removed = manager.remove_process(process_id)
    except errors.ProcessNotFinished as exc:
        raise ApiError(409, "not_finished", str(exc)) from None
    if not removed:
        raise ApiError(404, "not_found", f"No process with id {process_id!r}.")
    return Response(status=204, headers={"Cache-Control": "no-store"})


@bp.get("/api/programs")
@_action("read")
def list_programs() -> Response:
    """The declared programs (without env values)."""
    programs = _manager().programs()
    return _json({"programs": [p.describe() for p in programs.values()]})


def _read_body(limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it passes ``limit`` bytes.

    Read in bounded chunks, so a chunked body (no Content-Length) is never held whole; after the 413
    the server discards the rest without keeping it (werkzeug) or closes the connection (gunicorn).
    """
    too_large = ApiError(413, "too_large", f"The body is larger than {limit} bytes.")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = request.stream.read(min(64 * 1024, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)


def _start_body() -> dict[str, t.Any]:
    """The validated start body; every wrong type is a 400 (``null`` only means "absent" for process_id)."""
    raw = _read_body(_settings().api_max_body)
    try:
        body = json.loads(raw) if raw.strip() else {}  # no body: every field takes its default
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly deep nesting
        raise ApiError(400, "bad_json", "The body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "The body must be a JSON object.")
    unknown = set(body) - {"process_id", "args", "env", "queue"}
    if unknown:
        raise ApiError(400, "bad_request", f"Unknown fields {sorted(unknown)}.")
    if "process_id" in body and body["process_id"] is not None and not is_valid_process_id(body["process_id"]):
        raise ApiError(400, "invalid_process_id", "Process ids are 1-128 characters from A-Z a-z 0-9 . _ -.")
    args = body.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ApiError(400, "bad_request", "'args' must be a list of strings.")
    env = body.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ApiError(400, "bad_request", "'env' must be an object of strings.")
    queue = body.get("queue", False)
    if not isinstance(queue, bool):
        raise ApiError(400, "bad_request", "'queue' must be true or false.")
    return {"process_id": body.get("process_id"), "args": args, "env": env, "queue": queue}


@bp.post("/api/programs/<name>/start")
@_action("start")
def start_program(name: str) -> Response:
    """Start a declared program: 201 started, 202 queued, 429 when the cap is reached."""
    manager = _manager()
    if name not in manager.programs():
        raise ApiError(404, "unknown_program", f"No program named {name!r} is declared.")
    body = _start_body()
    try:
        process_id, ok = manager.start_program(name, process_id=body["process_id"], args=body["args"],
                                               env=body["env"], queue=body["queue"])
    except errors.ProcessExists as exc:
        raise ApiError(409, "exists", str(exc)) from None
    except (errors.InvalidCommand, errors.InvalidProcessId) as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    except errors.StartError as exc:
        raise ApiError(400, "start_failed", str(exc)) from None
    if not ok:
        raise ApiError(429, "cap_reached", f"{manager.settings.max_processes} processes are running; "
                                           "try later or send \"queue\": true.")
    status = manager.get_process_status(process_id) or {}
    # replaced: the id belonged to a finished process, whose record and logs this start replaced.
    response = _json({"process": _status_json(status), "replaced": bool(status.get("replaced"))},
                     202 if status.get("status") == "queued" else 201)
    response.headers["Location"] = url_for("procman.get_process", process_id=process_id)
    return response


@bp.get("/api/stats")
@_action("read")
def stats() -> Response:
    """Counts of processes by status."""
    return _json(_manager().stats())


@bp.get("/api/openapi.json")
@_action("read")
def openapi() -> Response:
    """The OpenAPI 3.1 document of this API."""
    return _json(build_document(_settings().api_prefix, list(_manager().programs())))


def unknown(path: str) -> Response:
    """Every other URL (or method) under the prefix: a JSON 404, or 405 when another method would match."""
    adapter = current_app.create_url_adapter(request)
    allowed = []
    if adapter is None:  # pragma: no cover - a request always has an adapter
        raise NotFound()
    for method in ("GET", "POST", "DELETE"):
        try:
            endpoint, _ = adapter.match(request.path, method=method)
        except HTTPException:
            continue
        if endpoint != "procman.unknown":
            allowed.append(method)
    if allowed:
        raise MethodNotAllowed(valid_methods=allowed)
    raise NotFound(f"No such URL under the procman prefix: /{path}")


@bp.record
def _route_unknown(state: BlueprintSetupState) -> None:
    """Route every other URL under the prefix, with *any* method, to :func:`unknown`.

    A Flask route lists its methods, and a method outside the list (TRACE, PROPFIND, ...) would get
    werkzeug's HTML 405 from the routing, before any blueprint handler runs; a werkzeug rule
    without ``methods`` matches every method.
    """
    endpoint = f"{state.name_prefix}.{state.name}.unknown".lstrip(".")
    prefix = (state.url_prefix or "").rstrip("/")
    state.app.view_functions[endpoint] = unknown
    state.app.url_map.add(state.app.url_rule_class(f"{prefix}/<path:path>", endpoint=endpoint))


def register_blueprint(app: Flask, settings: Settings) -> None:
    """Register the one ``procman`` blueprint on ``app`` under ``PROCMAN_API_PREFIX``."""
    app.register_blueprint(bp, url_prefix=settings.api_prefix if settings.api_prefix != "/" else None)
