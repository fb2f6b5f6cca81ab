"""Executor: per-model execution threads, deadlines, abandoned and stuck calls, and the loop-lag
sampler (the codec threads: test_off_loop.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from pyserving.errors import DeadlineExceeded, Unavailable
from pyserving.serving.execution import Executor
from pyserving.serving.monitoring import watch_event_loop_lag
from tests.fakes import wait_until


class Gate:
    """A model call that records its thread, signals it started, and waits to be released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.threads: list[int] = []

    def __call__(self, value: int) -> int:
        self.threads.append(threading.get_ident())
        self.started.release()
        assert self.release.wait(10), "the test never released the gate"
        return value

    async def wait_started(self, count: int = 1) -> None:
        for _ in range(count):
            assert await asyncio.to_thread(self.started.acquire, True, 10)


def exec_threads(model: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"pyserving-exec-{model}-")]


@pytest.fixture
def left() -> list[int]:
    return []


@pytest.fixture
def executor(left):
    executor = Executor(default_instances=2, max_queued=4, on_leave=lambda: left.append(1))
    yield executor
    executor.close(timeout_s=5)


@pytest.mark.asyncio
async def test_calls_run_on_their_model_threads_and_results_come_back(executor):
    loop_thread = threading.get_ident()
    results = []
    for start in range(0, 20, 4):  # the queue holds 4
        calls = [
            executor.submit("m", lambda i: (i, threading.get_ident()), i)
            for i in range(start, start + 4)
        ]
        results += [await call.result() for call in calls]
    assert [i for i, _ in results] == list(range(20))
    assert loop_thread not in {thread for _, thread in results}
    assert len(exec_threads("m")) <= 2


@pytest.mark.asyncio
async def test_a_call_raising_delivers_its_exception(executor):
    def boom() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await executor.submit("m", boom).result()


@pytest.mark.asyncio
async def test_a_model_runs_at_most_its_instances_at_once_and_never_takes_another_models_threads(
    executor,
):
    gate = Gate()
    executor.set_instances({"slow": 1})
    first = executor.submit("slow", gate, 1)
    await gate.wait_started()
    second = executor.submit("slow", gate, 2)
    # The slow model's second call waits for its one thread; another model answers meanwhile.
    assert await executor.submit("fast", lambda: "fast").result() == "fast"
    assert not second.future.done() and len(gate.threads) == 1
    assert len(exec_threads("slow")) == 1
    gate.release.set()
    assert await first.result() == 1 and await second.result() == 2


@pytest.mark.asyncio
async def test_a_queued_call_past_its_deadline_is_dropped_without_running(executor, left):
    gate = Gate()
    executor.set_instances({"m": 1})
    running = executor.submit("m", gate, 1)
    await gate.wait_started()
    queued = executor.submit("m", gate, 2)
    with pytest.raises(DeadlineExceeded, match="while the model call was queued"):
        await queued.result(time.monotonic() + 0.05)
    assert queued.abandon() is False  # it was taken off the queue
    assert len(left) == 1
    gate.release.set()
    assert await running.result() == 1
    assert len(gate.threads) == 1  # the dropped call never ran


@pytest.mark.asyncio
async def test_a_running_call_past_its_deadline_answers_on_time_and_holds_its_thread_issue_14(
    executor, left
):
    gate = Gate()
    returned = threading.Event()
    call = executor.submit("m", gate, 1)
    await gate.wait_started()
    with pytest.raises(DeadlineExceeded, match="while the model call was running"):
        await call.result(time.monotonic() + 0.05)
    assert call.abandon() is True
    assert call.when_returned(returned.set)
    assert executor.stuck_calls == 1
    assert executor.stuck_reason("m") is None  # one of its two threads still works
    assert await executor.submit("m", lambda: "ok").result() == "ok"
    second = executor.submit("m", gate, 2)
    await gate.wait_started()
    with pytest.raises(DeadlineExceeded):
        await second.result(time.monotonic() + 0.05)
    assert second.abandon() is True
    second_returned = threading.Event()
    assert second.when_returned(second_returned.set)
    reason = executor.stuck_reason("m")
    assert reason is not None and "all 2 execution thread(s)" in reason
    # No replacement thread: a third call waits for a stuck one to return.
    third = executor.submit("m", lambda: "third")
    assert len(exec_threads("m")) == 2
    gate.release.set()
    assert await third.result() == "third"
    assert await asyncio.to_thread(returned.wait, 10)
    # both stuck calls end with the gate; the second may return after the first's callback
    assert await asyncio.to_thread(second_returned.wait, 10)
    assert executor.stuck_calls == 0 and executor.stuck_reason("m") is None
    assert not call.when_returned(returned.set)  # already returned
    # call, "ok", second, third: each left once (the third after its answer was posted)
    wait_until(lambda: len(left) == 4, what="four calls left")


@pytest.mark.asyncio
async def test_a_cancelled_request_abandons_its_call(executor):
    gate = Gate()

    async def request() -> int:
        call = executor.submit("m", gate, 1)
        try:
            return await call.result()
        except BaseException:
            call.abandon()
            raise

    task = asyncio.ensure_future(request())
    await gate.wait_started()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert executor.stuck_calls == 1
    gate.release.set()
    deadline = time.monotonic() + 5
    while executor.stuck_calls and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert executor.stuck_calls == 0


@pytest.mark.asyncio
async def test_a_full_model_queue_refuses_at_once(executor):
    gate = Gate()
    executor.set_instances({"m": 1})
    running = executor.submit("m", gate, 0)
    await gate.wait_started()
    queued = [executor.submit("m", gate, i) for i in range(4)]
    with pytest.raises(Unavailable, match='model "m": 4 requests are queued'):
        executor.submit("m", gate, 5)
    assert await executor.submit("other", lambda: 1).result() == 1
    gate.release.set()
    assert [await c.result() for c in [running, *queued]] == [0, 0, 1, 2, 3]


@pytest.mark.asyncio
async def test_more_instances_run_more_calls_at_once(executor):
    gate = Gate()
    executor.set_instances({"m": 3})
    calls = [executor.submit("m", gate, i) for i in range(3)]
    await gate.wait_started(3)
    assert len(set(gate.threads)) == 3
    gate.release.set()
    assert [await c.result() for c in calls] == [0, 1, 2]


@pytest.mark.asyncio
async def test_close_fails_queued_calls_and_refuses_new_ones(left):
    executor = Executor(default_instances=1)
    gate = Gate()
    running = executor.submit("m", gate, 1)
    await gate.wait_started()
    queued = executor.submit("m", gate, 2)
    assert executor.close(timeout_s=0.05) is False  # the running call is still running
    with pytest.raises(Unavailable, match="shutting down"):
        await queued.result()
    with pytest.raises(Unavailable, match="shutting down"):
        executor.submit("m", gate, 3)
    gate.release.set()
    assert await running.result() == 1
    assert executor.close(timeout_s=5) is True


@pytest.mark.asyncio
async def test_the_loop_lag_sampler_sees_a_blocked_loop():
    samples: list[float] = []
    watcher = asyncio.ensure_future(watch_event_loop_lag(samples.append, interval_s=0.001))
    try:
        while len(samples) < 3:
            await asyncio.sleep(0.001)
        # Hold the loop on purpose (the test's stand-in for model code on the loop).
        asyncio.get_running_loop().call_soon(time.sleep, 0.05)
        count = len(samples)
        while len(samples) < count + 3:
            await asyncio.sleep(0.001)
        assert max(samples) >= 0.04
    finally:
        watcher.cancel()
