"""RetryScheduler: due calls run in order, cancelled ones never, and no call blocks a thread."""

from __future__ import annotations

import threading

from pyserving.core.scheduler import RetryScheduler
from tests.fakes import ManualClock


def test_calls_run_when_due_in_due_order(manual_scheduler):
    clock, scheduler = manual_scheduler
    ran: list[str] = []
    scheduler.call_later(2.0, lambda: ran.append("b"))
    scheduler.call_later(1.0, lambda: ran.append("a"))
    assert scheduler.run_due() == 0
    clock.advance(1.0)
    assert scheduler.run_due() == 1 and ran == ["a"]
    clock.advance(5.0)
    assert scheduler.run_due() == 1 and ran == ["a", "b"]
    assert scheduler.pending() == 0


def test_a_cancelled_call_never_runs(manual_scheduler):
    clock, scheduler = manual_scheduler
    ran: list[int] = []
    call = scheduler.call_later(1.0, lambda: ran.append(1))
    call.cancel()
    clock.advance(2.0)
    assert scheduler.run_due() == 0 and ran == [] and scheduler.pending() == 0


def test_a_call_that_raises_is_logged_and_the_next_still_runs(manual_scheduler, caplog):
    _, scheduler = manual_scheduler
    ran: list[int] = []
    scheduler.call_later(0, lambda: 1 / 0)
    scheduler.call_later(0, lambda: ran.append(1))
    assert scheduler.run_due() == 2 and ran == [1]
    assert "scheduled lifecycle call failed" in caplog.text


def test_timer_thread_runs_due_calls_and_close_drops_the_rest():
    scheduler = RetryScheduler()
    done = threading.Event()
    later: list[int] = []
    scheduler.call_later(0, done.set)
    scheduler.call_later(3600, lambda: later.append(1))
    assert done.wait(10)
    scheduler.close()
    assert scheduler.pending() == 0 and later == []
    assert scheduler.call_later(0, lambda: later.append(2)).cancelled
    assert later == []


def test_no_thread_is_started_until_something_is_scheduled():
    before = {t.name for t in threading.enumerate()}
    scheduler = RetryScheduler(clock=ManualClock())
    assert {t.name for t in threading.enumerate()} == before
    scheduler.close()
