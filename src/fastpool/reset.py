"""What a returned connection must look like before the next borrower gets it.

On return, in every ``reset`` mode: a connection that is closed, broken, busy (a query or a COPY
in progress) or whose client and server disagree about the transaction is never handed on as it
is; an open or failed transaction is rolled back (it is never inherited); psycopg2's idea of the
transaction is brought back in step with the server's (``cur.execute("COMMIT")`` ends the
transaction on the server only); the borrower's ``notices`` and ``notifies`` are cleared.

Then, by mode:

* ``"auto"`` (default): the client-side settings psycopg2 keeps (autocommit, isolation level,
  read only, deferrable, ``cursor_factory``, client encoding) are restored; a connection whose
  cursors ran something that can change session state (see :mod:`fastpool.session`) gets
  ``DISCARD ALL``, its client encoding resynced and the pool's ``configure`` run again.
* ``"discard"``: the same, with ``DISCARD ALL`` on every return.
* ``"rollback"``: client-side settings restored; server session state is left as it is.
* a callable: client-side settings restored, then ``reset(conn)``; if it leaves a transaction
  open the connection is discarded.
* ``None``: nothing beyond the first paragraph.

The clean case costs nothing extra: the core compares a handful of attributes ("probes") and
puts the connection straight back; only a connection that differs takes the slow path here.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Tuple

from psycopg2.extensions import STATUS_READY

from .tracking import CLEAN, DIRTY, SESSION

logger = logging.getLogger("fastpool")

# psycopg2.extensions.TRANSACTION_STATUS_*; spelled out so the policy can reason about them.
IDLE, ACTIVE, INTRANS, INERROR, UNKNOWN = 0, 1, 2, 3, 4

#: restored with setattr when they differ from the pool's first connection
SESSION_ATTRS = ("autocommit", "isolation_level", "readonly", "deferrable", "cursor_factory")
ENCODING = "encoding"
MODES = ("auto", "rollback", "discard")

Probe = Tuple[str, Any, bool]


def capture(conn: Any) -> Dict[str, Any]:
    """The client-side settings of a fresh (configured) connection, those it exposes."""
    out = {}
    for name in SESSION_ATTRS + (ENCODING,):
        try:
            out[name] = getattr(conn, name)
        except Exception:
            pass
    return out


def probes_for(conn: Any, defaults: Dict[str, Any], restore: bool) -> Tuple[Probe, ...]:
    """Attribute tests that all hold for a connection that can go back as it is.

    ``restore``: client-side settings must match ``defaults`` (one flag read for the connection
    classes of :mod:`fastpool.tracking`, one read per attribute otherwise).
    """
    # Always, even if this (first) connection lacks it: the probes serve every later
    # connection, and one of those may be mid-transaction. On a connection without it the
    # probe fails, so its returns take the slow path (reset_connection). Also covers
    # "closed": psycopg2 reports UNKNOWN for a closed connection.
    probes: List[Tuple[str, Any, bool]] = [("get_transaction_status", IDLE, True)]
    if hasattr(conn, "status"):
        # psycopg2's own view: after cur.execute("COMMIT") the server is idle but psycopg2
        # still says BEGIN, and would send the next borrower's statements without a BEGIN.
        probes.append(("status", STATUS_READY, False))
    if restore:
        if hasattr(conn, DIRTY):
            probes.append((DIRTY, CLEAN, False))
        else:
            for name, value in defaults.items():
                probes.append((name, value, False))
    # Messages for the borrower that received them; a list compared with [] is a length test.
    for name in ("notices", "notifies"):
        if isinstance(getattr(conn, name, None), list):
            probes.append((name, [], False))
    return tuple(probes)


def check_mode(reset: Any) -> None:
    if reset not in (None,) + MODES and not callable(reset):
        raise ValueError(
            f"reset must be 'auto', 'rollback', 'discard', None or a callable, not {reset!r}"
        )


def reset_connection(
    conn: Any,
    defaults: Dict[str, Any],
    mode: Any,
    pool_name: str,
    configure: Optional[Callable[[Any], None]] = None,
) -> Optional[str]:
    """Make ``conn`` fit for the next borrower. Returns None when it is, else why it must be
    discarded (for the log: never contains connection parameters)."""
    if getattr(conn, "closed", False):
        return "it was closed"
    status_of: Optional[Callable[[], int]] = getattr(conn, "get_transaction_status", None)
    status = status_of() if status_of else IDLE
    if status == ACTIVE:
        # A query still running (returned from another thread mid-query) or a COPY not finished.
        return "it was returned with a query or COPY in progress"
    if status == UNKNOWN:
        return "its link to the server is broken"
    if status in (INTRANS, INERROR):
        logger.warning("pool %r: rolling back a connection returned inside a transaction", pool_name)
        if getattr(conn, "autocommit", False):
            # A transaction opened with SQL (BEGIN) on an autocommit connection: psycopg2's
            # rollback() is a no-op in autocommit mode, so say ROLLBACK ourselves.
            _execute(conn, "ROLLBACK")
        else:
            conn.rollback()
    elif getattr(conn, "status", STATUS_READY) != STATUS_READY:
        # The transaction ended on the server without psycopg2 knowing (COMMIT/ROLLBACK/END sent
        # as SQL, a failed tpc_prepare): it would not send BEGIN before the next borrower's
        # statements, so each would commit on its own. rollback() makes psycopg2 say ROLLBACK
        # (a no-op on the server) and forget the transaction.
        logger.warning(
            "pool %r: a connection was returned with its transaction ended by SQL "
            "(COMMIT/ROLLBACK sent with execute()); resynchronising psycopg2", pool_name,
        )
        try:
            conn.rollback()
        except Exception:
            pass  # e.g. inside a two-phase transaction: judged below
        if getattr(conn, "status", STATUS_READY) != STATUS_READY:
            return "psycopg2 and the server disagree about its transaction"
    dirty = getattr(conn, DIRTY, None)
    if mode is not None:
        for name in SESSION_ATTRS:
            if name in defaults and getattr(conn, name) != defaults[name]:
                setattr(conn, name, defaults[name])
    if mode == "discard" or (mode == "auto" and (dirty is None or dirty & SESSION)):
        discard_all(conn)
        why = _resync_encoding(conn, defaults)
        if why:
            return why
        if configure is not None:
            configure(conn)
            if status_of and status_of() != IDLE:
                return "configure() left it inside a transaction"
    elif callable(mode):
        mode(conn)
        if status_of and status_of() != IDLE:
            # psycopg_pool discards such a connection too (the caller logs it): rolling back
            # behind the function's back would hide its bug.
            return "the reset function left a transaction open"
    if mode is not None:
        why = _resync_encoding(conn, defaults)
        if why:
            return why
    if getattr(conn, "closed", False):
        return "it was closed during the reset"
    if status_of and status_of() != IDLE:
        return "it is still inside a transaction after the reset"
    if getattr(conn, "status", STATUS_READY) != STATUS_READY:
        return "psycopg2 and the server disagree about its transaction"
    clear_messages(conn)
    if dirty is not None:
        setattr(conn, DIRTY, CLEAN)
    return None


def _resync_encoding(conn: Any, defaults: Dict[str, Any]) -> Optional[str]:
    """Client and server both on the pool's client encoding. ``DISCARD ALL`` puts the server
    back to the encoding the session started with while psycopg2 keeps decoding with the one
    it was last told: text would be misread without an error."""
    wanted = defaults.get(ENCODING)
    if wanted is None:
        return None
    if getattr(conn, ENCODING, wanted) != wanted:
        conn.set_client_encoding(wanted)
    get = getattr(conn, "get_parameter_status", None)
    server = get("client_encoding") if get is not None else None
    if server is not None and server != wanted:
        return f"its client encoding is {server}, not {wanted}"
    return None


def clear_messages(conn: Any) -> None:
    """Drop notices and notifications received by the previous borrower."""
    for name in ("notices", "notifies"):
        box = getattr(conn, name, None)
        if box:
            try:
                box.clear()
            except Exception:
                setattr(conn, name, [])


def _execute(conn: Any, sql: str) -> None:
    cur = conn.cursor()
    try:
        cur.execute(sql)
    finally:
        cur.close()


def discard_all(conn: Any) -> None:
    """``DISCARD ALL`` (it cannot run inside a transaction block, hence autocommit)."""
    autocommit = getattr(conn, "autocommit", True)
    if not autocommit:
        conn.autocommit = True
    try:
        _execute(conn, "DISCARD ALL")
    finally:
        if not autocommit and not getattr(conn, "closed", False):  # a cancel mid-query closes it
            conn.autocommit = False
