"""The ``procman`` blueprint: JSON endpoints, the live events stream and the dashboard page."""

from __future__ import annotations

import hmac
import json
import logging
import time
import typing as t

from flask import Blueprint, Flask, Response, current_app, render_template, request, url_for
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from . import errors
from .config import ConfigKeys, Settings
from .engine.logfiles import decode_output, is_valid_process_id
from .facade import manager_for
from .openapi import build_document
from .store import FINAL, STATUSES

if t.TYPE_CHECKING:
    from .manager import Manager

log = logging.getLogger("flask_procman")

bp = Blueprint("procman", __name__, template_folder="dashboard/templates", static_folder="dashboard/static",
               static_url_path="/static")

MAX_OUTPUT_LIMIT = 4 * 1024 * 1024
DEFAULT_OUTPUT_LIMIT = 1024 * 1024
_SSE_CHUNK = 64 * 1024
_OPEN_ENDPOINTS = {"procman.static", "procman.health", "procman.dashboard", "procman.unknown"}


class ApiError(HTTPException):
    """An API error answered as ``{"error": {"code", "message"}}`` (an app may re-skin it)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(description=message)
        self.code = status
        self.error_code = code


def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    response = current_app.response_class(
        json.dumps({"error": {"code": code, "message": message}}), status=status, mimetype="application/json"
    )
    response.headers["Cache-Control"] = "no-store"
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _json(data: t.Any, status: int = 200) -> Response:
    response = current_app.response_class(json.dumps(data), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


def _manager() -> Manager:
    return manager_for()


def _settings() -> Settings:
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
    return _error_response(503, "store_unavailable", "The process database is unavailable; try again shortly.")


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("procman API: unexpected error")
    return _error_response(500, "internal_error", "Internal error (details are in the server log).")


def _int_arg(name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_request", f"'{name}' must be an integer.") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ApiError(400, "bad_request", f"'{name}' must be {bound}.")
    return value


def _check_process_id(process_id: str) -> str:
    if not is_valid_process_id(process_id):
        raise ApiError(400, "invalid_process_id", "Process ids are 1-128 characters from A-Z a-z 0-9 . _ -.")
    return process_id


def _status_json(status: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    return _manager().status_to_json(status)


# ------------------------------------------------------------------------------------ views -----
@bp.get("/")
def dashboard() -> str:
    """The dashboard page (it carries no data; every read goes through the API's access rules)."""
    return render_template(
        "procman/dashboard.html",
        api_base=_settings().api_prefix.rstrip("/") + "/api",
        needs_token=bool(current_app.config.get(ConfigKeys.API_TOKEN)) and _manager().extension.authorize_callback is None,
    )


@bp.get("/api/health")
def health() -> Response:
    """Open liveness check: counts only."""
    stats = _manager().stats()
    return _json({"status": "ok", "running": stats["running"], "queued": stats["queued"]})


@bp.get("/api/processes")
@_action("read")
def list_processes() -> Response:
    status = request.args.get("status") or None
    if status is not None and status not in STATUSES:
        raise ApiError(400, "bad_request", f"'status' must be one of {', '.join(STATUSES)}.")
    limit = _int_arg("limit", 50, 1, 500)
    offset = _int_arg("offset", 0, 0)
    processes, total = _manager().list_page(status, limit=limit, offset=offset)
    return _json({"processes": [_status_json(p) for p in processes], "total": total, "limit": limit, "offset": offset})


@bp.get("/api/processes/<process_id>")
@_action("read")
def get_process(process_id: str) -> Response:
    status = _manager().get_process_status(_check_process_id(process_id))
    if status is None:
        raise ApiError(404, "not_found", f"No process with id {process_id!r}.")
    return _json(_status_json(status))


def _utf8_complete(data: bytes) -> int:
    """Length of ``data`` without a trailing incomplete UTF-8 sequence (so text never splits a character)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if byte >= 0xC0:
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) - back if need > back else len(data)
    return len(data)


def _text_chunk(data: bytes, final: bool) -> bytes:
    """The part of ``data`` to decode now: all of it at the end, else up to the last whole character."""
    if final:
        return data
    keep = _utf8_complete(data)
    return data[:keep] if keep else data


@bp.get("/api/processes/<process_id>/output")
@_action("read")
def read_output(process_id: str) -> Response:
    manager = _manager()
    process_id = _check_process_id(process_id)
    stream = request.args.get("stream", "stdout")
    if stream not in ("stdout", "stderr"):
        raise ApiError(400, "bad_request", "'stream' must be 'stdout' or 'stderr'.")
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "raw"):
        raise ApiError(400, "bad_request", "'format' must be 'json' or 'raw'.")
    offset = _int_arg("offset", 0, 0)
    limit = _int_arg("limit", DEFAULT_OUTPUT_LIMIT, 0, MAX_OUTPUT_LIMIT)
    row = manager.store.get(process_id)
    if row is None:
        raise ApiError(404, "not_found", f"No process with id {process_id!r}.")
    data, next_offset = manager.read_output(process_id, stream, offset, limit)
    size = offset + len(data)
    ended = row["status"] in FINAL and len(data) < limit
    if fmt == "raw":
        response = current_app.response_class(data, mimetype="application/octet-stream")
        response.headers["X-Next-Offset"] = str(next_offset)
        response.headers["Cache-Control"] = "no-store"
        return response
    chunk = _text_chunk(data, final=ended or len(data) < 4 and len(data) == limit)
    return _json({"data": decode_output(chunk), "offset": offset, "next_offset": offset + len(chunk),
                  "ended": ended and offset + len(chunk) == size})


def _sse(event: str, data: t.Any, offsets: t.Sequence[int]) -> str:
    return f"id: {offsets[0]}:{offsets[1]}\nevent: {event}\ndata: {json.dumps(data)}\n\n"


@bp.get("/api/processes/<process_id>/events")
@_action("read")
def events(process_id: str) -> Response:
    """Server-Sent Events read from the log files, so any worker can serve any process."""
    manager = _manager()
    process_id = _check_process_id(process_id)
    last = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    offsets = [0, 0]
    if last:
        parts = last.split(":")
        if len(parts) != 2 or not all(p.isdigit() and len(p) <= 18 for p in parts):
            raise ApiError(400, "bad_request", "Last-Event-ID must be '<stdout offset>:<stderr offset>'.")
        offsets = [int(parts[0]), int(parts[1])]
    if manager.store.get(process_id) is None:
        raise ApiError(404, "not_found", f"No process with id {process_id!r}.")
    poll = min(0.25, manager.settings.poll_interval)

    def stream() -> t.Iterator[str]:
        yield "retry: 2000\n\n"
        last_status: tuple[t.Any, ...] | None = None
        last_beat = time.monotonic()
        while True:
            row = manager.store.get(process_id)
            if row is None:
                yield _sse("end", {"id": process_id, "status": "removed"}, offsets)
                return
            final = row["status"] in FINAL
            sent = False
            for index, name in enumerate(("stdout", "stderr")):
                while True:
                    data, _ = manager.read_output(process_id, name, offsets[index], _SSE_CHUNK)
                    chunk = _text_chunk(data, final=final)
                    if not chunk:
                        break
                    start = offsets[index]
                    offsets[index] += len(chunk)
                    sent = True
                    yield _sse(name, {"data": decode_output(chunk), "offset": start, "next_offset": offsets[index]},
                               offsets)
                    if len(data) < _SSE_CHUNK:
                        break
            key = (row["status"], row["pid"], row["return_code"])
            if key != last_status:
                last_status = key
                status = manager.status_to_json(manager.to_status(row, with_output=False))
                yield _sse("end" if final else "status", status, offsets)
                sent = True
                if final:
                    return
            elif final:
                yield _sse("end", manager.status_to_json(manager.to_status(row, with_output=False)), offsets)
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
    manager = _manager()
    process_id = _check_process_id(process_id)
    row = manager.store.get(process_id)
    if row is None:
        raise ApiError(404, "not_found", f"No process with id {process_id!r}.")
    if row["status"] in FINAL or not manager.stop_process(process_id):
        raise ApiError(409, "already_ended", f"Process {process_id!r} has already ended.")
    status = manager.get_process_status(process_id)
    return _json({"stopped": True, "process": _status_json(status or {})})


@bp.delete("/api/processes/<process_id>")
@_action("delete")
def delete_process(process_id: str) -> Response:
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
    programs = _manager().programs()
    return _json({"programs": [p.describe() for p in programs.values()]})


def _start_body() -> dict[str, t.Any]:
    limit = _settings().api_max_body
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", f"The body is larger than {limit} bytes.")
    raw = request.get_data(cache=True)
    if len(raw) > limit:
        raise ApiError(413, "too_large", f"The body is larger than {limit} bytes.")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "bad_json", "The body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "The body must be a JSON object.")
    unknown = set(body) - {"process_id", "args", "env", "queue"}
    if unknown:
        raise ApiError(400, "bad_request", f"Unknown fields {sorted(unknown)}.")
    if "process_id" in body and body["process_id"] is not None and not is_valid_process_id(body["process_id"]):
        raise ApiError(400, "invalid_process_id", "Process ids are 1-128 characters from A-Z a-z 0-9 . _ -.")
    args = body.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ApiError(400, "bad_request", "'args' must be a list of strings.")
    env = body.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ApiError(400, "bad_request", "'env' must be an object of strings.")
    queue = body.get("queue", False)
    if not isinstance(queue, bool):
        raise ApiError(400, "bad_request", "'queue' must be true or false.")
    return {"process_id": body.get("process_id"), "args": args, "env": env, "queue": queue}


@bp.post("/api/programs/<name>/start")
@_action("start")
def start_program(name: str) -> Response:
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
    response = _json({"process": _status_json(status)}, 202 if status.get("status") == "queued" else 201)
    response.headers["Location"] = url_for("procman.get_process", process_id=process_id)
    return response


@bp.get("/api/stats")
@_action("read")
def stats() -> Response:
    return _json(_manager().stats())


@bp.get("/api/openapi.json")
@_action("read")
def openapi() -> Response:
    return _json(build_document(_settings().api_prefix))


@bp.route("/<path:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
def unknown(path: str) -> Response:
    """Every other URL under the prefix: a JSON 404 (or 405 when another method would match)."""
    adapter = current_app.url_map.bind("localhost")
    allowed = []
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


def register_blueprint(app: Flask, settings: Settings) -> None:
    """Register the one ``procman`` blueprint on ``app`` under ``PROCMAN_API_PREFIX``."""
    app.register_blueprint(bp, url_prefix=settings.api_prefix if settings.api_prefix != "/" else None)
