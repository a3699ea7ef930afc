"""fastpool behind PgBouncer in TRANSACTION mode, against a private PostgreSQL.

Every test starts its own PgBouncer (``pool_mode = transaction``, ``auth_type = trust``, a unix
socket dir in a temp dir, a free TCP port) in front of a private server, as the unprivileged
user the embedded PostgreSQL binaries run as when we are root (PgBouncer refuses to run as root). Without a
``pgbouncer`` binary the tests skip (``apt-get install -y pgbouncer``; .ci/run installs it when
it runs as root).

What is checked, and what RELIABILITY.md's "Running behind PgBouncer" section quotes:

* the defaults (``reset="auto"``, ``check="auto"``) work through PgBouncer, with threads,
  commits and rollbacks; psycopg2 creates no server-side prepared statements;
* the health check (``SELECT 1`` in autocommit) works through PgBouncer, does not pin a server
  connection, and detects client connections PgBouncer dropped (``KILL``) or lost (PgBouncer
  restarted); a PostgreSQL restart behind PgBouncer is invisible to idle pooled connections;
* transaction mode shares server sessions between clients at every transaction boundary: a
  session ``SET`` leaks to other clients while the setter still holds its pooled connection, so
  no reset on return can contain it, and ``reset="discard"``'s ``DISCARD ALL`` runs on whatever
  server connection PgBouncer picks (observed: not the dirty one); ``SET LOCAL`` stays in its
  transaction; a session ``SET`` or ``SET ROLE`` in ``configure`` is lost and leaks to another
  client (except the parameters PgBouncer tracks per client, such as TimeZone; psycopg2's
  isolation level is sent with each BEGIN and follows the client); ``WITH HOLD`` cursors and SQL
  ``PREPARE`` do not survive the transaction;
* Django (ENGINE django_fastpool, DISABLE_SERVER_SIDE_CURSORS=True) runs ORM queries, atomic
  blocks and savepoints through it (tests/faults/django_pgbouncer.py, a subprocess).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from time import monotonic
from typing import Any, Callable, Dict, Iterator, List, Optional

import psycopg2
import pytest

from conftest import PgBinaries, _make_workdir, free_tcp_port, pg_binaries
from fastpool import health

# Every test here starts a PgBouncer (some a private server too): seconds each.
pytestmark = pytest.mark.slow

FAULTS_DIR = Path(__file__).parent / "faults"
INSTALL_HINT = ("pgbouncer is not installed: `apt-get install -y pgbouncer` (Debian/Ubuntu; .ci/run does "
                "it when run as root), or set FASTPOOL_PGBOUNCER=/path/to/pgbouncer")


def pgbouncer_binary() -> Optional[str]:
    env = os.environ.get("FASTPOOL_PGBOUNCER")
    if env:
        return env if os.access(env, os.X_OK) else None
    # Debian installs it in /usr/sbin, which a non-root PATH may lack.
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")


class PgBouncer:
    """A PgBouncer process in front of one PostgreSQL, on a fixed 127.0.0.1 port (so ``dsn``
    survives ``restart()``). ``admin(cmd)`` runs a console command (SHOW POOLS, KILL, ...)."""

    def __init__(self, binary: str, server_port: int, pool_size: int = 2, mode: str = "transaction",
                 extra: str = "") -> None:
        self._binary = binary
        self._bins: PgBinaries = pg_binaries()
        self.base = _make_workdir("fastpool-pgbouncer-", self._bins)
        self.server_port = server_port
        self.pool_size = pool_size
        self.mode = mode
        self.extra = extra
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        (self.base / "userlist.txt").write_text('"postgres" ""\n')
        self._bins.own(self.base)
        last: Optional[BaseException] = None
        for _ in range(3):  # a free port can be taken before pgbouncer binds it
            self.port = free_tcp_port()
            try:
                self.start()
                return
            except RuntimeError as exc:
                last = exc
        self.cleanup()
        raise RuntimeError(f"pgbouncer failed to start: {last}")

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    @property
    def log(self) -> str:
        try:
            return (self.base / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""

    def _write_config(self) -> Path:
        ini = self.base / "pgbouncer.ini"
        ini.write_text(f"""
[databases]
postgres = host=127.0.0.1 port={self.server_port} dbname=postgres user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir = {self.base}
auth_type = trust
auth_file = {self.base}/userlist.txt
admin_users = postgres
pool_mode = {self.mode}
default_pool_size = {self.pool_size}
max_client_conn = 200
logfile = {self.base}/pgbouncer.log
pidfile = {self.base}/pgbouncer.pid
{self.extra}
""")
        self._bins.own(self.base)
        return ini

    def start(self, timeout: float = 10.0) -> None:
        ini = self._write_config()
        extra: Dict[str, Any] = {}
        if self._bins.user is not None:  # root: run as the binaries' unprivileged user
            extra = {"user": self._bins.user.pw_uid, "group": self._bins.user.pw_gid, "extra_groups": []}
        self.proc = subprocess.Popen([self._binary, str(ini)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **extra)
        deadline = monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.dsn, connect_timeout=2).close()
                return
            except psycopg2.OperationalError as exc:
                if self.proc.poll() is not None or monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"pgbouncer did not come up: {exc}\n{self.log[-2000:]}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: fast exit, drops every client connection
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def admin(self, command: str) -> List[Dict[str, Any]]:
        conn = psycopg2.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=pgbouncer")
        conn.autocommit = True  # the console rejects BEGIN
        try:
            with conn.cursor() as cur:
                cur.execute(command)
                if cur.description is None:
                    return []
                names = [d[0] for d in cur.description]
                return [dict(zip(names, row)) for row in cur.fetchall()]
        finally:
            conn.close()

    def pool_row(self) -> Dict[str, Any]:
        return next(r for r in self.admin("SHOW POOLS") if r["database"] == "postgres")

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def make_bouncer(private_server: Any) -> Iterator[Callable[..., PgBouncer]]:
    """``make_bouncer(pool_size=2, mode="transaction", extra="")`` -> PgBouncer in front of the
    test's private server (``private_server``)."""
    binary = pgbouncer_binary()
    if binary is None:
        pytest.skip(INSTALL_HINT)
    bouncers: List[PgBouncer] = []

    def factory(**kw: Any) -> PgBouncer:
        b = PgBouncer(binary, private_server.port, **kw)
        bouncers.append(b)
        return b

    yield factory
    for b in bouncers:
        b.cleanup()


def q(conn: Any, sql: str, args: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description is not None else None


def backend_pid(conn: Any) -> int:
    return int(q(conn, "SELECT pg_backend_pid()")[0][0])


def settle(pool: Any, timeout: float = 5.0) -> Dict[str, int]:
    deadline = monotonic() + timeout
    while True:
        st = pool.stats()
        if (st["requests_waiting"] == 0 and st["pool_available"] == st["pool_size"]) or monotonic() > deadline:
            return st
        time.sleep(0.02)


def assert_no_leak(pool: Any) -> Dict[str, int]:
    st = settle(pool)
    assert st["requests_waiting"] == 0 and st["pool_available"] == st["pool_size"], st
    pool._check_invariants()
    return st


# --------------------------------------------------------------------------------------------
# the defaults work


def test_pool_defaults_through_pgbouncer(Pool: Any, make_bouncer: Any, private_server: Any) -> None:
    bouncer = make_bouncer(pool_size=2)
    direct = psycopg2.connect(private_server.dsn)
    direct.autocommit = True
    q(direct, "CREATE TABLE fp_bouncer (id serial PRIMARY KEY, worker int, n int)")

    pool = Pool(bouncer.dsn, min_size=2, max_size=4, timeout=10.0)  # reset="auto", check="auto"
    try:
        pool.wait(10)
        committed = [0]
        errors: List[str] = []
        lock = threading.Lock()

        def worker(w: int) -> None:
            for n in range(40):
                try:
                    with pool.connection() as conn:
                        q(conn, "INSERT INTO fp_bouncer (worker, n) VALUES (%s, %s)", (w, n))
                        if n % 5 == 4:
                            raise KeyError("rolled back")
                    with lock:
                        committed[0] += 1
                except KeyError:
                    pass
                except Exception as exc:  # pragma: no cover - reported below
                    errors.append(repr(exc))

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert q(direct, "SELECT count(*) FROM fp_bouncer")[0][0] == committed[0] == 8 * 32

        # A transaction left open is rolled back on return (every reset mode), through PgBouncer.
        conn = pool.getconn()
        q(conn, "INSERT INTO fp_bouncer (worker, n) VALUES (-1, -1)")
        pool.putconn(conn)
        assert q(direct, "SELECT count(*) FROM fp_bouncer WHERE worker = -1")[0][0] == 0

        # psycopg2 interpolates parameters client-side and sends simple-protocol queries: no
        # server-side prepared statement exists even after parameterised queries.
        with pool.connection() as conn:
            for i in range(3):
                q(conn, "SELECT %s::int + %s", (i, 1))
            assert q(conn, "SELECT count(*) FROM pg_prepared_statements")[0][0] == 0

        row = bouncer.pool_row()
        print(f"\nSHOW POOLS: {row}\nfastpool stats: {pool.stats()}")
        servers = sum(int(row.get(k, 0)) for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"))
        assert servers <= 2, row  # default_pool_size: 4 pooled clients shared 2 server connections
        assert int(row["cl_active"]) + int(row["cl_waiting"]) == pool.stats()["pool_size"], row
        st = assert_no_leak(pool)
        assert st["requests_errors"] == 0 and st["connections_errors"] == 0, st
    finally:
        pool.close()
        direct.close()


# --------------------------------------------------------------------------------------------
# the health check


def test_health_check_through_pgbouncer(Pool: Any, make_bouncer: Any) -> None:
    bouncer = make_bouncer(pool_size=2)
    pool = Pool(bouncer.dsn, min_size=2, max_size=2, check="ping", timeout=10.0)
    try:
        pool.wait(10)
        # ping = SELECT 1 in autocommit: works, leaves no transaction, pins no server connection
        conn = pool.getconn()
        assert conn.autocommit is False
        assert health.ping(conn) is True
        assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        assert conn.autocommit is False
        row = bouncer.pool_row()
        assert row["sv_active"] == 0 and row["cl_waiting"] == 0, row
        pool.putconn(conn)
        for _ in range(50):  # check="ping": every checkout pings through PgBouncer
            with pool.connection() as conn:
                assert q(conn, "SELECT 1") == [(1,)]
        st = pool.stats()
        assert st["connections_lost"] == 0 and st["requests_errors"] == 0, st
    finally:
        pool.close()


def _recover(pool: Any, deadline_s: float) -> Dict[str, Any]:
    """Borrow until a query works; returns errors seen and the time it took."""
    t0 = monotonic()
    errors: List[str] = []
    while True:
        try:
            with pool.connection(timeout=2) as conn:
                q(conn, "SELECT 1")
            return {"seconds": monotonic() - t0, "errors": errors}
        except Exception as exc:
            errors.append(type(exc).__name__ + ": " + str(exc).strip().splitlines()[0])
            if monotonic() - t0 > deadline_s:
                raise AssertionError(f"no recovery in {deadline_s} s: {errors[-5:]}") from exc
            time.sleep(0.05)


def test_pgbouncer_kill_detected_by_auto_check(Pool: Any, make_bouncer: Any) -> None:
    """PgBouncer drops every client connection (admin KILL): check="auto" sees the hung-up
    sockets (a zero-round-trip poll) and replaces them; no error reaches the borrower."""
    bouncer = make_bouncer(pool_size=2)
    pool = Pool(bouncer.dsn, min_size=2, max_size=2, timeout=10.0)  # check="auto"
    try:
        pool.wait(10)
        conns = [pool.getconn(), pool.getconn()]
        for c in conns:
            q(c, "SELECT 1")
            c.commit()
            pool.putconn(c)
        bouncer.admin("KILL postgres")
        bouncer.admin("RESUME postgres")
        time.sleep(0.1)
        res = _recover(pool, 10)
        st = pool.stats()
        print(f"\nafter KILL: {res}, stats {st}")
        assert res["errors"] == [], res
        assert st["connections_lost"] >= 1, st
        for _ in range(5):
            with pool.connection() as conn:
                q(conn, "SELECT 1")
        assert_no_leak(pool)
    finally:
        pool.close()


def test_pgbouncer_restart_and_server_restart(Pool: Any, make_bouncer: Any, private_server: Any) -> None:
    """PgBouncer restarted: the pool notices the dead client connections and reconnects.
    PostgreSQL restarted behind PgBouncer: pooled connections to PgBouncer stay valid."""
    bouncer = make_bouncer(pool_size=2)
    pool = Pool(bouncer.dsn, min_size=2, max_size=3, timeout=10.0)
    try:
        pool.wait(10)
        for _ in range(3):
            with pool.connection() as conn:
                q(conn, "SELECT 1")
        # 1. PgBouncer down for 0.5 s
        bouncer.stop()
        t0 = monotonic()
        threading.Timer(0.5, bouncer.start).start()
        res = _recover(pool, 15)
        print(f"\npgbouncer restart: recovered {monotonic() - t0:.2f} s after the stop, errors {res}")
        assert monotonic() - t0 < 10
        assert_no_leak(pool)
        # 2. PostgreSQL restarted behind PgBouncer (fast shutdown)
        private_server.restart()
        res2 = _recover(pool, 15)
        print(f"server restart behind pgbouncer: {res2}, stats {pool.stats()}")
        assert res2["errors"] == [], res2  # observed: PgBouncer reconnects, clients see nothing
        assert_no_leak(pool)
    finally:
        pool.close()


# --------------------------------------------------------------------------------------------
# transaction mode: session state is shared between clients


def test_session_state_and_discard_in_transaction_mode(Pool: Any, make_bouncer: Any) -> None:
    """Why reset="discard" is no help behind PgBouncer in transaction mode, and what is safe.

    PgBouncer gives a client a server connection per transaction and hands idle server
    connections out LIFO, which makes every step below deterministic with 2 server connections.
    """
    bouncer = make_bouncer(pool_size=2)
    y = psycopg2.connect(bouncer.dsn)  # another client of the same PgBouncer pool
    y.autocommit = True
    z = psycopg2.connect(bouncer.dsn)
    pool = Pool(bouncer.dsn, min_size=1, max_size=1, reset="discard", timeout=10.0)
    try:
        default_work_mem = q(y, "SHOW work_mem")[0][0]

        # 1. A session SET leaks to another client as soon as the setter's transaction ends --
        #    while the setter still holds its pooled connection: no reset on return can help.
        conn = pool.getconn()
        q(conn, "SET work_mem = '7MB'")
        set_on = backend_pid(conn)
        conn.commit()
        assert backend_pid(y) == set_on
        assert q(y, "SHOW work_mem")[0][0] == "7MB"

        # 2. reset="discard": DISCARD ALL on return runs on whichever server connection PgBouncer
        #    picks. With the dirty one busy (z in a transaction), it cleans the other one and the
        #    leak stays for the next client.
        q(z, "SELECT 1")
        assert backend_pid(z) == set_on  # z holds the dirty server connection
        pool.putconn(conn)               # DISCARD ALL: no error through PgBouncer ...
        z.commit()
        assert backend_pid(y) == set_on
        assert q(y, "SHOW work_mem")[0][0] == "7MB"  # ... but the dirty session is untouched
        q(y, "RESET work_mem")

        # 3. SET LOCAL stays inside its transaction: the safe way to change a setting.
        with pool.connection() as conn:
            q(conn, "SET LOCAL work_mem = '9MB'")
            assert q(conn, "SHOW work_mem")[0][0] == "9MB"
        assert q(y, "SHOW work_mem")[0][0] == default_work_mem
        assert q(z, "SHOW work_mem")[0][0] == default_work_mem
        z.commit()

        # 4. A WITH HOLD cursor (what Django's server-side cursors use outside atomic) does not
        #    survive its transaction once another client takes that server connection.
        a = psycopg2.connect(bouncer.dsn)
        a.autocommit = True
        cur = a.cursor("fp_hold", withhold=True)
        cur.itersize = 2
        cur.execute("SELECT generate_series(1, 10)")
        assert cur.fetchmany(2) == [(1,), (2,)]
        q(z, "SELECT 1")  # z takes the most recent server connection: the cursor's
        with pytest.raises(psycopg2.errors.InvalidCursorName):
            cur.fetchmany(2)
        z.commit()
        a.close()
        #    A named cursor inside one transaction is fine (one server connection throughout).
        with pool.connection() as conn:
            with conn.cursor("fp_in_txn") as named:
                named.itersize = 3
                named.execute("SELECT generate_series(1, 10)")
                assert [r[0] for r in named] == list(range(1, 11))

        # 5. SQL-level PREPARE lands on one server connection and is visible to other clients.
        q(y, "PREPARE fp_stmt AS SELECT 1")
        pid = backend_pid(y)
        q(z, "SELECT 1")
        assert backend_pid(z) == pid
        assert q(z, "SELECT count(*) FROM pg_prepared_statements WHERE name = 'fp_stmt'")[0][0] == 1
        z.commit()
        q(y, "DEALLOCATE fp_stmt")
        assert_no_leak(pool)
    finally:
        pool.close()
        y.close()
        z.close()


def test_configure_session_settings_in_transaction_mode(Pool: Any, make_bouncer: Any, private_server: Any) -> None:
    """configure() runs once per *client* connection; behind PgBouncer its session SETs land on
    one server connection and are lost when a later transaction runs on another (and leak to
    whoever gets that one) -- except the parameters PgBouncer tracks per client and re-applies
    (TimeZone here), which follow the client. psycopg2's own session characteristics
    (isolation_level, readonly, ...) are sent with every BEGIN, so they follow the client too."""
    direct = psycopg2.connect(private_server.dsn)
    direct.autocommit = True
    q(direct, "CREATE ROLE fp_role")
    q(direct, "GRANT fp_role TO postgres")
    direct.close()
    bouncer = make_bouncer(pool_size=2)
    z = psycopg2.connect(bouncer.dsn)

    def configure(conn: Any) -> None:
        q(conn, "SET statement_timeout = '4321ms'")
        q(conn, "SET TIME ZONE 'Asia/Tokyo'")
        q(conn, "SET ROLE fp_role")  # what django_fastpool's configure does for OPTIONS assume_role
        conn.commit()
        conn.isolation_level = psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ

    pool = Pool(bouncer.dsn, min_size=1, max_size=1, configure=configure, timeout=10.0)
    try:
        with pool.connection() as conn:
            first = backend_pid(conn)
            assert q(conn, "SHOW statement_timeout")[0][0] == "4321ms"
            assert q(conn, "SELECT current_user")[0][0] == "fp_role"
        q(z, "SELECT 1")  # z holds that server connection: the next transaction gets another
        assert backend_pid(z) == first
        with pool.connection() as conn:
            assert backend_pid(conn) != first
            assert q(conn, "SHOW statement_timeout")[0][0] == "0"            # lost
            assert q(conn, "SELECT current_user")[0][0] == "postgres"        # SET ROLE lost
            assert q(conn, "SHOW TimeZone")[0][0] == "Asia/Tokyo"            # tracked: kept
            assert q(conn, "SHOW transaction_isolation")[0][0] == "repeatable read"  # per BEGIN
        assert q(z, "SHOW statement_timeout")[0][0] == "4321ms"              # leaked to z
        assert q(z, "SELECT current_user")[0][0] == "fp_role"                # role leaked to z
        assert q(z, "SHOW TimeZone")[0][0] != "Asia/Tokyo"                   # tracked per client
        z.commit()
        assert_no_leak(pool)
    finally:
        pool.close()
        z.close()


# --------------------------------------------------------------------------------------------
# Django


def test_django_through_pgbouncer(make_bouncer: Any, impl: str) -> None:
    bouncer = make_bouncer(pool_size=2)
    env = dict(os.environ, FASTPOOL_IMPL=impl, FP_BOUNCER_PORT=str(bouncer.port), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(FAULTS_DIR / "django_pgbouncer.py")], env=env,
                          cwd=str(FAULTS_DIR), capture_output=True, text=True, timeout=120)
    results = [ln[7:] for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and len(results) == 1, (
        f"driver exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}"
        f"\n--- stderr ---\n{proc.stderr[-4000:]}")
    res = json.loads(results[0])
    print(f"\n[django/{impl}] {res}")
    assert res["impl"] == impl
    assert res["errors"] == [], res["errors"]
    assert res["items"] == res["expected_items"], res
    assert res["savepoint_rolled_back"] and res["outer_committed"], res
    assert res["timezones"] == ["Asia/Tokyo"], res  # TIME_ZONE follows each client through PgBouncer
    # with server-side cursors left on, iterator() outside atomic breaks; inside atomic it works
    assert res["ssc_outside_atomic_error"] and "does not exist" in res["ssc_outside_atomic_error"], res
    assert res["ssc_in_atomic_rows"] == res["items"], res
    st = res["pool_stats"]
    assert st["pool_available"] == st["pool_size"] and st["requests_waiting"] == 0, st
