"""The randomised kill test: a worker that starts, queues and stops processes is SIGKILLed at a
random instant, a live manager reconciles, and then every live process of the test has a record
pointing to it, every ``starting``/``running`` record has a live process, nothing stays
``starting`` with nobody to settle it, and the cap holds. A few rounds run in the normal suite;
``make stress`` (``PROCMAN_STRESS_ROUNDS``) runs many.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import typing as t
import uuid

import psutil
import pytest
from conftest import AppFactory, wait_until
from rel_support import HERE, TESTS, all_problems

from flask_procman.engine.local import Identity
from flask_procman.engine.runtag import ENV_VAR
from flask_procman.manager import Manager

ROUNDS = int(os.environ.get("PROCMAN_STRESS_ROUNDS") or 4)
CAP = 3


def _environ(proc: psutil.Process) -> dict[str, str]:
    try:
        with open(f"/proc/{proc.pid}/environ", "rb") as fh:
            raw = fh.read()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def marked_processes(marker: str) -> dict[int, dict[str, str]]:
    """Live processes whose env holds ``KILLTEST=<marker>``: ``{pid: environ}``."""
    found = {}
    for proc in psutil.process_iter():
        env = _environ(proc)
        if env.get("KILLTEST") == marker:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found[proc.pid] = env
            except psutil.Error:
                pass
    return found


def problems(pm: Manager, prefix: str, marker: str) -> list[str]:
    """Every broken promise after a round (empty when all hold)."""
    rows = [r for r in pm.store.page()[0] if r["id"].startswith(prefix + "-")]
    by_tag = {r["run_tag"]: r for r in rows}
    found = [f"{k}: {v}" for k, v in all_problems(rows).items()]
    holding = [r for r in rows if r["status"] in ("starting", "running")]
    if len(holding) > CAP:
        found.append(f"{len(holding)} records hold a slot under a cap of {CAP}")
    for row in rows:
        if row["status"] == "starting":
            found.append(f"{row['id']} still starting (owner {row['owner']})")
        if row["status"] == "running" and row["pid"] is not None and not Identity(row["pid"], row["pid_started"]).is_alive():
            found.append(f"{row['id']} running but its process {row['pid']} is gone")
    for pid, env in marked_processes(marker).items():
        owner = by_tag.get(env.get(ENV_VAR, ""))
        if owner is None:
            found.append(f"process {pid} has no record (run tag {env.get(ENV_VAR)})")
        elif owner["status"] != "running":
            found.append(f"process {pid} is alive but its record {owner['id']} is {owner['status']}")
    return found


def _describe(pm: Manager, marker: str) -> list[str]:
    """The marked processes still alive, with their records (for a failure message)."""
    rows = {r["run_tag"]: r for r in pm.store.page()[0]}
    described = []
    for pid, env in marked_processes(marker).items():
        row = rows.get(env.get(ENV_VAR, ""))
        try:
            cmd = psutil.Process(pid).cmdline()
        except psutil.Error:
            cmd = []
        described.append(f"{pid} {cmd[:3]} record={row and {k: row[k] for k in ('id', 'status', 'pid', 'owner', 'error')}}")
    return described


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_a_worker_killed_at_a_random_instant_leaves_no_untracked_process(
        round_: int, make_app: AppFactory, database_uri: str, tmp_path: t.Any) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    app = make_app(PROCMAN_DATABASE_URI=database_uri, PROCMAN_MAX_PROCESSES=CAP)
    pm = t.cast(Manager, app.extensions["procman"])
    with app.app_context():
        pm.stats()  # the reconciling manager runs before, during and after the kill
    prefix, marker = f"r{round_}", uuid.uuid4().hex
    env = {
        **os.environ, "WORKER_INSTANCE": str(tmp_path / "instance"), "WORKER_DB": database_uri,
        "WORKER_LOGS": app.config["PROCMAN_LOG_DIR"], "WORKER_CAP": str(CAP), "WORKER_STOP_ON_EXIT": "0",
        "PYTHONPATH": os.pathsep.join([HERE, TESTS, os.environ.get("PYTHONPATH", "")]),
    }
    worker = subprocess.Popen([sys.executable, os.path.join(HERE, "kill_worker.py"), prefix, marker], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None and worker.stdout.readline() == "ready\n", worker.stderr
        delay = rng.uniform(0.0, 0.6)
        # Not a synchronisation: the random instant of the kill is the point of the test.
        try:
            worker.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            pass
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        with app.app_context():
            last: list[list[str]] = [[]]

            def reconciled() -> bool:
                last[0] = problems(pm, prefix, marker)
                return not last[0]

            try:
                wait_until(reconciled, timeout=30, interval=0.1, message="reconciliation")
            except AssertionError:
                raise AssertionError(f"seed {seed}, kill after {delay:.3f} s: {last[0]}") from None
            pm.stop_all(timeout=1)
            try:
                wait_until(lambda: not marked_processes(marker), timeout=20, message="every process stopped")
            except AssertionError:
                raise AssertionError(f"seed {seed}, kill after {delay:.3f} s: left alive "
                                     f"{_describe(pm, marker)}") from None
            assert not [r for r in pm.store.page()[0] if r["status"] in ("starting", "running", "queued")]
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.communicate()  # closes the pipes
        for pid in marked_processes(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
