"""What the pool knows about where to connect: validation, and keeping the password out of sight.

A password must never appear in a repr, a log line or an exception message. libpq's own error
messages can echo pieces of a malformed connection string, so every message the pool emits about
a connection goes through :func:`Scrubber.scrub`.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, Iterable, Optional, Union

from psycopg2.extensions import parse_dsn

ConnInfo = Union[str, Callable[[], str]]

MASK = "***"
_URL_PASSWORD = re.compile(r"(://[^:/?#@\s]*:)([^@/?#\s]*)(@)")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def mask_text(text: str) -> str:
    """Mask anything that looks like a password in a DSN-like text (URL or key=value)."""
    text = _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), text)
    return _KV_PASSWORD.sub(lambda m: m.group(1) + MASK, text)


def masked_conninfo(conninfo: str) -> str:
    """A libpq key=value rendering of ``conninfo`` with the password replaced by ``***``."""
    if not conninfo:
        return ""
    try:
        params = parse_dsn(conninfo)
    except Exception:
        return mask_text(conninfo)
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
    if conninfo:
        try:
            parse_dsn(conninfo)
        except Exception as exc:
            raise ValueError(f"invalid conninfo: {mask_text(str(exc)).strip()}") from None


class Scrubber:
    """Removes known secrets (passwords from the conninfo and the connect kwargs) from messages."""

    def __init__(self) -> None:
        self._secrets: set = set()

    def learn(self, conninfo: Optional[str], kwargs: Optional[Dict[str, Any]] = None) -> None:
        if conninfo:
            try:
                pw = parse_dsn(conninfo).get("password")
            except Exception:
                pw = None
            if pw:
                self._secrets.add(pw)
        if kwargs and kwargs.get("password"):
            self._secrets.add(str(kwargs["password"]))

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return mask_text(text)

    def scrub_all(self, texts: Iterable[str]) -> list:
        return [self.scrub(t) for t in texts]
