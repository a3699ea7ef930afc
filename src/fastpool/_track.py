"""The return tracking's per-statement hot path: the ``execute`` of fastpool's cursors.

Every statement a pool connection runs goes through here (see :mod:`fastpool.tracking`), so
setup.py compiles this file with Cython where a compiler is at hand: a compiled function is
called without a Python frame. Without a compiler this very file is imported as plain Python:
one source, the same behaviour (``COMPILED`` says which one runs).

Kept minimal on purpose: only what runs for every statement is here; everything that needs a
decision (a new statement text, bytes or ``Composable`` queries, named cursors) is the
``flag`` callback's, in :mod:`fastpool.tracking`.
"""

from __future__ import annotations

from types import FunctionType
from typing import Any, Callable, Dict


def _compiled() -> bool:
    # Compiled, a def is a Cython function, not a Python one (and Cython, a build requirement
    # only, need not be importable here).
    return not isinstance(_compiled, FunctionType)


#: True in the extension Cython built from this file, False where the interpreter runs it.
COMPILED = _compiled()


def tracked_execute(
    base_execute: Callable[..., Any], seen: Dict[str, bool], flag: Callable[[Any, Any], None],
) -> Callable[..., Any]:
    """An ``execute`` for a cursor class: ``flag(cursor, query)`` decides, before the statement
    runs, whatever the shortcut cannot; then ``base_execute`` runs it.

    The shortcut is the common case: an unnamed cursor running a ``str`` that ``seen`` (the
    classifier's cache, :data:`fastpool.session._seen`, cleared in place but never rebound)
    already answered as harmless. Everything else, including a text seen as session-changing,
    goes to ``flag``: a ``True`` needs the connection, which costs a descriptor call that the
    common case does without.
    """
    seen_get = seen.get

    def execute(self: Any, query: Any, vars: Any = None) -> Any:
        # Flagged before running: a statement that fails half-way may still have changed something.
        if type(query) is not str or seen_get(query) is not False or self.name is not None:
            flag(self, query)
        if vars is None:
            return base_execute(self, query)  # fewer arguments for psycopg2 to parse
        return base_execute(self, query, vars)

    return execute
