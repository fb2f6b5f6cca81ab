"""Manager scenarios of TF Serving's suites (tfserving.md §8), over several pool sizes."""

import random
import threading
import time

import pytest

from pyserving.core.ids import ServableData, ServableId, ServableRequest, ServableState
from pyserving.core.manager import Manager, ManagerOptions
from pyserving.errors import NotFound
from tests.fakes import FakeLoader, item, wait_until

POOLS = [(0, 0), (1, 1), (2, 0), (0, 2), (4, 4)]


@pytest.fixture(params=POOLS, ids=lambda p: f"load{p[0]}-unload{p[1]}")
def pools(request):
    return request.param


def make_manager(pools, **options) -> Manager:
    load, unload = pools
    opts = ManagerOptions(
        num_load_threads=load,
        num_unload_threads=unload,
        max_num_load_retries=options.pop("retries", 1),
        load_retry_interval_micros=options.pop("interval", 0),
        **options,
    )
    return Manager(opts)


@pytest.fixture
def manager(pools):
    m = make_manager(pools)
    yield m
    assert m.stop(timeout_s=10)


def state(m: Manager, name: str, version: int) -> ServableState | None:
    status = m.monitor.state(ServableId(name, version))
    return status.state if status else None


def aspire_async(m: Manager, name: str, items) -> threading.Thread:
    """Aspire from another thread: with inline pools the call itself may wait on handles."""
    thread = threading.Thread(target=m.aspire_versions, args=(name, items), daemon=True)
    thread.start()
    return thread


def test_aspired_version_becomes_available_and_serves(manager):
    manager.aspire_versions("m", [item("m", 1)])
    assert manager.monitor.wait_until_available("m", 1, timeout_s=10)
    with manager.get_handle(ServableRequest.latest("m")) as handle:
        assert handle.servable.run() == ServableId("m", 1)
    assert manager.available_versions("m") == [1]


def test_unknown_model_or_version_is_not_found(manager):
    with pytest.raises(NotFound, match=r"Latest\(nope\)"):
        manager.get_handle(ServableRequest.latest("nope"))
    manager.aspire_versions("m", [item("m", 1)])
    assert manager.monitor.wait_until_available("m", 1, timeout_s=10)
    with pytest.raises(NotFound, match=r"Specific\(m, 7\)"):
        manager.get_handle(ServableRequest.specific("m", 7))


def test_latest_and_specific_handles_with_two_versions(manager):
    manager.aspire_versions("m", [item("m", 1), item("m", 2)])
    assert manager.monitor.wait_until_available("m", 1, timeout_s=10)
    assert manager.monitor.wait_until_available("m", 2, timeout_s=10)
    with manager.get_handle(ServableRequest.latest("m")) as h:
        assert h.id.version == 2
    with manager.get_handle(ServableRequest.specific("m", 1)) as h:
        assert h.id.version == 1


def test_lifecycle_events_in_order(manager):
    seen = []
    manager.bus.subscribe(lambda e: seen.append((e.id.version, e.state)))
    manager.aspire_versions("m", [item("m", 1)])
    assert manager.monitor.wait_until_available("m", 1, timeout_s=10)
    manager.aspire_versions("m", [])
    wait_until(lambda: state(manager, "m", 1) is ServableState.END, what="v1 END")
    assert seen == [
        (1, ServableState.START),
        (1, ServableState.LOADING),
        (1, ServableState.AVAILABLE),
        (1, ServableState.UNLOADING),
        (1, ServableState.END),
    ]


def test_new_version_swaps_in_before_old_unloads(manager):
    v1, v2 = item("m", 1), item("m", 2)
    manager.aspire_versions("m", [v1])
    assert manager.monitor.wait_until_available("m", 1, timeout_s=10)
    order = []
    manager.bus.subscribe(lambda e: order.append((e.id.version, e.state)))
    manager.aspire_versions("m", [v2])
    wait_until(lambda: state(manager, "m", 1) is ServableState.END, what="v1 unloaded")
    assert order.index((2, ServableState.AVAILABLE)) < order.index((1, ServableState.UNLOADING))
    assert manager.available_versions("m") == [2]
    assert v1.data.unload_calls == 1


def test_failed_new_version_keeps_old_serving_and_reports_error(manager):
    manager.aspire_versions("m", [item("m", 1)])
    assert manager.monitor.wait_until_available("m", 1, timeout_s=10)
    bad = FakeLoader(ServableId("m", 2), always_fail=True, error="corrupt model file")
    manager.aspire_versions("m", [item("m", 2, bad)])
    wait_until(lambda: state(manager, "m", 2) is ServableState.END, what="v2 failed")
    status = manager.monitor.state(ServableId("m", 2))
    assert status.error == "corrupt model file"
    assert manager.available_versions("m") == [1]
    with manager.get_handle(ServableRequest.latest("m")) as h:
        assert h.id.version == 1


def test_failed_version_retried_when_its_files_change(manager):
    bad = FakeLoader(ServableId("m", 1), always_fail=True)
    manager.aspire_versions("m", [item("m", 1, bad, revision="a")])
    wait_until(lambda: state(manager, "m", 1) is ServableState.END, what="v1 failed")
    # Same list again: a failed version is not hammered.
    manager.aspire_versions("m", [item("m", 1, FakeLoader(ServableId("m", 1)), revision="a")])
    time.sleep(0.05)
    assert manager.available_versions("m") == []
    manager.aspire_versions("m", [item("m", 1, revision="b")])
    assert manager.monitor.wait_until_available("m", 1, timeout_s=10)


def test_retry_succeeds_within_max_retries(pools):
    m = make_manager(pools, retries=3)
    try:
        flaky = FakeLoader(ServableId("m", 1), fail_times=2)
        m.aspire_versions("m", [item("m", 1, flaky)])
        assert m.monitor.wait_until_available("m", 1, timeout_s=10)
        assert flaky.load_calls == 3
    finally:
        m.stop(10)


def test_unload_waits_for_held_handle_and_runs_off_the_request_thread(manager):
    v1 = item("m", 1)
    manager.aspire_versions("m", [v1])
    assert manager.monitor.wait_until_available("m", 1, timeout_s=10)
    handle = manager.get_handle(ServableRequest.latest("m"))
    aspire_async(manager, "m", [])
    wait_until(lambda: state(manager, "m", 1) is ServableState.UNLOADING, what="unloading")
    time.sleep(0.05)
    assert v1.data.unload_calls == 0, "unloaded while a request held it"
    with pytest.raises(NotFound):
        manager.get_handle(ServableRequest.latest("m"))
    handle.servable.run()
    handle.release()
    wait_until(lambda: v1.data.unload_calls == 1, what="unload after release")
    assert v1.data.unload_thread != threading.current_thread().name


def test_held_handle_on_one_model_does_not_delay_swap_of_another(manager):
    manager.aspire_versions("a", [item("a", 1)])
    manager.aspire_versions("b", [item("b", 1)])
    assert manager.monitor.wait_until_available("a", 1, timeout_s=10)
    assert manager.monitor.wait_until_available("b", 1, timeout_s=10)
    with manager.get_handle(ServableRequest.latest("a")):
        manager.aspire_versions("b", [item("b", 2)])
        wait_until(lambda: state(manager, "b", 1) is ServableState.END, 5, "b swapped")
        assert manager.available_versions("b") == [2]


def test_aspired_list_changes_mid_load(manager):
    slow = FakeLoader(ServableId("m", 1), block=True)
    thread = aspire_async(manager, "m", [item("m", 1, slow)])
    assert slow.load_started.wait(5)
    manager_thread = aspire_async(manager, "m", [item("m", 2)])
    slow.release.set()
    thread.join(10)
    manager_thread.join(10)
    assert manager.monitor.wait_until_available("m", 2, timeout_s=10)
    wait_until(lambda: state(manager, "m", 1) is ServableState.END, what="v1 gone")
    assert manager.available_versions("m") == [2]


def test_unaspire_then_reaspire_while_handle_held(manager):
    manager.aspire_versions("m", [item("m", 1)])
    assert manager.monitor.wait_until_available("m", 1, timeout_s=10)
    handle = manager.get_handle(ServableRequest.latest("m"))
    aspire_async(manager, "m", [])
    wait_until(lambda: state(manager, "m", 1) is ServableState.UNLOADING, what="unloading")
    thread = aspire_async(manager, "m", [item("m", 1)])
    handle.release()
    thread.join(10)
    wait_until(lambda: manager.available_versions("m") == [1], what="v1 reloaded")


def test_unaspire_new_version_before_it_loads(pools):
    m = make_manager(pools)
    try:
        blocker = FakeLoader(ServableId("m", 2), block=True)
        aspire_async(m, "m", [item("m", 2, blocker), item("m", 1)])
        assert blocker.load_started.wait(5)
        aspire_async(m, "m", [item("m", 3)])
        blocker.release.set()
        assert m.monitor.wait_until_available("m", 3, timeout_s=10)
        wait_until(lambda: m.available_versions("m") == [3], what="only v3")
    finally:
        m.stop(10)


def test_empty_list_unloads_the_stream(manager):
    manager.aspire_versions("m", [item("m", 1), item("m", 2)])
    wait_until(lambda: manager.available_versions("m") == [2, 1], what="both")
    manager.aspire_versions("m", [])
    wait_until(lambda: manager.available_versions("m") == [], what="none")


def test_erroneous_aspired_item_ends_with_its_error(manager):
    bad = ServableData(ServableId("m", 1), None, error="No platform found for model m")
    manager.aspire_versions("m", [bad])
    status = manager.monitor.state(ServableId("m", 1))
    assert status.state is ServableState.END and "No platform" in status.error


def test_items_for_another_stream_are_dropped(manager):
    manager.aspire_versions("m", [item("other", 1)])
    assert manager.monitor.state(ServableId("other", 1)) is None


def test_load_that_does_not_fit_ends_resource_exhausted(pools):
    m = make_manager(pools, total_model_memory_limit_bytes=100)
    try:
        m.aspire_versions("m", [item("m", 1, FakeLoader(ServableId("m", 1), size_bytes=500))])
        wait_until(lambda: state(m, "m", 1) is ServableState.END, what="refused")
        status = m.monitor.state(ServableId("m", 1))
        assert status.error_code == "RESOURCE_EXHAUSTED"
        assert "Insufficient resources" in status.error
    finally:
        m.stop(10)


def test_resource_preserving_swap_fits_a_budget_for_one_version(pools):
    m = make_manager(
        pools, total_model_memory_limit_bytes=100, version_transition_policy="resource"
    )
    try:
        m.aspire_versions("m", [item("m", 1, FakeLoader(ServableId("m", 1), size_bytes=60))])
        assert m.monitor.wait_until_available("m", 1, timeout_s=10)
        m.aspire_versions("m", [item("m", 2, FakeLoader(ServableId("m", 2), size_bytes=60))])
        assert m.monitor.wait_until_available("m", 2, timeout_s=10)
        assert m.resources.used_bytes == 60
    finally:
        m.stop(10)


def test_availability_swap_beyond_budget_keeps_old_version(pools):
    m = make_manager(pools, total_model_memory_limit_bytes=100)
    try:
        m.aspire_versions("m", [item("m", 1, FakeLoader(ServableId("m", 1), size_bytes=60))])
        assert m.monitor.wait_until_available("m", 1, timeout_s=10)
        m.aspire_versions("m", [item("m", 2, FakeLoader(ServableId("m", 2), size_bytes=60))])
        wait_until(lambda: state(m, "m", 2) is ServableState.END, what="v2 refused")
        assert m.available_versions("m") == [1]
    finally:
        m.stop(10)


def test_load_waits_for_a_running_unload_to_free_memory():
    m = Manager(
        ManagerOptions(num_load_threads=2, num_unload_threads=1, total_model_memory_limit_bytes=100)
    )
    try:
        m.aspire_versions("a", [item("a", 1, FakeLoader(ServableId("a", 1), size_bytes=60))])
        assert m.monitor.wait_until_available("a", 1, timeout_s=10)
        held = m.get_handle(ServableRequest.latest("a"))
        m.aspire_versions("a", [])  # unload starts, waits on the handle
        wait_until(lambda: state(m, "a", 1) is ServableState.UNLOADING, what="a unloading")
        m.aspire_versions("b", [item("b", 1, FakeLoader(ServableId("b", 1), size_bytes=60))])
        time.sleep(0.05)
        assert state(m, "b", 1) is ServableState.START  # waiting for memory, not failed
        held.release()
        assert m.monitor.wait_until_available("b", 1, timeout_s=10)
    finally:
        m.stop(10)


def test_different_streams_load_in_parallel():
    m = Manager(ManagerOptions(num_load_threads=2))
    try:
        a = FakeLoader(ServableId("a", 1), block=True)
        b = FakeLoader(ServableId("b", 1), block=True)
        m.aspire_versions("a", [item("a", 1, a)])
        m.aspire_versions("b", [item("b", 1, b)])
        assert a.load_started.wait(5) and b.load_started.wait(5), "loads ran one at a time"
        a.release.set()
        b.release.set()
        assert m.monitor.wait_until_available("b", 1, timeout_s=10)
    finally:
        m.stop(10)


def test_stop_unloads_everything(pools):
    m = make_manager(pools)
    loaders = [FakeLoader(ServableId(n, 1)) for n in "abc"]
    for loader in loaders:
        m.aspire_versions(loader.id.name, [ServableData(loader.id, loader)])
    for loader in loaders:
        assert m.monitor.wait_until_available(loader.id.name, 1, timeout_s=10)
    assert m.stop(timeout_s=10)
    assert all(loader.unload_calls == 1 for loader in loaders)
    assert m.list_available() == []


@pytest.mark.slow
def test_no_request_ever_touches_an_unloaded_servable_while_versions_churn(pools):
    """16 threads take handles and run while the manager swaps versions underneath them."""
    m = make_manager(pools)
    m.aspire_versions("m", [item("m", 1)])
    assert m.monitor.wait_until_available("m", 1, timeout_s=10)
    stop = threading.Event()
    errors: list[BaseException] = []
    served: set[int] = set()
    barrier = threading.Barrier(17)

    def client() -> None:
        barrier.wait()
        while not stop.is_set():
            try:
                with m.get_handle(ServableRequest.latest("m")) as h:
                    served.add(h.servable.run().version)
                    time.sleep(random.random() / 5000)
                    h.servable.run()
            except NotFound:
                pass  # only possible between an un-aspire-all and the next load
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    barrier.wait()
    for version in range(2, 40):
        m.aspire_versions("m", [item("m", version)])
        assert m.monitor.wait_until_available("m", version, timeout_s=10)
        # Let the clients reach this version before the next swap begins under them.
        wait_until(lambda v=version: v in served, what=f"clients on version {version}")
    stop.set()
    for t in threads:
        t.join(10)
    m.stop(10)
    assert not errors, errors[:3]
    assert served >= set(range(2, 40))
