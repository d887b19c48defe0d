"""Helpers shared by the bench runner and its trial processes."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import threading
import time
import typing as t

import psutil

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
CHILDREN = os.path.join(BENCH_DIR, "children")
PY = sys.executable
MIB = 1024 * 1024
GIB = 1024 * MIB
#: Every process a trial starts inherits this variable: the runner finds (and kills) leftovers by it.
TAG_VAR = "PROCMAN_BENCH_TRIAL"


def child(name: str, *args: object) -> list[str]:
    """The command of a bench child script (``python -S``: no site import, quick to start)."""
    return [PY, "-S", os.path.join(CHILDREN, name), *map(str, args)]


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def percentile(values: t.Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: t.Sequence[float]) -> float:
    return statistics.median(values)


def rss() -> int:
    return psutil.Process().memory_info().rss


def is_alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (psutil also checks the pid was not reused)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (VmHWM; Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int | None:
    """VmHWM: the highest RSS since the last :func:`reset_peak_rss` (exact, unlike sampling)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Sampler(threading.Thread):
    """Peak RSS over ``baseline``: the kernel's VmHWM (reset at start) and, as a fallback and for the
    cap, a sample every ``interval`` s. Sampling alone misses peaks reached inside one long C call
    that holds the GIL (the naive peer's final ``"".join``). Optionally calls ``on_cap`` once when the
    sampled growth exceeds ``cap`` bytes (to keep a runaway peer from eating the machine)."""

    def __init__(self, baseline: int, interval: float = 0.01, cap: int | None = None,
                 on_cap: t.Callable[[], None] | None = None) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.baseline = baseline
        self.interval = interval
        self.cap = cap
        self.on_cap = on_cap
        self.peak = baseline
        self.capped = False
        self._halt = threading.Event()
        self._proc = psutil.Process()

    def start(self) -> None:
        self.hwm_reset = reset_peak_rss()
        super().start()

    def run(self) -> None:
        while not self._halt.is_set():
            value = self._proc.memory_info().rss
            if value > self.peak:
                self.peak = value
            if self.cap is not None and not self.capped and value - self.baseline > self.cap:
                self.capped = True
                if self.on_cap is not None:
                    self.on_cap()
            self._halt.wait(self.interval)

    def growth(self) -> int:
        return self.peak - self.baseline

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        value = self._proc.memory_info().rss
        self.peak = max(self.peak, value)
        hwm = peak_rss() if self.hwm_reset else None
        if hwm is not None:
            self.peak = max(self.peak, hwm)


def wait_until(predicate: t.Callable[[], t.Any], timeout: float, interval: float = 0.005) -> t.Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met in {timeout:.1f} s")
        time.sleep(interval)
