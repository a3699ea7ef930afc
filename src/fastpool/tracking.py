"""Connections that remember whether a borrower changed their session characteristics.

Checking autocommit, isolation level, read-only and deferrable on every return costs four
attribute reads. psycopg2 changes them only through these setters and two methods, so the
connection classes the pool creates record a change in one flag instead: a clean return then
costs one slot read, and only a connection whose flag is set takes the reset path. A borrower
that changes them with SQL (``SET SESSION CHARACTERISTICS ...``) is not seen here: that is what
``reset="discard"`` is for.
"""

from __future__ import annotations

from typing import Any, Dict, Type

from psycopg2.extensions import connection as _pg_connection

DIRTY = "_fastpool_dirty"
#: where the core ring keeps the connection's slot number (see Core._core_set_slot_attr)
SLOT = "_fastpool_slot"
_TRACKED = ("autocommit", "isolation_level", "readonly", "deferrable")
_cache: Dict[type, type] = {}


def _tracked_property(name: str, base: type) -> property:
    descriptor = getattr(base, name)

    def set_and_mark(self: Any, value: Any) -> None:
        descriptor.__set__(self, value)
        self._fastpool_dirty = True

    return property(descriptor.__get__, set_and_mark, doc=descriptor.__doc__)


def tracked_class(base: Type[Any] = _pg_connection) -> Type[Any]:
    """A subclass of the psycopg2 connection class ``base`` that sets ``_fastpool_dirty``."""
    cls = _cache.get(base)
    if cls is not None:
        return cls
    if not (isinstance(base, type) and issubclass(base, _pg_connection)):
        raise TypeError("connection_factory must be a subclass of psycopg2.extensions.connection")

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, *args, **kwargs)
        self._fastpool_dirty = False

    def set_session(self: Any, *args: Any, **kwargs: Any) -> None:
        base.set_session(self, *args, **kwargs)
        self._fastpool_dirty = True

    def set_isolation_level(self: Any, level: Any) -> None:
        base.set_isolation_level(self, level)
        self._fastpool_dirty = True

    ns: Dict[str, Any] = {
        "__slots__": (DIRTY, SLOT),
        "__init__": __init__,
        "set_session": set_session,
        "set_isolation_level": set_isolation_level,
        "__module__": __name__,
        "__doc__": f"{base.__name__} that records session-characteristic changes (fastpool).",
    }
    for name in _TRACKED:
        ns[name] = _tracked_property(name, _pg_connection)
    cls = type(f"Tracked{base.__name__[0].upper()}{base.__name__[1:]}", (base,), ns)
    _cache[base] = cls
    return cls


def is_tracked(conn: Any) -> bool:
    return type(conn) in _cache.values()
