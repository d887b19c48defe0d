"""A real Ray cluster for the tests: a head plus a second node with a custom resource, on this host.

Ray lives in its own virtualenv, never in the app's (the app talks HTTP and never imports ``ray``):
the ``ray`` executable is ``$PROCMAN_TEST_RAY`` or ``<repo>/.ray-venv/bin/ray`` (``.ci/run`` makes
it). Without it the Ray tests are skipped, unless ``PROCMAN_REQUIRE_RAY=1``: then they fail.

Every node runs ``ray start --block`` in its own session and is stopped by its pid: ``ray stop``
would stop every Ray cluster on the host, including other developers'.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import typing as t
import urllib.error
import urllib.request

import psutil
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL_HINT = (
    'Install Ray in its own venv: python3 -m venv .ray-venv && .ray-venv/bin/pip install "ray[default]==2.60.0" '
    "(or point PROCMAN_TEST_RAY at a `ray` executable)"
)
#: The custom resource only the second node has (placement tests ask for it).
WORKER_RESOURCE = "evalbox"
#: Seconds a node may take to answer (the research measured 2-6 s idle; this machine is shared).
START_DEADLINE = 120.0
#: Seconds a job may stay PENDING before Ray fails it (``RAY_JOB_START_TIMEOUT_SECONDS`` on the head).
JOB_START_TIMEOUT = 12
#: The cluster runs with Ray's token authentication on, so every test sends the token for real.
TOKEN = "procman-test-" + os.urandom(12).hex()


def find_ray() -> str | None:
    """The ``ray`` executable to use, or None when there is none."""
    path = os.environ.get("PROCMAN_TEST_RAY") or os.path.join(REPO, ".ray-venv", "bin", "ray")
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def ray_required() -> bool:
    """True when a missing Ray must fail the tests (CI) instead of skipping them."""
    return os.environ.get("PROCMAN_REQUIRE_RAY") == "1"


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(taken: t.Container[int] = ()) -> int:
    """A TCP port free on every interface right now, chosen BELOW the kernel's ephemeral range.

    Ray's daemons open many outgoing connections, each from a random ephemeral port: a port we
    picked there, which Ray binds only later, can meanwhile be taken by one of them and the node
    dies at start. Ray's own worker ports are 10002-19999, so ours come from 20000 up to the
    ephemeral range.
    """
    high = _ephemeral_low()
    for _ in range(1000):
        port = random.randrange(20000, high) if high > 20100 else 0
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("", port))  # Ray binds several ports on all interfaces
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free TCP port found for the Ray cluster")


def port_open(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def http_json(url: str, *, method: str = "GET", body: dict[str, t.Any] | None = None,
              timeout: float = 5.0) -> t.Any:
    """One JSON request with the standard library (the fixture does not rely on the code under test)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())


def wait_for(predicate: t.Callable[[], t.Any], deadline: float, what: str,
             alive: t.Callable[[], bool] = lambda: True) -> t.Any:
    """Poll ``predicate`` until truthy; raise after ``deadline`` (monotonic) or when ``alive()`` turns false."""
    while True:
        try:
            value = predicate()
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            value = None
        if value:
            return value
        if not alive():
            raise RuntimeError(f"a Ray node died while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


class RayNode:
    """One ``ray start --block`` process (a head or a worker node) and what it started."""

    def __init__(self, ray: str, args: list[str], temp_dir: str, name: str) -> None:
        self.log_path = os.path.join(temp_dir, f"{name}.out")
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0",
                   # Without this a SIGTERM waits up to 30 s for running jobs to drain.
                   RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
                   RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN,
                   # A job PENDING this long fails (default 900 s): the tests watch Ray do it.
                   RAY_JOB_START_TIMEOUT_SECONDS=str(JOB_START_TIMEOUT))
        env.pop("RAY_ADDRESS", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([ray, "start", "--block", *args], env=env, cwd=temp_dir,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def log_tail(self, lines: int = 30) -> str:
        """The end of what ``ray start`` printed (for the message of a failed start)."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        """True while ``ray start --block`` runs (it exits when one of its node's daemons dies)."""
        return self.proc.poll() is None

    def processes(self) -> list[psutil.Process]:
        """The ``ray start`` process and every descendant, listed now."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 20.0) -> list[psutil.Process]:
        """SIGTERM (``ray start --block`` stops its own node), then SIGKILL to its process group and
        to every process of the node listed before; returns those processes, for the caller to
        verify they are gone."""
        procs = self.processes()
        pid = self.proc.pid
        if self.proc.returncode is None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            # Wait WITHOUT reaping: while the exited leader is an unreaped zombie its pid (and so
            # the group id) cannot be reused, so the killpg below can only hit this node's group.
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                if info is not None:
                    break
                time.sleep(0.05)
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
        kill_all(procs)
        return procs

def kill_all(procs: t.Iterable[psutil.Process]) -> None:
    """SIGKILL every still-running process of ``procs`` (psutil checks pid + start time) and reap ours."""
    procs = list(procs)
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def still_running(procs: t.Iterable[psutil.Process]) -> list[psutil.Process]:
    """The processes of ``procs`` that still run (zombies count as gone)."""
    left = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except psutil.NoSuchProcess:
            pass
    return left


def processes_mentioning(text: str) -> list[psutil.Process]:
    """Processes whose command line contains ``text`` (Ray's daemons name their temp dir)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid != os.getpid() and any(text in part for part in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


class RayCluster:
    """A head (2 CPUs, small object store, non-default ports) and a node with ``evalbox: 1``."""

    def __init__(self, ray: str) -> None:
        self.ray = ray
        # Short: Ray puts AF_UNIX sockets below it (108-byte limit).
        self.temp_dir = tempfile.mkdtemp(prefix="pmray", dir="/tmp")
        self.ports: dict[str, int] = {}
        for name in ("gcs", "dashboard", "client", "head_nm", "head_om", "head_metrics", "head_agent_http",
                     "head_agent_grpc", "head_rtenv", "w_nm", "w_om", "w_metrics", "w_agent_http", "w_agent_grpc",
                     "w_rtenv"):
            self.ports[name] = free_port(taken=self.ports.values())
        self.address = f"http://127.0.0.1:{self.ports['dashboard']}"
        self.head: RayNode | None = None
        self.worker: RayNode | None = None
        self.seen: list[psutil.Process] = []
        #: Seconds each phase took (``#n``: of the n-th start), for the report.
        self.timings: dict[str, float] = {}
        self.starts = 0

    # -- nodes -----------------------------------------------------------------------------------
    def start_head(self) -> None:
        """Start the head; return once its GCS port accepts connections (the second node's cue)."""
        p = self.ports
        self.head = RayNode(self.ray, [
            "--head", "--node-ip-address=127.0.0.1", f"--port={p['gcs']}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={p['dashboard']}", "--include-dashboard=true",
            "--num-cpus=2", "--num-gpus=0", f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
            "--object-store-memory=100000000", f"--ray-client-server-port={p['client']}",
            f"--node-manager-port={p['head_nm']}", f"--object-manager-port={p['head_om']}",
            f"--metrics-export-port={p['head_metrics']}", f"--dashboard-agent-listen-port={p['head_agent_http']}",
            f"--dashboard-agent-grpc-port={p['head_agent_grpc']}", f"--runtime-env-agent-port={p['head_rtenv']}",
            # Two raylets on one host: split Ray's default worker port range between them.
            "--min-worker-port=10002", "--max-worker-port=14999",
        ], self.temp_dir, "head")
        head = self.head
        wait_for(lambda: port_open(p["gcs"]), time.monotonic() + START_DEADLINE,
                 f"the Ray head's GCS (log: {head.log_path})", head.alive)

    def start_worker(self) -> None:
        """Start the second node (1 CPU, ``evalbox: 1``)."""
        p = self.ports
        self.worker = RayNode(self.ray, [
            f"--address=127.0.0.1:{p['gcs']}", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
            f"--resources={json.dumps({WORKER_RESOURCE: 1})}", "--object-store-memory=100000000",
            "--disable-usage-stats", f"--node-manager-port={p['w_nm']}", f"--object-manager-port={p['w_om']}",
            f"--metrics-export-port={p['w_metrics']}", f"--dashboard-agent-listen-port={p['w_agent_http']}",
            f"--dashboard-agent-grpc-port={p['w_agent_grpc']}", f"--runtime-env-agent-port={p['w_rtenv']}",
            "--min-worker-port=15000", "--max-worker-port=19999",
        ], self.temp_dir, "worker")

    def wait_ready(self) -> None:
        """Wait until the head's Jobs API answers and lists both nodes alive."""
        head, worker = self.head, self.worker
        assert head is not None and worker is not None
        wait_for(lambda: http_json(self.address + "/api/version", timeout=2), time.monotonic() + START_DEADLINE,
                 f"the Ray head's dashboard (log: {head.log_path})", head.alive)
        wait_for(lambda: self.alive_nodes() >= 2, time.monotonic() + START_DEADLINE,
                 f"the second Ray node (log: {worker.log_path})", lambda: head.alive() and worker.alive())

    def alive_nodes(self) -> int:
        """How many nodes the head lists as alive."""
        answer = http_json(self.address + "/api/v0/nodes?detail=1&limit=100", timeout=3)
        return sum(1 for node in answer["data"]["result"]["result"] if node["state"] == "ALIVE")

    def warm_up(self) -> None:
        """Run one trivial job: the job agent can lag the dashboard, and the first job pays for it."""
        began = time.monotonic()
        sid = "warmup_" + os.urandom(4).hex()
        http_json(self.address + "/api/jobs/", method="POST",
                  body={"entrypoint": "true", "submission_id": sid, "entrypoint_num_cpus": 0.01}, timeout=30)

        def done() -> bool:
            status = http_json(f"{self.address}/api/jobs/{sid}", timeout=5)["status"]
            if status in ("FAILED", "STOPPED"):
                raise RuntimeError(f"the warm-up job ended {status}")
            return bool(status == "SUCCEEDED")

        wait_for(done, time.monotonic() + START_DEADLINE, "the warm-up job")
        self.timings[f"warm_up_job#{self.starts}"] = time.monotonic() - began

    def start(self) -> None:
        """Head, second node (started as soon as the head's GCS listens), warm-up job."""
        self.starts += 1
        began = time.monotonic()
        try:
            self.start_head()
            self.start_worker()
            self.wait_ready()
        except (RuntimeError, TimeoutError) as exc:
            tails = "".join(f"\n--- {node.log_path}:\n{node.log_tail()}" for node in (self.head, self.worker) if node)
            raise RuntimeError(f"{exc}{tails}") from None
        self.timings[f"nodes_ready#{self.starts}"] = time.monotonic() - began
        self.warm_up()

    # -- stopping ----------------------------------------------------------------------------------
    def stop_head(self) -> None:
        """Stop the head only (the Jobs API goes away); :meth:`restart` brings the cluster back."""
        if self.head is not None:
            self.seen += self.head.stop()
            self.head = None

    def stop(self) -> None:
        """Stop both nodes by pid, then SIGKILL anything left that names our temp dir."""
        began = time.monotonic()
        for node in (self.worker, self.head):
            if node is not None:
                self.seen += node.stop()
        self.worker = self.head = None
        kill_all(self.seen + processes_mentioning(self.temp_dir))
        self.timings[f"stop#{self.starts}"] = time.monotonic() - began

    def leftovers(self) -> list[psutil.Process]:
        """Processes of this cluster that still run (must be none after :meth:`stop`)."""
        return still_running(self.seen + processes_mentioning(self.temp_dir))

    def restart(self) -> None:
        """Stop what runs and start a fresh head and second node on the same ports (same address)."""
        self.stop()
        self.start()

    def remove(self) -> None:
        """Delete the temp dir (after :meth:`stop`)."""
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster() -> t.Iterator[RayCluster]:
    """One real Ray cluster for the whole session (head + ``evalbox`` node, token auth on).

    Skipped without a ``ray`` executable, failed instead under ``PROCMAN_REQUIRE_RAY=1``. At the
    end both nodes are stopped by pid and the fixture fails if any of their processes is left.
    """
    ray = find_ray()
    if ray is None:
        message = f"Ray tests need a `ray` executable. {INSTALL_HINT}"
        if ray_required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    cluster = RayCluster(ray)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        left = cluster.leftovers()
        cluster.remove()
        print(f"\nRay cluster timings (s): { {k: round(v, 2) for k, v in cluster.timings.items()} }")
    assert not left, f"Ray processes left after the cluster stopped: {[p.pid for p in left]}"
