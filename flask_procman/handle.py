"""``ProcessManager``: the original design note's API, as a handle on the current app's manager."""

from __future__ import annotations

from .facade import ManagerFacade


class ProcessManager(ManagerFacade):
    """A handle with the seed's methods (``start_process``, ``get_process_status``, ``stop_process``...).

    It can be made anywhere, even at import time with no app (as the seed's
    ``EvaluateService._process_manager = ProcessManager()``); each call acts on the manager of
    ``current_app``, so it must be used inside an app context of an app that called ``init_app``.
    """
