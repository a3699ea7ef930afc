"""The real OS-thread primitives, even after gevent or eventlet monkey-patched ``_thread``.

**The threading rule** (one for all of fastpool: ``src/fastpool`` and ``django_fastpool``; RELIABILITY.md
"Threads, locks and greenlets" says it for users, ``tests/test_threading_rule.py`` enforces it):

1. Threads fastpool starts are real OS threads (:func:`start_new_thread`, only in
   :mod:`fastpool.workers`); they never sleep with ``time.sleep`` but wait on real locks.
2. Every lock fastpool creates is a real OS lock (:func:`allocate_lock`), whenever the module or
   object is created -- before or after patching makes no difference. The pool's own threads take
   these locks (connects, maintenance, a watchdog firing on the timer thread), as may any thread a
   user calls from. A gevent or eventlet lock is a greenlet primitive: contended from an OS thread
   other than its hub's, gevent's waits until that hub runs again and eventlet's never returns
   ("Cannot switch to a different thread") -- a watchdog would not fire while the thread it must
   rescue is blocked in libpq. Nor does that thread touch a patched ``socket`` or ``select``
   (gevent's make a hub in the thread that uses them).
3. Hence: **code holding a lock never switches greenlets** -- no I/O, no waiting, no user callback
   while it is held. A greenlet that switched away holding a real lock would leave the next
   greenlet of its thread blocking the whole thread on that lock, the hub included: a deadlock.
4. Cooperation belongs to a *caller that waits* and nowhere else: a caller waiting for a
   connection (:mod:`fastpool.green`, :mod:`fastpool.waiting`) or for ``min_size``
   (``Pool.wait``'s sleep) uses what the process has *at that moment* -- its hub, or the patched
   ``_thread`` lock or ``time.sleep`` -- so other greenlets run meanwhile.

There is no exception: Django's per-alias pool registry (``django_fastpool``) holds its real lock
only for dict look-ups; its settings probe connects outside it, and a second caller of the alias
waits for that build cooperatively (rule 4).
"""

from __future__ import annotations

import _thread
import select
import sys
from typing import Any, Callable, Dict, Tuple


_cache: Dict[Tuple[str, str], Any] = {}


def _original(name: str, module: str = "_thread") -> Any:
    # An original never changes once found (patching replaces module attributes, not the
    # objects we hold), so look it up once: under gevent the lookup costs ~2 us per call.
    key = (module, name)
    found = _cache.get(key)
    if found is None:
        found = _cache[key] = _lookup(name, module)
    return found


def _lookup(name: str, module: str) -> Any:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched(module):
        return monkey.get_original(module, name)
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None and patcher.is_monkey_patched("thread" if module == "_thread" else module):
        return getattr(patcher.original(module), name)
    return getattr(_thread if module == "_thread" else select, name)


def poll() -> Any:
    """A real ``select.poll`` object (gevent replaces select.poll with a cooperative one)."""
    return _original("poll", "select")()


def allocate_lock() -> Any:
    """A real OS lock (never a greenlet lock)."""
    return _original("allocate_lock")()


def start_new_thread(fn: Callable[..., Any], args: Tuple[Any, ...]) -> int:
    """Start a real OS thread (never a greenlet)."""
    ident: int = _original("start_new_thread")(fn, args)
    return ident


def get_ident() -> int:
    """The real OS thread id."""
    ident: int = _original("get_ident")()
    return ident
