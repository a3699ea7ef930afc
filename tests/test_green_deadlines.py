"""fastpool.green._Deadlines: one hub timer for every pool wait of a hub (mechanism, no hub).

The hub is replaced by a recorder of the delays the timer is armed for; waits are stand-ins
with a _Park's ``parked`` flag and ``resume``. The real-hub behaviour is covered by
tests/test_green.py (``timeout_many_waiters_one_timer``).
"""

from __future__ import annotations

from typing import Any, List

from fastpool import green


class _Park:
    def __init__(self, expired: List[Any], name: Any = None) -> None:
        self.parked = True
        self._expired = expired
        self._name = name

    def resume(self, value: Any) -> None:
        assert value is green._TIMED_OUT
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
