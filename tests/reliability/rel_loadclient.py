"""A load client: ``python rel_loadclient.py URL TOKEN PREFIX THREADS PER_THREAD``.

Each thread POSTs ``/procman/api/programs/true/start`` with ``{"process_id": "PREFIX-T-I",
"queue": true}`` PER_THREAD times over its own keep-alive session, then the process prints one
JSON line: ``{"codes": {status: count}, "failures": [...], "workers": [pid...], "seconds": s}``.
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time

import requests


def main(url: str, token: str, prefix: str, threads: int, per_thread: int) -> None:
    """Run the threads and print the summary."""
    codes: collections.Counter[int] = collections.Counter()
    failures: list[str] = []
    workers: set[str] = set()
    lock = threading.Lock()

    def run(thread: int) -> None:
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {token}"
            for i in range(per_thread):
                process_id = f"{prefix}-{thread}-{i}"
                try:
                    response = session.post(f"{url}/procman/api/programs/true/start",
                                            json={"process_id": process_id, "queue": True}, timeout=60)
                except requests.RequestException as exc:
                    with lock:
                        failures.append(f"{process_id}: {exc!r}")
                    continue
                with lock:
                    codes[response.status_code] += 1
                    workers.add(response.headers.get("X-Worker-Pid", "?"))
                    if response.status_code not in (201, 202):
                        failures.append(f"{process_id}: {response.status_code} {response.text[:200]}")

    started = time.monotonic()
    pool = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    print(json.dumps({"codes": dict(codes), "failures": failures[:20], "workers": sorted(workers),
                      "seconds": time.monotonic() - started}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
