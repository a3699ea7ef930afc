"""gunicorn config for the seed benchmark: psycogreen when the worker boots (BENCH_PSYCOGREEN=1).

``post_worker_init`` runs in each worker after the gevent worker monkey-patched the process and
loaded app.py, before the first request: the place a deployment installs psycogreen.
"""

import os


def post_worker_init(worker):
    if os.environ.get("BENCH_PSYCOGREEN") == "1":
        import psycogreen.gevent

        psycogreen.gevent.patch_psycopg()
