"""The OpenAPI 3.1 document of the REST API (served at ``<prefix>/api/openapi.json``)."""

from __future__ import annotations

import typing as t

from .engine.logfiles import PROCESS_ID_RE
from .store import STATUSES

_ERROR = {"$ref": "#/components/schemas/Error"}
#: Largest byte or list offset the API accepts: a JSON-safe integer (larger ones overflow seek() and SQL).
MAX_OFFSET = 2**53 - 1


def _error_responses(*codes: int) -> dict[str, t.Any]:
    """The ``{"error": {"code", "message"}}`` responses of ``codes``."""
    text = {400: "Bad input", 401: "Authentication needed", 403: "Forbidden (or a state change without an "
            "Authorization or X-Requested-With header)", 404: "Not found",
            409: "Conflict with the process's state", 413: "Body too large", 429: "Concurrency cap reached",
            503: "The process database is unavailable"}
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": _ERROR}}} for c in codes}


def _json(schema: dict[str, t.Any], description: str = "OK") -> dict[str, t.Any]:
    """A JSON response of ``schema``."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _event(*names: str, content: dict[str, t.Any]) -> dict[str, t.Any]:
    """Server-Sent Events named ``names`` carry JSON of schema ``content`` in their data."""
    return {"if": {"properties": {"event": {"enum": list(names)}}},
            "then": {"properties": {"data": {"contentMediaType": "application/json", "contentSchema": content}}}}


EVENTS_DESCRIPTION = """A Server-Sent Events stream (read it as a stream: it stays open while the process runs).

Events, each with `id: <stdout offset>:<stderr offset>:<run tag>` (the byte offsets after it, to
resume with Last-Event-ID; the run tag makes an earlier run's offsets restart at 0 on a reused id)
and JSON in `data`:
- `stdout`, `stderr`: `{"data": text, "offset": n, "next_offset": m, "truncated", "time", "times"}`,
  a chunk of output with the time of its first byte;
- `times`: `{"stream", "times"}`, times of bytes already sent that the index learnt later;
- `progress`: the Process's `progress`, when it changes;
- `status`: the Process, when its status changes;
- `end`: the final Process, once, then the stream closes (`{"id", "status": "removed"}` if the
  record went away).
The stream starts with `retry: 2000`; comment lines (`: keepalive`) keep idle connections open.
The Event schema describes one event."""


def build_document(prefix: str, programs: t.Sequence[str] = ()) -> dict[str, t.Any]:
    """The document for an API mounted at ``prefix`` (e.g. ``/procman``) whose app declares ``programs``."""
    pid = {"name": "process_id", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": f"^{PROCESS_ID_RE.pattern}$"}}
    auth_errors = (401, 403, 503)  # 503 too: every answer past the access check may need the database
    status_ref = {"$ref": "#/components/schemas/Process"}
    #: A start replaced the finished record (and logs) of an earlier process with the same id.
    replaced = {"type": "boolean", "description": "True when a finished process of this id was replaced."}
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    raw_bytes = {"schema": {"type": "string", "format": "binary"}}
    output_params = [
        pid,
        {"name": "stream", "in": "query", "schema": {"type": "string", "enum": ["stdout", "stderr"]}},
        {"name": "offset", "in": "query", "description": "Byte offset to read from",
         "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}},
        {"name": "limit", "in": "query", "description": "Bytes to read at most (JSON text may carry up "
         "to 3 more, to send one whole character when the limit is smaller than it)",
         "schema": {"type": "integer", "minimum": 0, "maximum": 4194304}},
        {"name": "since", "in": "query", "description": "ISO 8601 time: read from the first byte written "
         "at or after it (to about a second; instead of offset)",
         "schema": {"type": "string", "format": "date-time"}},
    ]
    # Open strings, not enums: a client generated today must not reject a program or a status added later.
    names = ", ".join(sorted(programs)) or "none yet"
    program_name: dict[str, t.Any] = {"type": "string", "description": f"A declared program: {names}",
                                      **({"examples": sorted(programs)} if programs else {})}
    chunk_extras: dict[str, t.Any] = {
        "truncated": {"type": "boolean", "description": "bytes before 'offset' were dropped (max_log_bytes)"},
        "time": {**nullable_time, "description": "when the first byte was written (to about a second)"},
        "times": {"type": "array", "description": "[offset, unix time] pairs timing the data",
                  "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}},
    }
    progress = {"type": ["object", "null"], "required": ["done", "total", "fraction", "message", "updated_at",
                                                         "eta_seconds"],
                "properties": {"done": {"type": "number"}, "total": {"type": ["number", "null"]},
                               "fraction": {"type": ["number", "null"]}, "message": {"type": ["string", "null"]},
                               "updated_at": {"type": "string", "format": "date-time"},
                               "eta_seconds": {"type": ["number", "null"]}}}
    paths: dict[str, t.Any] = {
        "/api/health": {"get": {
            "summary": "Liveness and counts (open, reveals counts only)", "operationId": "health", "security": [],
            "responses": {"200": _json({"type": "object", "required": ["status", "running", "queued", "watcher",
                                                                       "workers_without_watcher"],
                                        "additionalProperties": False,
                                        "properties": {"status": {"enum": ["ok", "degraded"]},
                                                       "running": {"type": "integer"},
                                                       "queued": {"type": "integer"},
                                                       "watcher": {"enum": ["running", "not running"]},
                                                       "workers_without_watcher": {"type": "integer"}}}),
                          **_error_responses(503)},
        }},
        "/api/processes": {"get": {
            "summary": "List processes, newest first", "operationId": "listProcesses",
            "parameters": [
                {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(STATUSES)}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}},
                {"name": "backend", "in": "query", "schema": {"type": "string"},
                 "description": "Only the runs of this backend: 'local' or a PROCMAN_BACKENDS name"},
            ],
            "responses": {"200": _json({"type": "object", "required": ["processes", "total", "limit", "offset"],
                                        "properties": {"processes": {"type": "array", "items": status_ref},
                                                       "total": {"type": "integer"}, "limit": {"type": "integer"},
                                                       "offset": {"type": "integer"}}}),
                          **_error_responses(400, *auth_errors)},
        }},
        "/api/processes/{process_id}": {
            "get": {"summary": "Status of one process", "operationId": "getProcess", "parameters": [pid],
                    "responses": {"200": _json(status_ref), **_error_responses(400, *auth_errors, 404)}},
            "delete": {"summary": "Delete a finished process and its logs", "operationId": "deleteProcess",
                       "parameters": [pid],
                       "responses": {"204": {"description": "Deleted"},
                                     **_error_responses(400, *auth_errors, 404, 409)}},
        },
        "/api/processes/{process_id}/output": {"get": {
            "summary": "Read output by byte offset (non-destructive)", "operationId": "readOutput",
            "description": "JSON text. format=raw answers the bytes (application/octet-stream) as readOutputRaw "
                           "does; a generated client should call that operation for bytes.",
            "parameters": [*output_params,
                           {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "raw"]}}],
            "responses": {
                "200": {"description": "A chunk of output: JSON text (invalid UTF-8 replaced, never a split "
                                       "character) or, with format=raw, the bytes",
                        "headers": {"X-Next-Offset": {"description": "format=raw: the offset to read next",
                                                      "schema": {"type": "string", "pattern": "^[0-9]+$"}}},
                        "content": {
                    "application/json": {"schema": {
                        "type": "object", "required": ["data", "offset", "next_offset", "ended"],
                        "properties": {"data": {"type": "string"}, "offset": {"type": "integer"},
                                       "next_offset": {"type": "integer"}, "ended": {"type": "boolean"},
                                       **chunk_extras}}},
                    "application/octet-stream": raw_bytes,
                }},
                **_error_responses(400, *auth_errors, 404),
            },
        }},
        "/api/processes/{process_id}/output/raw": {"get": {
            "summary": "Read output bytes by offset, as they were written (non-destructive)",
            "operationId": "readOutputRaw", "parameters": output_params,
            "responses": {
                "200": {"description": "The bytes (any bytes: output is not necessarily UTF-8)",
                        "headers": {"X-Next-Offset": {"description": "The offset to read next",
                                                      "schema": {"type": "string", "pattern": "^[0-9]+$"}}},
                        "content": {"application/octet-stream": raw_bytes}},
                **_error_responses(400, *auth_errors, 404),
            },
        }},
        "/api/processes/{process_id}/events": {"get": {
            "summary": "Server-Sent Events: stdout, stderr, status, progress, times, end; id is '<stdout>:<stderr>:<run tag>'",
            "operationId": "processEvents",
            "parameters": [pid, {"name": "Last-Event-ID", "in": "header", "required": False,
                                 "description": "Resume both streams after this event id (empty: from the start)",
                                 "schema": {"type": "string", "pattern": "^([0-9]{1,18}:[0-9]{1,18}(:[0-9a-f]{32})?)?$"}},
                           {"name": "last_event_id", "in": "query", "required": False,
                            "description": "The same, for clients that cannot set headers (the header wins)",
                            "schema": {"type": "string", "pattern": "^([0-9]{1,18}:[0-9]{1,18}(:[0-9a-f]{32})?)?$"}}],
            "responses": {"200": {"description": EVENTS_DESCRIPTION,
                                  "content": {"text/event-stream": {
                                      # The body is text (what generated clients read); each event's schema
                                      # is OpenAPI 3.2's itemSchema, an extension in 3.1.
                                      "schema": {"type": "string", "contentMediaType": "text/event-stream"},
                                      "x-itemSchema": {"$ref": "#/components/schemas/Event"}}}},
                          **_error_responses(400, *auth_errors, 404)},
        }},
        "/api/processes/{process_id}/stop": {"post": {
            "summary": "Stop a running or queued process (its whole tree)", "operationId": "stopProcess",
            "parameters": [pid],
            "responses": {"200": _json({"type": "object", "required": ["stopped", "survivors", "process"],
                                        "properties": {"stopped": {"const": True},
                                                       "survivors": {"type": "array", "items": {"type": "integer"}},
                                                       "process": status_ref}}),
                          **_error_responses(400, *auth_errors, 404, 409)},
        }},
        "/api/programs": {"get": {
            "summary": "The programs the app declared", "operationId": "listPrograms",
            "responses": {"200": _json({"type": "object", "required": ["programs"], "properties": {
                "programs": {"type": "array", "items": {"$ref": "#/components/schemas/Program"}}}}),
                **_error_responses(*auth_errors)},
        }},
        "/api/programs/{name}/start": {"post": {
            "summary": "Start a declared program", "operationId": "startProgram",
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "description": "A declared program (any other name is a 404)", "schema": program_name}],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "properties": {
                    "process_id": {"type": ["string", "null"], "pattern": f"^{PROCESS_ID_RE.pattern}$",
                                   "description": "Default (or null): '<name>-<random>'"},
                    "args": {"type": "array", "items": {"type": "string"}},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}},
                    "queue": {"type": "boolean"}}}}}},
            "responses": {
                "201": {**_json({"type": "object", "required": ["process"], "properties": {
                                    "process": status_ref, "replaced": replaced}}, "Started"),
                        "headers": {"Location": {"schema": {"type": "string"}}}},
                "202": {**_json({"type": "object", "required": ["process"], "properties": {
                                    "process": status_ref, "replaced": replaced}}, "Queued"),
                        "headers": {"Location": {"schema": {"type": "string"}}}},
                **_error_responses(400, *auth_errors, 404, 409, 413, 429),
            },
        }},
        "/api/stats": {"get": {
            "summary": "Counts", "operationId": "stats",
            "responses": {"200": _json({"type": "object", "required": ["running", "queued", "max_processes", "by_status"],
                                        "properties": {"running": {"type": "integer"}, "queued": {"type": "integer"},
                                                       "max_processes": {"type": "integer"},
                                                       "by_status": {"type": "object",
                                                                     "additionalProperties": {"type": "integer"}}}}),
                          **_error_responses(*auth_errors)},
        }},
        "/api/openapi.json": {"get": {
            "summary": "This document", "operationId": "openapi",
            "responses": {"200": _json({"type": "object", "required": ["openapi", "paths"]}),
                          **_error_responses(401, 403)},
        }},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "flask-procman", "version": "1",
                 "description": "Start, watch, read and stop the processes of a Flask app."},
        "servers": [{"url": prefix.rstrip("/") or "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
                "OutputChunk": {"type": "object", "required": ["data", "offset", "next_offset"],
                                "additionalProperties": False, "properties": {
                                    "data": {"type": "string"}, "offset": {"type": "integer"},
                                    "next_offset": {"type": "integer"}, **chunk_extras}},
                "Event": {
                    "type": "object", "required": ["event", "id", "data"],
                    "properties": {"event": {"enum": ["stdout", "stderr", "status", "progress", "times", "end"]},
                                   "id": {"type": "string", "pattern": "^[0-9]+:[0-9]+(:[0-9a-f]{32})?$"},
                                   "data": {"type": "string"}, "retry": {"type": "integer"}},
                    "allOf": [
                        _event("stdout", "stderr", content={"$ref": "#/components/schemas/OutputChunk"}),
                        _event("status", content=status_ref),
                        _event("progress", content=progress),
                        _event("times", content={"type": "object", "required": ["stream", "times"], "properties": {
                            "stream": {"enum": ["stdout", "stderr"]}, "times": chunk_extras["times"]}}),
                        _event("end", content={"anyOf": [status_ref, {
                            "type": "object", "required": ["id", "status"], "additionalProperties": False,
                            "properties": {"id": {"type": "string"}, "status": {"const": "removed"}}}]}),
                    ]},
                "Program": {"type": "object", "required": ["name", "cmd"], "properties": {
                    "name": {"type": "string"}, "cmd": {"type": "array", "items": {"type": "string"}},
                    "cwd": {"type": ["string", "null"]}, "timeout": {"type": ["number", "null"]},
                    "allow_args": {"type": "boolean"}, "env_keys": {"type": "array", "items": {"type": "string"}},
                    "progress": {"type": ["string", "null"]}, "max_log_bytes": {"type": ["integer", "null"]},
                    "max_log_action": {"type": ["string", "null"]}, "backend": {"type": ["string", "null"]},
                    "resources": {"type": ["object", "null"]}}},
                "Process": {"type": "object", "required": ["id", "status", "cmd"], "properties": {
                    "id": {"type": "string"}, "status": {"type": "string", "examples": list(STATUSES),
                                                         "description": "One of " + ", ".join(STATUSES)},
                    "return_code": {"type": ["integer", "null"]}, "pid": {"type": ["integer", "null"]},
                    "cmd": {"type": "array", "items": {"type": "string"}}, "cwd": {"type": ["string", "null"]},
                    "program": {"type": ["string", "null"]}, "handler": {"type": ["string", "null"]},
                    "created_at": {"type": "string", "format": "date-time"}, "started_at": nullable_time,
                    "finished_at": nullable_time, "duration": {"type": ["number", "null"]},
                    "stdout": {"type": "string"}, "stderr": {"type": "string"},
                    "stdout_size": {"type": "integer"}, "stderr_size": {"type": "integer"},
                    "error": {"type": ["string", "null"]}, "metadata": {"type": ["object", "null"]},
                    "merge_stderr": {"type": "boolean"}, "env_keys": {"type": "array", "items": {"type": "string"}},
                    "timeout": {"type": ["number", "null"]},
                    "survivors": {"type": "array", "items": {"type": "integer"}},
                    "stdout_dropped": {"type": "integer"}, "stderr_dropped": {"type": "integer"},
                    "progress": progress, "replaced": {"type": "boolean"}, "run_tag": {"type": ["string", "null"]},
                    "backend": {"type": "string", "description": "The engine that runs it: 'local' or a "
                                "PROCMAN_BACKENDS name (a Ray cluster; its run tag is the Ray job's submission id)"},
                    "resources": {"type": ["object", "null"], "description": "What it reserves on its cluster"}}},
            },
        },
    }
