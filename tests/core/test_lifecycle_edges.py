"""Lifecycle edges of issue 15: status order, leaks after load, scheduled retries, budgets."""

from __future__ import annotations

import logging
import threading

import pytest

from pyserving.core.ids import ServableId, ServableRequest, ServableState
from pyserving.core.loader import PermanentLoadError
from pyserving.core.manager import Manager, ManagerOptions
from tests.core.test_manager import POOLS, aspire_async, make_manager, state
from tests.fakes import FakeLoader, item, wait_until

AVAILABLE, END, LOADING = ServableState.AVAILABLE, ServableState.END, ServableState.LOADING


@pytest.fixture(params=POOLS, ids=lambda p: f"load{p[0]}-unload{p[1]}")
def pools(request):
    return request.param


class BlockingMeasure(FakeLoader):
    """Loads at once, then blocks in the post-load memory measurement until released."""

    def __init__(self, servable_id: ServableId) -> None:
        super().__init__(servable_id)
        self.measuring = threading.Event()
        self.measured = threading.Event()

    def resources_after_load(self) -> int | None:
        self.measuring.set()
        assert self.measured.wait(10), "never released"
        return None


def test_unload_decided_during_a_load_never_leaves_status_available_issue_15(pools):
    """Observed on b65bd49: START, LOADING, UNLOADING, END, AVAILABLE — and AVAILABLE for good."""
    m = make_manager(pools)
    seen: list[ServableState] = []
    unloaded = threading.Event()

    def record(event) -> None:
        seen.append(event.state)
        if event.state is END:
            unloaded.set()

    m.bus.subscribe(record)
    loader = BlockingMeasure(ServableId("m", 1))
    try:
        loading = aspire_async(m, "m", [item("m", 1, loader)])
        assert loader.measuring.wait(10)
        # The source drops the version while its load is finishing.
        unaspire = aspire_async(m, "m", [])
        unaspire.join(10)
        # b65bd49 unloaded it now, on the unload pool, while the load was still finishing; the
        # fixed Manager decides nothing for a version that is still LOADING, so this wait (only
        # there to let the old race complete) times out.
        unloaded.wait(0.5)
        loader.measured.set()
        loading.join(10)
        wait_until(lambda: loader.unload_calls == 1, 10, "v1 unloaded")
        wait_until(lambda: state(m, "m", 1) is END, 3, "status END")
        assert seen == [ServableState.START, LOADING, AVAILABLE, ServableState.UNLOADING, END]
        assert m.available_versions("m") == []
    finally:
        loader.measured.set()
        m.stop(10)


class RaisingMeasure(FakeLoader):
    """Loads, then its post-load memory figure raises."""

    def resources_after_load(self) -> int | None:
        raise RuntimeError("cannot read /proc/self/statm")


class RaisingMemoryBytes(FakeLoader):
    """Loads a servable whose `memory_bytes()` raises."""

    def load(self):
        servable = super().load()
        servable.memory_bytes = self._boom
        return servable

    @staticmethod
    def _boom() -> int:
        raise ValueError("memory_bytes exploded")


@pytest.mark.parametrize("loader_type", [RaisingMeasure, RaisingMemoryBytes])
def test_a_version_whose_post_load_step_raises_is_unloaded_issue_15(pools, loader_type):
    m = make_manager(pools, retries=1)
    live_before = FakeLoader.live
    loader = loader_type(ServableId("m", 1))
    try:
        m.aspire_versions("m", [item("m", 1, loader)])
        wait_until(lambda: state(m, "m", 1) is END, 10, "v1 ended")
        status = m.monitor.state(ServableId("m", 1))
        assert "exploded" in status.error or "statm" in status.error
        assert loader.load_calls == 2  # a failed measurement is a failed attempt, retried once
        assert loader.unload_calls == loader.load_calls, "a loaded model leaked"
        assert FakeLoader.live == live_before
        assert m.available_versions("m") == []
    finally:
        assert m.stop(10)
    assert loader.unload_calls == loader.load_calls


def long_backoff_manager(load_threads: int = 2, retries: int = 5) -> Manager:
    """Defaults but a 60 s retry interval: a test that waited for a retry would time out."""
    return Manager(
        ManagerOptions(
            num_load_threads=load_threads,
            max_num_load_retries=retries,
            load_retry_interval_micros=60_000_000,
        )
    )


def test_a_failing_model_in_backoff_never_delays_another_models_load_issue_15():
    m = long_backoff_manager(load_threads=1)
    try:
        bad = FakeLoader(ServableId("bad", 1), always_fail=True, error="disk hiccup")
        m.aspire_versions("bad", [item("bad", 1, bad)])
        wait_until(lambda: bad.load_calls == 1, 10, "first attempt")
        m.aspire_versions("good", [item("good", 1)])
        # b65bd49 slept the 60 s backoff on the only load thread.
        assert m.monitor.wait_until_available("good", 1, timeout_s=10)
        assert bad.load_calls == 1
    finally:
        assert m.stop(10), "a pending retry must not hold up stop()"


def test_two_corrupt_versions_beside_a_healthy_model_issue_15():
    m = long_backoff_manager()
    try:
        corrupt = [
            FakeLoader(ServableId(name, 1), always_fail=True, error="CRC mismatch")
            for name in ("c1", "c2")
        ]
        for loader in corrupt:
            m.aspire_versions(loader.id.name, [item(loader.id.name, 1, loader)])
        for loader in corrupt:
            wait_until(lambda lo=loader: lo.load_calls == 1, 10, "first attempts")
        m.aspire_versions("healthy", [item("healthy", 1)])
        assert m.monitor.wait_until_available("healthy", 1, timeout_s=10)
        for loader in corrupt:
            # Still in backoff, and status says why: LOADING with the last error, not OK.
            wait_until(lambda lo=loader: m.monitor.state(lo.id).error is not None, 10, "error")
            status = m.monitor.state(loader.id)
            assert status.state is LOADING
            assert status.error == "CRC mismatch" and status.error_code == "UNKNOWN"
            assert loader.load_calls == 1
        assert m.monitor.wait_until_settled("c1", timeout_s=0)
    finally:
        assert m.stop(10)


def test_retry_runs_when_the_scheduler_clock_says_so_issue_15(pools, manual_scheduler):
    clock, scheduler = manual_scheduler
    load, unload = pools
    m = Manager(
        ManagerOptions(
            num_load_threads=load,
            num_unload_threads=unload,
            max_num_load_retries=3,
            load_retry_interval_micros=2_000_000,
        ),
        scheduler=scheduler,
    )
    try:
        flaky = FakeLoader(ServableId("m", 1), fail_times=2, error="store timed out")
        m.aspire_versions("m", [item("m", 1, flaky)])
        wait_until(lambda: scheduler.pending() == 1, 10, "first retry scheduled")
        assert state(m, "m", 1) is LOADING and flaky.load_calls == 1
        clock.advance(1.9)
        assert scheduler.run_due() == 0
        clock.advance(0.1)
        assert scheduler.run_due() == 1
        wait_until(lambda: scheduler.pending() == 1, 10, "second retry scheduled")
        clock.advance(3.9)  # the backoff doubles
        assert scheduler.run_due() == 0 and flaky.load_calls == 2
        clock.advance(0.1)
        assert scheduler.run_due() == 1
        assert m.monitor.wait_until_available("m", 1, timeout_s=10)
        assert flaky.load_calls == 3
        assert m.monitor.state(ServableId("m", 1)).error is None
    finally:
        assert m.stop(10)


def test_unaspiring_a_version_in_backoff_ends_it_at_once_issue_15(pools, manual_scheduler):
    _, scheduler = manual_scheduler
    m = Manager(
        ManagerOptions(num_load_threads=pools[0], num_unload_threads=pools[1]),
        scheduler=scheduler,
    )
    bad = FakeLoader(ServableId("m", 1), always_fail=True, error="flaky")
    m.aspire_versions("m", [item("m", 1, bad)])
    wait_until(lambda: scheduler.pending() == 1, 10, "retry scheduled")
    m.aspire_versions("m", [])
    status = m.monitor.state(ServableId("m", 1))
    assert status.state is END and status.error_code == "CANCELLED"
    assert "flaky" in status.error
    assert scheduler.pending() == 0
    assert m.stop(10)


@pytest.mark.parametrize(
    "error", [PermanentLoadError("truncated graph"), FileNotFoundError("model.onnx")], ids=type
)
def test_a_permanent_error_is_not_retried_until_the_files_change_issue_15(pools, error, caplog):
    m = make_manager(pools, retries=5)

    class Broken(FakeLoader):
        def load(self):
            self.load_calls += 1
            raise error

    try:
        broken = Broken(ServableId("m", 1))
        with caplog.at_level(logging.WARNING, "pyserving.lifecycle"):
            m.aspire_versions("m", [item("m", 1, broken, revision="a")])
            wait_until(lambda: state(m, "m", 1) is END, 10, "v1 failed")
            wait_until(lambda: any(r.levelno == logging.ERROR for r in caplog.records), 10)
        assert broken.load_calls == 1
        failures = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(failures) == 1 and str(error) in failures[0].getMessage()
        assert "m" in failures[0].getMessage() and "permanent" in failures[0].getMessage()
        # Same files again: not retried; new files: loaded.
        m.aspire_versions("m", [item("m", 1, Broken(ServableId("m", 1)), revision="a")])
        assert state(m, "m", 1) is END
        m.aspire_versions("m", [item("m", 1, revision="b")])
        assert m.monitor.wait_until_available("m", 1, timeout_s=10)
    finally:
        assert m.stop(10)


def test_the_final_failure_after_retries_is_logged_at_error_issue_15(caplog):
    m = make_manager((1, 1), retries=2)
    try:
        bad = FakeLoader(ServableId("m", 1), always_fail=True, error="weights corrupt")
        with caplog.at_level(logging.WARNING, "pyserving.lifecycle"):
            m.aspire_versions("m", [item("m", 1, bad)])
            wait_until(lambda: state(m, "m", 1) is END, 10, "v1 failed")
            wait_until(lambda: any(r.levelno == logging.ERROR for r in caplog.records), 10)
        assert bad.load_calls == 3
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "weights corrupt" in errors[0] and "3 attempt" in errors[0]
    finally:
        assert m.stop(10)


def test_resource_policy_never_unloads_for_a_version_that_cannot_fit_issue_15(pools):
    m = make_manager(pools, total_model_memory_limit_bytes=40, version_transition_policy="resource")
    try:
        m.aspire_versions("m", [item("m", 1, FakeLoader(ServableId("m", 1), size_bytes=30))])
        assert m.monitor.wait_until_available("m", 1, timeout_s=10)
        big = FakeLoader(ServableId("m", 2), size_bytes=53)
        m.aspire_versions("m", [item("m", 2, big)])
        wait_until(lambda: state(m, "m", 2) is END, 10, "v2 refused")
        status = m.monitor.state(ServableId("m", 2))
        assert status.error_code == "RESOURCE_EXHAUSTED"
        assert "needs 53 bytes" in status.error and "[1] keep serving" in status.error
        assert big.load_calls == 0
        assert m.available_versions("m") == [1]
        assert state(m, "m", 1) is AVAILABLE
        with m.get_handle(ServableRequest.latest("m")) as handle:
            assert handle.id.version == 1
        # A version that fits once v1 is gone still swaps in.
        m.aspire_versions("m", [item("m", 3, FakeLoader(ServableId("m", 3), size_bytes=35))])
        assert m.monitor.wait_until_available("m", 3, timeout_s=10)
        wait_until(lambda: m.available_versions("m") == [3], 10, "only v3")
    finally:
        assert m.stop(10)


def test_resource_policy_does_not_refuse_a_version_for_memory_a_failing_load_frees_issue_15():
    m = Manager(
        ManagerOptions(
            num_load_threads=2,
            max_num_load_retries=0,
            total_model_memory_limit_bytes=100,
            version_transition_policy="resource",
        )
    )
    try:
        doomed = FakeLoader(ServableId("a", 1), size_bytes=60, block=True, always_fail=True)
        m.aspire_versions("a", [item("a", 1, doomed)])
        assert doomed.load_started.wait(10)
        m.aspire_versions("b", [item("b", 1, FakeLoader(ServableId("b", 1), size_bytes=60))])
        assert state(m, "b", 1) is not END  # may fit once a's load ends: waits, not refused
        doomed.release.set()
        assert m.monitor.wait_until_available("b", 1, timeout_s=10)
    finally:
        assert m.stop(10)
