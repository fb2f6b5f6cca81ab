"""Test doubles shared by the suites: FakeLoader, FakeServable, ManualClock, wait_until."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pyserving.core.ids import ServableData, ServableId
from pyserving.core.loader import Loader


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    """Poll `predicate` until true; fail the test with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        time.sleep(0.002)


class FakeServable:
    """What a FakeLoader loads: remembers whether it was unloaded, to catch use-after-unload."""

    def __init__(self, servable_id: ServableId) -> None:
        self.id = servable_id
        self.unloaded = False
        self.calls = 0

    def run(self) -> ServableId:
        assert not self.unloaded, f"request ran on unloaded servable {self.id}"
        self.calls += 1
        return self.id


class FakeLoader(Loader):
    """A Loader that can fail N times, block until released, and records what happened."""

    live = 0
    _live_lock = threading.Lock()

    def __init__(
        self,
        servable_id: ServableId,
        fail_times: int = 0,
        block: bool = False,
        size_bytes: int = 0,
        error: str = "load failed",
        always_fail: bool = False,
    ) -> None:
        self.id = servable_id
        self.fail_times = fail_times
        self.always_fail = always_fail
        self.error = error
        self.size_bytes = size_bytes
        self.release = threading.Event()
        if not block:
            self.release.set()
        self.load_started = threading.Event()
        self.load_calls = 0
        self.unload_calls = 0
        self.unload_thread: str | None = None
        self.servable: FakeServable | None = None

    def estimate_resources(self) -> int:
        return self.size_bytes

    def load(self) -> Any:
        self.load_calls += 1
        self.load_started.set()
        assert self.release.wait(30), "FakeLoader was never released"
        if self.always_fail or self.load_calls <= self.fail_times:
            raise RuntimeError(self.error)
        with FakeLoader._live_lock:
            FakeLoader.live += 1
        self.servable = FakeServable(self.id)
        return self.servable

    def unload(self) -> None:
        self.unload_calls += 1
        self.unload_thread = threading.current_thread().name
        assert self.servable is not None
        self.servable.unloaded = True
        with FakeLoader._live_lock:
            FakeLoader.live -= 1


def item(name: str, version: int, loader: Loader | None = None, revision: str = "") -> ServableData:
    """An aspired-versions item with a fresh FakeLoader unless one is given."""
    servable_id = ServableId(name, version)
    return ServableData(servable_id, loader or FakeLoader(servable_id), revision=revision)


class ManualClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
