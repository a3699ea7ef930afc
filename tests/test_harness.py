"""Self-tests of the harness in conftest.py (they need PostgreSQL, not fastpool)."""

from __future__ import annotations

from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

from conftest import Backends, PrivateServers, dsn_to_url, mask_dsn, to_keyvalue_dsn


def _scalar(dsn: str, sql: str, **kwargs: Any) -> Any:
    conn = psycopg2.connect(dsn, connect_timeout=5, **kwargs)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_dsn_connects(dsn: str) -> None:
    assert "=" in dsn and "://" not in dsn  # key=value form, as promised
    assert _scalar(dsn, "SELECT 1") == 1


def test_admin_is_autocommit(admin: psycopg2.extensions.connection) -> None:
    assert admin.autocommit
    with admin.cursor() as cur:
        cur.execute("SELECT current_setting('server_version_num')::int")
        assert cur.fetchone()[0] >= 100000


def test_app_name_unique(app_name: str) -> None:
    assert app_name.startswith("fp-test-") and len(app_name) == len("fp-test-") + 8


def test_backends_counts_connection(
    dsn: str, app_name: str, backends: Backends, backend_pids: Any
) -> None:
    assert backends() == 0
    conn = psycopg2.connect(dsn, application_name=app_name)
    try:
        assert backends() == 1 == backends(app_name)
        assert backend_pids() == {conn.get_backend_pid()}
    finally:
        conn.close()
    assert backends.wait(0) == 0


def test_backends_terminate(dsn: str, app_name: str, backends: Backends) -> None:
    conn = psycopg2.connect(dsn, application_name=app_name)
    try:
        assert backends.terminate() == 1
        assert backends.wait(0) == 0
        with pytest.raises(psycopg2.OperationalError):
            conn.cursor().execute("SELECT 1")
    finally:
        conn.close()


@pytest.mark.slow
def test_private_server_restart(private_server: PrivateServers, dsn: str) -> None:
    server_dsn = private_server.dsn
    assert server_dsn != dsn  # never the shared server
    conn = psycopg2.connect(server_dsn)
    before = conn.get_backend_pid()

    private_server.restart()
    assert private_server.dsn == server_dsn  # same port across restarts
    with pytest.raises(psycopg2.OperationalError):  # the old connection was cut
        conn.cursor().execute("SELECT 1")
    conn.close()
    assert _scalar(server_dsn, "SELECT pg_backend_pid()") != before


@pytest.mark.slow
def test_private_server_stop_start(private_server: PrivateServers) -> None:
    server = private_server()  # factory style: an independent server
    server.stop()
    assert not server.running
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(server.dsn, connect_timeout=2)
    server.start()
    assert _scalar(server.dsn, "SELECT 1") == 1
    server.cleanup()
    assert not server.base.exists()


def test_mask_dsn() -> None:
    assert "s3cret" not in mask_dsn("host=h user=u password=s3cret")
    assert "s3cret" not in mask_dsn("postgresql://u:s3cret@h/db")
    assert "s3cret" not in mask_dsn("not a dsn password=s3cret ' ")
    normalised = to_keyvalue_dsn("postgresql://u@h:5433/db")
    assert "://" not in normalised
    assert psycopg2.extensions.parse_dsn(normalised) == {"user": "u", "host": "h", "port": "5433", "dbname": "db"}


def test_dsn_to_url_keeps_every_parameter() -> None:
    # A socket directory as a URL's host would be cut at its first slash: it goes in the query.
    for dsn in ("host=/var/run/postgresql port=5433 user=u dbname=db application_name=a",
                "host=127.0.0.1 port=5433 user=u password='p@ss w/rd:' dbname=d/b",
                "host=db.example user=u dbname=db"):
        url = dsn_to_url(dsn)
        assert url.startswith("postgresql://")
        assert psycopg2.extensions.parse_dsn(url) == psycopg2.extensions.parse_dsn(dsn), url
    assert dsn_to_url("host=/tmp/s dbname=x", "postgresql+psycopg2").startswith("postgresql+psycopg2://")


def test_dsn_to_url_connects(dsn: str) -> None:
    assert _scalar(dsn_to_url(dsn), "SELECT 1") == 1


@pytest.mark.slow
def test_slow_marker_registered(pytestconfig: pytest.Config) -> None:
    assert any(line.startswith("slow:") for line in pytestconfig.getini("markers"))
