"""LoaderHarness: legal transitions, refused ones, retries with backoff, cancellation."""

import threading

import pytest

from pyserving.core.harness import HarnessOptions, HarnessState, LoaderHarness
from pyserving.core.ids import ServableId
from pyserving.errors import Code, FailedPrecondition
from tests.fakes import FakeLoader, RecordingWait

SID = ServableId("m", 1)


def make(loader: FakeLoader, retries: int = 0, interval_micros: int = 1000, wait=None):
    options = HarnessOptions(
        max_num_load_retries=retries, load_retry_interval_micros=interval_micros
    )
    kwargs = {"wait": wait} if wait else {}
    return LoaderHarness(SID, loader, options, **kwargs)


def load_through(harness: LoaderHarness) -> bool:
    harness.request_load()
    harness.approve_load()
    return harness.load()


def test_full_lifecycle_walks_every_state():
    loader = FakeLoader(SID)
    harness = make(loader)
    assert harness.state is HarnessState.NEW
    assert load_through(harness)
    assert harness.state is HarnessState.READY and harness.servable is loader.servable
    harness.request_unload()
    harness.start_quiescing()
    harness.done_quiescing()
    harness.unload()
    assert harness.state is HarnessState.DISABLED
    assert loader.unload_calls == 1 and harness.servable is None


def test_duplicate_load_request_is_refused():
    harness = make(FakeLoader(SID))
    harness.request_load()
    with pytest.raises(FailedPrecondition, match="Duplicate load request"):
        harness.request_load()


def test_unload_request_before_load_is_refused():
    harness = make(FakeLoader(SID))
    with pytest.raises(FailedPrecondition, match="Servable not loaded"):
        harness.request_unload()


def test_duplicate_unload_request_is_refused():
    harness = make(FakeLoader(SID))
    load_through(harness)
    harness.request_unload()
    with pytest.raises(FailedPrecondition, match="unload already requested"):
        harness.request_unload()


def test_concurrent_load_requests_only_one_wins():
    for _ in range(50):
        harness = make(FakeLoader(SID))
        barrier = threading.Barrier(8)
        wins: list[bool] = []

        def contend(h=harness, b=barrier, w=wins):
            b.wait()
            try:
                h.request_load()
                w.append(True)
            except FailedPrecondition:
                w.append(False)

        threads = [threading.Thread(target=contend) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wins.count(True) == 1


def test_load_error_goes_to_error_with_message():
    harness = make(FakeLoader(SID, always_fail=True, error="bad weights"))
    assert not load_through(harness)
    assert harness.state is HarnessState.ERROR
    assert harness.error == "bad weights"


def test_retries_finally_succeed_with_exponential_backoff():
    wait = RecordingWait()
    loader = FakeLoader(SID, fail_times=3)
    harness = make(loader, retries=5, interval_micros=1000, wait=wait)
    assert load_through(harness)
    assert loader.load_calls == 4
    assert wait.delays == pytest.approx([0.001, 0.002, 0.004])


def test_retries_finally_fail_after_max_attempts():
    wait = RecordingWait()
    loader = FakeLoader(SID, always_fail=True)
    harness = make(loader, retries=2, wait=wait)
    assert not load_through(harness)
    assert loader.load_calls == 3 and len(wait.delays) == 2


def test_cancelled_retries_make_no_more_attempts():
    loader = FakeLoader(SID, always_fail=True)
    harness = make(loader, retries=5)
    harness.cancel_load_retries()
    assert not load_through(harness)
    assert loader.load_calls == 1
    assert harness.state is HarnessState.ERROR


def test_cancel_wakes_a_load_sleeping_in_backoff():
    loader = FakeLoader(SID, always_fail=True)
    harness = make(loader, retries=5, interval_micros=60_000_000)
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(load_through(harness)))
    thread.start()
    loader.load_started.wait(5)
    harness.cancel_load_retries()
    thread.join(5)
    assert not thread.is_alive() and result == [False]


def test_non_retriable_error_is_not_retried():
    class Refusing(FakeLoader):
        def load(self):
            self.load_calls += 1
            raise FailedPrecondition('platform "torch" is not installed')

    loader = Refusing(SID)
    harness = make(loader, retries=5, wait=RecordingWait())
    assert not load_through(harness)
    assert loader.load_calls == 1
    assert harness.error_code is Code.FAILED_PRECONDITION


def test_illegal_transition_changes_nothing():
    harness = make(FakeLoader(SID))
    with pytest.raises(FailedPrecondition):
        harness.load()
    assert harness.state is HarnessState.NEW
