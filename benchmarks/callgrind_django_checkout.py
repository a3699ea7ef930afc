#!/usr/bin/env python
"""Instructions per Django checkout of ``django_fastpool`` (callgrind: load-independent).

One "checkout" is what a request with one query costs the backend outside the query itself:
``connection.ensure_connection()`` (Django's connect() -> the pool) and ``connection.close()``
(back to the pool). Run it twice under callgrind with different N and subtract: start-up cancels
out, the difference / (N2 - N1) is the instructions of one checkout.

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p python \
        benchmarks/callgrind_django_checkout.py --dsn '...' -n 200
    (again with -n 1200; compare the "summary:" lines of callgrind_annotate)

``--part fresh`` runs only DatabaseWrapper._fastpool_fresh() N times (the settings check every
checkout makes), to see its share.
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", required=True)
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--part", choices=["checkout", "fresh"], default="checkout")
    args = ap.parse_args()

    import django
    import psycopg2.extensions
    from django.conf import settings

    p = psycopg2.extensions.parse_dsn(args.dsn)
    settings.configure(
        DATABASES={"default": {
            "ENGINE": "django_fastpool", "NAME": p.get("dbname", ""), "USER": p.get("user", ""),
            "PASSWORD": p.get("password", ""), "HOST": p.get("host", ""), "PORT": p.get("port", ""),
            "OPTIONS": {"pool": {"max_size": 2, "hold": "request"}}}},
        USE_TZ=True, TIME_ZONE="UTC",
    )
    django.setup()
    from django.db import connection

    for _ in range(50):  # warm: the pool made, its connection configured, caches filled
        connection.ensure_connection()
        connection.close()
    if args.part == "fresh":
        fresh = connection._fastpool_fresh
        for _ in range(args.n):
            fresh()
        return
    for _ in range(args.n):
        connection.ensure_connection()
        connection.close()


if __name__ == "__main__":
    main()
