"""HTTP client of a Ray cluster's dashboard: the Jobs REST API, node resources and job log files.

It never imports ``ray``: the app needs only ``requests`` (``pip install flask-procman[ray]``).
Every call has a bounded timeout; a head that cannot be reached raises
:class:`~flask_procman.backends.BackendUnavailable`, a 401/403 raises ``BackendAuthError``, any
other refusal ``BackendError`` with Ray's reason. The token is sent as ``Authorization: Bearer``
(Ray's ``RAY_AUTH_MODE=token``) and appears in no message, ``repr`` or log line.
"""

from __future__ import annotations

import re
import typing as t
from urllib.parse import quote, urlsplit

from .errors import BackendAuthError, BackendError, BackendUnavailable

try:
    import requests
except ImportError as exc:  # pragma: no cover - the extra is installed in every test run
    raise ImportError(
        "The Ray backend needs the 'requests' package: pip install 'flask-procman[ray]'"
    ) from exc

#: Submission ids procman sends: Ray breaks on a ``/`` in one (a leaked supervisor process).
SUBMISSION_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: Ray's job log file name on the node that runs the job's driver.
JOB_LOG_NAME = "job-driver-{}.log"
_ERROR_LINE_RE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception): .*$", re.MULTILINE)
#: Characters of a refusal's body kept in an error message (Ray answers with whole tracebacks).
_REASON_CHARS = 500


def _reason(response: requests.Response) -> str:
    """The useful part of a refusal: Ray's 500s are Python tracebacks (sometimes followed by more
    lines); the last ``SomeError: message`` line says what went wrong."""
    text = response.text.strip()
    if "Traceback" in text:
        errors = _ERROR_LINE_RE.findall(text)
        if errors:
            return str(errors[-1]).strip()[:_REASON_CHARS]
    return text[:_REASON_CHARS] or response.reason


def check_submission_id(submission_id: str) -> str:
    """``submission_id`` if Ray can take it safely, else ``ValueError``."""
    if not isinstance(submission_id, str) or not SUBMISSION_ID_RE.fullmatch(submission_id):
        raise ValueError(f"a Ray submission id must match [A-Za-z0-9_-]{{1,128}}, not {submission_id!r}")
    return submission_id


class _Bearer(requests.auth.AuthBase):
    """``Authorization: Bearer <token>`` on every request; its repr does not show the token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "<bearer token>"


class RayJobsClient:
    """One Ray head's dashboard at ``address`` (``http://head:8265``).

    ``connect_timeout`` bounds how long an unreachable head takes to fail; ``read_timeout`` how
    long an answer may take (a large log takes about 1 s per 20 MB). One ``requests.Session``
    keeps connections alive; use one client per thread.
    """

    def __init__(self, address: str, token: str | None = None, *, connect_timeout: float = 3.0,
                 read_timeout: float = 30.0) -> None:
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"a Ray address must be an http(s) URL such as http://head:8265, not {address!r}")
        self.address = address.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "flask-procman"
        if token:
            # An explicit auth, not a default header: requests would otherwise replace the header
            # with ~/.netrc credentials. It is dropped on a redirect to another host.
            self._session.auth = _Bearer(token)

    def __repr__(self) -> str:
        return f"<RayJobsClient {self.address}>"  # never the token

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    # -- transport -------------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, ok: t.Collection[int] = (200,),
                 **kwargs: t.Any) -> requests.Response:
        """One request; maps transport failures and refusals to procman's errors."""
        url = self.address + path
        try:
            response = self._session.request(method, url, timeout=self.timeout, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            # requests' messages name the URL, never the headers: the token cannot leak here.
            raise BackendUnavailable(
                f"The Ray head at {self.address} is unreachable ({type(exc).__name__}); check that it runs and "
                "that this address is right. A request cut off after it was sent may still have taken effect: "
                "look the job up by its submission id."
            ) from None
        except requests.RequestException as exc:
            raise BackendError(f"{method} {path} to the Ray head at {self.address} failed: {type(exc).__name__}") from None
        if response.status_code in ok:
            return response
        if response.status_code in (401, 403):
            raise BackendAuthError(
                f"The Ray head at {self.address} refused the request ({response.status_code}: {_reason(response)}); "
                "set the backend's token to the cluster's RAY_AUTH_TOKEN."
            )
        raise BackendError(f"{method} {path} answered {response.status_code}: {_reason(response)}")

    def _json(self, method: str, path: str, **kwargs: t.Any) -> t.Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise BackendError(f"{method} {path} answered something that is not JSON: {response.text[:200]!r}") from None

    # -- the Jobs API ------------------------------------------------------------------------------
    def version(self) -> dict[str, t.Any]:
        """``/api/version``: ``{"version": "4", "ray_version": "2.60.0", ...}``."""
        return t.cast("dict[str, t.Any]", self._json("GET", "/api/version"))

    def submit(self, payload: t.Mapping[str, t.Any]) -> str:
        """``POST /api/jobs/``; returns the submission id Ray accepted."""
        answer = self._json("POST", "/api/jobs/", json=dict(payload))
        return str(answer["submission_id"])

    def job(self, submission_id: str) -> dict[str, t.Any] | None:
        """The job's details (status, driver_exit_code, error_type, message, driver_node_id, ...),
        or None when the head does not know it (deleted, or the head restarted: Ray keeps no history)."""
        response = self._request("GET", f"/api/jobs/{check_submission_id(submission_id)}", ok=(200, 404))
        if response.status_code == 404:
            return None
        return t.cast("dict[str, t.Any]", response.json())

    def stop(self, submission_id: str) -> bool | None:
        """``POST /api/jobs/<id>/stop``: True when Ray began stopping it, False when it had already
        ended, None when the head does not know it."""
        response = self._request("POST", f"/api/jobs/{check_submission_id(submission_id)}/stop", ok=(200, 404))
        if response.status_code == 404:
            return None
        return bool(response.json().get("stopped"))

    def delete(self, submission_id: str) -> bool:
        """``DELETE /api/jobs/<id>`` (a finished job only; Ray keeps the log file on its node)."""
        response = self._request("DELETE", f"/api/jobs/{check_submission_id(submission_id)}", ok=(200, 404))
        return response.status_code == 200 and bool(response.json().get("deleted"))

    def log_bytes(self, node_id: str, submission_id: str) -> bytes | None:
        """The job's whole log file, as raw bytes, from the node that runs its driver; None while
        the file does not exist yet.

        Ray's ``/api/jobs/<id>/logs`` decodes the file as text and answers 500 as soon as a job
        prints one byte that is not UTF-8; its ``/logs/tail`` websocket replays from the start in
        10-line chunks with a 1 s sleep at the end. The state API's file endpoint sends bytes.
        """
        filename = JOB_LOG_NAME.format(check_submission_id(submission_id))
        path = f"/api/v0/logs/file?node_id={quote(node_id)}&filename={quote(filename)}&lines=-1"
        try:
            return self._request("GET", path).content
        except BackendError as exc:
            if "file is not found" in str(exc):
                return None
            raise

    def nodes(self) -> list[dict[str, t.Any]]:
        """Every node the head knows, alive or dead, with ``state`` and ``resources_total``."""
        answer = self._json("GET", "/api/v0/nodes?detail=1&limit=10000")
        return list(answer["data"]["result"]["result"])
