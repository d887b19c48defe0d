"""Schemathesis over the served OpenAPI document: no 5xx, and every answer as the document says."""

from __future__ import annotations

import copy
import tempfile
import typing as t

import pytest
import schemathesis
from conftest import AppFactory, py
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from flask_procman import ProcMan
from flask_procman.manager import Manager

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

#: The only program fuzzing may start: ``python -c pass`` ignores any argument and the one variable.
HARMLESS = {"cmd": py("pass"), "allow_args": True, "env_keys": ["FUZZ_VALUE"], "timeout": 5}

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]


@pytest.fixture
def fuzz_app(make_app: AppFactory) -> Flask:
    """An app with the token, one harmless program and a few records to find."""
    app = make_app(PROCMAN_API_TOKEN=TOKEN, PROCMAN_PROGRAMS={"noop": HARMLESS})
    manager = t.cast(Manager, app.extensions["procman"])
    for process_id in ("done", "A", "0"):
        manager.start_process(process_id, py("print('é\\xff')"))
        manager.wait(process_id, timeout=15)
    return app


def _with_item_schemas(document: dict[str, t.Any]) -> dict[str, t.Any]:
    """``document`` with each event stream described the way schemathesis checks every event.

    OpenAPI 3.1 cannot say what each event of a stream is: the document declares the body a string
    (what generated clients read) and gives each event's schema as ``x-itemSchema``. Schemathesis
    reads OpenAPI 3.2's ``itemSchema`` (and then ``schema`` as the whole stream, as an array).
    """
    document = copy.deepcopy(document)
    for item in document["paths"].values():
        for operation in item.values():
            for response in operation["responses"].values():
                for media_type, content in response.get("content", {}).items():
                    if media_type == "text/event-stream":
                        assert content["schema"]["type"] == "string"
                        response["content"][media_type] = {"itemSchema": content["x-itemSchema"]}
    return document


def _served_schema() -> t.Any:
    """The document an app serves, loaded through WSGI at import time (so tests can be generated).

    The app is pure setup: serving the document starts no thread, opens no database and creates no
    folder. The requests themselves go to each test's own ``fuzz_app`` (``schemathesis.pytest.
    from_fixture`` would be the natural way, but breaks on pytest 9: ``Function._nodeid``).
    """
    document_app = Flask("procman-document", instance_path=tempfile.gettempdir() + "/procman-fuzz-never-created")
    document_app.config.update(PROCMAN_API_TOKEN=TOKEN, PROCMAN_PROGRAMS={"noop": HARMLESS})
    ProcMan(document_app)
    served = document_app.test_client().get("/procman/api/openapi.json", headers=AUTH).get_json()
    loaded = schemathesis.openapi.from_dict(_with_item_schemas(served))
    # The token is always sent (a wrong or missing one is tested in test_api.py): a case that drops it
    # would be a "negative" request for a reason that has nothing to do with the operation.
    loaded.config.generation.update(with_security_parameters=False)
    return loaded


schema = _served_schema()


def test_fuzzed_document_is_the_one_each_app_serves(fuzz_app: Flask) -> None:
    served = fuzz_app.test_client().get("/procman/api/openapi.json", headers=AUTH).get_json()
    assert _with_item_schemas(served) == schema.raw_schema


@schema.parametrize()  # type: ignore[untyped-decorator]
# One app for all the examples of an operation, on purpose: records accumulate as in a real deployment.
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_api_conforms_to_its_document(case: t.Any, fuzz_app: Flask) -> None:
    response = case.call_and_validate(app=fuzz_app, headers=AUTH, checks=CHECKS)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    manager = t.cast(Manager, fuzz_app.extensions["procman"])
    for row in manager.store.page()[0]:  # only the harmless program or the seeded records ever ran
        assert row["cmd"][:3] == py("pass") or row["id"] in ("done", "A", "0"), row
