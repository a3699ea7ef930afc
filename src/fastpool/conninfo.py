"""What the pool knows about where to connect: validation, and keeping the password out of sight.

A password must never appear in a repr, a log line or an exception message. libpq's own error
messages can echo pieces of a malformed connection string, so every message the pool emits about
a connection goes through :func:`Scrubber.scrub`.

A *malformed* string is worse: a URL password with a raw ``%``, ``/`` or ``@``, or an unquoted
space in a ``key=value`` password, is split by libpq at the wrong place, so pieces of the
password land in the host, port, database name or an "invalid ..." message, where no scrubber
can recognise them. So a string that does not parse cleanly (:func:`conninfo_problem`) is never
echoed and never handed to libpq: the pool names the problem in words that quote none of it.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, Optional, Set, Union

from psycopg2.extensions import parse_dsn

ConnInfo = Union[str, Callable[[], str]]

MASK = "***"
_URL_PASSWORD = re.compile(r"(://[^:/?#@\s]*:)([^@/?#\s]*)(@)")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def mask_text(text: str) -> str:
    """Mask anything that looks like a password in a DSN-like text (URL or key=value)."""
    text = _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), text)
    return _KV_PASSWORD.sub(lambda m: m.group(1) + MASK, text)


#: libpq's parse errors (they quote the offending text) -> the same problem in our words.
_PARSE_ERRORS = (
    ("invalid percent-encoded token", "a '%' in the URL does not start a %XX escape (write a literal % as %25)"),
    ('missing "="', "a word without '=': a value containing a space must be quoted (password='a b') "
                    "or, in a URL, percent-encoded"),
    ("invalid connection option", "an unknown parameter name (or an unquoted space inside a value)"),
    ("unterminated quoted string", "a quoted value is not closed"),
    ("invalid URI query parameter", "a URL query parameter without '='"),
    ("extra key/value separator", "a URL query parameter with more than one '='"),
    ('matching "]"', "an IPv6 host in the URL has no closing ']'"),
)
_URL_PREFIXES = ("postgresql://", "postgres://")
_PORT = re.compile(r"[0-9,]*")


def conninfo_problem(conninfo: str) -> Optional[str]:
    """What is wrong with a libpq connection string, in words that quote none of it (it may hold
    a password); None if it parses cleanly."""
    if not conninfo:
        return None
    try:
        params = parse_dsn(conninfo)
    except Exception as exc:
        msg = str(exc)
        for marker, problem in _PARSE_ERRORS:
            if marker in msg:
                return problem
        return "libpq cannot parse it"
    if conninfo.lower().startswith(_URL_PREFIXES):
        # libpq takes the user info up to the first '@' (unless a '/' comes first); any other
        # raw '@' before the query means a user name or password with an unencoded '@' or '/'.
        rest = conninfo.split("://", 1)[1]
        cut = min((i for i in (rest.find("@"), rest.find("/")) if i >= 0), default=-1)
        after = rest[cut + 1:] if cut >= 0 and rest[cut] == "@" else rest
        if "@" in after.split("?", 1)[0]:
            return ("the URL's user name or password contains a raw '@' or '/' "
                    "(percent-encode them: @ as %40, / as %2F)")
    if not _PORT.fullmatch(params.get("port") or ""):
        return ("port is not a number (in a URL, a password containing '/' must be "
                "percent-encoded as %2F)")
    return None


def masked_conninfo(conninfo: str) -> str:
    """A libpq key=value rendering of ``conninfo`` with the password replaced by ``***``; for a
    string that does not parse cleanly, only what is wrong with it (never its text)."""
    if not conninfo:
        return ""
    problem = conninfo_problem(conninfo)
    if problem is not None:
        return f"<invalid conninfo: {problem}>"
    params = parse_dsn(conninfo)
    if "password" in params:
        params["password"] = MASK
    return " ".join(f"{k}={_quote(v)}" for k, v in params.items())


def describe(conninfo: Any, kwargs: Optional[Dict[str, Any]] = None) -> str:
    """conninfo plus the libpq parameters among ``kwargs``, password masked, for reprs/logs."""
    if callable(conninfo):
        text = "<callable>"
    else:
        text = masked_conninfo(conninfo)
    extra = []
    for k, v in (kwargs or {}).items():
        if isinstance(v, (str, int)) and not isinstance(v, bool):
            extra.append(f"{k}={MASK if k == 'password' else _quote(str(v))}")
    return " ".join(p for p in [text, *extra] if p)


def _quote(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def validate_conninfo(conninfo: Any) -> None:
    """Raise ValueError/TypeError (with no password in the message) for an unusable conninfo."""
    if callable(conninfo):
        return
    if not isinstance(conninfo, str):
        raise TypeError(f"conninfo must be a str or a callable returning one, not {type(conninfo).__name__}")
    problem = conninfo_problem(conninfo)
    if problem is not None:
        raise ValueError(f"invalid conninfo: {problem}")


class Scrubber:
    """Removes known secrets (passwords from the conninfo and the connect kwargs) from messages."""

    def __init__(self) -> None:
        self._secrets: Set[str] = set()

    def learn(self, conninfo: Optional[str], kwargs: Optional[Dict[str, Any]] = None) -> None:
        if conninfo and conninfo_problem(conninfo) is None:  # a bad one is never used or shown
            pw = parse_dsn(conninfo).get("password")
            if pw:
                self._secrets.add(pw)
        if kwargs and kwargs.get("password"):
            self._secrets.add(str(kwargs["password"]))

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return mask_text(text)
