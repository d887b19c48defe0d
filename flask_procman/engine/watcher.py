"""The one background thread of a manager: notices ends, enforces timeouts, runs periodic work."""

from __future__ import annotations

import logging
import os
import selectors
import threading
import time
import typing as t

from .escalation import begin_kills, kill_due
from .forkpause import ForkPause
from .leftovers import Leftovers
from .local import Identity, open_pidfd, reap
from .wakepipe import WakePipe
from .watched import Watched, WatcherClient, child_pidfd, reap_blocking

# Re-exported: they were defined here before (the runtime and the stopper import them from here).
__all__ = ["Watched", "Watcher", "WatcherClient"]

log = logging.getLogger("flask_procman")


class Watcher:
    """One thread per manager, whatever the number of processes.

    Ends are noticed through pidfds in one ``selectors`` loop (pidfds work for adopted processes
    that are not our children too); without pidfds, by polling. Stops for timeouts escalate from
    SIGTERM to SIGKILL without ever blocking the loop.
    """

    FALLBACK_POLL = 0.1
    MIN_TICK_GAP = 0.05
    HEARTBEAT_EVERY = 1.0

    def __init__(self, client: WatcherClient, poll_interval: float, stop_timeout: float,
                 heartbeat: t.Callable[[], None] | None = None) -> None:
        self._client = client
        self._heartbeat = heartbeat
        #: Why the thread ended, if it ended by an exception (it should not: each step is guarded).
        self.death: str | None = None
        #: The watcher that took over from this dead one: late calls are passed on to it.
        self._successor: Watcher | None = None
        self._poll_interval = poll_interval
        self._stop_timeout = stop_timeout
        self._lock = threading.Lock()
        self._incoming: list[Watched] = []
        self._watched: dict[str, Watched] = {}
        self._pending_ends: list[tuple[Watched, int | None]] = []
        #: What ended runs left behind (group members, tagged processes), being stopped.
        self._leftovers = Leftovers(stop_timeout, client.record_survivors)
        self._stopping = False
        self._tick_now = True
        self._selector = selectors.DefaultSelector()
        self._wake = WakePipe()
        self._selector.register(self._wake.read_fd, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="procman-watcher", daemon=True)
        # Pausing for a fork: the loop parks between iterations, outside any database call.
        self._fork_pause = ForkPause()
        #: Extra periodic work of the loop (the output keeper): returns the seconds until its next run.
        self.periodic: t.Callable[[], float] | None = None
        self._next_periodic = 0.0

    # -- called from other threads ---------------------------------------------------------------
    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def is_alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called (a thread ended on purpose, not a dead one)."""
        return self._stopping

    def take_over(self, dead: Watcher) -> None:
        """Follow everything a watcher whose thread died was following (before :meth:`start`): the
        processes not yet recorded, the ends waiting to be recorded, the leftovers being stopped."""
        got = dead._lock.acquire(timeout=1.0)  # its thread is gone; a lock it held is not awaited
        try:
            dead._successor = self  # a watch() racing with this hand-over reaches us
            following = [*dead._watched.values(), *dead._incoming]
            pending = list(dead._pending_ends)
            self._leftovers = dead._leftovers
        finally:
            if got:
                dead._lock.release()
        for watched in following:
            dead._close_pidfd(watched)
        pending_ids = {w.process_id for w, _ in pending}
        self._pending_ends = pending
        self._incoming = [w for w in following if not w.ended and w.process_id not in pending_ids]
        dead.close()

    def watch(self, process_id: str, identity: Identity, *, is_child: bool, timeout_left: float | None) -> None:
        """Follow a process until it ends (thread-safe)."""
        deadline = time.monotonic() + max(0.0, timeout_left) if timeout_left is not None else None
        with self._lock:
            successor = self._successor
            if successor is None:
                self._incoming.append(Watched(process_id, identity, is_child, deadline))
        if successor is not None:
            successor.watch(process_id, identity, is_child=is_child, timeout_left=timeout_left)
            return
        self.wake()

    def request_tick(self) -> None:
        """Run the periodic database work soon (e.g. a slot was freed)."""
        if self._successor is not None:
            self._successor.request_tick()
            return
        self._tick_now = True
        self.wake()

    def wake(self) -> None:
        """Interrupt the loop's wait."""
        self._wake.wake()

    def watched(self) -> list[Watched]:
        """The processes followed now, including those not yet picked up by the loop."""
        with self._lock:
            return [w for w in (*self._watched.values(), *self._incoming) if not w.ended]

    def is_watching(self, process_id: str) -> bool:
        """True when the process is followed by this watcher."""
        with self._lock:
            return any(w.process_id == process_id and not w.ended
                       for w in (*self._watched.values(), *self._incoming))

    def pause(self, timeout: float = 5.0) -> None:
        """Park the loop between iterations (before an ``os.fork()``): a thread caught inside
        SQLite at the fork leaves its process-wide locks held forever in the child."""
        if not self._thread.is_alive() or threading.current_thread() is self._thread:
            return
        self._fork_pause.request(self.wake, timeout)

    def resume(self) -> None:
        """Let a paused loop go on (in the parent, after the fork)."""
        self._fork_pause.resume()

    def begin_stop(self, process_id: str) -> None:
        """Start a non-blocking stop (SIGTERM at the loop's next step, SIGKILL after the grace) of a
        watched process; the loop starts all the stops asked at once with one listing of processes."""
        if self._successor is not None:
            self._successor.begin_stop(process_id)
            return
        with self._lock:
            watched = self._watched.get(process_id)
            if watched is not None and watched.killer is None:
                watched.stop_wanted = True
        self.wake()

    def stop(self, join: bool = True) -> None:
        """End the loop; the processes keep running."""
        self._stopping = True
        self._fork_pause.release()
        self.wake()
        if join and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)
        with self._lock:
            for watched in self._watched.values():
                self._close_pidfd(watched)

    def finish_leftovers(self) -> None:
        """After :meth:`stop`: SIGKILL, once their grace is over, what ended jobs left behind (they
        were already sent SIGTERM), instead of dropping them with the loop."""
        self._leftovers.finish()

    def close(self) -> None:
        """Release the pipe and selector (after :meth:`stop`)."""
        self._selector.close()
        self._wake.close()  # a late wake() writes nowhere

    def abandon_after_fork(self) -> None:
        """In a forked child: drop the parent's fds without touching its processes.

        Takes no lock: the parent's watcher thread may have held one at the instant of the fork,
        and in the child nobody would ever release it (only this thread exists here).
        """
        for watched in list(self._watched.values()):
            if watched.pidfd is not None:
                try:
                    os.close(watched.pidfd)
                except OSError:
                    pass
        self._watched = {}
        self._incoming = []
        self._wake.close()
        selector_fd = getattr(self._selector, "fileno", lambda: -1)()  # epoll has one; select() not
        try:
            os.close(selector_fd)
        except OSError:
            pass

    # -- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # each step is guarded; if the thread dies anyway, the manager restarts it
            self.death = f"{type(exc).__name__}: {exc}"
            log.critical("procman: the watcher thread died (%s)", self.death, exc_info=True)

    def _loop(self) -> None:
        next_tick = 0.0
        last_tick = -1e9
        next_beat = 0.0
        while not self._stopping:
            if self._fork_pause.requested:
                self._fork_pause.park()
                continue
            try:
                self._take_incoming()
                now = time.monotonic()
                # Requested ticks (one per recorded end) are coalesced: at most one per MIN_TICK_GAP.
                if (self._tick_now and now >= last_tick + self.MIN_TICK_GAP) or now >= next_tick:
                    self._tick_now = False
                    last_tick = now
                    next_tick = now + self._poll_interval
                    self._safe(self._client.tick)
                    self._retry_pending_ends()
                timeout = self._wait_time(min(next_tick, last_tick + self.MIN_TICK_GAP) if self._tick_now else next_tick)
                for key, _ in self._selector.select(timeout):
                    if key.data is None:
                        self._wake.drain()
                    else:
                        self._on_exit(key.data)
                self._poll_without_pidfd()
                self._leftovers.sweep()
                self._enforce_deadlines()
                self._run_periodic()
                if self._heartbeat is not None and now >= next_beat:
                    next_beat = now + self.HEARTBEAT_EVERY
                    self._heartbeat()
            except BaseException:  # never let the watcher die (SystemExit from a receiver too): log, go on
                log.exception("procman watcher loop error")
                time.sleep(0.1)

    def _run_periodic(self) -> None:
        if self.periodic is not None and time.monotonic() >= self._next_periodic:
            delay = 1.0
            try:
                delay = self.periodic()
            except Exception as exc:
                log.warning("procman: periodic output work failed (%s); will retry", exc)
            self._next_periodic = time.monotonic() + delay

    def _safe(self, fn: t.Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as exc:  # SystemExit from a signal receiver must not end the thread
            log.warning("procman: periodic work failed (%s: %s); will retry", type(exc).__name__, exc)

    def _wait_time(self, next_tick: float) -> float:
        now = time.monotonic()
        timeout = max(0.0, next_tick - now)
        if self.periodic is not None:
            timeout = min(timeout, max(0.0, self._next_periodic - now))
        with self._lock:
            for watched in self._watched.values():
                if watched.pidfd is None:
                    timeout = min(timeout, self.FALLBACK_POLL)
                if watched.deadline is not None and watched.killer is None:
                    timeout = min(timeout, max(0.0, watched.deadline - now))
                if watched.killer is not None:
                    timeout = min(timeout, 0.05)
            if self._pending_ends:
                timeout = min(timeout, 0.5)
            if self._leftovers.busy():
                timeout = min(timeout, 0.1)
        return timeout

    def _take_incoming(self) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for watched in incoming:
            if watched.process_id in self._watched:
                continue
            watched.pidfd = open_pidfd(watched.identity) if not watched.is_child else child_pidfd(watched.identity.pid)
            with self._lock:
                self._watched[watched.process_id] = watched
            if watched.pidfd is not None:
                self._selector.register(watched.pidfd, selectors.EVENT_READ, watched)
            elif not watched.is_child and not watched.identity.is_alive():
                self._on_exit(watched)

    def _close_pidfd(self, watched: Watched) -> None:
        if watched.pidfd is not None:
            try:
                self._selector.unregister(watched.pidfd)
            except (KeyError, ValueError, OSError):
                pass
            try:
                os.close(watched.pidfd)
            except OSError:
                pass
            watched.pidfd = None

    def _poll_without_pidfd(self) -> None:
        with self._lock:
            candidates = [w for w in self._watched.values() if w.pidfd is None and not w.ended]
        for watched in candidates:
            if watched.is_child:
                try:
                    code = reap(watched.identity.pid)
                except ChildProcessError:
                    code = self._client.read_exit_status(watched.process_id)
                    self._finish(watched, code)
                    continue
                if code is not None:
                    self._finish(watched, code)
            elif not watched.identity.is_alive():
                self._on_exit(watched)

    def _on_exit(self, watched: Watched) -> None:
        if watched.ended:
            return
        code: int | None
        if watched.is_child:
            try:
                code = reap(watched.identity.pid)
                if code is None:  # pidfd said it ended; the status is on its way
                    code = reap_blocking(watched.identity.pid)
            except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): use the wrapper's record
                code = self._client.read_exit_status(watched.process_id)
        else:
            code = self._client.read_exit_status(watched.process_id)
        self._finish(watched, code)

    def _finish(self, watched: Watched, code: int | None) -> None:
        watched.ended = True
        self._close_pidfd(watched)
        if watched.killer is None:  # a stop's killer already covers the whole run
            self._leftovers.ended(watched.process_id, watched.identity, watched.is_child)
        if code is None and watched.killed:
            code = -9  # killed by our SIGKILL: the wrapper had no chance to write a status
        if watched.killer is not None and watched.killer.survivors():
            # The root ended but descendants are still alive: keep killing them, record after.
            with self._lock:
                self._pending_ends.append((watched, code))
            return
        self._report(watched, code)

    def _report(self, watched: Watched, code: int | None) -> None:
        survivors = watched.killer.survivors() if watched.killer is not None else []
        try:
            self._client.record_end(watched.process_id, code, survivors=survivors)
        except BaseException as exc:  # a SystemExit from a receiver: the end is retried, not lost
            log.warning("procman: could not record the end of %s (%s: %s); will retry",
                        watched.process_id, type(exc).__name__, exc)
            with self._lock:
                self._pending_ends.append((watched, code))
            return
        with self._lock:
            self._watched.pop(watched.process_id, None)

    def _retry_pending_ends(self) -> None:
        with self._lock:
            pending, self._pending_ends = self._pending_ends, []
        now = time.monotonic()
        for watched, code in pending:
            dying = watched.killer is not None and watched.killer.survivors()
            # Wait for the SIGKILL (and a moment after it) before recording what survived.
            if dying and (not watched.killed or now < (watched.kill_at or now) + 2.0):
                with self._lock:
                    self._pending_ends.append((watched, code))
                continue
            self._report(watched, code)

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        if self._leftovers.busy():
            self._leftovers.step(now)
        with self._lock:
            items = list(self._watched.values())
        starting: list[Watched] = []
        for watched in items:
            if watched.killer is not None or watched.ended:
                continue
            if watched.deadline is not None and now >= watched.deadline:
                try:
                    self._client.request_timeout_stop(watched.process_id)
                except Exception as exc:
                    log.warning("procman: could not mark %s as timed out (%s)", watched.process_id, exc)
                starting.append(watched)
            elif watched.stop_wanted:
                starting.append(watched)
        if starting:
            begin_kills(starting, self._stop_timeout)
        kill_due(items, now)
        if any(w.killer is not None and w.killed for w, _ in self._pending_ends):
            self._retry_pending_ends()
