"""LoaderHarness: legal transitions, refused ones, retry decisions with backoff, cancellation."""

import json
import threading
import zipfile

import pytest
from google.protobuf.message import DecodeError

from pyserving.core.harness import HarnessOptions, HarnessState, LoaderHarness, is_permanent
from pyserving.core.ids import ServableId
from pyserving.core.loader import PermanentLoadError
from pyserving.errors import Code, FailedPrecondition, NotFound, Unavailable
from tests.fakes import FakeLoader

SID = ServableId("m", 1)


def make(loader: FakeLoader, retries: int = 0, interval_micros: int = 1000):
    options = HarnessOptions(
        max_num_load_retries=retries, load_retry_interval_micros=interval_micros
    )
    return LoaderHarness(SID, loader, options)


def load_through(harness: LoaderHarness, delays: list[float] | None = None) -> bool:
    """Drive the attempts as the Manager does, recording each backoff instead of waiting it."""
    harness.request_load()
    harness.approve_load()
    harness.start_loading()
    while True:
        try:
            servable = harness.attempt_load()
        except Exception as exc:
            delay = harness.next_retry_delay(exc)
            if delay is None:
                harness.fail(harness.error or "", harness.error_code)
                return False
            if delays is not None:
                delays.append(delay)
            continue
        harness.loaded(servable)
        return True


def test_full_lifecycle_walks_every_state():
    loader = FakeLoader(SID)
    harness = make(loader)
    assert harness.state is HarnessState.NEW
    assert load_through(harness)
    assert harness.state is HarnessState.READY and harness.servable is loader.servable
    harness.request_unload()
    harness.start_quiescing()
    harness.done_quiescing()
    harness.start_unloading()
    harness.run_unload()
    assert harness.state is HarnessState.UNLOADING
    harness.finish_unload()
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
    delays: list[float] = []
    loader = FakeLoader(SID, fail_times=3)
    harness = make(loader, retries=5, interval_micros=1000)
    assert load_through(harness, delays)
    assert loader.load_calls == 4
    assert delays == pytest.approx([0.001, 0.002, 0.004])
    assert harness.error is None and harness.error_code is Code.OK


def test_retries_finally_fail_after_max_attempts():
    delays: list[float] = []
    loader = FakeLoader(SID, always_fail=True)
    harness = make(loader, retries=2)
    assert not load_through(harness, delays)
    assert loader.load_calls == 3 and len(delays) == 2


def test_backoff_is_capped():
    harness = make(FakeLoader(SID, always_fail=True), retries=20, interval_micros=10_000_000)
    delays: list[float] = []
    load_through(harness, delays)
    assert max(delays) == harness.options.max_retry_interval_s


def test_error_of_a_failed_attempt_shows_while_still_loading_issue_15():
    harness = make(FakeLoader(SID, always_fail=True, error="disk hiccup"), retries=3)
    harness.request_load()
    harness.approve_load()
    harness.start_loading()
    with pytest.raises(RuntimeError) as caught:
        harness.attempt_load()
    assert harness.next_retry_delay(caught.value) is not None
    assert harness.state is HarnessState.LOADING
    assert harness.error == "disk hiccup" and harness.attempts == 1


def test_cancelled_retries_make_no_more_attempts():
    loader = FakeLoader(SID, always_fail=True)
    harness = make(loader, retries=5)
    harness.cancel_load_retries()
    assert not load_through(harness)
    assert loader.load_calls == 1
    assert harness.state is HarnessState.ERROR


def test_non_retriable_error_is_not_retried():
    class Refusing(FakeLoader):
        def load(self):
            self.load_calls += 1
            raise FailedPrecondition('platform "torch" is not installed')

    loader = Refusing(SID)
    harness = make(loader, retries=5)
    assert not load_through(harness)
    assert loader.load_calls == 1
    assert harness.error_code is Code.FAILED_PRECONDITION


@pytest.mark.parametrize(
    "exc",
    [
        PermanentLoadError("truncated model"),
        FileNotFoundError("model.onnx"),
        DecodeError("Error parsing message"),
        json.JSONDecodeError("bad", "{", 0),
        zipfile.BadZipFile("not a zip"),
        NotFound("no such file"),
        FailedPrecondition("bad pyserving.yaml"),
    ],
    ids=type,
)
def test_errors_that_retrying_cannot_fix_are_permanent_issue_15(exc):
    assert is_permanent(exc)


def test_a_wrapped_parse_error_is_permanent_issue_15():
    try:
        try:
            raise DecodeError("Error parsing message")
        except DecodeError as inner:
            raise RuntimeError("could not load saved_model.pb") from inner
    except RuntimeError as outer:
        assert is_permanent(outer)


@pytest.mark.parametrize(
    "exc", [RuntimeError("flaky"), OSError("I/O error"), MemoryError(), Unavailable("s3 503")]
)
def test_errors_that_may_heal_are_retried(exc):
    assert not is_permanent(exc)


def test_discard_unloads_what_a_failed_attempt_loaded_issue_15():
    loader = FakeLoader(SID)
    harness = make(loader)
    harness.request_load()
    harness.approve_load()
    harness.start_loading()
    harness.attempt_load()
    harness.discard()
    assert loader.unload_calls == 1 and loader.servable.unloaded


def test_illegal_transition_changes_nothing():
    harness = make(FakeLoader(SID))
    with pytest.raises(FailedPrecondition):
        harness.attempt_load()
    assert harness.state is HarnessState.NEW
