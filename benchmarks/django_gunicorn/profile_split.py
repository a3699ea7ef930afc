"""Split a worker's py-spy samples into where a seed-scenario request spends its CPU.

``py-spy record --format raw`` writes one line per distinct stack: ``frame;frame;...;leaf N``
(outermost first; a Python frame is ``function (path/file.py:line)``, a native one with
``--native`` is ``symbol (library.so)`` or just ``symbol``). Each sample goes to exactly one
bucket, so the buckets add up to the worker's on-CPU samples (py-spy leaves idle samples out:
a worker blocked in epoll_wait is not sampled):

``hub``       the innermost frame is gevent / eventlet / greenlet code (the hub's loop, a
              switch, a Waiter, a green socket's retry): the price of cooperating, whoever
              asked for it;
``wait-cb``   psycopg2's wait callback or psycopg 3's wait function (psycogreen,
              fastpool.green, psycopg.waiting) and what it calls, except the hub;
``driver``    the DB-API driver: psycopg2 / psycopg / libpq frames, and a leaf in Django's
              cursor wrapper or the view (without ``--native`` a C call such as psycopg2's
              ``execute`` shows as its Python caller's frame);
``pool``      the pool: fastpool/, django_fastpool/, psycopg_pool/, django_db_geventpool/;
``django-db`` Django's DB layer: django/db/ (connect, init_connection_state, cursor
              wrappers, close_old_connections, transaction state) -- the per-request
              connection bookkeeping any backend pays;
``django``    the rest of Django: handler, middleware, URL resolving, request/response,
              signals dispatch;
``http``      the WSGI server: gunicorn / gevent.pywsgi / eventlet.wsgi, wsgiref, http.*,
              email parsing of headers;
``other``     everything else (logging, stdlib without a known caller, start-up).

A sample's bucket is that of its innermost frame with a known bucket: a stdlib frame
(``threading``, ``socket``, ``selectors`` ...) counts for the code that called it. ``hub`` wins
only at the leaf, so time in, say, a Django frame that then switched to the hub is counted for
the hub only while the hub itself runs.

Usage: ``python profile_split.py RAW [RAW ...]`` prints a table per file (shares of samples).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

BUCKETS = ("http", "django", "django-db", "driver", "wait-cb", "pool", "hub", "other")

# A frame is "function (path:line)"; py-spy prints paths relative to sys.path ("gevent/hub.py",
# "fastpool/pool.py"), native frames "symbol (library)". First match wins, order matters.
_P = r"(?:^|[ (/])"
_RULES: List[Tuple[str, "re.Pattern[str]"]] = [(b, re.compile(p)) for b, p in (
    # the psycopg2 wait callbacks and psycopg 3's wait functions (fastpool's own included)
    ("wait-cb", _P + r"psycogreen/|_gevent_wait_callback|_eventlet_wait_callback|_eventlet_read |"
                r"_eventlet_write |_WorkerSafe|_drive \(|_native_wait_fd|" + _P + r"psycopg/waiting\.py"),
    ("pool", _P + r"django_fastpool/|" + _P + r"fastpool/|fastpool\._core|psycopg_pool/|django_db_geventpool/"),
    ("driver", _P + r"psycopg2/|_psycopg|" + _P + r"psycopg/|psycopg_c/|libpq|\bPQ[a-zA-Z]+|\bpq_[a-z]|conn_poll|"
               r"pq_execute|psyco_"),
    # gevent's / eventlet's green sockets: the syscall's cost counts for whoever reads or writes
    ("transparent", _P + r"gevent/_socket|" + _P + r"gevent/socket\.py|" + _P + r"gevent/_ssl|"
                    + _P + r"eventlet/greenio/|" + _P + r"eventlet/green/"),
    ("hub", _P + r"gevent/(?!pywsgi|baseserver|server)|" + _P + r"eventlet/(?!wsgi)|greenlet|libev|\bev_[a-z]+|"
            r"epoll_wait|corecext"),
    ("http", _P + r"gunicorn/|gevent/pywsgi|gevent/baseserver|gevent/server|eventlet/wsgi|wsgiref/|"
             + _P + r"http/(client|server)|" + _P + r"email/|" + _P + r"ipaddress\.py|urllib/parse|eventlet_server\.py"),
    ("django-db", _P + r"django/db/"),
    ("django", _P + r"django/|" + _P + r"asgiref/"),
)]

# Without --native a C call is charged to the Python line that made it. These lines call the
# driver in C (psycopg2's cursor.execute / fetchone, and so libpq and the socket syscalls):
_DRIVER_CALL_SITES = re.compile(
    r"(?:^|\.)(_execute|execute|executemany|fetchone|fetchall|view) \((?:.*/)?"
    r"(django/db/backends/utils\.py|fastpool/tracking\.py|app\.py):\d+\)")


def bucket_of(frame: str) -> Optional[str]:
    for name, rx in _RULES:
        if rx.search(frame):
            return name
    return None


# A leaf line that hands control to the hub (gevent's waits and switches are compiled, so they
# never show as frames of their own: their cost is charged to the Python line that called them).
_HUB_CALL = re.compile(r"\.(_wait|wait|switch|wait_read|wait_write|trampoline|sleep|_wait_on_socket)\(|"
                       r"^\s*(return\s+)?(wait_read|wait_write|trampoline|sleep|_wait)\(")
# A background OS thread (fastpool's workers, a doorbell) asleep on a lock or in select/poll:
# py-spy --nonblocking cannot always tell that it is idle, so it is dropped from the total.
_IDLE_ROOT = re.compile(r"^(Workers\._run|_EventletDoorbell\._serve|Thread\._bootstrap|_bootstrap) ")
_IDLE_LINE = re.compile(r"\.acquire\(|\.wait\(|select\(|\.poll\(|\.get\(")
_FRAME = re.compile(r"\((.+):(\d+)\)$")
_lines: Dict[Tuple[str, int], str] = {}


def _package_parent(relpath: str) -> List[str]:
    """Where an editable install's package lives (not on sys.path: a finder hook knows it)."""
    import importlib.util

    top = relpath.split("/", 1)[0]
    if not top.isidentifier():
        return []
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return []
    locs = list(spec.submodule_search_locations or []) if spec else []
    return [str(Path(loc).parent) for loc in locs]


def _line_text(frame: str) -> str:
    """The source line a Python frame is on (found on this interpreter's sys.path), or ''."""
    m = _FRAME.search(frame)
    if not m:
        return ""
    key = (m.group(1), int(m.group(2)))
    if key not in _lines:
        text = ""
        for base in [""] + sys.path + _package_parent(key[0]):
            f = Path(base) / key[0]
            if f.is_file():
                try:
                    text = f.read_text(errors="replace").splitlines()[key[1] - 1]
                except (OSError, IndexError):
                    pass
                break
        _lines[key] = text
    return _lines[key]


def classify(frames: List[str]) -> Tuple[str, str]:
    """One stack, outermost frame first -> (its bucket, for the hub: whose wait or switch it was,
    the bucket of the innermost non-hub frame; else the bucket again)."""
    if not frames:
        return "other", "other"
    leaf = frames[-1]
    if _IDLE_ROOT.search(frames[0]) and _IDLE_LINE.search(_line_text(leaf)):
        return "idle", "idle"
    lb = bucket_of(leaf)
    hub = lb == "hub" or bool(_HUB_CALL.search(_line_text(leaf)))
    if not hub and lb not in ("wait-cb", "driver") and _DRIVER_CALL_SITES.search(leaf):
        return "driver", "driver"
    owner = "other"
    for f in reversed(frames):
        if f is not leaf and _DRIVER_CALL_SITES.search(f):
            owner = "driver"  # stdlib code (a codec) that the C driver call itself ran
            break
        b = bucket_of(f)
        if b == "hub" and f is not leaf and not hub:
            return "hub", "hub-loop"  # a stdlib/transparent leaf under the hub's own code
        if b is not None and b not in ("transparent", "hub"):
            owner = b
            break
    if hub:
        return "hub", owner if owner != "other" else "hub-loop"
    return owner, owner


def split(path: Path) -> Tuple[int, Dict[str, int]]:
    """Samples per bucket, plus ``hub<-OWNER`` keys: the hub's samples by whose wait it was."""
    counts = {b: 0 for b in BUCKETS}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        try:
            k = int(n)
        except ValueError:
            continue
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        b, owner = classify(frames)
        if b == "idle":
            counts["idle (not counted)"] = counts.get("idle (not counted)", 0) + k
            continue
        counts[b] += k
        if b == "hub":
            counts[f"hub<-{owner}"] = counts.get(f"hub<-{owner}", 0) + k
        total += k
    return total, counts


def fmt_split(total: int, counts: Dict[str, int]) -> str:
    if not total:
        return "(no samples)"
    return " ".join(f"{b} {100 * n / total:.1f}%" for b, n in counts.items())


if __name__ == "__main__":
    for p in sys.argv[1:]:
        t, c = split(Path(p))
        print(f"{p}: {t} samples: {fmt_split(t, c)}")
