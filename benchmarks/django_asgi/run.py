#!/usr/bin/env python
"""Django over ASGI (uvicorn --workers 2), every way a view reaches the database, each backend
in the same run.

The site is the tests' ``tests/django_app/site_app.py`` (async-ORM views, ``sync_to_async``
with ``thread_sensitive`` False and True, sync views with an atomic block, ``async_to_sync``,
an atomic block that raises in an executor thread); the load is ``tests/django_app/http_load.py``
(200 keep-alive clients cycling over those views; a request with no answer in 10 s is a
*stall*). A thread counts the contender's server sessions in ``pg_stat_activity`` every 50 ms
(PEAK). Contenders::

    fastpool           django_fastpool, max_size=5, hold="transaction" (the default)
    fastpool-request   django_fastpool, max_size=5, hold="request" (the rule before issue 10)
    stock-0            Django's backend on psycopg2, CONN_MAX_AGE=0
    stock-60           same, CONN_MAX_AGE=60
    native             Django's native pool (psycopg 3, psycopg_pool), max_size=5

Usage (the server needs max_connections well above 2 x 200 for the stock contenders)::

    python benchmarks/django_asgi/run.py --dsn 'host=127.0.0.1 port=5432 user=postgres dbname=test'
    python benchmarks/django_asgi/run.py --seconds 60 --only fastpool,native
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

SITE_DIR = Path(__file__).resolve().parents[2] / "tests" / "django_app"
sys.path.insert(0, str(SITE_DIR))

from http_load import Sampler, load  # noqa: E402

import psycopg2  # noqa: E402

VIEWS = ("async_orm", "s2a_false", "s2a_true", "sync", "atomic_raise", "a2s")
CONTENDERS = {
    "fastpool": {"FP_DJ_ENGINE": "fastpool", "FP_DJ_POOL": json.dumps({"max_size": 5})},
    "fastpool-request": {"FP_DJ_ENGINE": "fastpool", "FP_DJ_POOL": json.dumps({"max_size": 5, "hold": "request"})},
    "stock-0": {"FP_DJ_ENGINE": "stock", "FP_DJ_MAX_AGE": "0"},
    "stock-60": {"FP_DJ_ENGINE": "stock", "FP_DJ_MAX_AGE": "60"},
    "native": {"FP_DJ_ENGINE": "native", "FP_DJ_POOL": json.dumps({"min_size": 2, "max_size": 5})},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(port: int, path: str) -> bool:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/" + path)
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


def run_one(name: str, dsn: str, table: str, seconds: float, clients: int) -> dict:
    app = f"fp-asgi-{name}-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "FASTPOOL_TEST_DSN": dsn, "FASTPOOL_TEST_APP": app, "FP_DJ_TABLE": table,
           **CONTENDERS[name]}
    port = free_port()
    sampler = Sampler(dsn, app, interval=0.05)
    sampler.start()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--workers", "2", "--host", "127.0.0.1",
                             "--port", str(port), "--no-access-log", "--log-level", "error",
                             "site_app:application"], cwd=SITE_DIR, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not answers(port, "stats"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"{name}: the server did not start")
            time.sleep(0.2)
        r = load("127.0.0.1", port, VIEWS, clients=clients, seconds=seconds, timeout=10.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
            shutdown = f"{time.monotonic() - t0:.1f} s"
        except subprocess.TimeoutExpired:
            shutdown = "hung > 30 s (killed)"
    finally:
        sampler.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return {"name": name, "ok": r.ok, "rps": r.rps, "stalls": r.stalls, "errors": r.errors,
            "peak": sampler.peak, "shutdown": shutdown, "samples": r.error_samples[:3]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsn", default=os.environ.get("FASTPOOL_TEST_DSN",
                                                    "host=127.0.0.1 port=5432 user=postgres dbname=test"))
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    names = [n for n in CONTENDERS if not args.only or n in args.only.split(",")]
    table = "fp_asgi_bench_item"
    admin = psycopg2.connect(args.dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, name varchar(100) NOT NULL, "
                    f"n integer NOT NULL DEFAULT 0)")
    rows = []
    try:
        for name in names:
            rows.append(run_one(name, args.dsn, table, args.seconds, args.clients))
            print(json.dumps(rows[-1]), flush=True)
            with admin.cursor() as cur:
                cur.execute(f"SELECT count(*) FROM {table} WHERE name = 'failed'")
                rows[-1]["failed_rows"] = cur.fetchone()[0]
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        admin.close()
    print(f"\nuvicorn --workers 2, {args.clients} clients, {args.seconds:.0f} s; cap for pools = 2 x 5 = 10\n")
    print("| contender | requests ok | req/s | stalls (no answer in 10 s) | errors | peak server sessions "
          "| rows of failed atomic blocks | shutdown after SIGTERM |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['ok']} | {r['rps']:.0f} | {r['stalls']} | {r['errors']} | {r['peak']} "
              f"| {r['failed_rows']} | {r['shutdown']} |")


if __name__ == "__main__":
    main()
