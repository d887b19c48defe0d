"""Output in log files: byte-exact, read by offset, bounded memory, never a decoding crash."""

from __future__ import annotations

import os
import typing as t

import psutil
from conftest import AppFactory, present, py, wait_until

from flask_procman import ProcMan


def _pm(app: t.Any) -> ProcMan:
    return t.cast(ProcMan, app.extensions["procman"].extension)


def _read_all(pm: ProcMan, process_id: str, stream: str = "stdout", chunk: int = 1 << 20) -> bytes:
    out, offset = bytearray(), 0
    while True:
        data, offset = pm.read_output(process_id, stream, offset, chunk)
        if not data:
            return bytes(out)
        out += data


def test_invalid_utf8_is_kept_and_status_never_raises(make_app: AppFactory) -> None:
    app = make_app()
    pm = _pm(app)
    payload = b"ok\n\xff\xfe bad \xc3( \xe2\x82 end\n"
    with app.app_context():
        pm.start_process("bytes", py(f"import sys; sys.stdout.buffer.write({payload!r}); sys.stderr.buffer.write(b'\\x80')"))
        status = pm.wait("bytes", timeout=10)
        assert _read_all(pm, "bytes") == payload
        assert _read_all(pm, "bytes", "stderr") == b"\x80"
    assert status["stdout"].startswith("ok\n") and "\ufffd" in status["stdout"] and status["stdout"].endswith(" end\n")
    assert status["stderr"] == "\ufffd"


def test_a_10mb_line_without_newline(make_app: AppFactory) -> None:
    app = make_app()
    pm = _pm(app)
    with app.app_context():
        pm.start_process("long", py("import sys; sys.stdout.write('x' * (10 * 1024 * 1024))"))
        status = pm.wait("long", timeout=30)
        data = _read_all(pm, "long")
    assert data == b"x" * (10 * 1024 * 1024)
    assert status["stdout_size"] == 10 * 1024 * 1024
    assert len(status["stdout"]) == 64 * 1024  # the tail only


def test_tail_is_cut_at_a_character_boundary(make_app: AppFactory) -> None:
    app = make_app(PROCMAN_OUTPUT_TAIL=10)
    pm = _pm(app)
    with app.app_context():
        pm.start_process("utf", py("print('é' * 20, end='')"))
        status = pm.wait("utf", timeout=10)
    assert status["stdout"] in ("é" * 5, "é" * 4)  # never a replacement char from a split 'é'


def test_two_readers_each_see_everything(make_app: AppFactory) -> None:
    app = make_app()
    pm = _pm(app)
    code = "import time\nfor i in range(20):\n    print(f'line {i}', flush=True)\n    time.sleep(0.02)"
    with app.app_context():
        pm.start_process("shared", py(code))
        readers = {"a": (bytearray(), [0]), "b": (bytearray(), [0])}
        while True:
            ended = present(pm.get_process_status("shared"))["status"] != "running"
            for buf, offset in readers.values():
                data, offset[0] = pm.read_output("shared", "stdout", offset[0], 7)
                buf += data
            if ended and all(len(b) == present(pm.get_process_status("shared"))["stdout_size"] for b, _ in readers.values()):
                break
    expected = "".join(f"line {i}\n" for i in range(20)).encode()
    assert bytes(readers["a"][0]) == bytes(readers["b"][0]) == expected


def test_output_shows_up_live(make_app: AppFactory) -> None:
    """PYTHONUNBUFFERED=1 by default: a Python child's print is visible before it ends."""
    app = make_app()
    pm = _pm(app)
    with app.app_context():
        pm.start_process("live", py("import time; print('early'); time.sleep(30)"))
        wait_until(lambda: present(pm.get_process_status("live"))["stdout"] == "early\n", message="live output")
        assert present(pm.get_process_status("live"))["status"] == "running"


def test_read_output_arguments(make_app: AppFactory) -> None:
    import pytest

    from flask_procman import InvalidCommand, ProcessNotFound

    app = make_app()
    pm = _pm(app)
    with app.app_context():
        pm.start_process("r", py("print('abcdef')"))
        pm.wait("r", timeout=10)
        assert pm.read_output("r", "stdout", 2, 3) == (b"cde", 5)
        assert pm.read_output("r", "stdout", 100, 3) == (b"", 100)
        for kwargs in ({"stream": "both"}, {"offset": -1}, {"limit": -2}, {"offset": "1"}):
            with pytest.raises(InvalidCommand):
                pm.read_output("r", **kwargs)
        with pytest.raises(ProcessNotFound):
            pm.read_output("missing")


def test_200mb_of_output_does_not_grow_the_manager(make_app: AppFactory) -> None:
    app = make_app()
    pm = _pm(app)
    me = psutil.Process()
    code = ("import sys\nblock = b'y' * 1048575 + b'\\n'\nout = sys.stdout.buffer\n"
            "for _ in range(200):\n    out.write(block)")
    with app.app_context():
        pm.start_process("warmup", py("pass"))
        pm.wait("warmup", timeout=10)
        before = me.memory_info().rss
        pm.start_process("big", py(code))
        peak = before
        while present(pm.get_process_status("big"))["status"] == "running":
            peak = max(peak, me.memory_info().rss)
        final = pm.wait("big", timeout=60)
        peak = max(peak, me.memory_info().rss)
    assert final["stdout_size"] == 200 * 1024 * 1024
    assert peak - before < 20 * 1024 * 1024, f"RSS grew by {(peak - before) / 2**20:.1f} MiB"
    assert os.path.getsize(os.path.join(app.config["PROCMAN_LOG_DIR"], "big", "stdout.log")) == 200 * 1024 * 1024
