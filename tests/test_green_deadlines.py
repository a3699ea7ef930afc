"""fastpool.green._Deadlines: one hub timer for every pool wait of a hub (mechanism, no hub).

The hub is replaced by a recorder of the delays the timer is armed for; waits are stand-ins
with a ``fastpool._core.Park``'s ``parked`` flag and ``resume``. The real-hub behaviour is covered by
tests/test_green.py (``timeout_many_waiters_one_timer``).
"""

from __future__ import annotations

import math
import time
from typing import Any, List

import pytest

from fastpool import green


class _Park:
    def __init__(self, expired: List[Any], name: Any = None) -> None:
        self.parked = True
        self._expired = expired
        self._name = name

    def resume(self, value: Any) -> None:
        assert value is False  # an expiry (the core's wake resumes with True)
        assert self.parked, "a finished wait must never be resumed"
        self.parked = False
        self._expired.append(self._name)


class _Recorder(green._Deadlines):
    __slots__ = ("armed",)

    def __init__(self, now: List[float]) -> None:
        super().__init__()
        self.armed: List[float] = []
        self._now = lambda: now[0]

    def _arm(self, delay: float) -> None:
        self.armed.append(delay)


def test_one_timer_for_the_head_and_expiry_in_order() -> None:
    now = [0.0]
    d = _Recorder(now)
    expired: List[int] = []
    ps = [_Park(expired, i) for i in range(3)]
    for i, p in enumerate(ps):
        assert d.add(1.0 + i, p)
    assert d.armed == [1.0]  # one timer, for the earliest deadline
    ps[1].parked = False  # woken (handed a connection) meanwhile: must not be expired
    now[0] = 1.5
    d._fire()
    assert expired == [0] and d.armed == [1.0, 1.5]  # re-armed for the next live one (at 3.0)
    now[0] = 3.0
    d._fire()
    assert expired == [0, 2]


def test_a_shorter_deadline_than_the_tail_is_refused() -> None:
    d = _Recorder([0.0])
    assert d.add(5.0, _Park([]))
    assert not d.add(1.0, _Park([]))  # the caller arms a timer of its own


def test_a_timer_firing_early_expires_nothing() -> None:
    now = [0.0]
    d = _Recorder(now)
    expired: List[Any] = []
    d.add(1.0, _Park(expired))
    now[0] = 0.999
    d._fire()
    assert expired == [] and d.armed[-1] > 0


def test_an_earlier_deadline_after_every_wait_finished_gets_a_timer() -> None:
    # The timer is armed for long waits that are then all served; once they are dropped (a
    # compaction), a wait with a shorter timeout (another pool, or getconn(timeout=...)) is
    # queued: it must get a timer for its own deadline, not wait for the long ones' timer.
    now = [0.0]
    d = _Recorder(now)
    for _ in range(green._COMPACT_MIN):
        p = _Park([])
        assert d.add(30.0, p)
        p.parked = False  # served
    assert d.armed == [30.0]
    expired: List[Any] = []
    assert d.add(1.0, _Park(expired, "short"))  # compacts: every earlier entry is finished
    assert d.armed == [30.0, 1.0]
    now[0] = 1.0
    d._fire()
    assert expired == ["short"]


def test_finished_entries_behind_a_live_head_stay_bounded() -> None:
    # e.g. a pool exhausted for its whole timeout while another pool on the same hub churns
    d = _Recorder([0.0])
    d.add(100.0, _Park([]))  # the live head
    for i in range(50_000):
        p = _Park([])
        d.add(100.0 + i, p)
        p.parked = False  # served at once
    assert len(d._parks) == len(d._at) <= 2 * green._COMPACT_MIN


# -- the core's Park (the wait itself), on a scripted hub ------------------------------------------
def _scripted_hub(core: Any, script: List[Any], queue_accepts: bool = True,
                  parked_for: float = 0.0) -> Any:
    """A hub parking of ``core`` (its ``Deadlines``: the compiled Park takes no other) whose
    switch() returns the scripted values in turn (False: a deadline expired, True: woken);
    records the deadlines the park queues and the timers it arms."""

    class ScriptedHub(core.Deadlines):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.owner = 0  # never this thread: a wake goes through call_soon_threadsafe
            self.script = script
            self.parked_for = parked_for  # seconds each switch takes
            self.queue_accepts = queue_accepts
            self.added: List[float] = []
            self.timers: List[float] = []
            self.cancelled = 0
            self.calls: List[Any] = []
            self.getcurrent = lambda: "me"
            self.switch = self._switch
            self.call_soon = lambda fn, arg: self.calls.append(("soon", fn, arg))
            self.call_soon_threadsafe = lambda fn, arg: self.calls.append(("threadsafe", fn, arg))

        def add(self, deadline: float, park: Any) -> bool:
            self.added.append(deadline)
            return self.queue_accepts

        def timer(self, delay: float, park: Any) -> Any:
            self.timers.append(delay)
            return len(self.timers)

        def cancel(self, timer: Any) -> None:
            self.cancelled += 1

        def _switch(self) -> Any:
            time.sleep(self.parked_for)
            value = self.script.pop(0)
            if isinstance(value, BaseException):
                raise value
            return value

    return ScriptedHub()


@pytest.fixture(params=["c", "python"])
def core(request: pytest.FixtureRequest) -> Any:
    from fastpool import _impl

    try:
        return _impl.load(request.param)
    except ImportError as exc:
        pytest.fail(f"the {request.param} core does not load: {exc}")


def test_park_waits_an_infinite_deadline_in_steps(core: Any) -> None:
    hub = _scripted_hub(core, [False, False, True])
    t0 = time.monotonic()
    assert core.Park(hub).wait_until(math.inf, 0.5) is True
    assert len(hub.added) == 3 and all(t0 < d <= time.monotonic() + 0.5 for d in hub.added), hub.added
    assert hub.timers == []  # the hub's shared deadline queue took every step


def test_park_last_step_ends_on_the_callers_deadline(core: Any) -> None:
    hub = _scripted_hub(core, [False, False], parked_for=0.25)
    deadline = time.monotonic() + 0.7
    assert core.Park(hub).wait_until(deadline, 0.5) is False  # one step, then the deadline
    assert len(hub.added) == 2 and hub.added[-1] == deadline, hub.added


def test_park_gets_a_timer_when_the_queue_refuses_and_always_cancels_it(core: Any) -> None:
    hub = _scripted_hub(core, [True, Exception("killed")], queue_accepts=False)
    park = core.Park(hub)
    assert park.wait_until(time.monotonic() + 0.2, 10.0) is True
    assert len(hub.timers) == 1 and 0 <= hub.timers[0] <= 0.2 and hub.cancelled == 1
    with pytest.raises(Exception, match="killed"):
        park.wait_until(time.monotonic() + 0.2, 10.0)
    assert hub.cancelled == 2 and park.parked is False  # a kill in the switch: timer gone, not parked


def test_park_resume_only_while_parked(core: Any) -> None:
    switched: List[Any] = []

    class Me:
        def switch(self, value: Any) -> None:
            switched.append(value)

    hub = _scripted_hub(core, [])
    park = core.Park(hub)
    park.resume(True)  # a late wake, nothing parked: ignored
    assert switched == []
    park()  # the core's wake from another thread (owner is not this one): thread-safe call
    [(kind, wake, arg)] = hub.calls
    assert kind == "threadsafe" and arg is park

    def switch() -> Any:
        assert park.parked
        park.resume(False)  # the deadline expires while parked: switches in, once
        wake(arg)  # the wake (it resumes with True) that lost the race: ignored
        return switched[-1]

    hub.switch = switch
    hub.getcurrent = Me
    assert park.wait(None) is False and switched == [False] and not park.parked


def test_waiter_for_makes_a_fresh_waiter_woken_by_its_own_park(core: Any) -> None:
    from fastpool._states import WAITING

    hub = _scripted_hub(core, [])
    w1, w2 = core.Park.waiter_for(hub), core.Park.waiter_for(hub)
    for w in (w1, w2):
        assert isinstance(w, core.Waiter) and isinstance(w.wake, core.Park)
        assert w.state == WAITING and w.conn is None and w.idle == 0.0 and not w.wake.parked
    assert w1.wake is not w2.wake
    w1.wake()  # the core's wake: through the hub, for this park only
    [(kind, wake, arg)] = hub.calls
    assert arg is w1.wake
    if core.COMPILED:  # the compiled Park takes nothing but a hub parking
        with pytest.raises(TypeError):
            core.Park.waiter_for(object())
