"""No fragment of a password ever leaves the pool, even from a slightly malformed DSN (issue 9
item 8): a URL password with a raw ``%``, ``/`` or ``@``, or an unquoted space in a
``key=value`` password. libpq splits such a string at the wrong place, so pieces of the password
would land in the host, port, dbname or a parse error. The pool never echoes a DSN it could not
parse cleanly and never hands it to libpq: it names the problem without the text.

Property (hypothesis): no substring of length >= 4 of the password (that holds a letter) appears
in ``repr(pool)``, a log record, an exception message or ``python -m fastpool doctor`` output.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any, Iterable, List

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastpool  # noqa: E402
from fastpool import cli, conninfo  # noqa: E402
from fastpool.pool import pool_class  # noqa: E402

IMPLS = ("c", "python")
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # never lower case: our own messages are lower case


def fragments(password: str) -> List[str]:
    """Every substring of length 4 that holds a letter (longer ones contain one of these)."""
    return [password[i:i + 4] for i in range(len(password) - 3)
            if any(ch in LETTERS for ch in password[i:i + 4])]


def assert_no_fragment(password: str, texts: Iterable[str]) -> None:
    for text in texts:
        for frag in fragments(password):
            assert frag not in text, f"password fragment {frag!r} leaked in: {text!r}"


def _password(hostile: str) -> Any:
    """A password with at least one of ``hostile`` in it, letters around it."""
    word = st.text(alphabet=LETTERS, min_size=4, max_size=8)
    return st.builds(
        lambda a, h, b, tail: a + h + b + tail,
        word, st.sampled_from(hostile), word,
        st.text(alphabet=LETTERS + hostile, max_size=6),
    )


# port 1: nothing listens there, so a DSN that does parse is refused at once
def url_dsn(pw: str, port: int = 1) -> str:
    return f"postgresql://app:{pw}@127.0.0.1:{port}/test"


def kv_dsn(pw: str, port: int = 1) -> str:
    return f"host=127.0.0.1 port={port} password={pw} dbname=test"


HOSTILE = st.one_of(
    _password("%/@").map(lambda pw: (pw, url_dsn(pw))),
    _password(" ").filter(lambda pw: pw.strip() == pw).map(lambda pw: (pw, kv_dsn(pw))),
)


def outputs_without_server(dsn: str, caplog: Any) -> List[str]:
    """Everything the pool says about ``dsn`` without a server to connect to."""
    texts: List[str] = []
    for impl in IMPLS:
        Pool = pool_class(impl)  # noqa: N806
        try:
            pool = Pool(dsn, open=False)
        except Exception as exc:
            texts.append(str(exc))
        else:
            texts.append(repr(pool))
            pool.close()
    texts.append(conninfo.masked_conninfo(dsn))
    texts.append(conninfo.describe(dsn))
    try:
        conninfo.validate_conninfo(dsn)
    except ValueError as exc:
        texts.append(str(exc))
    try:
        fastpool.connect(dsn, connect_timeout=1, timeout=0.5)
    except Exception as exc:
        texts.append(str(exc))
    texts.extend(run_doctor(dsn))
    texts.extend(r.getMessage() for r in caplog.records)
    return texts


def run_doctor(dsn: str) -> List[str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(["doctor", "--dsn", dsn, "--processes", "2"])
        except SystemExit:
            pass
    return [out.getvalue(), err.getvalue()]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=HOSTILE)
def test_hostile_dsn_never_leaks_a_password_fragment(case: Any, caplog: Any) -> None:
    pw, dsn = case
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        texts = outputs_without_server(dsn, caplog)
    assert_no_fragment(pw, texts)
    fastpool.close_all()


# The examples of the issue, plus the live paths: a server to talk to, reconnect warnings and
# the PoolTimeout of a pool whose conninfo callable returns the bad string.
FIXED = [
    ("Sekr1tA%Pa55wdB", url_dsn),  # raw %
    ("Sekr1tA/Pa55wdB", url_dsn),  # raw /: libpq reads port=Sekr1tA dbname=Pa55wdB@...
    ("Sekr1tA@Pa55wdB", url_dsn),  # raw @: libpq reads host=Pa55wdB@127.0.0.1
    ("Sekr1tA Pa55wdB", kv_dsn),  # unquoted space
]


@pytest.mark.parametrize("pw,form", FIXED, ids=["url%", "url/", "url@", "kv-space"])
def test_malformed_dsn_is_refused_by_name_not_text(pw: str, form: Any, Pool: Any, caplog: Any) -> None:
    dsn = form(pw)
    with pytest.raises(ValueError) as info:
        Pool(dsn, open=False)
    assert str(info.value).startswith("invalid conninfo: ")
    assert_no_fragment(pw, [str(info.value)])


@pytest.mark.slow
@pytest.mark.parametrize("pw,form", FIXED, ids=["url%", "url/", "url@", "kv-space"])
def test_conninfo_callable_returning_a_malformed_dsn_leaks_nothing(
    pw: str, form: Any, Pool: Any, dsn: str, caplog: Any
) -> None:
    """Reconnect warnings, PoolTimeout and repr of a pool whose conninfo callable returns a bad
    string (built on the real test server's port, so libpq would otherwise connect somewhere)."""
    import psycopg2.extensions

    port = int(psycopg2.extensions.parse_dsn(dsn).get("port", 5432))
    bad = form(pw, port)
    texts: List[str] = []
    with caplog.at_level(logging.DEBUG):
        pool = Pool(lambda: bad, min_size=1, max_size=1, name="hg-secrets")
        try:
            with pytest.raises(fastpool.PoolTimeout) as info:
                pool.getconn(timeout=1.0)
            texts.append(str(info.value))
            texts.append(repr(pool))
        finally:
            pool.close()
    assert "invalid conninfo" in texts[0]
    texts.extend(r.getMessage() for r in caplog.records)
    assert any("invalid conninfo" in r.getMessage() for r in caplog.records)
    assert_no_fragment(pw, texts)


@pytest.mark.parametrize("pw,form", FIXED, ids=["url%", "url/", "url@", "kv-space"])
def test_doctor_names_the_problem_without_the_text(pw: str, form: Any, dsn: str) -> None:
    import psycopg2.extensions

    port = int(psycopg2.extensions.parse_dsn(dsn).get("port", 5432))
    out = run_doctor(form(pw, port))
    assert "invalid --dsn" in out[1], out
    assert_no_fragment(pw, out)


def test_clean_dsns_still_render() -> None:
    assert conninfo.conninfo_problem("postgresql://u:p%40ss%2Fw%25rd@h:5432,h2:5433/db?sslmode=disable") is None
    assert conninfo.conninfo_problem("host=h port=5432 password='a b c' dbname=d") is None
    assert conninfo.masked_conninfo("postgresql://u:Sekr1t@h/db") == "user=u password=*** dbname=db host=h"
