"""A servable for batching tests: records every call's inputs, can hold its first call."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from pyserving.platforms.servable import Servable
from pyserving.platforms.signature import Signature, TensorSpec

Compute = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def double(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"y": inputs["x"] * np.float32(2)}


class RecordingServable(Servable):
    """x FP32 [-1, width] → y = compute(x); records the inputs of each call.

    With `hold_first`, the first call blocks until `release()`, so tests can line up tasks in
    the queue behind a busy batch thread.
    """

    platform = "numpy"

    def __init__(self, width: int = 3, compute: Compute = double, hold_first: bool = False):
        spec = (-1, width)
        self._signatures = {
            "serving_default": Signature(
                "serving_default",
                (TensorSpec("x", "FP32", spec),),
                (TensorSpec("y", "FP32", spec),),
            )
        }
        self._compute = compute
        self._lock = threading.Lock()  # guards calls
        self.calls: list[dict[str, np.ndarray]] = []
        self.first_started = threading.Event()
        self._gate = threading.Event()
        if not hold_first:
            self._gate.set()

    @property
    def signatures(self) -> dict[str, Signature]:
        return self._signatures

    @property
    def batch_sizes(self) -> list[int]:
        with self._lock:
            return [next(iter(call.values())).shape[0] for call in self.calls]

    def release(self) -> None:
        self._gate.set()

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self.calls.append({k: v.copy() for k, v in inputs.items()})
            first = len(self.calls) == 1
        if first:
            self.first_started.set()
            if not self._gate.wait(30):
                raise AssertionError("the test never released the held call")
        return self._compute(inputs)


def rows(start: int, n: int, width: int = 3) -> np.ndarray:
    """n distinct rows: row i is filled with start + i."""
    return np.repeat(np.arange(start, start + n, dtype=np.float32)[:, None], width, axis=1)
