"""One trial of one bench with one peer, in its own fresh Python process; prints ``RESULT <json>``.

    python bench/trial.py BENCH PEER '<params json>' [--cprofile FILE]

BENCH is B1, B2, B3, B4, B5, B6 or B7; PEER is raw, procman or naive (B7: procman only).
Run by ``bench/run.py``; run it by hand (under ``py-spy record`` or with ``--cprofile``) to profile.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import typing as t
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psutil
from _common import BENCH_DIR, GIB, MIB, PY, Sampler, child, is_alive, percentile, raise_nofile, rss, wait_until

sys.path.insert(0, os.path.join(BENCH_DIR, "children"))
import badoutput
import writer


def make_peer(name: str, workdir: str, **opts: t.Any) -> t.Any:
    if name == "raw":
        from peers.raw import RawPeer

        return RawPeer(workdir, **opts)
    if name == "naive":
        from peers.naive import NaivePeer

        return NaivePeer(workdir)
    if name == "procman":
        from peers.procman_peer import ProcmanPeer

        return ProcmanPeer(workdir, **opts)
    raise SystemExit(f"unknown peer {name!r}")


def warm_up(peer: t.Any) -> None:
    """Start and wait one process, so lazy setup (threads, database, imports) is not measured."""
    for i in range(2):
        peer.start(f"warmup-{i}", ["true"])
        peer.wait(f"warmup-{i}", 30)
    gc.collect()
    time.sleep(0.05)


def expected_digest(mode: str, total: int) -> str:
    digest = hashlib.sha256()
    for piece in writer.chunks(mode, total):
        digest.update(piece)
    return digest.hexdigest()


def threads_now() -> int:
    """OS threads of this process, not counting the bench's own RSS sampler."""
    return psutil.Process().num_threads() - sum(1 for th in threading.enumerate() if th.name == "bench-sampler")


# ================================================================ B1 spawn ======================
def b1(peer: t.Any, p: dict[str, t.Any]) -> dict[str, t.Any]:
    n = p["n"]
    ids = [f"b1-{i}" for i in range(n)]
    self0, kids0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    for process_id in ids:
        peer.start(process_id, ["true"])
    t1 = time.perf_counter()
    codes = [peer.wait(process_id, 60) for process_id in ids]
    t2 = time.perf_counter()
    self1, kids1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)

    def cpu(a: t.Any, b: t.Any) -> float:
        return (b.ru_utime - a.ru_utime + b.ru_stime - a.ru_stime) / n * 1000

    return {"per_process_ms": (t2 - t0) / n * 1000, "start_loop_ms": (t1 - t0) / n * 1000,
            "manager_cpu_ms": cpu(self0, self1), "children_cpu_ms": cpu(kids0, kids1),
            "total_s": t2 - t0, "all_exit_0": all(c == 0 for c in codes)}


# ================================================================ B2 throughput =================
def b2(peer: t.Any, p: dict[str, t.Any]) -> dict[str, t.Any]:
    total = p["mib"] * MIB
    t0 = time.perf_counter()
    peer.start("b2", child("writer.py", "block", total))
    code = peer.wait("b2", p.get("timeout", 300))
    elapsed = time.perf_counter() - t0
    size, digest = peer.output_digest("b2", "stdout")
    return {"mib_s": total / MIB / elapsed, "elapsed_s": elapsed, "exit_code": code, "bytes": size,
            "bytes_ok": size == total and digest == expected_digest("block", total)}


# ================================================================ B3 scale ======================
def b3(peer: t.Any, p: dict[str, t.Any]) -> dict[str, t.Any]:
    n, calls = p["n"], p["status_calls"]
    ids = [f"b3-{i}" for i in range(n)]
    sampler = Sampler(rss())
    sampler.start()
    t0 = time.perf_counter()
    for process_id in ids:
        peer.start(process_id, ["sleep", str(p.get("sleep", 30))])
    start_s = time.perf_counter() - t0
    time.sleep(p.get("settle", 1.0))  # plateau: every thread started, the watcher caught up
    threads = threads_now()
    py_threads = threading.active_count() - 1
    rss_plateau = rss() - sampler.baseline
    latencies, cpu_latencies = [], []
    bad = 0
    me = psutil.Process()
    switches0 = me.num_ctx_switches().involuntary
    for k in range(calls + 20):
        process_id = ids[k % n]
        c0 = time.thread_time_ns()
        s0 = time.perf_counter_ns()
        status = peer.status(process_id)
        s1 = time.perf_counter_ns()
        c1 = time.thread_time_ns()
        if k >= 20:  # the first calls warm caches
            latencies.append((s1 - s0) / 1e6)
            cpu_latencies.append((c1 - c0) / 1e6)
        if status is None or status["status"] != "running":
            bad += 1
    preempted = me.num_ctx_switches().involuntary - switches0
    s0 = time.perf_counter()
    peer.stop_all(p.get("grace", 5.0))
    stop_s = time.perf_counter() - s0
    sampler.stop()
    roots = [peer.root_pid(i) for i in ids]
    left = sum(1 for pid in roots if psutil.pid_exists(pid) and is_alive(psutil.Process(pid)))
    return {"threads": threads, "py_threads": py_threads, "rss_growth_mib": sampler.growth() / MIB,
            "rss_plateau_mib": rss_plateau / MIB, "status_p50_ms": percentile(latencies, 0.5),
            "status_p99_ms": percentile(latencies, 0.99), "status_max_ms": max(latencies),
            "status_cpu_p50_ms": percentile(cpu_latencies, 0.5), "status_cpu_p99_ms": percentile(cpu_latencies, 0.99),
            "status_preempted": preempted,
            "stop_all_s": stop_s, "start_all_s": start_s, "status_not_running": bad, "left_alive": left}


# ================================================================ B4 flood ======================
def b4(peer: t.Any, p: dict[str, t.Any]) -> dict[str, t.Any]:
    total = (p["mib"] * MIB) // writer.LINE * writer.LINE
    cap = int(p.get("cap_gib", 3.0) * GIB)

    def on_cap() -> None:  # the naive peer holding > cap: stop the flood, report ">= cap"
        for proc in psutil.Process().children():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass

    sampler = Sampler(rss(), interval=0.02, cap=cap, on_cap=on_cap)
    sampler.start()
    t0 = time.perf_counter()
    peer.start("b4", child("writer.py", "lines", total))
    timed_out = False
    try:
        peer.wait("b4", p.get("timeout", 300))
    except TimeoutError:
        timed_out = True
        on_cap()
    elapsed = time.perf_counter() - t0
    sampler.stop()
    result: dict[str, t.Any] = {"rss_growth_mib": sampler.growth() / MIB, "capped": sampler.capped,
                                "timed_out": timed_out, "elapsed_s": elapsed}
    if not sampler.capped and not timed_out:
        size = peer.output_size("b4", "stdout")
        result.update(bytes=size, bytes_ok=size == total, mib_s=total / MIB / elapsed)
    return result


# ================================================================ B5 stop =======================
def b5(peer: t.Any, p: dict[str, t.Any]) -> dict[str, t.Any]:
    grace = p["grace"]
    script = {"term_ignore": "term_ignorer.py", "tree": "tree.py"}[p["case"]]
    peer.start("b5", child(script))
    line = wait_until(lambda: peer.output("b5", "stdout"), 20).decode()
    root = psutil.Process(peer.root_pid("b5"))
    tree = [root, *root.children(recursive=True)]
    for pid in map(int, re.findall(r"\d+", line)):  # the grandchildren the child reported
        if pid not in {q.pid for q in tree}:
            tree.append(psutil.Process(pid))
    t0 = time.perf_counter()
    peer.stop("b5", grace)
    stop_s = time.perf_counter() - t0
    left_now = [q.pid for q in tree if is_alive(q)]
    time.sleep(0.3)
    left_later = [q.pid for q in tree if is_alive(q)]
    for q in tree:
        try:
            q.kill()
        except psutil.NoSuchProcess:
            pass
    return {"stop_s": stop_s, "over_grace_s": stop_s - grace, "tree_size": len(tree),
            "left_alive": len(left_now), "left_alive_after_0_3s": len(left_later)}


# ================================================================ B6 bad output =================
def _call_with_timeout(fn: t.Callable[[], t.Any], timeout: float) -> tuple[bool, t.Any, float]:
    """Run fn in a thread: (finished, value or exception, seconds)."""
    box: list[t.Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:
            box.append(exc)

    t0 = time.perf_counter()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return (not thread.is_alive()), (box[0] if box else None), time.perf_counter() - t0


def b6(peer: t.Any, p: dict[str, t.Any]) -> dict[str, t.Any]:
    case, size = p["case"], p["size"]
    result: dict[str, t.Any] = {}
    if case == "invalid_utf8":
        peer.start("b6", child("badoutput.py", "invalid", size))
    else:
        peer.start("b6", child("badoutput.py", "longline", size, p["pause"]))
        # Mid-way: the whole line is written but has no newline yet (the child sleeps before exiting).
        time.sleep(min(1.0, p["pause"] / 2) + size / (200 * MIB))
        done, value, secs = _call_with_timeout(lambda: peer.status("b6"), 10)
        result["status_mid_ms"] = secs * 1000
        result["status_mid_ok"] = done and isinstance(value, dict)
        if result["status_mid_ok"]:
            result["visible_mid_bytes"] = len(value.get("stdout", "").encode("utf-8", "surrogateescape"))
    done, value, secs = _call_with_timeout(lambda: peer.wait("b6", p.get("timeout", 15)), p.get("timeout", 15) + 5)
    result["hung"] = not done or isinstance(value, BaseException)
    result["wait_s"] = secs
    streams = ("stdout", "stderr") if case == "invalid_utf8" else ("stdout",)
    ok = True
    for stream in streams:
        expected = badoutput.payload("invalid" if case == "invalid_utf8" else "longline", size, stream)
        done_o, data, _ = _call_with_timeout(lambda s=stream: peer.output("b6", s), 10)
        got = data if done_o and isinstance(data, bytes) else b""
        result[f"{stream}_bytes"] = len(got)
        ok = ok and got == expected
    result["bytes_ok"] = ok
    done, value, secs = _call_with_timeout(lambda: peer.status("b6"), 10)
    result["status_ok"] = done and isinstance(value, dict) and isinstance(value.get("stdout"), str)
    result["status_ms"] = secs * 1000
    result["nothing_hangs"] = not result["hung"] and result["status_ok"] and result.get("status_mid_ok", True)
    return result


# ================================================================ B7 HTTP =======================
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _load_wrk(url: str, seconds: float, connections: int, token: str, script: str | None,
              env: dict[str, str]) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-H", f"Authorization: Bearer {token}"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, env=env, timeout=seconds + 30).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"unexpected wrk output: {out[-500:]!r}")
    rps = float(found.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)

    def ms(pct: str) -> float:
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    return {"rps": rps, "non2xx": int(non2xx.group(1)) if non2xx else 0, "p50_ms": ms("50"), "p99_ms": ms("99"),
            "socket_errors": errors.group(0) if errors else ""}


def _load_python(port: int, paths: list[str], seconds: float, connections: int, token: str) -> dict[str, float]:
    """Fallback when wrk is not installed: threads with keep-alive http.client connections."""
    import http.client

    counts, bad, lat = [0] * connections, [0] * connections, []
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        k = i
        while time.monotonic() < stop:
            s0 = time.perf_counter()
            conn.request("GET", paths[k % len(paths)], headers={"Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            resp.read()
            lat.append(time.perf_counter() - s0)
            counts[i] += 1
            bad[i] += resp.status != 200
            k += connections
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t0
    lat_ms = [x * 1000 for x in lat]
    return {"rps": sum(counts) / elapsed, "non2xx": sum(bad), "p50_ms": percentile(lat_ms, 0.5),
            "p99_ms": percentile(lat_ms, 0.99), "socket_errors": ""}


def b7(peer_name: str, p: dict[str, t.Any], workdir: str) -> dict[str, t.Any]:
    if peer_name != "procman":
        raise SystemExit("B7 measures procman only (the other peers have no HTTP side)")
    token = "bench-token-" + "x" * 20
    env = dict(os.environ, PROCMAN_BENCH_INSTANCE=os.path.join(workdir, "instance"), PROCMAN_BENCH_TOKEN=token,
               B7_COUNT=str(p["n"]))
    os.environ.update(PROCMAN_BENCH_INSTANCE=env["PROCMAN_BENCH_INSTANCE"], PROCMAN_BENCH_TOKEN=token)
    import b7_app
    from peers.procman_peer import ProcmanPeer

    peer = ProcmanPeer(workdir, app=b7_app.app, procman=b7_app.procman)
    n = p["n"]
    for i in range(n):
        peer.start(f"b7-{i}", child("printer.py", p["interval"]))
    port = _free_port()
    gunicorn = subprocess.Popen(
        [PY, "-m", "gunicorn", "-w", str(p["workers"]), "-k", p["worker_class"], "--threads", str(p["threads"]),
         "-b", f"127.0.0.1:{port}", "--chdir", BENCH_DIR, "--log-level", "warning", "b7_app:app"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(workdir, "gunicorn.log"), "wb"),
        start_new_session=True)
    result: dict[str, t.Any] = {}
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return urllib.request.urlopen(base + "/ping", timeout=1).status == 200
            except OSError:
                return False

        wait_until(up, 30, 0.1)
        # Let every printer fill its log past the status tail (PROCMAN_OUTPUT_TAIL, 64 KiB by default).
        wait_until(lambda: peer.status(f"b7-{n - 1}")["stdout_size"] >= p["min_log_bytes"], 60, 0.2)
        sample = urllib.request.urlopen(urllib.request.Request(
            base + "/procman/api/processes/b7-0", headers={"Authorization": f"Bearer {token}"}), timeout=5).read()
        result["status_body_kib"] = len(sample) / 1024
        script = os.path.join(BENCH_DIR, "b7_status.lua")
        use_wrk = shutil.which("wrk") is not None and not p.get("python_client")
        result["client"] = "wrk" if use_wrk else "python"

        workers = psutil.Process(gunicorn.pid).children()

        def workers_cpu() -> float:
            total = 0.0
            for proc in workers:
                try:
                    times = proc.cpu_times()
                    total += times.user + times.system
                except psutil.NoSuchProcess:
                    pass
            return total

        def load(route: str, seconds: float) -> dict[str, float]:
            cpu0, wall0 = workers_cpu(), time.perf_counter()
            if use_wrk:
                out = _load_wrk(base + ("/ping" if route == "ping" else "/"), seconds, p["connections"], token,
                                None if route == "ping" else script, env)
            else:
                paths = ["/ping"] if route == "ping" else [f"/procman/api/processes/b7-{i}" for i in range(n)]
                out = _load_python(port, paths, seconds, p["connections"], token)
            requests = out["rps"] * (time.perf_counter() - wall0)
            out["server_cpu_ms"] = (workers_cpu() - cpu0) / max(requests, 1) * 1000
            return out

        load("ping", p["warm_s"])
        load("status", p["warm_s"])
        runs: dict[str, list[dict[str, float]]] = {"ping": [], "status": []}
        for rep in range(p["reps"]):
            for route in (("ping", "status") if rep % 2 == 0 else ("status", "ping")):
                runs[route].append(load(route, p["seconds"]))
        for route, rs in runs.items():
            result[f"{route}_rps"] = sorted(r["rps"] for r in rs)[len(rs) // 2]
            result[f"{route}_p99_ms"] = sorted(r["p99_ms"] for r in rs)[len(rs) // 2]
            result[f"{route}_non2xx"] = sum(r["non2xx"] for r in rs)
            result[f"{route}_server_cpu_ms"] = sorted(r["server_cpu_ms"] for r in rs)[len(rs) // 2]
        result["ratio_status_to_ping"] = result["status_rps"] / result["ping_rps"]
        result["output_mib_written"] = sum(peer.status(f"b7-{i}")["stdout_size"] for i in range(n)) / MIB
    finally:
        os.killpg(gunicorn.pid, signal.SIGTERM)
        try:
            gunicorn.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(gunicorn.pid, signal.SIGKILL)
            gunicorn.wait()
        peer.stop_all(2.0)
        peer.close()
    return result


BENCHES = {"B1": b1, "B2": b2, "B3": b3, "B4": b4, "B5": b5, "B6": b6}


def main() -> None:
    bench, peer_name, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    profile_path = sys.argv[sys.argv.index("--cprofile") + 1] if "--cprofile" in sys.argv else None
    raise_nofile()
    workdir = tempfile.mkdtemp(prefix=f"procman-bench-{bench}-{peer_name}-")
    result: dict[str, t.Any] = {"bench": bench, "peer": peer_name, "ok": True}
    peer = None
    t0 = time.perf_counter()
    profiler = None
    try:
        if bench == "B7":
            if profile_path:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            result["metrics"] = b7(peer_name, params, workdir)
        else:
            opts = {"sink": params["raw_sink"]} if peer_name == "raw" and "raw_sink" in params else {}
            if peer_name == "procman" and bench in ("B5",):
                opts["PROCMAN_STOP_TIMEOUT"] = params["grace"]
            peer = make_peer(peer_name, workdir, **opts)
            warm_up(peer)
            if profile_path:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            result["metrics"] = BENCHES[bench](peer, params)
    except Exception as exc:
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-3000:]
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_path)
    result["trial_s"] = time.perf_counter() - t0
    result["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    capped = bool(result.get("metrics", {}).get("capped"))
    if peer is not None and not capped:
        try:
            if peer_name == "naive":
                peer.kill_all()
            else:
                peer.close()
        except Exception as exc:
            result["close_error"] = repr(exc)
    elif peer is not None:
        peer.kill_all()
    shutil.rmtree(workdir, ignore_errors=True)
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (the naive peer may hold GiBs of str objects)


if __name__ == "__main__":
    main()
