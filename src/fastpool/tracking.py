"""Connections that remember what a borrower changed, so that a clean return costs one slot read.

One attribute, ``_fastpool_dirty``, holds two bits:

* ``CHARACTERISTICS``: autocommit, isolation level, read only, deferrable or ``cursor_factory``
  was set. psycopg2 changes them only through these setters and two methods, which the
  connection class overrides; the reset restores them client-side (no round trip unless psycopg2
  needs one).
* ``SESSION``: something that outlives the transaction may have changed on the server (``SET``,
  ``SET ROLE``, ``set_config``, ``PREPARE``, ``LISTEN``, temp objects, session advisory locks,
  ``WITH HOLD`` cursors, ...; the rule is :mod:`fastpool.session`) or the client encoding was
  changed. The connection's ``cursor()`` hands out cursors of a subclass of whatever cursor
  class was asked for (``cursor_factory`` per call or on the connection, named cursors
  included) whose ``execute``/``executemany``/``callproc`` set the bit before running a
  statement that qualifies. With ``reset="auto"`` such a connection is reset on return.
  Their ``execute``, run for every statement, comes from :mod:`fastpool._track` (compiled where
  a C compiler was at hand, the same source interpreted otherwise).

A connection whose attribute is 0 goes straight back to the pool.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Dict, Optional, Tuple, Type

from psycopg2 import sql as _sql
from psycopg2.extensions import connection as _pg_connection, cursor as _pg_cursor

from . import _track
from .session import _seen, callproc_changes_session, changes_session

DIRTY = "_fastpool_dirty"
#: where the core ring keeps the connection's slot number (see Core._core_set_slot_attr)
SLOT = "_fastpool_slot"
CLEAN = 0
CHARACTERISTICS = 1
SESSION = 2
_TRACKED = ("autocommit", "isolation_level", "readonly", "deferrable", "cursor_factory")
_cache: Dict[Tuple[type, bool], type] = {}
_cursor_cache: Dict[type, type] = {}
# psycopg2's own descriptor: dbapi's cursors override ``connection`` to return their wrapper.
_cursor_connection = _pg_cursor.__dict__["connection"].__get__


def _tracked_property(name: str, base: type) -> property:
    descriptor = getattr(base, name)

    def set_and_mark(self: Any, value: Any) -> None:
        descriptor.__set__(self, value)
        self._fastpool_dirty |= CHARACTERISTICS

    return property(descriptor.__get__, set_and_mark, doc=descriptor.__doc__)


def _changes(cur: Any, conn: Any, query: Any) -> bool:
    """Can running ``query`` on ``cur`` change session state? (Any query type, named cursors.)"""
    if cur.name is not None:
        # A named cursor runs DECLARE itself; only WITH HOLD outlives the transaction.
        return bool(cur.withhold)
    if isinstance(query, str):
        return changes_session(query)
    if isinstance(query, bytes):
        return changes_session(query.decode("latin-1"))
    if isinstance(query, _sql.Composable):
        return changes_session(query.as_string(conn))
    return False  # psycopg2 rejects it


def flag_session(cur: Any, query: Any) -> None:
    """Mark ``cur``'s connection SESSION-dirty if running ``query`` on it can change session
    state (the part of a tracked ``execute`` that :mod:`fastpool._track` does not shortcut)."""
    conn = _cursor_connection(cur)
    if not conn._fastpool_dirty & SESSION and _changes(cur, conn, query):
        conn._fastpool_dirty |= SESSION


def session_cursor_class(base: Type[Any]) -> Type[Any]:
    """A subclass of the psycopg2 cursor class ``base`` that marks its connection SESSION-dirty
    before a statement that can change session state."""
    cls = _cursor_cache.get(base)
    if cls is None:
        cls = _build_cursor_class(base, _track)
        _cursor_cache[base] = cls
        _cursor_cache[cls] = cls  # asked for by name (cur.__class__): already tracked
    return cls


def _build_cursor_class(base: Type[Any], track: ModuleType) -> Type[Any]:
    """``track``: :mod:`fastpool._track` as imported (compiled where it was built); the tests
    also pass the same source run by the interpreter, the fallback where it was not."""
    # The common case (an unnamed cursor, a str seen before as harmless) never leaves track's
    # execute; flag_session decides everything else.
    execute = track.tracked_execute(base.execute, _seen, flag_session)

    def executemany(self: Any, query: Any, vars_list: Any) -> Any:
        flag_session(self, query)
        return base.executemany(self, query, vars_list)

    def callproc(self: Any, procname: Any, *args: Any, **kwargs: Any) -> Any:
        conn = _cursor_connection(self)
        if callproc_changes_session(procname):
            conn._fastpool_dirty |= SESSION
        return base.callproc(self, procname, *args, **kwargs)

    return type(
        f"Tracked{base.__name__[0].upper()}{base.__name__[1:]}",
        (base,),
        {
            "__slots__": (),  # no instance dict: creating a cursor stays as cheap as the base's
            "execute": execute,
            "executemany": executemany,
            "callproc": callproc,
            "__module__": __name__,
            "__doc__": f"{base.__name__} that flags session-changing statements (fastpool).",
        },
    )


def tracked_class(base: Type[Any] = _pg_connection, session: bool = True) -> Type[Any]:
    """A subclass of the psycopg2 connection class ``base`` that sets ``_fastpool_dirty``.
    ``session``: also hand out cursors that flag session-changing statements."""
    cls = _cache.get((base, session))
    if cls is not None:
        return cls
    if not (isinstance(base, type) and issubclass(base, _pg_connection)):
        raise TypeError("connection_factory must be a subclass of psycopg2.extensions.connection")

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, *args, **kwargs)
        self._fastpool_dirty = CLEAN

    def set_session(self: Any, *args: Any, **kwargs: Any) -> None:
        base.set_session(self, *args, **kwargs)
        self._fastpool_dirty |= CHARACTERISTICS

    def set_isolation_level(self: Any, level: Any) -> None:
        base.set_isolation_level(self, level)
        self._fastpool_dirty |= CHARACTERISTICS

    def set_client_encoding(self: Any, encoding: Any) -> None:
        # Marked even if it fails half-way: the reset then puts both sides back in step.
        self._fastpool_dirty |= SESSION
        base.set_client_encoding(self, encoding)

    ns: Dict[str, Any] = {
        "__slots__": (DIRTY, SLOT),
        "__init__": __init__,
        "set_session": set_session,
        "set_isolation_level": set_isolation_level,
        "set_client_encoding": set_client_encoding,
        "__module__": __name__,
        "__doc__": f"{base.__name__} that records session changes (fastpool).",
    }
    if session:
        base_cursor = base.cursor
        get_tracked = _cursor_cache.get

        def cursor(
            self: Any, name: Optional[str] = None, cursor_factory: Any = None,
            withhold: bool = False, scrollable: Optional[bool] = None,
        ) -> Any:
            factory = cursor_factory or self.cursor_factory or _pg_cursor
            tracked = get_tracked(factory) if isinstance(factory, type) else None
            if tracked is None:
                if isinstance(factory, type) and issubclass(factory, _pg_cursor):
                    tracked = session_cursor_class(factory)
                else:
                    # A factory function: its cursors cannot be watched, so assume the worst.
                    self._fastpool_dirty |= SESSION
                    tracked = factory
            if withhold or scrollable is not None:
                return base_cursor(self, name, tracked, withhold, scrollable)
            return base_cursor(self, name, tracked)  # fewer arguments for psycopg2 to parse

        ns["cursor"] = cursor
    for name in _TRACKED:
        ns[name] = _tracked_property(name, _pg_connection)
    prefix = "Session" if session else ""
    cls = type(f"{prefix}Tracked{base.__name__[0].upper()}{base.__name__[1:]}", (base,), ns)
    _cache[(base, session)] = cls
    return cls


def is_tracked(conn: Any) -> bool:
    return type(conn) in _cache.values()


def tracks_session(conn: Any) -> bool:
    """Do ``conn``'s cursors flag session-changing statements?"""
    for (_, session), cls in _cache.items():
        if type(conn) is cls:
            return session
    return False
