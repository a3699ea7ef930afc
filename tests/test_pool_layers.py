"""The two layers of a pool, policy (``fastpool.pool``) and core (``_core`` / ``_core_py``), share
one object: a name both assign would silently become one attribute.

That happened: both assigned ``self._lock``; on the Python core the core's lock replaced the
policy's, so code holding the policy's lock and calling into the core (``_counts()``) deadlocked.
"""

from __future__ import annotations

import ast
import inspect
import re
import threading
from pathlib import Path
from typing import Any, Callable, Set, Tuple

import pytest

from fastpool import _impl

# The core's methods the policy overrides on purpose: the core's slow-path callbacks.
POLICY_HOOKS = {
    "_on_miss", "_default_timeout", "_on_return", "_healthy_for_handout", "_retire", "_grow",
    "_on_checkout", "_on_reclaim", "_on_tick",
}
# Class attributes the policy sets on the per-core class on purpose (see pool_class).
POLICY_OVERRIDES = {"misuse_error"}


def test_holding_the_policy_lock_while_calling_the_core_does_not_deadlock(
    make_pool: Callable[..., Any],
) -> None:
    pool = make_pool(min_size=0, max_size=2)
    done = threading.Event()

    def hold_and_call() -> None:
        with pool._policy_lock:
            pool._counts()  # the Python core takes its own lock here
        done.set()

    t = threading.Thread(target=hold_and_call, daemon=True)
    t.start()
    # A deadlock never ends; the work itself takes microseconds.
    t.join(30)
    if not done.is_set():
        pool._policy_lock.release()  # let the stuck thread (and the pool's close()) go on
        t.join(5)
        pytest.fail("holding the policy's lock while calling into the core deadlocked")


def _class_names(path: str, class_name: str) -> Tuple[Set[str], Set[str]]:
    """(methods and class attributes, instance attributes assigned as self.X) of one class."""
    tree = ast.parse(Path(path).read_text())
    members: Set[str] = set()
    assigned: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    members.add(item.name)
                elif isinstance(item, ast.Assign):
                    members.update(t.id for t in item.targets if isinstance(t, ast.Name))
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
            for sub in ast.walk(node):
                targets: list[ast.expr] = []
                if isinstance(sub, ast.Assign):
                    targets = list(sub.targets)
                elif isinstance(sub, (ast.AnnAssign, ast.AugAssign)):
                    targets = [sub.target]
                for t in targets:
                    for el in ast.walk(t):
                        if (isinstance(el, ast.Attribute) and isinstance(el.value, ast.Name)
                                and el.value.id == "self"):
                            assigned.add(el.attr)
    return members, assigned


def _policy_names() -> Tuple[Set[str], Set[str]]:
    from fastpool import Pool

    members: Set[str] = set()
    assigned: Set[str] = set()
    for klass in Pool.__mro__:
        if klass is object or klass.__module__ == "typing":
            continue
        m, a = _class_names(inspect.getsourcefile(klass) or "", klass.__name__)
        members |= m
        assigned |= a
    return members, assigned


def _core_names(impl: str) -> Set[str]:
    core = _impl.load(impl)
    names = {n for n in dir(core.Core) if not (n.startswith("__") and n.endswith("__"))}
    source = Path(core.__file__)
    if impl == "python":
        # fastpool._core_py runs _core.py, the one source of both cores
        members, assigned = _class_names(str(source.with_name("_core.py")), "Core")
        names |= members | assigned
    else:
        # C attributes (cdef, invisible from Python) are separate storage from a subclass's
        # __dict__, but one name meaning two things is the same trap for a reader: the .pxd
        # declares them when the sources are at hand (an editable or source install).
        pxd = source.with_name("_core.pxd")
        if pxd.exists():
            body = pxd.read_text().split("cdef class Core", 1)[-1]
            names |= set(re.findall(r"^\s+cdef (?:public |readonly )?[\w *]+?\b(\w+)\s*(?:#.*)?$",
                                    body, re.M))
    return names


def test_no_name_is_assigned_by_both_layers(impl: str) -> None:
    members, assigned = _policy_names()
    core = _core_names(impl)
    assert "_policy_lock" in assigned  # the walk sees the policy's assignments at all
    assert "getconn" in core and (impl == "c" or "_state" in core)  # ... and the core's
    clash = (assigned & core) - POLICY_OVERRIDES
    assert not clash, f"assigned by the policy and defined by the {impl} core: {sorted(clash)}"
    overridden = (members & core) - POLICY_OVERRIDES
    assert overridden == POLICY_HOOKS, (
        f"the policy overrides {sorted(overridden - POLICY_HOOKS)} of the {impl} core by accident"
        if overridden - POLICY_HOOKS else
        f"the policy no longer implements the hooks {sorted(POLICY_HOOKS - overridden)}"
    )


# -- one static class, the core mixed in --------------------------------------------------------


def test_pool_is_one_class_whichever_core(impl: str, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import fastpool

    monkeypatch.setattr(_impl, "impl", impl)  # as FASTPOOL_IMPL would choose it
    with fastpool.Pool(dsn, min_size=0, max_size=1) as pool:
        assert isinstance(pool, fastpool.Pool)
        assert pool._core_impl == impl
        core = _impl.load(impl).Core
        assert isinstance(pool, core)
        # The core's own getconn/putconn, not a Python wrapper: the cycle stays the core's.
        assert type(pool).getconn is core.getconn
        assert type(pool).putconn is core.putconn
        conn = pool.getconn()
        pool.putconn(conn)
    # pool_class(impl) is the same class Pool(...) instantiates
    from fastpool.pool import pool_class

    assert pool_class(impl) is type(pool)


def test_help_shows_the_options() -> None:
    import inspect
    import pydoc

    import fastpool

    params = inspect.signature(fastpool.Pool).parameters
    for name in ("conninfo", "connect", "kwargs", "min_size", "max_size", "timeout", "max_waiting",
                 "max_lifetime", "max_idle", "reconnect_timeout", "reconnect_failed", "configure",
                 "reset", "check", "leak_timeout", "green", "name", "open", "lifo"):
        assert name in params, name
    text = pydoc.render_doc(fastpool.Pool)
    assert "max_waiting: callers allowed to wait" in text
    assert "getconn(timeout=None)" in text
    assert "Policy mixin" not in text


def test_a_subclass_of_pool_keeps_its_overrides(impl: str, dsn: str) -> None:
    """A user's subclass gets the core mixed in after it, so its own methods win."""
    import fastpool
    from fastpool.pool import _with_core

    calls = []

    class Counting(fastpool.Pool):  # type: ignore[type-arg]
        def getconn(self, timeout: Any = None) -> Any:
            calls.append(timeout)
            return super().getconn(timeout)

    pool = _with_core(Counting, impl)(dsn, min_size=0, max_size=1)
    try:
        assert isinstance(pool, Counting) and isinstance(pool, fastpool.Pool)
        assert pool._core_impl == impl
        pool.putconn(pool.getconn(7))
        assert calls == [7]
    finally:
        pool.close()
    plain = Counting(dsn, min_size=0, max_size=1, open=False)  # the selected core
    assert plain._core_impl == _impl.impl
    plain.close()
