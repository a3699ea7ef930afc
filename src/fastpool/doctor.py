"""``fastpool doctor``: how big should each process's pool be, and is the server already in trouble?

Every process that talks to PostgreSQL (each gunicorn/uwsgi worker on every host, each Celery
worker, cron jobs...) owns its own pool, and together they must fit in the server's
``max_connections``. :func:`diagnose` reads the server's limits and its current client
connections and recommends::

    max_size = (max_connections - reserve) // processes

where ``processes`` counts *all* those processes across all hosts, and ``reserve`` (by default,
see :func:`default_reserve`) keeps room for superusers, PG16's ``reserved_connections`` roles,
and everything that is not a pool: psql sessions, migrations, monitoring, and the overlap of old
and new workers during a rolling restart.

It also warns about the usual symptoms:

* ``near_limit``: client connections >= 80 % of what the pools may use;
* ``idle_connections``: most connections ``idle`` -- connections that persist but are not
  reused (Django's ``CONN_MAX_AGE`` under gevent/eventlet workers keeps one per greenlet);
* ``idle_in_transaction``: sessions sitting in an open transaction (holding locks and snapshots;
  usually a missing commit/rollback or a connection leaked mid-transaction).

The DSN is shown with its password masked, always.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, NamedTuple, Optional

from .conninfo import Scrubber, conninfo_problem, masked_conninfo

__all__ = ["diagnose", "analyze", "format_report", "default_reserve", "DoctorError"]

#: application_name of the doctor's own connection (which is never counted).
APPLICATION_NAME = "fastpool-doctor"

#: Safety margin kept out of the pools by default: this fraction of max_connections, at least
#: SAFETY_MIN connections. Ten percent is enough for a few admin/psql sessions, a migration, a
#: monitoring agent and cron jobs, and for the old and new generations of workers overlapping
#: during a rolling restart; the minimum of 3 matters on small servers (max_connections 20-30),
#: where 10 % would leave no room for even one admin session next to a migration.
SAFETY_FRACTION = 0.10
SAFETY_MIN = 3

#: near_limit: client connections >= this fraction of the usable connections.
NEAR_LIMIT_FRACTION = 0.80
#: idle_connections: idle > this fraction of all client connections, and more than IDLE_MIN.
IDLE_FRACTION = 0.50
IDLE_MIN = 10

IDLE_IN_TRANSACTION_STATES = ("idle in transaction", "idle in transaction (aborted)")
#: state shown for rows whose state this user may not see (needs pg_read_all_stats).
HIDDEN_STATE = "<insufficient privilege>"


class DoctorError(Exception):
    """The server could not be inspected (message has no password)."""


def default_reserve(max_connections: int, superuser_reserved: int, reserved: int = 0) -> Dict[str, int]:
    """The default reserve: the server's reserved slots plus a safety margin (see SAFETY_*)."""
    margin = max(SAFETY_MIN, math.ceil(SAFETY_FRACTION * max_connections))
    return {
        "superuser_reserved_connections": superuser_reserved,
        "reserved_connections": reserved,
        "safety_margin": margin,
        "reserve": superuser_reserved + reserved + margin,
    }


# -- collecting ------------------------------------------------------------------------------------

_SETTINGS_SQL = """
SELECT name, setting FROM pg_settings
WHERE name IN ('max_connections', 'superuser_reserved_connections', 'reserved_connections',
               'server_version', 'server_version_num')
"""

# Client backends only (no autovacuum, walsender, background workers...), minus ourselves.
_ACTIVITY_SQL = """
SELECT state, coalesce(application_name, ''), count(*),
       extract(epoch FROM max(now() - state_change))::float8
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
GROUP BY 1, 2
ORDER BY 3 DESC, 2
"""


def collect(conn: Any) -> Dict[str, Any]:
    """Raw facts from a live connection: settings and client connections by (state, app)."""
    with conn.cursor() as cur:
        cur.execute(_SETTINGS_SQL)
        settings = dict(cur.fetchall())
        cur.execute(_ACTIVITY_SQL)
        rows = cur.fetchall()
    activity = [
        {
            "state": state if state is not None else HIDDEN_STATE,
            "application_name": app,
            "count": int(count),
            "max_state_age_seconds": None if age is None else round(float(age), 3),
        }
        for state, app, count, age in rows
    ]
    return {
        "server_version": settings.get("server_version"),
        "server_version_num": int(settings.get("server_version_num") or 0),
        "max_connections": int(settings["max_connections"]),
        "superuser_reserved_connections": int(settings.get("superuser_reserved_connections") or 0),
        # PostgreSQL 16+: slots for roles with pg_use_reserved_connections; absent before.
        "reserved_connections": int(settings.get("reserved_connections") or 0),
        "activity": activity,
    }


# -- analysing -------------------------------------------------------------------------------------


def analyze(facts: Dict[str, Any], processes: int, reserve: Optional[int] = None) -> Dict[str, Any]:
    """The recommendation and warnings for ``facts`` (as returned by :func:`collect`)."""
    _check_processes(processes)
    budget = _budget(facts, processes, reserve)
    tally = _tally(facts["activity"])
    return {
        "server_version": facts.get("server_version"),
        "server_version_num": facts.get("server_version_num"),
        "max_connections": budget.max_connections,
        "superuser_reserved_connections": facts["superuser_reserved_connections"],
        "reserved_connections": facts.get("reserved_connections", 0),
        "safety_margin": budget.safety_margin,
        "reserve": budget.reserve,
        "reserve_source": budget.reserve_source,
        "usable_connections": budget.usable,
        "processes": processes,
        "recommended_max_size": budget.recommended,
        "current_connections": tally.total,
        "by_state": dict(sorted(tally.by_state.items(), key=lambda kv: (-kv[1], kv[0]))),
        "by_application": dict(sorted(tally.by_app.items(), key=lambda kv: (-kv[1]["total"], kv[0]))),
        "idle_in_transaction": tally.idle_in_transaction,
        "warnings": _warnings(budget, tally, processes),
    }


class _Budget(NamedTuple):
    """What the pools may use: max_connections minus the reserve, shared by the processes."""

    max_connections: int
    reserve: int
    reserve_source: str  # "default" or "given"
    safety_margin: Optional[int]  # the default reserve's margin; None for a given reserve
    usable: int
    recommended: int  # max_size per process


def _budget(facts: Dict[str, Any], processes: int, reserve: Optional[int]) -> _Budget:
    max_conn = facts["max_connections"]
    default = default_reserve(max_conn, facts["superuser_reserved_connections"],
                              facts.get("reserved_connections", 0))
    if reserve is None:
        reserve_source, reserve, margin = "default", default["reserve"], default["safety_margin"]
    else:
        _check_reserve(reserve)
        reserve_source, margin = "given", None
    usable = max(0, max_conn - reserve)
    return _Budget(max_conn, reserve, reserve_source, margin, usable, usable // processes)


class _Tally(NamedTuple):
    """The server's current client connections, counted by state and by application."""

    total: int
    by_state: Dict[str, int]
    by_app: Dict[str, Dict[str, int]]  # application_name -> {"total": n, state: n, ...}
    idle_in_transaction: List[Dict[str, Any]]  # per application, oldest first


def _tally(activity: List[Dict[str, Any]]) -> _Tally:
    by_state: Dict[str, int] = {}
    by_app: Dict[str, Dict[str, int]] = {}
    iit: Dict[str, Dict[str, Any]] = {}
    total = 0
    for row in activity:
        state, app, n = row["state"], row["application_name"], row["count"]
        total += n
        by_state[state] = by_state.get(state, 0) + n
        entry = by_app.setdefault(app, {"total": 0})
        entry["total"] += n
        entry[state] = entry.get(state, 0) + n
        if state in IDLE_IN_TRANSACTION_STATES:
            item = iit.setdefault(app, {"application_name": app, "count": 0, "max_age_seconds": 0.0})
            item["count"] += n
            age = row.get("max_state_age_seconds")
            if age is not None:
                item["max_age_seconds"] = max(item["max_age_seconds"], age)
    idle_in_transaction = sorted(iit.values(), key=lambda d: (-d["max_age_seconds"], d["application_name"]))
    return _Tally(total, by_state, by_app, idle_in_transaction)


def _warnings(budget: _Budget, tally: _Tally, processes: int) -> List[Dict[str, Any]]:
    """Every symptom found, in a fixed order (the report and --json list them as they come)."""
    found = (
        _warn_no_room(budget, processes),
        _warn_near_limit(budget, tally),
        _warn_idle_connections(tally),
        _warn_idle_in_transaction(tally),
        _warn_hidden_states(tally),
    )
    return [w for w in found if w is not None]


def _warn_no_room(budget: _Budget, processes: int) -> Optional[Dict[str, Any]]:
    if budget.recommended >= 1:
        return None
    return {
        "code": "no_room",
        "message": (
            f"max_connections {budget.max_connections} minus a reserve of {budget.reserve} leaves "
            f"{budget.usable} connections: not even one per process for {processes} processes; raise "
            "max_connections, lower the reserve or the number of processes, or put PgBouncer in "
            "front of the server"
        ),
    }


def _warn_near_limit(budget: _Budget, tally: _Tally) -> Optional[Dict[str, Any]]:
    usable, total = budget.usable, tally.total
    if usable <= 0 or total < NEAR_LIMIT_FRACTION * usable:
        return None
    return {
        "code": "near_limit",
        "message": (
            f"{total} client connections are open: {100 * total / usable:.0f}% of the {usable} "
            f"usable by application pools (max_connections {budget.max_connections} - reserve "
            f"{budget.reserve}); new connections will soon be refused"
        ),
        "current": total,
        "usable": usable,
    }


def _warn_idle_connections(tally: _Tally) -> Optional[Dict[str, Any]]:
    idle, total = tally.by_state.get("idle", 0), tally.total
    if not (idle > IDLE_MIN and idle > IDLE_FRACTION * total):
        return None
    top = sorted(((-d["idle"], app) for app, d in tally.by_app.items() if d.get("idle")))
    apps: List[Dict[str, Any]] = [{"application_name": app, "idle": -n} for n, app in top]
    names = ", ".join(f"{_app_label(a['application_name'])} ({a['idle']})" for a in apps[:5])
    return {
        "code": "idle_connections",
        "message": (
            f"{idle} of {total} client connections are idle: connections that persist but are "
            "not reused (e.g. Django CONN_MAX_AGE under gevent/eventlet keeps one per greenlet); "
            f"use a bounded pool per process. Most idle: {names}"
        ),
        "idle": idle,
        "total": total,
        "applications": apps,
    }


def _warn_idle_in_transaction(tally: _Tally) -> Optional[Dict[str, Any]]:
    iit = tally.idle_in_transaction
    if not iit:
        return None
    n = sum(d["count"] for d in iit)
    names = ", ".join(
        f"{_app_label(d['application_name'])} ({d['count']}, oldest {_age(d['max_age_seconds'])})"
        for d in iit
    )
    return {
        "code": "idle_in_transaction",
        "message": (
            f"{n} connection{'s' if n != 1 else ''} idle in transaction (holding locks and "
            f"snapshots; a missing commit/rollback or a leaked connection): {names}. Consider "
            "idle_in_transaction_session_timeout"
        ),
        "count": n,
        "applications": iit,
    }


def _warn_hidden_states(tally: _Tally) -> Optional[Dict[str, Any]]:
    hidden = tally.by_state.get(HIDDEN_STATE, 0)
    if not hidden:
        return None
    return {
        "code": "insufficient_privilege",
        "message": (
            f"the state of {hidden} connections is hidden from this user; counts by state are "
            "incomplete (connect as a superuser or a member of pg_read_all_stats)"
        ),
    }


def diagnose(dsn: str, processes: int, reserve: Optional[int] = None) -> Dict[str, Any]:
    """Inspect the server at ``dsn`` and recommend ``max_size`` for each of ``processes``.

    Returns a JSON-serialisable dict (see :func:`analyze`) whose ``dsn`` has the password masked.
    Raises :class:`DoctorError` if the server cannot be reached or inspected.
    """
    _check_processes(processes)
    if reserve is not None:
        _check_reserve(reserve)
    import psycopg2

    problem = conninfo_problem(dsn)
    if problem is not None:
        # Never handed to libpq, never echoed: its errors would quote pieces of the password.
        raise DoctorError(f"invalid --dsn: {problem}")
    scrubber = Scrubber()
    scrubber.learn(dsn)
    try:
        conn = psycopg2.connect(dsn, application_name=APPLICATION_NAME, connect_timeout=10)
    except psycopg2.Error as exc:
        raise DoctorError(f"cannot connect to {_masked(dsn)}: {scrubber.scrub(str(exc).strip())}") from None
    try:
        conn.autocommit = True
        facts = collect(conn)
    except psycopg2.Error as exc:
        raise DoctorError(f"cannot inspect {_masked(dsn)}: {scrubber.scrub(str(exc).strip())}") from None
    finally:
        conn.close()
    result = {"dsn": _masked(dsn)}
    result.update(analyze(facts, processes, reserve))
    return result


def _masked(dsn: str) -> str:
    return masked_conninfo(dsn) or "(libpq defaults)"


def _check_processes(processes: Any) -> None:
    if isinstance(processes, bool) or not isinstance(processes, int):
        raise TypeError(f"processes must be an int, not {type(processes).__name__}")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, not {processes}")


def _check_reserve(reserve: Any) -> None:
    if isinstance(reserve, bool) or not isinstance(reserve, int):
        raise TypeError(f"reserve must be an int, not {type(reserve).__name__}")
    if reserve < 0:
        raise ValueError(f"reserve must be >= 0, not {reserve}")


def _app_label(app: str) -> str:
    return repr(app) if app else "(no application_name)"


def _age(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -- reporting -------------------------------------------------------------------------------------


def format_report(result: Dict[str, Any]) -> str:
    """A human-readable report of :func:`diagnose`'s result."""
    r = result
    lines = [f"fastpool doctor: {r.get('dsn', '')}"]
    if r.get("server_version"):
        lines.append(f"PostgreSQL {r['server_version']}")
    lines += ["", "Connection budget"]
    rows = [
        ("max_connections", r["max_connections"], ""),
        ("superuser_reserved_connections", r["superuser_reserved_connections"], ""),
        ("reserved_connections", r["reserved_connections"], "(PostgreSQL 16+)"),
    ]
    if r.get("reserve_source") == "default":
        rows.append(("safety margin", r["safety_margin"],
                     f"({SAFETY_FRACTION:.0%} of max_connections, at least {SAFETY_MIN})"))
        rows.append(("reserve", r["reserve"], "(the three above)"))
    else:
        rows.append(("reserve", r["reserve"], "(--reserve)"))
    rows.append(("usable by application pools", r["usable_connections"], "(max_connections - reserve)"))
    for label, value, note in rows:
        lines.append(f"  {label:<32}{value:>6}  {note}".rstrip())

    lines += ["", f"Client connections now: {r['current_connections']} (not counting this one)"]
    if r["by_state"]:
        lines.append("  by state: " + ", ".join(f"{s} {n}" for s, n in r["by_state"].items()))
    if r["by_application"]:
        lines.append("  by application_name:")
        apps = list(r["by_application"].items())
        width = min(40, max(len(_app_label(a)) for a, _ in apps))
        for app, d in apps[:15]:
            states = ", ".join(f"{s} {n}" for s, n in d.items() if s != "total")
            lines.append(f"    {_app_label(app):<{width}}  {d['total']:>5}  ({states})")
        if len(apps) > 15:
            lines.append(f"    ... {len(apps) - 15} more")

    n, usable, reserve = r["processes"], r["usable_connections"], r["reserve"]
    lines += [
        "",
        f"Recommendation for {n} process{'es' if n != 1 else ''} (every process with a pool, on every host):",
        f"  max_size = (max_connections - reserve) / processes = ({r['max_connections']} - {reserve}) / {n}"
        f" = {r['recommended_max_size']} per process",
    ]
    if r["recommended_max_size"] >= 1:
        lines.append(f"  e.g. fastpool.Pool(dsn, max_size={r['recommended_max_size']})")

    lines += [""]
    if r["warnings"]:
        lines.append("Warnings")
        for w in r["warnings"]:
            lines.append(f"  ! [{w['code']}] {w['message']}")
    else:
        lines.append("No warnings.")
    return "\n".join(lines) + "\n"
