"""BatchScheduler and BatchQueue with a recording servable: batches, padding, splitting, limits."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future

import numpy as np
import pytest

from pyserving.batching import (
    QUEUE_FULL_MESSAGE,
    BatchingOptions,
    BatchScheduler,
    BatchTask,
)
from pyserving.errors import DeadlineExceeded, InvalidInput, ModelError, Unavailable
from pyserving.metrics import REGISTRY
from tests.batching.recording import RecordingServable, rows
from tests.fakes import wait_until


@pytest.fixture
def scheduler() -> Iterator[BatchScheduler]:
    scheduler = BatchScheduler(num_batch_threads=1)
    yield scheduler
    scheduler.close(wait=True, timeout_s=30)


def submit(
    scheduler: BatchScheduler,
    servable: RecordingServable,
    x: np.ndarray,
    options: BatchingOptions,
    deadline: float | None = None,
    queue: str = "q",
) -> Future:
    task = BatchTask(servable, "serving_default", {"x": x}, deadline)
    return scheduler.schedule_nowait((queue, options), "m", options, task)


def hold_the_thread(
    scheduler: BatchScheduler, servable: RecordingServable, options: BatchingOptions
) -> Future:
    """Occupy the only batch thread with one 1-row call that waits for `servable.release()`."""
    busy = submit(scheduler, servable, rows(-1, 1, servable_width(servable)), options)
    assert servable.first_started.wait(10)
    return busy


def servable_width(servable: RecordingServable) -> int:
    return servable.signatures["serving_default"].inputs[0].shape[1]


def wait_for_tasks(scheduler: BatchScheduler, n: int) -> None:
    wait_until(lambda: scheduler.statistics().enqueued_tasks == n, what=f"{n} tasks queued")


def test_tasks_queued_behind_a_busy_thread_run_as_one_batch_row_for_row(scheduler):
    servable = RecordingServable(hold_first=True)
    options = BatchingOptions(max_batch_size=32)
    busy = hold_the_thread(scheduler, servable, options)
    sizes = [1, 3, 2, 5]
    inputs = [rows(100 * i, n) for i, n in enumerate(sizes)]
    futures = [submit(scheduler, servable, x, options) for x in inputs]
    wait_for_tasks(scheduler, len(sizes))
    servable.release()
    busy.result(10)
    for x, future in zip(inputs, futures, strict=True):
        np.testing.assert_array_equal(future.result(10)["y"], x * 2)
    assert servable.batch_sizes == [1, sum(sizes)]


def test_many_threads_scheduling_at_once_all_get_their_own_rows():
    scheduler = BatchScheduler(num_batch_threads=2)
    servable = RecordingServable()
    options = BatchingOptions(max_batch_size=16, batch_timeout_micros=500)
    n_threads, rounds = 8, 40
    barrier = threading.Barrier(n_threads)
    errors: list[str] = []

    def client(index: int) -> None:
        for r in range(rounds):
            barrier.wait()
            x = rows(1000 * index + 10 * r, 1 + (index + r) % 3)
            got = submit(scheduler, servable, x, options).result(30)["y"]
            if not np.array_equal(got, x * 2):
                errors.append(f"client {index} round {r} got rows of another caller")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    scheduler.close(wait=True, timeout_s=30)
    assert not errors
    assert sum(servable.batch_sizes) == sum(
        1 + (i + r) % 3 for i in range(n_threads) for r in range(rounds)
    )
    assert max(servable.batch_sizes) > 3  # several callers shared a model call


def test_batch_pads_to_the_smallest_allowed_size_and_drops_padded_rows(scheduler):
    servable = RecordingServable(hold_first=True)
    options = BatchingOptions(max_batch_size=8, allowed_batch_sizes=(2, 4, 8))
    busy = hold_the_thread(scheduler, servable, options)
    a, b = rows(10, 1), rows(20, 2)
    futures = [submit(scheduler, servable, x, options) for x in (a, b)]
    wait_for_tasks(scheduler, 2)
    servable.release()
    busy.result(10)
    np.testing.assert_array_equal(futures[0].result(10)["y"], a * 2)
    np.testing.assert_array_equal(futures[1].result(10)["y"], b * 2)
    # the held call (1 row) was padded to 2; then 3 rows padded to 4 with copies of the first row
    assert servable.batch_sizes == [2, 4]
    np.testing.assert_array_equal(servable.calls[1]["x"], np.concatenate([a, b, a]))


def test_large_task_splits_across_batches_and_reassembles_in_order(scheduler):
    servable = RecordingServable(hold_first=True)
    options = BatchingOptions(
        max_batch_size=10, enable_large_batch_splitting=True, max_execution_batch_size=4
    )
    busy = hold_the_thread(scheduler, servable, options)
    small, large = rows(0, 2), rows(100, 7)
    f_small = submit(scheduler, servable, small, options)
    f_large = submit(scheduler, servable, large, options)
    wait_for_tasks(scheduler, 4)  # small + large's 3 parts
    servable.release()
    busy.result(10)
    np.testing.assert_array_equal(f_small.result(10)["y"], small * 2)
    np.testing.assert_array_equal(f_large.result(10)["y"], large * 2)
    # the open batch (2 rows) was topped up with 2 of large's rows, then 4, then 1
    assert servable.batch_sizes == [1, 4, 4, 1]


def test_task_over_max_batch_size_is_refused_naming_both_sizes(scheduler):
    options = BatchingOptions(max_batch_size=4)
    with pytest.raises(InvalidInput, match="Task size 5 is larger than maximum batch size 4"):
        submit(scheduler, RecordingServable(), rows(0, 5), options)


def test_variable_length_inputs_are_padded_into_one_batch(scheduler):
    def row_sums(inputs):
        return {"y": inputs["x"].sum(axis=1, keepdims=True).repeat(inputs["x"].shape[1], 1)}

    servable = RecordingServable(width=-1, compute=row_sums, hold_first=True)
    options = BatchingOptions(pad_variable_length_inputs=True)
    busy = submit(scheduler, servable, np.ones((1, 2), np.float32), options)
    assert servable.first_started.wait(10)
    short = np.array([[5, 1]], np.float32)
    long = np.array([[1, 2, 3, 4]], np.float32)
    futures = [submit(scheduler, servable, x, options) for x in (short, long)]
    wait_for_tasks(scheduler, 2)
    servable.release()
    busy.result(10)
    assert servable.batch_sizes == [1, 2]
    np.testing.assert_array_equal(servable.calls[1]["x"], [[5, 1, 5, 5], [1, 2, 3, 4]])
    np.testing.assert_array_equal(futures[0].result(10)["y"], [[16, 16, 16, 16]])
    np.testing.assert_array_equal(futures[1].result(10)["y"], [[10, 10, 10, 10]])


def test_different_shapes_without_padding_run_in_separate_batches(scheduler):
    servable = RecordingServable(width=-1, hold_first=True)
    options = BatchingOptions()
    busy = submit(scheduler, servable, np.ones((1, 2), np.float32), options)
    assert servable.first_started.wait(10)
    narrow, wide = np.ones((2, 2), np.float32), np.ones((1, 5), np.float32)
    futures = [submit(scheduler, servable, x, options) for x in (narrow, wide, narrow)]
    wait_for_tasks(scheduler, 3)
    servable.release()
    busy.result(10)
    for x, future in zip((narrow, wide, narrow), futures, strict=True):
        np.testing.assert_array_equal(future.result(10)["y"], x * 2)
    assert servable.batch_sizes == [1, 2, 1, 2]


def test_full_queue_refuses_at_once_with_tf_servings_message(scheduler):
    servable = RecordingServable(hold_first=True)
    options = BatchingOptions(max_batch_size=2, max_enqueued_batches=1)
    busy = hold_the_thread(scheduler, servable, options)
    queued = submit(scheduler, servable, rows(0, 2), options)
    with pytest.raises(Unavailable) as caught:
        submit(scheduler, servable, rows(10, 1), options)
    assert caught.value.message.startswith(QUEUE_FULL_MESSAGE)
    assert "task size is 1 but scheduling capacity is only 0" in caught.value.message
    servable.release()
    busy.result(10)
    np.testing.assert_array_equal(queued.result(10)["y"], rows(0, 2) * 2)


def test_expired_task_never_reaches_the_model(scheduler):
    servable = RecordingServable(hold_first=True)
    options = BatchingOptions()
    busy = hold_the_thread(scheduler, servable, options)
    deadline = time.monotonic() + 0.05
    expired = submit(scheduler, servable, rows(0, 1), options, deadline=deadline)
    wait_until(lambda: time.monotonic() > deadline, what="the deadline to pass")
    servable.release()
    busy.result(10)
    with pytest.raises(DeadlineExceeded):
        expired.result(10)
    assert servable.batch_sizes == [1]  # only the held call ran
    assert scheduler.statistics().tasks_dropped == 1


def test_cancelled_task_is_dropped_and_its_batch_mates_still_run(scheduler):
    servable = RecordingServable(hold_first=True)
    options = BatchingOptions()
    busy = hold_the_thread(scheduler, servable, options)
    gone = submit(scheduler, servable, rows(0, 2), options)
    kept = submit(scheduler, servable, rows(10, 1), options)
    wait_for_tasks(scheduler, 2)
    assert gone.cancel()
    servable.release()
    busy.result(10)
    np.testing.assert_array_equal(kept.result(10)["y"], rows(10, 1) * 2)
    assert servable.batch_sizes == [1, 1]
    np.testing.assert_array_equal(servable.calls[1]["x"], rows(10, 1))


def test_threads_visit_queues_round_robin(scheduler):
    first = RecordingServable(hold_first=True)
    seen: list[str] = []

    def tag(name):
        def compute(inputs):
            seen.append(name)
            return {"y": inputs["x"]}

        return compute

    a, b = RecordingServable(compute=tag("a")), RecordingServable(compute=tag("b"))
    options = BatchingOptions(max_batch_size=1)
    busy = hold_the_thread(scheduler, first, options)
    futures = [submit(scheduler, a, rows(i, 1), options, queue="a") for i in range(3)]
    futures += [submit(scheduler, b, rows(i, 1), options, queue="b") for i in range(3)]
    wait_for_tasks(scheduler, 6)
    first.release()
    busy.result(10)
    for future in futures:
        future.result(10)
    assert seen == ["a", "b", "a", "b", "a", "b"]


def test_model_error_fails_every_caller_in_the_batch(scheduler):
    def broken(_inputs):
        raise RuntimeError("boom")

    servable = RecordingServable(compute=broken, hold_first=True)
    options = BatchingOptions()
    busy = hold_the_thread(scheduler, servable, options)
    futures = [submit(scheduler, servable, rows(i, 1), options) for i in range(3)]
    wait_for_tasks(scheduler, 3)
    servable.release()
    for future in [busy, *futures]:
        with pytest.raises(ModelError, match="boom"):
            future.result(10)


def test_output_without_batch_rows_is_a_model_error(scheduler):
    servable = RecordingServable(compute=lambda _x: {"y": np.zeros((1, 3), np.float32)})
    with pytest.raises(ModelError, match="batching needs dimension 0 to be the batch size 2"):
        submit(scheduler, servable, rows(0, 2), BatchingOptions()).result(10)


def test_full_batch_runs_without_waiting_for_the_timeout(scheduler):
    servable = RecordingServable()
    options = BatchingOptions(
        max_batch_size=4, batch_timeout_micros=600_000_000, batch_wait="timeout"
    )
    a = submit(scheduler, servable, rows(0, 3), options)
    b = submit(scheduler, servable, rows(3, 1), options)
    np.testing.assert_array_equal(a.result(30)["y"], rows(0, 3) * 2)
    np.testing.assert_array_equal(b.result(30)["y"], rows(3, 1) * 2)
    assert servable.batch_sizes == [4]


def test_close_runs_queued_batches_then_refuses_new_tasks():
    scheduler = BatchScheduler(num_batch_threads=2)
    servable = RecordingServable()
    options = BatchingOptions(batch_timeout_micros=600_000_000)  # would wait ten minutes
    pending = submit(scheduler, servable, rows(0, 2), options)
    scheduler.close(wait=True, timeout_s=30)
    np.testing.assert_array_equal(pending.result(0)["y"], rows(0, 2) * 2)
    with pytest.raises(Unavailable, match="shutting down"):
        submit(scheduler, servable, rows(0, 1), options)


def test_batch_size_and_queue_time_are_recorded_per_model(scheduler):
    def sample(metric: str) -> float:
        return REGISTRY.get_sample_value(metric, {"model": "metered"}) or 0.0

    before = (sample("pyserving_batch_size_count"), sample("pyserving_batch_size_sum"))
    queued_before = sample("pyserving_queue_duration_seconds_count")
    options = BatchingOptions(max_batch_size=8, allowed_batch_sizes=(4, 8))
    task = BatchTask(RecordingServable(), "serving_default", {"x": rows(0, 3)})
    scheduler.schedule_nowait("metered-queue", "metered", options, task).result(10)
    assert sample("pyserving_batch_size_count") == before[0] + 1
    assert sample("pyserving_batch_size_sum") == before[1] + 4  # padding included
    assert sample("pyserving_queue_duration_seconds_count") == queued_before + 1


def test_parts_of_split_tasks_run_on_several_threads_and_reassemble_in_order():
    scheduler = BatchScheduler(num_batch_threads=2)
    servable = RecordingServable()
    options = BatchingOptions(
        max_batch_size=64,
        enable_large_batch_splitting=True,
        max_execution_batch_size=3,
        max_enqueued_batches=100,
    )
    try:
        for round_ in range(20):
            inputs = [rows(1000 * round_ + 100 * i, 5 + 7 * i) for i in range(4)]
            futures = [submit(scheduler, servable, x, options) for x in inputs]
            for x, future in zip(inputs, futures, strict=True):
                np.testing.assert_array_equal(future.result(30)["y"], x * 2)
    finally:
        scheduler.close(wait=True, timeout_s=30)
    assert max(servable.batch_sizes) == 3


def test_open_batch_waits_for_the_timeout_then_runs_though_not_full(scheduler):
    servable = RecordingServable()
    options = BatchingOptions(
        max_batch_size=100, batch_timeout_micros=2_000_000, batch_wait="timeout"
    )
    a = submit(scheduler, servable, rows(0, 1), options)
    b = submit(scheduler, servable, rows(1, 2), options)
    np.testing.assert_array_equal(a.result(30)["y"], rows(0, 1) * 2)
    np.testing.assert_array_equal(b.result(30)["y"], rows(1, 2) * 2)
    assert servable.batch_sizes == [3]


def test_idle_queues_are_forgotten():
    scheduler = BatchScheduler(num_batch_threads=1, idle_queue_s=0.0)
    try:
        submit(scheduler, RecordingServable(), rows(0, 1), BatchingOptions()).result(10)
        wait_until(lambda: scheduler.statistics().queues == 0, what="the idle queue to go")
        np.testing.assert_array_equal(
            submit(scheduler, RecordingServable(), rows(0, 1), BatchingOptions()).result(10)["y"],
            rows(0, 1) * 2,
        )
    finally:
        scheduler.close(wait=True, timeout_s=30)


def test_a_hung_model_holds_at_most_its_concurrency_of_the_shared_threads_issue_14():
    scheduler = BatchScheduler(
        num_batch_threads=2, concurrency=lambda model: 1 if model == "hung" else 2
    )
    hung = RecordingServable(hold_first=True)
    other = RecordingServable()
    options = BatchingOptions(max_batch_size=1)
    try:
        first = scheduler.schedule_nowait(
            ("hung", options),
            "hung",
            options,
            BatchTask(hung, "serving_default", {"x": rows(1, 1)}),
        )
        assert hung.first_started.wait(10)
        second = scheduler.schedule_nowait(
            ("hung", options),
            "hung",
            options,
            BatchTask(hung, "serving_default", {"x": rows(2, 1)}),
        )
        # The hung model's second batch waits for its one slot; the other model keeps the other
        # thread and answers every call meanwhile.
        for i in range(5):
            task = BatchTask(other, "serving_default", {"x": rows(10 * i, 1)})
            done = scheduler.schedule_nowait(("other", options), "other", options, task)
            np.testing.assert_array_equal(done.result(10)["y"], rows(10 * i, 1) * 2)
        assert not second.done() and hung.batch_sizes == [1]
        hung.release()
        np.testing.assert_array_equal(first.result(10)["y"], rows(1, 1) * 2)
        np.testing.assert_array_equal(second.result(10)["y"], rows(2, 1) * 2)
    finally:
        hung.release()
        scheduler.close(wait=True, timeout_s=30)


def test_adaptive_wait_runs_a_lone_task_at_once_while_the_model_is_idle(scheduler):
    servable = RecordingServable()
    options = BatchingOptions(max_batch_size=100, batch_timeout_micros=600_000_000)
    # The fixed wait would hold it ten minutes: result(30) fails unless it ran at once.
    np.testing.assert_array_equal(
        submit(scheduler, servable, rows(0, 1), options).result(30)["y"], rows(0, 1) * 2
    )
    assert servable.batch_sizes == [1]


def test_adaptive_wait_fills_a_batch_while_the_model_is_busy_and_runs_it_when_idle():
    # Two threads and two lanes: a free thread could run the open batch, but the model is busy
    # and requests come far faster than the timeout, so they wait for the running batch to end.
    scheduler = BatchScheduler(num_batch_threads=2, concurrency=lambda model: 2)
    try:
        servable = RecordingServable(hold_first=True)
        options = BatchingOptions(max_batch_size=100, batch_timeout_micros=600_000_000)
        busy = hold_the_thread(scheduler, servable, options)
        futures = [submit(scheduler, servable, rows(10 * i, 2), options) for i in range(3)]
        wait_for_tasks(scheduler, 3)
        assert servable.batch_sizes == [1]
        servable.release()
        busy.result(30)
        for i, future in enumerate(futures):
            np.testing.assert_array_equal(future.result(30)["y"], rows(10 * i, 2) * 2)
        assert servable.batch_sizes == [1, 6]
    finally:
        scheduler.close(wait=True, timeout_s=30)


def test_batch_wait_must_be_adaptive_or_timeout():
    with pytest.raises(InvalidInput, match="batch_wait must be one of adaptive, timeout"):
        BatchingOptions(batch_wait="sometimes")  # type: ignore[arg-type]


class CountingCondition(threading.Condition):
    """A Condition that counts its waits: a batch thread that spins waits without end."""

    def __init__(self) -> None:
        super().__init__(threading.Lock())
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return super().wait(timeout)


def test_a_batch_waiting_beside_a_running_one_does_not_spin_its_thread():
    # Red team: once rows had stopped coming (the adaptive wait's patience past) a batch beside a
    # running one was woken at that past time again and again: a core spun until the batch ended.
    scheduler = BatchScheduler(num_batch_threads=2, concurrency=lambda model: 2)
    counting = CountingCondition()
    scheduler._cond = counting
    try:
        options = BatchingOptions(max_batch_size=100, batch_timeout_micros=600_000_000)
        warm = RecordingServable()
        for i in range(4):  # measured: run times and gaps between rows
            submit(scheduler, warm, rows(i, 1), options).result(30)
        servable = RecordingServable(hold_first=True)
        busy = hold_the_thread(scheduler, servable, options)
        waiting = submit(scheduler, servable, rows(50, 1), options)
        wait_for_tasks(scheduler, 1)
        before = counting.waits
        time.sleep(0.3)  # the patience (two gaps, half a call) passes while the batch is held
        assert counting.waits - before < 20, counting.waits - before
        servable.release()
        busy.result(30)
        np.testing.assert_array_equal(waiting.result(30)["y"], rows(50, 1) * 2)
    finally:
        scheduler.close(wait=True, timeout_s=30)
