"""Shared fixtures: apps on tmp_path with a file database, PostgreSQL when available, helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import typing as t
import uuid

import pytest
import sqlalchemy as sa
from flask import Flask
from ray_support import ray_cluster  # noqa: F401 - the session's real Ray cluster (tests/ray_support.py)

from flask_procman import ProcMan

POSTGRES_URL = os.environ.get("PROCMAN_TEST_POSTGRES_URL")
PY = sys.executable


def py(code: str) -> list[str]:
    """A command running Python ``code``."""
    return [PY, "-c", code]


T = t.TypeVar("T")


def present(value: T | None) -> T:
    """``value``, asserting that it is not None (a status or record that must exist)."""
    assert value is not None
    return value


def wait_until(predicate: t.Callable[[], t.Any], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> t.Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def answers(url: str) -> bool:
    """True when ``url`` answers 200 now (a server a test started is up)."""
    import requests

    try:
        return requests.get(url, timeout=5).status_code == 200
    except (requests.ConnectionError, requests.Timeout):
        return False


def stop_server(proc: subprocess.Popen[t.Any], timeout: float = 30) -> None:
    """End a server a test started: SIGTERM, then SIGKILL if it has not exited after ``timeout``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def no_control_socket() -> list[str]:
    """Recent gunicorns open a control socket at one fixed path (~/.gunicorn): two servers at once
    would clash, so tests turn it off where the option exists."""
    from gunicorn.config import KNOWN_SETTINGS

    return ["--no-control-socket"] if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS) else []


def stop_everything(app: Flask) -> None:
    """Test teardown: stop every process of the app and its manager."""
    manager = app.extensions["procman"]
    try:
        manager.stop_all(timeout=1)
    except Exception:
        pass
    manager.shutdown(stop_processes=True)


def pg_schema_url(base: str, schema: str) -> str:
    """A PostgreSQL URL whose connections use their own schema (isolates tests)."""
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_url() -> t.Iterator[str]:
    """A fresh schema on the test PostgreSQL server (skips when PROCMAN_TEST_POSTGRES_URL is unset)."""
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL tests skipped: set PROCMAN_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    schema = "t_" + uuid.uuid4().hex[:12]
    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield pg_schema_url(POSTGRES_URL, schema)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_uri(request: pytest.FixtureRequest, tmp_path: t.Any) -> str:
    """Parametrises a test over a SQLite file and a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'records.sqlite3'}"
    return t.cast(str, request.getfixturevalue("pg_url"))


AppFactory = t.Callable[..., Flask]


@pytest.fixture
def make_app(tmp_path: t.Any) -> t.Iterator[AppFactory]:
    """Build apps on ``tmp_path`` (fast polling, short stop grace); every process is stopped after."""
    apps: list[tuple[Flask, ProcMan]] = []

    def factory(name: str = "app", *, procman: ProcMan | None = None, **config: t.Any) -> Flask:
        app = Flask(name, instance_path=str(tmp_path / "instance"))
        app.config.update(
            TESTING=True,
            PROCMAN_LOG_DIR=str(tmp_path / "logs"),
            PROCMAN_POLL_INTERVAL=0.1,
            PROCMAN_STOP_TIMEOUT=2.0,
        )
        app.config.update(config)
        ext = procman or ProcMan()
        ext.init_app(app)
        apps.append((app, ext))
        return app

    yield factory
    for app, _ext in apps:
        stop_everything(app)


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    """The default app for pytest-flask's ``client`` (cap 5, API open with a token)."""
    return make_app(PROCMAN_API_TOKEN="test-token-0123456789")


@pytest.fixture
def procman(app: Flask) -> ProcMan:
    """The ``ProcMan`` instance registered on ``app``."""
    return t.cast(ProcMan, app.extensions["procman"].extension)


def count_fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def children_of_self() -> list[int]:
    """Pids of this process's live (non-zombie) descendants."""
    import psutil

    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return alive
