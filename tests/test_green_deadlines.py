"""fastpool.green._Deadlines: one hub timer for every pool wait of a hub (mechanism, no hub).

The hub is replaced by a recorder of the delays the timer is armed for; waiters are stand-ins
with the core Waiter's ``state`` (0 = WAITING). The real-hub behaviour is covered by
tests/test_green.py (``timeout_many_waiters_one_timer``).
"""

from __future__ import annotations

from typing import Any, List

from fastpool import green


class _Waiter:
    def __init__(self) -> None:
        self.state = 0  # WAITING


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
    ws = [_Waiter() for _ in range(3)]
    for i, w in enumerate(ws):
        assert d.add(1.0 + i, w, lambda i=i: expired.append(i))
    assert d.armed == [1.0]  # one timer, for the earliest deadline
    ws[1].state = 1  # handed a connection meanwhile: must not be expired
    now[0] = 1.5
    d._fire()
    assert expired == [0] and d.armed == [1.0, 1.5]  # re-armed for the next live one (at 3.0)
    now[0] = 3.0
    d._fire()
    assert expired == [0, 2]


def test_a_shorter_deadline_than_the_tail_is_refused() -> None:
    d = _Recorder([0.0])
    assert d.add(5.0, _Waiter(), lambda: None)
    assert not d.add(1.0, _Waiter(), lambda: None)  # the caller arms a timer of its own


def test_a_timer_firing_early_expires_nothing() -> None:
    now = [0.0]
    d = _Recorder(now)
    expired: List[Any] = []
    d.add(1.0, _Waiter(), lambda: expired.append(1))
    now[0] = 0.999
    d._fire()
    assert expired == [] and d.armed[-1] > 0


def test_finished_entries_behind_a_live_head_stay_bounded() -> None:
    # e.g. a pool exhausted for its whole timeout while another pool on the same hub churns
    d = _Recorder([0.0])
    d.add(100.0, _Waiter(), lambda: None)  # the live head
    for i in range(50_000):
        w = _Waiter()
        d.add(100.0 + i, w, lambda: None)
        w.state = 2  # served at once
    assert len(d._entries) <= 2 * green._COMPACT_MIN
