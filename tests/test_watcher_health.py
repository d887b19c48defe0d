"""A watcher that meets an exception (SystemExit included) goes on; one whose thread died anyway is
noticed on the next use, restarted with a logged error, and follows what the dead one followed;
``/procman/api/health`` and ``flask procman stats`` say when a watcher is not running."""

from __future__ import annotations

import logging
import os
import threading
import time
import typing as t

import pytest
from conftest import PY, AppFactory, wait_until

from flask_procman.engine.watcher import Watcher

API = "/procman/api"


def test_a_systemexit_while_recording_an_end_does_not_kill_the_watcher(make_app: AppFactory, caplog: t.Any) -> None:
    app = make_app()
    manager = app.extensions["procman"]
    real = manager.record_end
    raised: list[str] = []

    def record_end_once_raising(process_id: str, *args: t.Any, **kwargs: t.Any) -> bool:
        if not raised:
            raised.append(process_id)
            raise SystemExit("a receiver called sys.exit()")
        return bool(real(process_id, *args, **kwargs))

    manager.record_end = record_end_once_raising
    with caplog.at_level(logging.WARNING, logger="flask_procman"), app.app_context():
        assert manager.start_process("first", [PY, "-c", "raise SystemExit(3)"])
        final = manager.wait("first", timeout=20)  # 0.1: the thread died, the end was never recorded
        assert (final["status"], final["return_code"]) == ("completed", 3)
        assert manager.start_process("second", ["true"])
        assert manager.wait("second", timeout=20)["status"] == "completed"
    assert raised == ["first"]
    assert "SystemExit" in caplog.text
    assert manager.watcher_health()["restarts"] == 0  # it never died


def test_a_dead_watcher_is_restarted_and_follows_what_the_dead_one_followed(
        make_app: AppFactory, caplog: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    real_loop = Watcher._loop
    deaths: list[Watcher] = []

    def loop_dying_once(self: Watcher) -> None:
        if not deaths:
            deaths.append(self)
            gate.wait(30)
            raise SystemExit("injected into the watcher thread")
        real_loop(self)

    monkeypatch.setattr(Watcher, "_loop", loop_dying_once)
    app = make_app()
    manager = app.extensions["procman"]
    client = app.test_client()
    with caplog.at_level(logging.ERROR, logger="flask_procman"), app.app_context():
        assert manager.start_process("orphaned", [PY, "-c", "import time; time.sleep(0.5); raise SystemExit(7)"])
        gate.set()  # the watcher thread dies, following "orphaned"
        wait_until(lambda: not manager.watcher_health()["running"], message="the watcher thread to die")
        health = client.get(f"{API}/health").get_json()
        assert (health["status"], health["watcher"]) == ("degraded", "not running")
        assert "was not running" in caplog.text and "injected into the watcher thread" in caplog.text
        final = manager.wait("orphaned", timeout=20)  # recorded by the new watcher
        assert (final["status"], final["return_code"]) == ("completed", 7)
        assert client.get(f"{API}/health").get_json()["watcher"] == "running"
        assert manager.watcher_health()["restarts"] == 1


def test_a_stale_heartbeat_of_a_live_worker_is_reported(make_app: AppFactory) -> None:
    """Another manager of this host, alive, whose watcher has not looped for a minute is reported
    by the CLI; the heartbeat of a manager that no longer runs is forgotten."""
    from flask_procman.engine import heartbeat
    from flask_procman.engine.identity import boot_id, owner_id

    app = make_app()
    manager = app.extensions["procman"]
    log_dir = manager.settings.log_dir
    with app.app_context():
        manager.stats()
    stuck = owner_id(manager.host, os.getpid(), "stuck123")  # a live process: this one
    gone = f"{manager.host}|999999999|1.0|nonce|{boot_id()}"
    heartbeat.beat(log_dir, stuck, stamp=time.monotonic() - 60)
    heartbeat.beat(log_dir, gone, stamp=time.monotonic() - 60)
    assert [b.owner for b in heartbeat.stale_watchers(log_dir, manager.host, max_age=10)] == [stuck]
    # This manager's own watcher beats every second: it is never stale.
    wait_until(lambda: manager.owner not in [b.owner for b in heartbeat.stale_watchers(log_dir, manager.host, 5.0)])
    result = app.test_cli_runner().invoke(args=["procman", "stats"])
    assert result.exit_code == 0, result.output
    assert f"watcher NOT RUNNING in {stuck}" in result.output
    with app.app_context():
        health = app.test_client().get(f"{API}/health").get_json()
    assert (health["status"], health["workers_without_watcher"]) == ("degraded", 1)
