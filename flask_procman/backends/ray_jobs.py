"""Running a record's command as a Ray job: the submission, the ends, stops, placement checks.

A run is one Ray job whose ``submission_id`` is the run's tag, so a manager that died between
submitting and recording can find the job again with ``GET /api/jobs/<tag>``. Ray keeps its own
queue in PENDING, but cannot cancel a PENDING job and fails it after 900 s: procman submits only
when its own slot is free, and refuses at once a request no node could ever run.

Ends (the research table, ``research/distributed.md`` section 4):

=========================================================  ===========  ===================
Ray                                                        procman      return code
=========================================================  ===========  ===================
SUCCEEDED                                                  completed    ``driver_exit_code``
FAILED, ``JOB_ENTRYPOINT_COMMAND_ERROR`` (the command ran)  completed    ``driver_exit_code``
                                                                        (<0: killed by signal)
FAILED, any other ``error_type`` (runtime env, supervisor  failed       None; Ray's message
actor start/death, entrypoint that could not start)                     in ``error``
STOPPED                                                    stopped      None (Ray keeps none)
unknown to the head (404: deleted, or the head restarted)  lost         None
=========================================================  ===========  ===================

A non-zero exit is ``completed`` with its code, as on the local engine; the manager turns
``completed``/``stopped`` into ``stopped``/``timed_out`` when it had asked for the stop.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
import time
import typing as t

from .errors import BackendError, InfeasibleResources, InvalidResources
from .ray_client import RayJobsClient, check_submission_id

#: CPUs a job asks for when it names no resource: Ray then places it on any node (a job with no
#: entrypoint resource is pinned to the head) and counts it.
DEFAULT_CPUS = 0.01
#: Ray's statuses after which nothing changes.
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
#: The ``error_type`` of a FAILED job whose command ran and exited non-zero (or was killed).
COMMAND_ERROR = "JOB_ENTRYPOINT_COMMAND_ERROR"
#: procman's resource names that map onto Ray's entrypoint fields; any other name is custom.
_STANDARD = {"cpus": "CPU", "gpus": "GPU", "memory": "memory"}
#: Ray's own names, which must be asked for with procman's (``cpus``, not ``CPU``).
_RESERVED = {"CPU", "GPU", "memory", "object_store_memory"}
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20,
          "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40}
_MEMORY_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
_RESOURCE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}")


def parse_memory(value: int | float | str) -> int:
    """Bytes from ``4294967296``, ``"4GiB"``, ``"4Gi"``, ``"512MB"``, ``"1.5G"`` (decimal unless ``i``)."""
    if isinstance(value, bool):
        raise InvalidResources(f"memory must be bytes or a string such as '4GiB', not {value!r}")
    if isinstance(value, (int, float)):
        amount = float(value)
    elif isinstance(value, str) and (match := _MEMORY_RE.fullmatch(value)) and match[2].lower() in _UNITS:
        amount = float(match[1]) * _UNITS[match[2].lower()]
    else:
        raise InvalidResources(f"memory must be bytes or a string such as '4GiB', '512MiB' or '2GB', not {value!r}")
    if not math.isfinite(amount) or amount < 0:
        raise InvalidResources(f"memory must be a finite amount >= 0, not {value!r}")
    return int(amount)


def _amount(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidResources(f"resource {name!r} must be a number >= 0, not {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class ResourceRequest:
    """What one job reserves on the node that runs it (Ray's resources are logical reservations)."""

    cpus: float | None = None
    gpus: float | None = None
    memory: int | None = None
    custom: t.Mapping[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, resources: t.Mapping[str, t.Any] | None, *, default_cpus: float = DEFAULT_CPUS) -> ResourceRequest:
        """From procman's ``{"cpus": 1, "gpus": 1, "memory": "4GiB", "<custom>": n}``; a request
        naming nothing gets ``default_cpus`` so that Ray places and counts it."""
        resources = dict(resources or {})
        custom: dict[str, float] = {}
        for name, value in resources.items():
            if name in _STANDARD:
                continue
            if not isinstance(name, str) or not _RESOURCE_NAME_RE.fullmatch(name) or name in _RESERVED:
                hint = " (use 'cpus', 'gpus' or 'memory')" if name in _RESERVED else ""
                raise InvalidResources(f"{name!r} is not a resource name procman can ask Ray for{hint}")
            custom[name] = _amount(name, value)
        request = cls(
            cpus=_amount("cpus", resources["cpus"]) if resources.get("cpus") is not None else None,
            gpus=_amount("gpus", resources["gpus"]) if resources.get("gpus") is not None else None,
            memory=parse_memory(resources["memory"]) if resources.get("memory") is not None else None,
            custom=custom,
        )
        if not request.asks_anything():
            request = dataclasses.replace(request, cpus=default_cpus)
        return request

    def asks_anything(self) -> bool:
        """True when some amount is above zero (Ray pins a job that asks for nothing to the head)."""
        return any((amount or 0) > 0 for amount in (self.cpus, self.gpus, self.memory, *self.custom.values()))

    def as_ray(self) -> dict[str, float]:
        """The request in the names of a node's ``resources_total`` (``CPU``, ``GPU``, ``memory``, custom)."""
        wanted = {"CPU": self.cpus, "GPU": self.gpus, "memory": self.memory, **self.custom}
        return {name: float(amount) for name, amount in wanted.items() if amount}

    def submission_fields(self) -> dict[str, t.Any]:
        """The ``entrypoint_*`` fields of a submission."""
        fields: dict[str, t.Any] = {}
        if self.cpus is not None:
            fields["entrypoint_num_cpus"] = self.cpus
        if self.gpus is not None:
            fields["entrypoint_num_gpus"] = self.gpus
        if self.memory is not None:
            fields["entrypoint_memory"] = self.memory
        if self.custom:
            fields["entrypoint_resources"] = dict(self.custom)
        return fields


def entrypoint(cmd: t.Sequence[str], cwd: str | None) -> str:
    """The shell line Ray runs: ``cd <cwd> && exec <argv>``, every word quoted (Ray runs it with ``/bin/sh -c``)."""
    if not cmd or not all(isinstance(word, str) for word in cmd):
        raise ValueError("cmd must be a non-empty list of strings")
    line = "exec " + shlex.join(cmd)
    if cwd is None:
        return line
    if not cwd.startswith("/"):
        raise ValueError(f"cwd must be an absolute path on the cluster's nodes, not {cwd!r}")
    return f"cd {shlex.quote(cwd)} && {line}"


def build_submission(*, submission_id: str, process_id: str, cmd: t.Sequence[str], cwd: str | None,
                     env: t.Mapping[str, str] | None, resources: ResourceRequest) -> dict[str, t.Any]:
    """The body of ``POST /api/jobs/``. Env values go to Ray (which keeps them in its job record);
    procman itself never stores them."""
    env = dict(env or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("env must map strings to strings")
    payload: dict[str, t.Any] = {
        "entrypoint": entrypoint(cmd, cwd),
        "submission_id": check_submission_id(submission_id),
        "metadata": {"procman_id": process_id, "procman_run_tag": submission_id},
        **resources.submission_fields(),
    }
    if env:
        payload["runtime_env"] = {"env_vars": env}
    return payload


@dataclasses.dataclass(frozen=True)
class JobEnd:
    """How a job ended, in procman's terms."""

    status: str  # completed, failed, stopped, lost
    return_code: int | None
    error: str | None


def job_end(details: t.Mapping[str, t.Any] | None) -> JobEnd | None:
    """The end of a job from its details (None: still PENDING or RUNNING); ``None`` details
    (the head does not know the job) is a ``lost`` end."""
    if details is None:
        return JobEnd("lost", None, "The Ray head no longer knows this job (it was deleted, or the head restarted "
                                    "and lost its job history); its end and exit code are unknown.")
    status = details.get("status")
    if status not in TERMINAL:
        return None
    code = details.get("driver_exit_code")
    message = details.get("message") or None
    if status == "SUCCEEDED":
        return JobEnd("completed", int(code) if code is not None else 0, None)
    if status == "STOPPED":
        return JobEnd("stopped", None, None)
    if code is not None and details.get("error_type") in (COMMAND_ERROR, None):
        return JobEnd("completed", int(code), message)
    kind = details.get("error_type") or "unknown"
    return JobEnd("failed", None, f"Ray could not run the job ({kind}): {message or 'no message'}")


class RayJobsBackend:
    """Runs commands as jobs of one Ray cluster (``address``, optional ``token``).

    ``check_feasible=False`` skips the placement check (a cluster whose autoscaler adds nodes on
    demand can run what no current node could).
    """

    def __init__(self, address: str, token: str | None = None, *, default_cpus: float = DEFAULT_CPUS,
                 check_feasible: bool = True, connect_timeout: float = 3.0, read_timeout: float = 30.0) -> None:
        self.client = RayJobsClient(address, token, connect_timeout=connect_timeout, read_timeout=read_timeout)
        self.default_cpus = default_cpus
        self.check_feasible = check_feasible

    def __repr__(self) -> str:
        return f"<RayJobsBackend {self.client.address}>"

    def close(self) -> None:
        """Release the HTTP connections."""
        self.client.close()

    # -- start ---------------------------------------------------------------------------------------
    def submit(self, *, submission_id: str, process_id: str, cmd: t.Sequence[str], cwd: str | None = None,
               env: t.Mapping[str, str] | None = None, resources: t.Mapping[str, t.Any] | None = None) -> str:
        """Submit the run; returns its submission id. Raises ``InvalidResources``,
        ``InfeasibleResources`` (nothing submitted), ``BackendUnavailable`` or ``BackendError``.

        Idempotent for a retried submit: a 500 because ``submission_id`` already exists returns the
        id when the existing job is this run (same ``procman_id`` in its metadata).
        """
        request = ResourceRequest.parse(resources, default_cpus=self.default_cpus)
        payload = build_submission(submission_id=submission_id, process_id=process_id, cmd=cmd, cwd=cwd, env=env,
                                   resources=request)
        if self.check_feasible:
            self.ensure_feasible(request)
        try:
            return self.client.submit(payload)
        except BackendError as exc:
            if "already exists" not in str(exc):
                raise
            existing = self.client.job(submission_id)
            if existing is None or (existing.get("metadata") or {}).get("procman_id") != process_id:
                raise
            return submission_id

    def ensure_feasible(self, request: ResourceRequest) -> None:
        """Raise ``InfeasibleResources`` unless some alive node has, in total, all that ``request`` asks."""
        wanted = request.as_ray()
        nodes = [n for n in self.client.nodes() if n.get("state") == "ALIVE"]
        for node in nodes:
            total = node.get("resources_total") or {}
            if all(float(total.get(name, 0)) >= amount for name, amount in wanted.items()):
                return
        if not nodes:
            raise InfeasibleResources(f"The Ray cluster at {self.client.address} has no alive node.")
        best = {name: max(float((n.get("resources_total") or {}).get(name, 0)) for n in nodes) for name in wanted}
        raise InfeasibleResources(
            f"No node of the Ray cluster at {self.client.address} has {_show(wanted)} (the most any node has: "
            f"{_show(best)}); Ray would keep the job pending until its start timeout. Ask for less, "
            "or add a node that has it."
        )

    # -- observe ---------------------------------------------------------------------------------------
    def details(self, submission_id: str) -> dict[str, t.Any] | None:
        """Ray's details of the job (None: unknown to the head)."""
        return self.client.job(submission_id)

    def end(self, submission_id: str) -> JobEnd | None:
        """The job's end, or None while it is pending or running (see :func:`job_end`)."""
        return job_end(self.client.job(submission_id))

    def forget(self, submission_id: str) -> bool:
        """Delete the finished job from the head (its history is kept in the head's memory until
        then). Ray keeps the log file on its node: a mirror that knows the node still reads it."""
        return self.client.delete(submission_id)

    # -- stop ----------------------------------------------------------------------------------------------
    def stop(self, submission_id: str, wait: float = 10.0, poll: float = 0.1) -> JobEnd | None:
        """Ask Ray to stop the job and wait up to ``wait`` seconds for its end.

        Ray sends SIGTERM to the command's whole process tree, then SIGKILL after the cluster's
        ``RAY_JOB_STOP_WAIT_TIME_S`` (3 s by default; set on the head: a client cannot choose the
        grace). A PENDING job is not cancelled by Ray: its command would start and then be killed;
        procman never leaves a job pending for long (it submits only into a free slot).
        Returns the end, or None if the job had not ended by then.
        """
        deadline = time.monotonic() + wait
        if self.client.stop(submission_id) is None:
            return job_end(None)
        while True:
            end = self.end(submission_id)
            if end is not None or time.monotonic() >= deadline:
                return end
            time.sleep(poll)


def _show(amounts: t.Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{name}: {amount:g}" for name, amount in amounts.items()) + "}"
