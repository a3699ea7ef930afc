"""Is a connection fit to hand out? Decided before every checkout, cheapest test first.

1. Always (in the core, zero cost): the connection is not closed and has not outlived
   ``max_lifetime``.
2. ``check="auto"``: a connection returned less than ``HOT_WINDOW`` ago has just proved itself
   by its last result and is handed out as is. Otherwise its socket is polled without blocking:
   an idle PostgreSQL connection has nothing to read unless the server hung up (terminated
   backend, restart) or sent a notification -- a zero-round-trip test. If it is readable, or the
   connection sat idle longer than ``PING_AFTER``, a real ``SELECT 1`` decides.
3. ``check="ping"``: always a real round trip. ``check=callable``: the callable decides (raise or
   return False for a bad connection). ``check=None``: only step 1.
"""

from __future__ import annotations

import _socket
import os
import select
from typing import Any, Callable, Optional

from . import _original

#: seconds: a connection used this recently skips the socket poll (HikariCP's "alive bypass
#: window" idea, shortened: the poll is cheap, it only must stay off the tight reuse loop).
HOT_WINDOW = 0.001
#: seconds idle after which "auto" pays a round trip: long enough that a busy pool never pings,
#: short enough that a quiet pool's first request after a pause does not meet a dead socket.
PING_AFTER = 1.0

#: seconds a health-check ping or a reset on return may take. A frozen server (SIGSTOP, a hung
#: host) still ACKs TCP, so nothing else would ever end libpq's wait; past this the socket is
#: shut down, libpq returns an error and the connection is discarded.
ROUND_TRIP_TIMEOUT = 5.0

Guard = Callable[[Callable[[Any], Any], Any], Any]

_POLL_MASK = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP


def socket_readable(conn: Any) -> bool:
    """True when the connection's socket has data or a hang-up pending (never blocks)."""
    fileno = getattr(conn, "fileno", None)
    if fileno is None:
        return False
    try:
        fd = fileno()
    except Exception:
        return True  # a connection that cannot give its socket is not healthy
    p = _original.poll()  # never gevent's: this must not yield, it is a zero-timeout look
    p.register(fd, _POLL_MASK)
    return bool(p.poll(0))


def ping(conn: Any) -> bool:
    """One round trip (``SELECT 1``) that leaves no transaction behind."""
    dirty = getattr(conn, "_fastpool_dirty", None)
    try:
        autocommit = getattr(conn, "autocommit", None)
        if autocommit is False:
            # psycopg2 would open a transaction for the SELECT; autocommit avoids the extra
            # BEGIN/ROLLBACK round trips and is safe behind PgBouncer in transaction mode.
            conn.autocommit = True
        try:
            cur = conn.cursor()
            try:
                cur.execute("SELECT 1")
                cur.fetchall()
            finally:
                cur.close()
        finally:
            if autocommit is False and not conn.closed:  # a cancel mid-query closes it
                conn.autocommit = False
            if dirty is not None:
                conn._fastpool_dirty = dirty  # the toggle above is ours, not the borrower's
        return True
    except Exception:
        return False


def auto_check(conn: Any, idle: float, guard: Guard) -> bool:
    if idle >= PING_AFTER or socket_readable(conn):
        return bool(guard(ping, conn))
    return True


Vet = Callable[[Any, float, Guard], bool]


def make_vet(check: Any) -> "tuple[Optional[Vet], float]":
    """(vet function, idle seconds after which it runs) for a ``check`` option value. The vet
    function runs round trips through ``guard`` (a :class:`Watchdog` deadline)."""
    if check is None:
        return None, float("inf")
    if check == "auto":
        return auto_check, HOT_WINDOW
    if check == "ping":
        return (lambda conn, idle, guard: bool(guard(ping, conn))), 0.0
    if callable(check):
        def user_check(conn: Any) -> bool:
            try:
                return check(conn) is not False
            except Exception:
                return False

        return (lambda conn, idle, guard: bool(guard(user_check, conn))), 0.0
    raise ValueError(f"check must be 'auto', 'ping', None or a callable, not {check!r}")


def shutdown_socket(conn: Any) -> None:
    """Shut the connection's socket down (both ways) so a blocked libpq call returns."""
    try:
        fd = conn.fileno()
    except Exception:
        return
    try:
        # shutdown() acts on the socket, not the descriptor: a duplicate reaches it without
        # taking ownership of libpq's descriptor. _socket, not socket: this runs on the timer
        # thread, and gevent's socket class would make a hub there (the threading rule,
        # fastpool._original).
        s = _socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        s.shutdown(_socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        s.close()


class Watchdog:
    """A deadline on one operation on a connection: if it is still running when the deadline
    passes, the connection's socket is shut down. ``finish()`` says whether it finished in time
    (a connection whose watchdog fired is never reused)."""

    __slots__ = ("_lock", "_state", "_conn", "_entry", "_workers")

    RUNNING, DONE, FIRED = 0, 1, 2

    def __init__(self, workers: Any, conn: Any, seconds: float) -> None:
        # A real lock: _fire takes it on the timer thread (the threading rule, fastpool._original).
        self._lock = _original.allocate_lock()
        self._state = self.RUNNING
        self._conn = conn
        self._workers = workers
        self._entry = workers.schedule(seconds, self._fire)

    def _fire(self) -> None:
        with self._lock:
            if self._state != self.RUNNING:
                return
            self._state = self.FIRED
        shutdown_socket(self._conn)

    def finish(self) -> bool:
        with self._lock:
            fired = self._state == self.FIRED
            self._state = self.DONE
        self._workers.cancel(self._entry)
        self._conn = None
        return not fired
