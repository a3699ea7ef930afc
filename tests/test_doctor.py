"""``fastpool doctor``: the recommendation formula and the warnings, against a real server."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import uuid
from typing import Any, Dict, Iterator, List

import psycopg2
import psycopg2.extensions
import pytest

from fastpool.doctor import (
    IDLE_MIN,
    SAFETY_MIN,
    DoctorError,
    analyze,
    default_reserve,
    diagnose,
    format_report,
)

RESULT_KEYS = {
    "dsn", "server_version", "server_version_num", "max_connections",
    "superuser_reserved_connections", "reserved_connections", "safety_margin", "reserve",
    "reserve_source", "usable_connections", "processes", "recommended_max_size",
    "current_connections", "by_state", "by_application", "idle_in_transaction", "warnings",
}


def show(admin: Any, setting: str) -> int:
    with admin.cursor() as cur:
        cur.execute(f"SHOW {setting}")
        return int(cur.fetchone()[0])


def codes(result: Dict[str, Any]) -> List[str]:
    return [w["code"] for w in result["warnings"]]


def warning(result: Dict[str, Any], code: str) -> Dict[str, Any]:
    found = [w for w in result["warnings"] if w["code"] == code]
    assert found, f"no {code!r} warning in {codes(result)}"
    return found[0]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastpool", *args], capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def open_conns(dsn: str) -> Iterator[Any]:
    """``open_conns(n, app_name)`` -> list of plain psycopg2 connections, closed at teardown."""
    conns: List[Any] = []

    def factory(n: int, app_name: str) -> List[Any]:
        new = [psycopg2.connect(dsn, application_name=app_name) for _ in range(n)]
        conns.extend(new)
        return new

    yield factory
    for c in conns:
        c.close()


# -- against the shared server --------------------------------------------------------------------


def test_diagnose_keys_and_formula(dsn: str, admin: Any) -> None:
    result = diagnose(dsn, 4)
    assert set(result) == RESULT_KEYS
    json.dumps(result)  # JSON-serialisable as is

    max_conn = show(admin, "max_connections")
    su = show(admin, "superuser_reserved_connections")
    assert result["max_connections"] == max_conn
    assert result["superuser_reserved_connections"] == su
    assert result["reserved_connections"] >= 0
    margin = max(SAFETY_MIN, math.ceil(0.10 * max_conn))
    assert result["safety_margin"] == margin
    assert result["reserve"] == su + result["reserved_connections"] + margin
    assert result["reserve_source"] == "default"
    assert result["usable_connections"] == max_conn - result["reserve"]
    assert result["processes"] == 4
    assert result["recommended_max_size"] == (max_conn - result["reserve"]) // 4
    assert result["current_connections"] == sum(result["by_state"].values())
    assert result["current_connections"] == sum(d["total"] for d in result["by_application"].values())
    assert "fastpool-doctor" not in result["by_application"]  # its own connection is not counted
    assert result["server_version_num"] >= 100000


def test_diagnose_with_explicit_reserve(dsn: str, admin: Any) -> None:
    max_conn = show(admin, "max_connections")
    result = diagnose(dsn, 3, reserve=20)
    assert result["reserve"] == 20
    assert result["reserve_source"] == "given"
    assert result["safety_margin"] is None
    assert result["recommended_max_size"] == (max_conn - 20) // 3


def test_counts_only_client_backends(dsn: str, admin: Any) -> None:
    with admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type <> 'client backend'")
        background = cur.fetchone()[0]
    assert background > 0  # checkpointer, walwriter...: present on every server
    result = diagnose(dsn, 1)
    assert "" not in result["by_state"] and None not in result["by_state"]
    assert "fastpool-test-admin" in result["by_application"]  # the admin fixture's connection


def test_idle_connections_warning(dsn: str, app_name: str, open_conns: Any) -> None:
    before = diagnose(dsn, 1)
    busy = before["current_connections"] - before["by_state"].get("idle", 0)
    # Enough idle connections to be more than half of all, whatever else runs on the server.
    n = max(15, 2 * busy + 5)
    if n > 60 or before["current_connections"] + n > before["usable_connections"]:
        pytest.skip(f"server too busy to stage the idle-connections symptom ({busy} non-idle connections)")
    open_conns(n, app_name)  # connected, never used: state 'idle'

    result = diagnose(dsn, 4)
    assert result["by_application"][app_name] == {"total": n, "idle": n}
    w = warning(result, "idle_connections")
    assert w["idle"] > IDLE_MIN and w["idle"] > w["total"] / 2
    rank = w["applications"].index({"application_name": app_name, "idle": n})
    if rank < 5:  # the message names the five applications with most idle connections
        assert f"{app_name!r} ({n})" in w["message"]


def test_idle_in_transaction_warning(dsn: str, app_name: str, open_conns: Any) -> None:
    waiting, aborted = open_conns(2, app_name)
    waiting.cursor().execute("SELECT 1")  # psycopg2 opened a transaction and left it open
    with pytest.raises(psycopg2.errors.DivisionByZero):
        aborted.cursor().execute("SELECT 1 / 0")  # 'idle in transaction (aborted)'
    time.sleep(0.3)

    result = diagnose(dsn, 2)
    assert result["by_application"][app_name] == {
        "total": 2, "idle in transaction": 1, "idle in transaction (aborted)": 1,
    }
    mine = [d for d in result["idle_in_transaction"] if d["application_name"] == app_name]
    assert len(mine) == 1
    assert mine[0]["count"] == 2
    assert mine[0]["max_age_seconds"] >= 0.2
    w = warning(result, "idle_in_transaction")
    assert mine[0] in w["applications"]
    assert repr(app_name) in w["message"]

    waiting.rollback()
    aborted.rollback()
    result = diagnose(dsn, 2)
    assert not [d for d in result["idle_in_transaction"] if d["application_name"] == app_name]


def test_format_report(dsn: str) -> None:
    result = diagnose(dsn, 4)
    text = format_report(result)
    assert text.startswith(f"fastpool doctor: {result['dsn']}")
    assert f"= {result['recommended_max_size']} per process" in text
    assert f"max_connections                 {result['max_connections']:>6}" in text
    for w in result["warnings"]:
        assert f"[{w['code']}]" in text


@pytest.mark.slow
def test_reserved_connections_on_postgresql_16(private_server: Any) -> None:
    """PG16+ reserved_connections is read and reserved (the shared server may be older)."""
    version = int(_setting(private_server.dsn, "server_version_num"))
    if version < 160000:
        pytest.skip(f"private server is PostgreSQL {version}, reserved_connections needs 16+")
    with open(private_server.pgdata / "postgresql.conf", "a") as conf:
        conf.write("reserved_connections = 4\nsuperuser_reserved_connections = 2\n")
    private_server.restart()
    result = diagnose(private_server.dsn, 2)
    assert result["reserved_connections"] == 4
    assert result["superuser_reserved_connections"] == 2
    max_conn = result["max_connections"]
    assert result["reserve"] == 2 + 4 + max(SAFETY_MIN, math.ceil(0.1 * max_conn))
    assert result["recommended_max_size"] == (max_conn - result["reserve"]) // 2


def _setting(dsn: str, name: str) -> str:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT setting FROM pg_settings WHERE name = %s", (name,))
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_diagnose_rejects_bad_arguments(dsn: str) -> None:
    with pytest.raises(ValueError, match="processes"):
        diagnose(dsn, 0)
    with pytest.raises(TypeError, match="processes"):
        diagnose(dsn, "4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reserve"):
        diagnose(dsn, 4, reserve=-1)


# -- the password never shows -------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def _with_secret(dsn: str) -> tuple:
    params = psycopg2.extensions.parse_dsn(dsn)
    if params.get("password"):  # a real password: it must not show either
        return dsn, params["password"]
    secret = f"Sekr3t-{uuid.uuid4().hex[:8]}"
    return psycopg2.extensions.make_dsn(dsn, password=secret), secret


def test_password_never_printed(dsn: str) -> None:
    dsn_pw, secret = _with_secret(dsn)
    for args in (["--json"], []):
        proc = run_cli("doctor", "--dsn", dsn_pw, "--processes", "2", *args)
        assert secret not in proc.stdout + proc.stderr
        if proc.returncode == 0:  # a trust-auth server ignores the extra password
            assert "password=***" in proc.stdout
            if args:
                assert json.loads(proc.stdout)["dsn"].count("***") == 1


def test_unreachable_server_error_is_masked() -> None:
    secret = f"Sekr3t-{uuid.uuid4().hex[:8]}"
    port = _closed_port()
    for dsn in (f"host=127.0.0.1 port={port} user=u dbname=d password={secret} connect_timeout=3",
                f"postgresql://u:{secret}@127.0.0.1:{port}/d?connect_timeout=3"):
        with pytest.raises(DoctorError) as info:
            diagnose(dsn, 2)
        assert secret not in str(info.value)
        assert "cannot connect" in str(info.value)
        proc = run_cli("doctor", "--dsn", dsn, "--processes", "2")
        assert proc.returncode == 1
        assert "cannot connect" in proc.stderr
        assert secret not in proc.stdout + proc.stderr


# -- the command line -----------------------------------------------------------------------------


def test_cli_doctor_text(dsn: str) -> None:
    expected = diagnose(dsn, 4)["recommended_max_size"]
    proc = run_cli("doctor", "--dsn", dsn, "--processes", "4")
    assert proc.returncode == 0, proc.stderr
    assert "Recommendation for 4 processes" in proc.stdout
    assert f"= {expected} per process" in proc.stdout
    assert f"fastpool.Pool(dsn, max_size={expected})" in proc.stdout


def test_cli_doctor_json(dsn: str, admin: Any) -> None:
    proc = run_cli("doctor", "--dsn", dsn, "--processes", "4", "--reserve", "20", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == RESULT_KEYS
    assert result["recommended_max_size"] == (show(admin, "max_connections") - 20) // 4


def test_main_function(dsn: str, capsys: pytest.CaptureFixture) -> None:
    from fastpool.__main__ import main

    assert main(["doctor", "--dsn", dsn, "--processes", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["processes"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["doctor", "--processes", "4"],                      # --dsn missing
    ["doctor", "--dsn", "dbname=x"],                     # --processes missing
    ["doctor", "--dsn", "dbname=x", "--processes", "0"],
    ["doctor", "--dsn", "dbname=x", "--processes", "four"],
    ["doctor", "--dsn", "dbname=x", "--processes", "2", "--reserve", "-1"],
    [],                                                  # no command
])
def test_cli_usage_errors(args: List[str]) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr


def test_cli_bench_outside_a_checkout_says_where_the_benchmarks_are(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The wheel holds no benchmarks: run away from a checkout, the command says where they are
    # instead of failing on an import.
    import fastpool.cli as cli

    monkeypatch.setattr(cli, "benchmarks_dirs", lambda: [tmp_path / "benchmarks"])
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "source checkout" in err and "pip install -e" in err and str(tmp_path) in err


def test_cli_bench_finds_the_checkouts_benchmarks() -> None:
    import fastpool.cli as cli

    assert any((d / cli.BENCH_PACKAGE / "cli.py").is_file() for d in cli.benchmarks_dirs()), (
        "run the tests from a checkout installed with pip install -e"
    )


# -- the analysis on synthetic servers (states a shared test server cannot be put in) -------------


def facts(activity: List[tuple], max_connections: int = 100, su: int = 3, reserved: int = 0) -> Dict[str, Any]:
    return {
        "server_version": "16.0", "server_version_num": 160000,
        "max_connections": max_connections, "superuser_reserved_connections": su,
        "reserved_connections": reserved,
        "activity": [
            {"state": s, "application_name": a, "count": n, "max_state_age_seconds": age}
            for s, a, n, age in activity
        ],
    }


def test_default_reserve() -> None:
    assert default_reserve(100, 3) == {"superuser_reserved_connections": 3, "reserved_connections": 0,
                                       "safety_margin": 10, "reserve": 13}
    assert default_reserve(20, 3)["safety_margin"] == SAFETY_MIN  # 10% would be 2
    assert default_reserve(500, 5, 2)["reserve"] == 5 + 2 + 50
    assert default_reserve(101, 3)["safety_margin"] == 11  # rounded up


def test_analyze_formula_and_reserved_connections() -> None:
    r = analyze(facts([], max_connections=200, su=3, reserved=5), processes=6)
    assert r["reserve"] == 3 + 5 + 20
    assert r["usable_connections"] == 172
    assert r["recommended_max_size"] == 172 // 6 == 28
    assert r["warnings"] == []


def test_analyze_near_limit() -> None:
    # usable = 100 - 13 = 87; 80 % of it is 69.6
    assert "near_limit" not in codes(analyze(facts([("active", "web", 69, 0.1)]), 4))
    r = analyze(facts([("active", "web", 70, 0.1)]), 4)
    w = warning(r, "near_limit")
    assert (w["current"], w["usable"]) == (70, 87)


def test_analyze_idle_thresholds() -> None:
    assert "idle_connections" not in codes(analyze(facts([("idle", "web", IDLE_MIN, 1.0)]), 2))
    assert "idle_connections" in codes(analyze(facts([("idle", "web", IDLE_MIN + 1, 1.0)]), 2))
    # more than half must be idle
    half = [("idle", "web", 11, 1.0), ("active", "web", 11, 0.0)]
    assert "idle_connections" not in codes(analyze(facts(half), 2))
    most = [("idle", "web", 12, 1.0), ("idle", "celery", 3, 1.0), ("active", "web", 11, 0.0)]
    w = warning(analyze(facts(most), 2), "idle_connections")
    assert w["applications"] == [{"application_name": "web", "idle": 12},
                                 {"application_name": "celery", "idle": 3}]


def test_analyze_idle_in_transaction_and_hidden_states() -> None:
    r = analyze(facts([
        ("idle in transaction", "web", 2, 5.0),
        ("idle in transaction (aborted)", "web", 1, 90.0),
        ("idle in transaction", "", 1, 7200.0),
        ("<insufficient privilege>", "other", 4, None),
    ]), 2)
    assert r["idle_in_transaction"] == [
        {"application_name": "", "count": 1, "max_age_seconds": 7200.0},
        {"application_name": "web", "count": 3, "max_age_seconds": 90.0},
    ]
    assert "4 connections idle in transaction" in warning(r, "idle_in_transaction")["message"]
    assert "(no application_name)" in warning(r, "idle_in_transaction")["message"]
    warning(r, "insufficient_privilege")


def test_analyze_no_room() -> None:
    r = analyze(facts([], max_connections=20), processes=30)
    assert r["recommended_max_size"] == 0
    warning(r, "no_room")
    r = analyze(facts([], max_connections=20), processes=1, reserve=25)
    assert r["usable_connections"] == 0 and r["recommended_max_size"] == 0
    text = format_report(dict(r, dsn="dbname=x"))
    assert "[no_room]" in text and "fastpool.Pool(" not in text
