"""The ``procman`` blueprint: its access rules, its errors, the JSON endpoints and the dashboard page.

The output reads and the live events stream are in :mod:`flask_procman.api_output`, on the same blueprint."""

from __future__ import annotations

import hmac
import json
import logging
import re
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
from .engine.logfiles import is_valid_process_id
from .facade import manager_for
from .openapi import MAX_OFFSET, build_document
from .store import FINAL, STATUSES

if t.TYPE_CHECKING:
    from .manager import Manager

log = logging.getLogger("flask_procman")

bp = Blueprint("procman", __name__, template_folder="dashboard/templates", static_folder="dashboard/static",
               static_url_path="/static")

_INTEGER_RE = re.compile(r"-?[0-9]+")
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


def json_response(data: t.Any, status: int = 200) -> Response:
    """A JSON answer that no cache keeps (statuses and output change all the time)."""
    response = current_app.response_class(json.dumps(data), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


def current_manager() -> Manager:
    """The current app's manager."""
    return manager_for()


def _settings() -> Settings:
    """The current app's settings (read per request: several apps may share the blueprint)."""
    return current_manager().settings


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
    callback = current_manager().extension.authorize_callback
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


def procman_action(name: str) -> t.Callable[[t.Callable[..., t.Any]], t.Callable[..., t.Any]]:
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


def int_arg(name: str, default: int, minimum: int, maximum: int) -> int:
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


def checked_process_id(process_id: str) -> str:
    """``process_id`` when it is a valid id, else a 400 (ids become file names)."""
    if not is_valid_process_id(process_id):
        raise ApiError(400, "invalid_process_id", "Process ids are 1-128 characters from A-Z a-z 0-9 . _ -.")
    return process_id


def _status_json(status: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """A status dict with ISO 8601 timestamps."""
    return current_manager().status_to_json(status)


# ------------------------------------------------------------------------------------ views -----
@bp.get("/")
def dashboard() -> str:
    """The dashboard page (it carries no data; every read goes through the API's access rules)."""
    return render_template(
        "procman/dashboard.html",
        api_base=url_for("procman.list_processes").rsplit("/", 1)[0],  # honours SCRIPT_NAME
        # An authorize callback may still accept the token (request_has_valid_token()): offer the form.
        needs_token=bool(current_app.config.get(ConfigKeys.API_TOKEN)), backends=["local", *_settings().backends])


@bp.get("/api/health")
def health() -> Response:
    """Open liveness check: counts only, and whether the watchers run ("degraded" when this worker's
    watcher thread had died (it is restarted by this request) or another worker's has stopped looping)."""
    manager = current_manager()
    watcher_ran = manager.check_watcher()
    stats = manager.stats()
    stale = len(manager.watcher_health()["stale_watchers"])
    ok = watcher_ran and not stale
    return json_response({"status": "ok" if ok else "degraded", "running": stats["running"], "queued": stats["queued"],
                  "watcher": "running" if watcher_ran else "not running", "workers_without_watcher": stale})


@bp.get("/api/processes")
@procman_action("read")
def list_processes() -> Response:
    """A page of processes, newest first, with the total matching."""
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        raise ApiError(400, "bad_request", f"'status' must be one of {', '.join(STATUSES)}.")
    limit = int_arg("limit", 50, 1, 500)
    offset = int_arg("offset", 0, 0, MAX_OFFSET)
    if (backend := request.args.get("backend") or None) not in (None, "local", *_settings().backends):
        raise ApiError(400, "bad_request", f"'backend' must be 'local' or one of PROCMAN_BACKENDS, not {backend!r}.")
    processes, total = current_manager().list_page(status, limit=limit, offset=offset, backend=backend)
    return json_response({"processes": [_status_json(p) for p in processes], "total": total, "limit": limit, "offset": offset})


@bp.get("/api/processes/<process_id>")
@procman_action("read")
def get_process(process_id: str) -> Response:
    """The status dict of one process."""
    status = current_manager().get_process_status(checked_process_id(process_id))
    if status is None:
        raise ApiError(404, "not_found", f"No process with id {process_id!r}.")
    return json_response(_status_json(status))


@bp.post("/api/processes/<process_id>/stop")
@procman_action("stop")
def stop_process(process_id: str) -> Response:
    """Stop a running or queued process (409 once it has ended)."""
    manager = current_manager()
    process_id = checked_process_id(process_id)
    row = manager.store.get(process_id)
    if row is None:
        raise ApiError(404, "not_found", f"No process with id {process_id!r}.")
    if row["status"] in FINAL or not manager.stop_process(process_id):
        raise ApiError(409, "already_ended", f"Process {process_id!r} has already ended.")
    status = manager.get_process_status(process_id) or {}
    # Processes of the run that outlived SIGKILL are in the answer, not only in the record.
    return json_response({"stopped": True, "survivors": list(status.get("survivors") or []), "process": _status_json(status)})


@bp.delete("/api/processes/<process_id>")
@procman_action("delete")
def delete_process(process_id: str) -> Response:
    """Delete a finished process and its logs (409 while it runs)."""
    manager = current_manager()
    process_id = checked_process_id(process_id)
    try:
        removed = manager.remove_process(process_id)
    except errors.ProcessNotFinished as exc:
        raise ApiError(409, "not_finished", str(exc)) from None
    if not removed:
        raise ApiError(404, "not_found", f"No process with id {process_id!r}.")
    return Response(status=204, headers={"Cache-Control": "no-store"})


@bp.get("/api/programs")
@procman_action("read")
def list_programs() -> Response:
    """The declared programs (without env values)."""
    programs = current_manager().programs()
    return json_response({"programs": [p.describe() for p in programs.values()]})


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
@procman_action("start")
def start_program(name: str) -> Response:
    """Start a declared program: 201 started, 202 queued, 429 when the cap is reached."""
    manager = current_manager()
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
    response = json_response({"process": _status_json(status), "replaced": bool(status.get("replaced"))},
                     202 if status.get("status") == "queued" else 201)
    response.headers["Location"] = url_for("procman.get_process", process_id=process_id)
    return response


@bp.get("/api/stats")
@procman_action("read")
def stats() -> Response:
    """Counts of processes by status."""
    return json_response(current_manager().stats())


@bp.get("/api/openapi.json")
@procman_action("read")
def openapi() -> Response:
    """The OpenAPI 3.1 document of this API."""
    return json_response(build_document(_settings().api_prefix, list(current_manager().programs())))


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


# The output views register themselves on ``bp``: importing them here makes every importer of the
# blueprint (register_blueprint above) get them too.
from . import api_output  # noqa: E402, F401  (after bp and the helpers it imports exist)
