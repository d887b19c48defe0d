"""N x ``sleep 1`` onto a real Ray head: through procman (backend ``cluster``, cap 8) beside the same
jobs submitted straight to Ray's Jobs REST API with the same 8 in flight.

    python bench/ray_jobs.py [N]        (default 200; needs PROCMAN_TEST_RAY or .ray-venv/bin/ray)

Both peers keep 8 jobs in flight and see an end by polling ``GET /api/jobs/<id>``: the raw peer
every 0.1 s from one thread, procman at ``PROCMAN_POLL_INTERVAL`` (0.1 s here) on its watcher.
Prints a Markdown table (wall time, jobs/s, overhead per job = (wall - ideal) * 8 / N, where the
ideal is N / 8 x 1 s) and writes it to ``bench/results/ray.md``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from flask import Flask  # noqa: E402
from ray_support import TOKEN, RayCluster, find_ray  # noqa: E402

from flask_procman import ProcMan  # noqa: E402
from flask_procman.backends.ray_jobs import TERMINAL, RayJobsBackend  # noqa: E402

CAP = 8


def raw(address: str, n: int) -> tuple[float, int]:
    """Submit straight to the REST API with ``CAP`` jobs in flight; (wall seconds, jobs succeeded)."""
    backend = RayJobsBackend(address, TOKEN, check_feasible=False)
    pending = [f"raw-{uuid.uuid4().hex[:12]}" for _ in range(n)]
    running: list[str] = []
    ok = 0
    began = time.monotonic()
    while pending or running:
        while pending and len(running) < CAP:
            sid = pending.pop()
            backend.submit(submission_id=sid, process_id=sid, cmd=["sleep", "1"])
            running.append(sid)
        for sid in list(running):
            details = backend.details(sid) or {}
            if details.get("status") in TERMINAL:
                running.remove(sid)
                ok += details.get("status") == "SUCCEEDED"
                backend.forget(sid)
        time.sleep(0.1)
    wall = time.monotonic() - began
    backend.close()
    return wall, ok


def through_procman(address: str, n: int, folder: str) -> tuple[float, int]:
    """Queue ``n`` starts on backend ``cluster`` (cap 8) and wait for every end."""
    app = Flask("bench", instance_path=folder)
    app.config.update(PROCMAN_POLL_INTERVAL=0.1, PROCMAN_LOG_DIR=os.path.join(folder, "logs"),
                      PROCMAN_BACKENDS={"cluster": {"type": "ray", "address": address, "token": TOKEN,
                                                    "max_processes": CAP, "check_feasible": False}})
    pm = ProcMan(app)
    ids = [f"pm-{i}" for i in range(n)]
    with app.app_context():
        began = time.monotonic()
        for process_id in ids:
            pm.start_process(process_id, ["sleep", "1"], backend="cluster", queue=True)
        finals = [pm.wait(process_id, timeout=3600) for process_id in ids]
        wall = time.monotonic() - began
        pm.get_manager().shutdown()
    return wall, sum(f["status"] == "completed" and f["return_code"] == 0 for f in finals)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    ray = find_ray()
    if ray is None:
        raise SystemExit("needs a `ray` executable: PROCMAN_TEST_RAY or .ray-venv/bin/ray")
    cluster = RayCluster(ray)
    cluster.start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            figures = {"raw": raw(cluster.address, n), "procman": through_procman(cluster.address, n, folder)}
    finally:
        cluster.stop()
        cluster.remove()
    ideal = n / CAP * 1.0
    load = os.getloadavg()[0]
    lines = [f"# Ray Jobs: {n} x `sleep 1`, {CAP} in flight", "",
             f"- {time.strftime('%Y-%m-%d %H:%M')}, `python bench/ray_jobs.py {n}`, {os.cpu_count()} CPUs "
             f"(shared; load at end {load:.1f}); a two-node Ray 2.60 cluster on 127.0.0.1 (tests/ray_support.py)",
             f"- ideal wall time {ideal:.1f} s ({n} / {CAP} x 1 s); overhead per job = (wall - ideal) x {CAP} / {n}", "",
             "| peer | wall s | jobs/s | overhead s per job | succeeded |", "|---|---:|---:|---:|---:|"]
    for peer, (wall, ok) in figures.items():
        lines.append(f"| {peer} | {wall:.1f} | {n / wall:.2f} | {(wall - ideal) * CAP / n:.2f} | {ok}/{n} |")
    extra = (figures["procman"][0] - figures["raw"][0]) / n
    lines += ["", f"procman's own cost beside the raw REST peer: {extra * 1000:.0f} ms of wall time per job."]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "ray.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()


