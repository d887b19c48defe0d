"""The ``flask procman`` commands: through Flask's CLI runner, and as real ``flask`` subprocesses
sharing the database and log folder with the test process's own app (as an operator's shell
shares them with the web workers)."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import textwrap
import time
import typing as t
import zoneinfo

import psutil
import pytest
from click.testing import Result
from conftest import PY, AppFactory, present, py, wait_until
from flask import Flask

from flask_procman import cli_output
from flask_procman.engine.local import Identity
from flask_procman.manager import Manager

SLEEP = py("import time; time.sleep(60)")
SIGTERM_SELF = py("import os, signal; os.kill(os.getpid(), signal.SIGTERM)")


def invoke(app: Flask, *args: str) -> Result:
    """Run ``flask procman ARGS`` in this process with Flask's CLI runner."""
    return app.test_cli_runner().invoke(args=["procman", *args], catch_exceptions=False)


def manager_of(app: Flask) -> Manager:
    """The app's manager."""
    return t.cast(Manager, app.extensions["procman"])


def status_of(app: Flask, process_id: str) -> dict[str, t.Any]:
    """The status dict of a process that must exist."""
    status = manager_of(app).get_process_status(process_id)
    assert status is not None, f"no process {process_id!r}"
    return status


def record(manager: Manager, process_id: str) -> dict[str, t.Any]:
    """The raw record of a process that must exist (read without starting the manager's engine)."""
    row = manager.store.get(process_id)
    assert row is not None, f"no record {process_id!r}"
    return row


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has ended)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


# ==================================================================== the CLI runner ==============
@pytest.fixture
def finished(make_app: AppFactory) -> Flask:
    """An app with two finished processes: ``a`` (5 stdout lines, stderr, exit 0), ``b`` (exit 3)."""
    app = make_app()
    manager = manager_of(app)
    code = "import sys\nfor i in range(1, 6): print(f'line{i}')\nsys.stderr.write('oops\\n')"
    assert manager.start_process("a", py(code))
    assert manager.start_process("b", py("import sys; sys.stdout.buffer.write(b'\\xff\\xferaw'); sys.exit(3)"))
    assert manager.wait("a", timeout=10)["status"] == "completed"
    assert manager.wait("b", timeout=10)["return_code"] == 3
    return app


def test_list_table_and_json(finished: Flask) -> None:
    result = invoke(finished, "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "PID", "STARTED", "DURATION", "RC", "PROGRESS", "COMMAND"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"a", "b"}
    assert rows["a"][1] == "completed" and rows["b"][1] == "completed"
    assert rows["b"][7] == "3"  # RC column (STARTED is three words: date, time, zone)

    result = invoke(finished, "list", "--status", "completed", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert [p["id"] for p in data] == ["b", "a"]  # newest first
    assert isinstance(data[0]["started_at"], str) and data[0]["return_code"] == 3

    assert json.loads(invoke(finished, "list", "--status", "running", "--json").stdout) == []
    empty = invoke(finished, "list", "--status", "queued")
    assert empty.exit_code == 0 and empty.stdout == "" and "No processes" in empty.stderr


def test_status_human_and_json(finished: Flask) -> None:
    result = invoke(finished, "status", "b")
    assert result.exit_code == 0
    fields = dict(re.split(r":\s+", line, maxsplit=1) for line in result.stdout.splitlines())
    assert fields["status"] == "completed" and fields["return code"] == "3"
    assert fields["stdout"] == "5 bytes"

    data = json.loads(invoke(finished, "status", "a", "--json").stdout)
    assert data["id"] == "a" and data["return_code"] == 0 and data["stdout"].startswith("line1\n")
    assert data["stderr"] == "oops\n" and isinstance(data["finished_at"], str)

    missing = invoke(finished, "status", "nope")
    assert missing.exit_code == 1 and "No process with id 'nope'" in missing.stderr and missing.stdout == ""
    invalid = invoke(finished, "status", "../etc")
    assert invalid.exit_code == 1 and "Invalid process id" in invalid.stderr


@pytest.mark.parametrize(("zone", "name"), [("Asia/Kolkata", "IST"), ("UTC", "UTC"), ("Etc/GMT-3", "+03")])
def test_times_are_local_and_name_their_zone(finished: Flask, monkeypatch: pytest.MonkeyPatch,
                                             zone: str, name: str) -> None:
    """Issue 9: times were local with no zone. ``Etc/GMT-3`` has no name but its offset."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        status = invoke(finished, "status", "a").stdout
        listed = invoke(finished, "list").stdout
    finally:
        monkeypatch.undo()
        time.tzset()
    fields = dict(re.split(r":\s+", line, maxsplit=1) for line in status.splitlines())
    started = present(manager_of(finished).get_process_status("a"))["started_at"]
    expected = started.astimezone(zoneinfo.ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")
    assert fields["started"] == f"{expected} {name}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d " + re.escape(name), fields["finished"])
    assert f" {expected} {name} " in next(line for line in listed.splitlines() if line.startswith("a "))


def test_logs_raw_bytes_tail_stderr_and_follow_of_an_ended_process(finished: Flask) -> None:
    full = b"".join(b"line%d\n" % i for i in range(1, 6))
    assert invoke(finished, "logs", "a").stdout_bytes == full
    assert invoke(finished, "logs", "a", "--tail", "2").stdout_bytes == b"line4\nline5\n"
    assert invoke(finished, "logs", "a", "-n", "0").stdout_bytes == b""
    assert invoke(finished, "logs", "a", "--tail", "99").stdout_bytes == full
    assert invoke(finished, "logs", "a", "--stderr").stdout_bytes == b"oops\n"
    assert invoke(finished, "logs", "b").stdout_bytes == b"\xff\xferaw"  # raw, not decoded
    assert invoke(finished, "logs", "b", "--stderr").stdout_bytes == b""

    follow = invoke(finished, "logs", "b", "--follow")
    assert follow.exit_code == 3 and follow.stdout_bytes == b"\xff\xferaw"
    follow = invoke(finished, "logs", "a", "--follow", "--tail", "1")
    assert follow.exit_code == 0 and follow.stdout_bytes == b"line5\n"

    assert invoke(finished, "logs", "nope").exit_code == 1
    assert invoke(finished, "logs", "a", "--tail", "-1").exit_code == 2


@pytest.mark.parametrize(("status", "return_code", "expected"), [
    ("completed", 0, 0), ("completed", 3, 3), ("stopped", -15, 143), ("timed_out", -9, 137),
    ("failed", None, 1), ("lost", None, 1), ("completed", 300, 1),
])
def test_exit_code_of_an_ended_process(status: str, return_code: int | None, expected: int) -> None:
    assert cli_output.exit_code(status, return_code) == expected


class _BytesManager:
    """Stands in for a manager whose stdout log holds ``data``; counts the bytes read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.bytes_read = 0

    def read_output(self, process_id: str, stream: str, offset: int, limit: int) -> tuple[bytes, int]:
        chunk = self.data[offset:offset + limit]
        self.bytes_read += len(chunk)
        return chunk, offset + len(chunk)


@pytest.mark.parametrize("data", [b"", b"\n", b"\n\n\n", b"one", b"one\n", b"a\nbb\n\nccc", b"a\nbb\n\nccc\n",
                                  b"x" * 50 + b"\n" + b"y" * 3 + b"\n\n" + b"z" * 20])
def test_tail_start_matches_the_last_lines_at_every_block_size(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = re.findall(rb"[^\n]*\n|[^\n]+\Z", data)
    for block in (1, 2, 3, 7, 64 * 1024):
        monkeypatch.setattr(cli_output, "TAIL_BLOCK", block)
        for n in range(len(lines) + 2):
            fake = _BytesManager(data)
            start = cli_output.tail_start(t.cast(Manager, fake), "p", "stdout", len(data), n)
            expected = b"".join(lines[max(0, len(lines) - n):]) if n else b""
            assert data[start:] == expected, (block, n)


def test_tail_reads_only_the_end_of_a_big_log() -> None:
    data = b"".join(b"%08d %s\n" % (i, b"x" * 90) for i in range(200_000))  # ~20 MB
    fake = _BytesManager(data)
    start = cli_output.tail_start(t.cast(Manager, fake), "p", "stdout", len(data), 3)
    assert data[start:].splitlines()[0].startswith(b"00199997 ")
    assert fake.bytes_read <= cli_output.TAIL_BLOCK


def test_stop_remove_and_their_failures(make_app: AppFactory) -> None:
    app = make_app()
    manager = manager_of(app)
    assert manager.start_process("sleeper", SLEEP)
    pid = status_of(app, "sleeper")["pid"]

    busy = invoke(app, "remove", "sleeper")
    assert busy.exit_code == 1 and "stop it before removing" in busy.stderr

    result = invoke(app, "stop", "sleeper", "--timeout", "2")
    assert result.exit_code == 0, result.output
    assert "Stopped sleeper (stopped" in result.stderr
    assert status_of(app, "sleeper")["status"] == "stopped" and not alive(pid)

    again = invoke(app, "stop", "sleeper")
    assert again.exit_code == 1 and "already ended (stopped)" in again.stderr
    unknown = invoke(app, "stop", "nope")
    assert unknown.exit_code == 1 and "No process with id 'nope'" in unknown.stderr
    assert invoke(app, "stop", "sleeper", "--timeout", "-1").exit_code == 2

    assert invoke(app, "remove", "sleeper").exit_code == 0
    assert manager.get_process_status("sleeper") is None
    assert not os.path.exists(os.path.join(manager.settings.log_dir, "sleeper"))
    gone = invoke(app, "remove", "sleeper")
    assert gone.exit_code == 1 and "No process with id" in gone.stderr


def test_stop_a_queued_process(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_MAX_PROCESSES=1)
    manager = manager_of(app)
    assert manager.start_process("first", SLEEP)

    refused = invoke(app, "start", "second", "--", *SLEEP)
    assert refused.exit_code == 1 and "PROCMAN_MAX_PROCESSES" in refused.stderr and "--queue" in refused.stderr
    assert manager.get_process_status("second") is None

    queued = invoke(app, "start", "--queue", "second", "--", *SLEEP)
    assert queued.exit_code == 0 and queued.stdout == "second\n" and "Queued second" in queued.stderr
    assert status_of(app, "second")["status"] == "queued"
    assert invoke(app, "stop", "second").exit_code == 0
    assert status_of(app, "second")["status"] == "stopped"


def test_prune_and_stats(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_RETENTION=0)
    result = invoke(app, "start", "--wait", "quick", "--", *py("pass"))
    assert result.exit_code == 0
    stats = json.loads(invoke(app, "stats", "--json").stdout)
    assert stats["by_status"] == {"completed": 1} and stats["running"] == 0 and stats["max_processes"] == 5
    human = invoke(app, "stats").stdout
    assert re.search(r"running:\s+0 / 5", human) and re.search(r"completed:\s+1", human)

    pruned = invoke(app, "prune")
    assert pruned.exit_code == 0 and "Removed 1 finished process." in pruned.stderr
    assert manager_of(app).get_process_status("quick") is None
    assert "Removed 0 finished processes." in invoke(app, "prune").stderr

    forever = make_app("forever", PROCMAN_RETENTION=None)
    kept = invoke(forever, "prune")
    assert kept.exit_code == 0 and "nothing pruned" in kept.stderr


def test_start_wait_streams_both_logs_and_exits_with_the_return_code(make_app: AppFactory, tmp_path: t.Any) -> None:
    app = make_app()
    code = "import sys; print('to out'); sys.stderr.write('to err\\n'); sys.exit(4)"
    result = invoke(app, "start", "--wait", "w1", "--", *py(code))
    assert result.exit_code == 4
    assert result.stdout_bytes == b"to out\n"
    assert "to err\n" in result.stderr and "w1 completed, return code 4" in result.stderr

    killed = invoke(app, "start", "--wait", "sig", "--", *SIGTERM_SELF)
    assert killed.exit_code == 128 + 15
    assert status_of(app, "sig")["return_code"] == -15

    timed_out = invoke(app, "start", "--wait", "--timeout", "0.3", "slow", "--", *SLEEP)
    assert timed_out.exit_code == 128 + 15 and "slow timed_out" in timed_out.stderr

    workdir = tmp_path / "work"
    workdir.mkdir()
    code = "import os, sys; print(os.environ['GREETING'], os.getcwd()); sys.stderr.write('merged\\n')"
    merged = invoke(app, "start", "--wait", "--env", "GREETING=hi there", "--cwd", str(workdir), "--merge-stderr",
                    "env1", "--", *py(code))
    assert merged.exit_code == 0, merged.output
    assert merged.stdout_bytes == f"hi there {workdir}\nmerged\n".encode()
    status = status_of(app, "env1")
    assert status["env_keys"] == ["GREETING"] and status["merge_stderr"]
    assert invoke(app, "logs", "env1", "--stderr").exit_code == 1  # merged: no stderr log

    missing = invoke(app, "start", "bad", "--", "/no/such/program")
    assert missing.exit_code == 1 and "Could not start" in missing.stderr
    assert status_of(app, "bad")["status"] == "failed"
    exists = invoke(app, "start", "w1", "--", *py("pass"))
    assert exists.exit_code == 0  # a finished id may be reused


def test_start_without_wait_prints_the_id_and_leaves_it_running(make_app: AppFactory) -> None:
    app = make_app()
    result = invoke(app, "start", "bg", "--", *SLEEP)
    assert result.exit_code == 0 and result.stdout == "bg\n" and "Started bg (pid" in result.stderr
    status = status_of(app, "bg")
    assert status["status"] == "running" and alive(status["pid"])
    dup = invoke(app, "start", "bg", "--", *SLEEP)
    assert dup.exit_code == 1 and "already running or queued" in dup.stderr


@pytest.mark.parametrize("args", [
    ["status"],                           # missing argument
    ["start", "x"],                       # missing command
    ["start", "x", "python", "-c", "1"],  # options of the command without "--"
    ["start", "--env", "NOEQUALS", "x", "--", "true"],
    ["list", "--status", "bogus"],
    ["frobnicate"],
    ["logs", "x", "--tail", "many"],
])
def test_usage_errors_exit_2(make_app: AppFactory, args: list[str]) -> None:
    result = invoke(make_app(), *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and "Usage:" in result.stderr


def test_run_declared_programs(make_app: AppFactory) -> None:
    programs = {
        "hello": {"cmd": py("import sys; print('hello', *sys.argv[1:])"), "allow_args": True},
        "fixed": {"cmd": py("import os; print(os.environ.get('LEVEL'))"), "env_keys": ["LEVEL"], "timeout": 30},
    }
    app = make_app(PROCMAN_PROGRAMS=programs)
    result = invoke(app, "run", "--wait", "hello", "--", "a", "-b")
    assert result.exit_code == 0 and result.stdout_bytes == b"hello a -b\n"

    started = invoke(app, "run", "--id", "fixed-1", "--env", "LEVEL=3", "fixed")
    assert started.exit_code == 0 and started.stdout == "fixed-1\n"
    final = manager_of(app).wait("fixed-1", timeout=10)
    assert final["stdout"] == "3\n" and final["program"] == "fixed"

    generated = invoke(app, "run", "hello")
    process_id = generated.stdout.strip()
    assert generated.exit_code == 0 and process_id.startswith("hello-")
    assert manager_of(app).wait(process_id, timeout=10)["stdout"] == "hello\n"

    unknown = invoke(app, "run", "nope")
    assert unknown.exit_code == 1 and "No program named 'nope'" in unknown.stderr
    refused = invoke(app, "run", "fixed", "--", "arg")
    assert refused.exit_code == 1 and "does not accept arguments" in refused.stderr
    refused = invoke(app, "run", "--env", "OTHER=1", "fixed")
    assert refused.exit_code == 1 and "OTHER" in refused.stderr

    listed = invoke(app, "programs")
    assert listed.exit_code == 0 and "hello:" in listed.stdout and "env: LEVEL" in listed.stdout
    assert {p["name"] for p in json.loads(invoke(app, "programs", "--json").stdout)} == {"hello", "fixed"}


# ==================================================================== real subprocesses ===========
CLIAPP = '''\
from flask import Flask

from flask_procman import ProcMan


def create_app():
    app = Flask("cliapp", instance_path={instance!r})
    app.config.update(
        PROCMAN_LOG_DIR={logs!r},
        PROCMAN_DATABASE_URI={database!r},
        PROCMAN_POLL_INTERVAL=0.1,
        PROCMAN_STOP_TIMEOUT=2.0,
        PROCMAN_PROGRAMS={programs!r},
    )
    ProcMan(app)

    @app.route("/")
    def index():
        return "ok"

    return app
'''


class Shared(t.NamedTuple):
    """The test process's own app ("the web worker") and a runner of ``flask`` subprocesses."""

    app: Flask
    flask: t.Callable[..., subprocess.CompletedProcess[bytes]]
    popen: t.Callable[..., subprocess.Popen[bytes]]
    tmp_path: t.Any


@pytest.fixture
def shared(make_app: AppFactory, tmp_path: t.Any) -> Shared:
    """A ``cliapp.py`` in tmp_path using the same database and log folder as the returned app."""
    database = f"sqlite:///{tmp_path / 'instance' / 'procman.sqlite3'}"
    programs = {"hello": {"cmd": py("import sys; print('hello', *sys.argv[1:])"), "allow_args": True}}
    (tmp_path / "cliapp.py").write_text(CLIAPP.format(
        instance=str(tmp_path / "instance"), logs=str(tmp_path / "logs"), database=database, programs=programs))
    app = make_app(PROCMAN_DATABASE_URI=database, PROCMAN_PROGRAMS=programs)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASK_")}
    argv = [PY, "-m", "flask", "--app", "cliapp"]

    def flask(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*argv, *args], check=False, cwd=tmp_path, env=env, capture_output=True, timeout=timeout)

    def popen(*args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*argv, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    return Shared(app, flask, popen, tmp_path)


def test_subprocess_start_outlives_the_cli_and_the_web_worker_adopts_it(shared: Shared) -> None:
    go = shared.tmp_path / "go"
    store = manager_of(shared.app).store  # reads the records without starting this app's engine
    out = shared.flask("procman", "start", "bg", "--", *py("import time; print('started', flush=True); time.sleep(60)"))
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"bg\n" and b"Started bg (pid" in out.stderr
    wait_code = f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.02)\nraise SystemExit(7)"
    assert shared.flask("procman", "start", "orphan", "--", *py(wait_code)).returncode == 0

    rows = {process_id: store.get(process_id) for process_id in ("bg", "orphan")}
    row = rows["bg"]
    assert row is not None and row["status"] == "running" and rows["orphan"] is not None
    bg = Identity(row["pid"], row["pid_started"])
    assert bg.is_alive()  # the CLI has exited; its process runs on, without a live owner
    assert not alive(int(row["owner"].split("|")[1]))
    manager = manager_of(shared.app)
    wait_until(lambda: manager.read_output("bg")[0] == b"started\n", message="bg's output")
    assert shared.flask("procman", "logs", "bg").stdout == b"started\n"

    def untouched() -> bool:
        return {process_id: store.get(process_id) for process_id in rows} == rows and bg.is_alive()

    # Commands that have nothing to do with procman leave the processes alone and record nothing.
    routes = shared.flask("routes")
    assert routes.returncode == 0 and b"index" in routes.stdout
    assert untouched()
    # Nor does a CLI whose engine runs (start --wait): it never adopts another manager's process.
    killed = shared.flask("procman", "start", "--wait", "sig", "--", *SIGTERM_SELF)
    assert killed.returncode == 128 + 15 and b"sig completed, return code -15" in killed.stderr
    listed = shared.flask("procman", "list", "--status", "running")
    assert listed.returncode == 0 and re.search(rb"^bg +running +%d " % row["pid"], listed.stdout, re.MULTILINE)
    assert untouched()

    # With no web worker to record it, the CLI that meets the ended process records it from its
    # wrapper's exit status (a reader tells the truth without a watcher).
    go.write_text("")
    follow = shared.flask("procman", "logs", "--follow", "orphan")
    assert follow.returncode == 7 and b"orphan completed, return code 7" in follow.stderr
    assert (record(manager, "orphan")["status"], record(manager, "orphan")["return_code"]) == ("completed", 7)

    # The web worker (this process's app, out of any click context) adopts both and records the end.
    assert status_of(shared.app, "bg")["status"] == "running"
    wait_until(lambda: record(manager, "bg")["owner"] == manager.owner, message="bg adopted by the web worker")
    wait_until(lambda: status_of(shared.app, "orphan")["status"] == "completed", message="orphan's end recorded")
    assert status_of(shared.app, "orphan")["return_code"] == 7
    assert manager.stop_process("bg", timeout=2)
    assert status_of(shared.app, "bg")["status"] == "stopped" and not bg.is_alive()


def test_subprocess_wait_run_and_exit_codes(shared: Shared) -> None:
    code = "import sys; print('out'); sys.stderr.write('err\\n'); sys.exit(3)"
    waited = shared.flask("procman", "start", "--wait", "w", "--", *py(code))
    assert waited.returncode == 3 and waited.stdout == b"out\n" and b"err\n" in waited.stderr
    assert status_of(shared.app, "w")["status"] == "completed"

    ran = shared.flask("procman", "run", "--wait", "hello", "--", "world")
    assert ran.returncode == 0 and ran.stdout == b"hello world\n"
    unknown = shared.flask("procman", "run", "nope")
    assert unknown.returncode == 1 and b"No program named 'nope'" in unknown.stderr and unknown.stdout == b""
    usage = shared.flask("procman", "stop")
    assert usage.returncode == 2 and b"Usage:" in usage.stderr


def test_subprocess_logs_follow_streams_until_the_end_and_exits_with_its_code(shared: Shared) -> None:
    go = shared.tmp_path / "go"
    manager = manager_of(shared.app)
    code = textwrap.dedent(f"""\
        import os, time
        print('first', flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.02)
        print('second')
        raise SystemExit(5)
    """)
    assert manager.start_process("f", py(code))
    follower = shared.popen("procman", "logs", "--follow", "f")
    try:
        assert follower.stdout is not None
        seen = b""
        deadline = time.monotonic() + 20
        while b"first\n" not in seen:  # streamed while the process still runs
            assert time.monotonic() < deadline, "no output from logs --follow"
            if select.select([follower.stdout], [], [], 0.5)[0]:
                chunk = os.read(follower.stdout.fileno(), 4096)
                assert chunk, follower.stderr.read() if follower.stderr else b""
                seen += chunk
        assert status_of(shared.app, "f")["status"] == "running"
        go.write_text("")
        rest, err = follower.communicate(timeout=20)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 5, err
    assert seen + rest == b"first\nsecond\n"


def test_without_a_watcher_status_and_stop_tell_the_truth(shared: Shared) -> None:
    """Issue 9.4, exactly: a CLI start, no web worker running; the process completes by itself.
    ``status`` then says ``completed`` with its real code, and ``stop`` says it had already ended
    (exit 1); over HTTP the stop of an ended process is a 409."""
    # The issue's `sh -c 'echo hi; sleep 1; exit 4'`, with the sleep ended by the test once the
    # CLI that started it has exited (so that no manager at all is left to record the end).
    script = "echo hi; while [ ! -e go ]; do sleep 0.05; done; exit 4"
    out = shared.flask("procman", "start", "orphan1", "--", "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    row = record(manager_of(shared.app), "orphan1")
    (shared.tmp_path / "go").touch()
    wait_until(lambda: not Identity(row["pid"], row["pid_started"]).is_alive(), timeout=20, message="orphan1 ended")
    assert record(manager_of(shared.app), "orphan1")["status"] == "running"  # nobody recorded it yet
    status = shared.flask("procman", "status", "orphan1")
    assert status.returncode == 0
    assert re.search(rb"^status: +completed$", status.stdout, re.MULTILINE), status.stdout
    assert re.search(rb"^return code: +4$", status.stdout, re.MULTILINE), status.stdout
    stop = shared.flask("procman", "stop", "orphan1")
    assert stop.returncode == 1 and b"had already ended (completed)" in stop.stderr, stop.stderr

    # The same through the API: an ended process that nobody recorded yet is not "stopped".
    out = shared.flask("procman", "start", "orphan2", "--", "sh", "-c", "while [ ! -e go2 ]; do sleep 0.05; done; exit 3")
    assert out.returncode == 0, out.stderr
    row = record(manager_of(shared.app), "orphan2")
    (shared.tmp_path / "go2").touch()
    wait_until(lambda: not Identity(row["pid"], row["pid_started"]).is_alive(), timeout=20, message="orphan2 ended")
    shared.app.config["PROCMAN_API_TOKEN"] = "test-token-0123456789"
    answer = shared.app.test_client().post("/procman/api/processes/orphan2/stop",
                                           headers={"Authorization": "Bearer test-token-0123456789"})
    assert answer.status_code == 409, answer.get_json()
    final = record(manager_of(shared.app), "orphan2")
    assert (final["status"], final["return_code"]) == ("completed", 3)
