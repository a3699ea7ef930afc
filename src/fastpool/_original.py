"""The real OS-thread primitives, even after gevent or eventlet monkey-patched ``_thread``.

The pool's own machinery (its background threads and the short critical sections of its
bookkeeping) must behave the same whether or not, and whenever, the process was monkey-patched:
a pool may be created before patching (gunicorn ``--preload``) and used after. Only a *caller*
that waits for a connection cooperates with its hub (see :mod:`fastpool.green`); nothing else
ever switches greenlets, so no lock here is held across a switch.
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
