"""The PostgreSQL server unreachable for a while: the app talks to it through a TCP proxy on
127.0.0.1 that the test stops (listener and every connection closed) and starts again on the same
port. Running processes go on, starts fail with ``StoreUnavailable``, an end that happens during
the outage is recorded once the database is back, with its real return code; the durable handler
runs once and nothing is duplicated.
"""

from __future__ import annotations

import logging
import typing as t

import pytest
import sqlalchemy as sa
from conftest import AppFactory, present, py, wait_until
from rel_support import TcpProxy, all_problems, proxied_url

from flask_procman import ProcMan, StoreUnavailable
from flask_procman.engine.local import Identity
from flask_procman.manager import Manager
from flask_procman.store import FINAL

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_proxy(pg_url: str) -> t.Iterator[TcpProxy]:
    """A proxy to the test server (torn down after the app: request it before ``make_app``)."""
    target = sa.engine.make_url(pg_url)
    proxy = TcpProxy((target.host or "127.0.0.1", target.port or 5432))
    proxy.start()
    yield proxy
    proxy.stop()


def test_postgres_outage_loses_nothing_and_duplicates_nothing(pg_url: str, pg_proxy: TcpProxy,
                                                              make_app: AppFactory, tmp_path: t.Any,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flask_procman")
    ext = ProcMan()
    runs: list[tuple[str, int | None]] = []

    @ext.on_complete("done")
    def done(process_id: str, return_code: int | None) -> None:
        runs.append((process_id, return_code))

    go = tmp_path / "go"
    app = make_app(procman=ext, PROCMAN_DATABASE_URI=proxied_url(pg_url, pg_proxy.port))
    pm = t.cast(Manager, app.extensions["procman"])
    ender = f"import os, sys, time\nwhile not os.path.exists({str(go)!r}):\n    time.sleep(0.01)\nprint('ending')\nsys.exit(7)\n"
    with app.app_context():
        assert pm.start_process("long", py("import time; time.sleep(60)"), handler="done")
        assert pm.start_process("ender", py(ender), handler="done")
        rows = {pid: pm.store.get(pid) for pid in ("long", "ender")}
        identities = {pid: Identity(row["pid"], row["pid_started"]) for pid, row in rows.items() if row}
        assert pg_proxy.connections > 0  # the app really goes through the proxy

        pg_proxy.stop()  # ------------------------------------------------------- outage begins
        with pytest.raises(StoreUnavailable, match="cannot be reached") as caught:
            pm.start_process("refused", ["true"], handler="done")
        assert "running processes go on" in str(caught.value)
        with pytest.raises(StoreUnavailable):
            pm.get_process_status("long")
        go.touch()  # "ender" ends during the outage
        wait_until(lambda: not identities["ender"].is_alive(), message="ender ended")
        wait_until(lambda: any("could not record the end of ender" in r.getMessage() for r in caplog.records),
                   message="a failed attempt to record the end")
        assert identities["long"].is_alive()  # running processes go on
        assert pm.read_output("ender") == (b"ending\n", 7)  # output needs no database

        pg_proxy.start()  # ------------------------------------------------------ the database is back
        final = pm.wait("ender", timeout=20)
        assert (final["status"], final["return_code"]) == ("completed", 7)
        assert pm.get_process_status("refused") is None  # the refused start left nothing
        assert present(pm.get_process_status("long"))["status"] == "running"
        assert pm.start_process("refused", py("print('now')"), handler="done")  # and its id is free
        assert pm.wait("refused", timeout=10)["stdout"] == "now\n"
        assert pm.stop_process("long", timeout=1)
        wait_until(lambda: len(runs) >= 3, message="handlers")
        records = pm.store.page()[0]
    assert sorted(r["id"] for r in records) == ["ender", "long", "refused"]
    assert all(r["status"] in FINAL for r in records) and not all_problems(records)
    assert sorted(runs) == [("ender", 7), ("long", -15), ("refused", 0)]  # each handler once


def _bounded(fn: t.Callable[[], t.Any], limit: float) -> tuple[BaseException | None, float]:
    """Run ``fn`` in a thread; fail the test (instead of hanging it) if it outlives ``limit``."""
    import threading
    import time

    caught: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the test
            caught.append(exc)

    began = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"still blocked after {limit} s"
    return (caught[0] if caught else None), time.monotonic() - began


def test_a_stalled_postgres_fails_operations_within_the_db_timeout(pg_url: str, pg_proxy: TcpProxy,
                                                                   make_app: AppFactory, tmp_path: t.Any) -> None:
    """The proxy accepts and reads but forwards nothing: starts, reads and stops fail with
    StoreUnavailable within a bound set by PROCMAN_DB_TIMEOUT; the watcher carries on and records
    an end that happened during the stall once the database answers again."""
    go = tmp_path / "go"
    app = make_app(PROCMAN_DATABASE_URI=proxied_url(pg_url, pg_proxy.port), PROCMAN_DB_TIMEOUT=1.0)
    pm = t.cast(Manager, app.extensions["procman"])
    ender = f"import os, sys, time\nwhile not os.path.exists({str(go)!r}):\n    time.sleep(0.01)\nsys.exit(5)\n"
    with app.app_context():
        assert pm.start_process("ender", py(ender))
        pg_proxy.stalled = True  # ---------------------------------------------- the stall begins
        for call in (lambda: pm.start_process("refused", ["true"]), lambda: pm.get_process_status("ender"),
                     lambda: pm.stop_process("ender"), lambda: pm.list_processes()):
            error, took = _bounded(call, 20)
            assert isinstance(error, StoreUnavailable), error
            assert took < 8, took  # a ping (1 s), then a fresh connect (1 s), with slack for a busy machine
        go.touch()  # ends during the stall
        pg_proxy.stalled = False  # ------------------------------------------- answers again
        final = pm.wait("ender", timeout=30)
        assert (final["status"], final["return_code"]) == ("completed", 5)
        assert pm.get_process_status("refused") is None
