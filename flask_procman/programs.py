"""Declared programs: the only commands that HTTP and ``flask procman run`` may start."""

from __future__ import annotations

import dataclasses
import typing as t

from .engine.outputopts import check_options
from .errors import ConfigurationError, InvalidCommand


@dataclasses.dataclass(frozen=True)
class Program:
    """A command the app declared, with what a caller may add to it."""

    name: str
    cmd: tuple[str, ...]
    cwd: str | None = None
    env: t.Mapping[str, str] = dataclasses.field(default_factory=dict)
    timeout: float | None = None
    allow_args: bool = False
    env_keys: tuple[str, ...] = ()
    #: ``"tqdm"`` to read progress from tqdm's bar on stderr (default: the progress file).
    progress: str | None = None
    #: Cap of each log of a run, and what to do at it (default: ``PROCMAN_MAX_LOG_*``).
    max_log_bytes: int | None = None
    max_log_action: str | None = None
    #: The engine that runs it (a ``PROCMAN_BACKENDS`` name; None: local) and what it asks of it.
    backend: str | None = None
    resources: t.Mapping[str, t.Any] | None = None

    def build(self, args: t.Sequence[str] = (), env: t.Mapping[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
        """The argv and env overrides of one run; args and env only where the program allows them.

        Args are appended as separate argv items (never through a shell).
        """
        if args and not self.allow_args:
            raise InvalidCommand(f"Program {self.name!r} does not accept arguments (allow_args is False).")
        if not isinstance(args, (list, tuple)) or not all(isinstance(a, str) and "\0" not in a for a in args):
            raise InvalidCommand("args must be a list of strings without NUL characters.")
        extra = dict(env or {})
        refused = sorted(set(extra) - set(self.env_keys))
        if refused:
            raise InvalidCommand(
                f"Program {self.name!r} does not accept the environment variables {refused}; "
                f"it accepts {list(self.env_keys)}."
            )
        if not all(isinstance(v, str) and "\0" not in v for v in extra.values()):
            raise InvalidCommand("env values must be strings without NUL characters.")
        return [*self.cmd, *args], {**self.env, **extra}

    def describe(self) -> dict[str, t.Any]:
        """A JSON-able description (env values are left out: they may hold secrets)."""
        return {
            "name": self.name,
            "cmd": list(self.cmd),
            "cwd": self.cwd,
            "timeout": self.timeout,
            "allow_args": self.allow_args,
            "env_keys": list(self.env_keys),
            # Output options only when chosen (the app's PROCMAN_MAX_LOG_* apply otherwise).
            **{k: v for k, v in (("progress", self.progress), ("max_log_bytes", self.max_log_bytes),
                                 ("max_log_action", self.max_log_action), ("backend", self.backend),
                                 ("resources", dict(self.resources) if self.resources else None)) if v is not None},
        }


def make_program(name: str, spec: t.Mapping[str, t.Any]) -> Program:
    """Validate one declaration (from ``PROCMAN_PROGRAMS`` or ``register_program``)."""
    where = f"program {name!r}"
    if not isinstance(name, str) or not name or len(name) > 128:
        raise ConfigurationError(f"Program names must be non-empty strings, not {name!r}.")
    unknown = set(spec) - {"cmd", "cwd", "env", "timeout", "allow_args", "env_keys", "progress", "max_log_bytes",
                           "max_log_action", "backend", "resources"}
    if unknown:
        raise ConfigurationError(f"{where}: unknown settings {sorted(unknown)}.")
    cmd = spec.get("cmd")
    if not isinstance(cmd, (list, tuple)) or not cmd or not all(isinstance(c, str) and c for c in cmd):
        raise ConfigurationError(f"{where}: 'cmd' must be a non-empty list of strings (no shell).")
    cwd = spec.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise ConfigurationError(f"{where}: 'cwd' must be a string or None.")
    env = spec.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ConfigurationError(f"{where}: 'env' must be a dict of strings.")
    timeout = spec.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ConfigurationError(f"{where}: 'timeout' must be a positive number of seconds or None.")
    allow_args = spec.get("allow_args", False)
    if not isinstance(allow_args, bool):
        raise ConfigurationError(f"{where}: 'allow_args' must be True or False.")
    env_keys = spec.get("env_keys", ())
    if isinstance(env_keys, str) or not all(isinstance(k, str) for k in env_keys):
        raise ConfigurationError(f"{where}: 'env_keys' must be a list of variable names.")
    try:
        check_options(spec.get("progress"), spec.get("max_log_bytes"), spec.get("max_log_action"))
    except InvalidCommand as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    backend = spec.get("backend")
    if backend is not None and (not isinstance(backend, str) or not backend):
        raise ConfigurationError(f"{where}: 'backend' must be a backend name (PROCMAN_BACKENDS) or None.")
    resources = spec.get("resources")
    if resources is not None and not isinstance(resources, dict):
        raise ConfigurationError(f"{where}: 'resources' must be a dict such as {{'cpus': 1, 'gpus': 1}} or None.")
    return Program(name, tuple(cmd), cwd, dict(env), float(timeout) if timeout else None, allow_args, tuple(env_keys),
                   spec.get("progress"), spec.get("max_log_bytes"), spec.get("max_log_action"),
                   None if backend == "local" else backend, dict(resources) if resources else None)
