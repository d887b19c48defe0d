"""flask_procman through its public API, the way an app uses it (one app context pushed for the trial)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import typing as t

READ_CHUNK = 16 * 1024 * 1024


def make_app(instance_path: str, **config: t.Any) -> t.Any:
    from flask import Flask

    from flask_procman import ProcMan

    app = Flask("procman_bench", instance_path=instance_path)
    app.config.update(
        PROCMAN_MAX_PROCESSES=1000,
        PROCMAN_RETENTION=None,  # no background pruning during a trial
        PROCMAN_STOP_TIMEOUT=5.0,
    )
    app.config.update(config)
    procman = ProcMan(app)
    return app, procman


def _in_app_context(fn: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
    """Calls from the bench's helper threads (B6 hang guard) push the app context there, as an app would."""

    @functools.wraps(fn)
    def wrapper(self: ProcmanPeer, *args: t.Any, **kwargs: t.Any) -> t.Any:
        from flask import has_app_context

        with (contextlib.nullcontext() if has_app_context() else self.app.app_context()):
            return fn(self, *args, **kwargs)

    return wrapper


class ProcmanPeer:
    name = "procman"

    def __init__(self, workdir: str, app: t.Any = None, procman: t.Any = None, **config: t.Any) -> None:
        if app is None:
            app, procman = make_app(os.path.join(workdir, "instance"), **config)
        self.app, self.pm = app, procman
        self._ctx = app.app_context()
        self._ctx.push()

    @_in_app_context
    def start(self, process_id: str, cmd: list[str]) -> None:
        ok = self.pm.start_process(process_id, cmd)
        assert ok, "procman refused the start (PROCMAN_MAX_PROCESSES reached?)"

    @_in_app_context
    def wait(self, process_id: str, timeout: float) -> int | None:
        try:
            return t.cast(int | None, self.pm.wait(process_id, timeout=timeout)["return_code"])
        except TimeoutError:
            raise TimeoutError(process_id) from None

    @_in_app_context
    def root_pid(self, process_id: str) -> int:
        return t.cast(int, self.pm.get_process_status(process_id)["pid"])

    @_in_app_context
    def status(self, process_id: str) -> dict[str, t.Any]:
        return t.cast(dict, self.pm.get_process_status(process_id))

    @_in_app_context
    def output(self, process_id: str, stream: str = "stdout") -> bytes:
        parts, offset = [], 0
        while True:
            data, offset = self.pm.read_output(process_id, stream, offset, READ_CHUNK)
            if not data:
                return b"".join(parts)
            parts.append(data)

    @_in_app_context
    def output_digest(self, process_id: str, stream: str = "stdout") -> tuple[int, str]:
        digest, offset = hashlib.sha256(), 0
        while True:
            data, offset = self.pm.read_output(process_id, stream, offset, READ_CHUNK)
            if not data:
                return offset, digest.hexdigest()
            digest.update(data)

    @_in_app_context
    def output_size(self, process_id: str, stream: str = "stdout") -> int:
        return t.cast(int, self.pm.get_process_status(process_id)[stream + "_size"])

    @_in_app_context
    def stop(self, process_id: str, grace: float) -> None:
        self.pm.stop_process(process_id, timeout=grace)

    @_in_app_context
    def stop_all(self, grace: float) -> None:
        self.pm.stop_all(timeout=grace)

    def close(self) -> None:
        self.pm.get_manager().shutdown(stop_processes=True)
        self._ctx.pop()
