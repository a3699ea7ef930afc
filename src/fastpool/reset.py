"""What a returned connection must look like before the next borrower gets it.

On return: an open or failed transaction is rolled back (it is never inherited); the session
characteristics psycopg2 manages client-side (autocommit, isolation level, read only,
deferrable) are restored to what the connection had when the pool made it; with
``reset="discard"`` the server session is wiped with ``DISCARD ALL`` (SET, SET ROLE, temp tables,
prepared statements, advisory locks, LISTEN). A connection that is closed, broken, busy or in an
unknown state is never reused.

The clean case costs nothing extra: the core compares a handful of attributes ("probes") and
puts the connection straight back; only a connection that differs takes the slow path here.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional, Tuple

from .tracking import DIRTY

logger = logging.getLogger("fastpool")

# psycopg2.extensions.TRANSACTION_STATUS_*; spelled out so the policy can reason about them.
IDLE, ACTIVE, INTRANS, INERROR, UNKNOWN = 0, 1, 2, 3, 4

SESSION_ATTRS = ("autocommit", "isolation_level", "readonly", "deferrable")

Probe = Tuple[str, Any, bool]


def capture(conn: Any) -> Dict[str, Any]:
    """The session characteristics of a fresh connection (those it exposes)."""
    out = {}
    for name in SESSION_ATTRS:
        try:
            out[name] = getattr(conn, name)
        except Exception:
            pass
    return out


def probes_for(conn: Any, defaults: Dict[str, Any], restore: bool) -> Tuple[Probe, ...]:
    """Attribute tests that all hold for a connection that can go back as it is.

    ``restore``: session characteristics must match ``defaults`` (one flag read for the
    connection classes of :mod:`fastpool.tracking`, one read per attribute otherwise).
    """
    # Always, even if this (first) connection lacks it: the probes serve every later
    # connection, and one of those may be mid-transaction. On a connection without it the
    # probe fails, so its returns take the slow path (reset_connection). Also covers
    # "closed": psycopg2 reports UNKNOWN for a closed connection.
    probes = [("get_transaction_status", IDLE, True)]
    if restore:
        if hasattr(conn, DIRTY):
            probes.append((DIRTY, False, False))
        else:
            for name, value in defaults.items():
                probes.append((name, value, False))
    return tuple(probes)


def check_mode(reset: Any) -> None:
    if reset not in (None, "rollback", "discard") and not callable(reset):
        raise ValueError(f"reset must be 'rollback', 'discard', None or a callable, not {reset!r}")


def reset_connection(conn: Any, defaults: Dict[str, Any], mode: Any, pool_name: str) -> bool:
    """Make ``conn`` fit for the next borrower. False: it must be closed instead."""
    if getattr(conn, "closed", False):
        return False
    status_of: Optional[Callable[[], int]] = getattr(conn, "get_transaction_status", None)
    status = status_of() if status_of else IDLE
    if status in (ACTIVE, UNKNOWN):
        # A query still running (returned from another thread mid-query) or a lost link.
        return False
    if status in (INTRANS, INERROR):
        logger.warning("pool %r: rolling back a connection returned inside a transaction", pool_name)
        if getattr(conn, "autocommit", False):
            # A transaction opened with SQL (BEGIN) on an autocommit connection: psycopg2's
            # rollback() is a no-op in autocommit mode, so say ROLLBACK ourselves.
            cur = conn.cursor()
            try:
                cur.execute("ROLLBACK")
            finally:
                cur.close()
        else:
            conn.rollback()
    if mode is not None:
        for name, value in defaults.items():
            if getattr(conn, name) != value:
                setattr(conn, name, value)
    if mode == "discard":
        discard_all(conn)
    elif callable(mode):
        mode(conn)
        if status_of and status_of() in (INTRANS, INERROR):
            conn.rollback()
    if getattr(conn, "closed", False):
        return False
    if hasattr(conn, DIRTY):
        setattr(conn, DIRTY, False)  # restored above (or not tracked with reset=None)
    return status_of() == IDLE if status_of else True


def discard_all(conn: Any) -> None:
    """``DISCARD ALL`` (it cannot run inside a transaction block, hence autocommit)."""
    autocommit = getattr(conn, "autocommit", True)
    if not autocommit:
        conn.autocommit = True
    try:
        cur = conn.cursor()
        try:
            cur.execute("DISCARD ALL")
        finally:
            cur.close()
    finally:
        if not autocommit and not getattr(conn, "closed", False):  # a cancel mid-query closes it
            conn.autocommit = False
