"""Engines that run a record's command somewhere other than this host: today Ray Jobs, over HTTP.

The local engine lives in :mod:`flask_procman.engine`. Each remote backend's client library is
imported only when that backend is used, and installed by its extra (``flask-procman[ray]``).
"""

from __future__ import annotations

from .errors import BackendAuthError, BackendError, BackendUnavailable, InfeasibleResources, InvalidResources

__all__ = ["BackendAuthError", "BackendError", "BackendUnavailable", "InfeasibleResources", "InvalidResources"]
