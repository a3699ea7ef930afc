"""``ENGINE: "django_fastpool"``: Django's PostgreSQL backend (psycopg2) over a fastpool Pool.

What changes compared with ``django.db.backends.postgresql``:

* ``get_new_connection`` takes a connection from the alias's pool instead of connecting, and
  ``_close`` gives it back (``connection.close()``, ``close_old_connections`` at the start and end
  of every request, ``connections.close_all()``).
* ``OPTIONS["pool"]["hold"]`` decides how long a wrapper holds its connection (see
  :mod:`django_fastpool.holding`): ``"transaction"`` (default) gives it back as soon as no
  transaction, atomic block or cursor is open -- so executor threads of ``sync_to_async`` and
  the application's own threads hold nothing between queries; ``"request"`` holds it until
  Django closes it.
* The connection goes back at the end of every request whatever ``CONN_MAX_AGE`` says: the
  pool's ``max_lifetime`` governs how long a server connection lives (one warning if
  ``CONN_MAX_AGE`` is set).
* A thread or greenlet that ends without closing its connection does not leak it: when its
  ``DatabaseWrapper`` is garbage-collected the connection goes back to the pool.
* Per-physical-connection setup (JSONB loader, time zone, ``assume_role``, isolation level) runs
  once, in the pool's ``configure`` hook, not on every request.

Settings::

    DATABASES = {"default": {"ENGINE": "django_fastpool", "NAME": ..., "USER": ...,
                             "OPTIONS": {"pool": {"min_size": 2, "max_size": 10}}}}

``OPTIONS["pool"]`` takes the option names of Django 5.1's native pool and of
:class:`fastpool.Pool` (``min_size``, ``max_size``, ``timeout``, ``max_lifetime``, ``max_idle``,
``max_waiting``, ``reconnect_timeout``, ``reset``, ``check``, ``leak_timeout``, ``green``, ...);
``True`` or absent means the defaults. ``connection.pool`` is the alias's Pool (for ``stats()``).
"""

from __future__ import annotations

import logging
import sys
import time
import weakref
from typing import Any, Dict, NamedTuple, Optional, Tuple

import django
from django.core.exceptions import ImproperlyConfigured

# The supported releases (README "Supported"); older ones lack what the backend relies on, e.g.
# Django >= 5.0 refusing to reconnect inside an atomic block whose connection was closed.
if django.VERSION < (5, 2):
    raise ImproperlyConfigured(
        f"django_fastpool needs Django >= 5.2 (5.2 LTS, 6.0 or 6.1); this is Django {django.get_version()}"
    )


def _import_postgresql_backend_on_psycopg2() -> None:
    """Make Django's PostgreSQL backend pick psycopg2 even if psycopg 3 is installed.

    Django chooses the driver once, when ``psycopg_any`` is first imported: psycopg 3 if it can
    be imported. fastpool pools psycopg2 connections, so hide psycopg 3 for that one import.
    Code elsewhere in the process can still import and use psycopg 3.
    """
    pg_any = sys.modules.get("django.db.backends.postgresql.psycopg_any")
    pg_base = sys.modules.get("django.db.backends.postgresql.base")
    if (pg_any is not None and pg_any.is_psycopg3) or (
        pg_base is not None and pg_base.Database.__name__ != "psycopg2"
    ):
        raise ImproperlyConfigured(
            "django_fastpool needs Django's PostgreSQL backend on psycopg2, but psycopg 3 was "
            "already selected (another PostgreSQL database or django.contrib.postgres was "
            "loaded first). Import django_fastpool earlier (e.g. `import django_fastpool.base` "
            "at the top of settings.py) or uninstall psycopg 3."
        )
    if pg_base is not None:
        return
    missing = object()
    saved = sys.modules.get("psycopg", missing)
    sys.modules["psycopg"] = None  # type: ignore[assignment]  # makes `import psycopg` fail
    try:
        # Both modules pick the driver on their own (`base` imports `Database` itself).
        import django.db.backends.postgresql.psycopg_any  # noqa: F401
        import django.db.backends.postgresql.base  # noqa: F401
    finally:
        if saved is missing:
            del sys.modules["psycopg"]
        else:
            sys.modules["psycopg"] = saved  # type: ignore[assignment]


_import_postgresql_backend_on_psycopg2()

import os  # noqa: E402

import psycopg2.extras  # noqa: E402
from django.db import DEFAULT_DB_ALIAS  # noqa: E402
from django.db.backends.postgresql import base as pg_base  # noqa: E402
from django.db.backends.postgresql.creation import DatabaseCreation as PgDatabaseCreation  # noqa: E402
from django.db.backends.postgresql.features import DatabaseFeatures as PgDatabaseFeatures  # noqa: E402
from django.db.backends.postgresql.psycopg_any import IsolationLevel  # noqa: E402
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper  # noqa: E402
from django.utils.functional import cached_property  # noqa: E402

import fastpool  # noqa: E402
from fastpool import _original, fork, health  # noqa: E402
from fastpool import green as _green  # noqa: E402
from fastpool.pool import DEFAULT_CONNECT_TIMEOUT, pool_class  # noqa: E402
from fastpool.tracking import tracked_class  # noqa: E402

from . import holding  # noqa: E402

logger = logging.getLogger("django_fastpool")

NO_DB_ALIAS = "__no_db__"  # Django's alias for its maintenance ("postgres" db) connection

_warned_max_age: set = set()

# This process's id, kept current across fork() (os.getpid() was called twice per request).
_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class DatabaseCreation(PgDatabaseCreation):
    """Closes the alias's pool around test-database creation, cloning and destruction: pooled
    connections to the test database would otherwise block CREATE ... TEMPLATE and DROP."""

    # Django >= 6.1: the name of the method destroy_test_db() closes connections with, so that
    # Django's own tests of destroy_test_db() can stub it out on a copied connection instead of
    # closing the running suite's pool (the pools are per alias, shared by copies).
    destroy_test_db_connection_close_method = "close_pool"

    # The hook is _create_test_db(), not create_test_db(): a wrapper around the public method
    # would add a stack frame and shift the stacklevel of the warnings Django raises there
    # (Django 6.0's create_test_db(serialize) deprecation would point at this file).
    def _create_test_db(self, *args: Any, **kwargs: Any) -> Any:
        self.connection.close_pool()
        return super()._create_test_db(*args, **kwargs)

    def _clone_test_db(self, *args: Any, **kwargs: Any) -> Any:
        self.connection.close_pool()
        return super()._clone_test_db(*args, **kwargs)

    def destroy_test_db(self, *args: Any, **kwargs: Any) -> Any:
        self.connection.close_pool()
        return super().destroy_test_db(*args, **kwargs)


class DatabaseFeatures(PgDatabaseFeatures):
    @cached_property
    def django_test_skips(self) -> Dict[str, set]:
        skips = dict(super().django_test_skips)
        skips["django_fastpool returns the connection to the pool at every request boundary "
              "whatever CONN_MAX_AGE says (no persistent connection to keep), and the pool "
              "does the health checks"] = {
            "backends.base.test_base.ConnectionHealthChecksTests.test_health_checks_enabled",
            "backends.base.test_base.ConnectionHealthChecksTests."
            "test_health_checks_enabled_errors_occurred",
            "backends.base.test_base.ConnectionHealthChecksTests.test_health_checks_disabled",
            "backends.base.test_base.ConnectionHealthChecksTests."
            "test_set_autocommit_health_checks_enabled",
        }
        if getattr(self.connection, "_fastpool_release_between", False):
            skips["django_fastpool hold='transaction' gives the connection back when the last "
                  "cursor closes: connection.connection is None between transactions"] = {
                "backends.tests.ThreadTests.test_default_connection_thread_local",
            }
            skips["django_fastpool hold='transaction' gives the connection back after each "
                  "autocommit query: the next query connects again and runs the connection's "
                  "configuration queries again inside assertNumQueries()"] = {
                "test_utils.tests.AssertNumQueriesUponConnectionTests."
                "test_ignores_connection_configuration_queries",
            }
        if django.VERSION >= (5, 1):  # the test came with Django's native pool
            skips["django_fastpool pools psycopg2 connections: OPTIONS['pool'] is not refused"] = {
                "backends.postgresql.tests.Tests.test_connect_pool_setting_ignored_for_psycopg2",
            }
        return skips


class _CountedCursorWrapper(holding.Counted, CursorWrapper):
    pass


# Django's PostgreSQL backend has its own debug wrapper (it logs copy_expert / copy_to).
class _CountedCursorDebugWrapper(holding.Counted, getattr(pg_base, "CursorDebugWrapper", CursorDebugWrapper)):
    pass


class _Held:
    """What a DatabaseWrapper holds from its pool, kept apart from the wrapper so that the
    wrapper's one finalizer (made once, not per checkout) can give it back without the wrapper."""

    __slots__ = ("pool_ref", "conn", "token")

    def __init__(self) -> None:
        self.pool_ref: Optional["weakref.ref[Any]"] = None
        self.conn: Any = None
        self.token = 0


def _return_orphan(held: _Held) -> None:
    """Finalizer of a DatabaseWrapper whose thread/greenlet ended without closing its connection."""
    conn, pool = held.conn, held.pool_ref() if held.pool_ref is not None else None
    held.conn = held.pool_ref = None
    if conn is not None and pool is not None:
        pool._return_later(conn, held.token)


class _Derived(NamedTuple):
    """What one full lookup derived from an alias's settings (see DatabaseWrapper._fastpool_fresh)."""

    snapshot: Dict[str, Any]  # a copy of settings_dict, nested dicts and lists copied too
    timezone_name: Optional[str]
    entry: Tuple[Any, Any]  # the alias's (fingerprint, Pool) it found
    params: Dict[str, Any]  # get_connection_params() for these settings
    isolation_level: Any


def _snapshot(value: Any) -> Any:
    """A copy of a settings value that an in-place change of the original does not reach."""
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_snapshot(v) for v in value]
    return value


#: seconds a caller waiting for another caller's pool build sleeps before it looks again (only
#: matters if a wake were lost; the build's end wakes every waiter)
_BUILD_RECHECK = 1.0


class _Turn:
    """A caller's wait for an alias's pool build, as fastpool.green.make_waiter wants a waiter:
    ``state`` 0 while waiting, ``wake()`` called at most once (a thread waiter's lock must not
    be released twice)."""

    WAITING = 0
    WOKEN = 1

    __slots__ = ("state", "wake")

    def __init__(self, wake: Any) -> None:
        self.state = self.WAITING
        self.wake = wake


def _build_waiter() -> Tuple["_Turn", Any]:
    """(turn, wait) for a caller waiting for another caller's pool build, waiting as the pool's
    own callers do: a greenlet under a gevent/eventlet hub parks on it (the core's Park, which
    the pool's waits use), a bare greenlet or an OS thread as fastpool.green.make_waiter says."""
    parking = _green.hub_parking()
    if parking is not None:
        park = pool_class(fastpool.__impl__)._Park(parking)
        return _Turn(park), park.wait
    turn, wait = _green.make_waiter(_Turn)
    return turn, wait


class _Build:
    """An alias's pool build in progress: the callers waiting for it."""

    __slots__ = ("turns",)

    def __init__(self) -> None:
        self.turns: list = []

    def finish(self) -> None:
        """Wake every waiter once (called with no lock held: a wake may switch greenlets)."""
        for turn in self.turns:
            if turn.state == _Turn.WAITING:
                turn.state = _Turn.WOKEN
                turn.wake()


class DatabaseWrapper(pg_base.DatabaseWrapper):
    creation_class = DatabaseCreation
    features_class = DatabaseFeatures

    # alias -> (fingerprint of connection settings, Pool); one pool per alias per process
    # (fastpool resets pools in forked children by itself).
    _fastpools: Dict[str, Tuple[Any, Any]] = {}
    # A real OS lock (the threading rule, fastpool._original), held only for dict look-ups and
    # updates, never across I/O: the settings probe connects outside it (_build_pool).
    _fastpools_lock = _original.allocate_lock()
    # alias -> the pool build in progress (its settings probe connecting): a second caller of
    # the alias waits for it instead of probing too, so the alias never has more sessions than
    # max_size, even while its pool is being made.
    _fastpool_builds: Dict[str, "_Build"] = {}
    # alias -> what the last full lookup derived from its settings: every later connect() of any
    # wrapper of the alias (hold="transaction" connects once per transaction; `Connection: close`
    # clients bring a new wrapper per request) skips get_connection_params(), the fingerprint
    # and the pool lookup while the settings still equal the snapshot (_fastpool_fresh).
    _fastpool_derived: Dict[str, _Derived] = {}

    def __init__(self, settings_dict: Dict[str, Any], alias: str = DEFAULT_DB_ALIAS) -> None:
        super().__init__(settings_dict, alias)
        # OPTIONS["pool"] stays in settings_dict (copy(), Django's own checks of it and a later
        # OPTIONS["pool"] = False all see it); get_connection_params() keeps it away from
        # Django's psycopg2 code (which rejects it) and from psycopg2.connect().
        self._pool_options()  # validate now: a bad setting fails at startup, not per request
        self._fastpool_release_between = (
            alias != NO_DB_ALIAS
            and holding.hold_mode(self.settings_dict["OPTIONS"].get("pool"), alias) == holding.TRANSACTION
        )
        self._fastpool_cursors = 0  # open cursors (holding.Counted) of self.connection
        self._fastpool_connecting = False
        # what the last get_connection_params() found fresh, for the get_new_connection() of
        # the same connect() only (it takes it and clears it)
        self._fastpool_vetted: Optional[_Derived] = None
        self._fastpool_held = _Held()
        # made at the first checkout, once per wrapper: gives back what _fastpool_held holds if
        # the wrapper is dropped without close() (its thread or greenlet ended)
        self._fastpool_finalizer: Optional[weakref.finalize] = None
        self._fastpool_owner: Any = None
        self._fastpool_token = 0  # the pool's hold token for self.connection (see Pool._hold)
        self._fastpool_pid = 0
        max_age = self.settings_dict.get("CONN_MAX_AGE", 0)
        if max_age != 0 and alias != NO_DB_ALIAS and alias not in _warned_max_age:
            _warned_max_age.add(alias)
            logger.warning(
                "database %r: CONN_MAX_AGE=%r is ignored by django_fastpool: connections go back "
                "to the pool after every request and the pool's max_lifetime (%s s) decides how "
                "long a server connection lives",
                alias, max_age, (self._pool_options() or {}).get("max_lifetime", 3600.0),
            )

    def _pool_options(self) -> Optional[Dict[str, Any]]:
        """OPTIONS["pool"] as a dict of Pool options; None when pooling is off (``False``)."""
        value = self.settings_dict["OPTIONS"].get("pool", True)
        if value is False:
            return None  # e.g. Django's own tests ask for an unpooled connection this way
        if value is True or value is None:
            return {}
        if not isinstance(value, dict):
            raise ImproperlyConfigured(
                f"database {self.alias!r}: OPTIONS['pool'] must be True, False or a dict of pool options"
            )
        # "hold" is the wrapper's (holding.py), not the Pool's.
        return {k: v for k, v in value.items() if k != "hold"}

    def _fastpool_fresh(self) -> Optional[_Derived]:
        """The alias's derived settings if they still hold: settings_dict equal to the snapshot
        (tests change NAME in place, override TIME_ZONE), the same time zone name, and the pool
        found then still the alias's (close_pool() and a settings change replace it)."""
        d = self._fastpool_derived.get(self.alias)
        if (d is not None and self._fastpools.get(self.alias) is d.entry
                and d.timezone_name == self.timezone_name and d.snapshot == self.settings_dict):
            return d
        return None

    def get_connection_params(self) -> Dict[str, Any]:
        full = self.settings_dict
        if "pool" not in full["OPTIONS"]:
            return super().get_connection_params()
        d = self._fastpool_fresh()
        # Django's connect() passes the result straight to get_new_connection(), which then
        # need not check the settings a second time (half the per-checkout settings cost).
        self._fastpool_vetted = d
        if d is not None:
            return d.params  # the callers here only read it
        return self._uncached_connection_params()

    def _uncached_connection_params(self) -> Dict[str, Any]:
        full = self.settings_dict
        # A DatabaseWrapper belongs to one thread: swapping its settings for the call is safe.
        self.settings_dict = {**full, "OPTIONS": {k: v for k, v in full["OPTIONS"].items() if k != "pool"}}
        try:
            return super().get_connection_params()
        finally:
            self.settings_dict = full

    # -- the pool ------------------------------------------------------------------------------
    @property
    def pool(self) -> Any:
        """This alias's fastpool Pool in this process (None for Django's maintenance alias)."""
        if self._fastpool_owner is not None:
            # The pool the held connection came from. Cheap: Django >= 5.1 asks at every
            # connect(), which hold="transaction" runs once per transaction.
            return self._fastpool_owner
        if self.alias == NO_DB_ALIAS or self._pool_options() is None:
            return None
        return self._pool_for(self.get_connection_params())

    def _isolation_level(self) -> Any:
        level = self.settings_dict["OPTIONS"].get("isolation_level")
        if level is None:
            return IsolationLevel.READ_COMMITTED
        try:
            return IsolationLevel(level)
        except ValueError:
            raise ImproperlyConfigured(  # Django's own wording
                f"Invalid transaction isolation level {level} specified. "
                f"Use one of the psycopg.IsolationLevel values."
            ) from None

    def _pool_for(self, conn_params: Dict[str, Any]) -> Any:
        d = self._fastpool_fresh()
        if d is not None and conn_params is d.params:
            return d.entry[1]
        snapshot = _snapshot(self.settings_dict)
        isolation = self.settings_dict["OPTIONS"].get("isolation_level")
        role = self.settings_dict["OPTIONS"].get("assume_role")
        timezone_name = self.timezone_name
        options = self._pool_options() or {}
        autocommit = bool(self.settings_dict["AUTOCOMMIT"])
        # Anything that shapes a physical connection; when it changes (test database name,
        # TIME_ZONE in tests) the old pool is closed and a new one made. Never logged.
        fingerprint = (sorted((k, repr(v)) for k, v in conn_params.items()), isolation, role, timezone_name,
                       autocommit, sorted((k, repr(v)) for k, v in options.items()))
        entry = self._fastpools.get(self.alias)
        if entry is None or entry[0] != fingerprint:
            entry = self._fastpool_build_or_wait(fingerprint, conn_params, options, isolation, role,
                                                 timezone_name, autocommit)
        self._fastpool_remember(snapshot, timezone_name, entry, conn_params)
        return entry[1]

    def _fastpool_build_or_wait(self, fingerprint: Any, conn_params: Dict[str, Any],
                                options: Dict[str, Any], isolation: Any, role: Optional[str],
                                timezone_name: Optional[str], autocommit: bool) -> Tuple[Any, Any]:
        """The alias's (fingerprint, Pool) for these settings: built here, or by the caller
        already building it, which this one waits for -- cooperatively, greenlet or thread
        (_build_waiter). One build at a time per alias: two settings probes would
        be two sessions, and a max_size=1 alias would briefly have 2."""
        while True:
            with self._fastpools_lock:
                entry = self._fastpools.get(self.alias)
                if entry is not None and entry[0] == fingerprint:
                    return entry
                build = self._fastpool_builds.get(self.alias)
                if build is None:
                    build = self._fastpool_builds[self.alias] = _Build()
                    break  # this caller builds
                # A new turn for every wait: one woken late (after its wait timed out) must
                # never be woken again by the next build.
                turn, wait = _build_waiter()
                build.turns.append(turn)
            # A lost wake cannot strand the caller: it looks again every second.
            wait(_BUILD_RECHECK)
        try:
            pool = self._build_pool(conn_params, options, isolation, role, timezone_name, autocommit)
        except BaseException:
            with self._fastpools_lock:
                del self._fastpool_builds[self.alias]
            build.finish()  # a waiter then tries itself, and gets the settings' error itself
            raise
        new_entry = (fingerprint, pool)
        with self._fastpools_lock:
            old = self._fastpools.get(self.alias)
            self._fastpools[self.alias] = new_entry
            del self._fastpool_builds[self.alias]
        build.finish()
        if old is not None:
            old[1].close()
        return new_entry

    def _build_pool(self, conn_params: Dict[str, Any], options: Dict[str, Any], isolation: Any,
                    role: Optional[str], timezone_name: Optional[str], autocommit: bool) -> Any:
        """A new Pool for these settings, its first connection the settings probe (I/O: called
        with no lock held)."""
        configure = _make_configure(isolation, role, timezone_name, self.ops, autocommit)
        options = {"min_size": 0, **options}
        reset = options.get("reset", "auto")
        # Prove the settings once, synchronously, before any request waits on the pool: a
        # wrong password, database or assume_role then fails now, as with Django's own
        # backend, instead of as a PoolTimeout after the pool's timeout. The probe then
        # becomes the pool's first connection: closing it instead left its server session
        # alive for a moment while the pool opened max_size others (max_size + 1 sessions).
        # The pool's own connect arguments, which a connect= pool does not add by itself.
        kwargs = {"connect_timeout": DEFAULT_CONNECT_TIMEOUT, **conn_params}
        kwargs["connection_factory"] = tracked_class(
            conn_params.get("connection_factory") or psycopg2.extensions.connection,
            session=reset == "auto",
        )
        # As the pool's own connects: under gevent/eventlet the probe waits through the hub, so
        # the process's other greenlets keep running while it connects.
        _green.ensure_wait_callback(options.get("green", "auto"))
        probe = psycopg2.connect(**kwargs)
        try:
            configure(probe)
        except BaseException:
            probe.close()
            raise
        # A reset that wipes the session must be followed by the per-connection setup
        # again (time zone, assumed role): the pool re-runs configure after its own
        # DISCARD ALL ("auto", "discard"); a user's reset callable gets it appended.
        options["reset"] = _make_reset(reset, configure)
        try:
            return fastpool.Pool(
                connect=_probe_first(probe), kwargs=kwargs, configure=configure,
                name=f"django:{self.alias}", **options,
            )
        except BaseException:
            probe.close()  # an invalid pool option: the probe was never the pool's
            raise

    def _fastpool_remember(self, snapshot: Dict[str, Any], timezone_name: Optional[str],
                           entry: Tuple[Any, Any], conn_params: Dict[str, Any]) -> None:
        """Keep what _pool_for derived for the alias's next connects -- only if conn_params are
        what these settings give (a caller may pass params of its own to get_new_connection)."""
        level = self._isolation_level()
        if self._uncached_connection_params() == conn_params:
            self._fastpool_derived[self.alias] = _Derived(snapshot, timezone_name, entry, conn_params, level)

    def close_pool(self) -> None:
        """Close this alias's pool in this process (Django 5.1's name)."""
        with self._fastpools_lock:
            entry = self._fastpools.pop(self.alias, None)
        if entry is not None:
            entry[1].close()

    # -- connections ---------------------------------------------------------------------------
    def get_new_connection(self, conn_params: Dict[str, Any]) -> Any:
        d, self._fastpool_vetted = self._fastpool_vetted, None
        if d is None or conn_params is not d.params:
            d = self._fastpool_fresh()
        if d is not None and conn_params is d.params:
            pool, level = d.entry[1], d.isolation_level
        else:
            if self.alias == NO_DB_ALIAS or self._pool_options() is None:
                return super().get_new_connection(conn_params)
            level = self._isolation_level()
            pool = self._pool_for(conn_params)
        # As Django's own get_new_connection: self.isolation_level must be set before
        # _set_autocommit() runs; the connection itself got it in configure().
        self.isolation_level = level
        conn = pool.getconn()
        self._fastpool_cursors = 0
        try:
            # Held: only this wrapper's _close() can give it back, so a stray pool.putconn() of
            # it -- or of a connection a previous request returned -- raises PoolMisuse.
            token = pool._hold(conn)
        except BaseException:
            pool.putconn(conn)
            raise
        self._fastpool_owner = pool
        self._fastpool_token = token
        self._fastpool_pid = _pid
        held = self._fastpool_held
        if held.pool_ref is None or held.pool_ref() is not pool:
            held.pool_ref = weakref.ref(pool)
        held.conn, held.token = conn, token
        if self._fastpool_finalizer is None:
            # If this wrapper is dropped without close() (its thread or greenlet ended), the
            # finalizer gives back what it holds instead of leaving it checked out.
            self._fastpool_finalizer = weakref.finalize(self, _return_orphan, held)
        return conn

    def _close(self) -> None:
        if self.connection is None:
            return
        conn, pool, token = self.connection, self._fastpool_owner, self._fastpool_token
        self._fastpool_held.conn = None  # the finalizer has nothing to give back now
        self._fastpool_owner = None
        self._fastpool_token = 0
        if pool is None:  # the maintenance alias or pooling off: a plain connection
            with self.wrap_database_errors:
                return conn.close()
        # The wrapper must never touch a connection it gave back, even inside an atomic block.
        self.connection = None
        if self._fastpool_pid != _pid:
            # Inherited across fork() (gunicorn --preload): fastpool already detached it from
            # the parent's socket in this process; it is not this process's pool's to take.
            return
        with self.wrap_database_errors:
            pool._putconn_held(conn, token)

    # -- hold="transaction": give the connection back between transactions (holding.py) -------
    def connect(self) -> None:
        # Django's connect() runs set_autocommit() and may open cursors (version check) right
        # after taking the connection: not release points.
        previous, self._fastpool_connecting = self._fastpool_connecting, True
        try:
            super().connect()
        finally:
            self._fastpool_connecting = previous  # a nested connect() must not end the outer one

    def make_cursor(self, cursor: Any) -> Any:
        if not self._fastpool_release_between or self._fastpool_owner is None:
            return super().make_cursor(cursor)
        wrapped = _CountedCursorWrapper(cursor, self)
        wrapped._fastpool_track()
        return wrapped

    def make_debug_cursor(self, cursor: Any) -> Any:
        if not self._fastpool_release_between or self._fastpool_owner is None:
            return super().make_debug_cursor(cursor)
        wrapped = _CountedCursorDebugWrapper(cursor, self)
        wrapped._fastpool_track()
        return wrapped

    def get_autocommit(self) -> bool:
        # atomic() asks before it begins: answer without taking a connection only to learn
        # what connect() would set (a released wrapper is never inside an atomic block).
        if self.connection is None and self._fastpool_release_between and not self.in_atomic_block:
            return bool(self.settings_dict["AUTOCOMMIT"])
        return super().get_autocommit()

    def set_autocommit(self, autocommit: bool,
                       force_begin_transaction_with_broken_autocommit: bool = False) -> None:
        super().set_autocommit(autocommit, force_begin_transaction_with_broken_autocommit)
        if autocommit:
            # The end of an outermost atomic block (its on_commit callbacks have run).
            self._fastpool_release_if_idle()

    def _set_autocommit(self, autocommit: bool) -> None:
        # Setting psycopg2's autocommit to the value it has changes nothing but marks the
        # connection changed for the pool (a reset on every return): skip it.
        if self.connection.autocommit != autocommit:
            super()._set_autocommit(autocommit)

    def _fastpool_release_if_idle(self) -> None:
        """A release point of hold="transaction": give the connection back if nothing of it is
        in use (holding.between_transactions)."""
        if (self._fastpool_release_between and not self._fastpool_connecting
                and self._fastpool_owner is not None and holding.between_transactions(self)):
            self._close()

    def close_if_unusable_or_obsolete(self) -> None:
        """Called at the start and end of every request: give the connection back to the pool
        (which rolls back and resets it). Also inside a forgotten atomic block: Django's close()
        marks that block broken, and its transaction must not reach the next request."""
        if self.connection is not None:
            self.health_check_done = False
            self.close()

    def is_usable(self) -> bool:
        if self.connection is None:  # given back to the pool (Django 4.2 does not check)
            return False
        return super().is_usable()

    def close_if_health_check_failed(self) -> None:
        if self.alias == NO_DB_ALIAS:
            return super().close_if_health_check_failed()
        # The pool vets a connection before handing it out.


def _probe_first(probe: Any) -> Any:
    """The pool's ``connect``: the settings probe first, then new connections (the pool passes
    the probe's arguments, its tracked ``connection_factory`` included).

    The probe is handed over whatever its age, after the pool's own "auto" health check (a
    socket poll; a ``SELECT 1`` once it sat idle a second or more): closing a merely old probe
    and connecting anew let the server count both sessions while the old backend exited (2 for
    ``max_size=1``). Only a probe that failed the check is replaced -- its session is already
    gone or going, and no open socket keeps it. A forked child detaches its inherited copy from
    the shared socket (fork.neutralise) and connects anew."""
    spare = [probe]
    pid = os.getpid()
    made = time.monotonic()

    def connect(conninfo: str = "", **kwargs: Any) -> Any:
        try:
            conn = spare.pop()
        except IndexError:
            pass
        else:
            if os.getpid() != pid:
                fork.neutralise(conn)
            elif not conn.closed and health.auto_check(conn, time.monotonic() - made, _unguarded):
                return conn
            else:
                conn.close()
        return psycopg2.connect(conninfo, **kwargs)

    return connect


def _unguarded(check: Any, conn: Any) -> Any:
    """health.auto_check's guard, without a watchdog: the probe's ping runs in the pool's
    connect, which the pool already treats as one attempt that may fail."""
    return check(conn)


def _make_reset(mode: Any, configure: Any) -> Any:
    """The pool's reset for a Django alias: the user's choice, with the per-connection setup
    re-applied after anything that can wipe session state."""
    if not callable(mode):
        # None, "auto", "rollback", "discard" (the pool re-runs configure after its DISCARD
        # ALL), or invalid: fastpool.Pool names the problem.
        return mode

    def reset_and_configure(conn: Any) -> None:
        mode(conn)
        configure(conn)

    return reset_and_configure


def _make_configure(isolation: Any, role: Optional[str], timezone_name: Optional[str], ops: Any,
                    autocommit: bool = True) -> Any:
    """The pool's configure hook: what Django does once per physical connection.

    Pooled connections start in Django's AUTOCOMMIT mode: the pool takes a fresh connection's
    state as its clean state, so a connection Django gives back in that mode (every release of
    hold="transaction") takes the pool's no-reset fast path."""

    def configure(conn: Any) -> None:
        if isolation is not None:
            conn.isolation_level = IsolationLevel(isolation)
        # As Django: skip psycopg2's JSON decode -> json.dumps -> json.loads round trip.
        psycopg2.extras.register_default_jsonb(conn_or_curs=conn, loads=lambda x: x)
        with conn.cursor() as cur:
            if timezone_name and conn.get_parameter_status("TimeZone") != timezone_name:
                cur.execute(ops.set_time_zone_sql(), [timezone_name])
            if role:
                cur.execute("SET ROLE %s", [role])
        if not conn.autocommit:
            conn.commit()
        conn.autocommit = autocommit

    return configure
