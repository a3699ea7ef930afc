"""Mechanism tests of the core ring (``_core.py``), compiled (``fastpool._core``) and interpreted.

No database here: the ring is driven through a minimal policy subclass (``Ring``) with FAKE
connection objects. This is the only test module allowed to use fakes, because it tests the
slots / free list / waiter queue / clock / counters, not PostgreSQL behaviour.

Every test runs once per core (ids ``c`` and ``py``); ``FASTPOOL_IMPL=c|python`` runs one only.
"""

from __future__ import annotations

import gc
import itertools
import math
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from fastpool import _impl, _states
from fastpool._states import (
    CANCELLED,
    CLOSED,
    CONNECTING,
    DONE,
    EMPTY,
    ENQUEUED,
    FAILED,
    FULL,
    HANDED,
    IDLE,
    IN_USE,
    RESERVED,
    RETRY,
    WAITING,
)

INF = math.inf

_MODULES = {"c": "fastpool._core", "python": "fastpool._core_py"}
_IDS = {"c": "c", "python": "py"}


def _selected() -> List[str]:
    wanted = os.environ.get("FASTPOOL_IMPL", "").strip().lower()
    return [wanted] if wanted in _MODULES else ["c", "python"]


@pytest.fixture(params=_selected(), ids=[_IDS[n] for n in _selected()])
def core_mod(request: pytest.FixtureRequest) -> Any:
    try:
        return _impl.load(request.param)
    except ImportError as exc:  # a missing extension is a build bug: fail, never skip
        pytest.fail(f"cannot import {_MODULES[request.param]}: {exc!r}", pytrace=False)


# --------------------------------------------------------------------------------------------
# fakes and the test policy


class Misuse(Exception):
    pass


class Closed(Exception):
    pass


class Timeout(Exception):
    pass


class TooMany(Exception):
    pass


_serial = itertools.count()


class FakeConn:
    """Weak-referenceable fake: ``closed`` (alive_attr), ``status`` (attribute probe),
    ``txn()`` (method probe; ``on_probe`` runs inside it when set)."""

    def __init__(self, closed: int = 0) -> None:
        self.closed = closed
        self.status = 0
        self.txn_value = 0
        self.on_probe: Any = None
        self.gen = 0
        self.expired = False
        self.n = next(_serial)

    def txn(self) -> int:
        if self.on_probe is not None:
            self.on_probe()
        return self.txn_value

    def __repr__(self) -> str:
        return f"<FakeConn {self.n}>"


class SlotConn:
    """Not weak-referenceable (``__slots__`` without ``__weakref__``)."""

    __slots__ = ("closed", "status", "n")

    def __init__(self) -> None:
        self.closed = 0
        self.status = 0
        self.n = next(_serial)


_ring_classes: Dict[Any, type] = {}


def ring_class(core_mod: Any) -> type:
    cls = _ring_classes.get(core_mod)
    if cls is not None:
        return cls

    class Ring(core_mod.Core):  # type: ignore[name-defined,misc]
        """Minimal policy: enough hooks to drive every transition of the ring."""

        misuse_error = Misuse

        def setup(
            self,
            capacity: int,
            lifo: bool = True,
            *,
            check_after: float = INF,
            probes: tuple = (),
            alive_attr: Optional[str] = "closed",
            always_slow: bool = False,
            track: bool = False,
            auto_fill: bool = False,
            timeout: float = 0.02,
            max_waiting: int = 0,
        ) -> "Ring":
            self.mod = core_mod
            self.auto_fill = auto_fill  # _grow fills synchronously with a new FakeConn
            self.timeout = timeout  # default wait of _on_miss
            self.max_waiting = max_waiting
            self.nonblocking = False  # _on_miss returns None without queueing
            self.defer = False  # _on_return / _retire park the RESERVED slot in self.reserved
            self.vet_result = True
            self.retired: List[Any] = []
            self.returns: List[int] = []  # slots seen by _on_return
            self.current_at_return: List[bool] = []
            self.grown: List[int] = []  # every slot passed to _grow
            self.connecting: List[int] = []  # CONNECTING slots not filled yet (auto_fill off)
            self.reserved: List[tuple] = []  # (slot, conn) parked when defer is on
            self.vetted: List[tuple] = []
            self.checkouts: List[int] = []
            self.reclaimed: List[int] = []
            self.misses = 0
            self._core_setup(capacity, lifo)
            self._core_configure(check_after, tuple(probes), alive_attr, always_slow, track)
            self._open_core()
            return self

        # -- helpers used by the tests --
        def add(self, conn: Any = None, expiry: float = INF) -> Any:
            """Reserve a slot and fill it (IDLE, or handed to the first waiter)."""
            conn = FakeConn() if conn is None else conn
            slot = self._reserve()
            assert slot >= 0, "no room to add a connection"
            assert self._fill(slot, conn, expiry) is True
            return conn

        # -- policy hooks --
        def _on_miss(self, timeout: Optional[float], spent: float = 0.0) -> Any:
            self.misses += 1
            if self.nonblocking:
                return None
            if self._core_closed():
                raise Closed("closed")
            if self._dead:
                self._drain_dead()
            wait_for = self.timeout if timeout is None else timeout
            deadline = time.monotonic() + wait_for
            while True:
                lock = threading.Lock()
                lock.acquire()
                waiter = core_mod.Waiter(lock.release)
                r = self._enqueue(waiter, self.max_waiting)
                if r == RETRY:
                    conn = self._try_get()
                    if conn is not None:
                        return conn
                    continue
                if r == FULL:
                    raise TooMany("too many waiting")
                break
            lock.acquire(True, max(0.0, deadline - time.monotonic()))
            conn = self._claim(waiter)
            if conn is not None:
                return conn
            if waiter.state == CLOSED:
                raise Closed("closed while waiting")
            raise Timeout("timed out")

        def _on_return(self, slot: int, conn: Any) -> None:
            self.returns.append(slot)
            self.current_at_return.append(self._slot_current(slot))
            if self.defer:
                self.reserved.append((slot, conn))
                return
            if self._core_closed() or not self._slot_current(slot) or getattr(conn, "status", 0):
                self._retire(slot, conn)
            elif not self._restore(slot):
                self._retire(slot, conn)

        def _retire(self, slot: int, conn: Any) -> None:
            self.retired.append(conn)
            if self.defer:
                self.reserved.append((slot, conn))
                return
            self._release(slot)

        def _grow(self, slot: int) -> None:
            self.grown.append(slot)
            if self.auto_fill:
                self._fill(slot, FakeConn(), INF)
            else:
                self.connecting.append(slot)

        def _healthy_for_handout(self, conn: Any, idle: float, remaining: float = 0.0) -> bool:
            self.vetted.append((conn, idle))
            return self.vet_result

        def _on_checkout(self, slot: int) -> None:
            self.checkouts.append(slot)

        def _on_reclaim(self, slot: int) -> None:
            self.reclaimed.append(slot)

    _ring_classes[core_mod] = Ring
    return Ring


@pytest.fixture
def make(core_mod: Any) -> Any:
    """``make(capacity, lifo=True, **options)`` -> an open Ring on the core under test."""

    def factory(capacity: int, lifo: bool = True, **options: Any) -> Any:
        return ring_class(core_mod)().setup(capacity, lifo, **options)

    return factory


def counts(ring: Any) -> Dict[str, int]:
    return ring._counts()


def snapshot(ring: Any) -> tuple:
    c = counts(ring)
    return (tuple(ring._slot_states()), c["size"], c["idle"], c["connecting"], c["waiting"])


def waiter(core_mod: Any, log: Optional[list] = None, tag: Any = None) -> Any:
    """A Waiter whose wake() only records that it was called."""
    return core_mod.Waiter((lambda: log.append(tag)) if log is not None else (lambda: None))


# --------------------------------------------------------------------------------------------
# order of the free list


def test_lifo_hands_out_most_recently_returned(make: Any) -> None:
    ring = make(4, lifo=True)
    a, b, c = ring.add(), ring.add(), ring.add()
    assert ring.getconn() is c  # newest fill first
    got = [ring.getconn(), ring.getconn()]
    assert got == [b, a]
    ring.putconn(a)
    ring.putconn(b)
    assert ring.getconn() is b  # most recently returned
    ring.putconn(c)
    assert ring.getconn() is c
    assert ring.getconn() is a
    ring._check_invariants()


def test_fifo_hands_out_the_oldest(make: Any) -> None:
    ring = make(4, lifo=False)
    a, b, c = ring.add(), ring.add(), ring.add()
    assert ring.getconn() is a
    ring.putconn(a)  # free list now b, c, a
    assert [ring.getconn(), ring.getconn(), ring.getconn()] == [b, c, a]
    for x in (c, a, b):
        ring.putconn(x)
    assert [ring.getconn(), ring.getconn(), ring.getconn()] == [c, a, b]
    ring._check_invariants()


def test_state_numbers_agree(core_mod: Any) -> None:
    """The core runs with the numbers fastpool._states names: the compiled core's C enums
    (_core.pxd) cannot drift from them."""
    named = {k: v for k, v in vars(_states).items() if k.isupper()}
    assert core_mod._NUMBERS == named


def test_both_cores_run_one_source() -> None:
    """No twin to keep in step: the compiled core is Cython's build of _core.py and the Python
    core is the interpreter running the same file; there is no other core source."""
    source = Path(_impl.__file__).with_name("_core.py")
    interpreted = _impl.load("python")
    assert interpreted.COMPILED is False
    assert Path(interpreted.Core.getconn.__code__.co_filename) == source
    assert not list(source.parent.glob("_core*.pyx"))
    if "c" not in _selected():
        return
    compiled = _impl.load("c")
    assert compiled.COMPILED is True
    # Cython records the file it compiled in each function's code object.
    assert Path(compiled.Core.getconn.__code__.co_filename).parts[-2:] == ("fastpool", "_core.py")
    # Every method the compiled core exposes is one the interpreted core has (the compiled one
    # hides its C-only helpers, nothing else).
    methods = {n for n, v in vars(compiled.Core).items() if callable(v) and not n.startswith("__")}
    assert methods and methods <= set(vars(interpreted.Core)), methods - set(vars(interpreted.Core))


def test_counts_and_slot_states(make: Any) -> None:
    ring = make(3)
    assert snapshot(ring) == ((EMPTY,) * 3, 0, 0, 0, 0)
    s = ring._reserve()
    assert ring._slot_states()[s] == CONNECTING and counts(ring)["connecting"] == 1
    conn = FakeConn()
    assert ring._fill(s, conn, INF) is True
    assert ring._slot_states()[s] == IDLE and ring._slot_for(conn) == s
    assert counts(ring)["idle"] == 1 and counts(ring)["size"] == 1
    assert ring.getconn() is conn
    assert ring._slot_states()[s] == IN_USE and counts(ring)["idle"] == 0
    ring.putconn(conn)
    assert ring._slot_states()[s] == IDLE
    assert counts(ring)["requests_num"] == 1
    ring._check_invariants()


# --------------------------------------------------------------------------------------------
# bounds, and a randomized walk against a model


def test_reserve_returns_minus_one_at_max(make: Any) -> None:
    ring = make(3)
    slots = [ring._reserve() for _ in range(3)]
    assert sorted(slots) == [0, 1, 2]
    assert ring._reserve() == -1
    assert counts(ring)["size"] == 3
    ring._fill_failed(slots[0])
    assert ring._reserve() == slots[0]
    ring._set_max(2)  # shrink below size: nothing new may be reserved
    assert ring._reserve() == -1
    ring._fill_failed(slots[1])
    assert ring._reserve() == -1  # size 2 == max 2
    ring._check_invariants()


class Model:
    """Expected state of the ring for the randomized walk (deterministic expiries only)."""

    def __init__(self, lifo: bool) -> None:
        self.lifo = lifo
        self.free: List[Any] = []  # conns, oldest push first
        self.queue: List[Any] = []  # waiters in enqueue order (WAITING ones matter)
        self.gen = 0

    def first_waiter(self) -> Optional[Any]:
        """Who gets the next restored connection (call BEFORE the transition)."""
        while self.queue and self.queue[0].state != WAITING:
            self.queue.pop(0)  # cancelled: skipped
        return self.queue[0] if self.queue else None

    def put_back(self, conn: Any, target: Optional[Any]) -> None:
        """After the transition: ``conn`` went to ``target`` or to the free list."""
        if target is None:
            self.free.append(conn)
            return
        assert self.queue.pop(0) is target
        assert target.state == HANDED and target.conn is conn, "handoff went to the wrong waiter"


@pytest.mark.parametrize("lifo", [True, False], ids=["lifo", "fifo"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_randomized_walk_keeps_invariants(make: Any, core_mod: Any, lifo: bool, seed: int) -> None:
    rnd = random.Random(seed)
    ring = make(4, lifo=lifo, probes=(("status", 0, False), ("txn", 0, True)))
    ring.nonblocking = True
    ring.defer = True
    m = Model(lifo)
    borrowed: Dict[int, Any] = {}  # id -> conn held by "the application"
    waiters: List[Any] = []  # enqueued, not yet claimed
    dead_slots: List[int] = []
    reserved_gen: Dict[int, int] = {}  # CONNECTING slot -> generation its attempt started in
    ops = ("get", "get", "put", "put", "fill", "fill", "fill_failed", "take_idle", "restore",
           "restore", "release", "set_max", "bump_generation", "enqueue", "enqueue", "claim",
           "reserve", "drop")

    def now() -> float:
        return ring._now()

    def in_use_slots_expected() -> set:
        slots = {ring._slot_for(c) for c in borrowed.values()}
        slots |= {ring._slot_for(w.conn) for w in waiters if w.state == HANDED}
        return slots

    for step in range(2500):
        # no stray strong references to a borrowed conn (the "drop" op relies on it)
        got = expect = cand = conn = c = w = target = None
        op = rnd.choice(ops)
        covers = op in ("release", "set_max", "drop")  # these must grow for uncovered waiters
        before = counts(ring)
        ctx = f"seed={seed} step={step} op={op}"
        if op == "get":
            expect = None
            retired_expected = []
            while m.free:
                cand = m.free.pop() if lifo else m.free.pop(0)
                if cand.closed or cand.expired:
                    retired_expected.append(cand)
                    continue
                expect = cand
                break
            n_retired = len(ring.retired)
            got = ring.getconn()
            assert got is expect, ctx
            assert ring.retired[n_retired:] == retired_expected, ctx
            assert counts(ring)["connections_lost"] - before["connections_lost"] == sum(
                1 for c in retired_expected if c.closed
            ), ctx
            if got is None:
                assert counts(ring)["idle"] == 0, ctx
            else:
                assert id(got) not in borrowed, ctx
                borrowed[id(got)] = got
        elif op == "put" and borrowed:
            conn = borrowed.pop(rnd.choice(sorted(borrowed)))
            dirty = rnd.random() < 0.2
            if dirty:
                if rnd.random() < 0.5:
                    conn.status = 1
                else:
                    conn.txn_value = 2
            must_slow = dirty or conn.gen != m.gen or conn.expired or before["size"] > before["max"]
            n_ret = len(ring.returns)
            target = m.first_waiter()
            ring.putconn(conn)
            slow = len(ring.returns) > n_ret
            assert slow == must_slow, ctx
            if slow:
                assert ring.reserved[-1][1] is conn
                assert ring.current_at_return[-1] == (
                    conn.gen == m.gen and not conn.expired and before["size"] <= before["max"]
                ), ctx
            else:
                m.put_back(conn, target)
            dead_slots.clear()  # putconn drains dead slots first
        elif op == "fill" and ring.connecting:
            slot = ring.connecting.pop(rnd.randrange(len(ring.connecting)))
            r = rnd.random()
            expired = r < 0.15
            conn = FakeConn(closed=1 if rnd.random() < 0.07 else 0)
            conn.gen, conn.expired = m.gen, expired
            target = m.first_waiter()
            filled = ring._fill(slot, conn, now() - 1.0 if expired else INF)
            if reserved_gen.pop(slot) != m.gen:
                # drained while connecting: refused, the slot stays CONNECTING for a new attempt
                assert filled is None and ring._slot_states()[slot] == CONNECTING, ctx
                ring.connecting.append(slot)
            else:
                assert filled is True, ctx
                m.put_back(conn, target)
        elif op == "fill_failed" and ring.connecting:
            slot = ring.connecting.pop(rnd.randrange(len(ring.connecting)))
            reserved_gen.pop(slot)
            ring._fill_failed(slot)
            assert ring._slot_states()[slot] == EMPTY, ctx
        elif op == "take_idle":
            expired_at = rnd.choice([-INF, now()])
            idle_before = rnd.choice([-INF, INF])
            keep = rnd.randint(0, 5)
            size = before["size"]
            want, kept = [], []
            for c in m.free:
                if (c.expired and expired_at != -INF) or (idle_before == INF and size > keep):
                    want.append(c)
                    size -= 1
                else:
                    kept.append(c)
            m.free = kept
            taken = ring._take_idle(expired_at, idle_before, keep)
            assert [c for _, c in taken] == want, ctx
            for slot, c in taken:
                assert ring._slot_for(c) == slot, ctx
            ring.reserved.extend(taken)
        elif op == "restore" and ring.reserved:
            slot, conn = ring.reserved.pop(rnd.randrange(len(ring.reserved)))
            conn.status = conn.txn_value = 0  # "reset"
            if conn.closed or conn.expired:
                ring.reserved.append((slot, conn))  # the policy would not restore these
                continue
            target = m.first_waiter()
            assert ring._restore(slot) is True, ctx
            m.put_back(conn, target)
        elif op == "release" and ring.reserved:
            slot, conn = ring.reserved.pop(rnd.randrange(len(ring.reserved)))
            ring._release(slot)
            assert ring._slot_for(conn) == -1, ctx
        elif op == "set_max":
            ring._set_max(rnd.randint(1, 8))
        elif op == "bump_generation":
            ring._bump_generation()
            m.gen += 1
        elif op == "enqueue":
            w = waiter(core_mod)
            mw = rnd.choice([0, 0, 3])
            r = ring._enqueue(w, mw)
            if m.free:
                assert r == RETRY, ctx
            elif mw and before["waiting"] >= mw:
                assert r == FULL, ctx
            else:
                assert r == ENQUEUED, ctx
                covers = True
                waiters.append(w)
                m.queue.append(w)
        elif op == "claim" and waiters:
            w = waiters.pop(rnd.randrange(len(waiters)))
            state = w.state
            conn = ring._claim(w)
            if state == HANDED:
                assert conn is not None and w.state == DONE, ctx
                borrowed[id(conn)] = conn
            else:
                assert conn is None and w.state == CANCELLED, ctx
            assert ring._claim(w) is None, ctx
        elif op == "reserve":
            s = ring._reserve()
            if before["size"] >= before["max"]:
                assert s == -1, ctx
            else:
                assert s >= 0, ctx
                ring.connecting.append(s)
        elif op == "drop" and borrowed:
            # the application loses a borrowed connection: the slot is reclaimed
            key = rnd.choice(sorted(borrowed))
            dead_slots.append(ring._slot_for(borrowed[key]))
            del borrowed[key]  # the last reference: refcounting frees it now (no gc needed)
            assert ring._drain_dead() == len(dead_slots), ctx
            for s in dead_slots:
                assert ring._slot_states()[s] in (EMPTY, CONNECTING), ctx
            dead_slots.clear()
        else:
            continue

        # -- after every operation --
        for s in ring.connecting:
            reserved_gen.setdefault(s, m.gen)  # reserved by this op (none bumps and reserves)
        ring._check_invariants()
        after = counts(ring)
        states = ring._slot_states()
        if after["size"] > before["size"]:
            assert after["size"] <= after["max"], f"{ctx}: grew past max"
        assert after["idle"] == len(m.free), ctx
        assert {i for i, s in enumerate(states) if s == CONNECTING} == set(ring.connecting), ctx
        assert {i for i, s in enumerate(states) if s == RESERVED} == {s for s, _ in ring.reserved}, ctx
        assert {i for i, s in enumerate(states) if s == IN_USE} == in_use_slots_expected(), ctx
        assert after["waiting"] == sum(1 for w in waiters if w.state == WAITING), ctx
        if covers:
            # every waiter is covered by a connection being made, as far as max allows
            assert not (after["waiting"] > after["connecting"] and after["size"] < after["max"]), ctx

    # -- close everything down: the ring ends empty --
    ring.defer = False
    failed = ring._close_core()
    assert all(w.state == CLOSED for w in failed)
    assert counts(ring)["waiting"] == 0
    for slot, conn in list(ring.reserved):
        assert ring._restore(slot) is False  # closed: stays RESERVED, the policy retires it
        ring._release(slot)
    ring.reserved.clear()
    for slot in ring.connecting:
        assert ring._fill(slot, FakeConn(), INF) is False
    ring.connecting.clear()
    for w in waiters:
        conn = ring._claim(w)
        if conn is not None:
            borrowed[id(conn)] = conn
    for conn in list(borrowed.values()):
        ring.putconn(conn)  # closed: slow path, retired
    borrowed.clear()
    for slot, conn in ring._take_all_idle():
        ring._release(slot)
    ring._check_invariants()
    assert counts(ring)["size"] == 0
    assert set(ring._slot_states()) == {EMPTY}


# --------------------------------------------------------------------------------------------
# direct handoff and the waiter protocol


def test_putconn_hands_off_to_waiters_in_fifo_order(make: Any, core_mod: Any) -> None:
    ring = make(1)
    conn = ring.add()
    assert ring.getconn() is conn
    woke: list = []
    ws = [waiter(core_mod, woke, i) for i in range(3)]
    for w in ws:
        assert ring._enqueue(w, 0) == ENQUEUED
    assert ring.grown == []  # at max: nothing to grow
    assert counts(ring)["waiting"] == 3
    assert counts(ring)["requests_queued"] == 3
    for i, w in enumerate(ws):
        ring.putconn(conn)
        assert woke == list(range(i + 1))
        assert w.state == HANDED and w.conn is conn
        assert all(x.state == WAITING for x in ws[i + 1:])
        assert counts(ring)["idle"] == 0  # not to the free list
        assert ring._slot_states() == [IN_USE]
        ring._check_invariants()
        assert ring._claim(w) is conn
        assert w.state == DONE and w.conn is None
    ring.putconn(conn)  # nobody waits any more
    assert counts(ring)["idle"] == 1 and counts(ring)["waiting"] == 0
    ring._check_invariants()


def test_fill_and_restore_hand_off_to_the_first_waiter(make: Any, core_mod: Any) -> None:
    ring = make(2, probes=(("status", 0, False),))
    w1, w2 = waiter(core_mod), waiter(core_mod)
    assert ring._enqueue(w1, 0) == ENQUEUED
    assert ring._enqueue(w2, 0) == ENQUEUED
    assert len(ring.grown) == 2
    a, b = FakeConn(), FakeConn()
    assert ring._fill(ring.grown[1], a, INF)
    assert w1.state == HANDED and w1.conn is a and w2.state == WAITING
    ring.defer = True
    assert ring._claim(w1) is a
    a.status = 1
    ring.putconn(a)  # dirty: slow path, parked RESERVED
    (slot, conn), = ring.reserved
    assert conn is a and w2.state == WAITING
    assert ring._restore(slot) is True
    assert w2.state == HANDED and w2.conn is a
    assert ring._fill(ring.grown[0], b, INF)  # nobody waits: to the free list
    assert counts(ring)["idle"] == 1
    ring._check_invariants()


def test_claim_exactly_once(make: Any, core_mod: Any) -> None:
    ring = make(1)
    conn = ring.add()
    assert ring.getconn() is conn
    w1, w2, w3 = waiter(core_mod), waiter(core_mod), waiter(core_mod)
    for w in (w1, w2, w3):
        assert ring._enqueue(w, 0) == ENQUEUED
    # a WAITING waiter that gives up is cancelled
    assert ring._claim(w1) is None
    assert w1.state == CANCELLED
    assert counts(ring)["waiting"] == 2
    assert ring._claim(w1) is None and w1.state == CANCELLED
    assert counts(ring)["waiting"] == 2  # not decremented twice
    ring._check_invariants()
    # putconn skips the cancelled waiter
    ring.putconn(conn)
    assert w1.state == CANCELLED and w1.conn is None
    assert w2.state == HANDED and w2.conn is conn
    assert ring._claim(w2) is conn
    assert ring._claim(w2) is None  # second claim: nothing
    assert w2.state == DONE
    # cancel the last one: the next return goes to the free list
    assert ring._claim(w3) is None
    assert counts(ring)["waiting"] == 0
    ring.putconn(conn)
    assert counts(ring)["idle"] == 1
    assert w3.state == CANCELLED and w3.conn is None
    ring._check_invariants()


def test_fail_waiters_fails_each_waiting_one_once_and_keeps_the_pool_open(make: Any, core_mod: Any) -> None:
    ring = make(1)
    conn = ring.add()
    assert ring.getconn() is conn
    log: list = []
    w1, w2, w3 = (waiter(core_mod, log, tag) for tag in (1, 2, 3))
    for w in (w1, w2, w3):
        assert ring._enqueue(w, 0) == ENQUEUED
    assert ring._claim(w2) is None  # gave up first: stays CANCELLED, not failed again
    assert ring._fail_waiters() == [w1, w3]
    assert (w1.state, w2.state, w3.state) == (FAILED, CANCELLED, FAILED)
    assert log == []  # waking is the policy's job
    assert counts(ring)["waiting"] == 0
    assert ring._claim(w1) is None and w1.state == FAILED  # a failed waiter gets nothing
    assert ring._fail_waiters() == []
    ring._check_invariants()
    # the pool is still open: a new waiter queues and the next return goes to it
    w4 = waiter(core_mod)
    assert ring._enqueue(w4, 0) == ENQUEUED
    ring.putconn(conn)
    assert ring._claim(w4) is conn
    ring._check_invariants()


def test_enqueue_results(make: Any, core_mod: Any) -> None:
    ring = make(2)
    conn = ring.add()
    assert ring._enqueue(waiter(core_mod), 0) == RETRY  # a free connection exists
    assert counts(ring)["waiting"] == 0
    assert ring.getconn() is conn
    ring._set_max(1)
    assert ring._enqueue(waiter(core_mod), 2) == ENQUEUED
    assert ring._enqueue(waiter(core_mod), 2) == ENQUEUED
    assert ring._enqueue(waiter(core_mod), 2) == FULL
    assert counts(ring)["waiting"] == 2
    assert ring._enqueue(waiter(core_mod), 0) == ENQUEUED  # 0 = unbounded
    assert counts(ring)["waiting"] == 3
    assert counts(ring)["requests_queued"] == 3
    assert ring.grown == []
    ring._check_invariants()


def test_enqueue_grows_one_slot_per_uncovered_waiter_up_to_max(make: Any, core_mod: Any) -> None:
    ring = make(3, probes=(("status", 0, False),))
    pre = ring._reserve()  # a connection already being made covers the first waiter
    ws = [waiter(core_mod) for _ in range(5)]
    assert ring._enqueue(ws[0], 0) == ENQUEUED
    assert ring.grown == []
    assert ring._enqueue(ws[1], 0) == ENQUEUED
    assert len(ring.grown) == 1
    assert ring._enqueue(ws[2], 0) == ENQUEUED
    assert len(ring.grown) == 2
    assert counts(ring)["size"] == 3
    for w in ws[3:]:
        assert ring._enqueue(w, 0) == ENQUEUED
    assert len(ring.grown) == 2  # never beyond max
    assert counts(ring)["size"] == 3 and counts(ring)["connecting"] == 3
    assert len(set(ring.grown + [pre])) == 3
    states = ring._slot_states()
    assert all(states[s] == CONNECTING for s in ring.grown + [pre])
    ring._check_invariants()
    # a failed attempt + release re-covers: a release grows for uncovered waiters
    ring._fill_failed(pre)
    conn = FakeConn()
    assert ring._fill(ring.grown[0], conn, INF)
    assert ws[0].state == HANDED and ws[0].conn is conn
    # a connect that ends re-covers the waiters: 4 waiting, 1 connecting, size 2 -> grow 1
    assert len(ring.grown) == 3
    assert ring._claim(ws[0]) is conn
    ring.defer = True
    conn.status = 1
    ring.putconn(conn)  # slow, parked (nobody else gets it)
    (slot, _), = ring.reserved
    n = len(ring.grown)
    ring._release(slot)  # 4 waiting, 2 connecting, size 2 -> grow 1 more
    assert len(ring.grown) == n + 1
    c = counts(ring)
    assert c["size"] == 3 and c["connecting"] == 3 and c["waiting"] == 4
    ring._check_invariants()


def test_set_max_grows_for_waiters(make: Any, core_mod: Any) -> None:
    ring = make(1)
    conn = ring.add()
    assert ring.getconn() is conn
    ws = [waiter(core_mod) for _ in range(3)]
    for w in ws:
        ring._enqueue(w, 0)
    assert ring.grown == []
    ring._set_max(3)
    assert len(ring.grown) == 2
    assert counts(ring)["size"] == 3 and counts(ring)["max"] == 3
    ring._check_invariants()


def test_getconn_blocks_and_times_out_then_succeeds_with_growth(make: Any) -> None:
    ring = make(1, timeout=0.02)
    conn = ring.add()
    assert ring.getconn() is conn
    with pytest.raises(Timeout):
        ring.getconn()
    assert counts(ring)["waiting"] == 0  # the timed-out waiter was cancelled
    ring.putconn(conn)
    assert counts(ring)["idle"] == 1  # not swallowed by the cancelled waiter
    ring._check_invariants()
    ring2 = make(2, auto_fill=True)
    first = ring2.getconn()  # miss -> enqueue -> _grow fills -> handed over
    assert isinstance(first, FakeConn) and ring2.misses == 1
    second = ring2.getconn()
    assert second is not first and counts(ring2)["size"] == 2
    with pytest.raises(Timeout):
        ring2.getconn()
    ring2._check_invariants()


def test_getconn_rejects_bad_timeout(make: Any) -> None:
    ring = make(1)
    for bad in (0, -1, 0.0):
        with pytest.raises(ValueError):
            ring.getconn(bad)


# --------------------------------------------------------------------------------------------
# misuse


def test_putconn_foreign_object_is_misuse(make: Any) -> None:
    ring = make(2)
    conn = ring.add()
    assert ring.getconn() is conn
    before = snapshot(ring)
    with pytest.raises(Misuse):
        ring.putconn(FakeConn())
    with pytest.raises(Misuse):
        ring.putconn(object())
    other = make(2)
    foreign = other.add()
    with pytest.raises(Misuse):
        ring.putconn(other.getconn())  # from another ring
    assert snapshot(ring) == before
    ring.putconn(conn)
    other.putconn(foreign)
    ring._check_invariants()
    other._check_invariants()


def test_putconn_twice_is_misuse(make: Any) -> None:
    ring = make(2, lifo=True)
    a, b = ring.add(), ring.add()
    assert ring.getconn() is b
    ring.putconn(b)
    before = snapshot(ring)
    with pytest.raises(Misuse):
        ring.putconn(b)
    with pytest.raises(Misuse):
        ring.putconn(a)  # idle, never borrowed
    assert snapshot(ring) == before
    assert ring.returns == []
    ring._check_invariants()
    assert ring.getconn() is b and ring.getconn() is a  # each on the free list once


def test_putconn_of_reserved_or_retired_is_misuse(make: Any) -> None:
    ring = make(2, probes=(("status", 0, False),))
    conn = ring.add()
    ring.defer = True
    assert ring.getconn() is conn
    conn.status = 1
    ring.putconn(conn)  # slow: parked RESERVED
    before = snapshot(ring)
    with pytest.raises(Misuse):
        ring.putconn(conn)
    assert snapshot(ring) == before
    (slot, _), = ring.reserved
    ring._release(slot)
    with pytest.raises(Misuse):
        ring.putconn(conn)  # closed and forgotten
    ring._check_invariants()


# --------------------------------------------------------------------------------------------
# checkout checks: expiry, alive_attr, vet; return checks: probes, always_slow, generation


def test_expired_connection_is_retired_at_checkout(make: Any) -> None:
    ring = make(2, auto_fill=True)
    old = ring.add(expiry=ring._now() - 1.0)
    got = ring.getconn()
    assert got is not old
    assert ring.retired == [old]
    assert ring._slot_for(old) == -1
    assert counts(ring)["size"] == 1 and counts(ring)["connections_lost"] == 0
    ring._check_invariants()


def test_expired_connection_never_handed_out_without_replacement(make: Any) -> None:
    ring = make(1, timeout=0.01)
    old = ring.add(expiry=ring._now() - 1.0)
    with pytest.raises(Timeout):
        ring.getconn()
    assert ring.retired == [old]
    assert ring.grown  # the retired slot was made again for the waiter
    ring._check_invariants()


def test_expiring_while_borrowed_routes_return_to_on_return(make: Any) -> None:
    ring = make(1)
    conn = ring.add(expiry=ring._now() + 0.02)
    assert ring.getconn() is conn
    time.sleep(0.03)
    ring.putconn(conn)
    assert ring.returns == [0] and ring.current_at_return == [False]
    assert ring.retired == [conn]
    ring._check_invariants()


def test_probe_mismatch_routes_to_on_return(make: Any) -> None:
    ring = make(1, probes=(("status", 0, False), ("txn", 0, True)))
    conn = ring.add()
    assert ring.getconn() is conn
    ring.putconn(conn)  # clean: fast path
    assert ring.returns == []
    assert counts(ring)["idle"] == 1
    assert ring.getconn() is conn
    conn.txn_value = 2  # method probe differs
    ring.putconn(conn)
    assert ring.returns == [0]
    assert counts(ring)["idle"] == 1  # our _on_return restored it (status clean)
    assert ring.getconn() is conn
    conn.txn_value = 0
    conn.status = 1  # attribute probe differs
    ring.putconn(conn)
    assert ring.returns == [0, 0]
    assert ring.retired == [conn]  # our _on_return retires status != 0
    ring._check_invariants()


def test_always_slow_routes_every_return_to_on_return(make: Any) -> None:
    ring = make(1, always_slow=True)
    conn = ring.add()
    for i in range(3):
        assert ring.getconn() is conn
        ring.putconn(conn)
        assert len(ring.returns) == i + 1
    assert counts(ring)["idle"] == 1 and ring.retired == []
    ring._check_invariants()


def test_generation_bump_routes_return_to_on_return(make: Any) -> None:
    ring = make(2)
    old = ring.add()
    assert ring.getconn() is old
    ring._bump_generation()
    ring.putconn(old)
    assert ring.returns == [0]
    assert ring.current_at_return == [False]
    assert ring.retired == [old]
    new = ring.add()  # made after the bump: current
    assert ring.getconn() is new
    ring.putconn(new)
    assert len(ring.returns) == 1  # fast path
    ring._check_invariants()


def test_slot_current_false_when_above_max(make: Any) -> None:
    ring = make(2)
    a, b = ring.add(), ring.add()
    assert ring.getconn() is b
    ring._set_max(1)  # size 2 > max 1
    ring.putconn(b)
    assert ring.current_at_return == [False]
    assert ring.retired == [b]
    assert counts(ring)["size"] == 1
    assert ring.getconn() is a
    ring.putconn(a)
    assert len(ring.returns) == 1  # size == max again: fast path
    ring._check_invariants()


def test_alive_attr_closed_never_handed_out(make: Any) -> None:
    ring = make(2, timeout=0.01)
    good = ring.add()
    dead = ring.add(FakeConn(closed=1))
    assert ring.getconn() is good  # LIFO would have picked `dead`
    assert ring.retired == [dead]
    assert counts(ring)["connections_lost"] == 1
    ring.putconn(good)
    good.closed = 1  # lost while idle
    with pytest.raises(Timeout):
        ring.getconn()
    assert ring.retired == [dead, good]
    assert counts(ring)["connections_lost"] == 2
    ring._check_invariants()


def test_alive_attr_none_does_not_look(make: Any) -> None:
    ring = make(1, alive_attr=None)
    conn = ring.add(FakeConn(closed=1))
    assert ring.getconn() is conn
    assert counts(ring)["connections_lost"] == 0


def test_vet_called_with_idle_time(make: Any) -> None:
    ring = make(2, check_after=0.0)
    conn = ring.add()
    time.sleep(0.02)
    assert ring.getconn() is conn
    (vconn, idle), = ring.vetted
    assert vconn is conn
    assert 0.015 <= idle < 5.0
    ring.putconn(conn)
    ring.vet_result = False
    other = ring.add()
    with pytest.raises(Timeout):
        ring.getconn()  # both vetted, both retired
    assert [c for c, _ in ring.vetted[1:]] == [other, conn]
    assert ring.retired == [other, conn]
    assert counts(ring)["connections_lost"] == 2
    ring._check_invariants()


def test_vet_not_called_before_check_after(make: Any) -> None:
    ring = make(1, check_after=30.0)
    conn = ring.add()
    assert ring.getconn() is conn
    assert ring.vetted == []


def test_track_calls_on_checkout(make: Any) -> None:
    ring = make(2, track=True, check_after=0.0)
    a = ring.add()
    assert ring.getconn() is a
    assert ring.checkouts == [ring._slot_for(a)]
    ring2 = make(1, track=False)
    ring2.add()
    ring2.getconn()
    assert ring2.checkouts == []


def test_counters_and_reset(make: Any) -> None:
    ring = make(1)
    conn = ring.add()
    ring.getconn()
    time.sleep(0.01)
    ring.putconn(conn)
    ring._count_bad_return()
    ring._count_lost()
    c = counts(ring)
    assert c["requests_num"] == 1 and c["returns_bad"] == 1 and c["connections_lost"] == 1
    assert c["usage_ms"] >= 5
    ring._reset_counters()
    c = counts(ring)
    assert (c["requests_num"], c["returns_bad"], c["connections_lost"], c["usage_ms"]) == (0, 0, 0, 0)
    assert c["size"] == 1 and c["idle"] == 1  # gauges stay


def test_in_use_since(make: Any) -> None:
    ring = make(2)
    a, b = ring.add(), ring.add()
    ring.getconn()
    t = ring._now()
    time.sleep(0.005)
    ring.getconn()
    assert ring._in_use_since(t) == [ring._slot_for(b)]
    assert sorted(ring._in_use_since(ring._now())) == [0, 1]


# --------------------------------------------------------------------------------------------
# weakref reclaim


def _borrow_and_forget(ring: Any) -> tuple:
    conn = ring.getconn()
    return ring._slot_for(conn), id(conn)


def test_dropped_connection_is_reclaimed(make: Any) -> None:
    ring = make(2)
    ring.add()
    slot, _ = _borrow_and_forget(ring)  # the only reference dies here
    gc.collect()
    assert len(ring._dead) == 1
    assert ring._slot_states()[slot] == IN_USE  # only recorded so far
    assert ring._drain_dead() == 1
    assert ring._slot_states()[slot] == EMPTY
    c = counts(ring)
    assert c["connections_reclaimed"] == 1 and c["size"] == 0
    assert ring.reclaimed == [slot]
    assert ring._drain_dead() == 0
    ring._check_invariants()


def test_reclaim_happens_at_next_putconn_and_grows_for_waiters(make: Any, core_mod: Any) -> None:
    w = waiter(core_mod)
    ring2 = make(1)
    ring2.add()
    slot, _ = _borrow_and_forget(ring2)
    assert ring2._enqueue(w, 0) == ENQUEUED  # size 1 == max: no growth yet
    assert ring2.grown == []
    gc.collect()
    other = make(1)
    oc = other.add()
    with pytest.raises(Misuse):
        ring2.putconn(oc)  # putconn drains first, even when it then fails
    assert counts(ring2)["connections_reclaimed"] == 1
    assert ring2.grown == [slot]  # the reclaimed slot is made again for the waiter
    ring2._check_invariants()


def test_non_weakrefable_connection_still_works(make: Any) -> None:
    ring = make(2)
    conn = ring.add(SlotConn())
    assert ring.getconn() is conn
    ring.putconn(conn)
    assert ring.getconn() is conn
    slot = ring._slot_for(conn)
    del conn
    gc.collect()
    assert ring._drain_dead() == 0  # no reclaim for this type: the ring keeps it
    assert ring._slot_states()[slot] == IN_USE
    assert counts(ring)["connections_reclaimed"] == 0
    ring._check_invariants()


def test_reclaim_does_not_unmap_a_new_connection_at_the_same_address(make: Any) -> None:
    """A dropped connection's address can be reused by a connection filled before the dead
    slot is drained; reclaiming the old slot must not forget the new one."""
    ring = make(2)
    ring.add()
    slot_a, addr = _borrow_and_forget(ring)
    gc.collect()
    assert len(ring._dead) == 1
    spare = []
    for _ in range(20000):
        b = FakeConn()
        if id(b) == addr:
            break
        spare.append(b)
    else:
        pytest.skip("the allocator did not reuse the address")
    del spare
    s = ring._reserve()
    assert ring._fill(s, b, INF)
    assert ring._slot_for(b) == s
    assert ring._drain_dead() == 1  # reclaims slot_a ...
    assert ring._slot_for(b) == s, "reclaiming the dead slot unmapped the live connection at its address"
    assert ring.getconn() is b
    ring.putconn(b)  # ... and b must still be returnable
    ring._check_invariants()


# --------------------------------------------------------------------------------------------
# close


def test_close_fails_every_waiter_and_getconn_goes_to_on_miss(make: Any, core_mod: Any) -> None:
    ring = make(2)
    a = ring.add()
    b = ring.add()
    assert ring.getconn() is b and ring.getconn() is a
    ws = [waiter(core_mod) for _ in range(3)]
    for w in ws:
        assert ring._enqueue(w, 0) == ENQUEUED
    assert ring._claim(ws[1]) is None  # one cancelled before the close
    failed = ring._close_core()
    assert failed == [ws[0], ws[2]]
    assert [w.state for w in ws] == [CLOSED, CANCELLED, CLOSED]
    assert counts(ring)["waiting"] == 0
    assert ring._core_closed() is True
    assert ring._claim(ws[0]) is None and ws[0].state == CLOSED
    slot_a = ring._slot_for(a)
    ring.putconn(a)  # closed: slow path -> _on_return -> retired
    assert ring.returns == [slot_a]
    assert ring.retired == [a]
    ring._check_invariants()
    misses = ring.misses
    with pytest.raises(Closed):
        ring.getconn()
    assert ring.misses == misses + 1
    ring.putconn(b)
    assert ring.retired == [a, b]
    assert counts(ring)["size"] == 0


def test_getconn_after_close_skips_idle(make: Any) -> None:
    ring = make(2)
    ring.add()
    ring._close_core()
    misses = ring.misses
    with pytest.raises(Closed):
        ring.getconn()
    assert ring.misses == misses + 1
    assert counts(ring)["idle"] == 1  # still there for the policy to take and close
    taken = ring._take_all_idle()
    assert len(taken) == 1
    for slot, _ in taken:
        ring._release(slot)
    assert counts(ring)["size"] == 0
    ring._check_invariants()


def test_fill_after_close_frees_the_slot(make: Any) -> None:
    ring = make(2)
    slot = ring._reserve()
    ring._close_core()
    conn = FakeConn()
    assert ring._fill(slot, conn, INF) is False
    assert ring._slot_states()[slot] == EMPTY
    c = counts(ring)
    assert c["size"] == 0 and c["connecting"] == 0 and c["idle"] == 0
    assert ring._slot_for(conn) == -1
    assert ring._reserve() == -1  # closed: nothing new
    ring._check_invariants()


def test_restore_after_close_returns_false(make: Any) -> None:
    ring = make(2)
    ring.add()
    (slot, conn), = ring._take_all_idle()
    ring._close_core()
    assert ring._restore(slot) is False
    assert ring._slot_states()[slot] == RESERVED
    ring._check_invariants()
    ring._release(slot)
    assert counts(ring)["size"] == 0
    ring._check_invariants()


def test_close_during_return_probes_does_not_leave_an_idle_connection(make: Any) -> None:
    """A pool closed while putconn runs its probes (Python code: another thread may run
    close() meanwhile) must not put the connection back on the free list: close() has
    already taken the idle connections, so it would stay open forever."""
    ring = make(1, probes=(("txn", 0, True),))
    conn = ring.add()
    assert ring.getconn() is conn
    conn.on_probe = ring._close_core  # "another thread closes the pool" during the probe
    ring.putconn(conn)
    assert counts(ring)["idle"] == 0, "returned connection went IDLE in a closed pool"
    assert ring.retired == [conn]
    assert counts(ring)["size"] == 0
    ring._check_invariants()


# --------------------------------------------------------------------------------------------
# _take_idle


@pytest.mark.parametrize("lifo", [True, False], ids=["lifo", "fifo"])
def test_take_idle(make: Any, lifo: bool) -> None:
    ring = make(6, lifo=lifo)
    now = ring._now()
    c0 = ring.add()
    c1 = ring.add()
    mark = ring._now()
    c2 = ring.add(expiry=now + 100.0)
    c3 = ring.add()
    c4 = ring.add()
    borrowed = ring.add()
    assert ring.getconn() is (borrowed if lifo else c0)
    if not lifo:
        ring.putconn(c0)  # FIFO: rotate so that c0 is newest
        assert ring.getconn() is c1
        ring.putconn(c1)
        assert ring.getconn() is c2
        ring.putconn(c2)
        assert ring.getconn() is c3
        ring.putconn(c3)
        assert ring.getconn() is c4
        ring.putconn(c4)
        assert ring.getconn() is borrowed
        # free list oldest -> newest is c0..c4 again, with the ring buffer wrapped
        mark = None
    # size 6 (1 borrowed); take the expired one, and idle-before-mark ones while > keep
    if mark is None:
        taken = ring._take_idle(now + 200.0, -INF, 0)
        assert [c for _, c in taken] == [c2]
        rest = [c0, c1, c3, c4]
    else:
        taken = ring._take_idle(now + 200.0, mark, 5)
        # c0: idle and 6 > 5 -> taken (5 left); c1: 5 > 5 false -> kept; c2 expired -> taken
        assert [c for _, c in taken] == [c0, c2]
        rest = [c1, c3, c4]
    for slot, c in taken:
        assert ring._slot_states()[slot] == RESERVED and ring._slot_for(c) == slot
    ring._check_invariants()
    assert counts(ring)["idle"] == len(rest)
    got = [ring.getconn() for _ in rest]
    assert got == (rest[::-1] if lifo else rest)  # order of the others preserved
    for slot, _ in taken:
        ring._release(slot)
    ring._check_invariants()


def test_take_idle_keep_counts_borrowed(make: Any) -> None:
    ring = make(4, lifo=False)
    conns = [ring.add() for _ in range(4)]
    assert ring.getconn() is conns[0]
    taken = ring._take_idle(-INF, INF, 2)  # size 4 > 2: take oldest idle until 2 remain
    assert [c for _, c in taken] == conns[1:3]
    assert counts(ring)["idle"] == 1
    assert [ring._slot_states()[s] for s, _ in taken] == [RESERVED, RESERVED]
    for slot, _ in taken:
        ring._release(slot)
    assert ring._take_idle(-INF, INF, 2) == []  # size 2: nothing above keep
    all_idle = ring._take_all_idle()
    assert [c for _, c in all_idle] == [conns[3]]
    ring._check_invariants()


# --------------------------------------------------------------------------------------------
# _set_max


@pytest.mark.parametrize("lifo", [True, False], ids=["lifo", "fifo"])
@pytest.mark.parametrize("rotations", [0, 1, 2, 3])
def test_set_max_growing_keeps_free_list(make: Any, lifo: bool, rotations: int) -> None:
    ring = make(3, lifo=lifo)
    conns = [ring.add() for _ in range(3)]
    order = list(conns)  # oldest -> newest
    for _ in range(rotations):
        c = ring.getconn()
        expect = order.pop() if lifo else order.pop(0)
        assert c is expect
        ring.putconn(c)
        order.append(c)
    # also a partly used buffer: one borrowed
    c = ring.getconn()
    held = order.pop() if lifo else order.pop(0)
    assert c is held
    ring._set_max(7)
    ring._check_invariants()
    assert counts(ring)["max"] == 7 and counts(ring)["idle"] == 2
    new = ring.add()
    order.append(new)
    ring.putconn(held)
    order.append(held)
    got = [ring.getconn() for _ in order]
    assert got == (order[::-1] if lifo else order)
    for c in got:
        ring.putconn(c)
    more = [ring.add() for _ in range(3)]
    assert ring._reserve() == -1 and counts(ring)["size"] == 7
    assert len(set(map(ring._slot_for, got + more))) == 7
    ring._check_invariants()


def test_set_max_twice_and_shrink(make: Any) -> None:
    ring = make(2, lifo=False)
    a, b = ring.add(), ring.add()
    ring._set_max(4)
    c = ring.add()
    ring._set_max(9)
    d = ring.add()
    assert [ring.getconn() for _ in range(4)] == [a, b, c, d]
    ring._set_max(1)
    assert counts(ring)["max"] == 1
    for x in (a, b, c, d):
        ring.putconn(x)  # above max: all slow, our policy retires while size > max
    assert ring.retired == [a, b, c]
    assert counts(ring)["size"] == 1 and counts(ring)["idle"] == 1
    ring._check_invariants()


# --------------------------------------------------------------------------------------------
# fork


def test_reset_after_fork(make: Any) -> None:
    ring = make(4)
    a, b, c = ring.add(), ring.add(), ring.add()
    ring.add(SlotConn())
    assert ring.getconn() is not None  # the SlotConn (LIFO): borrowed, strong ref in the ring
    assert ring.getconn() is c  # borrowed, weak ref only
    inherited = ring._reset_after_fork()
    ids = sorted(map(id, inherited))
    assert len(ids) == len(set(ids)) == 4
    assert {id(a), id(b), id(c)} <= set(ids)
    c_ = counts(ring)
    assert (c_["size"], c_["idle"], c_["connecting"], c_["waiting"]) == (0, 0, 0, 0)
    assert ring._slot_states() == [EMPTY] * 4
    ring._check_invariants()
    with pytest.raises(Misuse):
        ring.putconn(c)  # forgotten
    assert ring._slot_for(a) == -1
    x = ring.add()
    assert ring.getconn() is x
    ring.putconn(x)
    ring._check_invariants()


def test_reset_after_fork_with_connecting_and_waiters(make: Any, core_mod: Any) -> None:
    ring = make(2)
    a = ring.add()
    assert ring.getconn() is a
    w = waiter(core_mod)
    assert ring._enqueue(w, 0) == ENQUEUED
    assert len(ring.grown) == 1  # one CONNECTING
    inherited = ring._reset_after_fork()
    assert inherited == [a]
    c = counts(ring)
    assert (c["size"], c["connecting"], c["waiting"]) == (0, 0, 0)
    ring._check_invariants()
    assert ring._reserve() >= 0


# --------------------------------------------------------------------------------------------
# threads


def test_thread_stress_no_double_handout(make: Any) -> None:
    nthreads, cycles = 16, 2000
    ring = make(4, timeout=30.0, probes=(("status", 0, False),))
    conns = [ring.add() for _ in range(4)]
    holders: Dict[int, str] = {}
    guard = threading.Lock()
    errors: List[BaseException] = []
    start = threading.Barrier(nthreads)

    def worker(name: str) -> None:
        try:
            start.wait()
            for i in range(cycles):
                conn = ring.getconn()
                with guard:
                    assert id(conn) not in holders, f"{name}: held by {holders.get(id(conn))} too"
                    holders[id(conn)] = name
                if i % 7 == 0:
                    time.sleep(0)
                with guard:
                    del holders[id(conn)]
                ring.putconn(conn)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "stress threads hung"
    assert not errors, errors[:3]
    ring._check_invariants()
    c = counts(ring)
    assert (c["size"], c["idle"], c["waiting"], c["connecting"]) == (4, 4, 0, 0)
    assert c["requests_num"] == nthreads * cycles
    assert c["requests_queued"] > 0  # the handoff path was exercised, not only the free list
    assert ring.grown == [] and ring.retired == [] and ring.returns == []
    assert sorted(map(id, (ring.getconn() for _ in range(4)))) == sorted(map(id, conns))


def test_thread_stress_timeouts_never_swallow_a_connection(make: Any) -> None:
    """Waiters that time out race with handoffs: ``_claim`` must either take the handed
    connection (and the caller gives it back) or cancel; no connection may be lost."""
    nthreads, cycles = 8, 400
    ring = make(2, timeout=0.0005)
    conns = [ring.add() for _ in range(2)]
    holders: Dict[int, str] = {}
    guard = threading.Lock()
    errors: List[BaseException] = []
    timeouts = [0]

    def worker(name: str) -> None:
        try:
            for i in range(cycles):
                try:
                    conn = ring.getconn()
                except Timeout:
                    with guard:
                        timeouts[0] += 1
                    continue
                with guard:
                    assert id(conn) not in holders, f"{name}: held by {holders.get(id(conn))} too"
                    holders[id(conn)] = name
                time.sleep(0)
                with guard:
                    del holders[id(conn)]
                ring.putconn(conn)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "stress threads hung"
    assert not errors, errors[:3]
    ring._check_invariants()
    c = counts(ring)
    assert (c["size"], c["idle"], c["waiting"], c["connecting"]) == (2, 2, 0, 0)
    assert sorted(map(id, (ring.getconn() for _ in range(2)))) == sorted(map(id, conns))
