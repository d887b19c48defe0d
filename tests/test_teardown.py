"""``stop_on_teardown=True``: a process bound to its app context (a request, a streamed response,
a CLI command, a ``with app.app_context():`` block) is stopped, whole tree, when that context ends;
every other process is left alone."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import typing as t
import urllib.request

import psutil
import pytest
import sqlalchemy as sa
from conftest import AppFactory, present, py, stop_everything, wait_until
from flask import Flask, Response, request, stream_with_context
from werkzeug.serving import make_server

from flask_procman import InvalidCommand, Manager, ProcessManager, ProcMan
from flask_procman.store import TABLE_NAME

# A child that starts a grandchild in its own session (so that only a tree walk finds it, not the
# process group), says its pid, then prints a tick every 50 ms until stopped.
TREE_CODE = textwrap.dedent(
    """
    import itertools, subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    print("grandchild", grandchild.pid, flush=True)
    for i in itertools.count():
        print("tick", i, flush=True)
        time.sleep(0.05)
    """
)
#: The error of a bound process that ignored SIGTERM: why it stopped, and that the grace ran out.
SIGKILLED_AT_TEARDOWN = "stopped at teardown; it did not end within the grace period and was killed (SIGKILL)"

TREE = py(TREE_CODE)
SLEEP = py("import time; time.sleep(120)")
IGNORES_TERM = py("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                  "time.sleep(120)")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def extension(app: Flask) -> ProcMan:
    return t.cast(ProcMan, app.extensions["procman"].extension)


def manager_of(app: Flask) -> Manager:
    return t.cast(Manager, app.extensions["procman"])


def tree_pids(manager: Manager, process_id: str) -> list[int]:
    """The pids of a running TREE (wrapper, child, grandchild), once the grandchild exists."""
    wait_until(lambda: b"grandchild" in manager.read_output(process_id)[0], message=f"{process_id}'s grandchild")
    root = present(manager.get_process_status(process_id))["pid"]
    pids = [root, *(p.pid for p in psutil.Process(root).children(recursive=True))]
    grandchild = int(manager.read_output(process_id)[0].split(b"\n")[0].split()[1])
    assert grandchild in pids
    return pids


def all_dead(pids: t.Sequence[int]) -> bool:
    return not any(alive(p) for p in pids)


def test_a_request_stops_its_bound_tree_and_nothing_else(make_app: AppFactory, database_uri: str) -> None:
    app = make_app(PROCMAN_DATABASE_URI=database_uri)
    procman = extension(app)
    manager = manager_of(app)
    trees: dict[str, list[int]] = {}

    @app.post("/run")
    def run() -> str:
        assert procman.start_process("bound", TREE, stop_on_teardown=True)
        assert procman.start_process("free", TREE)
        trees["bound"], trees["free"] = tree_pids(manager, "bound"), tree_pids(manager, "free")
        assert present(procman.get_process_status("bound"))["status"] == "running"  # not before the end
        return "ok"

    @app.get("/other")
    def other() -> str:
        return "other"

    assert app.test_client().post("/run").status_code == 200
    final = manager.wait("bound", timeout=20)
    assert final["status"] == "stopped" and final["error"] == "stopped at teardown"
    assert final["survivors"] == []
    assert all_dead(trees["bound"])  # the grandchild in its own session too
    # Other requests (each a context teardown) leave the unbound process alone.
    for _ in range(3):
        assert app.test_client().get("/other").status_code == 200
    assert present(manager.get_process_status("free"))["status"] == "running"
    assert all(alive(p) for p in trees["free"])


def test_a_command_ignoring_sigterm_does_not_hold_the_worker(make_app: AppFactory) -> None:
    """In a request the teardown only signals; the watcher sends SIGKILL after the grace."""
    grace = 4.0
    app = make_app(PROCMAN_STOP_TIMEOUT=grace)
    procman = extension(app)
    manager = manager_of(app)
    view_returned: list[float] = []

    @app.post("/run")
    def run() -> str:
        procman.start_process("stubborn", IGNORES_TERM, stop_on_teardown=True)
        wait_until(lambda: manager.read_output("stubborn")[0] == b"ready\n", message="the SIGTERM handler")
        view_returned.append(time.monotonic())
        return "ok"

    assert app.test_client().post("/run").status_code == 200
    teardown_took = time.monotonic() - view_returned[0]
    pid = present(manager.get_process_status("stubborn"))["pid"]
    final = manager.wait("stubborn", timeout=grace + 20)
    ended_after = time.monotonic() - view_returned[0]
    assert teardown_took < grace / 2, f"the teardown held the worker for {teardown_took:.2f} s"
    assert ended_after >= grace * 0.9  # SIGTERM was ignored: SIGKILL came after the grace
    assert final["status"] == "stopped" and final["error"] == SIGKILLED_AT_TEARDOWN
    assert not alive(pid)


def test_a_bound_queued_start_leaves_the_queue(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_MAX_PROCESSES=1)
    procman = extension(app)
    manager = manager_of(app)

    @app.post("/run")
    def run() -> str:
        assert procman.start_process("waiting", SLEEP, queue=True, stop_on_teardown=True)
        assert present(procman.get_process_status("waiting"))["status"] == "queued"
        return "ok"

    with app.app_context():
        assert procman.start_process("blocker", SLEEP)
    assert app.test_client().post("/run").status_code == 200
    final = present(manager.get_process_status("waiting"))
    assert final["status"] == "stopped" and final["pid"] is None  # it never ran
    assert manager.stop_process("blocker", timeout=1)
    manager.wait("blocker", timeout=10)
    assert manager.stats()["queued"] == 0 and present(manager.get_process_status("waiting"))["pid"] is None


def test_a_bound_process_that_ended_by_itself_keeps_its_record(make_app: AppFactory) -> None:
    app = make_app()
    procman = extension(app)

    @app.post("/run")
    def run() -> str:
        procman.start_process("quick", py("raise SystemExit(3)"), stop_on_teardown=True)
        procman.wait("quick", timeout=10)
        return "ok"

    assert app.test_client().post("/run").status_code == 200
    final = present(manager_of(app).get_process_status("quick"))
    assert final["status"] == "completed" and final["return_code"] == 3


def test_a_later_start_reusing_the_id_is_not_bound(make_app: AppFactory) -> None:
    """The binding is to the run, not the id: a finished process's id may be started again."""
    app = make_app()
    procman = extension(app)
    with app.app_context():
        procman.start_process("reused", py("pass"), stop_on_teardown=True)
        procman.wait("reused", timeout=10)
        procman.start_process("reused", SLEEP)  # replaces the finished record, unbound
    assert present(manager_of(app).get_process_status("reused"))["status"] == "running"


def test_binding_needs_an_app_context_of_the_app(make_app: AppFactory) -> None:
    app = make_app()
    other = make_app("other", PROCMAN_DATABASE_URI="sqlite://", PROCMAN_LOG_DIR=app.config["PROCMAN_LOG_DIR"] + "2")
    manager = manager_of(app)
    with pytest.raises(InvalidCommand, match=r"stop_on_teardown=True .* app context"):
        manager.start_process("nowhere", SLEEP, stop_on_teardown=True)
    with other.app_context(), pytest.raises(InvalidCommand, match="app context of 'app'"):
        manager.start_process("elsewhere", SLEEP, stop_on_teardown=True)
    assert manager.get_process_status("nowhere") is None and manager.get_process_status("elsewhere") is None


def test_an_app_context_block_waits_for_the_end(make_app: AppFactory) -> None:
    """Outside a request the teardown waits: the record is final when the block exits. The seed's
    handle takes the parameter too."""
    app = make_app()
    manager = manager_of(app)
    handle = ProcessManager()
    with app.app_context():
        assert handle.start_process("scoped", TREE, stop_on_teardown=True)
        assert handle.start_process("kept", SLEEP)
        pids = tree_pids(manager, "scoped")
    final = present(manager.get_process_status("scoped"))
    assert final["status"] == "stopped" and final["error"] == "stopped at teardown"
    assert all_dead(pids)
    assert present(manager.get_process_status("kept"))["status"] == "running"


# ============================================================== streamed responses ===============
def output_of(manager: Manager, process_id: str) -> t.Iterator[bytes]:
    """The process's stdout as it is written, until it has ended and all is sent."""
    offset = 0
    while True:
        data, offset = manager.read_output(process_id, "stdout", offset)
        if data:
            yield data
            continue
        if present(manager.get_process_status(process_id))["status"] not in ("queued", "running"):
            data, offset = manager.read_output(process_id, "stdout", offset)
            if data:
                yield data
            return
        time.sleep(0.02)  # polls the log file: no event to wait on


def stream_app(make_app: AppFactory, with_context: bool) -> Flask:
    app = make_app()
    procman = extension(app)

    @app.get("/stream/<name>")
    def stream(name: str) -> Response:
        cmd = TREE if name != "short" else py("print('one'); print('two')")
        procman.start_process(name, cmd, stop_on_teardown=True)
        body = output_of(procman.get_manager(), name)
        return Response(stream_with_context(body) if with_context else body, mimetype="text/plain")

    return app


class StreamClient:
    """A raw HTTP client on a socket: it reads as much as it wants, then hangs up."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        self.received = b""

    def read_until(self, needle: bytes) -> None:
        deadline = time.monotonic() + 20
        while needle not in self.received:
            assert time.monotonic() < deadline, f"no {needle!r} in {self.received[-200:]!r}"
            chunk = self.sock.recv(65536)
            assert chunk, f"the server closed the stream before {needle!r}"
            self.received += chunk

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def serve() -> t.Iterator[t.Callable[[Flask], int]]:
    """Serve an app with werkzeug's threaded server on a free port; shut down after the test."""
    servers: list[tuple[t.Any, threading.Thread]] = []

    def start(app: Flask) -> int:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return int(server.server_port)

    yield start
    for server, thread in servers:
        server.shutdown()
        thread.join(10)
        server.server_close()


def test_two_concurrent_requests_each_stop_only_their_own(make_app: AppFactory,
                                                          serve: t.Callable[[Flask], int]) -> None:
    app = make_app()
    procman = extension(app)
    manager = manager_of(app)
    release_a = threading.Event()

    @app.get("/run/<name>")
    def run(name: str) -> str:
        procman.start_process(name, TREE, stop_on_teardown=True)
        if name == "a":
            assert release_a.wait(30)  # request A is still in its view while B starts and ends
        return name

    port = serve(app)
    answers: dict[str, str] = {}

    def get(name: str) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/run/{name}", timeout=30) as response:
            answers[name] = response.read().decode()

    request_a = threading.Thread(target=get, args=("a",))
    request_a.start()
    try:
        wait_until(lambda: manager.get_process_status("a"), message="request A's start")
        tree_a = tree_pids(manager, "a")
        get("b")
        assert answers["b"] == "b"
        assert manager.wait("b", timeout=20)["status"] == "stopped"
        assert present(manager.get_process_status("a"))["status"] == "running"
        assert all(alive(p) for p in tree_a)
    finally:
        release_a.set()
        request_a.join(30)
    assert answers["a"] == "a"
    assert manager.wait("a", timeout=20)["status"] == "stopped"
    assert all_dead(tree_a)


@pytest.mark.parametrize("with_context", [True, False], ids=["stream_with_context", "plain_generator"])
def test_a_streamed_command_lives_until_its_client_goes(make_app: AppFactory, serve: t.Callable[[Flask], int],
                                                        with_context: bool) -> None:
    app = stream_app(make_app, with_context)
    manager = manager_of(app)
    port = serve(app)
    a, b = StreamClient(port, "/stream/a"), StreamClient(port, "/stream/b")
    try:
        a.read_until(b"tick 3")
        b.read_until(b"tick 3")
        tree_a, tree_b = tree_pids(manager, "a"), tree_pids(manager, "b")
        # The view has long returned; while the client reads, the command runs.
        a.read_until(b"tick 20")
        assert present(manager.get_process_status("a"))["status"] == "running"
        a.close()  # the client goes away mid-stream
        final = manager.wait("a", timeout=20)
        assert final["status"] == "stopped" and final["error"] == "stopped at teardown"
        assert all_dead(tree_a)
        # The other request's command, bound to its own context, goes on streaming.
        seen = b.received.count(b"tick")
        b.read_until(b"tick %d" % (seen + 10))
        assert present(manager.get_process_status("b"))["status"] == "running"
        assert all(alive(p) for p in tree_b)
    finally:
        a.close()
        b.close()
    assert manager.wait("b", timeout=20)["status"] == "stopped"
    assert all_dead(tree_b)


def test_a_command_started_inside_a_stream_with_context_body(make_app: AppFactory,
                                                             serve: t.Callable[[Flask], int]) -> None:
    """Bound to the context the body runs in: stopped when the body ends (here: the client goes)."""
    app = make_app()
    procman = extension(app)
    manager = manager_of(app)

    @app.get("/inner")
    def inner() -> Response:
        def body() -> t.Iterator[bytes]:
            procman.start_process("inner", TREE, stop_on_teardown=True)
            yield from output_of(manager, "inner")

        return Response(stream_with_context(body()), mimetype="text/plain")

    client = StreamClient(serve(app), "/inner")
    try:
        client.read_until(b"tick 3")
        tree = tree_pids(manager, "inner")
        client.read_until(b"tick 15")
        assert present(manager.get_process_status("inner"))["status"] == "running"
    finally:
        client.close()
    final = manager.wait("inner", timeout=20)
    assert final["status"] == "stopped" and final["error"] == "stopped at teardown"
    assert all_dead(tree)


@pytest.mark.parametrize("with_context", [True, False], ids=["stream_with_context", "plain_generator"])
def test_a_stream_read_to_its_end_keeps_the_completed_record(make_app: AppFactory, with_context: bool) -> None:
    app = stream_app(make_app, with_context)
    with app.test_client().get("/stream/short") as response:
        assert response.get_data() == b"one\ntwo\n"
    final = present(manager_of(app).get_process_status("short"))
    assert final["status"] == "completed" and final["return_code"] == 0


@pytest.fixture
def app_with_earlier_after_request(tmp_path: t.Any) -> t.Iterator[Flask]:
    """An app whose ``after_request`` functions are registered before ``ProcMan(app)`` (so they run
    after anything ``init_app`` registers): ``/replaced/<name>`` streams a bound TREE through a new
    response object, ``/raises/<name>`` streams one and its after_request raises."""
    app = Flask("early", instance_path=str(tmp_path / "instance"))
    app.config.update(PROCMAN_LOG_DIR=str(tmp_path / "logs"), PROCMAN_POLL_INTERVAL=0.1, PROCMAN_STOP_TIMEOUT=2.0,
                      PROPAGATE_EXCEPTIONS=False)

    @app.after_request
    def rewrap(response: Response) -> Response:
        if request.path.startswith("/replaced/"):
            return Response(response.response, mimetype=response.mimetype)
        if request.path.startswith("/raises/"):
            raise RuntimeError("an after_request function failed")
        return response

    procman = ProcMan(app)

    @app.get("/<kind>/<name>")
    def stream(kind: str, name: str) -> Response:
        procman.start_process(name, TREE, stop_on_teardown=True)
        return Response(output_of(procman.get_manager(), name), mimetype="text/plain")

    try:
        yield app
    finally:
        stop_everything(app)


def test_an_earlier_after_request_replacing_the_response(app_with_earlier_after_request: Flask,
                                                         serve: t.Callable[[Flask], int]) -> None:
    """The server closes the replacing response, not ours: the bound process is stopped all the same."""
    app = app_with_earlier_after_request
    manager = manager_of(app)
    client = StreamClient(serve(app), "/replaced/swapped")
    try:
        client.read_until(b"tick 3")
        tree = tree_pids(manager, "swapped")
        assert present(manager.get_process_status("swapped"))["status"] == "running"
    finally:
        client.close()
    final = manager.wait("swapped", timeout=20)
    assert final["status"] == "stopped" and final["error"] == "stopped at teardown"
    assert all_dead(tree)


def test_an_earlier_after_request_raising(app_with_earlier_after_request: Flask) -> None:
    """The streamed response is never sent (a 500 is): the context's teardown stops the process."""
    app = app_with_earlier_after_request
    response = app.test_client().get("/raises/failed")
    assert response.status_code == 500
    final = manager_of(app).wait("failed", timeout=20)
    assert final["status"] == "stopped" and final["error"] == "stopped at teardown"


# ================================================================ CLI commands ===================
def test_a_cli_command_stops_its_bound_process_when_it_ends(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_STOP_TIMEOUT=1.0)
    procman = extension(app)
    manager = manager_of(app)
    trees: dict[str, list[int]] = {}

    @app.cli.command("tail-briefly")
    def tail_briefly() -> None:
        procman.start_process("bound", TREE, stop_on_teardown=True)
        procman.start_process("stubborn", IGNORES_TERM, stop_on_teardown=True)
        procman.start_process("free", SLEEP)
        trees["bound"] = tree_pids(manager, "bound")
        wait_until(lambda: manager.read_output("stubborn")[0] == b"ready\n", message="the SIGTERM handler")
        trees["stubborn"] = [present(procman.get_process_status("stubborn"))["pid"]]

    began = time.monotonic()
    result = app.test_cli_runner().invoke(args=["tail-briefly"], catch_exceptions=False)
    took = time.monotonic() - began
    assert result.exit_code == 0, result.output
    # The command waited for the ends (the SIGKILL after the 1 s grace included): final at once.
    for name in ("bound", "stubborn"):
        final = present(manager.get_process_status(name))
        expected = SIGKILLED_AT_TEARDOWN if name == "stubborn" else "stopped at teardown"
        assert final["status"] == "stopped" and final["error"] == expected, name
        assert all_dead(trees[name]), name
    assert took >= 0.9
    assert present(manager.get_process_status("free"))["status"] == "running"


CLIAPP = '''\
import json, sys, time
from flask import Flask
from flask_procman import ProcMan

app = Flask("cliapp", instance_path={instance!r})
app.config.update(PROCMAN_LOG_DIR={logs!r}, PROCMAN_POLL_INTERVAL=0.1, PROCMAN_STOP_TIMEOUT=2.0)
procman = ProcMan(app)
manager = app.extensions["procman"]


@app.cli.command("follow")
def follow():
    procman.start_process("bound", {tree!r}, stop_on_teardown=True)
    procman.start_process("free", {sleep!r})
    while b"tick 3" not in manager.read_output("bound")[0]:
        time.sleep(0.02)
    print(json.dumps({{name: procman.get_process_status(name)["pid"] for name in ("bound", "free")}}))
'''


def test_a_flask_command_in_a_subprocess_stops_its_bound_process(make_app: AppFactory, tmp_path: t.Any) -> None:
    import json

    app = make_app()  # same instance folder and log folder as the subprocess's app
    (tmp_path / "cliapp.py").write_text(CLIAPP.format(instance=str(tmp_path / "instance"), logs=str(tmp_path / "logs"),
                                                      tree=TREE, sleep=SLEEP))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASK_")}
    out = subprocess.run([sys.executable, "-m", "flask", "--app", "cliapp", "follow"], cwd=tmp_path, env=env,
                         capture_output=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    pids = json.loads(out.stdout)
    store = manager_of(app).store  # reads without starting this app's engine
    bound = present(store.get("bound"))
    assert bound["status"] == "stopped" and bound["error"] == "stopped at teardown"
    assert not alive(pids["bound"])
    grandchild = int(manager_of(app).read_output("bound")[0].split(b"\n")[0].split()[1])
    assert not alive(grandchild)
    assert present(store.get("free"))["status"] == "running" and alive(pids["free"])


# ================================================================ faults ===========================
def test_a_failing_stop_is_logged_and_the_request_still_answers(make_app: AppFactory,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    app = make_app()
    procman = extension(app)
    manager = manager_of(app)

    @app.post("/run")
    def run() -> str:
        procman.start_process("orphaned", SLEEP, stop_on_teardown=True)
        with manager.store.engine.begin() as conn:  # the database loses the table under us
            conn.execute(sa.text(f"DROP TABLE {TABLE_NAME}"))
        return "ok"

    with caplog.at_level(logging.ERROR, logger="flask_procman"):
        response = app.test_client().post("/run")
    assert response.status_code == 200 and response.get_data() == b"ok"
    assert "could not stop orphaned at teardown" in caplog.text
