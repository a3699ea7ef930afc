#!/usr/bin/env python
"""What hold="transaction" costs per ORM query, against hold="request" and the stock backend.

One process per contender (Django settings are process-global). Each runs, in one thread and
outside any request, ``Item.objects.filter(pk=1).first()`` (one SELECT through the ORM) and
``SELECT 1`` through ``connection.cursor()``, N times in a row, 5 rounds, and prints the best
round's mean time per query. With hold="request" the connection stays with the wrapper; with
hold="transaction" each query gives it back and takes it again (a pool getconn + putconn and
Django's connect() bookkeeping).

    python benchmarks/bench_django_hold.py --dsn 'host=127.0.0.1 port=5432 user=postgres dbname=test'
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CONTENDERS = {
    "stock (psycopg2, CONN_MAX_AGE=60)": {"engine": "stock"},
    "django_fastpool hold=request": {"engine": "fastpool", "hold": "request"},
    "django_fastpool hold=transaction": {"engine": "fastpool", "hold": "transaction"},
}


def child(dsn: str, spec: dict, n: int) -> None:
    import psycopg2.extensions

    p = psycopg2.extensions.parse_dsn(dsn)
    db = {"NAME": p.get("dbname", ""), "USER": p.get("user", ""), "PASSWORD": p.get("password", ""),
          "HOST": p.get("host", ""), "PORT": p.get("port", ""), "OPTIONS": {}}
    if spec["engine"] == "fastpool":
        db.update(ENGINE="django_fastpool")
        db["OPTIONS"]["pool"] = {"max_size": 2, "hold": spec["hold"]}
    else:
        import django_fastpool.base  # noqa: F401  # Django's backend on psycopg2, as the stock setup

        db.update(ENGINE="django.db.backends.postgresql", CONN_MAX_AGE=60)
    from django.conf import settings

    settings.configure(DATABASES={"default": db}, INSTALLED_APPS=[], USE_TZ=True, SECRET_KEY="x")
    import django

    django.setup()
    from django.db import connection, models

    class Item(models.Model):
        name = models.CharField(max_length=10)

        class Meta:
            app_label = "bench"
            db_table = "fp_bench_hold_item"

    with connection.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS fp_bench_hold_item (id serial PRIMARY KEY, name text)")
        cur.execute("INSERT INTO fp_bench_hold_item (id, name) VALUES (1, 'a') ON CONFLICT DO NOTHING")

    def orm() -> None:
        Item.objects.filter(pk=1).first()

    def raw() -> None:
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()

    out = {}
    for name, fn in (("orm", orm), ("cursor", raw)):
        for _ in range(200):
            fn()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best = min(best, (time.perf_counter() - t0) / n)
        out[name] = best * 1e6
    print("RESULT " + json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsn", default=os.environ.get("FASTPOOL_TEST_DSN",
                                                    "host=127.0.0.1 port=5432 user=postgres dbname=test"))
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.dsn, json.loads(args.child), args.n)
        return
    rows = []
    for label, spec in CONTENDERS.items():
        proc = subprocess.run([sys.executable, __file__, "--dsn", args.dsn, "-n", str(args.n),
                               "--child", json.dumps(spec)], capture_output=True, text=True, check=True)
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
        rows.append((label, json.loads(line[7:])))
    print(f"| contender | ORM query (µs) | cursor SELECT 1 (µs) |\n|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['orm']:.1f} | {r['cursor']:.1f} |")


if __name__ == "__main__":
    main()
