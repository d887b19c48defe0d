"""gunicorn settings for the example: ``gunicorn -c example_app/gunicorn_conf.py 'example_app:create_app()'``.

Command-line options win over these (``-b 0.0.0.0:8000 -w 4``).
"""

from __future__ import annotations

import typing as t

bind = "127.0.0.1:8000"
workers = 2
#: Threads per worker: each open evaluation page holds one for its live log (a long response).
threads = 4


def post_worker_init(worker: t.Any) -> None:
    """Start the worker's procman watcher as soon as it boots, so that it adopts the evaluations a
    recycled worker left (``PROCMAN_STOP_ON_EXIT = False``) before it has served any request."""
    from example_app.service import procman
    from flask_procman import StoreUnavailable

    app = worker.wsgi
    try:
        with app.app_context():
            procman.stats()
    except StoreUnavailable as exc:  # the watcher runs, and retries until the tables exist
        worker.log.warning("run 'flask --app example_app init-db' first: %s", exc)
