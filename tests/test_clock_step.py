"""A wall-clock step (NTP, a VM resume) changes no identity: live owners stay alive, running
processes stay running and stops still reach them.

The step is simulated without touching the machine's clock: psutil's boot time (``btime`` of
/proc/stat, which the kernel derives from the wall clock, so a step moves it) is shifted in this
test process only, as every worker reading it after a real step would see it.
"""

from __future__ import annotations

import os
import signal
import typing as t

import psutil
import pytest
from conftest import present, wait_until
from test_workers import Workers

STEP = 3600.0  # one hour forward


def _step_the_clock(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """From now on this process sees the wall clock (and so /proc/stat's btime) ``seconds`` later."""
    import psutil._pslinux as pslinux

    real = pslinux.boot_time()
    monkeypatch.setattr(pslinux, "boot_time", lambda: real + seconds)
    assert abs(psutil.boot_time() - real - seconds) < 1


@pytest.fixture
def workers(tmp_path: t.Any, database_uri: str) -> t.Iterator[Workers]:
    w = Workers(tmp_path, database_uri)
    yield w
    w.close()


def test_after_a_clock_step_a_live_owner_is_not_judged_dead(workers: Workers, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = workers.spawn("start", "longjob:60")  # worker A starts a job before the step
    assert worker.stdout is not None and worker.stdout.readline().strip() == "started"
    _step_the_clock(monkeypatch, STEP)
    app = workers.app()  # worker B starts after the step
    pm = app.extensions["procman"]
    with app.app_context():
        # Two processes of B's own, one after the other: B's watcher has ticked (and so judged A's
        # owner id and A's job) several times by the time their ends are recorded.
        for name in ("tick1", "tick2"):
            assert pm.start_process(name, ["true"])
            assert pm.wait(name, timeout=20)["status"] == "completed"
        row = present(pm.store.get("longjob"))
        assert row["status"] == "running", row  # 0.1: adopted, judged dead, recorded "lost"
        assert row["owner"] != pm.owner
        job = psutil.Process(row["pid"])
        assert pm.stop_process("longjob", timeout=1)  # 0.1: signalled nothing
        final = present(pm.get_process_status("longjob"))
    assert final["status"] == "stopped"
    wait_until(lambda: not job.is_running() or job.status() == psutil.STATUS_ZOMBIE, timeout=10,
               message="the job to be killed")
    worker.send_signal(signal.SIGKILL)


def test_identity_of_a_real_process_survives_a_step(monkeypatch: pytest.MonkeyPatch) -> None:
    from flask_procman.engine import identity as ident

    me = ident.current_identity(os.getpid())
    assert me.is_alive() and me.boot_id == ident.boot_id()
    _step_the_clock(monkeypatch, -STEP)
    assert ident.process_start_time(os.getpid()) == me.started
    assert me.is_alive()
    assert ident.current_identity(os.getpid()) == me


def test_another_boot_or_another_start_is_another_process() -> None:
    from flask_procman.engine import identity as ident

    me = ident.current_identity(os.getpid())
    assert not ident.Identity(me.pid, me.started, "not-this-boot").is_alive()
    assert not ident.Identity(me.pid, me.started + 0.05).is_alive()
    assert ident.Identity(me.pid, me.started).is_alive()  # boot unknown: the start decides


def test_owner_ids_carry_the_boot_and_legacy_ones_still_read() -> None:
    from flask_procman.engine import identity as ident

    me = ident.current_identity(os.getpid())
    owner = ident.owner_identity(f"host|{me.pid}|{me.started:.6f}|abcd1234|{ident.boot_id()}")
    assert owner is not None and owner.boot_id == ident.boot_id() and owner.is_alive()
    # A 0.1 owner id: wall-clock start, no boot id; compared the 0.1 way (no clock step here).
    legacy = ident.owner_identity(f"host|{me.pid}|{psutil.Process().create_time():.6f}|abcd1234")
    assert legacy is not None and legacy.boot_id is None and legacy.is_alive()
    assert ident.owner_identity("garbage") is None and ident.owner_identity("h|x|1.0|n") is None
