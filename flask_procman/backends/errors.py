"""The errors a remote backend raises; each message says what to do about it."""

from __future__ import annotations

from ..errors import ProcManError, StartError


class BackendError(ProcManError):
    """A remote engine (a Ray head) refused or failed a request; the message carries its reason."""


class BackendUnavailable(BackendError):
    """The engine cannot be reached (connection refused or timed out): nothing was changed there.

    Starts fail with this error; records of runs already submitted stay as they are and are
    settled when the engine answers again.
    """


class BackendAuthError(BackendError):
    """The engine answered 401/403: the token is missing or wrong (the token is never shown)."""


class InvalidResources(ProcManError, ValueError):
    """A ``resources`` mapping procman cannot translate (unknown unit, negative amount, bad name)."""


class InfeasibleResources(StartError):
    """No node of the cluster has the resources asked for, so the job could never start.

    Raised before submitting, instead of letting Ray keep the job PENDING until its start timeout
    (900 s by default) fails it.
    """
