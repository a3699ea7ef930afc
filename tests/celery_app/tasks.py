"""Tasks module for the ``celery -A celery_app.tasks worker`` started by tests/test_celery.py.

Configured entirely through the environment (set by the test):

* ``FASTPOOL_CELERY_DSN``       libpq DSN of the test database
* ``FASTPOOL_CELERY_APP_NAME``  application_name tagging this worker's pool connections
* ``FASTPOOL_CELERY_BROKER``    broker URL (Redis db 15, or ``sqla+postgresql://...``)
* ``FASTPOOL_CELERY_BACKEND``   result backend URL (Redis db 15, or ``db+postgresql://...``)
* ``FASTPOOL_CELERY_QUEUE``     queue name unique to the test run
* ``FASTPOOL_CELERY_PREWARM``   "1": borrow one connection at import, i.e. in the prefork
  *parent* before it forks, so the children inherit a live session they must not end
* ``FASTPOOL_IMPL``             fastpool core (fastpool reads it itself)
"""

from __future__ import annotations

import os
from typing import Dict, Tuple

from celery import Celery

import fastpool
import fastpool.contrib.celery

QUEUE = os.environ.get("FASTPOOL_CELERY_QUEUE", "celery")

app = Celery(
    "fastpool_celery_test",
    broker=os.environ["FASTPOOL_CELERY_BROKER"],
    backend=os.environ["FASTPOOL_CELERY_BACKEND"],
)
app.conf.update(
    task_default_queue=QUEUE,
    result_expires=600,
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)
if not app.conf.broker_url.startswith("sqla+"):
    # kombu's SQLAlchemy transport hands every transport option to create_engine(), which
    # rejects this one; it then polls every second (its default).
    app.conf.broker_transport_options = {"polling_interval": 0.05}

pool = fastpool.Pool(
    os.environ["FASTPOOL_CELERY_DSN"],
    max_size=5,
    min_size=0,
    timeout=60.0,
    kwargs={"application_name": os.environ["FASTPOOL_CELERY_APP_NAME"]},
)
fastpool.contrib.celery.setup(app)

if os.environ.get("FASTPOOL_CELERY_PREWARM") == "1":
    with pool.connection() as _conn, _conn.cursor() as _cur:
        _cur.execute("SELECT 1")


@app.task(name="celery_app.tasks.query")
def query() -> Tuple[int, int, str]:
    """(server backend pid, worker OS pid, fastpool core) for one pooled round trip."""
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid(), pg_sleep(0.005)")
        backend_pid = cur.fetchone()[0]
    return int(backend_pid), os.getpid(), fastpool.__impl__


@app.task(name="celery_app.tasks.stats")
def stats() -> Dict[str, int]:
    """This worker process's ``pool.stats()`` (``connections_num``: connections it has made)."""
    return pool.stats()
