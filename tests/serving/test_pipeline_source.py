"""PipelineSource reacts to the lifecycle events of its pipelines' step models only: another
model's events (or a pipeline's own) never start a round of acquiring every step."""

from __future__ import annotations

from pyserving.core.handle import ServableHandle
from pyserving.core.ids import ServableData, ServableId, ServableState, ServableStateEvent
from pyserving.core.loader import Loader
from pyserving.core.monitor import EventBus, StateMonitor
from pyserving.errors import NotFound
from pyserving.serving.pipeline_config import parse_pipeline
from pyserving.serving.pipeline_source import PipelineSource


class Manager:
    """What PipelineSource uses of the Manager: a real bus; no model serves."""

    def __init__(self) -> None:
        self.bus = EventBus()
        self.monitor = StateMonitor(self.bus)
        self.aspired: list[tuple[str, list[ServableData[Loader]]]] = []

    def aspire_versions(self, name: str, versions: list[ServableData[Loader]]) -> None:
        self.aspired.append((name, versions))

    def available_versions(self, name: str) -> list[int]:
        return []


def nothing_serves(model: str, version: int | None, label: str | None) -> ServableHandle:
    raise NotFound(f'model "{model}" is not available')


def event(model: str) -> ServableStateEvent:
    return ServableStateEvent(ServableId(model, 1), ServableState.AVAILABLE)


def test_only_a_step_models_events_wake_the_source() -> None:
    manager = Manager()
    source = PipelineSource(manager, nothing_serves)
    spec = parse_pipeline(
        {
            "steps": [
                {"model": "features", "inputs": {"keys": "user"}},
                {"model": "mlp", "inputs": {"input": "features.values"}},
            ],
            "outputs": {"score": "mlp.output"},
        },
        "scorer",
    )
    try:
        source.configure({"scorer": spec})
        assert manager.aspired == [("scorer", [])]  # its steps do not serve yet
        woken = source._wake  # the thread's wake-up (not started here: nothing clears it)
        for other in ("unrelated", "scorer"):  # another model; the pipeline itself
            manager.bus.publish(event(other))
            assert not woken.is_set(), other
        manager.bus.publish(event("mlp"))
        assert woken.is_set()
    finally:
        source.stop()
