"""Which failed connection attempts no retry can fix.

A pool retries a failing server with backoff (it may be restarting, failing over, out of
connection slots). Some refusals are configuration errors instead -- an unknown role or
database, a wrong password, no ``pg_hba.conf`` entry -- and retrying them only turns a clear
error into a ``PoolTimeout`` much later, with a warning per attempt. Those are SQLSTATE class 28
(invalid authorization specification) and 3D (invalid catalog name).

psycopg2 reports no SQLSTATE for a failed *connect* (``pgcode`` is ``None``: libpq has no result
object for it), so the server's message is matched too. Servers send these messages in their
``lc_messages`` language; a message in another language is not recognised and stays transient
(retried, as before) -- the safe side.
"""

from __future__ import annotations

import re
from typing import Optional

#: SQLSTATE classes whose errors a retry cannot fix.
PERMANENT_CLASSES = ("28", "3D")

#: (SQLSTATE, pattern) for the server's and libpq's texts of those errors at connect time.
_MESSAGES = (
    ("28P01", re.compile(r"password authentication failed for user")),
    ("28P01", re.compile(r"fe_sendauth: no password supplied")),
    ("28000", re.compile(r'role ".*" does not exist')),
    ("28000", re.compile(r'role ".*" is not permitted to log in')),
    ("28000", re.compile(r"no pg_hba\.conf entry for")),
    ("28000", re.compile(r"pg_hba\.conf rejects connection for")),
    ("28000", re.compile(r"\b(Peer|Ident|GSSAPI|SSPI|PAM|LDAP|RADIUS|certificate) authentication failed for user")),
    ("3D000", re.compile(r'database ".*" does not exist')),
)


def permanent_sqlstate(exc: BaseException) -> Optional[str]:
    """The SQLSTATE of ``exc`` if it is a connection refusal no retry can fix, else ``None``."""
    code = getattr(exc, "pgcode", None)
    if isinstance(code, str) and code:
        return code if code[:2] in PERMANENT_CLASSES else None
    text = str(exc)
    for sqlstate, pattern in _MESSAGES:
        if pattern.search(text):
            return sqlstate
    return None
