#!/usr/bin/env python
"""Seed scenario: a Django site under gunicorn's gevent worker, every pooling option, one run.

For each contender, in the same run: start the site (app.py) with ``gunicorn -k gevent -w 2``
on a free port of 127.0.0.1 (or, for the eventlet variant, eventlet_server.py with 2 processes:
recent gunicorn has no eventlet worker), warm it up, drive it with ``wrk -t2 -c200 -d10s
--latency`` and record req/s, latency p50/p99, non-2xx responses and socket errors, while a
thread of this (unpatched) process counts the server's client backends with the contender's
``application_name`` in ``pg_stat_activity`` every 50 ms from the server's start to its exit:
the PEAK server connections.  Then stop it and make sure its backends are gone.

Contenders (gevent)::

    stock-0            django.db.backends.postgresql, psycopg2, CONN_MAX_AGE=0
    stock-60           same, CONN_MAX_AGE=60
    stock-0+green      stock-0 + psycogreen (gunicorn post_worker_init)
    stock-60+green     stock-60 + psycogreen
    geventpool         django-db-geventpool (psycopg2 backend, MAX_CONNS=10) + psycogreen
    django-pool        Django's native pool on psycopg 3, OPTIONS pool min_size=2 max_size=10
    django_fastpool    ENGINE django_fastpool, OPTIONS pool max_size=10 (no psycogreen)
    django_fastpool-request   same with OPTIONS pool hold="request" (the rule before issue 10)
    pgbouncer-0        a private PgBouncer (``pgbouncer`` on PATH; transaction mode, pool of
                       workers x max_size = 20 server connections) + stock-0+green
    pgbouncer-60       same with CONN_MAX_AGE=60 (each greenlet keeps its PgBouncer client
                       connection; PgBouncer bounds the server side)

Eventlet variant (``--hubs gevent,eventlet``, the default): stock-60+green, the bounded peers
and django_fastpool.

Client modes (``--clients keepalive,close``, the default): wrk's HTTP/1.1 keep-alive, and
``-H "Connection: close"`` (a new HTTP connection, and a new greenlet, per request, as behind
nginx's default ``proxy_http_version 1.0``). One table per hub and client mode; the target is
judged in each table separately.  Django's native pool under eventlet runs with
``PSYCOPG_WAIT_FUNC=wait_select`` (psycopg 3 detects only gevent's patching by itself; its C
wait would block the whole process).

Bounded = geventpool, django-pool, pgbouncer-*, django_fastpool (cap = workers x max_size = 20).
Target for django_fastpool: peak server connections <= cap at every sample (the sampler starts
before the site, so start-up counts), zero errors, req/s >= 1.15 x the best other bounded peer
that stayed within its cap (a peer over its cap is shown, with its peak, but is no yardstick).
The 1-minute load average at the end of each measurement is in each row: the box is shared.

The server: by default a private PostgreSQL (the pgserver package's binaries, run as the
``pgserver`` user) on a free port with max_connections=300 and timezone=UTC, so the unbounded
contenders (one connection per greenlet) cannot exhaust the machine's shared server, and each
contender has the same headroom; ``--dsn`` uses an existing server instead (e.g. the shared one,
max_connections=100: then the unbounded contenders' errors are the finding).

Usage::

    python benchmarks/django_gunicorn/run.py                   # about 10 minutes
    python benchmarks/django_gunicorn/run.py --quick           # -d3s, about 2 minutes
    python benchmarks/django_gunicorn/run.py --only django_fastpool,django-pool --hubs gevent
    python benchmarks/django_gunicorn/run.py --json out.json --md out.md --chart seed.png
    python benchmarks/django_gunicorn/run.py --profile-only \
        --profile django_fastpool@gevent/keepalive,pgbouncer-60@gevent/close   # where the CPU goes

Profiles (``--profile NAME[@hub][/client],...``, one extra run each): by default every worker
samples its own CPU time (cpuprof.py, SIGPROF; right on a loaded machine, where py-spy's
"active" samples are mostly run-queue waits), ``--profiler pyspy`` runs py-spy on one worker
instead. profile_split.py sorts the samples into HTTP server, Django, Django's DB layer, driver,
wait callback, pool, hub; the table gives each as worker CPU µs per request, with PostgreSQL's,
PgBouncer's and wrk's CPU per request measured from /proc over the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
TARGET_RATIO = 1.15


@dataclass
class Contender:
    name: str
    backend: str                 # app.py BENCH_BACKEND
    conn_max_age: int = 0
    psycogreen: bool = False
    bounded: bool = False
    env: Dict[str, str] = field(default_factory=dict)
    label: str = ""
    pgbouncer: bool = False      # the site talks to a PgBouncer (transaction mode) in front of the server


def contenders(max_size: int) -> List[Contender]:
    return [
        Contender("stock-0", "stock", 0, False, label="stock psycopg2, CONN_MAX_AGE=0"),
        Contender("stock-60", "stock", 60, False, label="stock psycopg2, CONN_MAX_AGE=60"),
        Contender("stock-0+green", "stock", 0, True, label="stock psycopg2 + psycogreen, CONN_MAX_AGE=0"),
        Contender("stock-60+green", "stock", 60, True, label="stock psycopg2 + psycogreen, CONN_MAX_AGE=60"),
        Contender("geventpool", "geventpool", 0, True, True,
                  label=f"django-db-geventpool MAX_CONNS={max_size} + psycogreen"),
        Contender("django-pool", "native", 0, False, True,
                  label=f"Django native pool (psycopg 3), max_size={max_size}"),
        Contender("django_fastpool", "fastpool", 0, False, True,
                  label=f"django_fastpool max_size={max_size}"),
        # The answer the seeds recommend: PgBouncer in transaction mode, pool of workers x max_size
        # server connections, in front of the stock backend with psycogreen.
        Contender("pgbouncer-0", "stock", 0, True, True, pgbouncer=True,
                  label="PgBouncer transaction pool 20 + stock psycopg2 + psycogreen, CONN_MAX_AGE=0"),
        Contender("pgbouncer-60", "stock", 60, True, True, pgbouncer=True,
                  label="PgBouncer transaction pool 20 + stock psycopg2 + psycogreen, CONN_MAX_AGE=60"),
        # The old holding rule, to show what hold="transaction" (the default) costs or gains;
        # django_fastpool itself, so not a peer in the target comparison.
        Contender("django_fastpool-request", "fastpool", 0, False, True, {"BENCH_POOL_HOLD": "request"},
                  label=f"django_fastpool max_size={max_size} hold=request"),
    ]


EVENTLET_SET = ("stock-60+green", "pgbouncer-0", "pgbouncer-60", "geventpool", "django-pool", "django_fastpool")
# What `Connection:` header wrk's clients send: keep-alive (wrk's default, one HTTP connection per
# client for the whole run) or close (a new HTTP connection -- and a new greenlet -- per request,
# as behind nginx's default proxy_http_version 1.0).
CLIENT_MODES = ("keepalive", "close")


# ---------------------------------------------------------------------------- the server
class PrivateServer:
    """A throw-away PostgreSQL from the pgserver package's binaries, on 127.0.0.1:free port."""

    def __init__(self, max_connections: int):
        import importlib.util

        spec = importlib.util.find_spec("pgserver")  # only its binaries: no import side effects
        if spec is None or not spec.origin:
            raise SystemExit("the private server needs `pip install pgserver` (or pass --dsn)")
        self.bin = Path(spec.origin).parent / "pginstall" / "bin"
        self.root = Path(tempfile.mkdtemp(prefix="djbench_pg_"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = "pgserver" if os.geteuid() == 0 else None  # postgres refuses to run as root
        if self.user:
            subprocess.run(["id", self.user], check=True, capture_output=True)
            shutil.chown(self.root, self.user)
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "--auth=trust", "-U", "postgres",
                   "-E", "utf8", "--no-sync"])
        opts = (f"-h 127.0.0.1 -p {self.port} -k {self.root} -c max_connections={max_connections} "
                f"-c timezone=UTC -c fsync=off -c synchronous_commit=off")
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.root / "log"),
                   "-o", opts, "start"])
        dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        import psycopg2

        c = psycopg2.connect(dsn)
        c.autocommit = True
        c.cursor().execute("CREATE DATABASE djbench")
        c.close()
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=djbench"

    def _run(self, cmd: List[str]) -> None:
        if self.user:
            cmd = ["su", self.user, "-c", " ".join(shlex_quote(c) for c in cmd)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        try:
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


PGB_ROLE = "djbench_pgbouncer"  # the role PgBouncer's server connections log in as (the sampler counts it)


class PgBouncer:
    """A private PgBouncer (transaction pooling, ``pool_size`` server connections) on a free port
    of 127.0.0.1 in front of ``dsn``'s server. Its server connections log in as ``PGB_ROLE``
    (created here, trust auth) so the sampler can count them: PgBouncer passes each client's
    ``application_name`` on to whichever server connection serves it, so that name says nothing."""

    def __init__(self, dsn: str, pool_size: int, max_client_conn: int = 2000):
        import psycopg2

        db = parse_dsn(dsn)
        c = psycopg2.connect(dsn)
        c.autocommit = True
        with c.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PGB_ROLE,))
            if cur.fetchone() is None:
                cur.execute(f"CREATE ROLE {PGB_ROLE} LOGIN SUPERUSER")
        c.close()
        self.root = Path(tempfile.mkdtemp(prefix="djbench_pgb_"))
        self.port = free_port()
        self.dbname = db["dbname"]
        users = {PGB_ROLE, db.get("user", "postgres")}  # trust auth still wants the names listed
        (self.root / "users.txt").write_text("".join(f'"{u}" ""\n' for u in sorted(users)))
        (self.root / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"{self.dbname} = host={db.get('host', '127.0.0.1')} port={db.get('port', '5432')} "
            f"dbname={self.dbname} user={PGB_ROLE}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.root / 'users.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmin_pool_size = 0\n"
            f"reserve_pool_size = 0\nmax_db_connections = {pool_size}\n"
            f"max_client_conn = {max_client_conn}\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            f"logfile = {self.root / 'pgbouncer.log'}\npidfile = {self.root / 'pgbouncer.pid'}\n"
            "log_connections = 0\nlog_disconnections = 0\n")
        cmd = ["pgbouncer", "-d", str(self.root / "pgbouncer.ini")]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            shutil.chown(self.root, "postgres")
            for f in self.root.iterdir():
                shutil.chown(f, "postgres")
            cmd[1:1] = ["-u", "postgres"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not listen: {(self.root / 'pgbouncer.log').read_text()[-500:]}")
                time.sleep(0.05)

    def pid(self) -> int:
        return int((self.root / "pgbouncer.pid").read_text())

    def stop(self) -> None:
        try:
            pid = int((self.root / "pgbouncer.pid").read_text())
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.05)
        except (OSError, ValueError):
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def parse_dsn(dsn: str) -> Dict[str, str]:
    from psycopg2.extensions import parse_dsn as _p

    return _p(dsn)


# ---------------------------------------------------------------------------- sampling
class Sampler(threading.Thread):
    """Counts client backends with one application_name (or, for a PgBouncer contender, logged in
    as PGB_ROLE) every `interval` s, from its own connection (a plain OS thread of the unpatched
    driver process). It starts before the contender's server, so start-up connections count."""

    def __init__(self, dsn: str, dbname: str, appname: str, interval: float = 0.05, by_role: bool = False):
        super().__init__(daemon=True)
        import psycopg2

        self.conn = psycopg2.connect(dsn, application_name="djbench-sampler")
        self.conn.autocommit = True
        self.dbname, self.appname, self.interval = dbname, appname, interval
        self.column = "usename" if by_role else "application_name"
        self.value = PGB_ROLE if by_role else appname
        self.peak = 0
        self.samples: List[tuple] = []
        self.marks: Dict[str, int] = {}
        self._halt = threading.Event()
        self.errors = 0

    def postmaster_pid(self) -> Optional[int]:
        """The server's postmaster, if it runs on this machine (its backends are its children,
        so their CPU can be read from /proc), else None."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            backend = cur.fetchone()[0]
        try:
            stat = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
            return int(stat[1])
        except (OSError, IndexError, ValueError):
            return None

    def count(self) -> int:
        with self.conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                        f"AND datname = %s AND {self.column} = %s", (self.dbname, self.value))
            return cur.fetchone()[0]

    def run(self) -> None:
        nxt = time.monotonic()
        while not self._halt.is_set():
            try:
                n = self.count()
            except Exception:
                self.errors += 1
                n = -1
            self.samples.append((time.monotonic(), n))
            if n > self.peak:
                self.peak = n
            nxt += self.interval
            self._halt.wait(max(0.0, nxt - time.monotonic()))

    def mark(self, label: str) -> None:
        self.marks[label] = len(self.samples)

    def peak_since(self, label: str) -> int:
        return max((n for _, n in self.samples[self.marks.get(label, 0):]), default=0)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def wait_gone(self, timeout: float = 10.0) -> int:
        """After the server stopped: wait for its backends to exit; terminate stragglers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = self.count()
            if n == 0:
                return 0
            time.sleep(0.1)
        with self.conn.cursor() as cur:
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        f"WHERE {self.column} = %s", (self.value,))
            return cur.fetchone()[0]

    def close(self) -> None:
        self.conn.close()


# ---------------------------------------------------------------------------- wrk
_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    return float(m.group(1)) * _UNIT[m.group(2)] if m else float("nan")


def parse_wrk(out: str) -> Dict[str, Any]:
    r: Dict[str, Any] = {"rps": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan"),
                         "requests": 0, "non2xx": 0, "socket_errors": 0, "socket_detail": ""}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    if m:
        r["requests"] = int(m.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        if m:
            r[key] = _ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        parts = [int(x) for x in m.groups()]
        r["socket_errors"] = sum(parts)
        r["socket_detail"] = "connect {}, read {}, write {}, timeout {}".format(*parts)
    return r


def run_wrk(url: str, threads: int, conns: int, duration: str, timeout_s: int = 2, client: str = "keepalive") -> str:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}", f"--timeout={timeout_s}s", "--latency", url]
    if client == "close":
        cmd[1:1] = ["-H", "Connection: close"]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


# ---------------------------------------------------------------------------- one contender
def start_server(c: Contender, hub: str, port: int, workers: int, max_size: int, db: Dict[str, str],
                 appname: str, logpath: Path, count_dir: Optional[Path] = None,
                 sigprof_dir: Optional[Path] = None) -> subprocess.Popen:
    env = dict(os.environ)
    env.update({
        "BENCH_BACKEND": c.backend, "BENCH_CONN_MAX_AGE": str(c.conn_max_age),
        "BENCH_PSYCOGREEN": "1" if c.psycogreen else "0",
        "BENCH_POOL_MIN": "2", "BENCH_POOL_MAX": str(max_size),
        "BENCH_DB_HOST": db.get("host", "127.0.0.1"), "BENCH_DB_PORT": db.get("port", "5432"),
        "BENCH_DB_NAME": db["dbname"], "BENCH_DB_USER": db.get("user", "postgres"),
        "BENCH_DB_PASSWORD": db.get("password", ""), "BENCH_APPNAME": appname,
        "PYTHONDONTWRITEBYTECODE": "1", "BENCH_COUNT_DIR": str(count_dir or ""),
    })
    env.update(c.env)
    if sigprof_dir is not None:
        env["BENCH_CPUPROF_DIR"] = str(sigprof_dir)
    if hub == "eventlet" and c.backend == "native":
        env["PSYCOPG_WAIT_FUNC"] = "wait_select"
    if hub == "gevent":
        cmd = [str(VENV_BIN / "gunicorn"), "-k", "gevent", "-w", str(workers), "-b", f"127.0.0.1:{port}",
               "--chdir", str(HERE), "-c", str(HERE / "gunicorn_conf.py"), "--log-level", "warning",
               "app:application"]
    else:
        cmd = [sys.executable, str(HERE / "eventlet_server.py"), f"127.0.0.1:{port}", str(workers)]
    log = open(logpath, "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(HERE),
                            start_new_session=True)


def stop_server(p: subprocess.Popen) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)  # its own session: the master and its workers
        except ProcessLookupError:
            pass
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
    # workers may outlive the master for a moment
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def wait_ready(url: str, p: subprocess.Popen, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"server exited with {p.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return r.headers.get("X-Bench", "")
        except Exception as e:  # noqa: BLE001
            last = e
        time.sleep(0.2)
    raise RuntimeError(f"server not ready: {last}")


def fetch_stats(url: str) -> Dict[str, Any]:
    """One worker's pool counters (app.py /stats), or {} if it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except Exception:  # noqa: BLE001
        return {}


def worker_pids(master: int) -> List[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def error_kinds(logpath: Path) -> Dict[str, int]:
    kinds: Dict[str, int] = {}
    for line in logpath.read_text(errors="replace").splitlines():
        if line.startswith("BENCH-ERROR"):
            k = line.split(" | ", 1)[1][:140] if " | " in line else line[:140]
            kinds[k] = kinds.get(k, 0) + 1
        elif "Traceback" in line or "Error" in line:
            k = line.strip()[:140]
            kinds[k] = kinds.get(k, 0) + 1
    return kinds


def run_one(c: Contender, hub: str, args: argparse.Namespace, dsn: str, workdir: Path,
            profile: bool = False, client: str = "keepalive") -> Dict[str, Any]:
    """One contender, one hub, one client mode. With ``profile``, py-spy samples one worker
    during the measurement, and that worker's own CPU is kept (``profile_worker_cpu_s``) so the
    samples' shares can be turned into CPU per request."""
    db = parse_dsn(dsn)
    port = free_port()
    appname = f"djbench-{c.name}-{hub}-{os.getpid()}"
    logpath = workdir / f"{hub}-{client}-{c.name}.log"
    bouncer = PgBouncer(dsn, args.workers * args.max_size) if c.pgbouncer else None
    if bouncer is not None:
        db = {**db, "host": "127.0.0.1", "port": str(bouncer.port)}
    sampler = Sampler(dsn, parse_dsn(dsn)["dbname"], appname, args.interval, by_role=bouncer is not None)
    pg_pid = sampler.postmaster_pid()
    sampler.start()
    count_dir = workdir / f"served-{hub}-{client}-{c.name}"  # each worker's request counter (app.py)
    count_dir.mkdir(exist_ok=True)
    sigprof_dir = workdir / f"cpuprof-{hub}-{client}-{c.name}" if profile and args.profiler == "sigprof" else None
    if sigprof_dir is not None:
        sigprof_dir.mkdir(exist_ok=True)
    p = start_server(c, hub, port, args.workers, args.max_size, db, appname, logpath, count_dir, sigprof_dir)
    url = f"http://127.0.0.1:{port}/"
    res: Dict[str, Any] = {"name": c.name, "hub": hub, "client": client, "label": c.label, "bounded": c.bounded,
                           "cap": args.workers * args.max_size if c.bounded else None}
    try:
        res["info"] = wait_ready(url, p)
        if c.backend == "native" and "fastpool=0" not in res["info"]:
            raise RuntimeError(f"Django native pool contender imported fastpool: {res['info']}")
        if client == "keepalive":
            # A keep-alive client stays with the worker that accepted it: a worker that took
            # none of the warm-up's connections would import its backend and fill its pool
            # inside the measurement. New connections per request reach every worker first.
            run_wrk(url, args.threads, args.connections, "1s", args.wrk_timeout, client="close")
        run_wrk(url, args.threads, args.connections, args.warmup, args.wrk_timeout, client=client)  # warm-up (connections, code paths)
        sampler.mark("measure")
        prof = None
        if profile and args.profiler == "sigprof":
            # every worker samples its own CPU time (cpuprof.py); SIGUSR2 starts and stops it
            pids = worker_pids(p.pid)
            for pid in pids:
                os.kill(pid, signal.SIGUSR2)
            res["workers"] = len(pids)
            prof_cpu0 = {pid: _proc_cpu(pid) for pid in pids}
            prof_served0 = {pid: _served(count_dir, pid) for pid in pids}
            prof_sched0 = {pid: _schedstat(pid) for pid in pids}
        elif profile:
            pids = worker_pids(p.pid)
            prof_pid = pids[0]
            prof_out = workdir / f"pyspy-{hub}-{client}-{c.name}{'-native' if args.native else ''}.txt"
            cmd = [pyspy_path(), "record", "-p", str(prof_pid), "-d", str(int(args.seconds) - 1),
                   "-r", str(args.profile_rate), "--format", "raw", "-o", str(prof_out)]
            # --native needs the process stopped while its stack is read; without it the
            # worker is never paused (less distortion, but C frames show as their caller)
            cmd.append("--native" if args.native else "--nonblocking")
            prof_log = open(workdir / f"pyspy-{hub}-{client}-{c.name}.log", "w")
            prof = subprocess.Popen(cmd, stdout=prof_log, stderr=subprocess.STDOUT)
            res["profile_file"] = str(prof_out)
            prof_cpu0 = _proc_cpu(prof_pid)
            prof_served0 = _served(count_dir, prof_pid)
            prof_sched0 = _schedstat(prof_pid)
        cpu0 = _cpu_times(p.pid)
        pg0 = _pg_cpu(pg_pid)
        pgb0 = _proc_cpu(bouncer.pid()) if bouncer is not None else 0.0
        wrk0 = _children_cpu()
        out = run_wrk(url, args.threads, args.connections, f"{args.seconds:g}s", args.wrk_timeout, client=client)
        res["wrk_cpu_s"] = _children_cpu() - wrk0  # the load generator's own CPU (the same 2 cores)
        res["server_cpu_s"] = _cpu_times(p.pid) - cpu0
        res["pg_cpu_s"] = _pg_cpu(pg_pid) - pg0 if pg_pid else float("nan")
        if bouncer is not None:
            res["pgbouncer_cpu_s"] = _proc_cpu(bouncer.pid()) - pgb0
        if profile and args.profiler == "sigprof":
            for pid in pids:
                os.kill(pid, signal.SIGUSR2)
            res["profile_worker_cpu_s"] = sum(_proc_cpu(pid) - prof_cpu0[pid] for pid in pids)
            res["profile_worker_requests"] = sum(_served(count_dir, pid) - prof_served0[pid] for pid in pids)
            s1 = {pid: _schedstat(pid) for pid in pids}
            res["profile_worker_run_s"] = sum(s1[pid][0] - prof_sched0[pid][0] for pid in pids) / 1e9
            res["profile_worker_runq_s"] = sum(s1[pid][1] - prof_sched0[pid][1] for pid in pids) / 1e9
            res["profile_file"] = str(_merge_cpuprof(sigprof_dir, pids))
        if prof is not None:
            res["profile_worker_cpu_s"] = _proc_cpu(prof_pid) - prof_cpu0
            res["profile_worker_requests"] = _served(count_dir, prof_pid) - prof_served0
            # on-CPU vs runnable-but-waiting time: py-spy counts both as "active", so on a
            # loaded box its shares lean towards the code that wakes another process (a send)
            s1 = _schedstat(prof_pid)
            res["profile_worker_run_s"] = (s1[0] - prof_sched0[0]) / 1e9
            res["profile_worker_runq_s"] = (s1[1] - prof_sched0[1]) / 1e9
            res["workers"] = len(pids)
        res["load1"] = os.getloadavg()[0]  # the machine's 1-minute load average at the end of the run
        if c.backend == "fastpool":
            res["pool_stats"] = fetch_stats(url + "stats")
        if prof is not None:
            prof.wait(30)
        res.update(parse_wrk(out))
        # CPU the site's processes spent per completed request: less sensitive than req/s to
        # what else the shared machine runs (each contender's own cost, not its share of cores)
        res["cpu_ms_per_req"] = 1000 * res["server_cpu_s"] / res["requests"] if res["requests"] else float("nan")
        # PostgreSQL's (all of this server's processes) and PgBouncer's CPU per request
        res["pg_ms_per_req"] = 1000 * res["pg_cpu_s"] / res["requests"] if res["requests"] else float("nan")
        res["wrk_ms_per_req"] = 1000 * res["wrk_cpu_s"] / res["requests"] if res["requests"] else float("nan")
        if "pgbouncer_cpu_s" in res:
            res["pgbouncer_ms_per_req"] = (1000 * res["pgbouncer_cpu_s"] / res["requests"]
                                           if res["requests"] else float("nan"))
        # 2xx responses per second: a peer that answers 500 fast must not look fast
        res["ok_rps"] = res["rps"] * (res["requests"] - res["non2xx"]) / res["requests"] if res["requests"] else 0.0
        res["wrk"] = out
        res["peak_measure"] = sampler.peak_since("measure")
    except Exception as e:  # noqa: BLE001
        res.update({"rps": 0.0, "ok_rps": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan"), "non2xx": 0,
                    "socket_errors": 0, "failed": f"{type(e).__name__}: {e}"})
    finally:
        stop_server(p)
        time.sleep(0.3)
        sampler.stop()
        res["stragglers_terminated"] = sampler.wait_gone()
        sampler.close()
        if bouncer is not None:
            bouncer.stop()
    res["peak"] = sampler.peak
    res["sampler_errors"] = sampler.errors
    res["samples"] = len(sampler.samples)
    res["error_kinds"] = error_kinds(logpath)
    res["errors"] = int(res.get("non2xx", 0)) + int(res.get("socket_errors", 0))
    return res


def waited_share(stats: Dict[str, Any]) -> float:
    """Share of one worker's checkouts that found no free connection and queued."""
    n = stats.get("requests_num") or 0
    return stats.get("requests_queued", 0) / n if n else float("nan")


def _busy_fraction(seconds: float = 1.0) -> float:
    """Share of the machine's CPU time that was busy over `seconds` (/proc/stat), measured
    while none of this benchmark's processes run: the other jobs' load right now."""
    def snap():
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = f[3] + (f[4] if len(f) > 4 else 0)
        return sum(f), idle
    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(max_busy: float, max_wait: float) -> float:
    """Wait (up to max_wait s) for the machine's other load to drop below max_busy; return the
    busy fraction last measured."""
    deadline = time.monotonic() + max_wait
    busy = _busy_fraction()
    while busy > max_busy and time.monotonic() < deadline:
        busy = _busy_fraction()
    return busy


def _merge_cpuprof(d: Path, pids: List[int], timeout: float = 10.0) -> Path:
    """Wait for every worker's cpuprof.py file and add their stacks up into one raw file."""
    deadline = time.monotonic() + timeout
    files = [d / f"{pid}.txt" for pid in pids]
    while not all(f.exists() for f in files) and time.monotonic() < deadline:
        time.sleep(0.05)
    total: Dict[str, int] = {}
    for f in files:
        if not f.exists():
            raise RuntimeError(f"no CPU profile from worker {f.stem}")
        for line in f.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            total[stack] = total.get(stack, 0) + int(n)
    out = d / "all-workers.txt"
    out.write_text("".join(f"{k} {v}\n" for k, v in total.items()))
    return out


def _schedstat(pid: int) -> List[int]:
    """/proc/PID/schedstat: ns on a CPU, ns runnable in the run queue (0, 0 if unavailable)."""
    try:
        return [int(x) for x in Path(f"/proc/{pid}/schedstat").read_text().split()[:2]]
    except (OSError, ValueError):
        return [0, 0]


def _served(count_dir: Path, pid: int) -> int:
    """Requests worker `pid` has served so far (app.py's counter file), 0 before its first."""
    import struct

    try:
        return struct.unpack("Q", (count_dir / str(pid)).read_bytes()[:8])[0]
    except (OSError, struct.error):
        return 0


def _children_cpu() -> float:
    """CPU seconds of this process's waited-for children (wrk, once run_wrk returned)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _proc_cpu(pid: Optional[int], children_too: bool = False) -> float:
    """user+system CPU seconds of one process (plus its reaped children's with children_too)."""
    if not pid:
        return 0.0
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    n = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children_too else 0)
    return n / os.sysconf("SC_CLK_TCK")


def _pg_cpu(postmaster: Optional[int]) -> float:
    """CPU seconds of a local PostgreSQL so far: the postmaster with every backend it reaped,
    plus its live children (backends, checkpointer, ...). A backend that exits between two
    readings moves from the second term to the first, so differences stay right."""
    if not postmaster:
        return float("nan")
    return _proc_cpu(postmaster, children_too=True) + sum(_proc_cpu(c) for c in worker_pids(postmaster))


def pyspy_path() -> str:
    """py-spy from this venv, else PATH."""
    exe = VENV_BIN / "py-spy"
    found = str(exe) if exe.exists() else shutil.which("py-spy")
    if not found:
        raise RuntimeError("py-spy not found: pip install py-spy")
    return found


def _cpu_times(master: int) -> float:
    """user+system CPU seconds of the server's workers so far (from /proc)."""
    total = 0.0
    tck = os.sysconf("SC_CLK_TCK")
    for pid in [master] + worker_pids(master):
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / tck
        except (OSError, IndexError, ValueError):
            pass
    return total


# ---------------------------------------------------------------------------- report
def combine(rounds: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Several rounds of one contender. The machine is shared: other jobs only ever slow a round
    down, so the row is the contender's BEST round (highest 2xx req/s, with that round's latency
    and CPU); the peak is the highest over all rounds; errors are the best round's, and every
    round's are kept (``errors_all``, ``non2xx_all``)."""
    best = max(rounds, key=lambda r: r["ok_rps"])
    out = dict(best)
    out["rounds"] = [{k: r.get(k) for k in ("ok_rps", "p50_ms", "p99_ms", "peak", "errors", "non2xx",
                                            "socket_errors", "cpu_ms_per_req", "background_busy")}
                     for r in rounds]
    out["ok_rps_all"] = [round(r["ok_rps"]) for r in rounds]
    out["load1_all"] = [r.get("load1", float("nan")) for r in rounds]
    out["peak"] = max(r["peak"] for r in rounds)
    out["errors_all"] = sum(r["errors"] for r in rounds)
    out["non2xx_all"] = sum(r.get("non2xx", 0) for r in rounds)
    kinds: Dict[str, int] = {}
    for r in rounds:
        for k, v in r["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    out["error_kinds"] = kinds
    return out


def best_peer(results: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The fastest bounded peer that stayed bounded: a peer whose peak went over its cap
    (django-db-geventpool does) is shown with its peak but is not the yardstick."""
    peers = [r for r in results if r["bounded"] and not r["name"].startswith("django_fastpool")
             and r["peak"] <= r["cap"]]
    return max(peers, key=lambda r: r["ok_rps"], default=None)


def verdict(results: List[Dict[str, Any]], cap: int) -> Dict[str, Any]:
    fp = next((r for r in results if r["name"] == "django_fastpool"), None)
    peer = best_peer(results)
    if fp is None:
        return {}
    ratio = fp["ok_rps"] / peer["ok_rps"] if peer and peer["ok_rps"] else float("nan")
    v = {
        "peak_ok": fp["peak"] <= cap, "errors_ok": fp["errors"] == 0 and fp.get("non2xx_all", 0) == 0,
        "speed_ok": ratio >= TARGET_RATIO, "ratio": ratio, "peer": peer["name"] if peer else None,
        "peak": fp["peak"], "errors": fp["errors"], "cap": cap, "errors_all": fp.get("errors_all"),
        "non2xx_all": fp.get("non2xx_all"),
    }
    v["pass"] = v["peak_ok"] and v["errors_ok"] and v["speed_ok"]
    return v


def fmt_table(results: List[Dict[str, Any]]) -> str:
    peer = best_peer(results)
    base = peer["ok_rps"] if peer and peer["ok_rps"] else None
    lines = ["| contender | req/s (2xx) | ratio vs best bounded peer | p50 ms | p99 ms | peak server conns | "
             "cap (workers×max_size) | errors (non-2xx + socket) | worker CPU ms/req | 2xx req/s, every round | "
             "load avg (1 min) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        ratio = f"{r['ok_rps'] / base:.2f}×" if base else "–"
        if peer and r["name"] == peer["name"]:
            ratio += " (best peer)"
        cap = str(r["cap"]) if r["cap"] else "unbounded"
        if r["cap"] and r["peak"] > r["cap"]:
            cap += " (over: not counted)"
        err = f"{r['errors']}"
        if r["errors"]:
            err += f" ({r.get('non2xx', 0)} + {r.get('socket_errors', 0)})"
        if len(r.get("rounds", [])) > 1:
            err += f"; all rounds {r['errors_all']}"
        if r.get("failed"):
            err += " FAILED: " + r["failed"].replace("|", "/").replace("\n", " ")[:120]
        lines.append(f"| {r['label'] or r['name']} | {r['ok_rps']:.0f} | {ratio} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['peak']} | {cap} | {err} | {r.get('cpu_ms_per_req', float('nan')):.2f} | "
                     f"{' / '.join(str(x) for x in r.get('ok_rps_all', []))} | "
                     f"{' / '.join(f'{x:.1f}' for x in r.get('load1_all', []))} |")
    return "\n".join(lines)


def fmt_verdict(v: Dict[str, Any], hub: str) -> str:
    if not v:
        return ""
    def pm(ok: bool) -> str:
        return "PASS" if ok else "MISS"
    return (f"**django_fastpool target ({hub}): {pm(v['pass'])}** — peak {v['peak']} ≤ {v['cap']}: "
            f"{pm(v['peak_ok'])}; errors {v['errors']} (non-2xx in any round: {v['non2xx_all']}) = 0: "
            f"{pm(v['errors_ok'])}; "
            f"req/s {v['ratio']:.2f}× best bounded peer ({v['peer']}) ≥ {TARGET_RATIO}×: {pm(v['speed_ok'])}")


def chart(by_hub: Dict[str, List[Dict[str, Any]]], path: Path, cap: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(hub, r) for hub, rs in by_hub.items() for r in rs]
    names = [f"{r['name']} ({hub})" if len(by_hub) > 1 else r["name"] for hub, r in rows]
    colors = ["#d62728" if r["name"] == "django_fastpool" else ("#1f77b4" if r["bounded"] else "#999999")
              for _, r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 0.38 * len(rows) + 1.4), sharey=True)
    y = list(range(len(rows)))[::-1]
    a1.barh(y, [r["ok_rps"] for _, r in rows], color=colors)
    for yi, (_, r) in zip(y, rows):
        a1.text(r["ok_rps"], yi, f" {r['ok_rps']:.0f}" + (f"  ({r['errors']} err)" if r["errors"] else ""),
                va="center", fontsize=7)
    a1.set_yticks(y)
    a1.set_yticklabels(names, fontsize=8)
    a1.set_xlabel("2xx responses/s (higher is better)")
    a1.set_xlim(0, max(r["ok_rps"] for _, r in rows) * 1.35 or 1)
    a2.barh(y, [r["peak"] for _, r in rows], color=colors)
    for yi, (_, r) in zip(y, rows):
        a2.text(r["peak"], yi, f" {r['peak']}", va="center", fontsize=7)
    a2.axvline(cap, color="k", ls="--", lw=0.8)
    a2.text(cap, len(rows) - 0.4, f" cap {cap}", fontsize=7)
    a2.set_xlabel("peak server connections (lower is better)")
    a2.set_xlim(0, max(max(r["peak"] for _, r in rows), cap) * 1.2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="-d3s and a 1 s warm-up")
    ap.add_argument("--seconds", type=float, default=None, help="wrk duration (default 10, --quick 3)")
    ap.add_argument("--warmup", default=None, help="wrk warm-up duration (default 2s, --quick 1s)")
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--wrk-timeout", type=int, default=2,
                    help="seconds before wrk counts a request as a timeout error (default 2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-size", type=int, default=10)
    ap.add_argument("--interval", type=float, default=0.05, help="pg_stat_activity sampling period")
    ap.add_argument("--hubs", default="gevent,eventlet")
    ap.add_argument("--clients", default=",".join(CLIENT_MODES),
                    help="wrk client modes: keepalive (HTTP/1.1 keep-alive) and/or close (`Connection: close`)")
    ap.add_argument("--only", default=None, help="comma-separated contender names")
    ap.add_argument("--repeat", type=int, default=1, help="rounds (best round's req/s, highest peak)")
    ap.add_argument("--dsn", default=None, help="use this server instead of a private one")
    ap.add_argument("--max-connections", type=int, default=300, help="private server's max_connections")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None, help="write the tables as Markdown here")
    ap.add_argument("--chart", default=None, help="write the PNG chart here")
    ap.add_argument("--profile", default=None,
                    help="NAME[@hub][/client],...: one extra run of each with py-spy on one worker; "
                         "its samples split by profile_split.py into CPU per request")
    ap.add_argument("--profile-only", action="store_true", help="only the --profile runs, no tables")
    ap.add_argument("--profiler", choices=("sigprof", "pyspy"), default="sigprof",
                    help="sigprof (default): every worker samples its own CPU time (cpuprof.py), "
                         "right on a loaded box; pyspy: py-spy on one worker (samples runnable time, "
                         "so on a loaded box its shares follow the run-queue waits)")
    ap.add_argument("--native", action="store_true", help="py-spy --native (pauses the worker per sample)")
    ap.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--keep-logs", action="store_true")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="before each contender, wait up to this long for the machine's other load "
                         "to drop below --max-busy (shared machines)")
    ap.add_argument("--max-busy", type=float, default=0.15,
                    help="busy CPU fraction counted as quiet (default 0.15)")
    args = ap.parse_args()
    args.seconds = args.seconds or (3 if args.quick else 10)
    args.warmup = args.warmup or ("1s" if args.quick else "2s")
    if args.seconds < 2:
        ap.error("--seconds must be >= 2")
    if not shutil.which("wrk"):
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2

    all_c = {c.name: c for c in contenders(args.max_size)}
    only = set(args.only.split(",")) if args.only else None
    if only and only - set(all_c):
        ap.error(f"unknown contenders: {sorted(only - set(all_c))}; known: {list(all_c)}")
    hubs = [h for h in args.hubs.split(",") if h]
    clients = [m for m in args.clients.split(",") if m]
    if set(clients) - set(CLIENT_MODES):
        ap.error(f"--clients: {sorted(set(clients) - set(CLIENT_MODES))}; known: {CLIENT_MODES}")
    # one table per (hub, client mode), keyed "hub/client"
    plan: Dict[str, List[Contender]] = {}
    for hub in hubs:
        names = list(all_c) if hub == "gevent" else list(EVENTLET_SET)
        for client in clients:
            plan[f"{hub}/{client}"] = [all_c[n] for n in names if not only or n in only]
    if any(c.pgbouncer for cs in plan.values() for c in cs) and not shutil.which("pgbouncer"):
        print("pgbouncer not found: apt-get install -y pgbouncer (or --only without pgbouncer-*)", file=sys.stderr)
        return 2

    server = None
    dsn = args.dsn
    if dsn is None:
        server = PrivateServer(args.max_connections)
        dsn = server.dsn
    workdir = Path(tempfile.mkdtemp(prefix="djbench_"))
    import psycopg2

    with psycopg2.connect(dsn) as c0, c0.cursor() as cur:
        cur.execute("SHOW max_connections")
        max_conn = int(cur.fetchone()[0])
        cur.execute("SHOW server_version")
        server_version = cur.fetchone()[0]
    c0.close()
    load0 = os.getloadavg()
    print(f"# server: {'private pgserver' if server else dsn}, PostgreSQL {server_version}, "
          f"max_connections={max_conn}", flush=True)
    print(f"# wrk -t{args.threads} -c{args.connections} -d{args.seconds:g}s (warm-up {args.warmup}); "
          f"{args.workers} workers; max_size {args.max_size}; load before: "
          f"{' '.join(f'{x:.2f}' for x in load0)}; cpus {os.cpu_count()}", flush=True)

    by_hub: Dict[str, List[Dict[str, Any]]] = {}
    try:
        for key, cs in plan.items():
            hub, client = key.split("/")
            rounds: Dict[str, List[Dict[str, Any]]] = {c.name: [] for c in cs}
            for rnd in range(0 if args.profile_only else args.repeat):
                order = cs[rnd % len(cs):] + cs[:rnd % len(cs)] if cs else cs
                for c in order:
                    busy = wait_quiet(args.max_busy, args.wait_quiet)
                    r = run_one(c, hub, args, dsn, workdir, client=client)
                    r["background_busy"] = round(busy, 3)
                    rounds[c.name].append(r)
                    print(f"{key:18} {c.name:16} {r['ok_rps']:8.0f} req/s  p50 {r['p50_ms']:7.1f} ms  "
                          f"p99 {r['p99_ms']:7.1f} ms  peak {r['peak']:3d}  errors {r['errors']}"
                          + (f" ({r.get('non2xx', 0)} non-2xx; {r['socket_detail']})" if r["errors"] else "")
                          + f"  site CPU {r.get('server_cpu_s', 0) / args.seconds:.2f} cores, "
                          f"{r.get('cpu_ms_per_req', float('nan')):.2f} ms/req; PostgreSQL {r.get('pg_ms_per_req', float('nan')):.2f} ms/req"
                          + (f"; PgBouncer {r['pgbouncer_ms_per_req']:.2f} ms/req" if "pgbouncer_ms_per_req" in r else "")
                          + f"; machine busy before {100 * busy:.0f}%; "
                          f"load {r.get('load1', float('nan')):.1f}"
                          + (f"; checkouts that waited {waited_share(r['pool_stats']):.0%}" if r.get("pool_stats") else "")
                          + (f"  FAILED {r['failed']}" if r.get("failed") else "")
                          + (f"  [{'; '.join(f'{v}× {k}' for k, v in list(r['error_kinds'].items())[:2])}]"
                             if r["error_kinds"] else ""), flush=True)
                    time.sleep(1.0)
            if not args.profile_only:
                by_hub[key] = [combine(rounds[c.name]) for c in cs]
        profiles = [profile_one(spec, all_c, hubs, clients, args, dsn, workdir)
                    for spec in (args.profile.split(",") if args.profile else [])]
        if profiles:
            print()
            print(fmt_profiles(profiles))
    finally:
        if server:
            server.stop()
    load1 = os.getloadavg()
    cap = args.workers * args.max_size

    md = [f"Server: {'private PostgreSQL ' + server_version + ' (pgserver binaries), max_connections=' + str(max_conn) if server else dsn + ' (max_connections=' + str(max_conn) + ')'}; "
          f"`wrk -t{args.threads} -c{args.connections} -d{args.seconds:g}s --timeout={args.wrk_timeout}s --latency` "
          f"after a {args.warmup} warm-up; "
          f"{args.workers} workers; load average before {load0[0]:.2f} / after {load1[0]:.2f} "
          f"({os.cpu_count()} CPUs); {args.repeat} round(s), each row is the contender's best round "
          f"(other jobs only slow a round down), peak = highest of all rounds; {platform.python_implementation()} "
          f"{platform.python_version()}.", ""]
    verdicts = {}
    for key, results in by_hub.items():
        hub, client = key.split("/")
        worker = (f"gunicorn -k gevent -w {args.workers}" if hub == "gevent"
                  else f"eventlet.wsgi.server × {args.workers} processes")
        mode = "keep-alive clients" if client == "keepalive" else "`Connection: close` clients"
        md += [f"#### {hub} ({worker}), {mode}", "", fmt_table(results), ""]
        v = verdict(results, cap)
        verdicts[key] = v
        if v:
            md += [fmt_verdict(v, key), ""]
        errs = [(r["name"], r["error_kinds"]) for r in results if r["error_kinds"]]
        for name, kinds in errs:
            top = sorted(kinds.items(), key=lambda kv: -kv[1])[:3]
            md.append(f"- {name} ({key}) errors logged: " + "; ".join(f"{n}× `{k}`" for k, n in top))
        if errs:
            md.append("")
    text = "\n".join(md)
    print()
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n")
    if args.chart and by_hub:
        chart(by_hub, Path(args.chart), cap,
              f"Django seed scenario: {args.workers} workers, wrk -c{args.connections} -d{args.seconds:g}s, "
              f"SELECT pg_sleep(0.002) + SELECT 1 per request (red = django_fastpool, blue = bounded peers)")
        print(f"chart: {args.chart} ({Path(args.chart).stat().st_size // 1024} KB)")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"by_hub": by_hub, "verdicts": verdicts, "load_before": load0, "load_after": load1,
             "server": "private" if server else dsn, "max_connections": max_conn,
             "server_version": server_version, "args": vars(args),
             "profiles": locals().get("profiles")}, indent=1, default=str))
    if not args.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs: {workdir}")
    return 0


def profile_one(spec: str, all_c: Dict[str, Contender], hubs: List[str], clients: List[str],
                args: argparse.Namespace, dsn: str, workdir: Path) -> Dict[str, Any]:
    """``NAME[@hub][/client]``: one run with py-spy on one worker; the samples' split
    (profile_split.py) times that worker's CPU per request."""
    from profile_split import BUCKETS, split

    rest, _, client = spec.partition("/")
    name, _, hub = rest.partition("@")
    hub, client = hub or hubs[0], client or clients[0]
    r = run_one(all_c[name], hub, args, dsn, workdir, profile=True, client=client)
    out: Dict[str, Any] = {"spec": f"{name}@{hub}/{client}", "rps": r.get("ok_rps", 0.0),
                           "requests": r.get("requests", 0), "file": r.get("profile_file"),
                           "failed": r.get("failed"), "load1": r.get("load1")}
    for k in ("cpu_ms_per_req", "pg_ms_per_req", "pgbouncer_ms_per_req", "wrk_ms_per_req", "errors", "peak"):
        out[k] = r.get(k)
    f = Path(r["profile_file"]) if r.get("profile_file") else None
    if f is None or not f.exists() or not r.get("requests"):
        print(f"# profile {out['spec']}: no profile ({r.get('failed')})", flush=True)
        return out
    total, counts = split(f)
    # The profiled worker's CPU per request: its own CPU over its share of the requests
    # (the workers share the listening socket; their share is taken as equal).
    # wrk's count covers a little more than the worker's (its last second, its own start-up)
    per_worker_req = r.get("profile_worker_requests") or r["requests"] / max(1, r.get("workers", args.workers))
    out["worker_share"] = per_worker_req / r["requests"]
    if args.profiler == "sigprof" and r.get("profile_worker_requests"):
        # every worker profiled: the requests they served (wrk leaves out the ~200 in flight at
        # its end) are the denominator for the other processes' CPU too
        served = r["profile_worker_requests"]
        for k in ("cpu_ms_per_req", "pg_ms_per_req", "pgbouncer_ms_per_req", "wrk_ms_per_req"):
            if out.get(k) is not None:
                out[k] = out[k] * r["requests"] / served
    run_s, runq_s = r.get("profile_worker_run_s", 0.0), r.get("profile_worker_runq_s", 0.0)
    out["runq_share"] = runq_s / (run_s + runq_s) if run_s + runq_s else float("nan")
    us = 1e6 * r.get("profile_worker_cpu_s", 0.0) / per_worker_req
    out.update(samples=total, worker_us_per_req=us,
               split={b: counts[b] / total if total else 0.0 for b in BUCKETS},
               top=summarize_profile(f))
    who = "every worker" if args.profiler == "sigprof" else "the profiled worker"
    print(f"# profile {out['spec']}: {out['rps']:.0f} 2xx/s while profiled ({args.profiler}), {total} samples, "
          f"{who} {us:.0f} µs CPU/req, served {100 * out['worker_share']:.0f}% of wrk's requests, "
          f"runnable-not-running {100 * out['runq_share']:.0f}% of its active time; "
          f"raw stacks {f}", flush=True)
    return out


def fmt_profiles(profiles: List[Dict[str, Any]]) -> str:
    """µs of worker CPU per request in each bucket, plus PostgreSQL's and PgBouncer's."""
    from profile_split import BUCKETS

    head = ["profile", "2xx/s", "worker µs/req"] + [f"{b} µs" for b in BUCKETS] + [
        "pool share", "worker's share of requests", "run-queue wait share", "all workers µs/req", "PostgreSQL µs/req", "PgBouncer µs/req", "wrk µs/req", "load"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for p in profiles:
        if "split" not in p:
            lines.append(f"| {p['spec']} | failed: {p.get('failed')} |")
            continue
        us = p["worker_us_per_req"]
        cells = [p["spec"], f"{p['rps']:.0f}", f"{us:.0f}"] + [f"{us * p['split'][b]:.0f}" for b in BUCKETS]
        cells += [f"{100 * p['split']['pool']:.1f} %", f"{100 * p['worker_share']:.0f} %",
                  f"{100 * p['runq_share']:.0f} %", f"{1000 * (p.get('cpu_ms_per_req') or float('nan')):.0f}",
                  f"{1000 * (p.get('pg_ms_per_req') or float('nan')):.0f}",
                  f"{1000 * p['pgbouncer_ms_per_req']:.0f}" if p.get("pgbouncer_ms_per_req") else "–",
                  f"{1000 * (p.get('wrk_ms_per_req') or float('nan')):.0f}",
                  f"{p.get('load1') or float('nan'):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarize_profile(path: Path, top: int = 25) -> str:
    """py-spy raw (collapsed) stacks -> the functions with the most inclusive and self samples."""
    incl: Dict[str, int] = {}
    self_: Dict[str, int] = {}
    total = 0
    if not path.exists():
        return ""
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        try:
            n = int(n)
        except ValueError:
            continue
        total += n
        frames = stack.split(";")
        seen = set()
        for f in frames:
            key = re.sub(r":\d+\)", ")", f)  # merge lines of one function
            if key not in seen:
                incl[key] = incl.get(key, 0) + n
                seen.add(key)
        leaf = re.sub(r":\d+\)", ")", frames[-1])
        self_[leaf] = self_.get(leaf, 0) + n
    if not total:
        return ""
    out = [f"{total} samples", "inclusive:"]
    out += [f"  {100 * v / total:5.1f}%  {k}" for k, v in sorted(incl.items(), key=lambda kv: -kv[1])[:top]]
    out.append("self:")
    out += [f"  {100 * v / total:5.1f}%  {k}" for k, v in sorted(self_.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
