"""Manager under churn: swaps and unloads of 5 models from 8 threads while 16 threads serve."""

from __future__ import annotations

import random
import threading
import time

import pytest

from pyserving.core.ids import ServableId, ServableRequest, ServableState
from pyserving.core.manager import Manager, ManagerOptions
from pyserving.errors import NotFound
from tests.fakes import FakeLoader, item, wait_until

MODELS = [f"m{i}" for i in range(5)]
SWAPPERS, CLIENTS, ITERATIONS = 8, 16, int(__import__("os").environ.get("STRESS_N", 10_000))
_BUSY = (ServableState.START, ServableState.LOADING, ServableState.UNLOADING)


class CountingLoader(FakeLoader):
    """A FakeLoader that counts loads and unloads across all instances (under one lock)."""

    lock = threading.Lock()
    loads = 0
    unloads = 0

    def load(self):
        servable = super().load()
        with CountingLoader.lock:
            CountingLoader.loads += 1
        return servable

    def unload(self) -> None:
        assert self.unload_calls == 0, f"{self.id} unloaded twice"
        super().unload()
        with CountingLoader.lock:
            CountingLoader.unloads += 1


def _status_matches_manager(m: Manager) -> bool:
    for name in MODELS:
        states = m.monitor.states(name)
        if any(s.state in _BUSY for s in states):
            return False
        shown = sorted(s.id.version for s in states if s.state is ServableState.AVAILABLE)
        if shown != sorted(m.available_versions(name)):
            return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("pool", [0, 1, 4], ids=lambda p: f"pools{p}")
def test_churn_never_serves_an_unloaded_version_and_leaks_nothing_issue_15(pool):
    m = Manager(
        ManagerOptions(num_load_threads=pool, num_unload_threads=pool, max_num_load_retries=0)
    )
    loads0, unloads0 = CountingLoader.loads, CountingLoader.unloads
    errors: list[BaseException] = []
    stop = threading.Event()
    barrier = threading.Barrier(SWAPPERS + CLIENTS)
    served = [0]

    def client(seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        while not stop.is_set():
            name = rng.choice(MODELS)
            try:
                with m.get_handle(ServableRequest.latest(name)) as handle:
                    handle.servable.run()  # asserts the servable was not unloaded
                    time.sleep(0)  # let a swapper run while the handle is held
                    handle.servable.run()
                    served[0] += 1
            except NotFound:
                # Yield: 16 threads spinning on NotFound hold the GIL so long that every lock
                # hand-off among the swappers waits out their time slices (a CI run took >300 s).
                time.sleep(0.0005)
            except BaseException as exc:
                errors.append(exc)
                return

    def swapper(seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        try:
            for _ in range(ITERATIONS // SWAPPERS):
                name = rng.choice(MODELS)
                if rng.random() < 0.2:
                    m.aspire_versions(name, [])
                    continue
                versions = rng.sample(range(1, 7), rng.choice((1, 1, 2)))
                m.aspire_versions(
                    name,
                    [item(name, v, CountingLoader(ServableId(name, v))) for v in versions],
                )
        except BaseException as exc:
            errors.append(exc)

    # daemon threads and stop in `finally`: a failing run must not leave clients spinning (they
    # kept the whole pytest process alive after a timeout)
    clients = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    swappers = [
        threading.Thread(target=swapper, args=(100 + i,), daemon=True) for i in range(SWAPPERS)
    ]
    try:
        for thread in clients + swappers:
            thread.start()
        deadline = time.monotonic() + 200  # within pytest's 300 s, so this test reports itself
        for thread in swappers:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(thread.is_alive() for thread in swappers), "swappers still running"
    finally:
        stop.set()
    for thread in clients:
        thread.join(30)
    assert not errors, errors[:3]
    assert served[0] > 0
    # Once the churn settles, status says exactly what the Manager serves.
    wait_until(lambda: _status_matches_manager(m), 30, "status equal to the manager's state")
    assert m.stop(30)
    for name in MODELS:
        assert all(s.state is ServableState.END for s in m.monitor.states(name)), name
    assert CountingLoader.loads - loads0 == CountingLoader.unloads - unloads0 > 0
