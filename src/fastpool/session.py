"""Which SQL can change a connection's *session* state (what outlives the transaction).

The pool's own cursors (see :mod:`fastpool.tracking`) ask :func:`changes_session` before each
statement; a ``True`` marks the connection so that it is reset (``DISCARD ALL``, client state
resynced, ``configure`` re-run) when it is returned. The rule, applied to every statement of the
string outside comments, string literals, quoted identifiers and dollar-quoted bodies:

* a statement that starts with ``SET`` (except ``SET LOCAL``, ``SET TRANSACTION``,
  ``SET CONSTRAINTS``, which end with the transaction), ``RESET``, ``PREPARE``, ``DEALLOCATE``,
  ``LISTEN``, ``UNLISTEN``, ``DISCARD``, ``LOAD`` or ``DO`` (an anonymous block can run any of
  these);
* ``DECLARE ... WITH HOLD`` (a cursor that survives its transaction);
* ``CREATE ... TEMP``/``TEMPORARY``, ``... INTO TEMP``, or any mention of ``pg_temp``;
* a call of ``set_config``, ``pg_advisory_lock``, ``pg_advisory_lock_shared``,
  ``pg_try_advisory_lock`` or ``pg_try_advisory_lock_shared`` (session-level; the ``_xact_``
  variants end with the transaction).

It errs on the safe side: a false positive costs one reset round trip, a false negative would
leak state. What it cannot see: a server-side function or procedure that changes session state
itself (``SELECT my_func()`` that calls ``set_config(..., false)``, ``CALL``), and SQL sent
without the pool's cursors (``copy_expert``, another cursor class made outside the connection).
``reset="discard"`` resets on every return for those cases.

A statement text seen before is answered from a bounded dict. Otherwise the clean path is a
lower-casing and a few substring tests: most statements contain none of the
candidate words. Others are split on ``;`` and whitespace, or tokenized when they contain
literals, quoted identifiers or comments.
"""

from __future__ import annotations

import re
from typing import Any, Dict

#: session-changing statements, by their leading keyword
_LEADING = frozenset(
    ("RESET", "PREPARE", "DEALLOCATE", "LISTEN", "UNLISTEN", "DISCARD", "LOAD", "DO")
)
#: after SET: these forms only last until the end of the transaction
_SET_TRANSACTIONAL = frozenset(("LOCAL", "TRANSACTION", "CONSTRAINTS"))
#: function names whose call changes session state
_FUNCTIONS = frozenset(
    (
        "SET_CONFIG",
        "PG_ADVISORY_LOCK",
        "PG_ADVISORY_LOCK_SHARED",
        "PG_TRY_ADVISORY_LOCK",
        "PG_TRY_ADVISORY_LOCK_SHARED",
    )
)
_TEMP = frozenset(("TEMP", "TEMPORARY"))

_DO = re.compile(r"\bdo\b")
_TOKEN = re.compile(
    r"""
      (?P<skip>
          --[^\n]*                            # line comment
        | /\*.*?\*/                           # block comment (nesting errs towards "dirty")
        | [eE]'(?:[^'\\]|\\.|'')*'            # E'...' with backslash escapes
        | '(?:[^']|'')*'                      # '...'
        | "(?:[^"]|"")*"                      # "quoted identifier"
        | \$(?P<tag>[A-Za-z_][A-Za-z_0-9]*)?\$.*?\$(?P=tag)\$   # $tag$ ... $tag$
      )
    | (?P<semi>;)
    | (?P<word>[A-Za-z_][A-Za-z_0-9$]*)
    """,
    re.VERBOSE | re.DOTALL,
)


#: statements already classified. Applications run the same statement texts again and again
#: (parameters travel apart), so most lookups are one hash and one compare. Bounded: cleared
#: when full; long texts are not kept.
_seen: Dict[str, bool] = {}
_SEEN_MAX = 2048
_SEEN_LONGEST = 2000


def changes_session(sql: str) -> bool:
    """True if executing ``sql`` can leave state in the session (see the module docstring)."""
    answer = _seen.get(sql)
    if answer is None:
        answer = _classify(sql)
        if len(sql) <= _SEEN_LONGEST:
            if len(_seen) >= _SEEN_MAX:
                _seen.clear()
            _seen[sql] = answer
    return answer


def _classify(sql: str) -> bool:
    s = sql.lower()
    # Without one of these substrings no statement qualifies: a few C-speed scans decide most
    # statements ("set" also finds reset, set_config, offset and UPDATE ... SET).
    if not (
        "set" in s or "temp" in s or "prepare" in s or "dealloc" in s or "listen" in s
        or "discard" in s or "load" in s or "declare" in s or "advisory" in s
        or ("do" in s and _DO.search(s) is not None)
    ):
        return False
    if "'" in s or '"' in s or "$" in s or "--" in s or "/*" in s:
        return _scan(sql)  # literals, quoted names or comments: tokenize
    return _scan_plain(s)


def _scan_plain(s: str) -> bool:
    """:func:`_scan` for lower-cased SQL without literals, quoted identifiers or comments."""
    if "set_config" in s or "advisory_lock" in s or "pg_temp" in s:
        return True
    for statement in s.split(";"):
        words = statement.split()
        if not words:
            continue
        first = words[0]
        if first == "set":
            if len(words) < 2 or words[1].upper() not in _SET_TRANSACTIONAL:
                return True
        elif first.upper() in _LEADING:
            return True
        elif first == "declare":
            if "hold" in words:
                return True
        elif "temp" in words or "temporary" in words:
            if first == "create":
                return True
            for i, w in enumerate(words):
                if (w == "temp" or w == "temporary") and i and words[i - 1] == "into":
                    return True
    return False


def _scan(sql: str) -> bool:
    first = None  # leading keyword of the current statement
    second = None
    prev = None
    hold = False
    temp = False
    for m in _TOKEN.finditer(sql):
        word = m.group("word")
        if word is None:
            if m.group("semi") is not None:
                if _statement_dirty(first, second, hold, temp):
                    return True
                first = second = prev = None
                hold = temp = False
            continue
        w = word.upper()
        if w in _FUNCTIONS or w == "PG_TEMP":
            return True
        if first is None:
            first = w
        elif second is None:
            second = w
        if w == "HOLD":
            hold = True
        elif w in _TEMP and (first == "CREATE" or prev == "INTO"):
            temp = True
        prev = w
    return _statement_dirty(first, second, hold, temp)


def _statement_dirty(first: Any, second: Any, hold: bool, temp: bool) -> bool:
    if first is None:
        return False
    if first == "SET":
        return second not in _SET_TRANSACTIONAL
    if first in _LEADING:
        return True
    if first == "DECLARE":
        return hold
    return temp


def callproc_changes_session(procname: Any) -> bool:
    """``cursor.callproc(procname)``: a session-changing function called by name."""
    if not isinstance(procname, str):
        return True
    return procname.rsplit(".", 1)[-1].strip('"').upper() in _FUNCTIONS
