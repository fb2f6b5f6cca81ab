"""Execution: each model's own threads, so model code never runs on the event loop.

Model calls run on their model's lane (serving/lane.py): at most `instances` calls of one
model at a time (the model config's `instances:` key, after Triton's instance count; default
`DEFAULT_INSTANCES`). Further calls wait in that model's queue (at most `max_queued` of them,
then Unavailable), so a slow or hung model delays and times out only its own requests. A call
whose request gave up while it ran keeps its thread and is counted stuck; a model whose every
thread is stuck is not ready (`Executor.stuck_reason`). Request-sized work that is not a model
call (codecs) runs on the shared codec threads instead (serving/off_loop.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from typing import TypeVar, TypeVarTuple

from pyserving.errors import Unavailable
from pyserving.serving.lane import Call, Lane

__all__ = ["DEFAULT_INSTANCES", "Executor"]

T = TypeVar("T")
Args = TypeVarTuple("Args")

#: execution threads of a model whose config sets no `instances` (Triton creates two instances
#: of a CPU model by default; more threads rarely help Python models, which share the GIL)
DEFAULT_INSTANCES = 2


class Executor:
    """Every model's execution lane: bounded threads and queue per model name.

    Thread-safety: `submit` runs on an event loop (it makes the result future there); the other
    methods may be called from any thread.
    Blocking: `submit` never waits (it refuses at once when the model's queue is full);
    `close(timeout_s)` waits up to `timeout_s` for running calls.
    Ownership: lanes (and their threads) live as long as the executor; an idle lane keeps no
    thread after `lane.IDLE_EXIT_S`.
    """

    def __init__(
        self,
        default_instances: int = DEFAULT_INSTANCES,
        max_queued: int = 512,
        on_leave: Callable[[], None] | None = None,
    ) -> None:
        self.default_instances = max(1, default_instances)
        self._max_queued = max_queued
        self._on_leave = on_leave
        self._lock = threading.Lock()  # guards creating lanes and _instances
        self._instances: Mapping[str, int] = {}
        # model name → lane; entries are only added (whole-entry assignment), read lock-free
        self._lanes: dict[str, Lane] = {}
        self._closed = False

    def submit(self, model: str, fn: Callable[[*Args], T], *args: *Args) -> Call[T]:
        """Queue `fn(*args)` on `model`'s lane. Raises Unavailable when its queue is full or
        the executor is closed."""
        lane = self._lanes.get(model)
        if lane is None:
            lane = self._lane(model)
        call = Call(lane, fn, args, asyncio.get_running_loop())
        lane.submit(call)
        return call

    def set_instances(self, per_model: Mapping[str, int]) -> None:
        """Each model's thread count from now on (a config reload); others get the default."""
        with self._lock:
            self._instances = dict(per_model)
            lanes = list(self._lanes.values())
        for lane in lanes:
            lane.set_instances(self._instances.get(lane.name, self.default_instances))

    def configured(self, model: str) -> int | None:
        """`model`'s own `instances:` setting, or None when it has none."""
        return self._instances.get(model)

    def stuck_reason(self, model: str) -> str | None:
        """Why `model` cannot run a call now (every thread busy with an abandoned call)."""
        lane = self._lanes.get(model)
        return None if lane is None else lane.stuck_reason()

    @property
    def stuck_calls(self) -> int:
        """Calls still running whose requests gave up on them, over every model."""
        return sum(lane.stuck for lane in list(self._lanes.values()))

    def close(self, timeout_s: float | None = 0.0) -> bool:
        """Refuse new calls, fail queued ones; wait up to `timeout_s` (None: for ever) for the
        running ones. True when every thread exited."""
        with self._lock:
            self._closed = True
            lanes = list(self._lanes.values())
        threads = [thread for lane in lanes for thread in lane.close()]
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for thread in threads:
            if thread is threading.current_thread():
                continue
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def _lane(self, model: str) -> Lane:
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down")
            lane = self._lanes.get(model)
            if lane is None:
                lane = Lane(
                    model,
                    self._instances.get(model, self.default_instances),
                    self._max_queued,
                    self._on_leave,
                )
                self._lanes[model] = lane
            return lane
