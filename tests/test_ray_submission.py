"""The Ray backend's translation work and HTTP edge cases; runs without Ray (the Ray tests need a head).

Quoting is checked by running the entrypoint with the real ``/bin/sh`` (Ray runs it the same way);
the HTTP errors against real local servers that refuse, stall or answer 401/500.
"""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
import time
import typing as t

import pytest
from conftest import PY, free_port

from flask_procman.backends import BackendAuthError, BackendError, BackendUnavailable, InvalidResources
from flask_procman.backends.ray_client import RayJobsClient
from flask_procman.backends.ray_jobs import (
    DEFAULT_CPUS,
    JobEnd,
    RayJobsBackend,
    ResourceRequest,
    build_submission,
    entrypoint,
    job_end,
    parse_memory,
)
from flask_procman.backends.ray_logs import LogMirror


@pytest.mark.parametrize(("value", "expected"), [
    (4096, 4096), ("4GiB", 4 * 2**30), ("4Gi", 4 * 2**30), ("512MiB", 512 * 2**20), ("2GB", 2 * 10**9),
    ("1.5G", 1_500_000_000), (" 10 kib ", 10 * 1024), ("100", 100), (0, 0),
])
def test_memory_strings_become_bytes(value: int | str, expected: int) -> None:
    assert parse_memory(value) == expected


@pytest.mark.parametrize("value", ["4 gigs", "-1GiB", "GiB", "", True, -5, float("inf"), "1e3"])
def test_bad_memory_is_refused_with_an_example(value: t.Any) -> None:
    with pytest.raises(InvalidResources, match="memory"):
        parse_memory(value)


def test_resources_map_onto_ray_fields() -> None:
    request = ResourceRequest.parse({"cpus": 1, "gpus": 0.5, "memory": "4GiB", "evalbox": 1})
    assert request.submission_fields() == {
        "entrypoint_num_cpus": 1.0, "entrypoint_num_gpus": 0.5, "entrypoint_memory": 4 * 2**30,
        "entrypoint_resources": {"evalbox": 1.0},
    }
    assert request.as_ray() == {"CPU": 1.0, "GPU": 0.5, "memory": float(4 * 2**30), "evalbox": 1.0}


@pytest.mark.parametrize("resources", [None, {}, {"cpus": 0}, {"gpus": None}])
def test_a_job_asking_for_nothing_gets_a_cpu_fraction(resources: t.Any) -> None:
    assert ResourceRequest.parse(resources).submission_fields()["entrypoint_num_cpus"] == DEFAULT_CPUS


def test_a_custom_resource_alone_is_enough_to_place_a_job() -> None:
    assert ResourceRequest.parse({"evalbox": 1}).submission_fields() == {"entrypoint_resources": {"evalbox": 1.0}}


@pytest.mark.parametrize(("resources", "match"), [
    ({"CPU": 1}, "use 'cpus'"), ({"GPU": 1}, "use 'cpus', 'gpus'"), ({"cpus": -1}, ">= 0"), ({"gpus": "1"}, ">= 0"),
    ({"evalbox": True}, ">= 0"), ({"bad name!": 1}, "not a resource name"), ({"x": float("nan")}, ">= 0"),
])
def test_bad_resources_are_refused(resources: dict[str, t.Any], match: str) -> None:
    with pytest.raises(InvalidResources, match=match):
        ResourceRequest.parse(resources)


@pytest.mark.parametrize("cwd_name", ["plain", "with space", "it's", "$HOME;ls"])
def test_the_entrypoint_survives_the_shell(tmp_path: t.Any, cwd_name: str) -> None:
    cwd = tmp_path / cwd_name
    cwd.mkdir()
    argv = ["it's", "two words", "$HOME", "*", "a;b", "`id`", '"', "\\", ""]
    code = "import json, os, sys; print(json.dumps([os.getcwd(), sys.argv[1:]]))"
    line = entrypoint([PY, "-c", code, *argv], str(cwd))
    assert line.startswith("cd ") and " && exec " in line
    out = subprocess.run(["/bin/sh", "-c", line], capture_output=True, check=True, cwd="/").stdout
    assert json.loads(out) == [str(cwd), argv]


def test_entrypoint_without_cwd_and_bad_input() -> None:
    assert entrypoint(["echo", "a b"], None) == "exec echo 'a b'"
    with pytest.raises(ValueError, match="absolute"):
        entrypoint(["true"], "relative/dir")
    with pytest.raises(ValueError, match="non-empty"):
        entrypoint([], "/")


def test_the_submission_carries_id_metadata_env_and_resources() -> None:
    payload = build_submission(submission_id="tag_1-a", process_id="eval.1", cmd=["python3", "x.py"], cwd="/srv",
                               env={"K": "v"}, resources=ResourceRequest.parse({"gpus": 1}))
    assert payload == {
        "entrypoint": "cd /srv && exec python3 x.py", "submission_id": "tag_1-a",
        "metadata": {"procman_id": "eval.1", "procman_run_tag": "tag_1-a"},
        "entrypoint_num_gpus": 1.0, "runtime_env": {"env_vars": {"K": "v"}},
    }
    assert "runtime_env" not in build_submission(submission_id="a", process_id="p", cmd=["true"], cwd=None, env=None,
                                                 resources=ResourceRequest.parse(None))
    for bad in ("a/b", "a b", "", "x" * 129):
        with pytest.raises(ValueError, match="submission id"):
            build_submission(submission_id=bad, process_id="p", cmd=["true"], cwd=None, env=None,
                             resources=ResourceRequest.parse(None))
    with pytest.raises(ValueError, match="env"):
        build_submission(submission_id="a", process_id="p", cmd=["true"], cwd=None, env={"K": 1},  # type: ignore[dict-item]
                         resources=ResourceRequest.parse(None))


# Shapes as the Ray 2.60 head answered them (tests/test_ray_jobs.py checks the live ones).
@pytest.mark.parametrize(("details", "expected"), [
    ({"status": "PENDING"}, None),
    ({"status": "RUNNING"}, None),
    ({"status": "SUCCEEDED", "driver_exit_code": 0, "message": "Job finished successfully."},
     JobEnd("completed", 0, None)),
    ({"status": "FAILED", "driver_exit_code": 3, "error_type": "JOB_ENTRYPOINT_COMMAND_ERROR", "message": "boom"},
     JobEnd("completed", 3, "boom")),
    ({"status": "FAILED", "driver_exit_code": -9, "error_type": "JOB_ENTRYPOINT_COMMAND_ERROR", "message": "m"},
     JobEnd("completed", -9, "m")),
    ({"status": "FAILED", "driver_exit_code": None, "error_type": "RUNTIME_ENV_SETUP_FAILURE", "message": "no dir"},
     JobEnd("failed", None, "Ray could not run the job (RUNTIME_ENV_SETUP_FAILURE): no dir")),
    ({"status": "FAILED", "driver_exit_code": None, "error_type": "JOB_SUPERVISOR_ACTOR_START_TIMEOUT", "message": ""},
     JobEnd("failed", None, "Ray could not run the job (JOB_SUPERVISOR_ACTOR_START_TIMEOUT): no message")),
    ({"status": "STOPPED", "driver_exit_code": None, "message": "Job was intentionally stopped."},
     JobEnd("stopped", None, None)),
])
def test_ray_ends_map_to_procman_statuses(details: dict[str, t.Any], expected: JobEnd | None) -> None:
    assert job_end(details) == expected


def test_a_job_the_head_no_longer_knows_is_lost() -> None:
    end = job_end(None)
    assert end is not None and (end.status, end.return_code) == ("lost", None)


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A real HTTP server standing for a head: answers ``server.answer`` and records headers."""

    def do_GET(self) -> None:
        server = t.cast("_Server", self.server)
        server.seen.append(dict(self.headers))
        status, body = server.answer
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: t.Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    seen: list[dict[str, str]]
    answer: tuple[int, str]


@pytest.fixture
def fake_head() -> t.Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Recorder)
    server.seen, server.answer = [], (200, '{"version": "4", "ray_version": "2.60.0"}')
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_the_token_is_sent_as_a_bearer_and_never_shown(fake_head: _Server) -> None:
    token = "s3cret-token-0123456789"
    client = RayJobsClient(f"http://127.0.0.1:{fake_head.server_port}", token)
    assert client.version()["ray_version"] == "2.60.0"
    assert fake_head.seen[-1]["Authorization"] == f"Bearer {token}"
    fake_head.answer = (403, "Invalid authentication token")
    with pytest.raises(BackendAuthError) as info:
        client.version()
    assert "403" in str(info.value) and token not in str(info.value) and token not in repr(client)
    client.close()


def test_a_netrc_entry_does_not_replace_the_token(fake_head: _Server, tmp_path: t.Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password other\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    client = RayJobsClient(f"http://127.0.0.1:{fake_head.server_port}", "the-token-0123456789")
    client.version()
    assert fake_head.seen[-1]["Authorization"] == "Bearer the-token-0123456789"
    client.close()


def test_a_refusal_carries_the_last_line_of_rays_traceback(fake_head: _Server) -> None:
    fake_head.answer = (500, "Traceback (most recent call last):\n  File x\nValueError: Job with submission_id X already exists.")
    client = RayJobsClient(f"http://127.0.0.1:{fake_head.server_port}")
    with pytest.raises(BackendError, match=r"500: ValueError: Job with submission_id X already exists\.$"):
        client.version()
    client.close()


def test_a_head_that_is_not_there_is_unavailable_at_once() -> None:
    client = RayJobsClient(f"http://127.0.0.1:{free_port()}")
    began = time.monotonic()
    with pytest.raises(BackendUnavailable, match="unreachable"):
        client.version()
    assert time.monotonic() - began < 2
    client.close()


def test_a_head_that_never_answers_is_unavailable_after_the_read_timeout() -> None:
    with socket.socket() as listener:  # accepts connections (backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        backend = RayJobsBackend(f"http://127.0.0.1:{listener.getsockname()[1]}", connect_timeout=1, read_timeout=0.5)
        began = time.monotonic()
        with pytest.raises(BackendUnavailable):
            backend.submit(submission_id="a", process_id="p", cmd=["true"])
        assert time.monotonic() - began < 5
        backend.close()


def test_a_bad_address_is_refused() -> None:
    for address in ("head:8265", "ftp://head", "http://"):
        with pytest.raises(ValueError, match="http"):
            RayJobsClient(address)


def test_the_mirror_polls_a_big_log_less_often() -> None:
    mirror = LogMirror(RayJobsClient("http://127.0.0.1:1"), "job", "/nonexistent/out.log")
    assert mirror.interval(0.5) == 0.5  # nothing fetched yet
    mirror.last_cost = 0.3  # what a 20 MB log cost on the test head
    assert mirror.interval(0.5) == pytest.approx(3.0)
