"""A test platform whose servables count their calls, and a registry that serves it."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pyserving.core.ids import ServableId
from pyserving.core.loader import Loader
from pyserving.platforms.registry import PlatformRegistry
from pyserving.platforms.servable import Servable
from pyserving.platforms.signature import Signature, TensorSpec

SIGNATURE = Signature(
    "serving_default",
    (TensorSpec("x", "FP32", (-1, 2)),),
    (TensorSpec("y", "FP32", (-1, 2)),),
)


class CountingServable(Servable):
    """y = x * version; a negative first element raises (a model error)."""

    platform = "counting"

    def __init__(self, servable_id: ServableId) -> None:
        self.id = servable_id
        self.calls = 0
        self._lock = threading.Lock()  # guards calls

    @property
    def signatures(self) -> dict[str, Signature]:
        return {SIGNATURE.name: SIGNATURE}

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self.calls += 1
        x = inputs["x"]
        if x.size and x.flat[0] < 0:
            raise ValueError("negative input")
        return {"y": x * np.float32(self.id.version)}


class CountingLoader(Loader):
    """Loads a CountingServable; a version dir holding `block` waits for `gate` first."""

    loaded: dict[ServableId, CountingServable] = {}

    def __init__(self, servable_id: ServableId, path: str, gate: threading.Event) -> None:
        self.id = servable_id
        self.path = Path(path)
        self.gate = gate
        self.servable: CountingServable | None = None

    def estimate_resources(self) -> int:
        return 0

    def load(self) -> Any:
        if (self.path / "block").exists():
            self.gate.wait(30)
        self.servable = CountingServable(self.id)
        CountingLoader.loaded[self.id] = self.servable
        return self.servable

    def unload(self) -> None:
        self.servable = None


def counting_registry(gate: threading.Event) -> PlatformRegistry:
    registry = PlatformRegistry(entry_point_group="pyserving.tests.none")

    def factory(servable_id: ServableId, path: str, config: Mapping[str, Any]) -> Loader:
        return CountingLoader(servable_id, path, gate)

    registry.register("counting", factory)
    return registry


def make_versions(base: Path, *versions: int) -> Path:
    for version in versions:
        (base / str(version)).mkdir(parents=True, exist_ok=True)
        (base / str(version) / "weights").write_text(str(version))
    return base
