"""When a ``DatabaseWrapper`` of ``django_fastpool`` holds its pooled connection.

``OPTIONS["pool"]["hold"]``:

``"transaction"`` (the default)
    The connection goes back to the pool as soon as the wrapper is *between transactions*:
    autocommit is on, no ``atomic()`` block is open, the server reports no open transaction
    (a raw ``BEGIN`` counts), and no cursor made by ``connection.cursor()`` (or by the ORM) is
    still open -- server-side cursors of ``QuerySet.iterator()`` included. The wrapper looks at
    this at the moments a transaction can have ended: when such a cursor is closed, and when
    autocommit is switched back on (the end of an outermost ``atomic()`` block, after its
    ``on_commit`` callbacks ran). The next query takes a connection again (Django's own
    ``connect()``: ``connection_created`` fires, as with Django's native pool).

    This is PgBouncer's transaction pooling, inside the process. It is what makes a thread
    that is done with the database -- an executor thread of ``sync_to_async`` or of the
    application's own ``ThreadPoolExecutor``, a long-lived background thread -- hold nothing:
    Django only gives connections back at request boundaries, and such threads have none.

``"request"``
    The connection is held from the first query until Django closes it
    (``close_old_connections`` at the start and end of each request, ``connection.close()``,
    ``connections.close_all()``), or the wrapper is garbage-collected. Session state (``SET``,
    temp tables, session advisory locks) then lasts for the request. A thread that queries
    outside a request keeps its connection until it closes it itself.

Why these release points and not after every ``execute()``: a cursor can run several
statements and is bound to one physical connection, so the connection must stay with the
wrapper while any cursor of it is open. ``__del__`` of a cursor nobody closed only forgets it
(it never gives the connection back: it can run inside the garbage collector, in the middle of
another operation of the same wrapper); the next release point or the end of the request does.
"""

from __future__ import annotations

from typing import Any, Optional

from django.core.exceptions import ImproperlyConfigured

TRANSACTION = "transaction"
REQUEST = "request"
HOLD_MODES = (TRANSACTION, REQUEST)

_IDLE = 0  # psycopg2.extensions.TRANSACTION_STATUS_IDLE


def hold_mode(pool_option: Any, alias: str) -> str:
    """The validated ``OPTIONS["pool"]["hold"]`` of ``alias`` (``pool_option`` is ``OPTIONS["pool"]``)."""
    value = pool_option.get("hold", TRANSACTION) if isinstance(pool_option, dict) else TRANSACTION
    if value not in HOLD_MODES:
        raise ImproperlyConfigured(
            f"database {alias!r}: OPTIONS['pool']['hold'] must be 'transaction' or 'request', "
            f"not {value!r}"
        )
    return value


def between_transactions(wrapper: Any) -> bool:
    """True if ``wrapper``'s connection can go back to the pool now without anyone noticing
    (the rule of ``hold="transaction"``, see the module docstring)."""
    conn = wrapper.connection
    return (
        conn is not None
        and wrapper._fastpool_cursors == 0
        and wrapper.autocommit
        and not wrapper.in_atomic_block
        and conn.get_transaction_status() == _IDLE
    )


class Counted:
    """A Django cursor wrapper that tells its ``DatabaseWrapper`` when it is closed.

    It remembers the physical connection it was made on: a cursor that outlived its
    connection (the wrapper was closed meanwhile) must not count against the next one.
    Mixed into the backend's cursor wrapper classes in base.py, ahead of them in the MRO (the
    PostgreSQL backend's debug wrapper has its own ``copy_expert``/``copy_to`` logging).
    """

    cursor: Any
    db: Any
    _fastpool_conn: Optional[Any] = None

    def _fastpool_track(self) -> None:
        self._fastpool_conn = self.db.connection
        self.db._fastpool_cursors += 1

    def _fastpool_forget(self) -> bool:
        conn, self._fastpool_conn = self._fastpool_conn, None
        if conn is None or conn is not self.db.connection:
            return False
        self.db._fastpool_cursors -= 1
        return True

    def close(self) -> None:
        try:
            self.cursor.close()
        finally:
            if self._fastpool_forget():
                self.db._fastpool_release_if_idle()

    def __del__(self) -> None:
        # Never give the connection back from here (see the module docstring): only forget.
        try:
            self._fastpool_forget()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

