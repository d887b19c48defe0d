"""PROCMAN_API_MAX_BODY holds against a chunked body (no Content-Length), on real servers: a 200 MiB
body generated on the fly gets its 413 long before it is all sent, and the server's memory stays small.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import typing as t
from pathlib import Path

import psutil
import pytest
from conftest import answers, free_port, no_control_socket, stop_server, wait_until

HERE = os.path.dirname(__file__)
TOKEN = "body-limit-test-token-0123456789"
MIB = 1024 * 1024
TOTAL = 200 * MIB


def _peak_rss(pids: t.Iterable[int]) -> int:
    """The largest resident set any of ``pids`` ever had (VmHWM), in bytes."""
    peak = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) * 1024)
    return peak


@pytest.fixture(params=["gunicorn", "gunicorn-threads", "werkzeug"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> t.Iterator[tuple[int, psutil.Process]]:
    """A real server running tests/workerapp.py: one gunicorn worker (sync or threaded), or werkzeug's."""
    port = free_port()
    env = {**os.environ, "WORKER_INSTANCE": str(tmp_path / "instance"), "WORKER_LOGS": str(tmp_path / "logs"),
           "WORKER_TOKEN": TOKEN}
    if request.param.startswith("gunicorn"):
        threads = ["--threads", "4"] if request.param == "gunicorn-threads" else []  # gthread: keep-alive
        cmd = [sys.executable, "-m", "gunicorn", "--workers", "1", *threads, "--bind", f"127.0.0.1:{port}",
               *no_control_socket(), "workerapp:create_app()"]
    else:
        cmd = [sys.executable, "-c", "from werkzeug.serving import run_simple; from workerapp import create_app; "
               f"run_simple('127.0.0.1', {port}, create_app(), threaded=True)"]
    proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/procman/api/health"), timeout=30, message="server up")
        yield port, psutil.Process(proc.pid)
    finally:
        stop_server(proc)


def _chunked_post(port: int, chunks: t.Iterable[bytes]) -> tuple[int, bytes, int, float]:
    """POST ``chunks`` with Transfer-Encoding: chunked from one thread while reading the answer in this
    one. Returns the status, the answer's head and body, the bytes sent when it arrived, the seconds taken."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(b"POST /procman/api/programs/quick/start HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    sent = 0
    answered = threading.Event()

    def send() -> None:
        nonlocal sent
        try:
            for chunk in chunks:
                if answered.is_set():
                    return
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server closed the connection after its answer: expected
            pass

    started = time.monotonic()
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    answer = b""
    try:
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        sent_at_answer, elapsed = sent, time.monotonic() - started
        answered.set()
        head, _, body = answer.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            data = sock.recv(65536)
            if not data:
                break
            body += data
    finally:
        answered.set()
        sock.close()
        sender.join(timeout=60)
    status = int(head.split(b" ")[1])
    return status, body, sent_at_answer, elapsed


def test_a_huge_chunked_body_is_refused_early_with_small_memory(server: tuple[int, psutil.Process]) -> None:
    port, process = server
    pids = [process.pid, *(c.pid for c in process.children(recursive=True))]
    # A small chunked body still works (the limit is not "no chunked bodies").
    status, body, _, _ = _chunked_post(port, [b'{"process_id": ', b'"chunky"}'])
    assert status == 201, body
    before = _peak_rss(pids)
    block = b" " * MIB  # whitespace: valid JSON so far, so only the size can refuse it
    status, body, sent, elapsed = _chunked_post(port, (block for _ in range(TOTAL // MIB)))
    grown = _peak_rss(pids) - before
    print(f"413 after {elapsed:.2f} s, {sent / MIB:.1f} MiB sent of {TOTAL // MIB}; peak RSS grew {grown / MIB:.1f} MiB")
    assert status == 413
    assert json.loads(body)["error"]["code"] == "too_large"
    assert sent < TOTAL // 4, f"the answer came after {sent / MIB:.0f} MiB: the body was read whole"
    assert elapsed < 30
    assert grown < 32 * MIB, f"the server's peak RSS grew by {grown / MIB:.0f} MiB"
