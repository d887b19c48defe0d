"""flask_procman benchmarks: procman vs raw subprocess (the floor) vs the seed's naive manager.

    python bench/run.py            # the full run (`make bench`), about 10 minutes
    python bench/run.py --quick    # smoke run with small sizes, one trial each, under a minute
    python bench/run.py --only B1,B3 --trials 5

Every (bench, peer, trial) runs in its own fresh ``python bench/trial.py`` process that prints JSON,
so RSS and thread counts start clean; peers are interleaved within each round (their order rotates
from round to round). Figures are medians over the trials; a ratio to raw is the median of the
per-round ratios (peer / raw of the same round). Prints the table and writes it to
``bench/results/latest.md`` (and every trial's JSON to ``bench/results/latest.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import typing as t
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psutil
from _common import BENCH_DIR, MIB, PY, TAG_VAR, median

RESULTS = os.path.join(BENCH_DIR, "results")
PEERS = ["raw", "procman", "naive"]


@dataclasses.dataclass
class Row:
    """One figure of a bench in the table."""

    key: str
    label: str
    fmt: str = "{:.2f}"
    ratio: bool = False  # show peer / raw
    agg: str = "median"  # median | max | all (booleans: how many trials were true)
    #: the procman target: ("ratio" | "value", "<=" | ">=" | "==", bound, text)
    target: tuple[str, str, float, str] | None = None


@dataclasses.dataclass
class Case:
    bench: str
    title: str
    peers: list[str]
    full: dict[str, t.Any]
    quick: dict[str, t.Any]
    rows: list[Row]
    trials: int = 3
    timeout: float = 300


MIB_KEYS = dict(fmt="{:.1f}")

#: B5a and B5b judge a stop the same way.
STOP_ROWS = [
    Row("over_grace_s", "stop returns after grace + (s), max", "{:+.3f}", agg="max",
        target=("value", "<=", 0.2, "<= +0.2 s")),
    Row("left_alive", "processes left alive when stop returns, max", "{:.0f}", agg="max",
        target=("value", "==", 0, "0")),
]

CASES = [
    Case("B1", "spawn: start N x `true`, wait all", PEERS, {"n": 200}, {"n": 20}, [
        Row("per_process_ms", "ms per process (start..all waited)", "{:.2f}", True,
            target=("ratio", "<=", 2.0, "<= 2.0 x raw")),
        Row("start_loop_ms", "ms per start call", "{:.2f}", True),
        Row("manager_cpu_ms", "manager CPU ms per process (all its threads)", "{:.2f}", True),
        Row("children_cpu_ms", "children CPU ms per process (reaped ones)", "{:.2f}", True),
        Row("all_exit_0", "all exit codes 0", agg="all"),
    ], trials=5, timeout=180),
    Case("B2", "throughput: one child writes N MiB to stdout", PEERS, {"mib": 256}, {"mib": 16}, [
        Row("mib_s", "MiB/s (start..waited)", "{:.0f}", True, target=("ratio", ">=", 0.9, ">= 0.9 x raw")),
        Row("bytes_ok", "every byte kept (size + sha256)", agg="all", target=("value", "==", 1, "all trials")),
    ], trials=5, timeout=300),
    Case("B3", "scale: N concurrent `sleep 30`", PEERS, {"n": 500, "status_calls": 2000},
         {"n": 50, "status_calls": 200, "settle": 0.3}, [
        Row("threads", "threads at plateau (OS, sampler excluded)", "{:.0f}", target=("value", "<=", 4, "<= 4")),
        Row("rss_growth_mib", "RSS growth, peak - baseline (MiB)", "{:.1f}", target=("value", "<=", 10, "<= 10 MiB")),
        Row("status_p50_ms", "status p50 (ms)", "{:.3f}", True),
        Row("status_p99_ms", "status p99 (ms)", "{:.3f}", True, target=("value", "<=", 1.0, "<= 1 ms")),
        Row("status_cpu_p99_ms", "status p99, calling thread's CPU time (ms)", "{:.3f}", True),
        Row("status_preempted", "involuntary context switches during the status calls", "{:.0f}"),
        Row("stop_all_s", "stop all (s)", "{:.3f}", True, target=("ratio", "<=", 2.0, "<= 2.0 x raw")),
        Row("start_all_s", "start all (s)", "{:.2f}", True),
        Row("left_alive", "processes left after stop all (max)", "{:.0f}", agg="max"),
    ], trials=3, timeout=400),
    Case("B4", "flood: one child writes N MiB in 100-byte lines", PEERS,
         {"mib": 1024, "raw_sink": "file", "cap_gib": 3.0, "timeout": 240},
         {"mib": 32, "raw_sink": "file", "cap_gib": 1.0, "timeout": 30}, [
        Row("rss_growth_mib", "manager RSS growth, peak - baseline (MiB)", "{:.1f}", target=("value", "<=", 5, "<= 5 MiB")),
        Row("mib_s", "MiB/s (start..waited)", "{:.0f}", True),
        Row("bytes_ok", "every byte kept (size)", agg="all"),
    ], trials=3, timeout=400),
    Case("B5a", "stop: TERM-ignoring child, grace 1 s", PEERS, {"case": "term_ignore", "grace": 1.0},
         {"case": "term_ignore", "grace": 0.5}, STOP_ROWS, trials=3, timeout=60),
    Case("B5b", "stop: child with two grandchildren (one setsid), grace 1 s", PEERS, {"case": "tree", "grace": 1.0},
         {"case": "tree", "grace": 0.5}, STOP_ROWS, trials=3, timeout=60),
    Case("B6a", "bad output: 1 MiB of invalid UTF-8 on stdout and stderr", PEERS,
         {"case": "invalid_utf8", "size": MIB, "timeout": 5}, {"case": "invalid_utf8", "size": 256 * 1024, "timeout": 3}, [
        Row("bytes_ok", "every byte kept", agg="all", target=("value", "==", 1, "all trials")),
        Row("status_ok", "status readable", agg="all", target=("value", "==", 1, "all trials")),
        Row("nothing_hangs", "nothing hangs", agg="all", target=("value", "==", 1, "all trials")),
        Row("status_ms", "status after the end (ms)", "{:.2f}"),
    ], trials=3, timeout=60),
    Case("B6b", "bad output: a 10 MiB line without newline", PEERS,
         {"case": "long_line", "size": 10 * MIB, "pause": 1.0}, {"case": "long_line", "size": MIB, "pause": 0.3}, [
        Row("bytes_ok", "every byte kept", agg="all", target=("value", "==", 1, "all trials")),
        Row("status_ok", "status readable", agg="all", target=("value", "==", 1, "all trials")),
        Row("nothing_hangs", "nothing hangs", agg="all", target=("value", "==", 1, "all trials")),
        Row("status_mid_ms", "status while the line is unterminated (ms)", "{:.2f}"),
        Row("visible_mid_bytes", "bytes visible in that status", "{:.0f}"),
    ], trials=3, timeout=60),
    Case("B7", "HTTP: GET /procman/api/processes/<id> vs GET /ping (gunicorn gthread -w 2 --threads 2, "
               "wrk -c 4, 127.0.0.1) while N processes print", ["procman"],
         {"n": 50, "interval": 0.005, "workers": 2, "worker_class": "gthread", "threads": 2, "connections": 4,
          "min_log_bytes": 70_000, "warm_s": 1, "seconds": 5, "reps": 2},
         {"n": 10, "interval": 0.005, "workers": 2, "worker_class": "gthread", "threads": 2, "connections": 4,
          "min_log_bytes": 1000, "warm_s": 0.3, "seconds": 1, "reps": 1}, [
        Row("ping_rps", "GET /ping requests/s (trivial JSON route)", "{:.0f}"),
        Row("status_rps", "GET status requests/s (bearer token)", "{:.0f}"),
        Row("ratio_status_to_ping", "status / ping (same app, same trial)", "{:.2f}",
            target=("value", ">=", 0.5, ">= 0.5")),
        Row("ping_server_cpu_ms", "gunicorn workers' CPU per /ping request (ms)", "{:.2f}"),
        Row("status_server_cpu_ms", "gunicorn workers' CPU per status request (ms)", "{:.2f}"),
        Row("status_p99_ms", "status p99 latency under load (ms)", "{:.1f}"),
        Row("status_body_kib", "status response size (KiB)", "{:.1f}"),
    ], trials=3, timeout=300),
]


# ================================================================ running trials =================
def sweep(tag: str) -> int:
    """Kill every process still carrying this trial's tag; returns how many there were."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(TAG_VAR) == tag:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    for proc in found:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(found, timeout=5)
    return len(found)


def run_trial(case: Case, peer: str, params: dict[str, t.Any]) -> dict[str, t.Any]:
    tag = uuid.uuid4().hex
    env = dict(os.environ, **{TAG_VAR: tag})
    cmd = [PY, os.path.join(BENCH_DIR, "trial.py"), case.bench[:2], peer, json.dumps(params)]
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=case.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        result: dict[str, t.Any] = {"ok": False, "error": f"trial timed out after {case.timeout} s"}
    else:
        lines = [x for x in out.decode(errors="replace").splitlines() if x.startswith("RESULT ")]
        if lines:
            result = json.loads(lines[-1][len("RESULT "):])
        else:
            result = {"ok": False, "error": f"no RESULT line (exit {proc.returncode})"}
    result.update(case=case.bench, peer=peer, wall_s=time.monotonic() - t0, load1=load, leaked=sweep(tag))
    if err.strip():  # kept in the JSON (e.g. the naive peer's reader threads dying on bad UTF-8)
        result["stderr_tail"] = err.decode(errors="replace")[-4000:]
    return result


# ================================================================ the table =====================
def _agg(values: list[t.Any], how: str) -> t.Any:
    values = [v for v in values if v is not None]
    if not values:
        return None
    if how == "all":
        return sum(bool(v) for v in values), len(values)
    if how == "max":
        return max(values)
    return median(values)


def _fmt(value: t.Any, row: Row, capped: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return f"{value[0]}/{value[1]}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = row.fmt.format(value)
    return (">= " + text) if capped else text


def _met(row: Row, value: t.Any, ratio: float | None) -> bool | None:
    if row.target is None:
        return None
    kind, op, bound, _ = row.target
    x = ratio if kind == "ratio" else value
    if x is None:
        return False
    if isinstance(x, tuple):
        return x[0] == x[1]
    return {"<=": x <= bound, ">=": x >= bound, "==": x == bound}[op]


def build_table(results: list[dict[str, t.Any]], cases: list[Case]) -> tuple[list[str], list[str]]:
    """Markdown table lines, and the list of missed targets."""
    lines = ["| bench | figure | raw | procman | naive | procman / raw | naive / raw | procman target | met |",
             "|---|---|---:|---:|---:|---:|---:|---|---|"]
    misses = []
    for case in cases:
        by_peer = {p: [r for r in results if r["case"] == case.bench and r["peer"] == p] for p in PEERS}
        failed = {p: [r for r in rs if not r.get("ok")] for p, rs in by_peer.items()}
        for i, row in enumerate(case.rows):
            cells, values = {}, {}
            for peer in PEERS:
                trials = [r for r in by_peer[peer] if r.get("ok")]
                vals = [r["metrics"].get(row.key) for r in trials]
                values[peer] = _agg(vals, row.agg)
                capped = any(r["metrics"].get("capped") or r["metrics"].get("timed_out") for r in trials)
                cells[peer] = _fmt(values[peer], row, capped) if peer in case.peers else "n/a"
                if failed[peer] and peer in case.peers and i == 0:
                    cells[peer] += f" ({len(failed[peer])} failed)"
            ratios: dict[str, float | None] = {}
            for peer in ("procman", "naive"):
                ratios[peer] = None
                if row.ratio and peer in case.peers:
                    per_round = []
                    raw_trials = [r for r in by_peer["raw"] if r.get("ok")]
                    for r in by_peer[peer]:
                        mate = [x for x in raw_trials if x["round"] == r["round"]]
                        if r.get("ok") and mate and mate[0]["metrics"].get(row.key) and r["metrics"].get(row.key) is not None:
                            per_round.append(r["metrics"][row.key] / mate[0]["metrics"][row.key])
                    ratios[peer] = median(per_round) if per_round else None
            met = _met(row, values["procman"], ratios["procman"])
            target = row.target[3] if row.target else ""
            met_txt = "" if met is None else ("yes" if met else "**NO**")
            rtxt = {p: ("-" if ratios[p] is None else f"{ratios[p]:.2f} x") if row.ratio else "" for p in ratios}
            title = f"**{case.bench}** {case.title}" if i == 0 else ""
            lines.append(f"| {title} | {row.label} | {cells['raw']} | {cells['procman']} | {cells['naive']} | "
                         f"{rtxt['procman']} | {rtxt['naive']} | {target} | {met_txt} |")
            if met is False:
                shown = rtxt["procman"] if row.target and row.target[0] == "ratio" else cells["procman"]
                misses.append(f"{case.bench} {row.label}: procman {shown} (target {target})")
    return lines, misses


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=BENCH_DIR, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "flask_procman"], cwd=os.path.dirname(BENCH_DIR),
                                 capture_output=True, text=True, timeout=10).stdout.split("\n")
        changed = [line[3:] for line in changed if line.strip()]
        return rev + (f" (uncommitted changes in {', '.join(changed)})" if changed else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def code_fingerprint() -> str:
    """A hash of flask_procman's sources: a change during the run means mixed figures."""
    import hashlib

    digest = hashlib.sha256()
    root = os.path.join(os.path.dirname(BENCH_DIR), "flask_procman")
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    digest.update(name.encode() + f.read())
    return digest.hexdigest()[:12]


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    return (f"{os.cpu_count()} CPUs, {mem:.0f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}, wrk: {'yes' if shutil.which('wrk') else 'no (Python client)'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, one trial each (< 1 min)")
    parser.add_argument("--trials", type=int, default=None, help="trials per bench (default: 3, B1/B2 5; quick 1)")
    parser.add_argument("--only", default="", help="comma-separated benches, e.g. B1,B3,B5")
    parser.add_argument("--output", default=None, help="markdown file (default bench/results/latest.md; "
                        "quick runs write bench/results/quick.md)")
    args = parser.parse_args()

    only = {x.strip().upper() for x in args.only.split(",") if x.strip()}
    cases = [c for c in CASES if not only or c.bench.upper() in only or c.bench[:2].upper() in only]
    trials = {c.bench: (1 if args.quick else (args.trials or c.trials)) for c in cases}
    os.makedirs(RESULTS, exist_ok=True)
    output = args.output or os.path.join(RESULTS, "quick.md" if args.quick else "latest.md")
    started, load_start, revision, fingerprint = dt.datetime.now(), os.getloadavg(), git_revision(), code_fingerprint()
    t0 = time.monotonic()
    results: list[dict[str, t.Any]] = []
    for rnd in range(max(trials.values())):
        for case in cases:
            if rnd >= trials[case.bench]:
                continue
            params = case.quick if args.quick else case.full
            peers = case.peers[rnd % len(case.peers):] + case.peers[:rnd % len(case.peers)]
            for peer in peers:
                result = run_trial(case, peer, params)
                result["round"] = rnd
                results.append(result)
                status = "ok" if result.get("ok") else "FAILED: " + str(result.get("error"))
                brief = {k: (round(v, 4) if isinstance(v, float) else v)
                         for k, v in list(result.get("metrics", {}).items())[:4]}
                print(f"[{time.monotonic() - t0:6.1f}s] round {rnd + 1} {case.bench:4} {peer:8} {status} "
                      f"{brief}" + (f" LEAKED {result['leaked']}" if result["leaked"] else ""), flush=True)
    elapsed = time.monotonic() - t0
    changed = code_fingerprint() != fingerprint
    table, misses = build_table(results, cases)
    leaked = sum(r["leaked"] for r in results)
    header = [
        f"# flask_procman benchmarks ({'quick smoke run' if args.quick else 'full run'})",
        "",
        f"- run: {started:%Y-%m-%d %H:%M}, {elapsed / 60:.1f} min, `python bench/run.py"
        f"{' --quick' if args.quick else ''}{' --only ' + args.only if args.only else ''}`",
        f"- code: {revision}, sources {fingerprint}" + (
            " -- **WARNING: flask_procman's sources changed during this run: the trials mix code versions; "
            "run it again**" if changed else " (unchanged during the run)"),
        f"- machine: {machine()}",
        f"- load average (1 min) at start {load_start[0]:.1f}, at end {os.getloadavg()[0]:.1f}; per trial "
        f"median {median([r['load1'] for r in results]):.1f} (the machine is shared: other jobs add noise)",
        "- trials per bench: " + ", ".join(f"{b} {n}" for b, n in trials.items()) +
        "; each (bench, peer, trial) in a fresh Python process, peers interleaved in each round (order rotating)",
        "- figures: median over trials (`max` rows: worst trial; `k/n`: trials where it held); "
        "`x / raw`: median of the per-round ratios peer / raw",
        "- peers: **raw** = Popen + one epoll thread over every pipe (os.read) and pidfd (the floor); "
        "**procman** = flask_procman public API; **naive** = the seed design (2 reader threads + 1 monitor "
        "thread per process, text=True readline, a queue.Queue per stream); see bench/README.md",
        f"- processes left behind by trials (killed by the runner's sweep): {leaked}",
        "",
    ]
    notes = [
        "",
        "Notes:",
        "- B4: raw appends what it reads to a file (a streaming copy, like procman's log); the naive peer is "
        "stopped once it holds more than the cap, then shown as `>=`.",
        "- B5b: the grandchild started with `start_new_session=True` escapes a process-group kill: raw "
        "(killpg) leaves it alive, naive (terminate() of the child only) leaves both.",
        "- B6: the naive peer's reader threads die on the first invalid byte (text=True, strict UTF-8); "
        "the child then blocks on a full pipe: `nothing hangs` fails.",
        "- B7 exists for procman only (the other peers have no HTTP side): its ratio is procman's status "
        "route vs the trivial `/ping` JSON route of the same app, in the same trial. Load client: "
        + (", ".join(sorted({str(r["metrics"].get("client")) for r in results if r["case"] == "B7" and r.get("ok")}))
           or "-") + " (the Python fallback client is GIL-bound: it caps /ping and flatters the ratio).",
        "",
    ]
    if misses:
        notes += ["## Targets missed", ""] + [f"- {m}" for m in misses] + [
            "", "Where the time goes, with profiles and proposed fixes: see "
            "[findings.md](findings.md) (kept by hand; re-check it against this run).", ""]
    else:
        notes += ["Every procman target was met in this run.", ""]
    text = "\n".join(header + table + notes)
    print()
    print(text)
    with open(output, "w") as f:
        f.write(text)
    with open(os.path.splitext(output)[0] + ".json", "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {os.path.relpath(output)} ({elapsed / 60:.1f} min)")
    if changed:
        print("WARNING: flask_procman's sources changed during the run; the figures mix code versions.")


if __name__ == "__main__":
    main()
